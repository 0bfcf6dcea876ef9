//! The local APIC model: one per vCPU, pure data, no VMX (issue 12 item 1).
//!
//! Source: Intel SDM Vol. 3A chapter 11, "Advanced Programmable Interrupt Controller (APIC)"
//! (2023+ numbering; x2APIC in §11.12). Rooms:
//! * [`local`]: [`LocalApic`]: IA32_APIC_BASE and the modes, power-up and INIT state,
//!   acceptance, priority (TPR/PPR/APR), ISR/IRR/TMR, EOI, the NMI/INIT/SIPI latches;
//! * `access`: the register interfaces, xAPIC MMIO and x2APIC MSRs, with their #GP rules;
//! * [`timer`]: the APIC timer: one-shot, periodic, TSC-deadline, divide configuration;
//! * [`mod@route`]: destinations: physical, logical flat/cluster, x2APIC cluster, shorthands,
//!   lowest priority;
//! * [`port`]: [`ApicPort`], the lock-free mailbox other vCPUs and IOCTLs post into;
//! * [`state`]: save/restore through [`rhax_api::apic::RhaxApicState`].
//!
//! Nothing here allocates, uses floats, recurses or panics on any guest or IOCTL value: every
//! register index is bounded by construction or read with `get`, every timer sum saturates.
//!
//! The register file is kept in the xAPIC page layout (the value at MMIO offset `o` at index
//! `o / 16`), so it can later back a virtual-APIC page (SDM Vol. 3C §30.1).
//!
//! Delivery is immediate, so the delivery-status bits of the ICR and the LVTs always read 0.
//! Not modelled: the remote IRR of level-triggered LINT pins (LVT bit 14 reads 0), focus
//! processor checking (SVR bit 9 is stored, without effect), SMI and ExtINT messages (no
//! SMM, no 8259A: [`LocalApic::accepts_pic_interrupts`] tells the caller when the PIC's
//! INTR reaches the core), and the x2APIC broadcast of an 8-bit destination 0xFF sent by an
//! MSI or an xAPIC-mode sender to x2APIC-mode receivers (KVM's quirk): [`Ipi`] does not
//! carry the sender's destination width.

mod access;
pub mod bus;
pub mod local;
mod peek;
pub mod port;
pub mod route;
pub mod state;
pub mod timer;

pub use bus::ApicBus;
pub use local::LocalApic;
pub use peek::{highest_vector, x2apic_read_virtualized, PAGE_MIRRORED};
pub use port::{ApicPort, ApicView};
pub use route::{route, route_with};
pub use state::ApicStateError;

/// The APIC's global mode, from IA32_APIC_BASE bits 11:10 (EN, EXTD) (SDM §11.12.5,
/// Figure 11-27; `EN = 0, EXTD = 1` is invalid and never held).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: globally disabled, as if the processor had no APIC (§11.4.3).
    Disabled,
    /// EN = 1, EXTD = 0: xAPIC mode, registers in the 4 KiB MMIO page.
    XApic,
    /// EN = 1, EXTD = 1: x2APIC mode, registers as MSRs 0x800-0x8ff (§11.12).
    X2Apic,
}

/// A register access the CPU answers with #GP(0) (WRMSR/RDMSR rules of §11.12.1.2-3 and the
/// IA32_APIC_BASE transitions of §11.12.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicFault;

/// The delivery mode of an interrupt message (ICR bits 10:8, §11.6.1; MSI data bits 10:8,
/// §11.11.2). The values 3 is reserved everywhere; 6 (start-up) only exists in the ICR.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Fixed: the vector into the IRR of every target.
    Fixed = 0,
    /// Lowest priority: the vector into the IRR of one target, the one with the lowest
    /// arbitration priority (§11.6.2.4).
    LowestPriority = 1,
    /// SMI (no SMM in rhax: never accepted).
    Smi = 2,
    /// NMI (vector ignored).
    Nmi = 4,
    /// INIT (vector ignored).
    Init = 5,
    /// Start-up IPI: the vector is the start page (`vector << 12`).
    StartUp = 6,
    /// ExtINT: the vector comes from an external 8259A (no PIC here: never accepted).
    ExtInt = 7,
}

impl DeliveryMode {
    /// Decodes a 3-bit delivery-mode field; `None` for the reserved value 3.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits & 7 {
            0 => Some(Self::Fixed),
            1 => Some(Self::LowestPriority),
            2 => Some(Self::Smi),
            4 => Some(Self::Nmi),
            5 => Some(Self::Init),
            6 => Some(Self::StartUp),
            7 => Some(Self::ExtInt),
            _ => None,
        }
    }

    /// True for the modes that carry a vector into the IRR (fixed, lowest priority).
    pub const fn uses_irr(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// One interrupt as a local APIC receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// The vector (fixed, lowest priority, start-up).
    pub vector: u8,
    /// The delivery mode.
    pub mode: DeliveryMode,
    /// The level: true = assert. Only an INIT with `assert == false` and `level_triggered`
    /// (INIT level de-assert, §11.6.1) is a no-op for the receiver.
    pub assert: bool,
    /// The trigger mode: true = level (the TMR bit is set on acceptance, §11.8.4).
    pub level_triggered: bool,
}

impl Interrupt {
    /// An edge-triggered fixed interrupt.
    pub const fn fixed(vector: u8) -> Self {
        Self {
            vector,
            mode: DeliveryMode::Fixed,
            assert: true,
            level_triggered: false,
        }
    }
}

/// The ICR destination shorthand (bits 19:18, §11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// 00: the destination field decides.
    None,
    /// 01: the sender only.
    SelfOnly,
    /// 10: every APIC, the sender included.
    AllIncludingSelf,
    /// 11: every APIC but the sender.
    AllExcludingSelf,
}

impl Shorthand {
    /// Decodes ICR bits 19:18 (given as a 2-bit value).
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            0 => Self::None,
            1 => Self::SelfOnly,
            2 => Self::AllIncludingSelf,
            _ => Self::AllExcludingSelf,
        }
    }
}

/// An interrupt message with its destination: an IPI from an ICR write or an MSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// What each target receives.
    pub irq: Interrupt,
    /// The destination: an APIC ID (physical) or a message destination address (logical);
    /// 8 bits in xAPIC mode and from an MSI, 32 bits in x2APIC mode.
    pub dest: u32,
    /// Logical destination mode (ICR bit 11, MSI address bit 2).
    pub logical: bool,
    /// The shorthand (always [`Shorthand::None`] for an MSI).
    pub shorthand: Shorthand,
}

impl Ipi {
    /// A fixed interrupt to the sender alone (the self shorthand): the sender's own model
    /// accepts it, without routing (SDM Vol. 3A §11.6.1; the interrupt handler's hot case).
    pub fn is_fixed_self(&self) -> bool {
        self.shorthand == Shorthand::SelfOnly && self.irq.mode == DeliveryMode::Fixed
    }
}

/// What a register write asks of the vCPU around the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register change.
    None,
    /// Send this IPI ([`route()`] it from the sender's index). Also for SELF IPI (x2APIC MSR
    /// 0x83f), as [`Shorthand::SelfOnly`].
    Ipi(Ipi),
    /// The EOI of a level-triggered vector, to broadcast to the I/O APICs (§11.8.5); not
    /// produced when SVR bit 12 suppresses the broadcast.
    Eoi {
        /// The vector whose ISR bit was cleared.
        vector: u8,
    },
    /// The timer's deadline changed (armed, disarmed or moved): re-read
    /// [`LocalApic::timer_deadline`].
    TimerChanged,
}

/// Decodes an MSI (address, data) pair into the message it sends (SDM §11.11).
///
/// `None` when the address is not in the 0xFEExxxxx window (bits 63:20 must be 0xFEE) or the
/// delivery mode is reserved for MSIs (3 and 6, Figure 11-25). The destination is the 8-bit
/// ID of address bits 19:12; DM (bit 2) selects logical mode. A set redirection hint (RH,
/// bit 3) makes a fixed message lowest-priority (it "may be redirected", §11.11.1), as KVM
/// does. For an edge-triggered message the level bit is ignored (§11.11.2): it asserts.
pub fn decode_msi(address: u64, data: u32) -> Option<Ipi> {
    if address >> 20 != 0xfee {
        return None;
    }
    let mut mode = DeliveryMode::from_bits(((data >> 8) & 7) as u8)?;
    if mode == DeliveryMode::StartUp {
        return None;
    }
    let redirect_hint = address & (1 << 3) != 0;
    if redirect_hint && mode == DeliveryMode::Fixed {
        mode = DeliveryMode::LowestPriority;
    }
    let level_triggered = data & (1 << 15) != 0;
    Some(Ipi {
        irq: Interrupt {
            vector: data as u8,
            mode,
            assert: !level_triggered || data & (1 << 14) != 0,
            level_triggered,
        },
        dest: ((address >> 12) & 0xff) as u32,
        logical: address & (1 << 2) != 0,
        shorthand: Shorthand::None,
    })
}

/// The indices of `bits`' set bits, lowest first (the bus's targets, a port's requested
/// vectors).
pub(crate) fn set_bits(mut bits: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        Some(i)
    })
}
