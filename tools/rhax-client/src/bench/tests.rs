//! The guest code run by a small interpreter of exactly its instructions (16-bit real mode,
//! decoded from the bytes by the SDM's encodings), with a TSC that advances one per retired
//! instruction as Bochs's does and a chosen host cost per exit: the whole chain (code,
//! reports, collection, analysis) must give back those costs.

use super::*;

/// A guest CPU executing [`guest_code`]: the subset of real-mode x86 it uses.
struct Cpu {
    code: Vec<u8>,
    ip: usize,
    eax: u32,
    esi: u32,
    edi: u32,
    bp: u16,
    zf: bool,
    tsc: u64,
    /// Host instructions per CPUID exit (handled in the "kernel": no event).
    cpuid_cost: u64,
    /// Host instructions per OUT exit (an event: a RUN from user space).
    out_cost: u64,
    /// Every this many instructions a host timer interrupt costs `tick_cost`.
    tick_every: u64,
    tick_cost: u64,
    retired: u64,
    tick_pending: bool,
}

impl Cpu {
    fn new(code: Vec<u8>, cpuid_cost: u64, out_cost: u64, tick_every: u64) -> Self {
        Cpu {
            code,
            ip: 0,
            eax: 0,
            esi: 0,
            edi: 0,
            bp: 0,
            zf: false,
            tsc: 1_000_000,
            cpuid_cost,
            out_cost,
            tick_every,
            tick_cost: 30_000,
            retired: 0,
            tick_pending: false,
        }
    }

    /// The byte at `at`; past the end 0 (the decoder peeks 3 bytes at the final HLT).
    fn b(&self, at: usize) -> u8 {
        self.code.get(at).copied().unwrap_or(0)
    }

    fn imm32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.code[at..at + 4].try_into().unwrap())
    }

    fn retire(&mut self) {
        self.retired += 1;
        self.advance(1);
    }

    /// `n` instructions pass (guest or host); a tick falls due every `tick_every` of them.
    fn advance(&mut self, n: u64) {
        let before = self.tsc;
        self.tsc += n;
        if self.tick_every != 0 && before / self.tick_every != self.tsc / self.tick_every {
            self.tsc += self.tick_cost;
            self.tick_pending = true;
        }
    }

    /// Runs to the next event (one RUN).
    fn next(&mut self) -> Result<Event, String> {
        loop {
            if core::mem::take(&mut self.tick_pending) {
                return Ok(Event::Interrupt);
            }
            let ip = self.ip;
            let (len, event) = match (self.b(ip), self.b(ip + 1), self.b(ip + 2)) {
                (0xBD, ..) => {
                    self.bp = u16::from_le_bytes([self.b(ip + 1), self.b(ip + 2)]);
                    (3, None)
                }
                (0x66, 0xBF, _) => {
                    self.edi = self.imm32(ip + 2);
                    (6, None)
                }
                (0x0F, 0x31, _) => {
                    self.eax = self.tsc as u32;
                    (2, None)
                }
                (0x66, 0x89, 0xC6) => {
                    self.esi = self.eax;
                    (3, None)
                }
                (0x66, 0x29, 0xF0) => {
                    self.eax = self.eax.wrapping_sub(self.esi);
                    (3, None)
                }
                (0x90, ..) => (1, None),
                (0x66, 0x31, 0xC0) => {
                    self.eax = 0;
                    (3, None)
                }
                (0x66, 0x4F, _) => {
                    self.edi = self.edi.wrapping_sub(1);
                    self.zf = self.edi == 0;
                    (2, None)
                }
                (0x4D, ..) => {
                    self.bp = self.bp.wrapping_sub(1);
                    self.zf = self.bp == 0;
                    (1, None)
                }
                (0x75, rel, _) => {
                    let next = ip + 2;
                    self.retire();
                    self.ip = if self.zf {
                        next
                    } else {
                        (next as isize + isize::from(rel as i8)) as usize
                    };
                    continue;
                }
                (0x0F, 0x85, _) => {
                    let rel = i16::from_le_bytes([self.b(ip + 2), self.b(ip + 3)]);
                    let next = ip + 4;
                    self.retire();
                    self.ip = if self.zf {
                        next
                    } else {
                        (next as isize + isize::from(rel)) as usize
                    };
                    continue;
                }
                // Exiting instructions do not retire in the guest (the exit happens instead);
                // their whole cost is the host's.
                (0x0F, 0xA2, _) => {
                    self.advance(self.cpuid_cost);
                    self.ip += 2;
                    continue;
                }
                (0xE6, port, _) if u16::from(port) == LOOP_PORT => {
                    self.advance(self.out_cost);
                    (2, Some(Event::LoopOut))
                }
                (0x66, 0xE7, port) => {
                    let kind = Kind::from_port(u16::from(port)).ok_or("bad report port")?;
                    (3, Some(Event::Report(kind, self.eax)))
                }
                (0xF4, ..) => (1, Some(Event::Hlt)),
                other => return Err(format!("undecodable {other:x?} at {ip}")),
            };
            self.ip += len;
            match event {
                Some(e) => return Ok(e),
                None => self.retire(),
            }
        }
    }
}

fn simulate(opts: &Options, cpuid_cost: u64, out_cost: u64, tick_every: u64) -> Results {
    let mut cpu = Cpu::new(
        guest_code(opts.batches, opts.iterations),
        cpuid_cost,
        out_cost,
        tick_every,
    );
    let s = collect(opts, || cpu.next()).expect("collect");
    analyse(opts, &s)
}

#[test]
fn the_chain_gives_back_the_host_costs() {
    let opts = Options::default();
    let r = simulate(&opts, 1054, 7251, 0);
    assert!(r.calibrated(), "{r}");
    assert_eq!(r.calibration.min, 4.0);
    assert_eq!((r.cpuid.min, r.cpuid.median), (1054.0, 1054.0));
    assert_eq!((r.out.min, r.out.median), (7251.0, 7251.0));
    assert_eq!(r.interrupts, 0);
    // 20 OUT exits and 4 reports per batch, and the HLT.
    assert_eq!(r.runs, 100 * 24 + 1);
}

#[test]
fn timer_ticks_inflate_some_batches_and_the_minimum_ignores_them() {
    let opts = Options::default();
    // A tick every 300k instructions: several batches are hit.
    let r = simulate(&opts, 1054, 5778, 300_000);
    assert!(r.interrupts > 20, "{}", r.interrupts);
    assert!(r.calibrated(), "{r}");
    assert_eq!(r.cpuid.min, 1054.0);
    assert_eq!(r.out.min, 5778.0);
    assert!(r.out.median >= r.out.min);
    let text = r.to_string();
    assert!(
        text.contains("bench: cpuid 1054.0 per round trip (min of 100, median"),
        "{text}"
    );
    assert!(
        text.contains("bench: calibration 4.000 per iteration"),
        "{text}"
    );
}

#[test]
fn a_miscounting_tsc_fails_the_calibration() {
    let opts = Options {
        batches: 3,
        iterations: 10,
        any_tsc: false,
    };
    let mut s = Samples {
        loop_outs: 30,
        ..Samples::default()
    };
    s.deltas = [vec![2; 3], vec![43; 3], vec![2000; 3], vec![3000; 3]];
    let r = analyse(&opts, &s);
    // (43 - 2) / 10 = 4.1: one instruction too many per batch.
    assert!(!r.calibrated());
    assert!((r.calibration.min - 4.1).abs() < 1e-9);
    s.deltas[1] = vec![42, 90, 42];
    let r = analyse(&opts, &s);
    assert!(r.calibrated());
    assert_eq!(r.calibration.median, 4.0);
    assert_eq!(r.cpuid.min, 199.8 - 3.0);
}

#[test]
fn collect_refuses_a_guest_that_misreports() {
    let opts = Options {
        batches: 2,
        iterations: 1,
        any_tsc: false,
    };
    let script = |events: Vec<Event>| {
        let mut it = events.into_iter();
        collect(&opts, move || {
            it.next().ok_or_else(|| "script ended".to_string())
        })
    };
    let round = |v: &mut Vec<Event>| {
        for k in KINDS {
            if k == Kind::Out {
                v.push(Event::LoopOut);
            }
            v.push(Event::Report(k, 10));
        }
    };
    let mut ok = Vec::new();
    round(&mut ok);
    ok.push(Event::Interrupt);
    round(&mut ok);
    ok.push(Event::Hlt);
    let s = script(ok.clone()).expect("two full rounds");
    assert_eq!((s.loop_outs, s.interrupts, s.runs), (2, 1, 12));
    // One round only: a missing report.
    let mut short = Vec::new();
    round(&mut short);
    short.push(Event::Hlt);
    assert!(script(short).unwrap_err().contains("expected 2"));
    // A third report of a kind.
    let mut extra = ok.clone();
    extra.insert(0, Event::Report(Kind::Cpuid, 1));
    assert!(script(extra).unwrap_err().contains("more than 2"));
    // An extra loop OUT.
    let mut outs = ok.clone();
    outs.insert(0, Event::LoopOut);
    assert!(script(outs).unwrap_err().contains("OUT-loop exits"));
    // No HLT ever: bounded.
    let r = collect(&opts, || Ok(Event::Interrupt));
    assert!(r.unwrap_err().contains("no HLT"));
}

#[test]
fn exits_decode_to_events() {
    let mut d = 1234u32.to_le_bytes();
    let io = |port: u16, size: u8, data: &mut [u8]| {
        event(Exit::Io {
            direction: IoDirection::Out,
            size,
            count: 1,
            port,
            df: false,
            string: false,
            data,
        })
    };
    assert_eq!(
        io(REPORT_BASE + 2, 4, &mut d),
        Ok(Event::Report(Kind::Cpuid, 1234))
    );
    assert_eq!(io(LOOP_PORT, 1, &mut [0]), Ok(Event::LoopOut));
    assert!(io(0x3f8, 1, &mut [0]).is_err());
    // A report port with one byte is not a report.
    assert!(io(REPORT_BASE, 1, &mut [0]).is_err());
    assert_eq!(event(Exit::Hlt), Ok(Event::Hlt));
    assert_eq!(event(Exit::Interrupt), Ok(Event::Interrupt));
    assert!(event(Exit::StateChange).is_err());
}
