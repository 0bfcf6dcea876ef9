# apic-ipi (2 vCPUs): the BSP starts AP 1 with INIT, SIPI, SIPI through the xAPIC ICR (SDM
# Vol. 3A §9.4.4.1, §11.6.1) into a real-mode trampoline at 0x8000; the AP enters protected
# mode, switches its APIC to x2APIC mode (§11.12.1) and reports. Then both exchange N fixed
# IPIs: the BSP sends vector 0x51 to APIC ID 1 through the xAPIC ICR (0xFEE00310/300), the
# AP sends vector 0x50 to APIC ID 0 through the x2APIC ICR (MSR 0x830, §11.12.9). Each
# handler counts and EOIs; each side halts (HLT) while it waits for its IPIs. The BSP
# prints both counts and exits with 0, or with
#   1 no loader magic   2 the AP never came up   3 no x2APIC in CPUID (the AP)
#   4 the AP's x2APIC ID is not 1   5 the IPIs did not all arrive   6 a count is not N
#   7 the ICR stayed busy   0x21 an unexpected vector
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003
    .set APIC, 0xFEE00000
    .set TRAMPOLINE, 0x8000         # start-up vector 0x08
    .set N, 8
    .set V_TO_BSP, 0x50
    .set V_TO_AP, 0x51
    .set V_SPURIOUS, 0xff
    .set WAIT, 100000000            # bounded waits (loop iterations)

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
    call gdt_init
    call uart_init
    call idt_init
    mov $V_TO_BSP, %eax
    mov $bsp_irq, %ebx
    call idt_set
    mov $V_TO_AP, %eax
    mov $ap_irq, %ebx
    call idt_set
    mov $V_SPURIOUS, %eax
    mov $spurious_irq, %ebx
    call idt_set
    movl $(0x100 | V_SPURIOUS), APIC + 0xf0     # SVR: software-enabled
    mov $msg_bsp, %esi
    call puts
    mov $tramp, %esi                # the trampoline below 1 MiB
    mov $TRAMPOLINE, %edi
    mov $tramp_end - tramp, %ecx
    cld
    rep movsb
    # INIT, then two SIPIs (the MP initialization protocol, §9.4.4.1).
    mov $0x4500, %eax               # INIT, level assert
    call bsp_ipi
    mov $(0x4600 | TRAMPOLINE >> 12), %eax      # start-up, vector 0x08
    call bsp_ipi
    mov $(0x4600 | TRAMPOLINE >> 12), %eax
    call bsp_ipi
    mov $WAIT, %ecx
1:  cmpl $0, ap_ready
    jne 2f
    pause
    loop 1b
    mov $2, %eax
    jmp exit
2:  cmpl $1, ap_ready               # the AP failed a check: its status + 1 (see ap32)
    je 3f
    mov ap_ready, %eax
    dec %eax
    jmp exit
    # N fixed IPIs to the AP, each after the AP took the one before; the AP's come meanwhile.
3:  sti
    xor %ebx, %ebx
4:  mov $V_TO_AP, %eax              # fixed, physical, edge
    call bsp_ipi
    inc %ebx
    mov $WAIT, %ecx
5:  cmp ap_count, %ebx
    jbe 6f
    pause
    loop 5b
    mov $5, %eax
    jmp exit
6:  cmp $N, %ebx
    jb 4b
    # Wait (halted) for the AP's N IPIs.
7:  cli
    cmpl $N, bsp_count
    jae 8f
    sti                             # STI's shadow: STI; HLT loses no wake-up
    hlt
    jmp 7b
8:  mov $WAIT, %ecx                 # and for the AP to finish
9:  cmpl $0, ap_done
    jne 10f
    pause
    loop 9b
    mov $5, %eax
    jmp exit
10: mov $msg_counts, %esi
    call puts
    mov bsp_count, %eax
    call puthex
    mov $msg_counts2, %esi
    call puts
    mov ap_count, %eax
    call puthex
    call newline
    mov $6, %eax
    cmpl $N, bsp_count
    jne exit
    cmpl $N, ap_count
    jne exit
    mov $msg_done, %esi
    call puts
    xor %eax, %eax
    jmp exit

# bsp_ipi: ICR low = EAX to APIC ID 1 (xAPIC: the high half first, the low write sends),
# then waits for the delivery status (bit 12) to go idle.
bsp_ipi:
    push %ecx
    movl $(1 << 24), APIC + 0x310
    mov %eax, APIC + 0x300
    mov $WAIT, %ecx
1:  mov APIC + 0x300, %eax         # a plain MOV, as OSes read the APIC
    test $(1 << 12), %eax
    jz 2f
    pause
    loop 1b
    mov $7, %eax
    jmp exit
2:  pop %ecx
    ret

bsp_irq:
    incl bsp_count
    movl $0, APIC + 0xb0            # xAPIC EOI
    iret

ap_irq:
    push %eax
    push %ecx
    push %edx
    incl ap_count
    mov $0x80b, %ecx                # x2APIC EOI
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    pop %edx
    pop %ecx
    pop %eax
    iret

spurious_irq:
    iret

# The AP, in protected mode (from the trampoline). It reports a failed check as
# `ap_ready` = status + 1 and stops.
ap32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_stack_top, %esp
    call gdt_init
    call idt_load
    mov $1, %eax
    cpuid
    test $(1 << 21), %ecx
    mov $(3 + 1), %eax
    jz ap_fail
    mov $0x1b, %ecx                 # IA32_APIC_BASE: EN and EXTD
    rdmsr
    or $0xc00, %eax
    wrmsr
    mov $0x80f, %ecx                # SVR: software-enabled
    mov $(0x100 | V_SPURIOUS), %eax
    xor %edx, %edx
    wrmsr
    mov $0x802, %ecx                # x2APIC ID
    rdmsr
    mov %eax, %ebx
    mov $msg_ap, %esi
    call puts
    mov %ebx, %eax
    call puthex
    call newline
    cmp $1, %ebx
    mov $(4 + 1), %eax
    jne ap_fail
    movl $1, ap_ready
    sti
    # N fixed IPIs to the BSP through the x2APIC ICR (one WRMSR: destination in EDX).
    xor %ebx, %ebx
1:  mov $0x830, %ecx
    mov $V_TO_BSP, %eax
    xor %edx, %edx                  # APIC ID 0
    wrmsr
    inc %ebx
    mov $WAIT, %ecx
2:  cmp bsp_count, %ebx
    jbe 3f
    pause
    loop 2b
    jmp 5f                          # the BSP checks the counts
3:  cmp $N, %ebx
    jb 1b
    # Halt until the BSP's N IPIs came.
4:  cli
    cmpl $N, ap_count
    jae 5f
    sti
    hlt
    jmp 4b
5:  movl $1, ap_done
6:  cli
    hlt                             # until the BSP's exit ends the run
    jmp 6b
ap_fail:
    mov %eax, ap_ready
    jmp 6b

# Real-mode trampoline, copied to TRAMPOLINE: loads a GDT, enters protected mode and jumps to
# ap32. Addresses inside it are offsets from its start (DS = CS = TRAMPOLINE >> 4).
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
msg_bsp:     .asciz "apic-ipi: BSP starting AP 1 (INIT, SIPI, SIPI by the xAPIC ICR)\n"
msg_ap:      .asciz "apic-ipi: AP up in x2APIC mode, x2APIC ID "
msg_counts:  .asciz "apic-ipi: BSP got "
msg_counts2: .asciz " IPIs (x2APIC ICR), AP got "
msg_done:    .asciz "apic-ipi: done\n"

    .data
    .align 4
ap_ready: .long 0
ap_done:  .long 0
bsp_count: .long 0
ap_count: .long 0

    .bss
    .align 16
    .space 4096
stack_top:
    .space 4096
ap_stack_top:
