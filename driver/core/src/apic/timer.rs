//! The APIC timer (SDM Vol. 3A §11.5.4): one-shot, periodic and TSC-deadline modes, the
//! divide configuration, the current count derived from the TSC.
//!
//! Time is the guest TSC. One bus tick is `tsc_per_bus_tick` TSC ticks; the counter
//! decrements once every `divisor` bus ticks. The counter is kept as "it held
//! `start_count` at TSC `start`", so the current count, the next expiry and a change of the
//! divide configuration while counting all follow without a periodic update. All arithmetic
//! saturates: a huge count or divisor only pushes the expiry to the end of time.

use super::local::{LocalApic, LVT_MASKED, LVT_TIMER, TIMER_DIVIDE, TIMER_INITIAL};
use super::Effect;

/// The timer mode, LVT timer bits 18:17 (§11.5.4.1, Table 11-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// 00: count down once from the initial count. The reserved value 11 behaves like this.
    OneShot,
    /// 01: reload the initial count at every expiry.
    Periodic,
    /// 10: fire when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
}

impl TimerMode {
    /// The mode of an LVT timer value.
    pub const fn of_lvt(lvt: u32) -> Self {
        match (lvt >> 17) & 3 {
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::OneShot,
        }
    }
}

/// The divisor of a divide configuration register value (§11.5.4, Figure 11-10): bits
/// 3,1:0 = 000 -> 2, 001 -> 4, 010 -> 8, 011 -> 16, 100 -> 32, 101 -> 64, 110 -> 128,
/// 111 -> 1.
pub const fn divisor(divide_config: u32) -> u32 {
    let code = (divide_config & 3) | ((divide_config >> 1) & 4);
    1 << ((code + 1) & 7)
}

/// The counting state of the one-shot/periodic timer and IA32_TSC_DEADLINE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct TimerState {
    /// One-shot or periodic counting is in progress.
    pub(super) armed: bool,
    /// The TSC at which the counter held `start_count`.
    pub(super) start: u64,
    /// The counter's value at `start` (nonzero while armed).
    pub(super) start_count: u32,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    pub(super) tsc_deadline: u64,
}

impl LocalApic {
    /// The timer mode of the LVT timer register.
    pub fn timer_mode(&self) -> TimerMode {
        TimerMode::of_lvt(self.reg(LVT_TIMER))
    }

    /// TSC ticks per counter decrement.
    fn tick_len(&self) -> u64 {
        (self.tsc_per_bus_tick as u64).saturating_mul(divisor(self.reg(TIMER_DIVIDE)) as u64)
    }

    /// The current-count register (§11.5.4): 0 in TSC-deadline mode and when not counting;
    /// a periodic timer past its expiry shows the reloaded count.
    pub(super) fn current_count(&self, now: u64) -> u32 {
        let t = &self.timer;
        if self.timer_mode() == TimerMode::TscDeadline || !t.armed {
            return 0;
        }
        let elapsed = now.saturating_sub(t.start) / self.tick_len().max(1);
        if elapsed < t.start_count as u64 {
            return t.start_count - elapsed as u32;
        }
        let initial = self.reg(TIMER_INITIAL);
        if self.timer_mode() == TimerMode::OneShot || initial == 0 {
            return 0;
        }
        let over = elapsed - t.start_count as u64;
        initial - (over % initial as u64) as u32
    }

    /// A write to the initial-count register: starts counting from `value` (0 stops the
    /// timer); ignored in TSC-deadline mode (§11.5.4.1).
    pub(super) fn write_initial_count(&mut self, value: u32, now: u64) -> Effect {
        if self.timer_mode() == TimerMode::TscDeadline {
            return Effect::None;
        }
        self.set(TIMER_INITIAL, value);
        self.timer.armed = value != 0;
        self.timer.start = now;
        self.timer.start_count = value;
        Effect::TimerChanged
    }

