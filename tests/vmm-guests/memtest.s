# memtest: checks the memory the loader describes against the VM's RAM and exits with 0, or
# with the number of the step that failed:
#  1 EAX is not the loader's magic        5 a pattern written every 64 bytes from the end
#  2 info flags lack bit 0 or bit 6         of the image (and modules) to the top of RAM
#  3 mem_lower is not 640 KiB               does not read back
#  4 no RAM entry at 1 MiB in the mmap,   6 the last dword of RAM does not keep a value
#    or its length is not mem_upper KiB   7 the dword just past RAM is not open bus (reads
#                                           0xFFFFFFFF even after a write of 0)
#                                         8 .data lost its value or .bss is not zeroed
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003       # page-aligned modules, memory information; ELF32 segments
    .set STRIDE, 64

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
    mov %ebx, %ebp
    call uart_init
    mov $msg_start, %esi
    call puts
    mov (%ebp), %eax                # step 2: flags 0 (mem_*) and 6 (mmap)
    and $0x41, %eax
    cmp $0x41, %eax
    mov $2, %eax
    jne exit
    cmpl $640, 4(%ebp)              # step 3: mem_lower
    mov $3, %eax
    jne exit
    mov $msg_upper, %esi
    call puts
    mov 8(%ebp), %eax
    call puthex
    call newline
    # Step 4: walk the map (entry: size, base, length, type; the next entry is size + 4
    # bytes on) for the RAM entry at 1 MiB.
    mov 48(%ebp), %esi              # mmap_addr
    mov 44(%ebp), %ecx              # mmap_length
    add %esi, %ecx
    xor %edi, %edi                  # the top of RAM, when found
1:  cmp %ecx, %esi
    jae 3f
    cmpl $1, 20(%esi)               # type 1: RAM
    jne 2f
    cmpl $0x100000, 4(%esi)         # base, low half
    jne 2f
    cmpl $0, 8(%esi)                # base, high half
    jne 2f
    cmpl $0, 16(%esi)               # length, high half
    jne 2f
    mov 8(%ebp), %eax               # mem_upper KiB ...
    shl $10, %eax
    cmp 12(%esi), %eax              # ... must be the entry's length
    mov $4, %eax
    jne exit
    mov 12(%esi), %edi
    add $0x100000, %edi
2:  mov (%esi), %eax
    lea 4(%esi,%eax), %esi
    jmp 1b
3:  test %edi, %edi
    mov $4, %eax
    jz exit
    mov $msg_top, %esi
    call puts
    mov %edi, %eax
    call puthex
    call newline
    # Step 5: from the end of the image, past any module, to the top: write, then check.
    mov $_end, %ebx
    testl $8, (%ebp)
    jz 5f
    mov 20(%ebp), %ecx
    mov 24(%ebp), %esi
4:  jecxz 5f
    cmp 4(%esi), %ebx               # mod_end
    jae 6f
    mov 4(%esi), %ebx
6:  add $16, %esi
    dec %ecx
    jmp 4b
5:  add $0xfff, %ebx
    and $0xfffff000, %ebx           # the first free page
    mov %ebx, %esi
7:  mov %esi, %eax
    xor $0x5a5a5a5a, %eax
    mov %eax, (%esi)
    add $STRIDE, %esi
    cmp %edi, %esi
    jb 7b
    mov %ebx, %esi
8:  mov %esi, %eax
    xor $0x5a5a5a5a, %eax
    cmp %eax, (%esi)
    mov $5, %eax
    jne exit
    add $STRIDE, %esi
    cmp %edi, %esi
    jb 8b
    movl $0x12345678, -4(%edi)      # step 6: the last dword of RAM
    cmpl $0x12345678, -4(%edi)
    mov $6, %eax
    jne exit
    movl $0, (%edi)                 # step 7: past RAM, nothing answers
    cmpl $0xffffffff, (%edi)
    mov $7, %eax
    jne exit
    cmpl $0xc0ffee11, data_word     # step 8: .data loaded, .bss zeroed
    mov $8, %eax
    jne exit
    cmpl $0, bss_word
    jne exit
    mov $msg_ok, %esi
    call puts
    xor %eax, %eax
    jmp exit

    .section .rodata
msg_start: .asciz "memtest: start\n"
msg_upper: .asciz "memtest: mem_upper KiB "
msg_top:   .asciz "memtest: RAM top "
msg_ok:    .asciz "memtest: pattern, last dword, open bus, .data and .bss: ok\n"

    .data
    .align 4
data_word: .long 0xc0ffee11

    .bss
    .align 16
bss_word: .long 0
    .space 4092
stack_top:
