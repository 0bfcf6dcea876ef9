//! The guests of `haxm-mmio` and `haxm-vga`, assembled with the kernel (issue 11).
//!
//! `haxm-mmio` is a differential test with the CPU as its oracle: every test instruction runs
//! twice, once with its memory operand in guest RAM (executed by the CPU, here Bochs' model)
//! and once with it in an MMIO window served by a memory-like device on the client side
//! (executed by rhax's emulator through FAST_MMIO). Before each run the guest fills the
//! buffer (RAM or MMIO) and a side buffer in RAM with the same patterns, loads the same
//! registers and flags; after it, it saves the registers, flags, XMM0-1 and both buffers. The
//! guest then compares the two saves: a register must be equal in both runs, or equal
//! relative to its run's buffer base (an address the instruction derived from the base); the
//! flags must be equal under a mask that leaves out the flags the SDM calls undefined for the
//! instruction; the buffers and XMM registers must be equal byte for byte. A mismatch is
//! reported with `out 0xE0, eax` (EAX = test index << 16 | what differed), the end with
//! `out 0xE1, eax` (EAX = tests run), MOVBE tests skipped (no MOVBE in CPUID) with
//! `out 0xE3, eax`.
//!
//! The instruction list is written once (`MMIO_COMMON`, with the base register as a
//! parameter) and assembled three times: 32-bit protected mode with EBX, 64-bit mode with RBX,
//! and 64-bit mode with EBX (address-size prefix 67). Each test's text goes to a names table
//! so the client can name a failing test.
//!
//! The code is data to the kernel (a `.rodata` section: the kernel never runs it, and the
//! no-SSE check of its `.text` stays meaningful). It is position independent (relative calls and jumps); data lives at fixed guest
//! addresses, the constants below.

use core::arch::global_asm;

/// Where the client copies the code.
pub const CODE: u64 = 0x1000;
/// Largest code image the layout allows (up to [`STACK_TOP`] minus a page of stack).
pub const CODE_MAX: u64 = 0x6000;
/// Initial stack pointer of the guest.
pub const STACK_TOP: u64 = 0x8000;
/// The RAM buffer (0x80 bytes).
pub const RAMBUF: u64 = 0x9000;
/// The side buffer, always RAM (0x80 bytes).
pub const SIDE: u64 = 0x9100;
/// Patterns: the buffer's (0x80 bytes), the side buffer's (0x80), XMM0-1 (0x20).
pub const PAT: u64 = 0x9200;
/// The side buffer's pattern.
pub const PAT2: u64 = 0x9280;
/// XMM0 and XMM1 at the start of each run.
pub const XMMPAT: u64 = 0x9300;
/// The area the next save goes to.
pub const CUR: u64 = 0x9400;
/// The buffer of the current run (RAM or MMIO).
pub const CURBUF: u64 = 0x9408;
/// Tests compared so far.
pub const COUNT: u64 = 0x9410;
/// The flags compared for the current test.
pub const MASK: u64 = 0x9418;
/// The saves of the RAM run and of the MMIO run.
pub const AREA_A: u64 = 0xA000;
/// The save of the MMIO run.
pub const AREA_B: u64 = 0xA400;
/// Layout of a save: registers (and flags) first, then XMM0-1, the buffer, the side buffer.
pub const AREA_XMM: u64 = 0x80;
/// Offset of the saved buffer in an area.
pub const AREA_BUF: u64 = 0xA0;
/// Offset of the saved side buffer in an area.
pub const AREA_SIDE: u64 = 0x120;
/// Bytes of one save.
pub const AREA_LEN: u64 = 0x1A0;
/// The MMIO buffer (the device's window is the page it is in).
pub const MMIO: u64 = 0xD000_0100;
/// Bytes of each buffer.
pub const BUF_LEN: u64 = 0x80;
/// Flags at the start of each run: OF | SF | AF | CF and the reserved bit 1.
pub const FLAGS: u64 = 0x893;

/// Ports.
pub const PORT_MISMATCH: u16 = 0xE0;
/// The end (EAX = tests run).
pub const PORT_DONE: u16 = 0xE1;
/// MOVBE tests skipped.
pub const PORT_NO_MOVBE: u16 = 0xE3;

global_asm!(
    r#"
    /* Flag masks: {fall} = OF DF SF ZF AF PF CF; {flog} for AND OR XOR TEST (AF undefined,
       SDM Vol. 2); {fbt} for BT BTS BTR BTC (OF SF AF PF undefined, ZF unaffected). */

    /* The instruction list; \B is the base register. */
    .macro MMIO_COMMON B
    T {fall}, "mov byte ptr [\B+1], 0x5a"
    T {fall}, "mov word ptr [\B+2], 0x1234"
    T {fall}, "mov dword ptr [\B+4], 0x89abcdef"
    T {fall}, "mov dword ptr [\B+8], ecx"
    T {fall}, "mov word ptr [\B+0xa], dx"
    T {fall}, "mov byte ptr [\B+0xc], ah"
    T {fall}, "mov byte ptr [\B+0xd], dl"
    T {fall}, "mov eax, dword ptr [\B+0x10]"
    T {fall}, "mov cx, word ptr [\B+0x12]"
    T {fall}, "mov dh, byte ptr [\B+0x13]"
    T {fall}, "mov al, byte ptr [\B+0x7f]"
    T {fall}, "mov ecx, dword ptr [\B+0x7c]"
    T {fall}, "mov word ptr [\B+0x14], ds"
    T {fall}, "movzx ecx, byte ptr [\B+0x15]"
    T {fall}, "movzx ecx, word ptr [\B+0x16]"
    T {fall}, "movsx ecx, byte ptr [\B+0x17]"
    T {fall}, "movsx edx, word ptr [\B+0x18]"
    T {fall}, "movsx cx, byte ptr [\B+0x19]"
    .irp op, add, adc, sub, sbb, cmp
    T {fall}, "\op dword ptr [\B+0x20], ecx"
    T {fall}, "\op ecx, dword ptr [\B+0x24]"
    T {fall}, "\op byte ptr [\B+0x21], dl"
    T {fall}, "\op dh, byte ptr [\B+0x25]"
    T {fall}, "\op word ptr [\B+0x22], 0x7ff1"
    T {fall}, "\op word ptr [\B+0x26], dx"
    T {fall}, "\op dword ptr [\B+0x28], -5"
    T {fall}, "\op dword ptr [\B+0x2c], 0x12345678"
    T {fall}, "\op byte ptr [\B+0x29], 0x80"
    T {fall}, "\op al, byte ptr [\B+0x2a]"
    .endr
    .irp op, and, or, xor
    T {flog}, "\op dword ptr [\B+0x20], ecx"
    T {flog}, "\op ecx, dword ptr [\B+0x24]"
    T {flog}, "\op byte ptr [\B+0x21], dl"
    T {flog}, "\op word ptr [\B+0x22], 0x7ff1"
    T {flog}, "\op dword ptr [\B+0x28], -5"
    T {flog}, "\op byte ptr [\B+0x29], 0x80"
    .endr
    T {flog}, "test dword ptr [\B+0x20], ecx"
    T {flog}, "test byte ptr [\B+0x21], 0x81"
    T {flog}, "test word ptr [\B+0x22], 0x8000"
    T {flog}, "test dword ptr [\B+0x24], 0x40000000"
    T {flog}, "test byte ptr [\B+0x25], dh"
    T {fall}, "inc dword ptr [\B+0x30]"
    T {fall}, "dec word ptr [\B+0x32]"
    T {fall}, "inc byte ptr [\B+0x33]"
    T {fall}, "dec byte ptr [\B+0x34]"
    T {fall}, "neg dword ptr [\B+0x34]"
    T {fall}, "neg byte ptr [\B+0x37]"
    T {fall}, "neg word ptr [\B+0x38]"
    T {fall}, "not word ptr [\B+0x36]"
    T {fall}, "not dword ptr [\B+0x38]"
    T {fall}, "not byte ptr [\B+0x3a]"
    T {fall}, "xchg dword ptr [\B+0x38], ecx"
    T {fall}, "xchg byte ptr [\B+0x39], dh"
    T {fall}, "xchg word ptr [\B+0x3a], dx"
    T {fall}, "cmpxchg dword ptr [\B+0x3c], ecx"
    T {fall}, "mov eax, dword ptr [\B+0x3c]", "cmpxchg dword ptr [\B+0x3c], ecx"
    T {fall}, "mov al, byte ptr [\B+0x3d]", "lock cmpxchg byte ptr [\B+0x3d], dl"
    T {fall}, "cmpxchg word ptr [\B+0x3e], dx"
    T {fall}, "xadd dword ptr [\B+0x40], ecx"
    T {fall}, "lock xadd word ptr [\B+0x42], dx"
    T {fall}, "xadd byte ptr [\B+0x43], dl"
    T {fall}, "lock add dword ptr [\B+0x44], ecx"
    T {fall}, "lock sub byte ptr [\B+0x45], 3"
    T {flog}, "lock or word ptr [\B+0x46], dx"
    T {fall}, "lock inc dword ptr [\B+0x48]"
    T {fall}, "lock neg byte ptr [\B+0x49]"
    T {fall}, "lock not dword ptr [\B+0x4c]"
    T {fbt}, "bt dword ptr [\B+0x48], ecx"
    T {fbt}, "bt word ptr [\B+0x48], cx"
    T {fbt}, "mov ecx, -9", "bts dword ptr [\B+0x48], ecx"
    T {fbt}, "mov ecx, 100", "btr dword ptr [\B+0x10], ecx"
    T {fbt}, "mov dx, -17", "btc word ptr [\B+0x4a], dx"
    T {fbt}, "bt dword ptr [\B+0x4c], 5"
    T {fbt}, "bts word ptr [\B+0x4e], 15"
    T {fbt}, "btr dword ptr [\B+0x50], 33"
    T {fbt}, "btc dword ptr [\B+0x54], 31"
    T {fbt}, "lock bts dword ptr [\B+0x58], ecx"
    .irp cc, e, b, l, g, p, o, s, a
    T {fall}, "set\cc byte ptr [\B+0x5f]"
    .endr
    T {fall}, "cmove ecx, dword ptr [\B+0x54]"
    T {fall}, "cmovne ecx, dword ptr [\B+0x54]"
    T {fall}, "cmovb dx, word ptr [\B+0x56]"
    T {fall}, "cmovg eax, dword ptr [\B+0x7c]"
    T {fall}, "movnti dword ptr [\B+0x64], ecx"
    T {fall}, "movd xmm0, dword ptr [\B+0x68]"
    T {fall}, "movd dword ptr [\B+0x6c], xmm1"
    T {fall}, "movq xmm0, qword ptr [\B+0x70]"
    T {fall}, "movq qword ptr [\B+0x78], xmm1"
    T {fall}, "movdqu xmm0, xmmword ptr [\B+0x21]"
    T {fall}, "movdqu xmmword ptr [\B+0x33], xmm1"
    T {fall}, "movdqa xmm0, xmmword ptr [\B+0x40]"
    T {fall}, "movaps xmmword ptr [\B+0x50], xmm1"
    T {fall}, "movups xmm0, xmmword ptr [\B+0x7]"
    T {fall}, "movapd xmm1, xmmword ptr [\B+0x60]"
    T {fall}, "movupd xmmword ptr [\B+0x9], xmm0"
    T {fall}, "lea esi, [\B+0x10]", "lea edi, [\B+0x50]", "movsb"
    T {fall}, "lea esi, [\B+0x10]", "mov edi, {side}+0x10", "movsd"
    T {fall}, "mov esi, {side}+4", "lea edi, [\B+0x18]", "movsw"
    T {fall}, "lea esi, [\B+0x10]", "mov edi, {side}", "mov ecx, 5", "rep movsd"
    T {fall}, "std", "lea esi, [\B+0x30]", "lea edi, [\B+0x60]", "mov ecx, 6", "rep movsw"
    T {fall}, "lea edi, [\B+0x20]", "mov ecx, 7", "rep stosb"
    T {fall}, "lea edi, [\B+0x31]", "stosd"
    T {fall}, "std", "lea edi, [\B+0x70]", "mov ecx, 3", "rep stosw"
    T {fall}, "lea esi, [\B+0x40]", "lodsd"
    T {fall}, "lea esi, [\B+0x40]", "mov ecx, 3", "rep lodsb"
    T {fall}, "lea esi, [\B+0x20]", "mov edi, {side}+0x20", "mov ecx, 8", "repe cmpsb"
    T {fall}, "mov esi, {side}+0x20", "lea edi, [\B+0x20]", "mov ecx, 4", "repne cmpsd"
    T {fall}, "lea edi, [\B+0x10]", "mov al, 0xf8", "mov ecx, 32", "repne scasb"
    T {fall}, "lea edi, [\B+0x10]", "mov eax, 0x12345678", "mov ecx, 4", "repe scasd"
    T {fall}, "lea edi, [\B]", "xor ecx, ecx", "rep stosb"
    .endm

    .macro MMIO_MOVBE B
    T {fall}, "movbe ecx, dword ptr [\B+0x20]"
    T {fall}, "movbe word ptr [\B+0x24], dx"
    .endm

    /* One test: the RAM run, the MMIO run, the compare (labels 81-84 are the mode's routines
       that follow its tests), and the test's text in the names table. */
    .macro T mask, i1, i2="", i3="", i4="", i5=""
    mov esp, {stack}
    call 81f
    \i1
    \i2
    \i3
    \i4
    \i5
    call 83f
    mov esp, {stack}
    call 82f
    \i1
    \i2
    \i3
    \i4
    \i5
    call 83f
    mov dword ptr [{mask}], \mask
    call 84f
    .pushsection .rodata.rhax_mmio_names, "a"
    .ascii "\i1|\i2|\i3|\i4|\i5"
    .byte 0
    .popsection
    .endm

    .pushsection .rodata.rhax_mmio_names, "a"
    .global rhax_mmio_names32_start
rhax_mmio_names32_start:
    .popsection

    /* ---------------- 32-bit protected mode, flat segments, paging off ---------------- */

    .section .rodata.rhax_guest_mmio32, "a"
    .code32
    .global rhax_mmio32_start
rhax_mmio32_start:
    mov esp, {stack}
    mov dword ptr [{count}], 0
    MMIO_COMMON ebx
    T {fall}, "mov esi, 3", "mov dword ptr [ebx+esi*4+0x20], eax"
    T {fall}, "mov esi, 5", "mov cl, byte ptr [ebx+esi*2+0x30]"
    T {fall}, "push dword ptr [ebx+0x58]", "pop ecx"
    T {fall}, "push 0x12345678", "pop dword ptr [ebx+0x5c]"
    T {fall}, "push word ptr [ebx+0x5a]", "pop cx"
    mov eax, 1
    cpuid
    bt ecx, 22
    jc 70f
    out {no_movbe}, eax
    jmp 71f
70:
    MMIO_MOVBE ebx
71:
    mov eax, dword ptr [{count}]
    out {done}, eax
    hlt
    jmp 71b

    /* prep: the RAM run (81) or the MMIO run (82) */
81:
    mov dword ptr [{cur}], {area_a}
    mov dword ptr [{curbuf}], {rambuf}
    jmp 85f
82:
    mov dword ptr [{cur}], {area_b}
    mov dword ptr [{curbuf}], {mmio}
85:
    cld
    mov esi, {pat}
    mov edi, dword ptr [{curbuf}]
    mov ecx, 32
86:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz 86b
    mov esi, {pat2}
    mov edi, {side}
    mov ecx, 32
    rep movsd
    movdqu xmm0, xmmword ptr [{xmmpat}]
    movdqu xmm1, xmmword ptr [{xmmpat}+16]
    mov ebx, dword ptr [{curbuf}]
    mov eax, 0x7ffffff0
    mov ecx, 0x13
    mov edx, 0x8000fffe
    mov esi, 0x1234
    mov edi, 0x5678
    mov ebp, 0x5555aaaa
    push {flags}
    popfd
    ret

    /* save: registers (EDI ESI EBP ESP EBX EDX ECX EAX EFLAGS), XMM0-1, the buffers */
83:
    pushfd
    cld
    pushad
    mov edi, dword ptr [{cur}]
    mov esi, esp
    mov ecx, 9
    rep movsd
    mov edi, dword ptr [{cur}]
    movdqu xmmword ptr [edi+0x80], xmm0
    movdqu xmmword ptr [edi+0x90], xmm1
    mov esi, dword ptr [{curbuf}]
    add edi, 0xA0
    mov ecx, 32
87:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz 87b
    mov esi, {side}
    mov ecx, 32
    rep movsd
    popad
    popfd
    ret

    /* compare the two saves; EDX collects what differed */
84:
    cld
    xor edx, edx
    xor ecx, ecx
88:
    mov eax, dword ptr [{area_a}+ecx*4]
    mov ebx, dword ptr [{area_b}+ecx*4]
    cmp ecx, 8
    je 90f
    cmp eax, ebx
    je 89f
    sub eax, {rambuf}
    sub ebx, {mmio}
    cmp eax, ebx
    je 89f
    bts edx, ecx
89:
    inc ecx
    cmp ecx, 9
    jne 88b
    jmp 91f
90:
    xor eax, ebx
    and eax, dword ptr [{mask}]
    jz 89b
    bts edx, 16
    jmp 89b
91:
    mov esi, {area_a}+0x80
    mov edi, {area_b}+0x80
    mov ecx, 0x48
    repe cmpsd
    je 92f
    bts edx, 17
92:
    test edx, edx
    jz 93f
    mov eax, dword ptr [{count}]
    shl eax, 18
    or eax, edx
    out {mismatch}, eax
93:
    inc dword ptr [{count}]
    ret
    .global rhax_mmio32_end
rhax_mmio32_end:

    .pushsection .rodata.rhax_mmio_names, "a"
    .global rhax_mmio_names32_end
rhax_mmio_names32_end:
    .popsection

    /* ---------------- 64-bit mode, identity paging ---------------- */

    .pushsection .rodata.rhax_mmio_names, "a"
    .global rhax_mmio_names64_start
rhax_mmio_names64_start:
    .popsection

    .section .rodata.rhax_guest_mmio64, "a"
    .code64
    .global rhax_mmio64_start
rhax_mmio64_start:
    mov esp, {stack}
    mov dword ptr [{count}], 0
    MMIO_COMMON rbx
    MMIO_COMMON ebx
    T {fall}, "mov rax, qword ptr [rbx+8]"
    T {fall}, "mov qword ptr [rbx+0x10], r9"
    T {fall}, "mov qword ptr [rbx+0x18], -2"
    T {fall}, "mov r10b, byte ptr [rbx+0x1f]"
    T {fall}, "mov byte ptr [rbx+2], sil"
    T {fall}, "mov eax, dword ptr [rbx+0x10]"
    T {fall}, "mov ax, word ptr [rbx+0x10]"
    T {fall}, "movsxd r11, dword ptr [rbx+0x24]"
    T {fall}, "movzx r12, word ptr [rbx+0x16]"
    T {fall}, "movsx r13, byte ptr [rbx+0x17]"
    T {fall}, "mov rsi, 3", "mov qword ptr [rbx+rsi*8+0x20], r8"
    T {fall}, "add qword ptr [rbx+0x20], r9"
    T {fall}, "sub r14, qword ptr [rbx+0x28]"
    T {fall}, "adc qword ptr [rbx+0x30], -7"
    T {fall}, "cmp qword ptr [rbx+0x40], r15"
    T {flog}, "and qword ptr [rbx+0x38], 0x7fffffff"
    T {flog}, "xor r8, qword ptr [rbx+0x48]"
    T {flog}, "or qword ptr [rbx+0x50], r10"
    T {flog}, "test qword ptr [rbx+0x20], r9"
    T {fall}, "neg qword ptr [rbx+0x50]"
    T {fall}, "not qword ptr [rbx+0x58]"
    T {fall}, "inc qword ptr [rbx+0x60]"
    T {fall}, "dec qword ptr [rbx+0x68]"
    T {fall}, "xchg qword ptr [rbx+0x68], r12"
    T {fall}, "cmpxchg qword ptr [rbx+0x70], r13"
    T {fall}, "lock xadd qword ptr [rbx+0x78], r14"
    T {fbt}, "mov r9, -70", "btc qword ptr [rbx+0x40], r9"
    T {fbt}, "bts qword ptr [rbx+0x40], 63"
    T {fall}, "push qword ptr [rbx+0x28]", "pop rcx"
    T {fall}, "push 0x7eadbeef", "pop qword ptr [rbx+0x30]"
    T {fall}, "mov rcx, -1", "cmove ecx, dword ptr [rbx+0x54]"
    T {fall}, "cmovne r10, qword ptr [rbx+0x58]"
    T {fall}, "lea rsi, [rbx+0x10]", "mov edi, {side}", "mov ecx, 3", "rep movsq"
    T {fall}, "lea rdi, [rbx+0x40]", "mov rcx, 2", "rep stosq"
    T {fall}, "lea rsi, [rbx+0x48]", "lodsq"
    T {fall}, "lea esi, [rbx+0x10]", "mov edi, {side}", ".byte 0x67, 0xa4"
    T {fall}, "movnti qword ptr [rbx+0x18], r15"
    T {fall}, "setne byte ptr [rbx+0x7f]"
    mov eax, 1
    cpuid
    bt ecx, 22
    jc 70f
    out {no_movbe}, eax
    jmp 71f
70:
    MMIO_MOVBE rbx
    T {fall}, "movbe r9, qword ptr [rbx+0x28]"
71:
    mov eax, dword ptr [{count}]
    out {done}, eax
    hlt
    jmp 71b

81:
    mov qword ptr [{cur}], {area_a}
    mov qword ptr [{curbuf}], {rambuf}
    jmp 85f
82:
    mov qword ptr [{cur}], {area_b}
    mov eax, {mmio}
    mov qword ptr [{curbuf}], rax
85:
    cld
    mov esi, {pat}
    mov rdi, qword ptr [{curbuf}]
    mov ecx, 16
86:
    mov rax, qword ptr [rsi]
    mov qword ptr [rdi], rax
    add rsi, 8
    add rdi, 8
    dec ecx
    jnz 86b
    mov esi, {pat2}
    mov edi, {side}
    mov ecx, 16
    rep movsq
    movdqu xmm0, xmmword ptr [{xmmpat}]
    movdqu xmm1, xmmword ptr [{xmmpat}+16]
    mov rbx, qword ptr [{curbuf}]
    mov rax, 0xdeadbeef7ffffff0
    mov ecx, 0x13
    mov rdx, 0xfedcba988000fffe
    mov esi, 0x1234
    mov edi, 0x5678
    mov rbp, 0x5555aaaa5555aaaa
    mov r8, 0x8080808080808080
    mov r9, 0x0123456789abcdef
    mov r10, 0x7fffffffffffffff
    mov r11, 0x1111111111111111
    mov r12, 0xfffffffffffffffe
    mov r13, 0x00000000ffffffff
    mov r14, 0x8000000000000000
    mov r15, 0x0f0f0f0f0f0f0f0f
    push {flags}
    popfq
    ret

    /* save: R15..R8 RDI RSI RBP RBX RDX RCX RAX RFLAGS, XMM0-1, the buffers */
83:
    pushfq
    cld
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, qword ptr [{cur}]
    mov rsi, rsp
    mov ecx, 16
    rep movsq
    mov rdi, qword ptr [{cur}]
    movdqu xmmword ptr [rdi+0x80], xmm0
    movdqu xmmword ptr [rdi+0x90], xmm1
    mov rsi, qword ptr [{curbuf}]
    add rdi, 0xA0
    mov ecx, 16
87:
    mov rax, qword ptr [rsi]
    mov qword ptr [rdi], rax
    add rsi, 8
    add rdi, 8
    dec ecx
    jnz 87b
    mov esi, {side}
    mov ecx, 16
    rep movsq
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    popfq
    ret

84:
    cld
    xor edx, edx
    xor ecx, ecx
88:
    mov rax, qword ptr [{area_a}+rcx*8]
    mov rbx, qword ptr [{area_b}+rcx*8]
    cmp ecx, 15
    je 90f
    cmp rax, rbx
    je 89f
    sub rax, {rambuf}
    mov esi, {mmio}
    sub rbx, rsi
    cmp rax, rbx
    je 89f
    bts edx, ecx
89:
    inc ecx
    cmp ecx, 16
    jne 88b
    jmp 91f
90:
    xor eax, ebx
    and eax, dword ptr [{mask}]
    jz 89b
    bts edx, 16
    jmp 89b
91:
    mov esi, {area_a}+0x80
    mov edi, {area_b}+0x80
    mov ecx, 0x48
    repe cmpsd
    je 92f
    bts edx, 17
92:
    test edx, edx
    jz 93f
    mov eax, dword ptr [{count}]
    shl eax, 18
    or eax, edx
    out {mismatch}, eax
93:
    inc dword ptr [{count}]
    ret
    .global rhax_mmio64_end
rhax_mmio64_end:

    .pushsection .rodata.rhax_mmio_names, "a"
    .global rhax_mmio_names64_end
rhax_mmio_names64_end:
    .popsection

    /* ---------------- haxm-vga: real mode, the text buffer at 0xB8000 is MMIO ---------------- */
    .section .rodata.rhax_guest_vga16, "a"
    .code16
    .global rhax_vga16_start
rhax_vga16_start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x8000
    mov ax, 0xB800
    mov es, ax
    xor di, di
    mov cx, 2000
    mov ax, 0x0720
    cld
    rep stosw
    add word ptr es:[2], 0x0101
    mov ax, word ptr es:[2]
    out 0xE2, ax
    push es
    pop ds
    xor ax, ax
    mov es, ax
    mov si, 2
    mov di, 0x600
    mov cx, 3
    rep movsw
    push ds
    pop es
    xor ax, ax
    mov ds, ax
    mov di, 3998
    std
    mov ax, 0x0720
    mov cx, 2000
    repe scasw
    cld
    mov ax, cx
    out 0xE4, ax
    /* MOV with a moffs operand both ways, and MOV to a segment register from MMIO. */
    mov ax, word ptr es:[0x0002]
    out 0xE6, ax
    mov byte ptr es:[0x0006], al
    mov ds, word ptr es:[0x0008]
    mov bx, ds
    xor ax, ax
    mov ds, ax
    mov ax, bx
    out 0xE7, ax
    hlt
    .global rhax_vga16_end
rhax_vga16_end:
    .code64
    .text
"#,
    stack = const STACK_TOP,
    side = const SIDE,
    pat = const PAT,
    pat2 = const PAT2,
    xmmpat = const XMMPAT,
    cur = const CUR,
    curbuf = const CURBUF,
    count = const COUNT,
    mask = const MASK,
    area_a = const AREA_A,
    area_b = const AREA_B,
    rambuf = const RAMBUF,
    mmio = const MMIO,
    flags = const FLAGS,
    mismatch = const PORT_MISMATCH,
    done = const PORT_DONE,
    no_movbe = const PORT_NO_MOVBE,
    fall = const 0xCD5,
    flog = const 0xCC5,
    fbt = const 0x441,
);

extern "C" {
    static rhax_mmio32_start: u8;
    static rhax_mmio32_end: u8;
    static rhax_mmio64_start: u8;
    static rhax_mmio64_end: u8;
    static rhax_mmio_names32_start: u8;
    static rhax_mmio_names32_end: u8;
    static rhax_mmio_names64_start: u8;
    static rhax_mmio_names64_end: u8;
    static rhax_vga16_start: u8;
    static rhax_vga16_end: u8;
}

/// The bytes between two symbols of the global_asm above.
///
/// # Safety
/// `start` and `end` are symbols of one section of the global_asm above, `start <= end`.
unsafe fn between(start: *const u8, end: *const u8) -> &'static [u8] {
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: by the contract, [start, end) is one read-only section of this image, which lives
    // for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The 32-bit guest's code.
pub fn code32() -> &'static [u8] {
    // SAFETY: both symbols are in `.rodata.rhax_guest_mmio32`, start first.
    unsafe {
        between(
            core::ptr::addr_of!(rhax_mmio32_start),
            core::ptr::addr_of!(rhax_mmio32_end),
        )
    }
}

/// The 64-bit guest's code.
pub fn code64() -> &'static [u8] {
    // SAFETY: both symbols are in `.rodata.rhax_guest_mmio64`, start first.
    unsafe {
        between(
            core::ptr::addr_of!(rhax_mmio64_start),
            core::ptr::addr_of!(rhax_mmio64_end),
        )
    }
}

/// The 32-bit guest's test names, NUL-separated, in test order.
pub fn names32() -> &'static [u8] {
    // SAFETY: both symbols are in `.rodata.rhax_mmio_names`, start first.
    unsafe {
        between(
            core::ptr::addr_of!(rhax_mmio_names32_start),
            core::ptr::addr_of!(rhax_mmio_names32_end),
        )
    }
}

/// The 64-bit guest's test names.
pub fn names64() -> &'static [u8] {
    // SAFETY: both symbols are in `.rodata.rhax_mmio_names`, start first.
    unsafe {
        between(
            core::ptr::addr_of!(rhax_mmio_names64_start),
            core::ptr::addr_of!(rhax_mmio_names64_end),
        )
    }
}

/// The real-mode VGA guest's code.
pub fn vga16() -> &'static [u8] {
    // SAFETY: both symbols are in `.rodata.rhax_guest_vga16`, start first.
    unsafe {
        between(
            core::ptr::addr_of!(rhax_vga16_start),
            core::ptr::addr_of!(rhax_vga16_end),
        )
    }
}
