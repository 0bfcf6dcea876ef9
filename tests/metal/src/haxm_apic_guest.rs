//! The guest of `haxm-apic` (issue 12), assembled with the kernel: 64-bit mode, flat
//! segments, identity paging (the first 2 MiB and the 4th GiB, where the APIC lives).
//!
//! It runs one test suite twice, in xAPIC mode (MMIO at the base in R15) and in x2APIC mode
//! (MSRs 0x800..), each writing its results as dwords to a bank (R14); the xAPIC-only checks
//! (writable ID, base relocation, the IA32_APIC_BASE #GP rules) write to [`XBANK`]. Interrupt
//! handlers append what they saw to a log at [`LOG`] (a count, then dwords). The guest asks
//! the client for outside events with OUT: [`PORT_MSI`] (EAX = MSI data to signal at
//! 0xFEE00000), [`PORT_LINT0`] (EAX = LINT0 level), and says it is done with [`PORT_DONE`].
//!
//! The code is data to the kernel (a `.rodata` section) and position independent (relative
//! calls, jumps and LEA); data lives at fixed guest addresses, the constants below.

use core::arch::global_asm;

/// Where the client copies the code.
pub const CODE: u64 = 0x1000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = 0x8000;
/// The IDT (256 16-byte gates).
pub const IDT: u64 = 0x9000;
/// The interrupt log: a dword count, then up to [`LOG_MAX`] dwords.
pub const LOG: u64 = 0xA000;
/// Entries the log holds.
pub const LOG_MAX: u64 = 200;
/// Handler snapshots: ISR[2], ISR[3] inside the nested handler, then after its EOI.
pub const S_ISR2: u64 = 0xA800;
/// ISR[3] inside the nested handler.
pub const S_ISR3: u64 = 0xA804;
/// ISR[2] after the nested handler's EOI.
pub const S_ISR2B: u64 = 0xA808;
/// ISR[3] after the nested handler's EOI.
pub const S_ISR3B: u64 = 0xA80C;
/// TMR[2] in the level-triggered handler.
pub const S_TMR: u64 = 0xA810;
/// The TSC when the TSC-deadline handler ran (qword).
pub const S_FIRE: u64 = 0xA818;
/// The armed deadline (qword).
pub const S_DL: u64 = 0xA820;
/// The xAPIC suite's results.
pub const BANK_X: u64 = 0xB000;
/// The x2APIC suite's results.
pub const BANK_X2: u64 = 0xB400;
/// The xAPIC-only results.
pub const XBANK: u64 = 0xB800;
/// The relocated APIC base.
pub const NEW_BASE: u64 = 0xFED0_0000;
/// Ports.
pub const PORT_MSI: u16 = 0xE5;
/// LINT0 level.
pub const PORT_LINT0: u16 = 0xE6;
/// The end.
pub const PORT_DONE: u16 = 0xE7;

global_asm!(
    r#"
    .section .rodata.rhax_guest_apic, "a"
    .code64

    /* R n, reg: result n of the current bank. */
    .macro APICG_R n, reg
    mov dword ptr [r14 + 4*\n], \reg
    .endm
    /* X n, reg: xAPIC-only result n. */
    .macro APICG_X n, reg
    mov dword ptr [{xbank} + 4*\n], \reg
    .endm
    .macro APICG_SPIN n
    mov ecx, \n
96:
    pause
    dec ecx
    jnz 96b
    .endm
    /* Spin until the log holds n entries, at most t rounds. */
    .macro APICG_WAIT n, t
    mov ecx, \t
96:
    cmp dword ptr [{log}], \n
    jae 97f
    pause
    dec ecx
    jnz 96b
97:
    .endm
    .macro APICG_WR off, val
    mov ecx, \off
    mov eax, \val
    call apicg_wr
    .endm
    .macro APICG_RD off
    mov ecx, \off
    call apicg_rd
    .endm
    .macro APICG_GATE v, h
    mov edi, \v
    lea rax, [rip + \h]
    call apicg_set_gate
    .endm
    .macro APICG_STUB v
apicg_h\v:
    push rax
    push rcx
    push rdx
    mov eax, \v
    jmp apicg_common
    .endm

    .global rhax_apic_start
rhax_apic_start:
    mov rsp, {stack}
    mov dword ptr [{log}], 0
    APICG_GATE 2, apicg_nmi
    APICG_GATE 13, apicg_gp
    APICG_GATE 0x41, apicg_h0x41
    APICG_GATE 0x45, apicg_h0x45
    APICG_GATE 0x46, apicg_h0x46
    APICG_GATE 0x47, apicg_h0x47
    APICG_GATE 0x48, apicg_level
    APICG_GATE 0x49, apicg_h0x49
    APICG_GATE 0x4A, apicg_h0x4A
    APICG_GATE 0x4B, apicg_deadline
    APICG_GATE 0x50, apicg_outer
    APICG_GATE 0x55, apicg_h0x55
    APICG_GATE 0x60, apicg_inner
    APICG_GATE 0xFF, apicg_h0xFF
    mov word ptr [0x8F00], 0xFFF
    mov dword ptr [0x8F02], {idt}
    mov dword ptr [0x8F06], 0
    lidt [0x8F00]

    /* ---- xAPIC ---- */
    mov r15d, 0xFEE00000
    mov dword ptr [0xA900], 0
    mov r14d, {bank_x}
    call apicg_suite

    /* Writable xAPIC ID (SDM Vol. 3A §11.4.6). */
    mov dword ptr [r15 + 0x20], 0x05000000
    mov eax, dword ptr [r15 + 0x20]
    APICG_X 0, eax
    mov dword ptr [r15 + 0x20], 0

    /* IA32_APIC_BASE relocation (§11.4.4). */
    mov ecx, 0x1B
    rdmsr
    APICG_X 1, eax
    mov eax, {new_base} + 0x900
    xor edx, edx
    wrmsr
    mov r15d, {new_base}
    mov dword ptr [r15 + 0x80], 0x40
    mov eax, dword ptr [r15 + 0x80]
    APICG_X 2, eax
    mov rax, cr8
    APICG_X 3, eax
    mov dword ptr [r15 + 0x80], 0
    mov dword ptr [{log}], 0
    sti
    mov eax, 0x40046
    xor edx, edx
    call apicg_icr
    APICG_SPIN 2000
    mov eax, dword ptr [{log} + 4]
    APICG_X 4, eax
    /* The old base is no longer the APIC: the client's MMIO answers. */
    mov eax, 0xFEE00080
    mov eax, dword ptr [rax]
    APICG_X 5, eax
    mov ecx, 0x1B
    mov eax, 0xFEE00900
    xor edx, edx
    wrmsr
    mov r15d, 0xFEE00000
    mov eax, dword ptr [r15 + 0x30]
    APICG_X 6, eax

    /* IA32_APIC_BASE #GP rules (§11.12.5, Figure 11-27). */
    mov dword ptr [{log}], 0
    mov ecx, 0x1B
    mov eax, 0xFEE00B00     /* reserved bit 9 */
    xor edx, edx
    wrmsr
    mov eax, 0xFEE00500     /* EXTD without EN */
    wrmsr
    mov eax, 0xFEE00900     /* bit 52: beyond any MAXPHYADDR */
    mov edx, 0x100000
    wrmsr
    xor edx, edx
    mov eax, 0xFEE00100     /* disable: allowed */
    wrmsr
    mov eax, 0xFEE00D00     /* disabled to x2APIC: invalid */
    wrmsr
    mov eax, dword ptr [{log}]
    APICG_X 7, eax
    mov eax, 0xFEE00900     /* disabled to xAPIC */
    wrmsr
    mov eax, 0xFEE00D00     /* xAPIC to x2APIC */
    wrmsr
    rdmsr
    APICG_X 8, eax

    /* ---- x2APIC ---- */
    mov dword ptr [0xA900], 1
    mov dword ptr [{log}], 0
    mov ecx, 0x802          /* the x2APIC ID is read-only: WRMSR #GP */
    mov eax, 7
    xor edx, edx
    wrmsr
    mov eax, dword ptr [{log}]
    APICG_X 9, eax
    /* x2APIC mode: the xAPIC page is not the APIC (§11.12.1): the client's MMIO answers. */
    mov eax, 0xFEE00080
    mov eax, dword ptr [rax]
    APICG_X 10, eax
    mov r14d, {bank_x2}
    call apicg_suite
    mov eax, 1
    out {done}, eax
    cli
3:
    hlt
    jmp 3b

    /* The suite (results in R14's bank). */
apicg_suite:
    APICG_WR 0xF0, 0x1FF
    APICG_RD 0x20
    cmp dword ptr [0xA900], 0
    jne 2f
    shr eax, 24
2:
    APICG_R 0, eax
    /* TPR blocks a lower class (§11.8.3.1). */
    mov dword ptr [{log}], 0
    APICG_WR 0x80, 0x50
    APICG_RD 0x80
    APICG_R 1, eax
    sti
    mov eax, 0x40045
    xor edx, edx
    call apicg_icr
    APICG_SPIN 2000
    mov eax, dword ptr [{log}]
    APICG_R 2, eax
    APICG_RD 0x220
    and eax, 0x20
    APICG_R 3, eax
    APICG_WR 0x80, 0
    APICG_WAIT 1, 20000
    mov eax, dword ptr [{log} + 4]
    APICG_R 4, eax
    mov eax, dword ptr [{log}]
    APICG_R 5, eax
    /* CR8 is TPR[7:4] (§10.8.6.1 of Vol. 3A: "CR8 usage"). */
    mov dword ptr [{log}], 0
    mov eax, 6
    mov cr8, rax
    APICG_RD 0x80
    APICG_R 6, eax
    mov eax, 0x40055
    xor edx, edx
    call apicg_icr
    APICG_SPIN 2000
    mov eax, dword ptr [{log}]
    APICG_R 7, eax
    xor eax, eax
    mov cr8, rax
    APICG_WAIT 1, 20000
    mov eax, dword ptr [{log} + 4]
    APICG_R 8, eax
    APICG_WR 0x80, 0x30
    mov rax, cr8
    APICG_R 9, eax
    APICG_WR 0x80, 0
    /* Masked LVT entries deliver nothing (§11.5.1). */
    mov dword ptr [{log}], 0
    APICG_WR 0x350, 0x10047
    mov eax, 1
    out {lint0}, eax
    APICG_SPIN 2000
    xor eax, eax
    out {lint0}, eax
    APICG_WR 0x3E0, 0xB
    APICG_WR 0x320, 0x10049
    APICG_WR 0x380, 500
    APICG_SPIN 5000
    mov eax, dword ptr [{log}]
    APICG_R 10, eax
    APICG_RD 0x390
    APICG_R 11, eax
    /* Unmasked LINT0, edge, fixed: delivered. */
    APICG_WR 0x350, 0x47
    mov eax, 1
    out {lint0}, eax
    APICG_WAIT 1, 20000
    xor eax, eax
    out {lint0}, eax
    APICG_WR 0x350, 0x10000
    mov eax, dword ptr [{log} + 4]
    APICG_R 12, eax
    /* Level-triggered MSI: TMR set while in service (§11.8.4). */
    mov dword ptr [{log}], 0
    mov eax, 0xC048
    out {msi}, eax
    APICG_WAIT 1, 20000
    mov eax, dword ptr [{log} + 4]
    APICG_R 13, eax
    mov eax, dword ptr [{s_tmr}]
    and eax, 0x100
    APICG_R 14, eax
    /* Nesting, ISR order, EOI clears the highest ISR bit (§11.8.3, §11.8.5). */
    mov dword ptr [{log}], 0
    mov eax, 0x40050
    xor edx, edx
    call apicg_icr
    APICG_WAIT 4, 40000
    mov eax, dword ptr [{log} + 4]
    APICG_R 15, eax
    mov eax, dword ptr [{log} + 8]
    APICG_R 16, eax
    mov eax, dword ptr [{log} + 12]
    APICG_R 17, eax
    mov eax, dword ptr [{log} + 16]
    APICG_R 18, eax
    mov eax, dword ptr [{log}]
    APICG_R 19, eax
    mov eax, dword ptr [{s_isr2}]
    APICG_R 20, eax
    mov eax, dword ptr [{s_isr3}]
    APICG_R 21, eax
    mov eax, dword ptr [{s_isr3b}]
    APICG_R 22, eax
    mov eax, dword ptr [{s_isr2b}]
    APICG_R 23, eax
    APICG_RD 0x120
    APICG_R 24, eax
    /* Timer, one-shot (§11.5.4): fires once, the count stays 0. */
    mov dword ptr [{log}], 0
    APICG_WR 0x3E0, 0xB
    APICG_RD 0x3E0
    APICG_R 25, eax
    APICG_WR 0x320, 0x49
    APICG_WR 0x380, 2000
    APICG_WAIT 1, 200000
    APICG_SPIN 20000
    mov eax, dword ptr [{log}]
    APICG_R 26, eax
    APICG_RD 0x390
    APICG_R 27, eax
    /* Periodic: fires again and again, the count reloads. */
    mov dword ptr [{log}], 0
    /* Divide by 64: a period longer than an exit round trip on the injection path (each
       EOI is an APIC-access exit there, which Bochs' TSC counts in instructions). */
    APICG_WR 0x3E0, 0x9
    APICG_WR 0x320, 0x2004A
    APICG_WR 0x380, 3000
    APICG_WAIT 3, 2000000
    APICG_RD 0x390
    APICG_R 28, eax
    APICG_WR 0x380, 0
    mov eax, dword ptr [{log}]
    cmp eax, 3
    jbe 2f
    mov eax, 3
2:
    APICG_R 29, eax
    /* The divide configuration: 1 against 128 over the same spin (§11.5.4). */
    APICG_WR 0x320, 0x10049
    APICG_WR 0x3E0, 0xB
    APICG_WR 0x380, 0xFFFFFFFF
    APICG_SPIN 50000
    APICG_RD 0x390
    not eax
    APICG_R 30, eax
    APICG_WR 0x3E0, 0xA
    APICG_WR 0x380, 0xFFFFFFFF
    APICG_SPIN 50000
    APICG_RD 0x390
    not eax
    APICG_R 31, eax
    APICG_WR 0x380, 0
    APICG_WR 0x3E0, 0xB
    /* TSC-deadline (§11.5.4.1): fires at/after the deadline; 0 disarms. */
    mov dword ptr [{log}], 0
    APICG_WR 0x320, 0x4004B
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, 20000
    mov qword ptr [{s_dl}], rax
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6E0
    wrmsr
    APICG_WAIT 1, 400000
    mov eax, dword ptr [{log}]
    APICG_R 32, eax
    mov rax, qword ptr [{s_fire}]
    xor edx, edx
    cmp rax, qword ptr [{s_dl}]
    setae dl
    APICG_R 33, edx
    mov ecx, 0x6E0
    rdmsr
    APICG_R 34, eax
    rdtsc
    add eax, 30000
    adc edx, 0
    mov ecx, 0x6E0
    wrmsr
    xor eax, eax
    xor edx, edx
    wrmsr
    APICG_SPIN 100000
    mov eax, dword ptr [{log}]
    APICG_R 35, eax
    APICG_WR 0x320, 0x10000
    /* NMI by ICR to this APIC (§11.6.1). */
    mov dword ptr [{log}], 0
    APICG_RD 0x20
    cmp dword ptr [0xA900], 0
    jne 2f
    shr eax, 24
2:
    mov edx, eax
    mov eax, 0x4400
    call apicg_icr
    APICG_WAIT 1, 20000
    mov eax, dword ptr [{log} + 4]
    APICG_R 36, eax
    /* EOI-broadcast suppression offered (version bit 24) and SVR bit 12 writable (§11.8.5);
       the broadcast itself has no I/O APIC to reach in rhax. */
    APICG_RD 0x30
    and eax, 0x1000000
    APICG_R 37, eax
    APICG_WR 0xF0, 0x11FF
    APICG_RD 0xF0
    APICG_R 38, eax
    APICG_WR 0xF0, 0x1FF
    cli
    ret

    /* ECX = register offset -> EAX (clobbers ECX, EDX). */
apicg_rd:
    cmp dword ptr [0xA900], 0
    jne 2f
    mov eax, dword ptr [r15 + rcx]
    ret
2:
    shr ecx, 4
    add ecx, 0x800
    rdmsr
    ret
    /* ECX = register offset, EAX = value (clobbers ECX, EDX). */
apicg_wr:
    cmp dword ptr [0xA900], 0
    jne 2f
    mov dword ptr [r15 + rcx], eax
    ret
2:
    shr ecx, 4
    add ecx, 0x800
    xor edx, edx
    wrmsr
    ret
    /* EAX = ICR low, EDX = destination APIC ID (clobbers ECX, EDX). */
apicg_icr:
    cmp dword ptr [0xA900], 0
    jne 2f
    shl edx, 24
    mov dword ptr [r15 + 0x310], edx
    mov dword ptr [r15 + 0x300], eax
    ret
2:
    mov ecx, 0x830
    wrmsr
    ret
    /* EAX -> the log (clobbers EDX). */
apicg_log:
    mov edx, dword ptr [{log}]
    cmp edx, {log_max}
    jae 2f
    mov dword ptr [{log} + 4 + rdx*4], eax
    inc dword ptr [{log}]
2:
    ret
apicg_eoi:
    mov ecx, 0xB0
    xor eax, eax
    jmp apicg_wr
    /* EDI = vector, RAX = handler. */
apicg_set_gate:
    shl edi, 4
    add edi, {idt}
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8E00
    mov rdx, rax
    shr rdx, 16
    mov word ptr [rdi + 6], dx
    shr rdx, 16
    mov dword ptr [rdi + 8], edx
    mov dword ptr [rdi + 12], 0
    ret

    APICG_STUB 0x41
    APICG_STUB 0x45
    APICG_STUB 0x46
    APICG_STUB 0x47
    APICG_STUB 0x49
    APICG_STUB 0x4A
    APICG_STUB 0x55
    APICG_STUB 0xFF
apicg_common:
    call apicg_log
apicg_common_eoi:
    call apicg_eoi
    pop rdx
    pop rcx
    pop rax
    iretq

    /* Level-triggered 0x48: TMR[2] before the EOI. */
apicg_level:
    push rax
    push rcx
    push rdx
    mov eax, 0x48
    call apicg_log
    APICG_RD 0x1A0
    mov dword ptr [{s_tmr}], eax
    jmp apicg_common_eoi

    /* 0x50: sends 0x60 (preempts once IF is set) and 0x41 (a lower class: waits). */
apicg_outer:
    push rax
    push rcx
    push rdx
    mov eax, 0x50
    call apicg_log
    mov eax, 0x40060
    xor edx, edx
    call apicg_icr
    mov eax, 0x40041
    xor edx, edx
    call apicg_icr
    sti
    APICG_SPIN 2000
    cli
    mov eax, 0x150
    call apicg_log
    jmp apicg_common_eoi

    /* 0x60, inside 0x50: ISR before and after its EOI. */
apicg_inner:
    push rax
    push rcx
    push rdx
    mov eax, 0x60
    call apicg_log
    APICG_RD 0x120
    mov dword ptr [{s_isr2}], eax
    APICG_RD 0x130
    mov dword ptr [{s_isr3}], eax
    call apicg_eoi
    APICG_RD 0x120
    mov dword ptr [{s_isr2b}], eax
    APICG_RD 0x130
    mov dword ptr [{s_isr3b}], eax
    pop rdx
    pop rcx
    pop rax
    iretq

apicg_deadline:
    push rax
    push rcx
    push rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov qword ptr [{s_fire}], rax
    mov eax, 0x4B
    jmp apicg_common

apicg_nmi:
    push rax
    push rdx
    mov eax, 0x102
    call apicg_log
    pop rdx
    pop rax
    iretq

    /* #GP: logged, the 2-byte WRMSR/RDMSR skipped. */
apicg_gp:
    push rax
    push rdx
    mov eax, 0x10D
    call apicg_log
    pop rdx
    pop rax
    add qword ptr [rsp + 8], 2
    add rsp, 8
    iretq

    .global rhax_apic_end
rhax_apic_end:
    .text
"#,
    stack = const STACK_TOP,
    idt = const IDT,
    log = const LOG,
    log_max = const LOG_MAX,
    s_isr2 = const S_ISR2,
    s_isr3 = const S_ISR3,
    s_isr2b = const S_ISR2B,
    s_isr3b = const S_ISR3B,
    s_tmr = const S_TMR,
    s_fire = const S_FIRE,
    s_dl = const S_DL,
    bank_x = const BANK_X,
    bank_x2 = const BANK_X2,
    xbank = const XBANK,
    new_base = const NEW_BASE,
    msi = const PORT_MSI,
    lint0 = const PORT_LINT0,
    done = const PORT_DONE,
);

extern "C" {
    static rhax_apic_start: u8;
    static rhax_apic_end: u8;
}

/// The guest's code.
pub fn code() -> &'static [u8] {
    let start = core::ptr::addr_of!(rhax_apic_start);
    let end = core::ptr::addr_of!(rhax_apic_end);
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: both symbols are in `.rodata.rhax_guest_apic` of the global_asm above, start
    // first; the section is read-only and lives for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}
