/*
 * rhax-guest-test, the platform half: an MMIO read of QEMU's HPET, the timer interrupt,
 * `rep movs` over RAM, the guest RAM, and (outside the verdict) `rep movs` from MMIO.
 */
#include "guest-test.h"

/* ---- MMIO: QEMU's HPET at 0xfed00000 ---- */

static volatile uint32_t *hpet;
static const char *hpet_how = "";

static volatile uint32_t *map_hpet(char *why, size_t n)
{
	/* /dev/hpet maps its one register page read-only (CONFIG_HPET_MMAP); /dev/mem works
	 * where IO_STRICT_DEVMEM lets it (the HPET range is not claimed busy). */
	int fd = open("/dev/hpet", O_RDONLY);
	if (fd >= 0) {
		void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		close(fd);
		if (p != MAP_FAILED) {
			hpet_how = "/dev/hpet";
			return p;
		}
		snprintf(why, n, "mmap /dev/hpet: %s; ", strerror(errno));
	} else {
		snprintf(why, n, "open /dev/hpet: %s; ", strerror(errno));
	}
	fd = open("/dev/mem", O_RDONLY | O_SYNC);
	if (fd < 0) {
		snprintf(why + strlen(why), n - strlen(why), "open /dev/mem: %s", strerror(errno));
		return NULL;
	}
	void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0xfed00000);
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(why + strlen(why), n - strlen(why), "mmap /dev/mem 0xfed00000: %s",
			 strerror(errno));
		return NULL;
	}
	hpet_how = "/dev/mem";
	return p;
}

/* A 32-bit MMIO load as one plain MOV (the form rhax-core decodes). */
static inline uint32_t mmio_read32(volatile uint32_t *p)
{
	uint32_t v;
	__asm__ volatile("movl %1, %0" : "=r"(v) : "m"(*p) : "memory");
	return v;
}

void test_mmio(void)
{
	char why[256] = "";
	hpet = map_hpet(why, sizeof(why));
	if (!hpet) {
		result("mmio-hpet", 0, "cannot map the HPET: %s", why);
		return;
	}
	/* General capabilities (offset 0): revision (7:0), vendor id (31:16), period in fs
	 * (63:32, nonzero and at most 100 ns = 1e8 fs by the HPET spec). QEMU: vendor 0x8086,
	 * period 10 ns. General configuration (0x10): ENABLE_CNF (bit 0). Main counter: 0xf0. */
	uint32_t cap = mmio_read32(hpet), period = mmio_read32(hpet + 1);
	uint32_t cfg = mmio_read32(hpet + 4);
	uint32_t c1 = mmio_read32(hpet + 0x3c);
	struct timespec ts = {0, 1000000};
	nanosleep(&ts, NULL);
	uint32_t c2 = mmio_read32(hpet + 0x3c);
	uint32_t vendor = cap >> 16;
	int enabled = cfg & 1;
	int ok = vendor == 0x8086 && (cap & 0xff) != 0 && period != 0 && period <= 100000000 &&
		 enabled && c2 != c1 && (uint32_t)(c2 - c1) < 0x80000000u;
	result("mmio-hpet", ok,
	       "via %s: capabilities %#010x (vendor %#06x, rev %u, %u timers), period %u fs, "
	       "config %#x (counter %s), main counter %u then %u after 1 ms (+%u ticks = %.3f ms)",
	       hpet_how, cap, vendor, cap & 0xff, ((cap >> 8) & 0x1f) + 1, period, cfg,
	       enabled ? "enabled" : "DISABLED", c1, c2, c2 - c1,
	       (double)(uint32_t)(c2 - c1) * period / 1e12);
}

/* ---- timer interrupts ---- */

/* Sum over CPUs of the /proc/interrupts row named `row` ("LOC:" local APIC timer, "0:" the
 * IO-APIC/PIC timer line); -1 if there is no such row. */
static long long irq_count(const char *row)
{
	FILE *f = fopen("/proc/interrupts", "r");
	char line[1024];
	long long sum = -1;
	if (!f)
		return -1;
	size_t n = strlen(row);
	while (fgets(line, sizeof(line), f)) {
		char *p = line;
		while (*p == ' ')
			p++;
		if (strncmp(p, row, n))
			continue;
		p += n;
		sum = 0;
		for (;;) {
			char *end;
			long long v = strtoll(p, &end, 10);
			if (end == p)
				break;
			sum += v;
			p = end;
		}
		break;
	}
	fclose(f);
	return sum;
}

static double mono_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

void test_timer(void)
{
	long long loc0 = irq_count("LOC:"), t0 = irq_count("0:");
	double m0 = mono_s();
	struct timespec ts = {0, 200000000};
	nanosleep(&ts, NULL);
	double m1 = mono_s();
	long long loc1 = irq_count("LOC:"), t1 = irq_count("0:");
	double ms = (m1 - m0) * 1000;
	long long dloc = loc0 >= 0 ? loc1 - loc0 : 0, dt = t0 >= 0 ? t1 - t0 : 0;
	/* The sleep's own wake-up is a timer interrupt (an hrtimer on the local APIC timer, or
	 * the PIT/HPET through the IO-APIC), so at least one must have arrived. 200 ms is a
	 * lower bound by definition; 5 s leaves room for a slow emulator. */
	int ok = (dloc > 0 || dt > 0) && ms >= 199.9 && ms < 5000;
	result("timer", ok,
	       "200 ms nanosleep took %.1f ms (CLOCK_MONOTONIC); local timer (LOC) %lld -> %lld, "
	       "IRQ 0 %lld -> %lld",
	       ms, loc0, loc1, t0, t1);
}

/* ---- rep movs over RAM ---- */

static void rep_movsb(void *d, const void *s, size_t n)
{
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

static void rep_movsq(void *d, const void *s, size_t n)
{
	__asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}

/* With DF=1: from the last byte down (the direction memmove needs when d > s overlaps). */
static void rep_movsb_down(void *d, const void *s, size_t n)
{
	char *dl = (char *)d + n - 1;
	const char *sl = (const char *)s + n - 1;
	__asm__ volatile("std; rep movsb; cld" : "+D"(dl), "+S"(sl), "+c"(n) : : "memory");
}

/* The reference: one byte at a time, through volatile pointers so that the compiler cannot
 * turn the loop into a memcpy/memmove call (or a rep movs of its own). */
static void byte_copy_up(volatile uint8_t *d, const volatile uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		d[i] = s[i];
}

static void byte_copy_down(volatile uint8_t *d, const volatile uint8_t *s, size_t n)
{
	for (size_t i = n; i-- > 0;)
		d[i] = s[i];
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

/* xorshift64, a qword at a time (`n` is a multiple of 8). */
static void fill(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i += 8) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		memcpy(p + i, &rng, 8);
	}
}

static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return i;
	return n;
}

