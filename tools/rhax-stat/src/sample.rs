//! Arithmetic on [`VcpuStats`] records: interval deltas, sums over vCPUs, and the rows a view
//! shows.

use rhax_api::ext::{ExitReasonStats, VcpuStats, RHAX_EXIT_REASONS};

use crate::reasons::Label;

/// `now - before`, counter by counter (wrapping: the driver's counters wrap at 2^64). A reset
/// between the two samples makes a counter go down; such an interval is reported from zero
/// (the new value) rather than as a huge wrapped delta.
pub fn delta(now: &VcpuStats, before: &VcpuStats) -> VcpuStats {
    let reset = now.total.exits < before.total.exits || now.runs < before.runs;
    if reset {
        return *now;
    }
    let mut d = *now;
    d.runs = now.runs.wrapping_sub(before.runs);
    d.user_exits = now.user_exits.wrapping_sub(before.user_exits);
    d.total = now.total.wrapping_sub(before.total);
    d.outside_exits = now.outside_exits.wrapping_sub(before.outside_exits);
    for (d, b) in d.per_reason.iter_mut().zip(before.per_reason.iter()) {
        *d = d.wrapping_sub(*b);
    }
    d
}

/// `into += add`, counter by counter (the view of several vCPUs together).
pub fn accumulate(into: &mut VcpuStats, add: &VcpuStats) {
    into.runs = into.runs.wrapping_add(add.runs);
    into.user_exits = into.user_exits.wrapping_add(add.user_exits);
    into.total = into.total.wrapping_add(add.total);
    into.outside_exits = into.outside_exits.wrapping_add(add.outside_exits);
    for (i, a) in into.per_reason.iter_mut().zip(add.per_reason.iter()) {
        *i = i.wrapping_add(*a);
    }
}

/// Whether a row has anything to show.
pub fn is_active(c: &ExitReasonStats) -> bool {
    c.exits != 0 || c.vmreads != 0 || c.vmwrites != 0 || c.vmx_other != 0
}

/// How the rows of a view are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By exit reason number (stable output for diffs and files).
    Reason,
    /// Most exits first (the live view, as `top`).
    Exits,
}

/// The active per-reason rows of a record, in `order`, without allocating: at most
/// [`RHAX_EXIT_REASONS`] rows, in a fixed array.
pub struct Rows {
    rows: [(u16, ExitReasonStats); RHAX_EXIT_REASONS],
    len: usize,
}

impl Rows {
    /// The active rows of `s`.
    pub fn of(s: &VcpuStats, order: Order) -> Self {
        let zero = ExitReasonStats {
            exits: 0,
            vmreads: 0,
            vmwrites: 0,
            vmx_other: 0,
            cycles: 0,
        };
        let mut rows = Rows {
            rows: [(0, zero); RHAX_EXIT_REASONS],
            len: 0,
        };
        for (reason, c) in (0u16..).zip(s.per_reason.iter()) {
            if is_active(c) {
                if let Some(slot) = rows.rows.get_mut(rows.len) {
                    *slot = (reason, *c);
                    rows.len += 1;
                }
            }
        }
        if order == Order::Exits {
            if let Some(active) = rows.rows.get_mut(..rows.len) {
                active.sort_unstable_by(|a, b| b.1.exits.cmp(&a.1.exits).then(a.0.cmp(&b.0)));
            }
        }
        rows
    }

    /// `(label, counters)` of each row.
    pub fn iter(&self) -> impl Iterator<Item = (Label, &ExitReasonStats)> {
        self.rows
            .get(..self.len)
            .unwrap_or_default()
            .iter()
            .map(|(r, c)| (Label::Reason(*r), c))
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no reason is active.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// VMX instructions of every kind (VMREAD + VMWRITE + others) of a row.
pub fn vmx_instructions(c: &ExitReasonStats) -> u64 {
    c.vmreads
        .saturating_add(c.vmwrites)
        .saturating_add(c.vmx_other)
}
