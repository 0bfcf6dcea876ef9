//! Boot: the multiboot2 header, the 32-bit entry stub that enters long mode, and the AP
//! trampoline that INIT-SIPI-SIPI starts below 1 MiB.
//!
//! The entry follows the multiboot2 specification (section 3.3, "I386 machine state"): EAX holds
//! the magic 0x36d76289, EBX the physical address of the information structure, protected mode
//! with flat segments, paging off. Long-mode entry follows Intel SDM Vol. 3A §10.8.5
//! ("Initializing IA-32e Mode"): CR4.PAE, CR3, EFER.LME, then CR0.PG.

use core::arch::global_asm;

/// Physical address the AP trampoline is copied to; the SIPI vector is this address >> 12.
pub const TRAMPOLINE_PHYS: u64 = 0x8000;

/// Number of CPUs the static tables (GDT TSS slots, stacks) are sized for.
pub const MAX_CPUS: usize = 8;

/// Selectors of the kernel GDT (`GDT` below).
pub const KERNEL_CS: u16 = 0x08;
/// First TSS selector; CPU `i` uses `TSS_SEL_BASE + 16 * i` (16-byte system descriptors).
pub const TSS_SEL_BASE: u16 = 0x20;

global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header_start))
    .word 0, 0
    .long 8
mb2_header_end:

    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov %eax, %edi
    mov %ebx, %esi
    mov $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..4] -> 4 page directories of 2 MiB pages: 0-4 GiB identity. */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b

    call enter_long_mode_common
    lgdt gdt_ptr
    ljmp $0x08, $start64

    /* Shared by the BSP and the APs (which come from the trampoline in 32-bit mode with a
       stack-less environment: this routine must not use the stack).
       CR4: PAE (bit 5), OSFXSR (9), OSXMMEXCPT (10). EFER.LME (bit 8).
       CR0: PE, MP, NE (VMX requires NE: SDM Vol. 3C A.7), PG; clear EM (2), NW (29), CD (30). */
    .global enter_long_mode_common
enter_long_mode_common:
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0x9FFFFFFB, %eax
    or $0x80000023, %eax
    mov %eax, %cr0
    ret

    .code64
start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %edi, %edi
    mov %esi, %esi
    call kmain
3:  cli
    hlt
    jmp 3b

    .global ap_start64
ap_start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov AP_STACK_TOP(%rip), %rsp
    call ap_main
4:  cli
    hlt
    jmp 4b

    /* The AP trampoline: copied to 0x8000 and entered in real mode at CS=0x0800, IP=0 by the
       SIPI (SDM Vol. 3A §9.4.4). Everything it touches is addressed as 0x8000 + offset. */
    .section .rodata.trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (0x8000 + tramp_gdt_ptr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(0x8000 + tramp32 - ap_trampoline_start)
    .code32
tramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov (0x8000 + tramp_cr3 - ap_trampoline_start), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0x9FFFFFFB, %eax
    or $0x80000023, %eax
    mov %eax, %cr0
    ljmpl *(0x8000 + tramp_target - ap_trampoline_start)
    .balign 8
tramp_gdt_ptr:
    .word GDT_END - GDT - 1
    .long GDT
    .balign 4
tramp_cr3:
    .long boot_pml4
tramp_target:
    .long ap_start64
    .word 0x08
ap_trampoline_end:

    .section .data
    .balign 16
    .global GDT
GDT:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00CF9A000000FFFF
    .fill {tss_slots}, 8, 0
    .global GDT_END
GDT_END:
    .balign 8
    .word 0
    .word 0
    .word 0
gdt_ptr:
    .word GDT_END - GDT - 1
    .quad GDT

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4:
    .fill 4096, 1, 0
boot_pdpt:
    .fill 4096, 1, 0
boot_pd:
    .fill 4 * 4096, 1, 0
    .balign 16
boot_stack:
    .fill 65536, 1, 0
boot_stack_top:
    .code64
    .text
"#,
    tss_slots = const 2 * MAX_CPUS,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static boot_pml4: u8;
    static mut GDT: [u64; 4 + 2 * MAX_CPUS];
}

/// Stack pointer the next AP loads in `ap_start64`; written by the BSP before each SIPI.
#[no_mangle]
pub static AP_STACK_TOP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The trampoline's bytes (position-dependent on `TRAMPOLINE_PHYS`).
pub fn trampoline() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm above in the same section, start before
    // end, and the section is read-only data that lives for the whole run.
    unsafe {
        let start = core::ptr::addr_of!(ap_trampoline_start);
        let end = core::ptr::addr_of!(ap_trampoline_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Physical address of the PML4 built by the entry stub (identity, 0-4 GiB, 2 MiB pages).
#[allow(dead_code)] // For the bare-metal Platform (host CR3) once rhax-core is linked.
pub fn pml4_phys() -> u64 {
    core::ptr::addr_of!(boot_pml4) as u64
}

/// Writes the 16-byte TSS descriptor of CPU `cpu` (SDM Vol. 3A §8.2.3, "TSS Descriptor in
/// 64-bit mode") and returns its selector.
pub fn install_tss(cpu: usize, base: u64, limit: u32) -> u16 {
    assert!(cpu < MAX_CPUS);
    let low = (u64::from(limit) & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40) // present, DPL 0, type 9 = available 64-bit TSS
        | ((u64::from(limit) >> 16 & 0xF) << 48)
        | ((base >> 24 & 0xFF) << 56);
    let high = base >> 32;
    let slot = 4 + 2 * cpu;
    let gdt = core::ptr::addr_of_mut!(GDT) as *mut u64;
    // SAFETY: `slot + 1` is inside the GDT (cpu < MAX_CPUS, checked above).
    let entry = unsafe { gdt.add(slot) };
    // SAFETY: each CPU writes only its own two slots, before loading TR, and nothing else reads
    // them until `ltr` of that CPU; the GDT lives for the whole run.
    unsafe { entry.write_volatile(low) };
    // SAFETY: as above, the second half of the same descriptor, inside the GDT.
    let entry = unsafe { gdt.add(slot + 1) };
    // SAFETY: as above.
    unsafe { entry.write_volatile(high) };
    TSS_SEL_BASE + 16 * cpu as u16
}
