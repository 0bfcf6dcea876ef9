//! Architectural register bits the vCPU code tests (SDM Vol. 3A §2.5 "Control Registers",
//! §2.2.1 "Extended Feature Enable Register", Vol. 1 §3.4.3 "EFLAGS"): one list for every
//! room of `vcpu/`.

/// CR0.PE: protection enable.
pub const CR0_PE: u64 = 1;
/// CR0.TS: task switched.
pub const CR0_TS: u64 = 1 << 3;
/// CR0.EM: x87 emulation (SSE instructions #UD, SDM Vol. 3A §2.5).
pub const CR0_EM: u64 = 1 << 2;
/// CR0.WP: write protect (supervisor writes honour read-only pages).
pub const CR0_WP: u64 = 1 << 16;
/// CR0.NW: not write-through.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4-MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: physical-address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.OSFXSR: the OS supports FXSAVE/FXRSTOR and SSE (without it SSE instructions #UD).
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.VMXE: VMX enable.
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4.SMXE: SMX enable.
pub const CR4_SMXE: u64 = 1 << 14;
/// CR4.PCIDE: process-context identifiers.
pub const CR4_PCIDE: u64 = 1 << 17;
/// CR4.OSXSAVE: XSAVE and XCR0 enabled.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.PKE: protection keys for user pages (WRPKRU writes PKRU, which VMX does not switch).
pub const CR4_PKE: u64 = 1 << 22;
/// CR4.SMEP: supervisor-mode execution prevention.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: supervisor-mode access prevention.
pub const CR4_SMAP: u64 = 1 << 21;
/// IA32_EFER.LME: IA-32e mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// IA32_EFER.LMA: IA-32e mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// IA32_EFER.NXE: execute-disable enable.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS.IF: interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.DF: direction.
pub const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.NT: nested task.
pub const RFLAGS_NT: u64 = 1 << 14;
/// RFLAGS.VM: virtual-8086 mode.
pub const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS.AC: alignment check (SMAP override).
pub const RFLAGS_AC: u64 = 1 << 18;
