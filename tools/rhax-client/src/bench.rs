//! `rhax-client exit-bench`: emulated instructions per VM-exit round trip, measured the way
//! `performance-anchors.md` §0b measured KVM and HAXM inside Bochs, so the figures sit beside
//! theirs (issue 10 item 4).
//!
//! Inside Bochs the TSC advances by exactly one per emulated instruction, so a guest RDTSC
//! delta over a loop counts every instruction executed meanwhile: the guest's and the
//! hypervisor's (kernel and user space). The guest is real mode, in a small RAM block that
//! this process allocates and registers (as QEMU does). Each batch runs, between two RDTSCs:
//!
//! * the **bracket**: nothing (only `mov esi, eax`, which every loop below has too): the
//!   fixed cost of the measurement itself, subtracted from every loop;
//! * the **calibration** loop: `nop; nop; dec edi; jnz` (4 instructions, no exit). It must
//!   measure 4.000 per iteration, or the method is broken;
//! * the **CPUID** loop: `xor eax, eax; cpuid; dec edi; jnz` (4 instructions). CPUID is
//!   handled in the kernel: no return to user space;
//! * the **OUT** loop: `out 0x80, al; dec edi; jnz` (3 instructions). Each OUT returns RUN to
//!   this process, which runs the vCPU again at once: the user-space round trip, IOCTL
//!   included.
//!
//! After each loop the guest reports its delta with a 32-bit `out` to a port of its own, which
//! this process decodes. "Round trip" is the per-iteration figure minus the guest's
//! instructions that do not exit (3 for CPUID, 2 for OUT), as in §0b. Timer interrupts of the
//! host inflate some batches, so the minimum over many batches is the figure; the median is
//! printed beside it. Nothing here asserts on speed: only the calibration is checked.
//!
//! The same command runs on Windows against `\\.\HAX` (rhax.sys or HAXM) on a machine with
//! real VT-x, where the TSC counts cycles instead of instructions and the calibration check
//! does not apply (see `--any-tsc`).

pub mod split;

use rhax::api::{IoDirection, RamFlags};
use rhax::{Exit, System, Transport};

/// The port of the OUT loop.
pub const LOOP_PORT: u16 = 0x80;
/// The guest reports the delta of [`Kind`] `k` on port `REPORT_BASE + k as u16`.
pub const REPORT_BASE: u16 = 0x90;
/// Where the guest code is placed (guest-physical = linear: real mode, CS base 0).
pub const CODE_GPA: u64 = 0x1000;
/// Guest RAM: 64 KiB from guest-physical 0.
pub const RAM_BYTES: usize = 64 << 10;

/// What one RDTSC bracket of the guest measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No loop: the measurement's own cost.
    Bracket = 0,
    /// 4 instructions per iteration, no exit.
    Calibration = 1,
    /// CPUID per iteration, handled in the kernel.
    Cpuid = 2,
    /// OUT per iteration, served in user space.
    Out = 3,
}

const KINDS: [Kind; 4] = [Kind::Bracket, Kind::Calibration, Kind::Cpuid, Kind::Out];

impl Kind {
    /// The loop body before `dec edi; jnz` (16-bit code).
    fn body(self) -> &'static [u8] {
        match self {
            Kind::Bracket => &[],
            Kind::Calibration => &[0x90, 0x90], // nop; nop
            Kind::Cpuid => &[0x66, 0x31, 0xC0, 0x0F, 0xA2], // xor eax, eax; cpuid
            Kind::Out => &[0xE6, LOOP_PORT as u8], // out 0x80, al
        }
    }

    /// Guest instructions per iteration that do not exit (`dec edi; jnz` and the rest).
    pub fn non_exiting(self) -> u32 {
        match self {
            Kind::Bracket => 0,
            Kind::Calibration => 4,
            Kind::Cpuid => 3,
            Kind::Out => 2,
        }
    }

    fn from_port(port: u16) -> Option<Kind> {
        KINDS
            .into_iter()
            .find(|k| port.checked_sub(REPORT_BASE) == Some(*k as u16))
    }
}

const RDTSC: [u8; 2] = [0x0F, 0x31];
const MOV_ESI_EAX: [u8; 3] = [0x66, 0x89, 0xC6];
const SUB_EAX_ESI: [u8; 3] = [0x66, 0x29, 0xF0];
const DEC_EDI: [u8; 2] = [0x66, 0x4F];

/// The guest: `batches` rounds of the bracket and the three loops of `iterations` each, every
/// delta reported with `out REPORT_BASE + kind, eax`, then HLT (16-bit real-mode code).
pub fn guest_code(batches: u16, iterations: u32) -> Vec<u8> {
    let mut c = vec![0xBD]; // mov bp, batches
    c.extend(batches.to_le_bytes());
    let outer = c.len();
    for kind in KINDS {
        if kind != Kind::Bracket {
            c.extend([0x66, 0xBF]); // mov edi, iterations
            c.extend(iterations.to_le_bytes());
        }
        c.extend(RDTSC);
        c.extend(MOV_ESI_EAX);
        if kind != Kind::Bracket {
            let top = c.len();
            c.extend(kind.body());
            c.extend(DEC_EDI);
            // jnz top (rel8 from the end of this 2-byte instruction; the bodies are short).
            let rel = top as isize - (c.len() as isize + 2);
            c.extend([0x75, rel as i8 as u8]);
        }
        c.extend(RDTSC);
        c.extend(SUB_EAX_ESI);
        c.extend([0x66, 0xE7, (REPORT_BASE + kind as u16) as u8]); // out port, eax
    }
    c.push(0x4D); // dec bp
    let rel = outer as isize - (c.len() as isize + 4);
    c.extend([0x0F, 0x85]); // jnz near outer
    c.extend((rel as i16).to_le_bytes());
    c.push(0xF4); // hlt
    c
}

/// The options of a run.
///
/// The defaults keep a batch short against the host's timer tick: Debian's kernel ticks at
/// 250 Hz, which at Bochs's `ips=100000000` is every 400,000 instructions. 20 OUT round trips
/// of ~5,000 are 100,000, so most batches run untouched, and the minimum is exact; 200 per
/// batch (1,000,000) would be hit every time. The bracket subtraction keeps short batches
/// exact (to 1/20 of an instruction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Rounds of the three loops.
    pub batches: u16,
    /// Iterations of each loop per round.
    pub iterations: u32,
    /// Do not require the calibration to measure 4.000 (real VT-x: the TSC counts cycles).
    pub any_tsc: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batches: 100,
            iterations: 20,
            any_tsc: false,
        }
    }
}

/// What one RUN returned, as the collector needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The guest reported a delta.
    Report(Kind, u32),
    /// An OUT of the OUT loop.
    LoopOut,
    /// A host interrupt or a pause: run again.
    Interrupt,
    /// The guest is done.
    Hlt,
}

/// The raw deltas, one per batch and kind (indexed by `Kind as usize`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Samples {
    /// Deltas per kind, in batch order.
    pub deltas: [Vec<u32>; 4],
    /// OUT-loop exits seen.
    pub loop_outs: u64,
    /// Interrupt and pause exits seen.
    pub interrupts: u64,
    /// RUN calls made.
    pub runs: u64,
}

/// Runs the guest to its HLT through `next` (one RUN per call), collecting the reports.
/// Fails on an exit the guest cannot produce, on a missing or extra report, and when the
/// guest does not finish within a generous bound of RUNs.
pub fn collect(
    opts: &Options,
    mut next: impl FnMut() -> Result<Event, String>,
) -> Result<Samples, String> {
    let batches = u64::from(opts.batches);
    let expected_outs = batches * u64::from(opts.iterations);
    // Every report and loop OUT is one RUN; interrupts may add some. Beyond twice that
    // (plus a margin for a slow host's timer) the guest is not doing what it should.
    let limit = 2 * (expected_outs + 4 * batches) + 100_000;
    let mut s = Samples::default();
    loop {
        if s.runs >= limit {
            return Err(format!("no HLT after {} RUNs", s.runs));
        }
        s.runs += 1;
        match next()? {
            Event::Report(kind, delta) => {
                let v = &mut s.deltas[kind as usize];
                if v.len() as u64 >= batches {
                    return Err(format!("more than {batches} reports of {kind:?}"));
                }
                v.push(delta);
            }
            Event::LoopOut => s.loop_outs += 1,
            Event::Interrupt => s.interrupts += 1,
            Event::Hlt => break,
        }
    }
    if let Some(k) = KINDS
        .into_iter()
        .find(|k| s.deltas[*k as usize].len() as u64 != batches)
    {
        return Err(format!(
            "HLT after {} reports of {k:?}, expected {batches}",
            s.deltas[k as usize].len()
        ));
    }
    if s.loop_outs != expected_outs {
        return Err(format!(
            "{} OUT-loop exits, expected {expected_outs}",
            s.loop_outs
        ));
    }
    Ok(s)
}

/// Minimum and median of one kind, per iteration (calibration) or per round trip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    /// The minimum over the batches.
    pub min: f64,
    /// The median over the batches.
    pub median: f64,
}

/// The figures of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Results {
    /// The options of the run.
    pub opts: Options,
    /// The bracket's minimum delta, subtracted from every loop's delta.
    pub bracket: u32,
    /// Per iteration of the calibration loop (must be 4.000).
    pub calibration: Figure,
    /// Per CPUID round trip.
    pub cpuid: Figure,
    /// Per OUT round trip through user space.
    pub out: Figure,
    /// Interrupt and pause exits seen.
    pub interrupts: u64,
    /// RUN calls made.
    pub runs: u64,
}

impl Results {
    /// Whether the calibration loop measured exactly 4 instructions per iteration (its best
    /// batch: an interrupt can only add).
    pub fn calibrated(&self) -> bool {
        self.calibration.min == f64::from(Kind::Calibration.non_exiting())
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The figures from the raw deltas (`collect` guarantees `batches` of each, at least one).
pub fn analyse(opts: &Options, s: &Samples) -> Results {
    let bracket = s.deltas[Kind::Bracket as usize]
        .iter()
        .copied()
        .min()
        .unwrap_or(0);
    let n = f64::from(opts.iterations.max(1));
    let figure = |kind: Kind, per_trip: bool| {
        let mut v: Vec<f64> = s.deltas[kind as usize]
            .iter()
            .map(|d| {
                let per_iter = f64::from(d.saturating_sub(bracket)) / n;
                if per_trip {
                    per_iter - f64::from(kind.non_exiting())
                } else {
                    per_iter
                }
            })
            .collect();
        v.sort_by(f64::total_cmp);
        Figure {
            min: v.first().copied().unwrap_or(0.0),
            median: median(&v),
        }
    };
    Results {
        opts: *opts,
        bracket,
        calibration: figure(Kind::Calibration, false),
        cpuid: figure(Kind::Cpuid, true),
        out: figure(Kind::Out, true),
        interrupts: s.interrupts,
        runs: s.runs,
    }
}

impl core::fmt::Display for Results {
    /// The `bench:` lines (`cargo xtask linux` reads them: NAME MIN ... median MED).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.opts.batches;
        writeln!(
            f,
            "bench: calibration {:.3} per iteration (min of {b}, median {:.3}): 4 guest \
             instructions, no exit; must be 4.000",
            self.calibration.min, self.calibration.median
        )?;
        writeln!(
            f,
            "bench: cpuid {:.1} per round trip (min of {b}, median {:.1}): handled in the \
             kernel; per iteration minus 3 guest instructions",
            self.cpuid.min, self.cpuid.median
        )?;
        writeln!(
            f,
            "bench: out {:.1} per round trip (min of {b}, median {:.1}): served in user space \
             (RUN again); per iteration minus 2 guest instructions",
            self.out.min, self.out.median
        )?;
        write!(
            f,
            "bench: bracket {} (RDTSC pair around no loop, min of {b}; subtracted), {} \
             iterations per batch, {} RUNs, {} interrupt exits",
            self.bracket, self.opts.iterations, self.runs, self.interrupts
        )
    }
}

/// The decoded exit, or why it is not one the guest produces.
fn event(exit: Exit<'_>) -> Result<Event, String> {
    match exit {
        Exit::Io {
            direction: IoDirection::Out,
            port: LOOP_PORT,
            string: false,
            ..
        } => Ok(Event::LoopOut),
        Exit::Io {
            direction: IoDirection::Out,
            size: 4,
            count: 1,
            port,
            string: false,
            data,
            ..
        } => match (Kind::from_port(port), <[u8; 4]>::try_from(&data[..])) {
            (Some(k), Ok(d)) => Ok(Event::Report(k, u32::from_le_bytes(d))),
            _ => Err(format!("unexpected OUT to port {port:#x}")),
        },
        Exit::Interrupt | Exit::Paused => Ok(Event::Interrupt),
        Exit::Hlt => Ok(Event::Hlt),
        other => Err(format!("unexpected exit {other:?}")),
    }
}

/// rhax's own counters per exit (`RHAX_VCPU_IOCTL_GET_STATS`), absent on HAXM.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreCounters {
    /// `(name, exits, VMREAD, VMWRITE, other VMX, TSC exit-to-entry)` per exit, for CPUID and IO.
    pub per_exit: Vec<(&'static str, u64, f64, f64, f64, f64)>,
}

impl core::fmt::Display for CoreCounters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (name, exits, r, w, o, c) in &self.per_exit {
            writeln!(
                f,
                "bench: rhax-core per {name} exit ({exits} exits): {r:.2} VMREAD, {w:.2} \
                 VMWRITE, {o:.2} other VMX, {c:.1} TSC from exit to the next entry"
            )?;
        }
        Ok(())
    }
}

/// What [`run`] returns: the figures, rhax's counters (absent on HAXM) and the OUT split, or
/// why it failed.
pub type Outcome = Result<(Results, Option<CoreCounters>, split::Split), String>;

/// Creates the VM, runs the guest and returns the figures and rhax's counters.
pub fn run<T: Transport>(transport: T, opts: &Options) -> Outcome {
    let sys = System::open(transport).map_err(|e| format!("open: {e}"))?;
    sys.working_capability()
        .map_err(|e| format!("CAPABILITY: {e}"))?;
    let vm = sys.create_vm().map_err(|e| format!("CREATE_VM: {e}"))?;
    let ram = guest_ram(&[
        (CODE_GPA, guest_code(opts.batches, opts.iterations)),
        (split::CODE_GPA, split::guest_code()),
    ])?;
    // SAFETY: `ram` is a leaked, page-aligned allocation no Rust object lives in; it stays
    // allocated for the life of the process, so for the VM's.
    unsafe { vm.add_ramblock(ram, RAM_BYTES as u64) }.map_err(|e| format!("ADD_RAMBLOCK: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("VCPU_CREATE: {e}"))?;
    vm.set_ram(0, RAM_BYTES as u32, ram, RamFlags::empty())
        .map_err(|e| format!("SET_RAM: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("GET_REGS: {e}"))?;
    regs.cs.selector = 0;
    regs.cs.base = 0;
    regs.rip = CODE_GPA;
    vcpu.set_regs(&regs).map_err(|e| format!("SET_REGS: {e}"))?;
    // HAXM has no counters: then only the RDTSC figures are printed.
    let counted = vcpu.reset_stats().is_ok();
    let samples = collect(opts, || {
        let exit = vcpu.run().map_err(|e| format!("RUN: {e}"))?;
        event(exit)
    })?;
    let counters = if counted {
        let s = vcpu.stats().map_err(|e| format!("GET_STATS: {e}"))?;
        let per_exit = [("CPUID", 10u32), ("IO", 30)]
            .into_iter()
            .filter_map(|(name, reason)| {
                let r = s.reason(reason)?;
                let per = |v: u64| v as f64 / r.exits.max(1) as f64;
                Some((
                    name,
                    r.exits,
                    per(r.vmreads),
                    per(r.vmwrites),
                    per(r.vmx_other),
                    per(r.cycles),
                ))
            })
            .collect();
        Some(CoreCounters { per_exit })
    } else {
        None
    };
    // After the figures (its clock reads would touch them) and the counters (it resets them).
    let split = split::measure(&sys, &mut vcpu, ram)?;
    Ok((analyse(opts, &samples), counters, split))
}

/// [`RAM_BYTES`] of page-aligned, zeroed memory holding each `(gpa, code)`, leaked (a VM's
/// RAM must outlive it and HAXM has no way to unregister a block).
fn guest_ram(blocks: &[(u64, Vec<u8>)]) -> Result<u64, String> {
    if let Some((gpa, code)) = blocks
        .iter()
        .find(|(gpa, code)| *gpa as usize + code.len() > RAM_BYTES)
    {
        return Err(format!(
            "{} bytes of guest code at {gpa:#x} do not fit",
            code.len()
        ));
    }
    let layout = std::alloc::Layout::from_size_align(RAM_BYTES, 4096).map_err(|e| e.to_string())?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(format!("cannot allocate {RAM_BYTES} bytes of guest RAM"));
    }
    for (gpa, code) in blocks {
        // SAFETY: gpa + code.len() bytes lie inside the allocation (checked above).
        let at = unsafe { p.add(*gpa as usize) };
        // SAFETY: `at` points to code.len() writable bytes of that allocation, which nothing
        // else references yet.
        let dst = unsafe { core::slice::from_raw_parts_mut(at, code.len()) };
        dst.copy_from_slice(code);
    }
    Ok(p as u64)
}

#[cfg(test)]
mod tests;
