//! Text renderings of a [`VcpuStats`] record: the `top`-like table, CSV and JSON. All write to
//! a [`core::fmt::Write`], so the bare-metal kernel prints the same table as the tool.

use core::fmt::{self, Write};

use rhax_api::ext::{ExitReasonStats, FieldStats, VcpuStats};

use crate::fixed::{PerSecond, Ratio};
use crate::reasons::{name, Label};
use crate::sample::{is_active, Order, Rows};

/// Which vCPUs a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One vCPU.
    Vcpu {
        /// VM id.
        vm: u32,
        /// vCPU id.
        vcpu: u32,
    },
    /// Every vCPU of one VM, summed.
    Vm(u32),
    /// Every vCPU found, summed.
    All,
}

impl Scope {
    fn ids(self) -> (Option<u32>, Option<u32>) {
        match self {
            Scope::Vcpu { vm, vcpu } => (Some(vm), Some(vcpu)),
            Scope::Vm(vm) => (Some(vm), None),
            Scope::All => (None, None),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Vcpu { vm, vcpu } => write!(f, "vm {vm} vcpu {vcpu}"),
            Scope::Vm(vm) => write!(f, "vm {vm} (all vcpus)"),
            Scope::All => f.write_str("all vms"),
        }
    }
}

/// What one rendering shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Whose counters.
    pub scope: Scope,
    /// `Some(ms)`: the record is the delta of an interval of that length (rates are shown);
    /// `None`: counters since the last reset.
    pub interval_ms: Option<u64>,
    /// Milliseconds since the tool started (CSV/JSON time stamp of a live sample).
    pub time_ms: Option<u64>,
}

/// Writes the table: one row per active exit reason, then the VMX work outside exits and the
/// total. Per-exit figures are averages over the row's exits.
pub fn table(w: &mut impl Write, s: &VcpuStats, view: &View) -> fmt::Result {
    match view.interval_ms {
        Some(ms) => writeln!(
            w,
            "rhax-stat: {}, last {ms} ms: {} runs, {} returns to user space",
            view.scope, s.runs, s.user_exits
        )?,
        None => writeln!(
            w,
            "rhax-stat: {}, since reset: {} runs, {} returns to user space",
            view.scope, s.runs, s.user_exits
        )?,
    }
    writeln!(
        w,
        "{:<24} {:>12} {:>10} {:>12} {:>13} {:>11} {:>12}",
        "REASON", "EXITS", "EXITS/S", "VMREAD/EXIT", "VMWRITE/EXIT", "OTHER/EXIT", "CYCLES/EXIT"
    )?;
    let order = if view.interval_ms.is_some() {
        Order::Exits
    } else {
        Order::Reason
    };
    for (label, c) in Rows::of(s, order).iter() {
        table_row(w, label, c, view.interval_ms)?;
    }
    if is_active(&s.outside_exits) {
        table_row(w, Label::Outside, &s.outside_exits, view.interval_ms)?;
    }
    table_row(w, Label::Total, &s.total, view.interval_ms)
}

fn table_row(
    w: &mut impl Write,
    label: Label,
    c: &ExitReasonStats,
    interval_ms: Option<u64>,
) -> fmt::Result {
    // Work outside exits has no exits to average over: show the raw counts there.
    let per = |v: u64| {
        if label == Label::Outside {
            Ratio::new(v, 1)
        } else {
            Ratio::new(v, c.exits)
        }
    };
    let rate = PerSecond {
        count: c.exits,
        ms: interval_ms.unwrap_or(0),
    };
    writeln!(
        w,
        "{:<24} {:>12} {:>10} {:>12} {:>13} {:>11} {:>12}",
        label,
        c.exits,
        rate,
        per(c.vmreads),
        per(c.vmwrites),
        per(c.vmx_other),
        per(c.cycles)
    )
}

/// The CSV header of [`csv_rows`].
pub const CSV_HEADER: &str = "time_ms,vm,vcpu,reason,name,exits,vmreads,vmwrites,vmx_other,cycles";

/// Writes one CSV line per active reason, then `outside` and `total` lines (raw counters, for
/// plotting and diffing; an empty `vm`/`vcpu` means "summed").
pub fn csv_rows(w: &mut impl Write, s: &VcpuStats, view: &View) -> fmt::Result {
    for (label, c) in Rows::of(s, Order::Reason).iter() {
        csv_row(w, view, label, c)?;
    }
    csv_row(w, view, Label::Outside, &s.outside_exits)?;
    csv_row(w, view, Label::Total, &s.total)
}

fn csv_row(w: &mut impl Write, view: &View, label: Label, c: &ExitReasonStats) -> fmt::Result {
    let (vm, vcpu) = view.scope.ids();
    opt(w, view.time_ms)?;
    w.write_char(',')?;
    opt(w, vm)?;
    w.write_char(',')?;
    opt(w, vcpu)?;
    match label {
        Label::Reason(r) => write!(w, ",{r},{label}")?,
        Label::Outside => w.write_str(",,outside")?,
        Label::Total => w.write_str(",,total")?,
    }
    writeln!(
        w,
        ",{},{},{},{},{}",
        c.exits, c.vmreads, c.vmwrites, c.vmx_other, c.cycles
    )
}

fn opt<T: fmt::Display>(w: &mut impl Write, v: Option<T>) -> fmt::Result {
    match v {
        Some(v) => write!(w, "{v}"),
        None => Ok(()),
    }
}

fn json_opt<T: fmt::Display>(w: &mut impl Write, v: Option<T>) -> fmt::Result {
    match v {
        Some(v) => write!(w, "{v}"),
        None => w.write_str("null"),
    }
}

fn json_counters(w: &mut impl Write, c: &ExitReasonStats) -> fmt::Result {
    write!(
        w,
        "\"exits\":{},\"vmreads\":{},\"vmwrites\":{},\"vmx_other\":{},\"cycles\":{}",
        c.exits, c.vmreads, c.vmwrites, c.vmx_other, c.cycles
    )
}

/// Writes the record as one line of JSON (JSON Lines in live mode): raw counters, per reason
/// with its SDM name (`null` for numbers the SDM leaves undefined).
pub fn json(w: &mut impl Write, s: &VcpuStats, view: &View) -> fmt::Result {
    let (vm, vcpu) = view.scope.ids();
    w.write_str("{\"vm\":")?;
    json_opt(w, vm)?;
    w.write_str(",\"vcpu\":")?;
    json_opt(w, vcpu)?;
    w.write_str(",\"time_ms\":")?;
    json_opt(w, view.time_ms)?;
    w.write_str(",\"interval_ms\":")?;
    json_opt(w, view.interval_ms)?;
    write!(
        w,
        ",\"runs\":{},\"user_exits\":{},\"reasons\":[",
        s.runs, s.user_exits
    )?;
    for (i, (label, c)) in Rows::of(s, Order::Reason).iter().enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        let Label::Reason(r) = label else {
            continue;
        };
        write!(w, "{{\"reason\":{r},\"name\":")?;
        match name(r) {
            // SDM names are upper-case ASCII letters and underscores: nothing to escape.
            Some(n) => write!(w, "\"{n}\",")?,
            None => w.write_str("null,")?,
        }
        json_counters(w, c)?;
        w.write_char('}')?;
    }
    w.write_str("],\"outside\":{")?;
    json_counters(w, &s.outside_exits)?;
    w.write_str("},\"total\":{")?;
    json_counters(w, &s.total)?;
    w.write_str("}}\n")
}

/// The width and type of a VMCS field encoding (SDM Vol. 3C §25.11.2, Table 25-21: bits 14:13
/// width, bits 11:10 type), e.g. `guest-state natural`.
pub struct FieldKind(pub u32);

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let area = match (self.0 >> 10) & 3 {
            0 => "control",
            1 => "exit-info",
            2 => "guest-state",
            _ => "host-state",
        };
        let width = match (self.0 >> 13) & 3 {
            0 => "16-bit",
            1 => "64-bit",
            2 => "32-bit",
            _ => "natural",
        };
        let mut b = crate::fixed::StrBuf::<24>::new();
        write!(b, "{area} {width}")?;
        f.pad(b.as_str())
    }
}

/// Writes the per-field table: one row per field with reads or writes, most used first, for
/// the exit reason the counts were kept for (`None`: every reason). `fields` is sorted here.
pub fn fields_table(
    w: &mut impl Write,
    fields: &mut [FieldStats],
    reason: Option<u16>,
    exits: u64,
) -> fmt::Result {
    let uses = |f: &FieldStats| f.reads.saturating_add(f.writes);
    crate::sample::insertion_sort(fields, |a, b| {
        uses(a) > uses(b) || (uses(a) == uses(b) && a.encoding < b.encoding)
    });
    match reason {
        Some(r) => writeln!(
            w,
            "per-field VMREAD/VMWRITE in {} windows ({exits} exits):",
            Label::Reason(r)
        )?,
        None => writeln!(w, "per-field VMREAD/VMWRITE, every exit reason:")?,
    }
    writeln!(
        w,
        "{:<10} {:<20} {:>12} {:>12} {:>11} {:>12}",
        "FIELD", "KIND", "VMREADS", "VMWRITES", "READ/EXIT", "WRITE/EXIT"
    )?;
    for fs in fields.iter() {
        writeln!(
            w,
            "{:<#10x} {:<20} {:>12} {:>12} {:>11} {:>12}",
            fs.encoding,
            FieldKind(fs.encoding),
            fs.reads,
            fs.writes,
            Ratio::new(fs.reads, exits),
            Ratio::new(fs.writes, exits)
        )?;
    }
    Ok(())
}
