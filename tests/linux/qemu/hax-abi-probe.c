/*
 * Prints the HAX ABI exactly as the QEMU built by `cargo xtask qemu` compiles it: every ioctl
 * code of target/i386/hax/hax-posix.h (the POSIX backend, used on Linux with --enable-hax) and
 * the size of every structure those ioctls carry, from target/i386/hax/hax-interface.h. Built
 * against the unpacked Debian source with -I<src>/target/i386/hax; `cargo xtask qemu` compares
 * its output with the Linux encodings rhax-api pins (api/src/ioctl.rs).
 *
 * Output: one line per item, "ioctl NAME 0xCODE" or "size STRUCT N".
 */
#include <stdint.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* hax-posix.h's inline helpers name these QEMU types; only their shape matters here. */
typedef int hax_fd;
struct hax_state {
    hax_fd fd;
};

#include "hax-interface.h"
#include "hax-posix.h"

#define IOCTL(name) printf("ioctl %s 0x%08lx\n", #name, (unsigned long)(name))
#define SIZE(type) printf("size %s %zu\n", #type, sizeof(struct type))

int main(void)
{
    IOCTL(HAX_IOCTL_VERSION);
    IOCTL(HAX_IOCTL_CREATE_VM);
    IOCTL(HAX_IOCTL_DESTROY_VM);
    IOCTL(HAX_IOCTL_CAPABILITY);
    IOCTL(HAX_VM_IOCTL_VCPU_CREATE);
    IOCTL(HAX_VM_IOCTL_ALLOC_RAM);
    IOCTL(HAX_VM_IOCTL_SET_RAM);
    IOCTL(HAX_VM_IOCTL_VCPU_DESTROY);
    IOCTL(HAX_VM_IOCTL_NOTIFY_QEMU_VERSION);
    IOCTL(HAX_VM_IOCTL_ADD_RAMBLOCK);
    IOCTL(HAX_VCPU_IOCTL_RUN);
    IOCTL(HAX_VCPU_IOCTL_SET_MSRS);
    IOCTL(HAX_VCPU_IOCTL_GET_MSRS);
    IOCTL(HAX_VCPU_IOCTL_SET_FPU);
    IOCTL(HAX_VCPU_IOCTL_GET_FPU);
    IOCTL(HAX_VCPU_IOCTL_SETUP_TUNNEL);
    IOCTL(HAX_VCPU_IOCTL_INTERRUPT);
    IOCTL(HAX_VCPU_SET_REGS);
    IOCTL(HAX_VCPU_GET_REGS);
    SIZE(fx_layout);
    SIZE(hax_msr_data);
    SIZE(vcpu_state_t);
    SIZE(hax_tunnel);
    SIZE(hax_module_version);
    SIZE(hax_qemu_version);
    SIZE(hax_tunnel_info);
    SIZE(hax_alloc_ram_info);
    SIZE(hax_ramblock_info);
    SIZE(hax_set_ram_info);
    SIZE(hax_capabilityinfo);
    SIZE(hax_fastmmio);
    return 0;
}