    /// A write to the divide configuration (bits 0, 1, 3): a counting timer continues from
    /// its current count at the new rate.
    pub(super) fn write_divide(&mut self, value: u32, now: u64) -> Effect {
        let current = self.current_count(now);
        self.set(TIMER_DIVIDE, value & 0xb);
        if !self.timer.armed || self.timer_mode() == TimerMode::TscDeadline {
            return Effect::None;
        }
        if current == 0 {
            // A one-shot timer that expired but has not fired yet: keep its expiry.
            return Effect::None;
        }
        self.timer.start = now;
        self.timer.start_count = current;
        Effect::TimerChanged
    }

    /// A write to the LVT timer register (stored bits already masked): a change of mode
    /// disarms the timer (§11.5.4.1); entering or leaving TSC-deadline mode also clears the
    /// initial count and IA32_TSC_DEADLINE, as no count or deadline carries over.
    pub(super) fn write_lvt_timer(&mut self, value: u32) -> Effect {
        let old = self.timer_mode();
        self.set(LVT_TIMER, value);
        let new = self.timer_mode();
        if old == new {
            return Effect::None;
        }
        self.timer.armed = false;
        self.timer.tsc_deadline = 0;
        if old == TimerMode::TscDeadline || new == TimerMode::TscDeadline {
            self.set(TIMER_INITIAL, 0);
        }
        Effect::TimerChanged
    }

    /// The TSC value of the next expiry, if the timer is armed (it may already be past).
    pub fn timer_deadline(&self) -> Option<u64> {
        if self.timer_mode() == TimerMode::TscDeadline {
            return (self.timer.tsc_deadline != 0).then_some(self.timer.tsc_deadline);
        }
        if !self.timer.armed {
            return None;
        }
        let len = self
            .tick_len()
            .saturating_mul(self.timer.start_count as u64);
        Some(self.timer.start.saturating_add(len))
    }

    /// RDMSR IA32_TSC_DEADLINE (0x6e0): the armed deadline; 0 outside TSC-deadline mode
    /// (§11.5.4.1).
    pub fn read_tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.timer.tsc_deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: arms (nonzero) or disarms (0) the timer in TSC-deadline mode;
    /// ignored in the other modes (§11.5.4.1). A deadline at or before `now` is due at once:
    /// the caller's next [`LocalApic::timer_fire`] delivers it.
    pub fn write_tsc_deadline(&mut self, value: u64, now: u64) -> Effect {
        let _ = now;
        if self.timer_mode() != TimerMode::TscDeadline {
            return Effect::None;
        }
        self.timer.tsc_deadline = value;
        Effect::TimerChanged
    }

    /// Fires the timer if it is due at `now`: the LVT timer vector into the IRR unless the
    /// entry is masked (an illegal vector raises the receive-illegal-vector error instead);
    /// a one-shot timer stops, a TSC-deadline timer clears IA32_TSC_DEADLINE, a periodic
    /// timer reloads (periods missed entirely are coalesced into this one interrupt). True
    /// when a vector became newly pending.
    pub fn timer_fire(&mut self, now: u64) -> bool {
        let Some(deadline) = self.timer_deadline() else {
            return false;
        };
        if now < deadline {
            return false;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => self.timer.tsc_deadline = 0,
            TimerMode::OneShot => self.timer.armed = false,
            TimerMode::Periodic => {
                let initial = self.reg(TIMER_INITIAL);
                let period = self.tick_len().saturating_mul(initial as u64).max(1);
                let missed = (now - deadline) / period;
                self.timer.start = deadline.saturating_add(missed.saturating_mul(period));
                self.timer.start_count = initial;
                self.timer.armed = initial != 0;
            }
        }
        let lvt = self.reg(LVT_TIMER);
        if lvt & LVT_MASKED != 0 {
            return false;
        }
        let vector = lvt as u8;
        if vector < 16 {
            return self.raise_error(super::local::ESR_RECEIVE_ILLEGAL_VECTOR);
        }
        self.request(vector, false)
    }
}
