//! IPI destinations (SDM Vol. 3A §11.6.2; x2APIC §11.12.10): which vCPUs receive a message.

use super::port::ApicView;
use super::{ApicMode, DeliveryMode, Ipi, LocalApic, Shorthand};

impl ApicView {
    /// True when this APIC is a destination of `dest` in the given destination mode.
    ///
    /// * xAPIC physical (§11.6.2.1): `dest[7:0]` equals the 8-bit ID, or is 0xFF (broadcast).
    /// * xAPIC logical (§11.6.2.2): 0xFF is a broadcast; in the flat model (DFR bits 31:28 =
    ///   1111b) the 8-bit message destination address ANDed with LDR bits 31:24 is nonzero; in
    ///   the cluster model (0000b) the cluster numbers (bits 7:4) are equal and the member
    ///   bits (3:0) intersect. Other DFR models match nothing.
    /// * x2APIC physical (§11.12.10): the 32-bit ID, or 0xFFFFFFFF (broadcast).
    /// * x2APIC logical (§11.12.10.1): 0xFFFFFFFF is a broadcast; otherwise the clusters
    ///   (bits 31:16) are equal and the member bits (15:0) intersect the LDR's.
    ///
    /// A globally disabled APIC matches nothing.
    pub fn matches(&self, dest: u32, logical: bool) -> bool {
        match (self.mode, logical) {
            (ApicMode::Disabled, _) => false,
            (ApicMode::XApic, false) => {
                let d = dest & 0xff;
                d == 0xff || d == self.id & 0xff
            }
            (ApicMode::XApic, true) => {
                let mda = dest & 0xff;
                let ldr = self.ldr >> 24;
                if mda == 0xff {
                    return true;
                }
                match self.dfr >> 28 {
                    0xf => mda & ldr != 0,
                    0x0 => mda >> 4 == ldr >> 4 && mda & ldr & 0xf != 0,
                    _ => false,
                }
            }
            (ApicMode::X2Apic, false) => dest == u32::MAX || dest == self.id,
            (ApicMode::X2Apic, true) => {
                dest == u32::MAX || (dest >> 16 == self.ldr >> 16 && dest & self.ldr & 0xffff != 0)
            }
        }
    }
}

impl LocalApic {
    /// The routing view of this APIC (what [`super::ApicPort::publish`] stores).
    pub fn view(&self) -> ApicView {
        ApicView {
            id: self.id(),
            ldr: self.reg(super::local::LDR),
            dfr: self.reg(super::local::DFR),
            mode: self.mode(),
            arbitration_priority: self.arbitration_priority(),
            enabled: self.software_enabled(),
        }
    }

    /// True when this APIC is a destination of `dest` (see [`ApicView::matches`]).
    pub fn matches(&self, dest: u32, logical: bool) -> bool {
        self.view().matches(dest, logical)
    }
}

/// The vCPUs an IPI from vCPU `source` reaches, as a bitmap of indices into `views` (only the
/// first 64 are considered).
///
/// Shorthands (§11.6.1): self, all including self, all excluding self, every APIC that is
/// not globally disabled. Without a shorthand, the views that [`ApicView::matches`]. A
/// lowest-priority message goes to one of its targets (§11.6.2.4): the software-enabled
/// one with the lowest arbitration priority (any target when none is enabled), ties to the
/// lowest index, as the SDM leaves ties to the implementation.
pub fn route(ipi: &Ipi, source: usize, views: &[ApicView]) -> u64 {
    route_with(ipi, source, views.len(), |i| views.get(i).copied())
}

/// [`route`] over `count` (at most 64) views produced on demand (`None`: matches nothing,
/// like a globally disabled APIC): the bus routes over its ports' published views without
/// building an array of every slot.
pub fn route_with(
    ipi: &Ipi,
    source: usize,
    count: usize,
    view: impl Fn(usize) -> Option<ApicView>,
) -> u64 {
    let mut targets = 0_u64;
    for i in 0..count.min(64) {
        let Some(view) = view(i) else {
            continue;
        };
        let hit = match ipi.shorthand {
            Shorthand::None => view.matches(ipi.dest, ipi.logical),
            Shorthand::SelfOnly => i == source,
            Shorthand::AllIncludingSelf => view.mode != ApicMode::Disabled,
            Shorthand::AllExcludingSelf => view.mode != ApicMode::Disabled && i != source,
        };
        if hit {
            targets |= 1 << i;
        }
    }
    if ipi.irq.mode != DeliveryMode::LowestPriority || targets == 0 {
        return targets;
    }
    let mut best: Option<(bool, u8, usize)> = None;
    for i in 0..count.min(64) {
        let Some(view) = view(i).filter(|_| targets & (1 << i) != 0) else {
            continue;
        };
        // Lower is better: enabled first, then the arbitration priority, then the index.
        let key = (!view.enabled, view.arbitration_priority, i);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map_or(0, |(_, _, i)| 1 << i)
}
