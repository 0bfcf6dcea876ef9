# smp: the bootstrap processor starts application processor 1 in real mode at 0x8000 (vector
# 0x08) with INIT, SIPI, SIPI through its xAPIC ICR (SDM Vol. 3A §9.4.4.1; the VMM's
# in-kernel APIC delivers them), the AP enters protected mode with its own GDT, prints its
# initial APIC ID (CPUID leaf 1, EBX[31:24]) and reports it in `ap_flag`; the BSP waits for it and exits with 0, or with
#   1 no loader magic   2 the AP never reported   3 the AP's APIC ID is not 1
#   4 the ICR stayed busy
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003
    .set TRAMPOLINE, 0x8000         # vector 0x08
    .set APIC, 0xFEE00000

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    cmp $0x2BADB002, %eax
    mov $1, %eax
    jne exit
    call uart_init
    mov $msg_bsp, %esi
    call puts
    mov $tramp, %esi                # copy the trampoline below 1 MiB
    mov $TRAMPOLINE, %edi
    mov $tramp_end - tramp, %ecx
    cld
    rep movsb
    movl $0, ap_flag
    movl $0x1ff, APIC + 0xf0        # SVR: software-enabled, spurious vector 0xFF
    mov $0x4500, %eax               # INIT, level assert
    call ipi
    mov $(0x4600 | TRAMPOLINE >> 12), %eax      # start-up, vector 0x08
    call ipi
    mov $(0x4600 | TRAMPOLINE >> 12), %eax      # the second SIPI (ignored once started)
    call ipi
    mov $200000000, %ecx            # bounded wait
1:  mov ap_flag, %eax
    test %eax, %eax
    jnz 2f
    pause
    loop 1b
    mov $2, %eax
    jmp exit
2:  cmp $2, %eax                    # APIC ID 1, reported as ID + 1
    mov $3, %eax
    jne exit
    mov $msg_done, %esi
    call puts
    xor %eax, %eax
    jmp exit

# ipi: ICR low = EAX to APIC ID 1 (the high half first: the low write sends), then waits
# for the delivery status (bit 12) to go idle.
ipi:
    movl $(1 << 24), APIC + 0x310
    mov %eax, APIC + 0x300
    mov $10000000, %ecx
1:  mov APIC + 0x300, %eax         # a plain MOV, as OSes read the APIC
    test $(1 << 12), %eax
    jz 2f
    pause
    loop 1b
    mov $4, %eax
    jmp exit
2:  ret

# The AP, in protected mode (from the trampoline).
ap32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_stack_top, %esp
    mov $1, %eax
    cpuid
    shr $24, %ebx                   # initial APIC ID
    mov $msg_ap, %esi
    call puts
    mov %ebx, %eax
    call puthex
    call newline
    inc %ebx
    mov %ebx, ap_flag
1:  pause                           # until the BSP's exit ends the run
    jmp 1b

# Real-mode trampoline, copied to TRAMPOLINE: loads its GDT, enters protected mode and jumps
# to ap32. Addresses inside it are offsets from its start (DS = CS = TRAMPOLINE >> 4).
    .code16
tramp:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl tramp_gdtr - tramp
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap32
    .align 8
tramp_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        # 0x08: flat 32-bit code
    .quad 0x00CF92000000FFFF        # 0x10: flat data
tramp_gdtr:
    .word 23
    .long TRAMPOLINE + tramp_gdt - tramp
tramp_end:
    .code32

    .section .rodata
msg_bsp:  .asciz "smp: BSP starting AP 1\n"
msg_ap:   .asciz "smp: AP up, APIC ID "
msg_done: .asciz "smp: the AP reported, done\n"

    .bss
    .align 16
ap_flag: .long 0
    .space 4092
stack_top:
    .space 1024
ap_stack_top:
