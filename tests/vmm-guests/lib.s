# Shared routines of the test guests: the 16550 UART at 0x3F8 (polled: LSR bit 5, THR empty,
# before every byte), hexadecimal output and the exit port 0xF4.
    .code32
    .text

# Programs the UART as a driver would (8N1, 115200 baud, FIFOs on), then checks that the
# divisor latch and the scratch register read back what was written (exit 0x10 if not).
    .globl uart_init
uart_init:
    pusha
    mov $0x3fb, %dx
    mov $0x80, %al          # LCR: DLAB
    out %al, %dx
    mov $0x3f8, %dx
    mov $0x01, %al          # DLL: divisor 1 (115200 baud)
    out %al, %dx
    mov $0x3f9, %dx
    xor %al, %al            # DLM
    out %al, %dx
    mov $0x3f8, %dx
    in %dx, %al             # DLL reads back while DLAB is set
    cmp $0x01, %al
    jne 1f
    mov $0x3fb, %dx
    mov $0x03, %al          # LCR: 8 data bits, no parity, 1 stop bit, DLAB off
    out %al, %dx
    in %dx, %al
    cmp $0x03, %al
    jne 1f
    mov $0x3fa, %dx
    mov $0xc7, %al          # FCR: FIFOs on and cleared
    out %al, %dx
    mov $0x3fc, %dx
    mov $0x0b, %al          # MCR: DTR, RTS, OUT2
    out %al, %dx
    mov $0x3ff, %dx
    mov $0x5a, %al          # SCR: scratch
    out %al, %dx
    in %dx, %al
    cmp $0x5a, %al
    jne 1f
    popa
    ret
1:  mov $0x10, %eax
    jmp exit

# putc: AL to the UART once the transmitter holding register is empty.
    .globl putc
putc:
    push %edx
    push %eax
1:  mov $0x3fd, %dx
    in %dx, %al
    test $0x20, %al
    jz 1b
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret

# puts: the zero-terminated string at ESI.
    .globl puts
puts:
    pusha
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  popa
    ret

# putline: at most ECX bytes at ESI, up to a NUL or a newline.
    .globl putline
putline:
    pusha
1:  jecxz 2f
    lodsb
    test %al, %al
    jz 2f
    cmp $0x0a, %al
    je 2f
    call putc
    dec %ecx
    jmp 1b
2:  popa
    ret

# puthex: EAX as 8 hexadecimal digits.
    .globl puthex
puthex:
    pusha
    mov %eax, %ebx
    mov $8, %ecx
1:  rol $4, %ebx
    mov %bl, %al
    and $0x0f, %al
    add $0x30, %al
    cmp $0x39, %al
    jbe 2f
    add $7, %al
2:  call putc
    loop 1b
    popa
    ret

    .globl newline
newline:
    push %eax
    mov $0x0a, %al
    call putc
    pop %eax
    ret

# exit: ends the run with status EAX (outl to the exit port); never returns.
    .globl exit
exit:
    mov $0xf4, %dx
    out %eax, %dx
1:  cli
    hlt
    jmp 1b

# gdt_init: loads the guests' own GDT (the multiboot machine state leaves GDTR undefined,
# §3.2) and reloads the segment registers: 0x08 flat 32-bit code, 0x10 flat data.
    .globl gdt_init
gdt_init:
    lgdt lib_gdtr
    ljmp $0x08, $1f
1:  push %eax
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    pop %eax
    ret

# idt_init: every vector of `lib_idt` to `unexpected` (32-bit interrupt gates, SDM Vol. 3A
# §6.11, Figure 6-2), then LIDT. Handlers are set with idt_set.
    .globl idt_init
idt_init:
    pusha
    xor %eax, %eax
    mov $unexpected, %ebx
1:  call idt_set
    inc %eax
    cmp $256, %eax
    jb 1b
    lidt lib_idtr
    popa
    ret

# idt_load: LIDT of the IDT idt_init filled (for an application processor).
    .globl idt_load
idt_load:
    lidt lib_idtr
    ret

# idt_set: vector EAX to the handler at EBX (selector 0x08, present, DPL 0, 32-bit
# interrupt gate: IF cleared on entry).
    .globl idt_set
idt_set:
    push %edx
    push %ecx
    lea lib_idt(,%eax,8), %edx
    mov %ebx, %ecx
    and $0xffff, %ecx
    or $0x00080000, %ecx            # selector 0x08 in bits 31:16
    mov %ecx, (%edx)
    mov %ebx, %ecx
    and $0xffff0000, %ecx
    or $0x8e00, %ecx                # P, DPL 0, type 0xE (32-bit interrupt gate)
    mov %ecx, 4(%edx)
    pop %ecx
    pop %edx
    ret

# An exception or an interrupt no handler was set for: exit status 0x21.
unexpected:
    mov $0x21, %eax
    jmp exit

    .section .rodata
    .align 8
lib_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        # 0x08: flat 32-bit code
    .quad 0x00CF92000000FFFF        # 0x10: flat data
lib_gdtr:
    .word 23
    .long lib_gdt
    .align 4
lib_idtr:
    .word 256 * 8 - 1
    .long lib_idt

    .bss
    .align 8
lib_idt:
    .space 256 * 8
