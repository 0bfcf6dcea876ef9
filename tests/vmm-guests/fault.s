# fault: loads an empty IDT and executes UD2. The #UD cannot be delivered (IDT limit 0), nor
# the #GP that follows, nor the double fault: a triple fault (SDM Vol. 3A §7.15, interrupt 8),
# which the VMM must report.
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003       # page-aligned modules, memory information; ELF32 segments

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    call uart_init
    mov $msg, %esi
    call puts
    lidt idt_empty
    ud2
    mov $0x66, %eax                 # not reached
    jmp exit

    .section .rodata
msg: .asciz "fault: an empty IDT, then UD2\n"
    .align 4
idt_empty:
    .word 0                         # limit 0: no vector fits
    .long 0

    .bss
    .align 16
    .space 1024
stack_top:
