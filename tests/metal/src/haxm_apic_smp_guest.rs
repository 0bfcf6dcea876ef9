//! The two-vCPU guest of `haxm-apic` (issue 12), assembled with the kernel: the BSP at
//! [`CODE`](crate::haxm_apic_guest::CODE) in 64-bit mode (the tables of `haxm_apic.rs`), the
//! AP's real-mode start at [`AP_CODE`] (SIPI vector [`AP_CODE`] >> 12); it goes to 64-bit mode
//! itself. Position independent, data at the fixed addresses below.

use core::arch::global_asm;

/// Where the client copies the AP's code (page-aligned: the SIPI vector is its page).
pub const AP_CODE: u64 = 0xC000;
/// The GDTR image the AP loads in real mode (limit, base 0x500: the BSP's GDT).
pub const AP_GDTR: u64 = 0x8F10;
/// Interrupt counts: 64 bytes per APIC ID (0, 1), a dword per vector 0x70..0x7F.
pub const COUNTS: u64 = 0xA600;
/// The AP writes 1 here once it runs in 64-bit mode.
pub const AP_ALIVE: u64 = 0xA900;
/// The AP's APIC ID as it reads it.
pub const AP_ID: u64 = 0xA904;
/// Mailbox: nonzero asks the AP to load DFR and LDR from the next two dwords.
pub const CMD: u64 = 0xA908;
/// Results.
pub const BANK: u64 = 0xB000;
/// The end.
pub const PORT_DONE: u16 = 0xE7;

global_asm!(
    r#"
.section .rodata.rhax_guest_apic_smp, "a"
.code64
.macro APICS_ICR hi, lo
mov dword ptr [r15 + 0x310], \hi
mov dword ptr [r15 + 0x300], \lo
mov ecx, 30000
96:
pause
dec ecx
jnz 96b
.endm
/* R n: result n = the count of vector v on APIC ID id. */
.macro APICS_R n, id, v
mov eax, dword ptr [{counts} + 64*\id + 4*(\v - 0x70)]
mov dword ptr [{bank} + 4*\n], eax
.endm
/* The AP loads DFR and LDR. */
.macro APICS_AP dfr, ldr
mov dword ptr [{cmd} + 4], \dfr
mov dword ptr [{cmd} + 8], \ldr
mov dword ptr [{cmd}], 1
mov ecx, 2000000
96:
cmp dword ptr [{cmd}], 0
je 97f
pause
dec ecx
jnz 96b
97:
.endm
.macro APICS_STUB v
apics_h\v:
push rax
push rcx
push rdx
mov eax, \v - 0x70
jmp apics_count
.endm
.macro APICS_GATE v
mov edi, \v
lea rax, [rip + apics_h\v]
call apics_set_gate
.endm

.global rhax_apic_smp_start
rhax_apic_smp_start:
mov rsp, 0x8000
APICS_GATE 0x70
APICS_GATE 0x71
APICS_GATE 0x72
APICS_GATE 0x73
APICS_GATE 0x74
APICS_GATE 0x75
APICS_GATE 0x76
APICS_GATE 0x77
APICS_GATE 0x78
mov word ptr [0x8F00], 0xFFF
mov dword ptr [0x8F02], 0x9000
mov dword ptr [0x8F06], 0
lidt [0x8F00]
mov r15d, 0xFEE00000
mov dword ptr [r15 + 0xF0], 0x1FF
/* INIT, then SIPI with vector AP_CODE >> 12, to APIC ID 1 (SDM Vol. 3A §9.4.4.1). */
APICS_ICR 0x01000000, 0x4500
APICS_ICR 0x01000000, {sipi}
mov ecx, 4000000
2:
cmp dword ptr [{alive}], 0
jne 3f
pause
dec ecx
jnz 2b
3:
mov eax, dword ptr [{alive}]
mov dword ptr [{bank}], eax
mov eax, dword ptr [{ap_id}]
mov dword ptr [{bank} + 4], eax
sti
/* Flat logical model (§11.6.2.2): BSP LDR bit 0, AP bit 1. */
mov dword ptr [r15 + 0xE0], 0xFFFFFFFF
mov dword ptr [r15 + 0xD0], 0x01000000
APICS_AP 0xFFFFFFFF, 0x02000000
APICS_ICR 0x02000000, 0x870
APICS_R 2, 1, 0x70
APICS_R 3, 0, 0x70
APICS_ICR 0x03000000, 0x871
APICS_R 4, 1, 0x71
APICS_R 5, 0, 0x71
/* Cluster model: cluster 1, BSP member bit 0, AP bit 1. */
mov dword ptr [r15 + 0xE0], 0x0FFFFFFF
mov dword ptr [r15 + 0xD0], 0x11000000
APICS_AP 0x0FFFFFFF, 0x12000000
APICS_ICR 0x12000000, 0x872
APICS_R 6, 1, 0x72
APICS_R 7, 0, 0x72
APICS_ICR 0x21000000, 0x873
APICS_R 8, 1, 0x73
APICS_R 9, 0, 0x73
APICS_ICR 0x13000000, 0x874
APICS_R 10, 1, 0x74
APICS_R 11, 0, 0x74
/* Physical broadcast (destination 0xFF, §11.6.2.1). */
APICS_ICR 0xFF000000, 0x075
APICS_R 12, 1, 0x75
APICS_R 13, 0, 0x75
/* Shorthands (§11.6.1): self, all including self, all excluding self. */
APICS_ICR 0, 0x40076
APICS_R 14, 1, 0x76
APICS_R 15, 0, 0x76
APICS_ICR 0, 0x80077
APICS_R 16, 1, 0x77
APICS_R 17, 0, 0x77
APICS_ICR 0, 0xC0078
APICS_R 18, 1, 0x78
APICS_R 19, 0, 0x78
mov eax, 1
out {done}, eax
cli
4:
hlt
jmp 4b

/* EAX = vector - 0x70; the stub pushed RAX, RCX, RDX. */
apics_count:
mov edx, dword ptr [r15 + 0x20]
shr edx, 24
and edx, 1
shl edx, 6
lock inc dword ptr [{counts} + rdx + rax*4]
mov dword ptr [r15 + 0xB0], 0
pop rdx
pop rcx
pop rax
iretq
apics_set_gate:
shl edi, 4
add edi, 0x9000
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
APICS_STUB 0x70
APICS_STUB 0x71
APICS_STUB 0x72
APICS_STUB 0x73
APICS_STUB 0x74
APICS_STUB 0x75
APICS_STUB 0x76
APICS_STUB 0x77
APICS_STUB 0x78
.global rhax_apic_smp_end
rhax_apic_smp_end:

/* The AP: real mode at AP_CODE, straight to 64-bit mode with the BSP's tables. */
.section .rodata.rhax_guest_apic_ap, "a"
.code16
.global rhax_apic_ap_start
rhax_apic_ap_start:
cli
xor ax, ax
mov ds, ax
lgdt [{ap_gdtr}]
mov eax, 0x20
mov cr4, eax
mov eax, 0x10000
mov cr3, eax
mov ecx, 0xC0000080
rdmsr
or eax, 0x100
wrmsr
mov eax, cr0
or eax, 0x80000001
mov cr0, eax
.byte 0x66, 0xEA
.long apics_ap64 - rhax_apic_ap_start + {ap_code}
.word 0x08
.code64
apics_ap64:
mov ax, 0x10
mov ds, ax
mov es, ax
mov ss, ax
mov rsp, 0x7000
lidt [0x8F00]
mov r15d, 0xFEE00000
mov dword ptr [r15 + 0xF0], 0x1FF
mov eax, dword ptr [r15 + 0x20]
shr eax, 24
mov dword ptr [{ap_id}], eax
mov dword ptr [{alive}], 1
sti
2:
pause
cmp dword ptr [{cmd}], 0
je 2b
mov eax, dword ptr [{cmd} + 4]
mov dword ptr [r15 + 0xE0], eax
mov eax, dword ptr [{cmd} + 8]
mov dword ptr [r15 + 0xD0], eax
mov dword ptr [{cmd}], 0
jmp 2b
.global rhax_apic_ap_end
rhax_apic_ap_end:
.code64
.text
"#,
    counts = const COUNTS,
    bank = const BANK,
    cmd = const CMD,
    alive = const AP_ALIVE,
    ap_id = const AP_ID,
    ap_gdtr = const AP_GDTR,
    ap_code = const AP_CODE,
    sipi = const 0x4600 + (AP_CODE >> 12),
    done = const PORT_DONE,
);

extern "C" {
    static rhax_apic_smp_start: u8;
    static rhax_apic_smp_end: u8;
    static rhax_apic_ap_start: u8;
    static rhax_apic_ap_end: u8;
}

/// The BSP's code.
pub fn bsp() -> &'static [u8] {
    let start = core::ptr::addr_of!(rhax_apic_smp_start);
    let end = core::ptr::addr_of!(rhax_apic_smp_end);
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: both symbols are in `.rodata.rhax_guest_apic_smp`, start first; read-only,
    // alive for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The AP's code.
pub fn ap() -> &'static [u8] {
    let start = core::ptr::addr_of!(rhax_apic_ap_start);
    let end = core::ptr::addr_of!(rhax_apic_ap_end);
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: both symbols are in `.rodata.rhax_guest_apic_ap`, start first; read-only,
    // alive for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}
