# bad: misbehaves as its command line's first word says, for the VMM's error paths:
#   cli-hlt  halts with interrupts off (the VMM: a clear error)
#   sti-hlt  halts waiting for an interrupt nothing raises (its APIC is not even enabled):
#            the VMM ends the run after its halt limit with a clear error
#   port     writes to port 0x80, which no device of the VMM serves (an error naming it)
#   exit42   exits with status 42 (passes only with `--expect 42`)
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    mov %ebx, %ebp
    call uart_init
    mov $msg, %esi
    call puts
    mov 16(%ebp), %esi              # the command line
    call puts
    call newline
    movzbl (%esi), %eax
    cmp $'c', %al
    je 1f
    cmp $'s', %al
    je 2f
    cmp $'p', %al
    je 3f
    cmp $'e', %al
    je 4f
    mov $0x77, %eax                 # unknown word
    jmp exit
1:  cli
    hlt
    mov $0x78, %eax
    jmp exit
2:  sti
    hlt
    mov $0x79, %eax
    jmp exit
3:  mov $0x11, %al
    out %al, $0x80
    mov $0x7a, %eax
    jmp exit
4:  mov $42, %eax
    jmp exit

    .section .rodata
msg: .asciz "bad: "

    .bss
    .align 16
    .space 1024
stack_top:
