//! rhax-metal: a bare-metal test kernel that runs rhax scenarios on VT-x, emulated by Bochs in
//! CI (see `cargo xtask metal`) and real on hardware.
//!
//! Boot: multiboot2 (the ROM built by xtask, or GRUB) → `boot.rs` enters long mode with the first
//! 4 GiB identity-mapped → [`kmain`]: console, IDT/TSS, PICs masked, TSC rate, page allocator,
//! VMX on the BSP, the other CPUs by INIT-SIPI-SIPI with VMX on each, then the scenarios named by
//! `scenarios=` on the command line.
//!
//! Console protocol (parsed by xtask): `scenario NAME: start`, `scenario NAME: PASS [info]` or
//! `scenario NAME: FAIL reason`, `bench: NAME VALUE UNIT`, and last `metal-done: passed=N
//! failed=M`. A fatal error prints `metal-fatal: reason`. Success ends with Bochs's magic
//! breakpoint (exit status 0), failure with the shutdown port (status 1).
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod bench_apic;
mod bench_apic_remote;
mod bench_table;
mod boot;
mod bootinfo;
mod console;
mod guests;
mod haxm;
mod haxm_apic;
mod haxm_apic_arv;
mod haxm_apic_guest;
mod haxm_apic_remap;
mod haxm_apic_smp;
mod haxm_apic_smp_guest;
mod haxm_avx;
mod haxm_debug;
mod haxm_events;
mod haxm_fpu;
mod haxm_hostile;
mod haxm_kick;
mod haxm_mmio;
mod haxm_mmio_hostile;
mod haxm_quickboot;
mod haxm_stat;
mod hv;
mod interrupts;
mod mm;
mod mmio_guest;
mod platform;
mod scenarios;
mod smp;
mod sync;
mod time;
mod vmm;
mod vmx;

use core::sync::atomic::{AtomicBool, Ordering};

use arch::outb;

extern "C" {
    static __kernel_end: u8;
}

/// Ends the run as a failure: Bochs's shutdown port (exit status 1), else halt.
pub fn fail_run(reason: &str) -> ! {
    static FAILING: AtomicBool = AtomicBool::new(false);
    if !FAILING.swap(true, Ordering::SeqCst) {
        console::print_unlocked(format_args!("metal-fatal: {reason}\n"));
    }
    for b in b"Shutdown" {
        // SAFETY: port 0x8900 is Bochs's shutdown port; elsewhere the write is ignored.
        unsafe { outb(0x8900, *b) }
    }
    arch::halt_forever()
}

/// Ends the run after the scenarios.
fn finish(passed: usize, failed: usize) -> ! {
    println!("metal-done: passed={passed} failed={failed}");
    if failed == 0 {
        arch::magic_break();
        arch::halt_forever()
    }
    fail_run("some scenarios failed")
}

/// Masks both 8259 PICs after remapping them to vectors 0x20-0x2F, so that a stray IRQ can
/// neither arrive nor alias an exception vector (the BIOS path leaves the PIT running).
fn mask_pics() {
    const SEQ: [(u16, u8); 10] = [
        (0x20, 0x11),
        (0xA0, 0x11), // ICW1: edge, cascade, ICW4 follows
        (0x21, 0x20),
        (0xA1, 0x28), // ICW2: vector bases
        (0x21, 0x04),
        (0xA1, 0x02), // ICW3: slave on IRQ2
        (0x21, 0x01),
        (0xA1, 0x01), // ICW4: 8086 mode
        (0x21, 0xFF),
        (0xA1, 0xFF), // OCW1: mask everything
    ];
    for (port, val) in SEQ {
        // SAFETY: the standard 8259 initialisation sequence; nothing else uses the PICs.
        unsafe { outb(port, val) }
    }
}

fn init_memory(bi: &bootinfo::BootInfo) -> u64 {
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let low = kernel_end.max(if bi.info_end < 0xF000_0000 {
        bi.info_end
    } else {
        0
    });
    // Boot modules in RAM (GRUB's; the ROM's stay in the ROM) are kept out of the allocator.
    let low = bi.modules[..bi.module_count]
        .iter()
        .filter(|m| m.end < 0xF000_0000)
        .fold(low, |low, m| low.max(m.end.next_multiple_of(mm::PAGE)));
    let explicit = bi.arg("mem").and_then(bootinfo::parse_size);
    let mut total = 0;
    if bi.region_count > 0 && explicit.is_none() {
        for &(s, e) in &bi.regions[..bi.region_count] {
            let (s, e) = (s.max(low), e.min(1 << 32));
            if e > s {
                mm::add_region(s, e);
                total += e - s;
            }
        }
    } else {
        let top = explicit
            .or(bi.mem_upper_end)
            .unwrap_or(128 << 20)
            .min(0xC000_0000);
        mm::add_region(low, top);
        total = top.saturating_sub(low);
    }
    total
}

#[no_mangle]
extern "C" fn kmain(magic: u32, info: u64) -> ! {
    let bi = bootinfo::parse(magic, info);
    if bi.arg("console") == Some("serial") {
        console::enable_serial();
    }
    println!(
        "rhax-metal: boot multiboot2={} cmdline=\"{}\"",
        bi.multiboot2,
        bi.cmdline()
    );
    interrupts::init_idt();
    mask_pics();
    match bi.arg("tsc_hz").and_then(|s| s.parse().ok()) {
        Some(hz) => time::set_tsc_hz(hz),
        None => {
            let hz = time::calibrate_with_pit();
            println!("rhax-metal: TSC measured at {hz} Hz");
        }
    }
    let free = init_memory(&bi);
    println!("rhax-metal: {} MiB free for the page allocator", free >> 20);
    smp::init_bsp();
    let want = bi
        .arg("cpus")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1usize);
    let online = smp::start_aps(want);
    println!(
        "rhax-metal: {online} of {want} CPUs online, VMX on BSP: {:?}",
        vmx::state(0)
    );
    for cpu in 0..online {
        if let vmx::VmxState::Failed(reason) = vmx::state(cpu) {
            println!("rhax-metal: cpu {cpu}: cannot enter VMX operation: {reason}");
        }
    }
    let list = bi.arg("scenarios").unwrap_or("boot,smp,vmx-caps");
    let ctx = scenarios::Ctx {
        cpus_wanted: want,
        cmdline: alloc::string::String::from(bi.cmdline()),
        modules: (0..bi.module_count)
            .map(|i| vmm::BootModule::of(&bi, i))
            .collect(),
    };
    let (passed, failed) = scenarios::run_list(&ctx, list);
    finish(passed, failed)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::print_unlocked(format_args!("PANIC: {info}\n"));
    fail_run("panic")
}

// The mem* functions, as plain `rep` string instructions (compiler_builtins' weak versions
// would do too; these are short and obviously free of vector registers). Never written
// through core::ptr copy helpers, which would call back into them.

/// # Safety
/// C `memcpy` contract: valid, non-overlapping ranges of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Quadwords, then the tail bytes: what a kernel's memcpy does. Bochs counts every
    // iteration of a `rep` string instruction as one instruction, so `rep movsb` of a 4 KiB
    // buffer costs 4,096 in the benchmarks' figures and `rep movsq` 512 (issue 13, item 3).
    // SAFETY: the caller guarantees both ranges are valid; DF is clear (SysV ABI); RDI/RSI
    // advance past the quadwords into the tail.
    unsafe {
        core::arch::asm!("rep movsq", "mov rcx, {tail}", "rep movsb",
            tail = in(reg) n % 8, inout("rcx") n / 8 => _, inout("rdi") dst => _,
            inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C `memmove` contract: valid ranges of `n` bytes, possibly overlapping.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        // SAFETY: forward copy is correct when dst is below src or the ranges are disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    // n > 0 here (src < dst < src + n), so the last byte is inside both ranges.
    let (d, s) = (dst.wrapping_add(n - 1), src.wrapping_add(n - 1));
    // SAFETY: backward copy (DF set, then cleared again) for an overlap with dst above src.
    unsafe {
        core::arch::asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _, options(nostack));
    }
    dst
}

/// # Safety
/// C `memset` contract: a valid range of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // Quadwords of the byte repeated, then the tail (see `memcpy` for why).
    let pattern = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees the range; DF is clear; RDI advances into the tail.
    unsafe {
        core::arch::asm!("rep stosq", "mov rcx, {tail}", "rep stosb",
            tail = in(reg) n % 8, inout("rcx") n / 8 => _, inout("rdi") dst => _,
            in("rax") pattern, options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C `memcmp` contract: valid ranges of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // Quadword by quadword while equal (see `memcpy` for why), then byte by byte from the
    // first quadword that differs. Volatile reads: the compiler must not turn these loops
    // back into a call of `memcmp` itself.
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within both ranges; unaligned reads are fine on x86.
        let (x, y) = unsafe {
            (
                (a.wrapping_add(i) as *const u64).read_unaligned(),
                (b.wrapping_add(i) as *const u64).read_unaligned(),
            )
        };
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n, within the first range.
        let x = unsafe { a.wrapping_add(i).read_volatile() };
        // SAFETY: i < n, within the second range.
        let y = unsafe { b.wrapping_add(i).read_volatile() };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
