//! The real [`Vmx`]: VMX instructions as inline assembly (Intel SDM Vol. 3C chapter 31; 2023+
//! numbering) and the VM entry/exit stub. This is the only module with VMX assembly in it.
//!
//! Failure convention (SDM §31.2): CF=1 → `VMfailInvalid`, ZF=1 → `VMfailValid`, whose number is
//! then read from the VM-instruction error field (0x4400) of the current VMCS.

use core::arch::{asm, global_asm};

use rhax_api::fpu::{FxLayout, XsaveArea};

use crate::vmx::instructions::{
    DescriptorTablePointer, GuestRegisters, InveptType, InvvpidType, Selectors, Vmx,
};
use crate::vmx::{VmFail, VmInstructionError};

/// Encoding of the VM-instruction error field (SDM Appendix B.3.2).
const VM_INSTRUCTION_ERROR: u64 = 0x4400;

/// The VMX instructions of the CPU this code runs on. Zero-sized: the state is the CPU's.
///
/// Not `Send`: a value stands for "VMX on this CPU", so it must not wander to another thread.
#[derive(Debug)]
pub struct HwVmx {
    _not_send: core::marker::PhantomData<*const ()>,
}

impl HwVmx {
    /// Creates the handle.
    ///
    /// # Safety
    /// The caller runs at CPL0 on an Intel 64 CPU with VMX, and uses the value only on the CPU
    /// (and in the non-preemptible context) it was created on.
    pub const unsafe fn new() -> Self {
        HwVmx {
            _not_send: core::marker::PhantomData,
        }
    }
}

/// Turns the flags after a VMX instruction into a result.
///
/// # Safety
/// CPL0, VMX root (a `VMfailValid` reads the error field of the current VMCS, which exists
/// whenever ZF=1 was reported).
#[inline(always)]
unsafe fn check(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        let mut number: u64;
        // SAFETY: ZF=1 means there is a current VMCS (SDM §31.2), so VMREAD of the
        // VM-instruction error field (always supported) succeeds; CPL0/VMX root by contract.
        unsafe {
            asm!("vmread {v}, {e}", v = out(reg) number, e = in(reg) VM_INSTRUCTION_ERROR,
                 options(nostack, nomem));
        }
        number &= 0xffff_ffff;
        Err(VmFail::Valid(VmInstructionError::from_number(
            number as u32,
        )))
    } else {
        Ok(())
    }
}

/// Why VMLAUNCH/VMRESUME (or the stub's HOST_RSP VMWRITE) failed: the stub's code 1 (CF,
/// VMfailInvalid) or 2 (ZF, VMfailValid with the error number). Out of line: the entry path
/// only tests the code.
///
/// # Safety
/// CPL0 and VMX root (the error number is read with VMREAD).
#[cold]
#[inline(never)]
unsafe fn entry_failed(code: u8) -> VmFail {
    let failed = if code == 1 {
        // SAFETY: the caller's contract.
        unsafe { check(1, 0) }
    } else {
        // SAFETY: as above.
        unsafe { check(0, 1) }
    };
    failed.err().unwrap_or(VmFail::Invalid)
}

/// The flag code of a VMX instruction into `{c}`: see [`check_code`].
macro_rules! fail_code {
    () => {
        "setbe {c}\nadc {c}, 0"
    };
}

/// [`check`] from one byte: `setbe` (CF or ZF: the instruction failed, SDM Vol. 3C §31.2)
/// then `adc 0` (plus CF) leave 0 on success, 1 for VMfailValid (ZF), 2 for VMfailInvalid (CF).
/// One register and one test on the success path instead of two of each: VMREAD and VMWRITE
/// run several times per VM exit.
///
/// # Safety
/// As [`check`].
#[inline(always)]
unsafe fn check_code(code: u8) -> Result<(), VmFail> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: forwarded; CF=1 exactly when the code is 2.
    unsafe { check(u8::from(code >= 2), 1) }
}

/// The stub's unwind directives: on PE/COFF targets (Windows, UEFI: the driver image) the
/// lines joined; elsewhere (ELF: the metal kernel, host tests) nothing, so that code is
/// unchanged.
#[cfg(any(windows, target_os = "uefi"))]
macro_rules! seh {
    ($($directive:literal),+ $(,)?) => {
        concat!($($directive, "\n"),+)
    };
}
/// The stub's section. On PE/COFF a section of its own, `.text$rhaxstub` (the linker merges
/// `.text$...` into `.text`, PE/COFF "Grouped Sections"): in the unlinked rlib every function
/// has its own COMDAT section also named `.text`, and GNU objdump then labels offset 0xb0 of
/// some of them `<rhax_vmx_exit>` and resynchronises its decoding there, which turned the
/// bytes of an unrelated function into an `fdiv` that `cargo xtask no-sse` refused. ELF
/// (metal kernel, host tests): `.text`, as before.
#[cfg(any(windows, target_os = "uefi"))]
macro_rules! stub_section {
    () => {
        ".section .text$rhaxstub,\"xr\""
    };
}
#[cfg(not(any(windows, target_os = "uefi")))]
macro_rules! stub_section {
    () => {
        ".text"
    };
}
#[cfg(not(any(windows, target_os = "uefi")))]
macro_rules! seh {
    ($($directive:literal),+ $(,)?) => {
        ""
    };
}

// The entry/exit stub. `rhax_vmx_enter(regs: *mut GuestRegisters, launched: u64,
// host_rsp: *mut u64) -> u64`, System V AMD64 calling convention on every target (arguments
// in rdi, rsi, rdx; result in rax): the Rust declaration below says `extern "sysv64"`, so on
// Windows x64 (and UEFI), whose own convention passes arguments in rcx, rdx, r8, rustc adapts
// the call site. The result: bits 7:0 = 0 after a VM exit, 1 = VMfailInvalid, 2 =
// VMfailValid; bit 8 = HOST_RSP written (unused: the stub also stores the new value through
// `host_rsp`, which is how callers see it).
//
// Registers preserved: the callee-saved general registers of *both* conventions, System V's
// rbx, rbp, r12-r15 (System V ABI AMD64 §3.2.1) and Microsoft x64's, which adds rdi and rsi,
// so the stub stays correct whichever way a caller is compiled (`cargo xtask abi` checks the
// assembled code). Not preserved: XMM6-15, callee-saved under Microsoft x64: they hold the
// guest's values after a VM exit (the guest's FXSAVE image stays loaded, vcpu/mod.rs), which
// the `sysv64` declaration makes legal (every XMM register is caller-saved there); the kernel
// crates are built soft-float and never read them (`cargo xtask no-sse`).
//
// Frame while the guest runs (HOST_RSP points at it): [rsp] = regs pointer, [rsp+8] = report,
// then the 8 callee-saved registers. A VM exit loads RSP from HOST_RSP and RIP from HOST_RIP
// (= rhax_vmx_exit) and clears RFLAGS except bit 1 (SDM §28.5.3), so DF=0 and IF=0 there.
//
// Unwind data (PE/COFF targets only: the Windows driver; `seh!` is empty on ELF): Windows
// walks kernel stacks with the `.pdata`/`.xdata` tables (bugchecks, debuggers, RtlVirtualUnwind;
// "x64 exception handling", UNWIND_INFO/UNWIND_CODE), and a function without an entry there
// is taken for a leaf, so a walk through the stub would lose the caller. The directives record
// no instruction: `rhax_vmx_enter` describes its 8 pushes as its prologue; `rhax_vmx_exit`,
// entered by the CPU on the frame `rhax_vmx_enter` built, describes that whole frame at its
// offset 0 (8 pushes, then 16 bytes: report and regs pointer) and its own `push rax`, so a walk
// from inside either finds the caller of `rhax_vmx_enter`. Known gaps (IF=0 in both places,
// so only an NMI or a machine check can walk there): between `push rax`/`push rdi` and `add
// rsp, 16` in the entry, and between `pop rcx` and `pop rax` in the exit, the frame is 16
// (resp. 8) bytes off. `cargo xtask sys` checks the `.pdata` entries and their codes.
global_asm!(
    stub_section!(),
    ".p2align 4",
    ".globl rhax_vmx_enter",
    "rhax_vmx_enter:",
    seh!(".seh_proc rhax_vmx_enter"),
    "push rbp",
    seh!(".seh_pushreg rbp"),
    "push rbx",
    seh!(".seh_pushreg rbx"),
    "push r12",
    seh!(".seh_pushreg r12"),
    "push r13",
    seh!(".seh_pushreg r13"),
    "push r14",
    seh!(".seh_pushreg r14"),
    "push r15",
    seh!(".seh_pushreg r15"),
    "push rdi",
    seh!(".seh_pushreg rdi"),
    "push rsi",
    seh!(".seh_pushreg rsi"),
    seh!(".seh_endprologue"),
    // HOST_RSP will be rsp after two more pushes. VMWRITE it only if it changed.
    "xor eax, eax",
    "lea rcx, [rsp - 16]",
    "cmp rcx, [rdx]",
    "je 2f",
    "mov r8d, 0x6c14",
    "vmwrite r8, rcx",
    "jbe 9f",
    "mov [rdx], rcx",
    "mov eax, 1",
    "2:",
    "push rax",
    "push rdi",
    // Load the guest GPRs; MOV leaves the flags of TEST alone (ZF=1: not launched).
    "test rsi, rsi",
    "mov rax, [rdi + 0]",
    "mov rcx, [rdi + 8]",
    "mov rdx, [rdi + 16]",
    "mov rbx, [rdi + 24]",
    "mov rbp, [rdi + 40]",
    "mov rsi, [rdi + 48]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rdi, [rdi + 56]",
    "jnz 3f",
    "vmlaunch",
    "jmp 4f",
    "3:",
    "vmresume",
    "4:",
    // VM entry failed (the instruction fell through): CF or ZF says how.
    "mov eax, 2",
    "mov ecx, 1",
    "cmovc eax, ecx",
    "mov rcx, [rsp + 8]",
    "shl ecx, 8",
    "or eax, ecx",
    "add rsp, 16",
    "jmp 8f",
    "9:",
    // VMWRITE of HOST_RSP failed; nothing was pushed after the callee-saved registers.
    "mov eax, 2",
    "mov ecx, 1",
    "cmovc eax, ecx",
    "8:",
    "pop rsi",
    "pop rdi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    seh!(".seh_endproc"),
    "",
    ".p2align 4",
    ".globl rhax_vmx_exit",
    "rhax_vmx_exit:",
    seh!(
        ".seh_proc rhax_vmx_exit",
        ".seh_pushreg rbp",
        ".seh_pushreg rbx",
        ".seh_pushreg r12",
        ".seh_pushreg r13",
        ".seh_pushreg r14",
        ".seh_pushreg r15",
        ".seh_pushreg rdi",
        ".seh_pushreg rsi",
        ".seh_stackalloc 16"
    ),
    "push rax",
    seh!(".seh_stackalloc 8", ".seh_endprologue"),
    "mov rax, [rsp + 8]",
    "mov [rax + 8], rcx",
    "mov [rax + 16], rdx",
    "mov [rax + 24], rbx",
    "mov [rax + 40], rbp",
    "mov [rax + 48], rsi",
    "mov [rax + 56], rdi",
    "mov [rax + 64], r8",
    "mov [rax + 72], r9",
    "mov [rax + 80], r10",
    "mov [rax + 88], r11",
    "mov [rax + 96], r12",
    "mov [rax + 104], r13",
    "mov [rax + 112], r14",
    "mov [rax + 120], r15",
    "pop rcx",
    "mov [rax], rcx",
    "add rsp, 8",
    "pop rax",
    "shl eax, 8",
    "pop rsi",
    "pop rdi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    seh!(".seh_endproc"),
);

