//! The input of the `dispatch` harness, decoded by `arbitrary`: `cargo fuzz fmt dispatch
//! FILE` prints it as the IOCTL sequence it stands for.

use arbitrary::Arbitrary;

use super::guest::GuestExit;

/// The whole fuzz input.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// CPU model index into [`MODELS`] (mostly the first).
    pub model: u8,
    /// Serve Windows codes (lengths "at least") instead of Linux ones ("exactly").
    pub windows: bool,
    /// Run QEMU's usual opening (system handle, VM, RAM block over the pool, low RAM mapped,
    /// vCPU 0 opened and its tunnel set up) before the operations.
    pub prologue: bool,
    /// Fail the n-th page allocation (counted from the start).
    pub fail_alloc_at: Option<u8>,
    /// Fail the n-th pin.
    pub fail_pin_at: Option<u8>,
    /// A small TSC frequency, so the RUN budget runs out within a few exits.
    pub short_budget: bool,
    /// The operations.
    pub ops: Vec<Op>,
}

/// One request (or harness action).
#[derive(Arbitrary, Debug)]
pub enum Op {
    OpenSystem,
    Close(u8),
    CreateVm(u8),
    OpenVm(u8),
    SetMemlimit {
        sys: u8,
        enable: bool,
        mb: u16,
    },
    Capability(u8),
    CreateVcpu {
        vm: u8,
        id: u8,
    },
    OpenVcpu {
        vm: u8,
        id: u8,
    },
    AddRamblock {
        vm: u8,
        start: u8,
        size: u8,
        reserved: bool,
    },
    AllocRam {
        vm: u8,
        va: u8,
        size: u8,
    },
    SetRam {
        vm: u8,
        gpa: u8,
        size: u8,
        va: u8,
        flags: u8,
    },
    SetRam2 {
        vm: u8,
        gpa: u8,
        size: u8,
        va: u8,
        flags: u8,
        reserved: bool,
    },
    ProtectRam {
        vm: u8,
        gpa: u8,
        size: u8,
        perm: u8,
    },
    NotifyQemu {
        vm: u8,
        cur: u32,
        least: u32,
    },
    SetupTunnel(u8),
    SetCpuid {
        vcpu: u8,
        entries: Vec<RawCpuid>,
        total: Option<u8>,
    },
    GetCpuid {
        vcpu: u8,
        total: u8,
    },
    SetRegs {
        vcpu: u8,
        preset: u8,
        changes: Vec<(u8, u64)>,
    },
    GetRegs(u8),
    SetFpu {
        vcpu: u8,
        fill: u8,
        changes: Vec<(u16, u8)>,
    },
    GetFpu(u8),
    Msrs {
        vcpu: u8,
        set: bool,
        entries: Vec<(u8, u32, u64)>,
        nr: Option<u8>,
    },
    Interrupt {
        vcpu: u8,
        vector: u32,
    },
    Kickoff(u8),
    Debug {
        vcpu: u8,
        control: u32,
        dr7: u64,
    },
    Stats {
        vcpu: u8,
        reset: bool,
    },
    /// Writes the tunnel's user-owned fields before a RUN.
    Tunnel {
        vcpu: u8,
        pause: bool,
        event: u32,
        window: i32,
    },
    /// Writes the IO buffer (the IN data / MMIO load value a RUN completes).
    IoBuffer {
        vcpu: u8,
        offset: u8,
        bytes: Vec<u8>,
    },
    /// Writes guest RAM (the pool's first 64 KiB: page tables, string-OUT data, code).
    GuestMem {
        offset: u16,
        bytes: Vec<u8>,
    },
    /// RUN with this guest script (then the guest takes an external interrupt).
    Run {
        vcpu: u8,
        script: Vec<GuestExit>,
    },
    /// Any code from the IOCTL table (or a made-up one) with any buffers, on any handle.
    Raw {
        handle: u8,
        def: u8,
        code: Option<u32>,
        input: Vec<u8>,
        out_len: u16,
    },
}

/// A CPUID entry as SET_CPUID takes it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RawCpuid {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub regs: [u32; 4],
}
