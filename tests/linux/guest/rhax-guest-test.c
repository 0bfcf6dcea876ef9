/*
 * rhax-guest-test: the test program the QEMU `-accel hax -kernel` guest runs from its init
 * (issue 10 items 3c/3d; checks.sh check_qemu_kernel). Static (gcc -static -O2, built by the
 * image builder, tools/xtask/src/linux/image.rs), so the guest's initramfs needs no libc.
 *
 * It asserts what the guest CPU and platform do under rhax: CPUID answers (rhax's per-VM
 * table, the APIC id per vCPU), MSRs through /dev/cpu/N/msr (served by rhax's RDMSR/WRMSR
 * exits; an unknown MSR must raise #GP, which msr.ko turns into EIO), an MMIO device read
 * (QEMU's HPET, an EPT-violation exit decoded by rhax-core and served by QEMU), the timer
 * interrupt, `rep movs` over RAM, and the guest RAM and CPU count QEMU was given.
 *
 * Output, one line per sub-test and a verdict (parsed by checks.sh):
 *   rhax-guest-test: NAME pass|fail DETAIL
 *   rhax-guest-test: verdict P passed F failed
 * With --mmio-movs: `rep movs` FROM the HPET's MMIO page (rhax's general MMIO path), inside
 * the verdict.
 *
 * Usage: rhax-guest-test [--cpus N] [--mem-mib M] [--touch-mib T] [--mmio-movs]
 *   --cpus, --mem-mib: what QEMU was given (-smp, -m), asserted; --touch-mib: at most this
 *   much RAM for the mem sub-test (default: all available less 24 MiB)
 */
#include "guest-test.h"

static int passed, failed;

/* One result line; DETAIL says what was seen, so that a failure is diagnosable from the
 * serial log alone. */
void result(const char *name, int ok, const char *fmt, ...)
{
	char detail[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	printf("rhax-guest-test: %s %s %s\n", name, ok ? "pass" : "fail", detail);
	fflush(stdout);
	if (ok)
		passed++;
	else
		failed++;
}

void note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("rhax-guest-test: info ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
}

/* ---- CPUID ---- */

struct regs {
	uint32_t a, b, c, d;
};

static struct regs cpuid(uint32_t leaf, uint32_t sub)
{
	struct regs r;
	__asm__ volatile("cpuid" : "=a"(r.a), "=b"(r.b), "=c"(r.c), "=d"(r.d) : "a"(leaf), "c"(sub));
	return r;
}

static int regs_eq(struct regs x, struct regs y)
{
	return x.a == y.a && x.b == y.b && x.c == y.c && x.d == y.d;
}

/* `n` bytes of printable ASCII, possibly padded with trailing NULs (KVM's hypervisor
 * signature is "KVMKVMKVM\0\0\0"), and not empty. */
static int printable(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	for (size_t i = 0; i < n; i++)
		if (i < len ? (s[i] < 0x20 || s[i] > 0x7e) : s[i] != 0)
			return 0;
	return len > 0;
}

/* The CPUs this process may run on, in order (the guest's online CPUs). */
static int online_cpus(int *cpus, int max)
{
	cpu_set_t set;
	int n = 0;
	if (sched_getaffinity(0, sizeof(set), &set) != 0)
		return -1;
	for (int c = 0; c < CPU_SETSIZE && n < max; c++)
		if (CPU_ISSET(c, &set))
			cpus[n++] = c;
	return n;
}

static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0)
		return -1;
	/* sched_setaffinity migrates before it returns; sched_getcpu confirms it. */
	return sched_getcpu() == cpu ? 0 : -1;
}

static cpu_set_t all_cpus;

static void unpin(void)
{
	sched_setaffinity(0, sizeof(all_cpus), &all_cpus);
}

/* A 12-character CPUID string from three registers in the order given. */
static void cpuid_string(char out[13], uint32_t r1, uint32_t r2, uint32_t r3)
{
	memcpy(out, &r1, 4);
	memcpy(out + 4, &r2, 4);
	memcpy(out + 8, &r3, 4);
	out[12] = 0;
}