void test_rep_movs(void)
{
	const size_t size = 4 << 20;
	uint8_t *a = malloc(size + 64), *b = malloc(size + 64), *r = malloc(size + 64);
	if (!a || !b || !r) {
		result("rep-movs", 0, "malloc of 3 x 4 MiB failed");
		return;
	}
	char detail[512] = "";
	size_t used = 0;
	int ok = 1;
	struct {
		const char *name;
		int kind; /* 0 movsb, 1 movsq, 2 overlap d<s movsb, 3 overlap d>s movsb DF=1 */
		size_t doff, soff, n;
	} cases[] = {
		{"movsb 4MiB-3 odd offsets", 0, 3, 1, size - 3, },
		{"movsq 512Ki qwords", 1, 0, 0, size / 8, },
		{"movsb overlap dst=src-5", 2, 0, 5, size - 5, },
		{"movsb DF=1 overlap dst=src+7", 3, 7, 0, size - 7, },
		{"movsb 1 byte", 0, 1, 2, 1, },
		{"movsb overlap dst=src-64", 2, 0, 64, size - 64, },
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		int overlap = cases[c].kind >= 2;
		size_t bytes = cases[c].kind == 1 ? cases[c].n * 8 : cases[c].n;
		fill(a, size + 64);
		fill(b, size + 64);
		/* The reference runs on a copy of the same starting state. */
		memcpy(r, a, size + 64);
		uint64_t t0 = rdtsc();
		switch (cases[c].kind) {
		case 0: rep_movsb(a + cases[c].doff, b + cases[c].soff, bytes); break;
		case 1: rep_movsq(a + cases[c].doff, b + cases[c].soff, cases[c].n); break;
		case 2: rep_movsb(a + cases[c].doff, a + cases[c].soff, bytes); break;
		case 3: rep_movsb_down(a + cases[c].doff, a + cases[c].soff, bytes); break;
		}
		uint64_t t1 = rdtsc();
		if (cases[c].kind == 3)
			byte_copy_down(r + cases[c].doff, r + cases[c].soff, bytes);
		else
			byte_copy_up(r + cases[c].doff, overlap ? r + cases[c].soff : b + cases[c].soff,
				     bytes);
		size_t d = first_diff(a, r, size + 64);
		int flag_ok = 1;
		unsigned long flags;
		__asm__ volatile("pushfq; popq %0" : "=r"(flags));
		flag_ok = !(flags & (1UL << 10));
		if (d != size + 64 || !flag_ok)
			ok = 0;
		if (used < sizeof(detail))
			used += snprintf(detail + used, sizeof(detail) - used, " %s: %s (%.2f B/tick);",
					 cases[c].name,
					 d != size + 64 ? "DIFFERS" : flag_ok ? "ok" : "DF left set",
					 (double)bytes / (double)(t1 - t0 ? t1 - t0 : 1));
		if (d != size + 64)
			note("rep-movs %s: first difference at byte %zu: %#x, the byte loop gave %#x",
			     cases[c].name, d, a[d], r[d]);
	}
	free(a);
	free(b);
	free(r);
	result("rep-movs", ok, "each compared with a byte loop over %zu MiB:%s", size >> 20, detail);
}

/* ---- guest RAM ---- */

static long meminfo_kib(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(key);
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* The highest physical address backing [p, p + pages pages) per /proc/self/pagemap (bits
 * 54:0 the PFN when bit 63 "present" is set; root sees real PFNs), 0 if unreadable. */
static uint64_t highest_phys(const void *p, size_t pages)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t best = 0, buf[512];
	if (fd < 0)
		return 0;
	for (size_t i = 0; i < pages; i += 512) {
		size_t k = pages - i < 512 ? pages - i : 512;
		off_t off = (off_t)(((uintptr_t)p / 4096 + i) * 8);
		if (pread(fd, buf, k * 8, off) != (ssize_t)(k * 8))
			break;
		for (size_t j = 0; j < k; j++)
			if (buf[j] >> 63 && (buf[j] & ((1ULL << 55) - 1)) * 4096 > best)
				best = (buf[j] & ((1ULL << 55) - 1)) * 4096;
	}
	close(fd);
	return best;
}

/* The RAM the firmware reported (E820, "System RAM" at the top level of /proc/iomem; root
 * sees the real addresses), in KiB; -1 if unreadable. */
static long iomem_ram_kib(void)
{
	FILE *f = fopen("/proc/iomem", "r");
	char line[256];
	unsigned long long sum = 0, lo, hi;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (line[0] != ' ' && strstr(line, ": System RAM") &&
		    sscanf(line, "%llx-%llx", &lo, &hi) == 2 && hi >= lo)
			sum += hi - lo + 1;
	fclose(f);
	return sum ? (long)(sum >> 10) : -1;
}

