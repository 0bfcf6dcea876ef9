//! Kernel (Ke) declarations (PLAT helper's room): processors and processor groups, affinity,
//! IPIs, IRQL, process attach, delays, and the HAL's performance counter. Layouts are the
//! documented x64 values of wdm.h, asserted below.
//!
//! IRQL on x64: `KeGetCurrentIrql`, `KeRaiseIrql` and `KeLowerIrql` are inline functions in
//! wdm.h that read and write CR8 (the task-priority register; Wine lacks the exported
//! `KeGetCurrentIrql`), so they are inline assembly here too.

#![allow(non_upper_case_globals)]

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

use super::NTSTATUS;

/// `KIRQL`.
pub type KIRQL = u8;
/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: KIRQL = 0;
/// `APC_LEVEL`.
pub const APC_LEVEL: KIRQL = 1;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: KIRQL = 2;

/// `ALL_PROCESSOR_GROUPS`.
pub const ALL_PROCESSOR_GROUPS: u16 = 0xffff;

/// `PROCESSOR_NUMBER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PROCESSOR_NUMBER {
    pub Group: u16,
    pub Number: u8,
    pub Reserved: u8,
}
const _: () = assert!(size_of::<PROCESSOR_NUMBER>() == 4);
const _: () = assert!(offset_of!(PROCESSOR_NUMBER, Number) == 2);

/// `GROUP_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GROUP_AFFINITY {
    pub Mask: usize,
    pub Group: u16,
    pub Reserved: [u16; 3],
}
const _: () = assert!(size_of::<GROUP_AFFINITY>() == 16);
const _: () = assert!(offset_of!(GROUP_AFFINITY, Group) == 8);

/// `KAPC_STATE` (0x30 bytes on x64), opaque: only `KeStackAttachProcess` and
/// `KeUnstackDetachProcess` touch it. Kept 0x40 bytes for margin.
#[repr(C, align(8))]
pub struct KAPC_STATE {
    pub opaque: [u8; 0x40],
}
const _: () = assert!(size_of::<KAPC_STATE>() >= 0x30);

/// `PKIPI_BROADCAST_WORKER`: runs on every processor at IPI_LEVEL with interrupts off.
pub type KIPI_BROADCAST_WORKER = unsafe extern "system" fn(argument: usize) -> usize;

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    /// Any IRQL. In Wine.
    pub fn KeQueryActiveProcessorCountEx(group: u16) -> u32;
    /// Any IRQL; returns the system-wide processor index. In Wine.
    pub fn KeGetCurrentProcessorNumberEx(number: *mut PROCESSOR_NUMBER) -> u32;
    /// Any IRQL. NOT in Wine 8.0 (never called on the Wine path).
    pub fn KeGetProcessorNumberFromIndex(index: u32, number: *mut PROCESSOR_NUMBER) -> NTSTATUS;
    /// IRQL <= APC_LEVEL. NOT in Wine 8.0 (never called on the Wine path).
    pub fn KeSetSystemGroupAffinityThread(
        affinity: *const GROUP_AFFINITY,
        previous: *mut GROUP_AFFINITY,
    );
    /// IRQL <= APC_LEVEL. NOT in Wine 8.0 (never called on the Wine path).
    pub fn KeRevertToUserGroupAffinityThread(previous: *const GROUP_AFFINITY);
    /// IRQL <= DISPATCH_LEVEL; `worker` runs on every processor at IPI_LEVEL. NOT in Wine 8.0
    /// (never called on the Wine path).
    pub fn KeIpiGenericCall(worker: KIPI_BROADCAST_WORKER, argument: usize) -> usize;
    /// IRQL <= APC_LEVEL. In Wine.
    pub fn KeDelayExecutionThread(mode: i8, alertable: u8, interval: *const i64) -> NTSTATUS;
    /// IRQL <= APC_LEVEL. In Wine.
    pub fn KeStackAttachProcess(process: *mut c_void, state: *mut KAPC_STATE);
    /// IRQL <= APC_LEVEL. In Wine.
    pub fn KeUnstackDetachProcess(state: *mut KAPC_STATE);
}

// The HAL exports the performance counter (the WDK documents it in Hal.dll; Wine 8.0 has it
// there only).
#[link(name = "HAL.dll", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    /// Any IRQL.
    pub fn KeQueryPerformanceCounter(frequency: *mut i64) -> i64;
}

/// `KeGetCurrentIrql` (wdm.h, AMD64: `ReadCR8()`).
///
/// # Safety
/// CPL 0 (MOV from CR8 faults in ring 3, e.g. under Wine).
#[inline(always)]
pub unsafe fn current_irql() -> KIRQL {
    let v: u64;
    // SAFETY: reading CR8 at CPL 0 has no side effect (caller's contract).
    unsafe {
        core::arch::asm!("mov {}, cr8", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v as KIRQL
}

/// `KfRaiseIrql` (wdm.h, AMD64: read CR8, write the new level): returns the old level.
///
/// # Safety
/// CPL 0; `new` >= the current IRQL; the caller lowers it back with [`lower_irql`].
#[inline(always)]
pub unsafe fn raise_irql(new: KIRQL) -> KIRQL {
    // SAFETY: CPL 0 (caller's contract).
    let old = unsafe { current_irql() };
    // SAFETY: raising the task priority only masks interrupts; wdm.h's KfRaiseIrql does this.
    // `memory` clobber: no access is moved out of the raised region by the compiler.
    unsafe {
        core::arch::asm!("mov cr8, {}", in(reg) u64::from(new), options(nostack, preserves_flags))
    };
    old
}

/// `KeLowerIrql` (wdm.h, AMD64: `WriteCR8(new)`): interrupts and DPCs held back meanwhile are
/// delivered by the local APIC once the priority drops.
///
/// # Safety
/// CPL 0; `old` is the value [`raise_irql`] returned.
#[inline(always)]
pub unsafe fn lower_irql(old: KIRQL) {
    // SAFETY: restores the level the caller raised from (caller's contract).
    unsafe {
        core::arch::asm!("mov cr8, {}", in(reg) u64::from(old), options(nostack, preserves_flags))
    };
}
