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

/// The active per-reason rows of a record, in `order`, without allocating and with a small
/// footprint (reason numbers only, 80 bytes: the bare-metal kernel's stack is 64 KiB and a
/// driver's frames stay under 2 KiB).
pub struct Rows<'a> {
    stats: &'a VcpuStats,
    reasons: [u8; RHAX_EXIT_REASONS],
    len: usize,
}

impl<'a> Rows<'a> {
    /// The active rows of `s`.
    pub fn of(s: &'a VcpuStats, order: Order) -> Self {
        let mut rows = Rows {
            stats: s,
            reasons: [0; RHAX_EXIT_REASONS],
            len: 0,
        };
        for (reason, c) in (0u8..).zip(s.per_reason.iter()) {
            if is_active(c) {
                if let Some(slot) = rows.reasons.get_mut(rows.len) {
                    *slot = reason;
                    rows.len += 1;
                }
            }
        }
        if order == Order::Exits {
            let exits = |r: u8| s.per_reason.get(usize::from(r)).map_or(0, |c| c.exits);
            if let Some(active) = rows.reasons.get_mut(..rows.len) {
                // Most exits first, ties by reason number.
                insertion_sort(active, |a, b| {
                    exits(*a) > exits(*b) || (exits(*a) == exits(*b) && a < b)
                });
            }
        }
        rows
    }

    /// `(label, counters)` of each row.
    pub fn iter(&self) -> impl Iterator<Item = (Label, &'a ExitReasonStats)> + '_ {
        let stats = self.stats;
        self.reasons
            .get(..self.len)
            .unwrap_or_default()
            .iter()
            .filter_map(move |r| {
                let c = stats.per_reason.get(usize::from(*r))?;
                Some((Label::Reason(u16::from(*r)), c))
            })
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

/// `into += now - before` (see [`delta`]), without a temporary record.
pub fn accumulate_delta(into: &mut VcpuStats, now: &VcpuStats, before: Option<&VcpuStats>) {
    let before = match before {
        // A reset in between: the interval counts from zero.
        Some(b) if now.total.exits >= b.total.exits && now.runs >= b.runs => b,
        _ => return accumulate(into, now),
    };
    into.runs = into.runs.wrapping_add(now.runs.wrapping_sub(before.runs));
    into.user_exits = into
        .user_exits
        .wrapping_add(now.user_exits.wrapping_sub(before.user_exits));
    into.total = into
        .total
        .wrapping_add(now.total.wrapping_sub(before.total));
    into.outside_exits = into
        .outside_exits
        .wrapping_add(now.outside_exits.wrapping_sub(before.outside_exits));
    for ((i, n), b) in into
        .per_reason
        .iter_mut()
        .zip(now.per_reason.iter())
        .zip(before.per_reason.iter())
    {
        *i = i.wrapping_add(n.wrapping_sub(*b));
    }
}

/// VMX instructions of every kind (VMREAD + VMWRITE + others) of a row.
pub fn vmx_instructions(c: &ExitReasonStats) -> u64 {
    c.vmreads
        .saturating_add(c.vmwrites)
        .saturating_add(c.vmx_other)
}

/// Sorts `v` so that `before(a, b)` holds for every earlier `a` and later `b` it orders.
/// Insertion sort: at most 160 elements here, and no recursion (the standard library's sorts
/// recurse, which kernel code built from this crate must not; `cargo xtask stack`).
pub fn insertion_sort<T: Copy>(v: &mut [T], before: impl Fn(&T, &T) -> bool) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 {
            let (Some(&prev), Some(&cur)) = (v.get(j - 1), v.get(j)) else {
                break;
            };
            if !before(&cur, &prev) {
                break;
            }
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}