/*
 * The guest RAM is what QEMU was given: the firmware's E820 RAM is -m less the legacy hole
 * and the BIOS's reserved pages (at most 2 MiB; MemTotal also lacks the kernel's own ~50
 * MiB, so it is only printed). Most of the available RAM can be used: every page of a block
 * of MemAvailable less 24 MiB (at most `touch_mib`) gets a tag naming it, written in one pass
 * and checked in a second, so two guest pages backed by one host page (a wrong EPT or pin
 * table entry) show as a mismatch. With more than half of -m touched, some page must lie in
 * the upper half of guest RAM: pagemap's highest physical address shows it does.
 */
void test_mem(long want_mib, long touch_mib)
{
	long total = meminfo_kib("MemTotal"), avail = meminfo_kib("MemAvailable");
	long e820 = iomem_ram_kib();
	int total_ok = total > 0 && e820 > 0 &&
		       (want_mib <= 0 || (e820 <= want_mib * 1024 && e820 >= (want_mib - 2) * 1024));
	long use_kib = avail - 24 * 1024;
	if (touch_mib > 0 && use_kib > touch_mib * 1024)
		use_kib = touch_mib * 1024;
	if (use_kib < 4096)
		use_kib = 4096;
	size_t bytes = (size_t)use_kib * 1024;
	size_t pages = bytes / 4096;
	uint64_t *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		result("mem", 0, "E820 RAM %ld KiB (-m %ld MiB); mmap of %zu MiB failed: %s", e820,
		       want_mib, bytes >> 20, strerror(errno));
		return;
	}
	uint64_t t0 = rdtsc();
	for (size_t i = 0; i < pages; i++) {
		uint64_t *pg = p + i * 512;
		pg[0] = 0x7268617800000000ULL | i;
		pg[511] = ~(0x7268617800000000ULL | i);
	}
	uint64_t t1 = rdtsc();
	size_t bad = 0, first_bad = 0;
	for (size_t i = 0; i < pages; i++) {
		uint64_t *pg = p + i * 512;
		if (pg[0] != (0x7268617800000000ULL | i) || pg[511] != ~(0x7268617800000000ULL | i)) {
			if (!bad)
				first_bad = i;
			bad++;
		}
	}
	uint64_t top = highest_phys(p, pages);
	munmap(p, bytes);
	int high_ok = want_mib <= 0 || (long)(bytes >> 20) <= want_mib / 2 ||
		      top >= (uint64_t)want_mib / 2 << 20;
	char where[64] = "";
	if (bad)
		snprintf(where, sizeof(where), " (the first at page %zu)", first_bad);
	result("mem", total_ok && !bad && high_ok,
	       "E820 RAM %ld KiB (QEMU -m %ld MiB), MemTotal %ld KiB, MemAvailable %ld KiB; "
	       "touched %zu MiB "
	       "(%zu pages, a tag per page written then checked): %zu wrong%s; highest "
	       "physical address %#llx; first touch %.0f ticks/page",
	       e820, want_mib, total, avail, bytes >> 20, pages, bad, where, (unsigned long long)top, (double)(t1 - t0) / (double)pages);
}

/* ---- rep movs from MMIO (issue 11: the general MMIO path, one read exit per element) ---- */

void test_mmio_movs(void)
{
	if (!hpet) {
		result("mmio-movs", 0, "HPET not mapped");
		return;
	}
	uint32_t want[4], got[4] = {0, 0, 0, 0};
	for (int i = 0; i < 4; i++)
		want[i] = mmio_read32(hpet + i);
	void *d = got;
	const volatile void *s = hpet;
	size_t n = 4;
	__asm__ volatile("rep movsl" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	/* Registers 0x8 and 0xc are reserved (read 0); 0x0/0x4 are the capabilities. */
	int ok = got[0] == want[0] && got[1] == want[1] && n == 0 &&
		 (char *)d == (char *)got + sizeof(got);
	result("mmio-movs", ok,
	       "rep movsd of 16 bytes from the HPET (%s) read %08x %08x %08x %08x, MOV reads gave "
	       "%08x %08x %08x %08x; RCX %zu at the end",
	       hpet_how, got[0], got[1], got[2], got[3], want[0], want[1], want[2], want[3], n);
}
