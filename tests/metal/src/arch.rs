//! Thin wrappers over privileged x86 instructions. Each is one instruction; callers run at CPL 0
//! (this kernel never leaves ring 0).

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port write must not break an invariant of the device behind it.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The port read must not have side effects the caller did not plan for.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the device; `in` touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (else #GP, which this kernel reports as a fatal exception).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches that the MSR exists; rdmsr touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must be valid and not break the kernel's invariants.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and the value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}

/// CPUID leaf/subleaf: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged here (CR4.TSD is clear) and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads CR0.
pub fn cr0() -> u64 {
    let v: u64;
    // SAFETY: reading a control register at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR2 (the last page-fault linear address).
pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading a control register at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR4.
pub fn cr4() -> u64 {
    let v: u64;
    // SAFETY: reading a control register at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes CR0.
///
/// # Safety
/// The new value must keep paging, protection and the FPU usable as the kernel expects.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller vouches for the value.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE and SSE enabled and be allowed by the CPU.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller vouches for the value.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Disables maskable interrupts.
pub fn cli() {
    // SAFETY: clearing IF only delays interrupts; the kernel relies on no interrupt for safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Stops the run in Bochs: the magic breakpoint (`xchg bx, bx`) drops into the debugger, which
/// runs `q` from the rc file (exit status 0). Elsewhere it is a no-op, so halt afterwards.
pub fn magic_break() {
    // SAFETY: xchg of a register with itself changes nothing.
    unsafe { asm!("xchg bx, bx", options(nomem, nostack, preserves_flags)) }
}

/// Halts forever with interrupts off (the end of a run outside Bochs).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli; hlt stops this CPU; nothing else is expected of it.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// XGETBV with ECX = 0 (XCR0).
///
/// # Safety
/// CR4.OSXSAVE must be 1 (else #UD).
pub unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE set (caller); XGETBV only reads XCR0.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nostack, nomem, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// XSETBV with ECX = 0 (XCR0).
///
/// # Safety
/// CPL0, CR4.OSXSAVE = 1, and a value XSETBV accepts on this CPU (SDM Vol. 2C XSETBV).
pub unsafe fn xsetbv0(v: u64) {
    // SAFETY: the caller vouches for the value.
    unsafe {
        asm!("xsetbv", in("ecx") 0u32, in("eax") v as u32, in("edx") (v >> 32) as u32,
            options(nostack, nomem, preserves_flags))
    };
}
