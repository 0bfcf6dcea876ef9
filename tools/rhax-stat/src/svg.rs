//! The `--svg` chart, written by hand (no plotting crate): a stacked bar per active exit
//! reason of VMREAD, VMWRITE and other VMX instructions per exit, and below it a timeline of
//! exits per second. Integer arithmetic only (see `fixed`).

use core::fmt::{self, Write};

use rhax_api::ext::VcpuStats;

use crate::fixed::Ratio;
use crate::render::Scope;
use crate::sample::{Order, Rows};

const WIDTH: u64 = 800;
const LEFT: u64 = 60;
const RIGHT: u64 = 20;
const PLOT_W: u64 = WIDTH - LEFT - RIGHT;
const BARS_TOP: u64 = 40;
const BARS_H: u64 = 240;
/// Room under the bars for the rotated reason names.
const LABELS_H: u64 = 130;
const LINE_TOP: u64 = BARS_TOP + BARS_H + LABELS_H + 40;
const LINE_H: u64 = 160;
const HEIGHT: u64 = LINE_TOP + LINE_H + 40;

/// The three parts of a bar and their colours.
const PARTS: [(&str, &str); 3] = [
    ("VMREAD", "#4477aa"),
    ("VMWRITE", "#ee6677"),
    ("other VMX", "#ccbb44"),
];

/// Writes the whole SVG document. `exits_per_s` is the timeline, one value per sample (may be
/// empty: `--once` has no interval).
pub fn chart(w: &mut impl Write, s: &VcpuStats, scope: Scope, exits_per_s: &[u64]) -> fmt::Result {
    writeln!(
        w,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">"
    )?;
    writeln!(
        w,
        "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>"
    )?;
    writeln!(
        w,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"14\">rhax-stat: VMX instructions per exit \
         by exit reason ({scope})</text>"
    )?;
    bars(w, s)?;
    timeline(w, exits_per_s)?;
    w.write_str("</svg>\n")
}

/// Hundredths of `v / exits`.
fn per_exit(v: u64, exits: u64) -> u64 {
    Ratio::new(v, exits)
        .hundredths()
        .and_then(|h| u64::try_from(h).ok())
        .unwrap_or(0)
}

/// `v * span / max`, for `v <= max`.
fn scale(v: u64, max: u64, span: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    u64::try_from(u128::from(v) * u128::from(span) / u128::from(max)).unwrap_or(span)
}

fn bars(w: &mut impl Write, s: &VcpuStats) -> fmt::Result {
    let rows = Rows::of(s, Order::Reason);
    let with_exits = || rows.iter().filter(|(_, c)| c.exits > 0);
    let max = with_exits()
        .map(|(_, c)| per_exit(crate::sample::vmx_instructions(c), c.exits))
        .max()
        .unwrap_or(0)
        .max(100);
    let n = with_exits().count() as u64;
    let base = BARS_TOP + BARS_H;
    // Axis and a scale mark at the maximum.
    writeln!(
        w,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
        LEFT + PLOT_W
    )?;
    writeln!(
        w,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        LEFT - 4,
        BARS_TOP + 4,
        Ratio::new(max, 100)
    )?;
    writeln!(
        w,
        "<text x=\"{}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        LEFT - 4
    )?;
    if n == 0 {
        return writeln!(
            w,
            "<text x=\"{}\" y=\"{}\">no exits</text>",
            LEFT + 10,
            base - 10
        );
    }
    let slot = PLOT_W / n.max(1);
    let bar_w = (slot * 2 / 3).max(2);
    for (i, (label, c)) in (0u64..).zip(with_exits()) {
        let x = LEFT + i * slot + (slot - bar_w) / 2;
        let mut top = base;
        for ((part, colour), v) in PARTS.iter().zip([c.vmreads, c.vmwrites, c.vmx_other]) {
            let h = scale(per_exit(v, c.exits), max, BARS_H);
            top = top.saturating_sub(h);
            writeln!(
                w,
                "<rect x=\"{x}\" y=\"{top}\" width=\"{bar_w}\" height=\"{h}\" fill=\"{colour}\">\
                 <title>{label}: {} {part}/exit</title></rect>",
                Ratio::new(v, c.exits)
            )?;
        }
        let total = Ratio::new(crate::sample::vmx_instructions(c), c.exits);
        writeln!(
            w,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{total}</text>",
            x + bar_w / 2,
            top.saturating_sub(3)
        )?;
        let lx = x + bar_w / 2;
        let ly = base + 10;
        writeln!(
            w,
            "<text x=\"{lx}\" y=\"{ly}\" transform=\"rotate(60 {lx} {ly})\">{label}</text>"
        )?;
    }
    // Legend.
    for (i, (part, colour)) in (0u64..).zip(PARTS.iter()) {
        let x = LEFT + PLOT_W - 300 + i * 100;
        writeln!(
            w,
            "<rect x=\"{x}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"37\">{part}</text>",
            x + 14
        )?;
    }
    Ok(())
}

fn timeline(w: &mut impl Write, exits_per_s: &[u64]) -> fmt::Result {
    let base = LINE_TOP + LINE_H;
    writeln!(
        w,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\">exits per second</text>",
        LINE_TOP - 10
    )?;
    writeln!(
        w,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
        LEFT + PLOT_W
    )?;
    let max = exits_per_s.iter().copied().max().unwrap_or(0).max(1);
    writeln!(
        w,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text>",
        LEFT - 4,
        LINE_TOP + 4
    )?;
    if exits_per_s.len() < 2 {
        return writeln!(
            w,
            "<text x=\"{}\" y=\"{}\">no timeline (one sample or fewer)</text>",
            LEFT + 10,
            base - 10
        );
    }
    let steps = (exits_per_s.len() - 1) as u64;
    w.write_str("<polyline fill=\"none\" stroke=\"#228833\" stroke-width=\"2\" points=\"")?;
    for (i, v) in (0u64..).zip(exits_per_s.iter()) {
        let x = LEFT + scale(i, steps, PLOT_W);
        let y = base - scale(*v, max, LINE_H);
        write!(w, "{x},{y} ")?;
    }
    writeln!(w, "\"/>")?;
    writeln!(
        w,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} samples</text>",
        LEFT + PLOT_W,
        base + 16,
        exits_per_s.len()
    )
}