static void test_cpuid(void)
{
	struct regs l0 = cpuid(0, 0);
	char vendor[13];
	cpuid_string(vendor, l0.b, l0.d, l0.c); /* "GenuineIntel": EBX, EDX, ECX */
	struct regs l1 = cpuid(1, 0);
	uint32_t family = (l1.a >> 8) & 0xf, model = (l1.a >> 4) & 0xf;
	if (family == 0xf)
		family += (l1.a >> 20) & 0xff;
	if (family == 6 || family == 0xf)
		model |= ((l1.a >> 16) & 0xf) << 4;
	int hv = (l1.c >> 31) & 1, vmx = (l1.c >> 5) & 1;
	struct regs h = cpuid(0x40000000, 0);
	char sig[13];
	cpuid_string(sig, h.b, h.c, h.d); /* the hypervisor's signature: EBX, ECX, EDX */
	struct regs x0 = cpuid(0x80000000, 0);
	char brand[49] = "";
	if (x0.a >= 0x80000004) {
		for (uint32_t i = 0; i < 3; i++) {
			struct regs b = cpuid(0x80000002 + i, 0);
			memcpy(brand + 16 * i, &b, 16);
		}
		brand[48] = 0;
	}
	int ok = printable(vendor, 12) && l0.a >= 1 && family != 0 && hv &&
		 h.a >= 0x40000000 && h.a < 0x40010000 && printable(sig, 12) &&
		 x0.a >= 0x80000001 && x0.a < 0x80010000;
	result("cpuid", ok,
	       "vendor %s max leaf %#x family %u model %#x stepping %u hypervisor bit %d "
	       "vmx %d; leaf 0x40000000: max %#x signature \"%s\"; max extended %#x brand \"%s\"",
	       vendor, l0.a, family, model, l1.a & 0xf, hv, vmx, h.a, sig, x0.a, brand);
}

/*
 * Every basic leaf 1..max answers as that leaf: SDM Vol. 2A CPUID returns the highest basic
 * leaf's data only for inputs ABOVE the maximum. A leaf in range that answers exactly what
 * the maximum leaf answers (and not zeros) was served from the wrong entry. On an Intel
 * vendor the first leaf above the maximum must answer as the maximum leaf.
 */
static void test_cpuid_leaves(void)
{
	struct regs l0 = cpuid(0, 0);
	uint32_t max = l0.a;
	if (max > 0x40)
		max = 0x40; /* a sane bound; real CPUs report < 0x30 */
	struct regs top = cpuid(max, 0);
	char bad[256] = "";
	size_t used = 0;
	int wrong = 0;
	for (uint32_t leaf = 1; leaf < max; leaf++) {
		struct regs r = cpuid(leaf, 0);
		struct regs zero = {0, 0, 0, 0};
		if (regs_eq(r, top) && !regs_eq(r, zero)) {
			wrong++;
			used += snprintf(bad + used, used < sizeof(bad) ? sizeof(bad) - used : 0,
					 " %#x", leaf);
		}
	}
	int intel = l0.b == 0x756e6547 && l0.d == 0x49656e69 && l0.c == 0x6c65746e;
	struct regs above = cpuid(max + 1, 0);
	int above_ok = !intel || max != l0.a || regs_eq(above, top);
	if (wrong)
		result("cpuid-leaves", 0,
		       "leaves below the max %#x answer exactly leaf %#x's data "
		       "(%08x %08x %08x %08x):%s",
		       l0.a, max, top.a, top.b, top.c, top.d, bad);
	else
		result("cpuid-leaves", above_ok,
		       "leaves 1..%#x each answer their own data; leaf %#x %s leaf %#x's", max,
		       max + 1, regs_eq(above, top) ? "answers as" : "differs from", max);
}

/* "apicid" of processor `cpu` in /proc/cpuinfo: Linux reads it from the local APIC (QEMU's
 * APIC model), while CPUID.1 EBX[31:24] is rhax's per-vCPU answer. */
