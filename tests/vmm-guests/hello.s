# hello: prints the command line, each module's string, size and first line, and CPUID
# leaf 1 ECX through the UART, then exits with status 0. Its header uses the a.out kludge
# (flag 16: the loader takes the load addresses from the header, not from the ELF headers).
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00010003       # page-aligned modules, memory information, a.out kludge

    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long mb_header                 # header_addr
    .long _load_start               # load_addr
    .long _load_end                 # load_end_addr
    .long _end                      # bss_end_addr
    .long _start                    # entry_addr

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    cmp $0x2BADB002, %eax           # the loader's magic (multiboot §3.2)
    mov $1, %eax
    jne exit
    mov %ebx, %ebp                  # the information structure
    pushf                           # EFLAGS.IF must be clear (§3.2)
    pop %eax
    test $0x200, %eax
    mov $2, %eax
    jnz exit
    call uart_init
    mov $msg_hello, %esi
    call puts
    mov $0x3f8, %dx                 # one line by string IO (the UART is always ready)
    mov $msg_outs, %esi
    mov $msg_outs_end - msg_outs, %ecx
    cld
    rep outsb
    testl $4, (%ebp)                # flags bit 2: cmdline
    mov $3, %eax
    jz exit
    mov $msg_cmdline, %esi
    call puts
    mov 16(%ebp), %esi
    call puts
    call newline
    mov $msg_count, %esi
    call puts
    xor %eax, %eax
    testl $8, (%ebp)                # flags bit 3: mods_count, mods_addr
    jz 1f
    mov 20(%ebp), %eax
1:  call puthex
    call newline
    mov %eax, %ecx                  # modules left
    mov 24(%ebp), %edi              # the module list
    xor %ebx, %ebx                  # index
2:  cmp %ecx, %ebx
    jae 3f
    mov $msg_module, %esi
    call puts
    mov %ebx, %eax
    call puthex
    mov $msg_string, %esi
    call puts
    mov 8(%edi), %esi               # the module's string
    call puts
    mov $msg_size, %esi
    call puts
    mov 4(%edi), %eax               # mod_end - mod_start
    sub (%edi), %eax
    call puthex
    mov $msg_first, %esi
    call puts
    mov (%edi), %esi                # the module's first line (at most 60 bytes)
    push %ecx
    mov $60, %ecx
    cmp %ecx, %eax
    jae 4f
    mov %eax, %ecx
4:  call putline
    pop %ecx
    call newline
    add $16, %edi
    inc %ebx
    jmp 2b
3:  mov $msg_cpuid, %esi
    call puts
    mov $1, %eax
    cpuid
    mov %ecx, %eax
    call puthex
    call newline
    mov $msg_done, %esi
    call puts
    xor %eax, %eax
    jmp exit

    .section .rodata
msg_hello:   .asciz "hello: a multiboot guest on rhax\n"
msg_cmdline: .asciz "hello: cmdline: "
msg_outs:    .ascii "hello: this line came by rep outsb, 64 bytes per exit at most\n"
msg_outs_end:
msg_count:   .asciz "hello: modules: "
msg_module:  .asciz "hello: module "
msg_string:  .asciz ": string \""
msg_size:    .asciz "\", size "
msg_first:   .asciz ", first line: "
msg_cpuid:   .asciz "hello: cpuid.1.ecx "
msg_done:    .asciz "hello: done\n"

    .bss
    .align 16
    .space 4096
stack_top:
