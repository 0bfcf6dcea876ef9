//! [`Monitor`]: samples a set of vCPUs, keeps the previous sample of each, and gives the
//! interval deltas (summed over the vCPUs) and the exits-per-second timeline the live view and
//! the SVG show.

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use rhax_api::ext::VcpuStats;

use crate::sample::{accumulate, accumulate_delta};
use crate::source::StatsSource;

/// Timeline points kept (one per sample: an hour at one sample a second).
pub const HISTORY: usize = 3600;

/// One sample of every vCPU. The records are boxed (3312 bytes each): a sampler may run on a
/// small kernel stack (the bare-metal kernel's).
#[derive(Clone, Debug)]
pub struct Tick {
    /// Counters since reset, summed over the vCPUs that answered.
    pub total: Box<VcpuStats>,
    /// Counters of the interval since the previous tick, summed (the first tick: since reset).
    pub interval: Box<VcpuStats>,
    /// The interval's length in milliseconds, as the caller measured it.
    pub interval_ms: u64,
    /// vCPUs that were inside RUN and did not answer; their last answer is used.
    pub busy: usize,
    /// Errors other than "busy", one line each (`vm V vcpu C: error`).
    pub errors: Vec<String>,
}

/// Samples a set of vCPUs.
pub struct Monitor<S: StatsSource> {
    sources: Vec<S>,
    prev: Vec<Option<VcpuStats>>,
    history: Vec<u64>,
}

impl<S: StatsSource> Monitor<S> {
    /// Watches `sources`.
    pub fn new(sources: Vec<S>) -> Self {
        let prev = sources.iter().map(|_| None).collect();
        Self {
            sources,
            prev,
            history: Vec::new(),
        }
    }

    /// The vCPUs watched.
    pub fn sources(&self) -> &[S] {
        &self.sources
    }

    /// Exits per second of each tick that had an interval, oldest first.
    pub fn history(&self) -> &[u64] {
        &self.history
    }

    /// Resets every vCPU's counters; the next tick starts from zero. Returns the errors.
    pub fn reset(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for (s, p) in self.sources.iter().zip(self.prev.iter_mut()) {
            match s.reset() {
                Ok(()) => *p = None,
                Err(e) => errors.push(describe(s, &e)),
            }
        }
        errors
    }

    /// Samples every vCPU. `elapsed_ms` is the time since the previous tick (`None` for the
    /// first one, or for `--once`: then no rate is recorded).
    pub fn tick(&mut self, elapsed_ms: Option<u64>) -> Tick {
        let mut total = Box::new(VcpuStats::new());
        let mut interval = Box::new(VcpuStats::new());
        let mut busy = 0;
        let mut errors = Vec::new();
        for (s, p) in self.sources.iter().zip(self.prev.iter_mut()) {
            let now = match s.stats() {
                Ok(now) => now,
                Err(e) if S::is_busy(&e) => {
                    busy += 1;
                    // The counters of a busy vCPU show up in the next interval that reaches it.
                    if let Some(prev) = p {
                        accumulate(&mut total, prev);
                    }
                    continue;
                }
                Err(e) => {
                    errors.push(describe(s, &e));
                    continue;
                }
            };
            accumulate_delta(&mut interval, &now, p.as_ref());
            accumulate(&mut total, &now);
            *p = Some(now);
        }
        let interval_ms = elapsed_ms.unwrap_or(0);
        if let Some(ms) = elapsed_ms.filter(|ms| *ms > 0) {
            let rate = crate::fixed::PerSecond {
                count: interval.total.exits,
                ms,
            };
            if self.history.len() >= HISTORY {
                self.history.remove(0);
            }
            self.history.push(rate.value().unwrap_or(0));
        }
        Tick {
            total,
            interval,
            interval_ms,
            busy,
            errors,
        }
    }
}

fn describe<S: StatsSource>(s: &S, e: &S::Error) -> String {
    let (vm, vcpu) = s.ids();
    let mut line = String::new();
    let _ = write!(line, "vm {vm} vcpu {vcpu}: {e}");
    line
}
