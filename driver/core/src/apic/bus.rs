//! The VM's APIC bus: one [`ApicPort`] per vCPU id, lock-free, so an IPI from a vCPU in the
//! guest loop (inside the non-preemptible region, where no lock may be taken: ARCHITECTURE.md
//! "Lock hierarchy") and an MSI from user space reach their targets the same way: routed over
//! the ports' published views, posted into the targets' ports, the targets in the guest kicked.
//! Each vCPU drains its own port before every VM entry (KVM's posted-interrupt request
//! bitmap, in software).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rhax_api::ext::ApicFlags;
use rhax_api::HAX_MAX_VCPUS;

use super::{route_with, set_bits, ApicPort, Interrupt, Ipi, Shorthand};
use crate::memory::try_arc::TryArc;
use crate::platform::{CpuIndex, Platform, PlatformError};

/// vCPU ids a bus serves (HAXM's limit).
pub const BUS_SLOTS: usize = HAX_MAX_VCPUS as usize;

/// A VM's bus, shared by its vCPUs and the dispatcher.
pub type SharedBus = TryArc<ApicBus>;

/// [`ApicBus::running_on`] of a vCPU outside the guest loop.
pub const NOT_RUNNING: u32 = u32::MAX;

/// LINT pin bits in [`ApicBus::lint`]: asserted level of LINT0/LINT1, and "an edge to process".
const LINT_LEVEL: [u32; 2] = [1 << 0, 1 << 1];
const LINT_CHANGED: [u32; 2] = [1 << 2, 1 << 3];
/// The ExtINT vector an interrupt controller supplies with LINT0, bits 15:8.
const LINT_VECTOR_SHIFT: u32 = 8;

/// A pending change of a LINT pin, for the owner to deliver through its LVT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LintChange {
    /// 0 or 1.
    pub pin: usize,
    /// The level now.
    pub asserted: bool,
    /// The vector supplied for an ExtINT delivery.
    pub vector: u8,
}

/// The APIC bus of one VM (see the module documentation).
pub struct ApicBus {
    flags: ApicFlags,
    /// Host-physical address of the VM's APIC-access page (0: none; SDM Vol. 3C §30.4).
    apic_access: u64,
    ports: [ApicPort; BUS_SLOTS],
    /// Bit per vCPU id with an APIC attached.
    present: AtomicU32,
    /// CPU index of each vCPU while it is in its guest loop, [`NOT_RUNNING`] otherwise.
    running_on: [AtomicU32; BUS_SLOTS],
    /// LINT0/LINT1 state per vCPU (RHAX_VCPU_IOCTL_APIC_LINT).
    lint: [AtomicU32; BUS_SLOTS],
    /// The APIC-access page's mapping at the default xAPIC base: bits 0-15, the vCPUs (by
    /// id) whose APIC does not answer there (moved, x2APIC mode, disabled); bits 62-63, the
    /// mapping's state ([`PAGE_MAPPED`], [`PAGE_UNMAPPED`], [`PAGE_BUSY`], [`PAGE_GONE`]).
    /// One word, so a vCPU leaving the default base learns in the same atomic step whether
    /// the page may still be in the EPT.
    access: AtomicU64,
}

/// The page is in the EPT at the default base (or the VM has none: nothing else happens).
const PAGE_MAPPED: u64 = 0;
/// The page is out of the EPT: 0xFEE00000 is what the memslots make it.
const PAGE_UNMAPPED: u64 = 1 << 62;
/// A dispatcher is mapping or unmapping it ([`ApicBus::claim_access_work`]).
const PAGE_BUSY: u64 = 2 << 62;
/// Out for the VM's lifetime: RAM took its place (a SET_RAM over the default base).
const PAGE_GONE: u64 = 3 << 62;
const PAGE_STATE: u64 = 3 << 62;
const OFF_DEFAULT: u64 = (1 << BUS_SLOTS) - 1;

