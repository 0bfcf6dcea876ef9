# apic-timer: the local APIC's timer (SDM Vol. 3A §11.5.4) on the VMM's in-kernel APIC.
# 1. xAPIC (MMIO at 0xFEE00000), periodic mode: N interrupts of vector 0x40, HLT between
#    them, each handler EOIs; at least (N - 1) periods of TSC must have passed (a bus tick
#    is at least one TSC tick).
# 2. x2APIC (CPUID.01H:ECX[21], IA32_APIC_BASE EXTD), TSC-deadline mode (CPUID.01H:ECX[24],
#    §11.5.4.1): N one-shot deadlines through IA32_TSC_DEADLINE, vector 0x41, each handler
#    checks that the TSC has reached the deadline, EOIs through MSR 0x80B and arms the next.
# Exits with 0, or with
#   1 no loader magic   2 no TSC-deadline in CPUID   3 no x2APIC in CPUID
#   4 the periodic interrupts came too fast   5 a deadline interrupt came early
#   6 the current-count register out of range   7 x2APIC ID not 0   0x21 unexpected vector
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003
    .set APIC, 0xFEE00000
    .set N, 10
    .set PERIOD, 100000             # bus ticks (divide by 1)
    .set DELTA, 200000              # TSC ticks to each deadline
    .set V_PERIODIC, 0x40
    .set V_DEADLINE, 0x41
    .set V_SPURIOUS, 0xff

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
    mov $V_PERIODIC, %eax
    mov $periodic_irq, %ebx
    call idt_set
    mov $V_DEADLINE, %eax
    mov $deadline_irq, %ebx
    call idt_set
    mov $V_SPURIOUS, %eax
    mov $spurious_irq, %ebx
    call idt_set
    mov $msg_start, %esi
    call puts

# 1. Periodic, xAPIC.
    movl $(0x100 | V_SPURIOUS), APIC + 0xf0     # SVR: software-enabled (§11.4.7.1)
    movl $0xb, APIC + 0x3e0                     # divide configuration: by 1 (Figure 11-10)
    movl $(1 << 17 | V_PERIODIC), APIC + 0x320  # LVT timer: periodic (Figure 11-8)
    rdtsc
    mov %eax, t0
    mov %edx, t0 + 4
    movl $PERIOD, APIC + 0x380                  # initial count: starts the timer
    mov APIC + 0x390, %eax                      # current count: counting down from PERIOD
    test %eax, %eax
    jz bad_count
    cmp $PERIOD, %eax
    ja bad_count
1:  cli                             # check and halt without losing a wake-up: STI's
    cmpl $N, periodic_count         # shadow makes STI; HLT one step (SDM Vol. 2B, STI)
    jae 2f
    sti
    hlt
    jmp 1b
2:  mov periodic_count, %ebx
    movl $(1 << 16 | 1 << 17 | V_PERIODIC), APIC + 0x320   # masked
    movl $0, APIC + 0x380           # initial count 0: stopped
    rdtsc
    sub t0, %eax
    sbb t0 + 4, %edx
    jnz 3f                          # 2^32 ticks or more: slow enough
    cmp $((N - 1) * PERIOD), %eax
    jae 3f
    mov $4, %eax
    jmp exit
3:  sti                             # an interrupt already requested comes now, in xAPIC mode
    nop
    cli
    mov $msg_periodic, %esi
    call puts
    mov %ebx, %eax
    call puthex
    mov $msg_irqs, %esi
    call puts

# 2. TSC-deadline, x2APIC.
    mov $1, %eax
    cpuid
    mov $2, %eax
    test $(1 << 24), %ecx
    jz exit
    mov $3, %eax
    test $(1 << 21), %ecx
    jz exit
    mov $0x1b, %ecx                 # IA32_APIC_BASE: EN and EXTD (§11.12.1)
    rdmsr
    or $0xc00, %eax
    wrmsr
    mov $0x802, %ecx                # x2APIC ID
    rdmsr
    test %eax, %eax
    mov $7, %eax
    jnz exit
    mov $0x832, %ecx                # LVT timer: TSC-deadline mode (bits 18:17 = 10b)
    mov $(2 << 17 | V_DEADLINE), %eax
    xor %edx, %edx
    wrmsr
    call arm
4:  cli
    cmpl $N, deadline_count
    jae 5f
    sti
    hlt
    jmp 4b
5:  mov deadline_count, %ebx
    mov $0x6e0, %ecx                # disarm
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    cmpl $0, early
    mov $5, %eax
    jne exit
    mov $msg_deadline, %esi
    call puts
    mov %ebx, %eax
    call puthex
    mov $msg_ontime, %esi
    call puts
    mov $msg_done, %esi
    call puts
    xor %eax, %eax
    jmp exit

bad_count:
    mov $6, %eax
    jmp exit

# arm: IA32_TSC_DEADLINE = TSC + DELTA (kept in `deadline`).
arm:
    push %eax
    push %ecx
    push %edx
    rdtsc
    add $DELTA, %eax
    adc $0, %edx
    mov %eax, deadline
    mov %edx, deadline + 4
    mov $0x6e0, %ecx
    wrmsr
    pop %edx
    pop %ecx
    pop %eax
    ret

periodic_irq:
    incl periodic_count
    movl $0, APIC + 0xb0            # EOI
    iret

deadline_irq:
    pusha
    rdtsc                           # the deadline must have passed (§11.5.4.1)
    cmp deadline + 4, %edx
    ja 2f
    jb 1f
    cmp deadline, %eax
    jae 2f
1:  movl $1, early
2:  incl deadline_count
    cmpl $N, deadline_count
    jae 3f
    call arm
3:  mov $0x80b, %ecx                # x2APIC EOI
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    popa
    iret

# A spurious interrupt (§11.9) takes no EOI.
spurious_irq:
    iret

    .section .rodata
msg_start:    .asciz "apic-timer: periodic (xAPIC), then TSC-deadline (x2APIC)\n"
msg_periodic: .asciz "apic-timer: periodic: "
msg_irqs:     .asciz " interrupts\n"
msg_deadline: .asciz "apic-timer: tsc-deadline: "
msg_ontime:   .asciz " interrupts, none before its deadline\n"
msg_done:     .asciz "apic-timer: done\n"

    .data
    .align 8
t0:             .quad 0
deadline:       .quad 0
periodic_count: .long 0
deadline_count: .long 0
early:          .long 0

    .bss
    .align 16
    .space 4096
stack_top:
