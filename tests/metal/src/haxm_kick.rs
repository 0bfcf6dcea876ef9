//! `haxm-kick`: how fast a kick ends a RUN (issue 8, defect 6), on emulated VT-x with two CPUs.
//!
//! CPU 0 runs a vCPU whose guest spins in `jmp $` (it never exits on its own). CPU 1 waits
//! until the RUN is well under way, sets `user_event_pending` in the tunnel as QEMU's kick
//! does, and kicks CPU 0 through `Platform::kick` (what HAX_VCPU_IOCTL_KICKOFF and the
//! shells' APC/signal kicks use). The RUN must come back with INTERRUPT at the exit the
//! kick's IPI causes, not at the end of the ~4 ms time slice. Measured in Bochs TSC ticks,
//! which count emulated instructions, and in VM exits during the kicked RUN.
//!
//! The last RUN first takes a host NMI (an NMI IPI from CPU 1 while the guest runs): with "NMI
//! exiting" it causes a VM exit (issue 8, defect 11), the host's own NMI handler must see it
//! (rhax-core re-raises it with INT 2), and the RUN goes on in the guest until the kick.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rhax::Exit;
use rhax_core::platform::Platform;

use crate::arch::rdtsc;
use crate::haxm::{e, qemu_msrs, qemu_set, real_mode_at, simple_vm, Ram, R};
use crate::hv::Shell;
use crate::platform::Metal;
use crate::scenarios::Ctx;
use crate::smp;

/// `sti; jmp $`. IF=1 because Bochs 2.7 holds host interrupts while the guest has IF=0
/// even with external-interrupt exiting (measured: the kick then waits for the slice end,
/// ~106,000 instructions); hardware exits regardless of the guest's IF (SDM Vol. 3C §26.3
/// "RFLAGS.IF does not control the blocking of external interrupts").
const SPIN: u64 = 0x1000;
/// Kicks measured.
const KICKS: u64 = 8;
/// How long CPU 1 waits after the RUN started before it kicks (TSC ticks): well inside the
/// time slice, so a RUN that only comes back at the slice end shows a long latency.
const DELAY: u64 = 300_000;

/// The RUN in progress: 0 = none, n = RUN number n started at `RUN_START`.
static RUNNING: AtomicU32 = AtomicU32::new(0);
static RUN_START: AtomicU64 = AtomicU64::new(0);
/// When CPU 1 kicked for RUN n (0 = not yet).
static KICKED_AT: AtomicU64 = AtomicU64::new(0);
static KICKED_RUN: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);

/// See the module documentation.
pub fn haxm_kick(ctx: &Ctx) -> R<String> {
    if smp::cpu_count() < 2 || ctx.cpus_wanted < 2 {
        return Err(String::from("needs 2 CPUs (--cpus 2)"));
    }
    let ram = Ram::new(0x1_0000)?;
    ram.write(SPIN, &[0xFB, 0xEB, 0xFE]);
    let shell = Shell::new()?;
    let (_sys, _vm, v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(SPIN), &qemu_msrs())?;
    let tunnel = v.tunnel_info().va;
    let vcpu = crate::sync::SpinLock::new(Some(v));
    let result: crate::sync::SpinLock<Option<R<(u64, u64, u64)>>> =
        crate::sync::SpinLock::new(None);
    let nmis_before = crate::interrupts::HOST_NMIS.load(Ordering::SeqCst);
    RUNNING.store(0, Ordering::SeqCst);
    KICKED_RUN.store(0, Ordering::SeqCst);
    DONE.store(0, Ordering::SeqCst);
    smp::run_on_cpus(0b11, &|cpu| {
        if cpu == 1 {
            kicker(tunnel);
            return;
        }
        let r = (|| -> R<(u64, u64, u64)> {
            let mut guard = vcpu.lock();
            let v = guard.as_mut().ok_or("no vCPU")?;
            let (mut worst, mut sum, mut exits) = (0u64, 0u64, 0u64);
            for n in 1..=KICKS as u32 + 1 {
                let before = v.stats().map_err(e("GET_STATS"))?.total.exits;
                RUN_START.store(rdtsc(), Ordering::SeqCst);
                RUNNING.store(n, Ordering::SeqCst);
                let exit = v.run().map_err(e("RUN"))?;
                let end = rdtsc();
                let kinds = matches!(exit, Exit::Interrupt);
                drop(exit);

                RUNNING.store(0, Ordering::SeqCst);
                if !kinds {
                    return Err(format!("RUN {n}: not INTERRUPT"));
                }
                if KICKED_RUN.load(Ordering::SeqCst) != n {
                    return Err(format!(
                        "RUN {n} came back before the kick ({} ticks): the slice ended it",
                        end - RUN_START.load(Ordering::SeqCst)
                    ));
                }
                let latency = end.saturating_sub(KICKED_AT.load(Ordering::SeqCst));
                let after = v.stats().map_err(e("GET_STATS"))?.total.exits;
                worst = worst.max(latency);
                sum += latency;
                exits = exits.max(after - before);
                if v.user_event_pending() {
                    return Err(format!("RUN {n}: user_event_pending still set"));
                }
            }
            Ok((worst, sum / (KICKS + 1), exits))
        })();
        DONE.store(1, Ordering::SeqCst);
        *result.lock() = Some(r);
    });
    let (worst, avg, exits) = result.lock().take().ok_or("CPU 0 did not report")??;
    let nmis = crate::interrupts::HOST_NMIS.load(Ordering::SeqCst) - nmis_before;
    if nmis != 1 {
        return Err(format!(
            "the host NMI sent during the guest reached the host's handler {nmis} times"
        ));
    }
    crate::println!("bench: haxm-kick-latency-max {worst} instructions");
    crate::println!("bench: haxm-kick-latency-avg {avg} instructions");
    crate::println!("bench: haxm-kick-run-exits-max {exits}");
    // The slice is 4 ms = 400,000 instructions at Bochs's 100 M/s; a kick that only took
    // effect at the slice end would show DELAY..slice. Anything under a tenth of the slice
    // means the kick's own exit ended the RUN.
    if worst > 40_000 {
        return Err(format!(
            "kick latency {worst} instructions: RUN did not end at the kick's exit"
        ));
    }
    Ok(format!(
        "{} kicks: latency max {worst}, avg {avg} instructions; at most {exits} exits per kicked RUN; a host NMI during the guest reached the host's handler",
        KICKS + 1
    ))
}

/// CPU 1: for each RUN, wait [`DELAY`] ticks into it, then set `user_event_pending` and kick.
fn kicker(tunnel: u64) {
    // SAFETY: the tunnel page is an identity-mapped kernel page the vCPU owns while the
    // scenario runs (CPU 0 keeps the vCPU open until after DONE); `user_event_pending` is the
    // 4-aligned u32 at offset 12, accessed only atomically, as user space does.
    let pending = unsafe { &*((tunnel + 12) as *const AtomicU32) };
    let mut last = 0;
    while DONE.load(Ordering::SeqCst) == 0 {
        let n = RUNNING.load(Ordering::SeqCst);
        if n == 0 || n == last {
            crate::arch::pause();
            continue;
        }
        let start = RUN_START.load(Ordering::SeqCst);
        while rdtsc().wrapping_sub(start) < DELAY && RUNNING.load(Ordering::SeqCst) == n {
            crate::arch::pause();
        }
        if RUNNING.load(Ordering::SeqCst) != n {
            last = n;
            continue;
        }
        if u64::from(n) == KICKS + 1 {
            // An NMI for the host while the guest runs, then the kick a while later.
            smp::send_nmi(0);
            let at = rdtsc();
            while rdtsc().wrapping_sub(at) < DELAY / 4 {
                crate::arch::pause();
            }
        }
        pending.fetch_or(1, Ordering::SeqCst);
        KICKED_AT.store(rdtsc(), Ordering::SeqCst);
        KICKED_RUN.store(n, Ordering::SeqCst);
        Metal.kick(0);
        last = n;
    }
}
