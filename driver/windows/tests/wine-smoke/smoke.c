/* Smoke test of rhax.sys's IRP path under Wine (or Windows): opens \\.\HAX, sends
 * VERSION and CAPABILITY, checks a few refusals, prints what it saw. Not the real client
 * (the userlib's tools are); build: x86_64-w64-mingw32-gcc -O2 -o smoke.exe smoke.c -ladvapi32 */
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>
#include <string.h>

#define CODE(fn) (0x40000000u | ((fn) << 2))
#define HAX_IOCTL_VERSION CODE(0x900)
#define HAX_IOCTL_CREATE_VM CODE(0x901)
#define HAX_IOCTL_CAPABILITY CODE(0x910)
#define HAX_VM_IOCTL_VCPU_CREATE CODE(0x902)
#define HAX_VM_IOCTL_NOTIFY_QEMU_VERSION CODE(0x910)
#define HAX_VCPU_IOCTL_SETUP_TUNNEL CODE(0x90b)

static int failures;

static void check(int ok, const char *what)
{
    printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

/* Prints the DACL of the object behind `h` as SDDL (what the driver set on the device). */
static void print_dacl(HANDLE h, const char *what)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    DWORD r = GetSecurityInfo(h, SE_KERNEL_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL, NULL,
                              NULL, &sd);
    if (r != ERROR_SUCCESS) {
        printf("DACL of %s: GetSecurityInfo error %lu\n", what, r);
        return;
    }
    LPWSTR sddl = NULL;
    if (ConvertSecurityDescriptorToStringSecurityDescriptorW(sd, SDDL_REVISION_1,
                                                             DACL_SECURITY_INFORMATION, &sddl, NULL)) {
        printf("DACL of %s: %ls\n", what, sddl);
        LocalFree(sddl);
    }
    LocalFree(sd);
}

static HANDLE open_dev(const wchar_t *name)
{
    return CreateFileW(name, GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                       FILE_ATTRIBUTE_NORMAL, NULL);
}

static BOOL ioctl(HANDLE h, DWORD code, void *in, DWORD in_len, void *out, DWORD out_len,
                  DWORD *got, DWORD *err)
{
    BOOL ok = DeviceIoControl(h, code, in, in_len, out, out_len, got, NULL);
    *err = ok ? 0 : GetLastError();
    return ok;
}

/* Whether an open of `name` is refused by the driver. Windows fails CreateFile with the
 * driver's IRP_MJ_CREATE status; Wine 8.0 does not wait for IRP_MJ_CREATE (the handle is
 * returned before the driver has seen the open, and its refusal is lost), so there the
 * refusal shows as every request on the handle failing. */
static int open_refused(const wchar_t *name)
{
    HANDLE x = open_dev(name);
    if (x == INVALID_HANDLE_VALUE) {
        printf("  (CreateFile error %lu)\n", GetLastError());
        return 1;
    }
    unsigned char b[8];
    DWORD got = 0, err = 0;
    BOOL ok = ioctl(x, HAX_IOCTL_VERSION, NULL, 0, b, 8, &got, &err);
    CloseHandle(x);
    printf("  (CreateFile succeeded; a request on it: ok=%d error %lu)\n", ok, err);
    /* 6 from the driver (the open was refused, so the handle names no object); 5 from
     * wineserver when the device was deleted before the request came (Wine queues the
     * CLOSE of an earlier CloseHandle without waiting for it, so the device can go after
     * CreateFileW returned). */
    return !ok && (err == ERROR_INVALID_HANDLE || err == ERROR_ACCESS_DENIED);
}

/* With a working CAPABILITY (real VT-x, or the wine-fake-vmx test build): the VM and vCPU
 * devices appear with their objects, are exclusive, and go when the objects go. */
