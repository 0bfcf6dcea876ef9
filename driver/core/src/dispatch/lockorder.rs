//! The dispatcher's lock hierarchy, and its check in debug builds.
//!
//! # The hierarchy (outermost first)
//!
//! | level | lock | protects | held across |
//! |---|---|---|---|
//! | 0 [`Level::Table`] | `Hypervisor::table` | VM table, system handles, memory limit | lookups and inserts only |
//! | 1 [`Level::VmState`] | `VmObject::state` | open flags, the vCPU table, QEMU's version | lookups and inserts only |
//! | 2 [`Level::VmCpuid`] | `VmObject::cpuid` | the VM's CPUID table (a `TryArc`, replaced whole) | a clone or a swap |
//! | 3 [`Level::VcpuSlot`] | `VcpuObject::slot` | whether the vCPU is idle, lent to a request, or gone | taking it out or putting it back |
//! | 4 [`Level::VmMemory`] | `VmObject::memory` | the `TryArc` of the VM's [`crate::memory::GuestMemory`] | a clone or a take |
//! | 5 (leaf) | `GuestMemory`'s own lock | RAM blocks, memslots, protections, EPT | one lookup or change, one copy of at most a page |
//!
//! A lock may be taken only while every lock held is of a lower level (outer). Every lock is
//! a spin lock, so the rule that keeps them cheap goes with it: **no lock is held across work
//! that can block, fault or take long**:
//! * pinning user memory (probe-and-lock) happens with no lock held: the memory module looks
//!   up under its lock, releases it, pins, and retakes it to install the pin
//!   ([`crate::memory::GuestMemory::handle_violation`]);
//! * a vCPU request does not hold the vCPU's lock while it works: it takes the vCPU *out* of
//!   its slot (level 3, a few instructions), works on it with no dispatcher lock held (RUN, the
//!   guest, the passive-level memory steps between RUN steps, VMX instructions on another CPU),
//!   and puts it back. A second request for the same vCPU meanwhile is refused
//!   ([`super::ErrorKind::VcpuInUse`]) instead of spinning for the length of a RUN; closing
//!   the vCPU meanwhile marks it, and the request in flight destroys it when it returns;
//! * the VM's memory is reached through a `TryArc` (a fallibly allocated `Arc`) cloned under
//!   level 4: the memory IOCTLs and RUN hold a reference, not a lock, and whoever drops the
//!   last reference of a destroyed VM's memory flushes and frees it (`TryArc::into_inner`:
//!   exactly one holder gets it);
//! * the INVEPT broadcast after a mapping change runs with no dispatcher lock held.
//!
//! The non-preemptible region of [`super::CpuRoots::with_current`] is entered with no lock
//! held at all, so no preempted lock holder can be spun on by a non-preemptible context.
//! The memory module's lock (level 5) is private to it and is a leaf: nothing is locked while
//! it is held (the closure of `with_translation` only copies through
//! [`super::UserMapping::guest_page`]).
//!
//! # The check
//!
//! Every dispatcher lock is an [`Ordered`] mutex with its level. Each public entry of the
//! dispatcher makes one [`LockTracker`] on its stack and passes it down, so the tracker follows
//! one call chain (one thread); every acquisition records its level in it and, in debug
//! builds, panics when a lock of the same or a higher (inner) level is already held: an
//! acquisition out of order, the recipe of an ABBA deadlock, shows up in any test that takes
//! the path, not only when two threads happen to interleave badly. Release builds keep the
//! tracker zero-sized and check nothing.

use core::ops::{Deref, DerefMut};

use spin::{Mutex, MutexGuard};

/// A lock's place in the hierarchy; lower is outer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// The hypervisor's object table.
    Table = 0,
    /// One VM's handle and vCPU table.
    VmState = 1,
    /// One VM's CPUID table.
    VmCpuid = 2,
    /// One vCPU's slot.
    VcpuSlot = 3,
    /// One VM's memory reference.
    VmMemory = 4,
}

/// An acquisition that breaks the hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderViolation {
    /// The lock being taken.
    pub taking: Level,
    /// The innermost lock held (at `taking`'s level or inside it).
    pub holding: u8,
}

/// The dispatcher locks one call chain holds (debug builds), as a bit per level.
#[derive(Debug, Default)]
pub struct LockTracker {
    #[cfg(debug_assertions)]
    held: core::cell::Cell<u8>,
}

impl LockTracker {
    /// Nothing held.
    pub const fn new() -> LockTracker {
        LockTracker {
            #[cfg(debug_assertions)]
            held: core::cell::Cell::new(0),
        }
    }

    /// Whether `level` may be taken now: no lock of that level or an inner one is held.
    /// Always `Ok` in release builds.
    pub fn check(&self, level: Level) -> Result<(), OrderViolation> {
        #[cfg(debug_assertions)]
        {
            let inner_or_same = self.held.get() >> (level as u8);
            if inner_or_same != 0 {
                return Err(OrderViolation {
                    taking: level,
                    holding: (level as u8) + (7 - inner_or_same.leading_zeros() as u8),
                });
            }
        }
        let _ = level;
        Ok(())
    }

    fn acquire(&self, level: Level) {
        #[cfg(debug_assertions)]
        {
            if let Err(v) = self.check(level) {
                // A broken invariant of the kernel's own code, never a consequence of input.
                panic!("lock order violated: {v:?}");
            }
            self.held.set(self.held.get() | 1 << (level as u8));
        }
        let _ = level;
    }

    fn release(&self, level: Level) {
        #[cfg(debug_assertions)]
        self.held.set(self.held.get() & !(1 << (level as u8)));
        let _ = level;
    }

    /// The levels held, as a bit mask (0 in release builds).
    pub fn held(&self) -> u8 {
        #[cfg(debug_assertions)]
        {
            self.held.get()
        }
        #[cfg(not(debug_assertions))]
        {
            0
        }
    }
}

/// A spin lock with a place in the hierarchy.
#[derive(Debug)]
pub struct Ordered<T> {
    level: Level,
    lock: Mutex<T>,
}

impl<T> Ordered<T> {
    /// A lock at `level` holding `value`.
    pub const fn new(level: Level, value: T) -> Ordered<T> {
        Ordered {
            level,
            lock: Mutex::new(value),
        }
    }

    /// Takes the lock, recording it in `tracker` (checked in debug builds).
    pub fn lock<'a>(&'a self, tracker: &'a LockTracker) -> OrderedGuard<'a, T> {
        tracker.acquire(self.level);
        OrderedGuard {
            guard: self.lock.lock(),
            tracker,
            level: self.level,
        }
    }

    /// The value, for the owner (no lock needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.lock.get_mut()
    }
}

/// A held [`Ordered`] lock.
pub struct OrderedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    tracker: &'a LockTracker,
    level: Level,
}

impl<T> Deref for OrderedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for OrderedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for OrderedGuard<'_, T> {
    fn drop(&mut self) {
        self.tracker.release(self.level);
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn in_order_acquisitions_pass_and_release_clears() {
        let t = LockTracker::new();
        let (a, b, c) = (
            Ordered::new(Level::Table, 1),
            Ordered::new(Level::VmState, 2),
            Ordered::new(Level::VmMemory, 3),
        );
        {
            let _a = a.lock(&t);
            let _b = b.lock(&t);
            let _c = c.lock(&t);
            assert_eq!(t.held(), 0b10011);
        }
        assert_eq!(t.held(), 0);
        // Sequential locks of one level (two VMs' states one after the other) are fine.
        let b2 = Ordered::new(Level::VmState, 4);
        drop(b.lock(&t));
        drop(b2.lock(&t));
    }

    #[test]
    fn out_of_order_is_reported() {
        let t = LockTracker::new();
        let inner = Ordered::new(Level::VcpuSlot, ());
        let _g = inner.lock(&t);
        assert_eq!(
            t.check(Level::VmState),
            Err(OrderViolation {
                taking: Level::VmState,
                holding: Level::VcpuSlot as u8,
            })
        );
        assert!(t.check(Level::VcpuSlot).is_err(), "the same level twice");
        assert!(t.check(Level::VmMemory).is_ok());
    }

    #[test]
    #[should_panic(expected = "lock order violated")]
    fn out_of_order_acquisition_panics_in_debug_builds() {
        let t = LockTracker::new();
        let table = Ordered::new(Level::Table, ());
        let memory = Ordered::new(Level::VmMemory, ());
        let _m = memory.lock(&t);
        let _t = table.lock(&t); // inner then outer: the ABBA recipe
    }
}
