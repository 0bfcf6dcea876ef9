//! [`ApicPort`]: the lock-free mailbox of one vCPU's local APIC.
//!
//! Other vCPUs (IPIs) and IOCTLs (MSIs, lines) post interrupts here from any thread; the
//! owner drains them into its [`LocalApic`] before each entry. Posting only sets bits, so
//! posts commute and none is lost: the owner clears the summary flag *before* it swaps the
//! words out, and a poster sets its bits *before* the summary flag, so a post the drain
//! misses leaves the flag set for the next drain. The owner also publishes the routing view
//! (ID, LDR, DFR, mode, arbitration priority, software enable) for senders to match against.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{ApicMode, DeliveryMode, Interrupt, LocalApic};

const NMI: u32 = 1 << 0;
const INIT: u32 = 1 << 1;
const SIPI: u32 = 1 << 2;
/// Something was posted since the last drain.
const PENDING: u32 = 1 << 3;
/// A fixed vector below 16 was posted: the receiver's ESR gets "receive illegal vector".
const ILLEGAL: u32 = 1 << 4;

/// What a sender needs to know about a destination APIC (see [`ApicView::matches`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicView {
    /// The APIC ID (8-bit in xAPIC mode, 32-bit in x2APIC mode).
    pub id: u32,
    /// The logical destination register.
    pub ldr: u32,
    /// The destination format register (xAPIC).
    pub dfr: u32,
    /// The global mode.
    pub mode: ApicMode,
    /// The arbitration priority (lowest-priority delivery).
    pub arbitration_priority: u8,
    /// SVR bit 8.
    pub enabled: bool,
}

/// One vCPU's shared mailbox and routing view: atomics only, `Sync`, no allocation.
#[derive(Debug)]
pub struct ApicPort {
    irr: [AtomicU32; 8],
    tmr: [AtomicU32; 8],
    flags: AtomicU32,
    sipi_vector: AtomicU32,
    /// ID (low half), LDR (high half).
    view_ids: AtomicU64,
    /// DFR (low half), mode (bits 33:32), APR (bits 47:40), enabled (bit 48).
    view_rest: AtomicU64,
}

impl Default for ApicPort {
    fn default() -> Self {
        Self::new()
    }
}

impl ApicPort {
    /// An empty port whose view is a disabled APIC until the owner publishes.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU32 = AtomicU32::new(0);
        Self {
            irr: [ZERO; 8],
            tmr: [ZERO; 8],
            flags: AtomicU32::new(0),
            sipi_vector: AtomicU32::new(0),
            view_ids: AtomicU64::new(0),
            view_rest: AtomicU64::new(0),
        }
    }

    /// Posts an interrupt (any thread). Fixed/lowest-priority: the TMR bit (level or edge)
    /// then the IRR bit; NMI, INIT: a flag; SIPI: the vector, then the flag; SMI, ExtINT and
    /// INIT level de-assert are dropped, as [`LocalApic::accept`] drops them. True when the
    /// port did not already hold it (the APIC itself may still).
    pub fn post(&self, irq: Interrupt) -> bool {
        let new = match irq.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if irq.vector < 16 {
                    self.flags.fetch_or(ILLEGAL, Ordering::AcqRel) & ILLEGAL == 0
                } else {
                    let w = (irq.vector >> 5) as usize;
                    let bit = 1_u32 << (irq.vector & 31);
                    if let Some(tmr) = self.tmr.get(w) {
                        if irq.level_triggered {
                            tmr.fetch_or(bit, Ordering::AcqRel);
                        } else {
                            tmr.fetch_and(!bit, Ordering::AcqRel);
                        }
                    }
                    self.irr
                        .get(w)
                        .is_some_and(|irr| irr.fetch_or(bit, Ordering::AcqRel) & bit == 0)
                }
            }
            DeliveryMode::Nmi => self.flags.fetch_or(NMI, Ordering::AcqRel) & NMI == 0,
            DeliveryMode::Init => {
                if !irq.assert && irq.level_triggered {
                    return false;
                }
                self.flags.fetch_or(INIT, Ordering::AcqRel) & INIT == 0
            }
            DeliveryMode::StartUp => {
                self.sipi_vector.store(irq.vector as u32, Ordering::Release);
                self.flags.fetch_or(SIPI, Ordering::AcqRel) & SIPI == 0
            }
            DeliveryMode::Smi | DeliveryMode::ExtInt => return false,
        };
        self.flags.fetch_or(PENDING, Ordering::AcqRel);
        new
    }

    /// True when something was posted since the last drain (one load).
    pub fn pending(&self) -> bool {
        self.flags.load(Ordering::Acquire) & PENDING != 0
    }

    /// The owner: accepts everything posted into `apic` (see [`LocalApic::accept`]). True
    /// when something new is pending in the APIC.
    pub fn drain_into(&self, apic: &mut LocalApic) -> bool {
        let flags = self.flags.swap(0, Ordering::AcqRel);
        if flags == 0 {
            return false;
        }
        let mut new = false;
        for (w, irr) in self.irr.iter().enumerate() {
            let bits = irr.swap(0, Ordering::AcqRel);
            let tmr = self.tmr.get(w).map_or(0, |t| t.load(Ordering::Acquire));
            for b in super::set_bits(u64::from(bits)) {
                let irq = Interrupt {
                    vector: (w * 32 + b) as u8,
                    mode: DeliveryMode::Fixed,
                    assert: true,
                    level_triggered: tmr & (1 << b) != 0,
                };
                new |= apic.accept(irq);
            }
        }
        if flags & ILLEGAL != 0 {
            new |= apic.accept(Interrupt::fixed(0));
        }
        if flags & NMI != 0 {
            new |= apic.accept(Interrupt {
                vector: 0,
                mode: DeliveryMode::Nmi,
                assert: true,
                level_triggered: false,
            });
        }
        if flags & INIT != 0 {
            new |= apic.accept(Interrupt {
                vector: 0,
                mode: DeliveryMode::Init,
                assert: true,
                level_triggered: false,
            });
        }
        if flags & SIPI != 0 {
            new |= apic.accept(Interrupt {
                vector: self.sipi_vector.load(Ordering::Acquire) as u8,
                mode: DeliveryMode::StartUp,
                assert: true,
                level_triggered: false,
            });
        }
        new
    }

    /// The owner: publishes `apic`'s routing view (after any change of ID, LDR, DFR, mode,
    /// SVR or priority).
    pub fn publish(&self, apic: &LocalApic) {
        let v = apic.view();
        let mode = match v.mode {
            ApicMode::Disabled => 0_u64,
            ApicMode::XApic => 1,
            ApicMode::X2Apic => 2,
        };
        self.view_ids
            .store(v.id as u64 | (v.ldr as u64) << 32, Ordering::Release);
        self.view_rest.store(
            v.dfr as u64
                | mode << 32
                | (v.arbitration_priority as u64) << 40
                | (v.enabled as u64) << 48,
            Ordering::Release,
        );
    }

    /// The last published routing view (the two halves are read separately: a sender racing
    /// a publish may see a mix, as a real IPI racing an ID change may go either way).
    pub fn view(&self) -> ApicView {
        let ids = self.view_ids.load(Ordering::Acquire);
        let rest = self.view_rest.load(Ordering::Acquire);
        ApicView {
            id: ids as u32,
            ldr: (ids >> 32) as u32,
            dfr: rest as u32,
            mode: match (rest >> 32) & 3 {
                1 => ApicMode::XApic,
                2 => ApicMode::X2Apic,
                _ => ApicMode::Disabled,
            },
            arbitration_priority: (rest >> 40) as u8,
            enabled: (rest >> 48) & 1 != 0,
        }
    }
}