static long cpuinfo_field(int cpu, const char *field)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];
	int cur = -1;
	long v = -1;
	size_t n = strlen(field);
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "processor", 9))
			cur = atoi(strchr(line, ':') ? strchr(line, ':') + 1 : "-1");
		else if (cur == cpu && !strncmp(line, field, n) && (line[n] == ' ' || line[n] == '\t')) {
			char *c = strchr(line, ':');
			if (c)
				v = strtol(c + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

static void test_cpuid_percpu(const int *cpus, int n, int want_cpus)
{
	int ids[64];
	char detail[512] = "";
	size_t used = 0;
	int ok = n > 0 && (want_cpus <= 0 || n == want_cpus);
	for (int i = 0; i < n && i < 64; i++) {
		if (pin(cpus[i]) != 0) {
			ids[i] = -1 - i; /* unique: no false duplicate below */
			ok = 0;
			used += snprintf(detail + used, sizeof(detail) - used, " cpu%d: cannot pin;",
					 cpus[i]);
			continue;
		}
		ids[i] = cpuid(1, 0).b >> 24;
		long apic = cpuinfo_field(cpus[i], "apicid");
		if (apic != ids[i])
			ok = 0;
		for (int j = 0; j < i; j++)
			if (ids[j] == ids[i])
				ok = 0;
		if (used < sizeof(detail))
			used += snprintf(detail + used, sizeof(detail) - used,
					 " cpu%d: cpuid apic id %d, /proc/cpuinfo apicid %ld;", cpus[i],
					 ids[i], apic);
	}
	unpin();
	result("cpuid-percpu", ok, "%d CPU(s) online (expected %d):%s", n, want_cpus, detail);
}

/* ---- MSRs via /dev/cpu/N/msr (msr.ko): RDMSR/WRMSR on CPU N; #GP comes back as EIO ---- */

static int msr_read(int cpu, uint32_t msr, uint64_t *v)
{
	char path[64];
	snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	ssize_t r = pread(fd, v, 8, msr);
	int e = errno;
	close(fd);
	return r == 8 ? 0 : -(r < 0 ? e : EIO);
}

static int msr_write(int cpu, uint32_t msr, uint64_t v)
{
	char path[64];
	snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	ssize_t r = pwrite(fd, &v, 8, msr);
	int e = errno;
	close(fd);
	return r == 8 ? 0 : -(r < 0 ? e : EIO);
}

static inline uint64_t rdtscp(uint32_t *aux)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(*aux));
	return (uint64_t)hi << 32 | lo;
}

static void test_msrs(const int *cpus, int n)
{
	uint64_t v;
	int e = msr_read(cpus[0], 0x10, &v);
	if (e == -ENOENT || e == -ENXIO || e == -ENODEV) {
		result("msr", 0, "no /dev/cpu/%d/msr (%s): msr.ko not loaded", cpus[0], strerror(-e));
		return;
	}

	/* IA32_APIC_BASE: base 0xfee00000 on every CPU, the BSP flag (bit 8) on CPU 0 only. */
	char detail[512] = "";
	size_t used = 0;
	int ok = 1;
	for (int i = 0; i < n && used < sizeof(detail); i++) {
		e = msr_read(cpus[i], 0x1b, &v);
		int bsp = (v >> 8) & 1;
		if (e || (v & ~0xfffULL) != 0xfee00000ULL || bsp != (cpus[i] == 0))
			ok = 0;
		used += snprintf(detail + used, sizeof(detail) - used, " cpu%d %s%#llx (bsp %d, enabled %d);",
				 cpus[i], e ? strerror(-e) : "", (unsigned long long)v, bsp,
				 (int)((v >> 11) & 1));
	}
	result("msr-apic-base", ok, "IA32_APIC_BASE:%s", detail);

	/* IA32_EFER as a 64-bit Linux runs: SCE (0), LME (8), LMA (10), and NXE (11) when the
	 * CPU has NX (CPUID 0x80000001 EDX bit 20). */
	int nx = (cpuid(0x80000001, 0).d >> 20) & 1;
	e = msr_read(cpus[0], 0xc0000080, &v);
	uint64_t want = 1 | 1 << 8 | 1 << 10 | (uint64_t)nx << 11;
	result("msr-efer", !e && (v & want) == want && (v & (1ULL << 11)) >> 11 == (uint64_t)nx,
	       "EFER %#llx%s%s (want SCE LME LMA%s set)", (unsigned long long)v, e ? " read: " : "",
	       e ? strerror(-e) : "", nx ? " NXE" : ", NXE clear: no NX in CPUID");

	/* IA32_TSC: increases, and lies between RDTSCs taken around it on the same CPU (the
	 * RDMSR exit answers host TSC + the VMCS TSC offset, which RDTSC sees natively). */
	ok = pin(cpus[0]) == 0;
	uint64_t t0 = rdtsc(), m1 = 0, m2 = 0;
	int e1 = msr_read(cpus[0], 0x10, &m1);
	int e2 = msr_read(cpus[0], 0x10, &m2);
	uint64_t t1 = rdtsc();
	ok = ok && !e1 && !e2 && m2 > m1 && t0 <= m1 && m2 <= t1;
	result("msr-tsc", ok, "rdtsc %llu, MSR 0x10 %llu then %llu, rdtsc %llu", (unsigned long long)t0,
	       (unsigned long long)m1, (unsigned long long)m2, (unsigned long long)t1);

	/* IA32_TSC_AUX: written and read back; RDTSCP returns it in ECX on that CPU. Linux
	 * keeps the CPU number there (vDSO getcpu), so the old value is restored. */
	int has_rdtscp = (cpuid(0x80000001, 0).d >> 27) & 1;
	used = 0;
	detail[0] = 0;
	ok = 1;
	for (int i = 0; i < n && used < sizeof(detail); i++) {
		uint64_t old = 0, back = 0;
		uint64_t val = 0x5a0000 | (uint64_t)cpus[i];
		uint32_t aux = 0;
		int pinned = pin(cpus[i]) == 0;
		int er = msr_read(cpus[i], 0xc0000103, &old);
		int ew = er ? er : msr_write(cpus[i], 0xc0000103, val);
		int eb = ew ? ew : msr_read(cpus[i], 0xc0000103, &back);
		if (!ew && has_rdtscp && pinned)
			rdtscp(&aux);
		if (!er)
			msr_write(cpus[i], 0xc0000103, old);
		int this_ok = pinned && !er && !ew && !eb && back == val && (!has_rdtscp || aux == val);
		ok = ok && this_ok;
		used += snprintf(detail + used, sizeof(detail) - used,
				 " cpu%d: old %#llx wrote %#llx read %#llx rdtscp ecx %s%#x%s;", cpus[i],
				 (unsigned long long)old, (unsigned long long)val,
				 (unsigned long long)back, has_rdtscp ? "" : "(no RDTSCP in CPUID) ",
				 aux, (er || ew || eb) ? " (an access failed)" : "");
	}
	unpin();
	result("msr-tsc-aux", ok, "%s", detail);

	/* An MSR no Intel or AMD CPU has: RDMSR and WRMSR raise #GP, which msr.ko's
	 * rdmsr_safe_on_cpu reports as EIO. 0xc0ffee00 is in no documented range. */
	e1 = msr_read(cpus[0], 0xc0ffee00, &v);
	e2 = msr_write(cpus[0], 0xc0ffee00, 0);
	result("msr-gp", e1 == -EIO && e2 == -EIO, "RDMSR 0xc0ffee00: %s, WRMSR: %s (want EIO both)",
	       e1 ? strerror(-e1) : "succeeded", e2 ? strerror(-e2) : "succeeded");
}

int main(int argc, char **argv)
{
	int want_cpus = 0, mmio_movs = 0;
	long want_mib = 0, touch_mib = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--cpus") && i + 1 < argc)
			want_cpus = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--mem-mib") && i + 1 < argc)
			want_mib = atol(argv[++i]);
		else if (!strcmp(argv[i], "--touch-mib") && i + 1 < argc)
			touch_mib = atol(argv[++i]);
		else if (!strcmp(argv[i], "--mmio-movs"))
			mmio_movs = 1;
		else {
			fprintf(stderr, "usage: %s [--cpus N] [--mem-mib M] [--touch-mib T] [--mmio-movs]\n", argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	sched_getaffinity(0, sizeof(all_cpus), &all_cpus);
	int cpus[64];
	int n = online_cpus(cpus, 64);
	if (n <= 0) {
		result("cpus", 0, "sched_getaffinity failed: %s", strerror(errno));
		n = 0;
	}
	test_cpuid();
	test_cpuid_leaves();
	if (n > 0) {
		test_cpuid_percpu(cpus, n, want_cpus);
		test_msrs(cpus, n);
	}
	test_mmio();
	test_timer();
	test_rep_movs();
	test_mem(want_mib, touch_mib);
	if (mmio_movs)
		test_mmio_movs();
	printf("rhax-guest-test: verdict %d passed %d failed\n", passed, failed);
	fflush(stdout);
	return failed ? 1 : 0;
}