static void vm_devices(HANDLE sys)
{
    DWORD got = 0, err = 0;
    unsigned vm = 0xffffffff;
    BOOL ok = ioctl(sys, HAX_IOCTL_CREATE_VM, NULL, 0, &vm, 4, &got, &err);
    check(ok && got == 4 && vm == 0, "CREATE_VM: VM 0");
    HANDLE v = open_dev(L"\\\\.\\hax_vm00");
    check(v != INVALID_HANDLE_VALUE, "open \\\\.\\hax_vm00");
    if (v == INVALID_HANDLE_VALUE) {
        printf("  (error %lu)\n", GetLastError());
        return;
    }
    check(open_refused(L"\\\\.\\hax_vm00"), "second open of hax_vm00 refused (exclusive)");

    print_dacl(v, "\\\\.\\hax_vm00");
    unsigned qv[2] = {4, 1};
    ok = ioctl(v, HAX_VM_IOCTL_NOTIFY_QEMU_VERSION, qv, 8, NULL, 0, &got, &err);
    check(ok, "NOTIFY_QEMU_VERSION on the VM device (same code as CAPABILITY)");

    unsigned id = 0;
    ok = ioctl(v, HAX_VM_IOCTL_VCPU_CREATE, &id, 4, NULL, 0, &got, &err);
    check(ok, "VCPU_CREATE 0");
    if (!ok) printf("  (error %lu)\n", err);
    HANDLE c = open_dev(L"\\\\.\\hax_vm00_vcpu00");
    check(c != INVALID_HANDLE_VALUE, "open \\\\.\\hax_vm00_vcpu00");
    check(open_refused(L"\\\\.\\hax_vm00_vcpu00"), "second open of hax_vm00_vcpu00 refused");
    unsigned char tunnel[24];
    ok = ioctl(c, HAX_VCPU_IOCTL_SETUP_TUNNEL, NULL, 0, tunnel, 24, &got, &err);
    check(ok && got == 24, "SETUP_TUNNEL, 24 bytes");
    ok = ioctl(c, HAX_IOCTL_VERSION, NULL, 0, tunnel, 8, &got, &err);
    check(!ok && err == ERROR_INVALID_PARAMETER, "VERSION on a vCPU: unknown there, error 87");
    check(open_refused(L"\\\\.\\hax_vm00_vcpu01"), "no hax_vm00_vcpu01");

    CloseHandle(c);
    check(open_refused(L"\\\\.\\hax_vm00_vcpu00"), "a closed vCPU cannot be reopened");
    CloseHandle(v);
    check(open_refused(L"\\\\.\\hax_vm00"), "a closed VM cannot be reopened");
    check(open_refused(L"\\\\.\\hax_vm00_vcpu00"), "nor its vCPU");

    /* The id is free again: the next VM is 0 again, with a device. */
    ok = ioctl(sys, HAX_IOCTL_CREATE_VM, NULL, 0, &vm, 4, &got, &err);
    check(ok && vm == 0, "CREATE_VM after the close: VM 0 again");
    v = open_dev(L"\\\\.\\hax_vm00");
    check(v != INVALID_HANDLE_VALUE, "open the new hax_vm00");
    unsigned qv2[2] = {4, 1};
    ok = ioctl(v, HAX_VM_IOCTL_NOTIFY_QEMU_VERSION, qv2, 8, NULL, 0, &got, &err);
    check(ok, "and use it");
    if (v != INVALID_HANDLE_VALUE) CloseHandle(v);
}

/* Every VM id: 64 VMs, hax_vm63 opens, the 65th CREATE_VM fails with error 31; VMs never
 * opened die with the system handle that made them, and so do their devices. */
static void many_vms(void)
{
    HANDLE s = open_dev(L"\\\\.\\HAX");
    DWORD got = 0, err = 0;
    unsigned vm = 0, made = 0;
    while (ioctl(s, HAX_IOCTL_CREATE_VM, NULL, 0, &vm, 4, &got, &err) && made < 100)
        made++;
    printf("  (%u VMs, then error %lu)\n", made, err);
    check(made == 64 && err == ERROR_GEN_FAILURE, "64 VMs, the 65th refused with error 31");
    HANDLE v = open_dev(L"\\\\.\\hax_vm63");
    unsigned qv[2] = {4, 1};
    BOOL ok = ioctl(v, HAX_VM_IOCTL_NOTIFY_QEMU_VERSION, qv, 8, NULL, 0, &got, &err);
    check(ok, "hax_vm63 opens and works");
    CloseHandle(v);
    CloseHandle(s);
    check(open_refused(L"\\\\.\\hax_vm05"), "never-opened VMs gone with their system handle");
    check(open_refused(L"\\\\.\\hax_vm63"), "and the closed one too");
}

int main(void)
{
    unsigned char buf[64];
    DWORD got = 0, err = 0;
    HANDLE h = open_dev(L"\\\\.\\HAX");
    check(h != INVALID_HANDLE_VALUE, "open \\\\.\\HAX");
    if (h == INVALID_HANDLE_VALUE) {
        printf("error %lu\n", GetLastError());
        return 1;
    }

    print_dacl(h, "\\\\.\\HAX");
    memset(buf, 0xcc, sizeof buf);
    BOOL ok = ioctl(h, HAX_IOCTL_VERSION, NULL, 0, buf, 8, &got, &err);
    unsigned compat, cur;
    memcpy(&compat, buf, 4);
    memcpy(&cur, buf + 4, 4);
    printf("VERSION: ok=%d got=%lu err=%lu compat=%u cur=%u\n", ok, got, err, compat, cur);
    check(ok && got == 8 && compat == 1 && cur == 4, "VERSION 1/4, 8 bytes");

    ok = ioctl(h, HAX_IOCTL_VERSION, NULL, 0, buf, 4, &got, &err);
    check(!ok && err == ERROR_INVALID_PARAMETER, "VERSION with 4 bytes: error 87");

    memset(buf, 0xcc, sizeof buf);
    ok = ioctl(h, HAX_IOCTL_CAPABILITY, NULL, 0, buf, 16, &got, &err);
    unsigned short wstatus, winfo;
    memcpy(&wstatus, buf, 2);
    memcpy(&winfo, buf + 2, 2);
    printf("CAPABILITY: ok=%d got=%lu err=%lu wstatus=%#x winfo=%#x\n", ok, got, err, wstatus,
           winfo);
    check(ok && got == 16, "CAPABILITY, 16 bytes");

    if (!(wstatus & 1)) {
        unsigned vm = 0xffffffff;
        ok = ioctl(h, HAX_IOCTL_CREATE_VM, NULL, 0, &vm, 4, &got, &err);
        printf("CREATE_VM: ok=%d err=%lu vm=%u\n", ok, err, vm);
        check(!ok && err == ERROR_GEN_FAILURE, "CREATE_VM without VT-x: error 31");
    }

    ok = ioctl(h, 0x222000, NULL, 0, buf, 8, &got, &err);
    check(!ok && err == ERROR_INVALID_FUNCTION, "unknown code on \\\\.\\HAX: error 1");
    ok = ioctl(h, CODE(0x900) | 2 /* METHOD_OUT_DIRECT */, NULL, 0, buf, 8, &got, &err);
    check(!ok && err == ERROR_INVALID_FUNCTION, "non-buffered code: unknown, error 1");

    HANDLE h2 = open_dev(L"\\\\.\\HAX");
    check(h2 != INVALID_HANDLE_VALUE, "second open of \\\\.\\HAX (not exclusive)");
    if (h2 != INVALID_HANDLE_VALUE) CloseHandle(h2);

    check(open_refused(L"\\\\.\\hax_vm00"), "no \\\\.\\hax_vm00 without a VM");

    if (wstatus & 1) {
        vm_devices(h);
        many_vms();
    }

    CloseHandle(h);
    printf("%s\n", failures ? "SMOKE FAILED" : "SMOKE PASSED");
    return failures != 0;
}