/// What the dispatcher must do with the APIC-access page's mapping, claimed by
/// [`ApicBus::claim_access_work`] and ended by [`ApicBus::access_work_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessWork {
    /// A vCPU's APIC left the default base: the translation must go (and every CPU
    /// INVEPT) before that vCPU runs its guest again.
    Unmap,
    /// Every vCPU's APIC is at the default base again: the translation comes back (KVM lifts
    /// its APICv inhibit for a moved base the same way).
    Map,
}

// SAFETY: atomics, flags and ports whose all-zero state is an empty port (`ApicPort` is
// `Zeroable`); `init` completes the rest before the bus is shared.
unsafe impl crate::heap::Zeroable for ApicBus {}

impl ApicBus {
    /// Completes a zeroed bus (built in place: it is too large for a kernel stack frame) for
    /// a VM whose APIC was enabled with `flags`.
    pub fn init(&mut self, flags: ApicFlags, apic_access: u64) {
        self.flags = flags;
        self.apic_access = apic_access;
        for r in &mut self.running_on {
            *r.get_mut() = NOT_RUNNING;
        }
    }

    /// A new bus for a VM, built in place and shared (what RHAX_VM_IOCTL_ENABLE_APIC makes).
    /// `apic_access`: the host-physical address of the VM's APIC-access page, mapped at
    /// the default xAPIC base (0: none; the vCPUs then take xAPIC accesses as EPT violations).
    pub fn shared(flags: ApicFlags, apic_access: u64) -> Result<TryArc<ApicBus>, PlatformError> {
        TryArc::try_new_zeroed_with(PlatformError::OutOfMemory, |bus: &mut ApicBus| {
            bus.init(flags, apic_access);
            Ok(())
        })
    }

    /// Host-physical address of the VM's APIC-access page, if it has one.
    pub fn apic_access(&self) -> Option<u64> {
        (self.apic_access != 0).then_some(self.apic_access)
    }

    /// Records whether vCPU `index`'s APIC answers at the default xAPIC base (`at_default`;
    /// not when moved, in x2APIC mode or disabled, SDM Vol. 3A §11.4.4, §11.12.1), after
    /// anything that may change that (an IA32_APIC_BASE write, SET_APIC_STATE). True when the
    /// VM-wide APIC-access mapping must change before this vCPU enters its guest again: the
    /// vCPU ends its RUN so that its dispatcher acts first ([`ApicBus::claim_access_work`]).
    /// Leaving the default base while the page may be in the EPT must wait for the unmap
    /// (else the CPU would go on virtualizing this vCPU's accesses to an address that is
    /// ordinary memory or MMIO for it now: KVM inhibits APIC virtualization VM-wide for a
    /// moved base the same way); the last vCPU back at the default base asks for the map.
    /// Always false on a VM without the page.
    pub fn note_base(&self, index: usize, at_default: bool) -> bool {
        if self.apic_access == 0 || index >= BUS_SLOTS {
            return false;
        }
        let bit = 1u64 << index;
        let old = if at_default {
            self.access.fetch_and(!bit, Ordering::AcqRel)
        } else {
            self.access.fetch_or(bit, Ordering::AcqRel)
        };
        let state = old & PAGE_STATE;
        if at_default {
            old & bit != 0 && old & OFF_DEFAULT == bit && state == PAGE_UNMAPPED
        } else {
            old & bit == 0 && (state == PAGE_MAPPED || state == PAGE_BUSY)
        }
    }

    /// Whether vCPU `index` may enter its guest as far as the APIC-access page goes: not while
    /// its APIC is off the default base and the page may still be in the EPT (the unmap of
    /// another vCPU's dispatcher still under way). Checked before every entry the long way.
    pub fn may_enter(&self, index: usize) -> bool {
        let a = self.access.load(Ordering::Acquire);
        index >= BUS_SLOTS
            || a & (1 << index) == 0
            || matches!(a & PAGE_STATE, PAGE_UNMAPPED | PAGE_GONE)
    }

    /// The mapping change due now, claimed by this caller (the page's state is busy until
    /// [`ApicBus::access_work_done`]); `None` when there is none or another dispatcher has it.
    /// One load when nothing is due: it runs after every RUN.
    pub fn claim_access_work(&self) -> Option<AccessWork> {
        let a = self.access.load(Ordering::Acquire);
        let work = match (a & PAGE_STATE, a & OFF_DEFAULT != 0) {
            (PAGE_MAPPED, true) => AccessWork::Unmap,
            (PAGE_UNMAPPED, false) => AccessWork::Map,
            _ => return None,
        };
        // A VM without the page never records a vCPU off the default base (`note_base`), so
        // its word stays "mapped, nobody away": no work ever comes due there.
        self.access
            .compare_exchange(
                a,
                (a & !PAGE_STATE) | PAGE_BUSY,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()
            .map(|_| work)
    }

    /// Ends the claimed `work`: `in_ept`, whether the page is in the EPT now (`None`: RAM is
    /// there, the page stays out for good). A failed attempt leaves the state as it was, and
    /// the next RUN's end tries again. Returns the work still due, claimed: a vCPU left the
    /// default base while the page was being mapped (unmap it again now); else `None`, and
    /// the claim is over.
    pub fn access_work_done(&self, work: AccessWork, in_ept: Option<bool>) -> Option<AccessWork> {
        let mut a = self.access.load(Ordering::Acquire);
        loop {
            let state = match in_ept {
                Some(true) if work == AccessWork::Map && a & OFF_DEFAULT != 0 => {
                    return Some(AccessWork::Unmap)
                }
                Some(true) => PAGE_MAPPED,
                Some(false) => PAGE_UNMAPPED,
                None => PAGE_GONE,
            };
            match self.access.compare_exchange(
                a,
                (a & !PAGE_STATE) | state,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return None,
                Err(now) => a = now,
            }
        }
    }

    /// The flags of RHAX_VM_IOCTL_ENABLE_APIC.
    pub fn flags(&self) -> ApicFlags {
        self.flags
    }

    /// The port of vCPU `index`.
    pub fn port(&self, index: usize) -> Option<&ApicPort> {
        self.ports.get(index)
    }

    /// vCPU `index` has an APIC from now on (its port's view must be published first).
    pub fn attach(&self, index: usize) {
        if index < BUS_SLOTS {
            self.present.fetch_or(1 << index, Ordering::AcqRel);
        }
    }

    /// vCPU `index` is gone: nothing is routed to it any more.
    pub fn detach(&self, index: usize) {
        if index < BUS_SLOTS {
            self.present.fetch_and(!(1 << index), Ordering::AcqRel);
            // Gone, it no longer keeps the APIC-access page out of the EPT.
            self.access.fetch_and(!(1 << index), Ordering::AcqRel);
            self.running_on[index].store(NOT_RUNNING, Ordering::Release);
        }
    }

    /// Records where vCPU `index` runs its guest loop ([`NOT_RUNNING`] when it leaves).
    pub fn set_running(&self, index: usize, cpu: u32) {
        if let Some(r) = self.running_on.get(index) {
            r.store(cpu, Ordering::Release);
        }
    }

    /// Routes `ipi` (sent by vCPU `source`, or by a device when `None`) and posts it into
    /// every target's port. Returns the targets (bit per vCPU id) that got something new and
    /// may need a kick.
    pub fn deliver(&self, ipi: &Ipi, source: Option<usize>) -> u32 {
        // A device has no "self": shorthands other than "none" reach nobody from it (MSIs
        // carry no shorthand; the route treats an out-of-range source as matching none).
        let targets = if ipi.shorthand == Shorthand::SelfOnly {
            // The sender alone, whatever the views say (SDM Vol. 3A §11.6.1): no routing.
            source.filter(|&s| s < BUS_SLOTS).map_or(0, |s| 1u64 << s)
        } else {
            // Only the slots up to the highest present one are routed over (a VM's vCPUs
            // take the low ids), each port's published view read as the route asks for it.
            let present = self.present.load(Ordering::Acquire);
            let used = (u32::BITS - present.leading_zeros()) as usize;
            route_with(ipi, source.unwrap_or(BUS_SLOTS), used, |i| {
                (present & (1 << i) != 0)
                    .then(|| self.ports.get(i).map(ApicPort::view))
                    .flatten()
            })
        };
        // The targets' bits only (one, for the common IPI), not every slot: a loop over the
        // 64 slots cost ~250 emulated instructions per IPI.
        let mut woken = 0u32;
        for i in set_bits(targets) {
            if self.ports.get(i).is_some_and(|p| p.post(ipi.irq)) {
                woken |= 1 << i;
            }
        }
        woken
    }

    /// Posts `irq` to vCPU `index` alone (a LINT delivery, the HAXM INTERRUPT of an APIC
    /// VM); true when it was new.
    pub fn post_to(&self, index: usize, irq: Interrupt) -> bool {
        self.port(index).is_some_and(|p| p.post(irq))
    }

    /// Kicks the vCPUs in `targets` that are in their guest loop on another CPU than
    /// `current` (a posted interrupt is drained before every entry, so only a vCPU in the
    /// guest needs the exit).
    pub fn kick<P: Platform>(&self, platform: &P, targets: u32, current: Option<u32>) {
        for i in set_bits(u64::from(targets)) {
            let Some(r) = self.running_on.get(i) else {
                continue;
            };
            let cpu = r.load(Ordering::Acquire);
            if cpu != NOT_RUNNING && Some(cpu) != current {
                platform.kick(cpu as CpuIndex);
            }
        }
    }

    /// Whether vCPU `index` is in its guest loop.
    pub fn is_running(&self, index: usize) -> bool {
        self.running_on
            .get(index)
            .is_some_and(|r| r.load(Ordering::Acquire) != NOT_RUNNING)
    }

    /// Sets LINT pin `pin` of vCPU `index` to `asserted` (with the vector an ExtINT delivery
    /// uses); true when the level changed. The owner delivers it before its next entry.
    pub fn set_lint(&self, index: usize, pin: usize, asserted: bool, vector: u8) -> bool {
        let (Some(l), Some(&level), Some(&changed)) = (
            self.lint.get(index),
            LINT_LEVEL.get(pin),
            LINT_CHANGED.get(pin),
        ) else {
            return false;
        };
        let mut cur = l.load(Ordering::Acquire);
        loop {
            if (cur & level != 0) == asserted {
                return false;
            }
            let mut next = (cur ^ level) | changed;
            if pin == 0 {
                next = (next & !(0xff << LINT_VECTOR_SHIFT))
                    | (u32::from(vector) << LINT_VECTOR_SHIFT);
            }
            match l.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Whether a LINT change waits for vCPU `index`.
    pub fn lint_pending(&self, index: usize) -> bool {
        self.lint
            .get(index)
            .is_some_and(|l| l.load(Ordering::Acquire) & (LINT_CHANGED[0] | LINT_CHANGED[1]) != 0)
    }

    /// Takes the LINT changes waiting for vCPU `index` (at most one per pin: the latest level).
    pub fn take_lint(&self, index: usize) -> [Option<LintChange>; 2] {
        let Some(l) = self.lint.get(index) else {
            return [None, None];
        };
        let v = l.fetch_and(!(LINT_CHANGED[0] | LINT_CHANGED[1]), Ordering::AcqRel);
        core::array::from_fn(|pin| {
            (v & LINT_CHANGED[pin] != 0).then(|| LintChange {
                pin,
                asserted: v & LINT_LEVEL[pin] != 0,
                vector: if pin == 0 {
                    (v >> LINT_VECTOR_SHIFT) as u8
                } else {
                    2
                },
            })
        })
    }
}
