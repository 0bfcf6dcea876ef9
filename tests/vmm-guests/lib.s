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
