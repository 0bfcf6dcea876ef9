//! The IDT, the TSS of each CPU, and the exception handlers.
//!
//! Every exception prints vector, error code, RIP, CR2 and the CPU, then fails the run, unless a
//! test armed [`expect`] for exactly that vector (the `boot` scenario checks the handlers that
//! way). Gate format: SDM Vol. 3A §7.14.1 ("64-Bit Mode IDT").

use core::arch::{asm, global_asm};
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::boot::{self, KERNEL_CS, MAX_CPUS};

/// Vector of the wake-up IPI the BSP sends to an idle AP.
pub const WAKE_VECTOR: u8 = 0xF0;
/// Spurious-interrupt vector programmed in the local APIC.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Saved state, as the stubs below lay it out on the stack.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// Exceptions that push an error code: SDM Vol. 3A Table 7-1 (8, 10-14, 17, 21, 29, 30).
global_asm!(
    r#"
    .text
    .macro ISR_NOERR n
    .balign 16
isr_\n:
    push $0
    push $\n
    jmp isr_common
    .endm
    .macro ISR_ERR n
    .balign 16
isr_\n:
    push $\n
    jmp isr_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,240,255
    ISR_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    ISR_ERR \n
    .endr

isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    sub $512, %rsp
    fxsave (%rsp)
    cld
    call exception_dispatch
    fxrstor (%rsp)
    add $512, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq

    .section .rodata
    .balign 8
    .global ISR_TABLE
ISR_TABLE:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
    .quad isr_240
    .quad isr_255
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static ISR_TABLE: [u64; 34];
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate {
    lo: u64,
    hi: u64,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate { lo: 0, hi: 0 }; 256]);

/// A 64-bit TSS (SDM Vol. 3A §8.7, Figure 8-11).
#[repr(C, packed)]
pub struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

static mut TSS: [Tss; MAX_CPUS] = [const {
    Tss {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist: [0; 7],
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: 104,
    }
}; MAX_CPUS];

/// Stacks for IST1 (double fault, NMI, machine check), one per CPU.
#[repr(C, align(16))]
struct IstStacks([[u8; 8192]; MAX_CPUS]);
static mut IST_STACKS: IstStacks = IstStacks([[0; 8192]; MAX_CPUS]);

fn gate(handler: u64, ist: u8) -> Gate {
    // Present, DPL 0, type 0xE (64-bit interrupt gate): IF is cleared on entry.
    let lo = (handler & 0xFFFF)
        | u64::from(KERNEL_CS) << 16
        | u64::from(ist & 7) << 32
        | 0x8E << 40
        | (handler >> 16 & 0xFFFF) << 48;
    Gate {
        lo,
        hi: handler >> 32,
    }
}

/// Fills the IDT (once, on the BSP).
pub fn init_idt() {
    // SAFETY: ISR_TABLE is a read-only table defined in the global_asm above.
    let table = unsafe { &*core::ptr::addr_of!(ISR_TABLE) };
    const IDT_PTR: *mut Idt = addr_of_mut!(IDT);
    // SAFETY: called once on the BSP before any other CPU runs or loads the IDT.
    let idt = unsafe { &mut *IDT_PTR };
    for (v, &h) in table[..32].iter().enumerate() {
        // #DF (8), NMI (2) and #MC (18) run on IST1: they may come with a broken stack.
        let ist = if matches!(v, 2 | 8 | 18) { 1 } else { 0 };
        idt.0[v] = gate(h, ist);
    }
    idt.0[usize::from(WAKE_VECTOR)] = gate(table[32], 0);
    idt.0[usize::from(SPURIOUS_VECTOR)] = gate(table[33], 0);
}

/// Loads the IDT and this CPU's TSS (with its IST1 stack). Returns the TR selector.
pub fn load_on_this_cpu(cpu: usize) -> u16 {
    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let ptr = Ptr {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: the IDT is static, fully initialised by `init_idt` before any CPU calls this.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) }
    let tss_ptr = (addr_of_mut!(TSS) as *mut Tss).wrapping_add(cpu);
    // SAFETY: each CPU touches only its own TSS and IST stack, once, before loading TR.
    let tss = unsafe { &mut *tss_ptr };
    let stack_top = core::ptr::addr_of!(IST_STACKS) as u64 + 8192 * (cpu as u64 + 1);
    tss.ist[0] = stack_top;
    let sel = boot::install_tss(
        cpu,
        tss as *const Tss as u64,
        core::mem::size_of::<Tss>() as u32 - 1,
    );
    // SAFETY: `sel` names the available 64-bit TSS just installed for this CPU.
    unsafe { asm!("ltr {0:x}", in(reg) sel, options(nostack, preserves_flags)) }
    sel
}

/// Vector + 1 of the exception a test expects next (0: none), and what it saw.
static EXPECT: AtomicU64 = AtomicU64::new(0);
static EXPECT_SKIP: AtomicU64 = AtomicU64::new(0);
static CAUGHT_RIP: AtomicU64 = AtomicU64::new(0);
static CAUGHT: AtomicU64 = AtomicU64::new(0);
static CAUGHT_ERR: AtomicU64 = AtomicU64::new(0);

/// Arms the handler to accept one exception `vector`; it records RIP and resumes at RIP + `skip`.
pub fn expect(vector: u8, skip: u64) {
    CAUGHT.store(0, Ordering::SeqCst);
    EXPECT_SKIP.store(skip, Ordering::SeqCst);
    EXPECT.store(u64::from(vector) + 1, Ordering::SeqCst);
}

/// What the last expected exception was: (vector, RIP, error code), if it came.
pub fn caught() -> Option<(u8, u64, u64)> {
    let v = CAUGHT.load(Ordering::SeqCst);
    EXPECT.store(0, Ordering::SeqCst);
    (v != 0).then(|| {
        (
            (v - 1) as u8,
            CAUGHT_RIP.load(Ordering::SeqCst),
            CAUGHT_ERR.load(Ordering::SeqCst),
        )
    })
}

fn name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "?", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "?", "?", "?", "?", "?", "?",
        "#HV", "#VC", "#SX", "?",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("IRQ")
}

/// NMIs the host handled (see `exception_dispatch`).
pub static HOST_NMIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

#[no_mangle]
extern "C" fn exception_dispatch(frame: &mut Frame) {
    if frame.vector == u64::from(WAKE_VECTOR) {
        crate::smp::eoi();
        return;
    }
    if frame.vector == u64::from(SPURIOUS_VECTOR) {
        return;
    }
    // An NMI is the host's (rhax-core re-raises one that arrived in a guest with INT 2): it
    // is counted and the interrupted code goes on.
    if frame.vector == 2 && EXPECT.load(Ordering::SeqCst) != 3 {
        HOST_NMIS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if EXPECT.load(Ordering::SeqCst) == frame.vector + 1 {
        CAUGHT_RIP.store(frame.rip, Ordering::SeqCst);
        CAUGHT_ERR.store(frame.error, Ordering::SeqCst);
        CAUGHT.store(frame.vector + 1, Ordering::SeqCst);
        EXPECT.store(0, Ordering::SeqCst);
        frame.rip += EXPECT_SKIP.load(Ordering::SeqCst);
        return;
    }
    crate::console::print_unlocked(format_args!(
        "\nFATAL: exception vector={} {} error={:#x} rip={:#x} cr2={:#x} cpu={} rsp={:#x} rflags={:#x}\n\
         FATAL: rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n",
        frame.vector,
        name(frame.vector),
        frame.error,
        frame.rip,
        crate::arch::cr2(),
        crate::smp::try_cpu_index().map_or(-1, |c| c as i64),
        frame.rsp,
        frame.rflags,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
    ));
    crate::fail_run("exception");
}
