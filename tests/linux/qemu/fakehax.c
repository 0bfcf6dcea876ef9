/*
 * fakehax.so: a stand-in for /dev/HAX inside one QEMU process (LD_PRELOAD), so that the QEMU
 * built by `cargo xtask qemu` can be driven through its whole start-up on a machine without
 * the rhax module: capability and version probe, VM and vCPU creation, RAM registration, the
 * tunnel, register/FPU/MSR synchronisation, up to the first HAX_VCPU_IOCTL_RUN. The first RUN
 * answers HAX_EXIT_STATECHANGE (the guest "shut down"), so QEMU prints "VCPU shutdown request"
 * and exits 0; later RUNs answer HAX_EXIT_HLT. No guest instruction runs: this checks the
 * build (machine, devices, firmware, -kernel option ROMs), not a hypervisor.
 *
 * Every ioctl QEMU sends is logged to stderr as "fakehax: DEVICE NAME CODE details", which is
 * the exact sequence the Linux module has to serve.
 *
 * Build: gcc -shared -fPIC -O1 -o fakehax.so fakehax.c -ldl
 * Run:   LD_PRELOAD=./fakehax.so qemu-system-x86_64 -accel hax -nographic -nic none ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The Linux x86-64 codes QEMU 7.2's hax-posix.h encodes (hax-abi-probe.c prints them). */
#define HAX_IOCTL_VERSION 0xc0080020u
#define HAX_IOCTL_CREATE_VM 0xc0040021u
#define HAX_IOCTL_CAPABILITY 0x80100023u
#define HAX_VM_IOCTL_VCPU_CREATE 0xc0040080u
#define HAX_VM_IOCTL_ALLOC_RAM 0xc0100081u
#define HAX_VM_IOCTL_SET_RAM 0xc0180082u
#define HAX_VM_IOCTL_NOTIFY_QEMU_VERSION 0x40080084u
#define HAX_VM_IOCTL_ADD_RAMBLOCK 0x40180085u
#define HAX_VCPU_IOCTL_RUN 0x000000c0u
#define HAX_VCPU_IOCTL_SET_MSRS 0xc20800c1u
#define HAX_VCPU_IOCTL_GET_MSRS 0xc20800c2u
#define HAX_VCPU_IOCTL_SET_FPU 0x420000c3u
#define HAX_VCPU_IOCTL_GET_FPU 0x820000c4u
#define HAX_VCPU_IOCTL_SETUP_TUNNEL 0xc01800c5u
#define HAX_VCPU_IOCTL_INTERRUPT 0xc00400c6u
#define HAX_VCPU_SET_REGS 0xc20000c7u
#define HAX_VCPU_GET_REGS 0xc20000c8u

#define MAX_FDS 1024
#define MAX_VCPUS 16
enum kind { NONE, SYSTEM, VM, VCPU };
static enum kind kinds[MAX_FDS];
static int vcpu_of[MAX_FDS];
static unsigned char regs[MAX_VCPUS][512], fpu[MAX_VCPUS][512];
static uint32_t *tunnels[MAX_VCPUS];
static unsigned runs[MAX_VCPUS];

static void logf_(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) {
        ssize_t ignored = write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
        (void)ignored;
    }
}

/* /dev/HAX, /dev/hax_vm/vmNN, /dev/hax_vmNN/vcpuMM: a real fd (of /dev/null) to stand for it. */
static int fake_open(const char *path)
{
    int vm, vcpu;
    enum kind k = NONE;
    if (strcmp(path, "/dev/HAX") == 0) {
        k = SYSTEM;
    } else if (sscanf(path, "/dev/hax_vm/vm%2d", &vm) == 1) {
        k = VM;
    } else if (sscanf(path, "/dev/hax_vm%2d/vcpu%2d", &vm, &vcpu) == 2) {
        k = VCPU;
    }
    if (k == NONE) {
        return -2;
    }
    int (*real_open)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
    int fd = real_open("/dev/null", O_RDWR);
    if (fd >= 0 && fd < MAX_FDS) {
        kinds[fd] = k;
        vcpu_of[fd] = k == VCPU ? vcpu : 0;
    }
    logf_("fakehax: open %s -> fd %d\n", path, fd);
    return fd;
}

#define OPEN_WRAPPER(name)                                                  \
    int name(const char *path, int flags, ...)                              \
    {                                                                       \
        int fd = fake_open(path);                                           \
        if (fd != -2) {                                                     \
            return fd;                                                      \
        }                                                                   \
        va_list ap;                                                         \
        va_start(ap, flags);                                                \
        mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0; \
        va_end(ap);                                                         \
        int (*real)(const char *, int, ...) = dlsym(RTLD_NEXT, #name);      \
        return real(path, flags, mode);                                     \
    }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

static const char *kind_name(enum kind k)
{
    return k == SYSTEM ? "system" : k == VM ? "vm" : "vcpu";
}

int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (fd < 0 || fd >= MAX_FDS || kinds[fd] == NONE) {
        int (*real)(int, unsigned long, ...) = dlsym(RTLD_NEXT, "ioctl");
        return real(fd, req, arg);
    }
    enum kind k = kinds[fd];
    int v = vcpu_of[fd] % MAX_VCPUS;
    const char *dev = kind_name(k);
    switch ((uint32_t)req) {
    case HAX_IOCTL_VERSION: {
        uint32_t *ver = arg; /* compat_version, cur_version: HAXM 7.x's values */
        ver[0] = 1;
        ver[1] = 4;
        logf_("fakehax: %s VERSION %#lx -> compat 1, cur 4\n", dev, req);
        return 0;
    }
    case HAX_IOCTL_CAPABILITY: {
        unsigned char *cap = arg;
        memset(cap, 0, 16);
        cap[0] = 0x1;       /* wstatus: WORKING, no MEMQUOTA */
        cap[2] = 0x4 | 0x8; /* winfo: UG | 64BIT_RAMBLOCK */
        logf_("fakehax: %s CAPABILITY %#lx -> working, UG, 64BIT_RAMBLOCK\n", dev, req);
        return 0;
    }
    case HAX_IOCTL_CREATE_VM:
        *(uint32_t *)arg = 0;
        logf_("fakehax: %s CREATE_VM %#lx -> vm 0\n", dev, req);
        return 0;
    case HAX_VM_IOCTL_NOTIFY_QEMU_VERSION: {
        uint32_t *q = arg;
        logf_("fakehax: %s NOTIFY_QEMU_VERSION %#lx cur %u min %u\n", dev, req, q[0], q[1]);
        return 0;
    }
    case HAX_VM_IOCTL_VCPU_CREATE:
        logf_("fakehax: %s VCPU_CREATE %#lx id %u\n", dev, req, *(uint32_t *)arg);
        return 0;
    case HAX_VM_IOCTL_ADD_RAMBLOCK: {
        uint64_t *r = arg;
        logf_("fakehax: %s ADD_RAMBLOCK %#lx va %#lx size %#lx\n", dev, req,
              (unsigned long)r[0], (unsigned long)r[1]);
        return 0;
    }
    case HAX_VM_IOCTL_ALLOC_RAM: {
        uint32_t *r = arg;
        logf_("fakehax: %s ALLOC_RAM %#lx size %#x\n", dev, req, r[0]);
        return 0;
    }
    case HAX_VM_IOCTL_SET_RAM: {
        unsigned char *r = arg;
        uint64_t pa, va;
        uint32_t size;
        memcpy(&pa, r, 8);
        memcpy(&size, r + 8, 4);
        memcpy(&va, r + 16, 8);
        logf_("fakehax: %s SET_RAM %#lx pa %#lx size %#x flags %#x va %#lx\n", dev, req,
              (unsigned long)pa, size, r[12], (unsigned long)va);
        return 0;
    }
    case HAX_VCPU_IOCTL_SETUP_TUNNEL: {
        void *t = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (t == MAP_FAILED) {
            return -1;
        }
        tunnels[v] = t;
        uint64_t *info = arg;
        info[0] = (uint64_t)(uintptr_t)t;          /* va: the tunnel page */
        info[1] = (uint64_t)(uintptr_t)t + 4096;   /* io_va: the IO buffer page */
        info[2] = 4096;                            /* size (u16) and padding */
        logf_("fakehax: %s SETUP_TUNNEL %#lx -> size 4096\n", dev, req);
        return 0;
    }
    case HAX_VCPU_SET_REGS:
        memcpy(regs[v], arg, 512);
        logf_("fakehax: %s SET_REGS %#lx\n", dev, req);
        return 0;
    case HAX_VCPU_GET_REGS:
        memcpy(arg, regs[v], 512);
        logf_("fakehax: %s GET_REGS %#lx\n", dev, req);
        return 0;
    case HAX_VCPU_IOCTL_SET_FPU:
        memcpy(fpu[v], arg, 512);
        logf_("fakehax: %s SET_FPU %#lx\n", dev, req);
        return 0;
    case HAX_VCPU_IOCTL_GET_FPU:
        memcpy(arg, fpu[v], 512);
        logf_("fakehax: %s GET_FPU %#lx\n", dev, req);
        return 0;
    case HAX_VCPU_IOCTL_SET_MSRS:
    case HAX_VCPU_IOCTL_GET_MSRS: {
        uint16_t *m = arg; /* nr_msr, done, pad[2], then the entries */
        m[1] = m[0];
        logf_("fakehax: %s %s_MSRS %#lx nr %u\n", dev,
              (uint32_t)req == HAX_VCPU_IOCTL_SET_MSRS ? "SET" : "GET", req, m[0]);
        return 0;
    }
    case HAX_VCPU_IOCTL_INTERRUPT:
        logf_("fakehax: %s INTERRUPT %#lx vector %u\n", dev, req, *(uint32_t *)arg);
        return 0;
    case HAX_VCPU_IOCTL_RUN:
        if (!tunnels[v]) {
            errno = EINVAL;
            return -1;
        }
        /* struct hax_tunnel: _exit_reason, _exit_flag, _exit_status, ... The first RUN
         * reports HAX_EXIT_STATECHANGE (7, the guest "shut down": QEMU requests shutdown);
         * later ones HAX_EXIT_HLT (6) with no interrupt pending, which parks the vCPU thread
         * until QEMU's main loop has exited, so the log stays short and deterministic. */
        tunnels[v][2] = runs[v]++ == 0 ? 7 : 6;
        logf_("fakehax: %s RUN %#lx -> %s\n", dev, req,
              tunnels[v][2] == 7 ? "STATECHANGE" : "HLT");
        return 0;
    default:
        logf_("fakehax: %s UNKNOWN %#lx\n", dev, req);
        errno = EINVAL;
        return -1;
    }
}