// `sysv64`, not `C`: the stub reads its arguments from rdi, rsi, rdx on every target (see
// above); `extern "C"` would mean rcx, rdx, r8 on Windows x64 and UEFI.
extern "sysv64" {
    fn rhax_vmx_enter(regs: *mut GuestRegisters, launched: u64, host_rsp: *mut u64) -> u64;
    fn rhax_vmx_exit();
}

/// A VMX instruction with one 64-bit memory operand (VMXON, VMCLEAR, VMPTRLD).
macro_rules! vmx_mem_op {
    ($insn:literal, $addr:expr) => {{
        let operand: u64 = $addr;
        let (cf, zf): (u8, u8);
        // SAFETY: the operand is a live local; the instruction's preconditions are the caller's
        // (see the `# Safety` of the trait method).
        unsafe {
            asm!(concat!($insn, " qword ptr [{p}]"), "setc {cf}", "setz {zf}",
                 p = in(reg) &operand, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        // SAFETY: CPL0 and VMX root as the trait method requires.
        unsafe { check(cf, zf) }
    }};
}

impl Vmx for HwVmx {
    unsafe fn vmxon(&mut self, region: u64) -> Result<(), VmFail> {
        vmx_mem_op!("vmxon", region)
    }

    unsafe fn vmxoff(&mut self) -> Result<(), VmFail> {
        let (cf, zf): (u8, u8);
        // SAFETY: CPL0 and VMX root by contract.
        unsafe {
            asm!("vmxoff", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        // SAFETY: as above.
        unsafe { check(cf, zf) }
    }

    unsafe fn vmclear(&mut self, vmcs: u64) -> Result<(), VmFail> {
        vmx_mem_op!("vmclear", vmcs)
    }

    unsafe fn vmptrld(&mut self, vmcs: u64) -> Result<(), VmFail> {
        vmx_mem_op!("vmptrld", vmcs)
    }

    unsafe fn vmptrst(&mut self) -> Result<u64, VmFail> {
        let mut pointer: u64 = 0;
        let (cf, zf): (u8, u8);
        // SAFETY: VMPTRST stores 8 bytes into the live local; CPL0/VMX root by contract.
        unsafe {
            asm!("vmptrst qword ptr [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &mut pointer,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        // SAFETY: as above.
        unsafe { check(cf, zf) }?;
        Ok(pointer)
    }

    // Always inlined: one instruction and one flag test, on every VM exit's path.
    #[inline(always)]
    unsafe fn vmread(&mut self, encoding: u32) -> Result<u64, VmFail> {
        let value: u64;
        let code: u8;
        // SAFETY: register operands only; CPL0, VMX root and a current VMCS by contract.
        unsafe {
            asm!("vmread {v}, {e}", fail_code!(), v = out(reg) value,
                 e = in(reg) u64::from(encoding), c = out(reg_byte) code,
                 options(nostack, nomem));
        }
        // SAFETY: as above.
        unsafe { check_code(code) }?;
        Ok(value)
    }

    // Always inlined: one instruction and one flag test, on every VM exit's path.
    #[inline(always)]
    unsafe fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        let code: u8;
        // SAFETY: register operands only; CPL0, VMX root, a current VMCS and a harmless value
        // by contract.
        unsafe {
            asm!("vmwrite {e}, {v}", fail_code!(), e = in(reg) u64::from(encoding),
                 v = in(reg) value, c = out(reg_byte) code, options(nostack, nomem));
        }
        // SAFETY: as above.
        unsafe { check_code(code) }
    }

    // Always inlined into `Vcpu::enter`: a call, a frame and the packing of the result into
    // one register and out again cost ~15 emulated instructions per round trip.
    #[inline(always)]
    unsafe fn vmenter(
        &mut self,
        regs: &mut GuestRegisters,
        launched: bool,
        host_rsp: &mut u64,
    ) -> Result<(), VmFail> {
        // SAFETY: the stub follows the System V ABI it is declared with (and preserves the
        // callee-saved registers of Microsoft x64 too; the frame is popped on every path); the
        // pointers are live exclusive references; the VMCS preconditions are the caller's.
        let r = unsafe { rhax_vmx_enter(regs, u64::from(launched), host_rsp) };
        if r & 0xff != 0 {
            // SAFETY: as above (CPL0, VMX root).
            return Err(unsafe { entry_failed(r as u8) });
        }
        Ok(())
    }

    fn host_rip(&self) -> u64 {
        rhax_vmx_exit as *const () as usize as u64
    }

    unsafe fn invept(&mut self, kind: InveptType, eptp: u64) -> Result<(), VmFail> {
        let descriptor: [u64; 2] = [eptp, 0];
        let t: u64 = match kind {
            InveptType::SingleContext => 1,
            InveptType::Global => 2,
        };
        let (cf, zf): (u8, u8);
        // SAFETY: the 16-byte descriptor is a live local; CPL0/VMX root by contract.
        unsafe {
            asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) t,
                 d = in(reg) &descriptor, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        // SAFETY: as above.
        unsafe { check(cf, zf) }
    }

    unsafe fn invvpid(&mut self, kind: InvvpidType, vpid: u16, address: u64) -> Result<(), VmFail> {
        let descriptor: [u64; 2] = [u64::from(vpid), address];
        let t: u64 = match kind {
            InvvpidType::IndividualAddress => 0,
            InvvpidType::SingleContext => 1,
            InvvpidType::AllContexts => 2,
            InvvpidType::SingleContextRetainingGlobals => 3,
        };
        let (cf, zf): (u8, u8);
        // SAFETY: the 16-byte descriptor is a live local; CPL0/VMX root by contract.
        unsafe {
            asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) t,
                 d = in(reg) &descriptor, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
                 options(nostack));
        }
        // SAFETY: as above.
        unsafe { check(cf, zf) }
    }

    unsafe fn rdmsr(&mut self, msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: CPL0 and an existing MSR by contract.
        unsafe {
            asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, nomem));
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }

    unsafe fn wrmsr(&mut self, msr: u32, value: u64) {
        // SAFETY: CPL0 and a harmless write by contract.
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack));
        }
    }

    unsafe fn read_cr0(&mut self) -> u64 {
        let v: u64;
        // SAFETY: CPL0 by contract.
        unsafe { asm!("mov {}, cr0", out(reg) v, options(nostack, nomem)) };
        v
    }

    unsafe fn read_cr3(&mut self) -> u64 {
        let v: u64;
        // SAFETY: CPL0 by contract.
        unsafe { asm!("mov {}, cr3", out(reg) v, options(nostack, nomem)) };
        v
    }

    unsafe fn read_cr4(&mut self) -> u64 {
        let v: u64;
        // SAFETY: CPL0 by contract.
        unsafe { asm!("mov {}, cr4", out(reg) v, options(nostack, nomem)) };
        v
    }

    unsafe fn write_cr4(&mut self, value: u64) {
        // SAFETY: CPL0 and a harmless value by contract.
        unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack)) };
    }

    unsafe fn selectors(&mut self) -> Selectors {
        let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
        // SAFETY: reading segment registers and TR has no side effects; CPL0 by contract.
        unsafe {
            asm!("mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
                 "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}",
                 out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
                 out(reg) tr, options(nostack, nomem));
        }
        Selectors {
            cs,
            ss,
            ds,
            es,
            fs,
            gs,
            tr,
        }
    }

    unsafe fn sgdt(&mut self) -> DescriptorTablePointer {
        let mut buf = [0u8; 10];
        // SAFETY: SGDT stores 10 bytes into the live local buffer.
        unsafe { asm!("sgdt [{}]", in(reg) buf.as_mut_ptr(), options(nostack)) };
        table_pointer(buf)
    }

    unsafe fn sidt(&mut self) -> DescriptorTablePointer {
        let mut buf = [0u8; 10];
        // SAFETY: SIDT stores 10 bytes into the live local buffer.
        unsafe { asm!("sidt [{}]", in(reg) buf.as_mut_ptr(), options(nostack)) };
        table_pointer(buf)
    }

    unsafe fn tss_base(&mut self, gdt: DescriptorTablePointer, tr: u16) -> u64 {
        let entry = (gdt.base + u64::from(tr & !7)) as *const u64;
        // SAFETY: by contract `tr` selects a 16-byte TSS descriptor inside this CPU's GDT.
        let low = unsafe { entry.read_unaligned() };
        // SAFETY: as above, the second half of the system descriptor.
        let high = unsafe { entry.wrapping_add(1).read_unaligned() };
        // SDM Vol. 3A §8.2.3, Figure 8-4: base 15:0 in bits 31:16, 23:16 in 39:32, 31:24 in
        // 63:56, 63:32 in the low half of the second quadword.
        ((low >> 16) & 0xff_ffff) | ((low >> 56) << 24) | ((high & 0xffff_ffff) << 32)
    }

    fn rdtsc(&mut self) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: RDTSC is allowed at CPL0 (and CPL3 unless CR4.TSD) and has no side effects.
        unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem)) };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    unsafe fn read_cr2(&mut self) -> u64 {
        let v: u64;
        // SAFETY: CPL0 by contract.
        unsafe { asm!("mov {}, cr2", out(reg) v, options(nostack, nomem)) };
        v
    }

    unsafe fn write_cr2(&mut self, value: u64) {
        // SAFETY: CPL0 by contract; CR2 only holds the last page-fault address.
        unsafe { asm!("mov cr2, {}", in(reg) value, options(nostack, nomem)) };
    }

    unsafe fn read_breakpoint_addresses(&mut self) -> [u64; 4] {
        let (a, b, c, d): (u64, u64, u64, u64);
        // SAFETY: CPL0 by contract; reading DR0-3 has no side effect.
        unsafe {
            asm!(
                "mov {}, dr0",
                "mov {}, dr1",
                "mov {}, dr2",
                "mov {}, dr3",
                out(reg) a,
                out(reg) b,
                out(reg) c,
                out(reg) d,
                options(nostack, nomem, preserves_flags)
            )
        };
        [a, b, c, d]
    }

    unsafe fn write_breakpoint_addresses(&mut self, values: &[u64; 4]) {
        // SAFETY: CPL0 by contract, values canonical (checked by the caller's type), and
        // interrupts off: the addresses only matter where DR7 enables them.
        unsafe {
            asm!(
                "mov dr0, {}",
                "mov dr1, {}",
                "mov dr2, {}",
                "mov dr3, {}",
                in(reg) values[0],
                in(reg) values[1],
                in(reg) values[2],
                in(reg) values[3],
                options(nostack, nomem, preserves_flags)
            )
        };
    }

    // Never inlined: the x87/SSE state-swap instructions stay in two named functions, the only
    // places `cargo xtask no-sse` allows them (the guest's XMM registers are live between the
    // two, so no other kernel instruction may touch vector state).
    #[inline(never)]
    unsafe fn fxsave(&mut self, area: &mut FxLayout) {
        let p: *mut FxLayout = area;
        // SAFETY: CPL0, CR0.TS=0 by contract; `area` is 512 writable bytes aligned to 16.
        unsafe { asm!("fxsave64 [{}]", in(reg) p, options(nostack)) };
    }

    // Never inlined: see `fxsave`.
    #[inline(never)]
    unsafe fn fxrstor(&mut self, area: &FxLayout) {
        let p: *const FxLayout = area;
        // SAFETY: CPL0, CR0.TS=0 by contract; `area` is a valid 16-aligned FXSAVE image.
        unsafe { asm!("fxrstor64 [{}]", in(reg) p, options(nostack, readonly)) };
    }

    unsafe fn xgetbv0(&mut self) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: CR4.OSXSAVE=1 by contract; XGETBV reads XCR0 only.
        unsafe {
            asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nostack, nomem, preserves_flags))
        };
        (u64::from(hi) << 32) | u64::from(lo)
    }

    unsafe fn xsetbv0(&mut self, xcr0: u64) {
        // SAFETY: CPL0, CR4.OSXSAVE=1 and an XCR0 value this CPU accepts (contract).
        unsafe {
            asm!("xsetbv", in("ecx") 0u32, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32,
                options(nostack, nomem, preserves_flags))
        };
    }

    // Never inlined, as `fxsave`: the only places besides it that touch vector state.
    #[inline(never)]
    unsafe fn xsave(&mut self, area: &mut XsaveArea, mask: u64) {
        let p: *mut XsaveArea = area;
        // SAFETY: CPL0, CR4.OSXSAVE=1, CR0.TS=0 (contract); `area` is 4 KiB writable, 64-byte
        // aligned, large enough for the components `mask` names (contract).
        unsafe {
            asm!("xsave64 [{}]", in(reg) p, in("eax") mask as u32, in("edx") (mask >> 32) as u32,
                options(nostack, preserves_flags))
        };
    }

    // Never inlined: see `xsave`.
    #[inline(never)]
    unsafe fn xrstor(&mut self, area: &XsaveArea, mask: u64) {
        let p: *const XsaveArea = area;
        // SAFETY: as `xsave`; `area` is valid for XRSTOR (contract).
        unsafe {
            asm!("xrstor64 [{}]", in(reg) p, in("eax") mask as u32, in("edx") (mask >> 32) as u32,
                options(nostack, readonly, preserves_flags))
        };
    }

    unsafe fn raise_host_nmi(&mut self) {
        // SAFETY: CPL0 with the host IDT loaded (contract): INT 2 runs the host's NMI handler,
        // which returns with IRET.
        unsafe { asm!("int 2") };
    }
}

fn table_pointer(buf: [u8; 10]) -> DescriptorTablePointer {
    let limit = u16::from_le_bytes([buf[0], buf[1]]);
    let mut base = [0u8; 8];
    base.copy_from_slice(&buf[2..10]);
    DescriptorTablePointer {
        base: u64::from_le_bytes(base),
        limit,
    }
}

#[cfg(test)]
mod flag_code_tests {
    use core::arch::asm;

    /// [`fail_code!`] after a CMP, which sets CF and ZF as a VMX instruction reports: below
    /// (CF=1, VMfailInvalid), equal (ZF=1, VMfailValid), above (neither: success).
    fn code_after_cmp(a: u64, b: u64) -> u8 {
        let code: u8;
        // SAFETY: register operands and flags only.
        unsafe {
            asm!("cmp {a}, {b}", fail_code!(), a = in(reg) a, b = in(reg) b,
                 c = out(reg_byte) code, options(nostack, nomem));
        }
        code
    }

    #[test]
    fn success_valid_and_invalid_failures_get_distinct_codes() {
        assert_eq!(code_after_cmp(2, 1), 0);
        assert_eq!(code_after_cmp(1, 1), 1);
        assert_eq!(code_after_cmp(0, 1), 2);
    }
}
