//! The `dispatch` harness: a [`Hypervisor`] over a pinning heap platform and the software
//! VMX, driven by a sequence of IOCTLs decoded from the fuzz input ([`Input`]), with a
//! scripted guest CPU ([`GuestExit`]) that produces every VM-exit kind on RUN.
//!
//! The operations are biased to succeed (existing handles, valid sizes, addresses from a small
//! pool of page-aligned offsets into one real buffer that stands for the user's RAM) so that
//! sequences reach deep states: mapped and protected RAM, vCPUs with hostile registers, MSRs,
//! CPUID tables, pending IN/MMIO completions, queued interrupts. A `Raw` operation sends
//! arbitrary codes and buffers to any handle for the shallow checks.
//!
//! Oracles (a broken one panics, libFuzzer reports a crash):
//! 1. nothing panics (rhax-core is built with debug assertions and overflow checks);
//! 2. a refused request changes nothing: `Hypervisor::snapshot()` before and after every
//!    failed request other than RUN is equal, and a refused SET_REGS leaves GET_REGS equal;
//! 3. after every handle is closed, every page the hypervisor allocated is back
//!    (`HeapPlatform::live_pages` at its value after `Hypervisor::new`), every pin is released
//!    and no VM is left in the snapshot.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use rhax_api::ioctl::{self, IoctlDef, IOCTLS};
use rhax_api::{
    AllocRamInfo, CpuidEntry, CpuidHeader, FxLayout, MsrData, Platform as Codes, Pod,
    ProtectRamInfo, QemuVersion, RamblockInfo, SetMemlimit, SetRamInfo, SetRamInfo2, TunnelInfo,
    VcpuDebug, VcpuState, VmxMsr, HAX_MAX_MSR_ARRAY,
};
use rhax_core::dispatch::{DispatchError, Handle, Hypervisor, SoftCpuRoots, UserMapping};
use rhax_core::memory::Translation;
use rhax_core::platform::{
    CpuIndex, HeapPlatform, PhysPages, PinnedMemory, Platform, PlatformError,
};
use rhax_core::vcpu::cpuid::CpuidTable;
use rhax_core::vmcs::VmcsField;
use rhax_core::vmx::negotiate::{negotiate, VmxControls};
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::soft::{msrs_from_tsv, GuestCpu, SoftVmx};

const TSV: &str = include_str!("../../driver/core/tests/data/bochs-vmx-msrs.tsv");

/// CPU models of the Bochs table: three that negotiate (without and with APIC
/// virtualization, with MTF) and one that is refused (no EPT).
const MODELS: [&str; 4] = [
    "corei7_skylake_x",
    "corei7_sandy_bridge_2600k",
    "corei7_icelake_u",
    "corei5_lynnfield_750",
];

/// The "user's RAM": one 2-MiB-aligned buffer, so 2-MiB EPT leaves are possible.
const POOL_SIZE: usize = 4 << 20;
/// The part of the pool rewritten at the start of every input (instructions live there).
const POOL_RESET: usize = 0x1_0000;
/// RAM-block starts, sizes and guest-physical addresses the biased operations pick from.
const OFFSETS: [u64; 6] = [0, 0x1000, 0x1_0000, 0x10_0000, 0x20_0000, 0x3f_f000];
const SIZES: [u64; 7] = [
    0x1000, 0x2000, 0x1_0000, 0x10_0000, 0x20_0000, 0x40_0000, 0x3000,
];
const GPAS: [u64; 8] = [
    0,
    0x1000,
    0xa_0000,
    0x10_0000,
    0x20_0000,
    0xfee0_0000,
    0xffff_f000,
    0x1_0000_0000,
];
/// MSRs the guest and SET/GET_MSRS pick from (EFER, APIC base, TSC, PAT, SYSENTER, FS/GS
/// bases, STAR/LSTAR, MTRRs, MISC_ENABLE, MCG, a PMU counter, an x2APIC register).
const MSRS: [u32; 20] = [
    0xc000_0080,
    0x1b,
    0x10,
    0x277,
    0x174,
    0x175,
    0x176,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0081,
    0xc000_0082,
    0x2ff,
    0x200,
    0x1a0,
    0x179,
    0x17a,
    0xc1,
    0x830,
    0x3a,
];

type Model = (
    Vec<(u32, u64)>,
    Result<VmxControls, rhax_api::CapabilityFailure>,
);

struct Fixture {
    models: Vec<Model>,
    cpuid: CpuidTable,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        models: MODELS
            .iter()
            .map(|m| {
                let msrs = msrs_from_tsv(TSV, m).expect("model in the table");
                let vmx = SoftVmx::new(msrs.clone());
                let host = negotiate(vmx.caps())
                    .map_err(|_| rhax_api::CapabilityFailure::VT | rhax_api::CapabilityFailure::NX);
                (msrs, host)
            })
            .collect(),
        // A fixed host CPUID (no CPUID instruction per input: slow under a hypervisor, and
        // not reproducible across machines).
        cpuid: CpuidTable::new(|leaf, _| match leaf {
            0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff],
            7 => [0, 0x029c_6fbf, 0, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, 0x121, 0x2c10_0800],
            0x8000_0008 => [0x3027, 0, 0, 0],
            _ => [0; 4],
        }),
    })
}

/// The pool, allocated once per process (page contents are the fuzz input's business).
fn pool() -> *mut u8 {
    static POOL: OnceLock<usize> = OnceLock::new();
    *POOL.get_or_init(|| {
        let layout = std::alloc::Layout::from_size_align(POOL_SIZE, 2 << 20).expect("layout");
        // SAFETY: non-zero size; the allocation lives for the whole process.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        p as usize
    }) as *mut u8
}

/// The VMXON region: one page for the whole process, handed to every input's `VmxRoot`.
/// `SoftCpuRoots` cannot give its root back (no `into_inner`), so a page allocated per input
/// could never be freed; a process-wide one is simply reused (one thread, and the software
/// model only writes the revision identifier into it).
fn vmxon_page() -> PhysPages {
    static PAGE: OnceLock<usize> = OnceLock::new();
    let p = *PAGE.get_or_init(|| {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // SAFETY: non-zero size; the allocation lives for the whole process.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        p as usize
    });
    let virt = NonNull::new(p as *mut u8).expect("allocated");
    // SAFETY: a zeroed, 4-KiB aligned page that lives forever; its previous owner (the
    // previous input's root) is gone, and "physical" addresses are made up on the host.
    unsafe { PhysPages::from_raw(virt, 0x1000, 1) }
}

/// [`HeapPlatform`] that pins for real (the "user address" is an address of this process,
/// "physical" = virtual: the software VMX never dereferences guest-physical addresses),
/// counts pins, and fails the n-th allocation or pin when asked.
pub struct FuzzPlatform {
    heap: HeapPlatform,
    pins: Cell<i64>,
    allocs: Cell<u32>,
    fail_alloc_at: Cell<Option<u32>>,
    pin_calls: Cell<u32>,
    fail_pin_at: Cell<Option<u32>>,
    tsc_frequency: Cell<u64>,
}

impl Platform for FuzzPlatform {
    fn alloc_pages(&self, count: usize) -> Result<PhysPages, PlatformError> {
        let n = self.allocs.get();
        self.allocs.set(n + 1);
        if self.fail_alloc_at.get() == Some(n) {
            return Err(PlatformError::OutOfMemory);
        }
        // Keep the fuzzer from asking the allocator for absurd sizes.
        if count > 1024 {
            return Err(PlatformError::OutOfMemory);
        }
        self.heap.alloc_pages(count)
    }
    fn free_pages(&self, pages: PhysPages) {
        self.heap.free_pages(pages)
    }
    fn pin(&self, user_address: u64, len: usize) -> Result<PinnedMemory, PlatformError> {
        let n = self.pin_calls.get();
        self.pin_calls.set(n + 1);
        if self.fail_pin_at.get() == Some(n) {
            return Err(PlatformError::BadUserAddress);
        }
        // Probe-and-lock: only the pool is "user memory" of this process.
        let start = pool() as u64;
        let end = start + POOL_SIZE as u64;
        let last = user_address
            .checked_add(len as u64)
            .ok_or(PlatformError::BadUserAddress)?;
        if user_address < start || last > end || len == 0 {
            return Err(PlatformError::BadUserAddress);
        }
        self.pins.set(self.pins.get() + 1);
        Ok(PinnedMemory {
            handle: self.pins.get() as usize,
            user_address,
            len,
        })
    }
    fn pinned_page(&self, pinned: &PinnedMemory, page_index: usize) -> Option<u64> {
        (page_index < pinned.len.div_ceil(4096))
            .then(|| (pinned.user_address & !0xfff) + page_index as u64 * 4096)
    }
    fn unpin(&self, _pinned: PinnedMemory) {
        self.pins.set(self.pins.get() - 1);
    }
    fn run_on_each_cpu(&self, f: &(dyn Fn(CpuIndex) + Sync)) {
        f(0)
    }
    fn run_on_cpu(&self, _cpu: CpuIndex, f: &(dyn Fn() + Sync)) {
        f()
    }
    fn current_cpu(&self) -> CpuIndex {
        0
    }
    fn cpu_count(&self) -> u32 {
        1
    }
    fn tsc(&self) -> u64 {
        self.heap.tsc()
    }
    fn tsc_frequency(&self) -> u64 {
        self.tsc_frequency.get()
    }
    fn kick(&self, _cpu: CpuIndex) {}
}

// SAFETY: the "user" is this process: a user address is a kernel address, and every pinned
// page lies in the pool, which lives for the whole process (the contract of
// `MappedGuestMemory::new`: the rest of the page behind `t.hva` is valid for reads and writes).
unsafe impl UserMapping for FuzzPlatform {
    fn map_user(&self, pages: &PhysPages) -> Result<u64, PlatformError> {
        Ok(pages.virt().as_ptr() as u64)
    }
    fn unmap_user(&self, _user_address: u64, _pages: &PhysPages) {}
    fn guest_page(t: &Translation) -> Option<NonNull<u8>> {
        let start = pool() as u64;
        // Only bytes inside the pool can be reached: a translation outside it is a bug in
        // the memory module (it handed out an address no pin covers).
        assert!(
            t.hva >= start && t.hva < start + POOL_SIZE as u64,
            "translation outside pinned memory: {t:?}"
        );
        NonNull::new(t.hva as *mut u8)
    }
}

/// The hypervisor under test.
pub type Hv = Hypervisor<FuzzPlatform, SoftCpuRoots>;

thread_local! {
    static TALLY: RefCell<Option<std::collections::BTreeMap<String, u64>>> =
        const { RefCell::new(None) };
}

/// Counts request outcomes while [`tally_start`] is in effect (for `examples/tally.rs`: which
/// requests succeed, which exit statuses RUN reaches). Free otherwise.
fn tally(what: impl FnOnce() -> String) {
    TALLY.with(|t| {
        if let Some(m) = t.borrow_mut().as_mut() {
            *m.entry(what()).or_default() += 1;
        }
    });
}

fn no_snapshot() -> bool {
    static S: OnceLock<bool> = OnceLock::new();
    *S.get_or_init(|| std::env::var_os("RHAX_FUZZ_NO_SNAPSHOT").is_some())
}

/// Starts counting request outcomes on this thread.
pub fn tally_start() {
    TALLY.with(|t| *t.borrow_mut() = Some(Default::default()));
}

/// The counts so far.
pub fn tally_take() -> std::collections::BTreeMap<String, u64> {
    TALLY.with(|t| t.borrow_mut().take().unwrap_or_default())
}

// ------------------------------------------------------------------------ the input

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

/// What the scripted guest CPU does between one entry and the next exit.
#[derive(Arbitrary, Debug, Clone)]
pub struct GuestExit {
    pub kind: ExitKind,
    /// IDT-vectoring information (an event whose delivery the exit interrupted).
    pub vectoring: Option<(u8, u8, u32)>,
    /// A GPR the guest changed.
    pub gpr: Option<(u8, u64)>,
    /// Guest state the guest changed (RFLAGS, interruptibility, CR0/CR4, CS access rights).
    pub state: Option<(u8, u64)>,
}

/// The exit kinds; each builds a plausible exit, `Raw` anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum ExitKind {
    Io {
        port: u16,
        size: u8,
        inward: bool,
        imm: bool,
    },
    StringIo {
        port: u16,
        size: u8,
        inward: bool,
        rep: bool,
        linear: u16,
        info: u32,
        df: bool,
    },
    /// An EPT violation at an unmapped address with this instruction at RIP (in the pool).
    Mmio {
        gpa: u8,
        offset: u32,
        qual: u8,
        rip: u16,
        insn: Insn,
        mode: u8,
    },
    /// An EPT violation on RAM (the first touch of a chunk, a ROM write, a protected page).
    EptRam {
        gpa: u8,
        offset: u16,
        qual: u16,
    },
    Cr {
        qual: u32,
    },
    Rdmsr {
        msr: u8,
        raw: Option<u32>,
    },
    Wrmsr {
        msr: u8,
        raw: Option<u32>,
        value: u64,
    },
    Cpuid {
        leaf: u32,
        sub: u32,
    },
    Hlt,
    TripleFault,
    ExternalInterrupt,
    InterruptWindow,
    PreemptionTimer,
    Exception {
        info: u32,
    },
    EntryFailure {
        how: u8,
    },
    Dr {
        qual: u32,
    },
    Other {
        reason: u8,
        qual: u64,
        len: u8,
    },
    Raw {
        reason: u32,
        qual: u64,
        len: u32,
        fields: Vec<(u8, u64)>,
    },
}

/// Instruction bytes for an MMIO exit: a MOV form from a template, or raw bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Insn {
    Template {
        which: u8,
        prefixes: u8,
        rex: u8,
        modrm: u8,
        tail: [u8; 8],
    },
    Raw([u8; 15]),
}

impl Insn {
    fn bytes(&self) -> [u8; 15] {
        match self {
            Insn::Raw(b) => *b,
            Insn::Template {
                which,
                prefixes,
                rex,
                modrm,
                tail,
            } => {
                const OPS: [&[u8]; 13] = [
                    &[0x88],
                    &[0x89],
                    &[0x8a],
                    &[0x8b],
                    &[0xc6],
                    &[0xc7],
                    &[0xa0],
                    &[0xa1],
                    &[0xa2],
                    &[0xa3],
                    &[0x0f, 0xb6],
                    &[0x0f, 0xb7],
                    &[0x0f, 0xbe],
                ];
                let mut out = [0x90u8; 15];
                let mut n = 0;
                for (bit, p) in [0x66u8, 0x67, 0x2e, 0xf3, 0x65].iter().enumerate() {
                    if prefixes & (1 << bit) != 0 {
                        out[n] = *p;
                        n += 1;
                    }
                }
                if prefixes & 0x80 != 0 {
                    out[n] = 0x40 | (rex & 0xf);
                    n += 1;
                }
                for b in OPS[usize::from(*which) % OPS.len()] {
                    out[n] = *b;
                    n += 1;
                }
                // C6/C7 need /0; keep the mod field away from register form mostly.
                let mut m = *modrm;
                if matches!(OPS[usize::from(*which) % OPS.len()], [0xc6] | [0xc7]) {
                    m &= !0x38;
                }
                out[n] = m;
                n += 1;
                for b in tail {
                    if n < 15 {
                        out[n] = *b;
                        n += 1;
                    }
                }
                out
            }
        }
    }
}

// ------------------------------------------------------------------------ state

struct VcpuRef {
    handle: Handle,
    /// Tunnel and IO buffer kernel addresses once SETUP_TUNNEL answered (valid while the
    /// handle is open: the vCPU lives at least as long).
    tunnel: Option<(u64, u64)>,
}

struct World {
    h: Rc<Hv>,
    systems: Vec<Handle>,
    vms: Vec<(Handle, u32)>,
    vcpus: Vec<VcpuRef>,
    /// Closed handles, to be sent requests again (they must be refused).
    stale: Vec<Handle>,
    /// Guest exits the CPU hook plays, shared with it.
    script: Rc<RefCell<VecDeque<GuestExit>>>,
    /// Entries past the script (the hook then answers with an external interrupt).
    extra: Rc<Cell<u32>>,
}

fn pick<T>(v: &[T], i: u8) -> Option<&T> {
    if v.is_empty() {
        None
    } else {
        v.get(usize::from(i) % v.len())
    }
}

impl World {
    fn code(&self, def: &IoctlDef) -> u32 {
        def.code(self.h.codes()).unwrap_or(0xdead_0000)
    }

    /// One request, with the "refusal changes nothing" oracle.
    fn call(
        &self,
        handle: Handle,
        def: &IoctlDef,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DispatchError> {
        let code = self.code(def);
        self.call_code(handle, code, input, out)
    }

    fn call_code(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DispatchError> {
        let run = Some(code) == ioctl::HAX_VCPU_IOCTL_RUN.code(self.h.codes());
        if run {
            let r = self.h.dispatch(handle, code, input, out);
            tally(|| {
                let status = self
                    .vcpus
                    .iter()
                    .find(|v| v.handle == handle)
                    .and_then(|v| v.tunnel)
                    // SAFETY: the tunnel of an open vCPU handle; offset 8 is `_exit_status`.
                    .map(|(t, _)| unsafe { (t as *const u32).add(2).read_volatile() });
                match &r {
                    Ok(_) => format!("RUN ok status {status:?}"),
                    Err(e) => format!("RUN err {:?}", e.kind),
                }
            });
            return r;
        }
        if no_snapshot() {
            return self.h.dispatch(handle, code, input, out);
        }
        let before = self.h.snapshot();
        let r = self.h.dispatch(handle, code, input, out);
        tally(|| match &r {
            Ok(_) => format!("{code:#x} ok"),
            Err(e) => format!("{code:#x} err {:?}", e.kind),
        });
        if let Err(e) = &r {
            let after = self.h.snapshot();
            assert_eq!(
                before, after,
                "a refused request changed the hypervisor: code {code:#x}: {e}"
            );
        }
        if let Ok(n) = r {
            assert!(
                n <= out.len(),
                "reported {n} bytes written into {}",
                out.len()
            );
        }
        r
    }

    fn vm(&self, i: u8) -> Option<(Handle, u32)> {
        pick(&self.vms, i).copied()
    }

    fn vcpu(&self, i: u8) -> Option<Handle> {
        pick(&self.vcpus, i).map(|v| v.handle)
    }

    fn sized<T: Pod>(&self, v: &T) -> Vec<u8> {
        v.as_bytes().to_vec()
    }

    fn pool_addr(off: u8) -> u64 {
        pool() as u64 + OFFSETS[usize::from(off) % OFFSETS.len()]
    }

    fn size(s: u8) -> u64 {
        SIZES[usize::from(s) % SIZES.len()]
    }

    fn gpa(g: u8) -> u64 {
        GPAS[usize::from(g) % GPAS.len()]
    }

    fn open_system(&mut self) {
        let s = self.h.open_system();
        self.systems.push(s);
    }

    fn create_vm(&mut self, sys: u8) -> Option<u32> {
        let s = *pick(&self.systems, sys)?;
        let mut id = [0u8; 4];
        self.call(s, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id)
            .ok()?;
        Some(u32::from_le_bytes(id))
    }

    fn open_vm(&mut self, id: u32) {
        if let Ok(h) = self.h.open_vm(id) {
            self.vms.push((h, id));
        }
    }

    fn create_vcpu(&mut self, vm: u8, id: u8) {
        let Some((h, _)) = self.vm(vm) else { return };
        // Mostly ids 0..4; sometimes anything (16+ must be refused).
        let id = if id & 0x80 != 0 {
            u32::from(id)
        } else {
            u32::from(id & 3)
        };
        let _ = self.call(
            h,
            &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
            &id.to_le_bytes(),
            &mut [],
        );
    }

    fn open_vcpu(&mut self, vm: u8, id: u8) {
        // A VM id from the open handles, or from the snapshot (a VM whose handle is closed).
        let vm_id = match self.vm(vm) {
            Some((_, id)) if vm & 0x80 == 0 => id,
            _ => u32::from(vm & 3),
        };
        if let Ok(handle) = self.h.open_vcpu(vm_id, u32::from(id & 3)) {
            self.vcpus.push(VcpuRef {
                handle,
                tunnel: None,
            });
        }
    }

    fn setup_tunnel(&mut self, i: u8) {
        let Some(h) = self.vcpu(i) else { return };
        let mut out = [0u8; TunnelInfo::SIZE];
        if self
            .call(h, &ioctl::HAX_VCPU_IOCTL_SETUP_TUNNEL, &[], &mut out)
            .is_ok()
        {
            let ti = TunnelInfo::from_bytes(&out).expect("size");
            let idx = usize::from(i) % self.vcpus.len();
            if let Some(prev) = self.vcpus[idx].tunnel {
                assert_eq!(
                    prev,
                    (ti.va, ti.io_va),
                    "SETUP_TUNNEL answers the same pages"
                );
            }
            self.vcpus[idx].tunnel = Some((ti.va, ti.io_va));
        }
    }

    fn close(&mut self, i: u8) {
        let total = self.systems.len() + self.vms.len() + self.vcpus.len() + self.stale.len();
        if total == 0 {
            return;
        }
        let mut k = usize::from(i) % total;
        let handle = if k < self.systems.len() {
            self.systems.remove(k)
        } else {
            k -= self.systems.len();
            if k < self.vms.len() {
                self.vms.remove(k).0
            } else {
                k -= self.vms.len();
                if k < self.vcpus.len() {
                    self.vcpus.remove(k).handle
                } else {
                    // A second close of a closed handle: refused, nothing changes.
                    k -= self.vcpus.len();
                    let h = self.stale[k];
                    let before = self.h.snapshot();
                    assert!(self.h.close(h).is_err(), "a closed handle closed twice");
                    assert_eq!(before, self.h.snapshot(), "a refused close changed state");
                    return;
                }
            }
        };
        self.h.close(handle).expect("closing an open handle");
        self.stale.push(handle);
    }

    fn tunnel(&self, i: u8) -> Option<(u64, u64)> {
        pick(&self.vcpus, i).and_then(|v| v.tunnel)
    }

    fn get_regs(&self, h: Handle) -> Option<VcpuState> {
        let mut out = [0u8; VcpuState::SIZE];
        self.call(h, &ioctl::HAX_VCPU_GET_REGS, &[], &mut out)
            .ok()?;
        VcpuState::from_bytes(&out)
    }

    fn set_regs(&self, h: Handle, preset: u8, changes: &[(u8, u64)]) {
        let Some(mut s) = self.get_regs(h) else {
            return;
        };
        match preset % 5 {
            // Real mode, flat: what the scripted MMIO fetches assume.
            1 => {
                s.cr0 = 0x10;
                s.cr4 = 0;
                s.rflags = 2;
                s.cs.selector = 0;
                s.cs.base = 0;
                s.cs.limit = 0xffff;
                s.cs.ar = 0x9b;
            }
            // 32-bit protected, flat.
            2 => {
                s.cr0 = 0x11;
                s.rflags = 2;
                s.cs.base = 0;
                s.cs.limit = 0xffff_ffff;
                s.cs.ar = 0xc09b;
            }
            // 64-bit: paging, PAE, CS.L (EFER comes through SET_MSRS).
            3 => {
                s.cr0 = 0x8000_0011;
                s.cr4 = 0x20;
                s.cr3 = 0x1000;
                s.rflags = 2;
                s.cs.ar = 0xa09b;
            }
            4 => s.rflags = 0x202,
            _ => {}
        }
        // Hostile changes: any 8 bytes of the state.
        let mut bytes = s.as_bytes().to_vec();
        for (at, v) in changes.iter().take(8) {
            let off = (usize::from(*at) * 8) % VcpuState::SIZE;
            bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        let before = self.get_regs(h);
        if self
            .call(h, &ioctl::HAX_VCPU_SET_REGS, &bytes, &mut [])
            .is_err()
        {
            assert_eq!(
                before.map(|s| s.as_bytes().to_vec()),
                self.get_regs(h).map(|s| s.as_bytes().to_vec()),
                "a refused SET_REGS changed the registers"
            );
        }
    }

    fn run(&self, i: u8, script: &[GuestExit]) {
        let Some(h) = self.vcpu(i) else { return };
        {
            let mut s = self.script.borrow_mut();
            s.clear();
            s.extend(script.iter().take(24).cloned());
        }
        self.extra.set(0);
        let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_RUN, &[], &mut []);
        self.script.borrow_mut().clear();
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::OpenSystem => {
                if self.systems.len() < 4 {
                    self.open_system()
                }
            }
            Op::Close(i) => self.close(*i),
            Op::CreateVm(s) => {
                if let Some(id) = self.create_vm(*s) {
                    // Usually opened right away, as QEMU does.
                    if s & 0x80 == 0 {
                        self.open_vm(id);
                    }
                }
            }
            Op::OpenVm(id) => self.open_vm(u32::from(id % 4)),
            Op::SetMemlimit { sys, enable, mb } => {
                let Some(&s) = pick(&self.systems, *sys) else {
                    return;
                };
                let m = SetMemlimit {
                    enable_memlimit: u8::from(*enable),
                    pad: [0; 7],
                    memory_limit: if *mb == 0xffff {
                        u64::MAX >> 4
                    } else {
                        u64::from(*mb)
                    },
                };
                let _ = self.call(s, &ioctl::HAX_IOCTL_SET_MEMLIMIT, m.as_bytes(), &mut []);
            }
            Op::Capability(s) => {
                let Some(&s) = pick(&self.systems, *s) else {
                    return;
                };
                let mut out = [0u8; 16];
                let _ = self.call(s, &ioctl::HAX_IOCTL_CAPABILITY, &[], &mut out);
            }
            Op::CreateVcpu { vm, id } => self.create_vcpu(*vm, *id),
            Op::OpenVcpu { vm, id } => self.open_vcpu(*vm, *id),
            Op::AddRamblock {
                vm,
                start,
                size,
                reserved,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let b = RamblockInfo {
                    start_va: Self::pool_addr(*start),
                    size: Self::size(*size),
                    reserved: u64::from(*reserved),
                };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK,
                    &self.sized(&b),
                    &mut [],
                );
            }
            Op::AllocRam { vm, va, size } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let b = AllocRamInfo {
                    size: Self::size(*size) as u32,
                    pad: 0,
                    va: Self::pool_addr(*va),
                };
                let _ = self.call(h, &ioctl::HAX_VM_IOCTL_ALLOC_RAM, &self.sized(&b), &mut []);
            }
            Op::SetRam {
                vm,
                gpa,
                size,
                va,
                flags,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let invalid = flags & 0x80 != 0;
                let b = SetRamInfo {
                    pa_start: Self::gpa(*gpa),
                    size: Self::size(*size) as u32,
                    flags: *flags,
                    pad: [0; 3],
                    va: if invalid && flags & 0x20 == 0 {
                        0
                    } else {
                        Self::pool_addr(*va)
                    },
                };
                let _ = self.call(h, &ioctl::HAX_VM_IOCTL_SET_RAM, &self.sized(&b), &mut []);
            }
            Op::SetRam2 {
                vm,
                gpa,
                size,
                va,
                flags,
                reserved,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                // Flags: every combination of ROM, STANDALONE and INVALID, and sometimes an
                // unknown bit.
                let mut f = 0u32;
                if flags & 1 != 0 {
                    f |= 0x01;
                }
                if flags & 2 != 0 {
                    f |= 0x40;
                }
                if flags & 4 != 0 {
                    f |= 0x80;
                }
                if flags & 8 != 0 {
                    f |= 1 << (flags >> 4);
                }
                let b = SetRamInfo2 {
                    pa_start: Self::gpa(*gpa),
                    size: Self::size(*size),
                    va: if f & 0x80 != 0 && flags & 0x10 == 0 {
                        0
                    } else {
                        Self::pool_addr(*va)
                    },
                    flags: f,
                    reserved1: u32::from(*reserved),
                    reserved2: 0,
                };
                let _ = self.call(h, &ioctl::HAX_VM_IOCTL_SET_RAM2, &self.sized(&b), &mut []);
            }
            Op::ProtectRam {
                vm,
                gpa,
                size,
                perm,
            } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let b = ProtectRamInfo {
                    pa_start: Self::gpa(*gpa),
                    size: Self::size(*size),
                    flags: match perm % 4 {
                        0 => 0,
                        1 => 7,
                        2 => u32::from(*perm),
                        _ => 7 | 0x100,
                    },
                    reserved: 0,
                };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VM_IOCTL_PROTECT_RAM,
                    &self.sized(&b),
                    &mut [],
                );
            }
            Op::NotifyQemu { vm, cur, least } => {
                let Some((h, _)) = self.vm(*vm) else { return };
                let q = QemuVersion {
                    cur_version: *cur,
                    least_version: *least,
                };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VM_IOCTL_NOTIFY_QEMU_VERSION,
                    q.as_bytes(),
                    &mut [],
                );
            }
            Op::SetupTunnel(i) => self.setup_tunnel(*i),
            Op::SetCpuid {
                vcpu,
                entries,
                total,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let entries: Vec<_> = entries.iter().take(70).collect();
                let n = total.map_or(entries.len() as u32, u32::from);
                let header = CpuidHeader {
                    total: n,
                    pad: 0,
                    entries: [],
                };
                let mut buf = header.as_bytes().to_vec();
                for e in &entries {
                    let c = CpuidEntry {
                        function: e.function,
                        index: e.index,
                        flags: e.flags,
                        eax: e.regs[0],
                        ebx: e.regs[1],
                        ecx: e.regs[2],
                        edx: e.regs[3],
                        ..CpuidEntry::default()
                    };
                    buf.extend_from_slice(c.as_bytes());
                }
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_SET_CPUID, &buf, &mut []);
            }
            Op::GetCpuid { vcpu, total } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let header = CpuidHeader {
                    total: u32::from(*total),
                    pad: 0,
                    entries: [],
                };
                let n = usize::from(*total).min(64);
                let mut out = vec![0u8; 8 + n * CpuidEntry::SIZE];
                let _ = self.call(
                    h,
                    &ioctl::HAX_VCPU_IOCTL_GET_CPUID,
                    header.as_bytes(),
                    &mut out,
                );
            }
            Op::SetRegs {
                vcpu,
                preset,
                changes,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                self.set_regs(h, *preset, changes);
            }
            Op::GetRegs(i) => {
                if let Some(h) = self.vcpu(*i) {
                    let _ = self.get_regs(h);
                }
            }
            Op::SetFpu {
                vcpu,
                fill,
                changes,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let mut b = vec![*fill; FxLayout::SIZE];
                for (at, v) in changes.iter().take(16) {
                    let i = usize::from(*at) % FxLayout::SIZE;
                    b[i] = *v;
                }
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_SET_FPU, &b, &mut []);
            }
            Op::GetFpu(i) => {
                let Some(h) = self.vcpu(*i) else { return };
                let mut out = vec![0u8; FxLayout::SIZE];
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_GET_FPU, &[], &mut out);
            }
            Op::Msrs {
                vcpu,
                set,
                entries,
                nr,
            } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let mut d = MsrData {
                    nr_msr: 0,
                    done: 0,
                    pad: 0,
                    entries: [VmxMsr::default(); HAX_MAX_MSR_ARRAY],
                };
                for (k, (sel, raw, value)) in entries.iter().take(HAX_MAX_MSR_ARRAY).enumerate() {
                    let msr = if sel & 0x80 != 0 {
                        *raw
                    } else {
                        MSRS[usize::from(*sel) % MSRS.len()]
                    };
                    d.entries[k] = VmxMsr {
                        entry: u64::from(msr),
                        value: *value,
                    };
                    d.nr_msr = k as u16 + 1;
                }
                if let Some(n) = nr {
                    d.nr_msr = u16::from(*n);
                }
                let def = if *set {
                    &ioctl::HAX_VCPU_IOCTL_SET_MSRS
                } else {
                    &ioctl::HAX_VCPU_IOCTL_GET_MSRS
                };
                let mut out = [0u8; MsrData::SIZE];
                if self.call(h, def, d.as_bytes(), &mut out).is_ok() {
                    let back = MsrData::from_bytes(&out).expect("size");
                    assert!(
                        back.done <= d.nr_msr,
                        "done {} > nr_msr {}",
                        back.done,
                        d.nr_msr
                    );
                }
            }
            Op::Interrupt { vcpu, vector } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let _ = self.call(
                    h,
                    &ioctl::HAX_VCPU_IOCTL_INTERRUPT,
                    &vector.to_le_bytes(),
                    &mut [],
                );
            }
            Op::Kickoff(i) => {
                let Some(h) = self.vcpu(*i) else { return };
                let _ = self.call(h, &ioctl::HAX_VCPU_IOCTL_KICKOFF, &[], &mut []);
            }
            Op::Debug { vcpu, control, dr7 } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let d = VcpuDebug {
                    control: *control,
                    reserved: 0,
                    dr: [0, 0, 0, 0, 0, 0, 0, *dr7],
                };
                let _ = self.call(h, &ioctl::HAX_IOCTL_VCPU_DEBUG, d.as_bytes(), &mut []);
            }
            Op::Stats { vcpu, reset } => {
                let Some(h) = self.vcpu(*vcpu) else { return };
                let (def, n) = if *reset {
                    (&rhax_api::ext::RHAX_VCPU_IOCTL_RESET_STATS, 0)
                } else {
                    (
                        &rhax_api::ext::RHAX_VCPU_IOCTL_GET_STATS,
                        rhax_api::ext::VcpuStats::SIZE,
                    )
                };
                let mut out = vec![0u8; n];
                let _ = self.call(h, def, &[], &mut out);
            }
            Op::Tunnel {
                vcpu,
                pause,
                event,
                window,
            } => {
                let Some((t, _)) = self.tunnel(*vcpu) else {
                    return;
                };
                let p = t as *mut u32;
                // SAFETY: the tunnel page of an open vCPU handle (it lives as long as the
                // vCPU); user space owns these fields (haxm-abi.md §4).
                unsafe {
                    if *pause {
                        p.write_volatile(rhax_api::tunnel::HAX_EXIT_REASON_PAUSE_REQUEST);
                    }
                }
                // SAFETY: as above (offset 12: user_event_pending).
                unsafe { p.add(3).write_volatile(*event) };
                // SAFETY: as above (offset 20: request_interrupt_window).
                unsafe { p.add(5).write_volatile(*window as u32) };
            }
            Op::IoBuffer {
                vcpu,
                offset,
                bytes,
            } => {
                let Some((_, io)) = self.tunnel(*vcpu) else {
                    return;
                };
                let off = usize::from(*offset);
                let n = bytes.len().min(4096 - off);
                // SAFETY: the IO buffer page of an open vCPU (4 KiB), `off + n <= 4096`.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), (io as *mut u8).add(off), n)
                };
            }
            Op::GuestMem { offset, bytes } => {
                let off = usize::from(*offset) % POOL_RESET;
                let n = bytes.len().min(POOL_RESET - off);
                // SAFETY: `off + n <= POOL_RESET <= POOL_SIZE`: inside the pool (the guest's
                // RAM, touched by the core only through pins, on this thread).
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), pool().add(off), n) };
            }
            Op::Run { vcpu, script } => self.run(*vcpu, script),
            Op::Raw {
                handle,
                def,
                code,
                input,
                out_len,
            } => {
                let all: Vec<Handle> = self
                    .systems
                    .iter()
                    .copied()
                    .chain(self.vms.iter().map(|v| v.0))
                    .chain(self.vcpus.iter().map(|v| v.handle))
                    .chain(self.stale.iter().copied())
                    .collect();
                let Some(&h) = pick(&all, *handle) else {
                    return;
                };
                let code = match code {
                    Some(c) => *c,
                    None => self.code(&IOCTLS[usize::from(*def) % IOCTLS.len()]),
                };
                if Some(code) == ioctl::HAX_VCPU_IOCTL_RUN.code(self.h.codes()) {
                    // RUN goes through `Op::Run` (with a script).
                    return;
                }
                let mut out = vec![0u8; usize::from(*out_len) % 4096];
                let _ = self.call_code(h, code, input, &mut out);
            }
        }
    }

    /// QEMU's opening: system handle, VM 0 opened, a RAM block over the pool, the first
    /// 1 MiB of guest RAM from the pool, vCPU 0 opened with its tunnel.
    fn prologue(&mut self) {
        self.open_system();
        let Some(id) = self.create_vm(0) else { return };
        self.open_vm(id);
        let Some((vm, _)) = self.vms.last().copied() else {
            return;
        };
        let b = RamblockInfo {
            start_va: pool() as u64,
            size: POOL_SIZE as u64,
            reserved: 0,
        };
        let _ = self.call(vm, &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK, b.as_bytes(), &mut []);
        let r = SetRamInfo {
            pa_start: 0,
            size: 0x10_0000,
            flags: 0,
            pad: [0; 3],
            va: pool() as u64,
        };
        let _ = self.call(vm, &ioctl::HAX_VM_IOCTL_SET_RAM, r.as_bytes(), &mut []);
        let _ = self.call(
            vm,
            &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
            &0u32.to_le_bytes(),
            &mut [],
        );
        let n = self.vms.len() as u8 - 1;
        self.open_vcpu(n, 0);
        if !self.vcpus.is_empty() {
            self.setup_tunnel(self.vcpus.len() as u8 - 1);
        }
    }
}

// ------------------------------------------------------------------------ the guest CPU

/// Plays one scripted exit: writes what the CPU would into the VMCS and the registers.
fn play(c: &mut GuestCpu<'_>, e: &GuestExit) {
    if let Some((reg, v)) = e.gpr {
        c.regs.gpr[usize::from(reg) % 16] = v;
    }
    if let Some((which, v)) = e.state {
        let field = match which % 6 {
            0 => VmcsField::GuestRflags,
            1 => VmcsField::GuestInterruptibilityState,
            2 => VmcsField::GuestCr0,
            3 => VmcsField::GuestCr4,
            4 => VmcsField::GuestCsAccessRights,
            _ => VmcsField::GuestCr3,
        };
        c.write(field, v);
    }
    match e.vectoring {
        Some((kind, vector, code)) => {
            // What a CPU reports (SDM §28.2.4): valid, a type, a vector that fits the type
            // (NMI is 2, exceptions below 32), the error-code bit only for the exceptions
            // that push one.
            let kind = [0u32, 2, 3, 4, 5, 6][usize::from(kind) % 6];
            let vector = match kind {
                2 => 2,
                3 | 5 | 6 => u32::from(vector) % 32,
                _ => u32::from(vector).max(32),
            };
            let has_code = kind == 3 && matches!(vector, 8 | 10..=14 | 17 | 21);
            let info = (1 << 31) | (u32::from(has_code) << 11) | (kind << 8) | vector;
            c.write(VmcsField::IdtVectoringInformation, u64::from(info));
            c.write(VmcsField::IdtVectoringErrorCode, u64::from(code));
        }
        None => c.write(VmcsField::IdtVectoringInformation, 0),
    }
    match &e.kind {
        ExitKind::Io {
            port,
            size,
            inward,
            imm,
        } => {
            let size = [1u64, 2, 4, 3][usize::from(*size) % 4];
            let q = (size - 1)
                | (u64::from(*inward) << 3)
                | (u64::from(*imm) << 6)
                | (u64::from(*port) << 16);
            c.exit(30, q, if *imm { 2 } else { 1 });
        }
        ExitKind::StringIo {
            port,
            size,
            inward,
            rep,
            linear,
            info,
            df,
        } => {
            let size = [1u64, 2, 4][usize::from(*size) % 3];
            let q = (size - 1)
                | (u64::from(*inward) << 3)
                | (1 << 4)
                | (u64::from(*rep) << 5)
                | (u64::from(*port) << 16);
            c.write(VmcsField::GuestLinearAddress, u64::from(*linear));
            c.write(VmcsField::VmExitInstructionInformation, u64::from(*info));
            if *df {
                let f = c.read(VmcsField::GuestRflags);
                c.write(VmcsField::GuestRflags, f | (1 << 10));
            }
            c.exit(30, q, 1 + u32::from(*rep));
        }
        ExitKind::Mmio {
            gpa,
            offset,
            qual,
            rip,
            insn,
            mode,
        } => {
            // The instruction in guest RAM at CS.base + RIP: the harness maps guest-physical
            // 0 onto the pool's start, and real/flat modes make linear = physical.
            let rip = u64::from(*rip) % (POOL_RESET as u64 - 16);
            let bytes = insn.bytes();
            // SAFETY: `rip + 15 < POOL_RESET <= POOL_SIZE`: inside the pool, which the guest
            // owns (the core reads it only through pinned translations, on this thread).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), pool().add(rip as usize), 15) };
            c.write(VmcsField::GuestRip, rip);
            match mode % 4 {
                // Real mode, flat.
                0 => {
                    c.write(VmcsField::GuestCr0, 0x10);
                    c.write(VmcsField::GuestCsBase, 0);
                    c.write(VmcsField::GuestCsAccessRights, 0x9b);
                }
                // 32-bit flat.
                1 => {
                    c.write(VmcsField::GuestCr0, 0x11);
                    c.write(VmcsField::GuestCsBase, 0);
                    c.write(VmcsField::GuestCsAccessRights, 0xc09b);
                }
                // Whatever the guest state is (paging, 64-bit...).
                _ => {}
            }
            let gpa = W::gpa(*gpa).wrapping_add(u64::from(*offset) & 0xf_ffff);
            c.write(VmcsField::GuestPhysicalAddress, gpa);
            c.exit(48, u64::from(*qual & 0x3f) | 0x180, 0);
        }
        ExitKind::EptRam { gpa, offset, qual } => {
            c.write(
                VmcsField::GuestPhysicalAddress,
                W::gpa(*gpa) + u64::from(*offset),
            );
            c.exit(48, u64::from(*qual), 0);
        }
        ExitKind::Cr { qual } => c.exit(28, u64::from(*qual), 3),
        ExitKind::Rdmsr { msr, raw } => {
            c.regs.gpr[1] = u64::from(raw.unwrap_or(MSRS[usize::from(*msr) % MSRS.len()]));
            c.exit(31, 0, 2);
        }
        ExitKind::Wrmsr { msr, raw, value } => {
            c.regs.gpr[1] = u64::from(raw.unwrap_or(MSRS[usize::from(*msr) % MSRS.len()]));
            c.regs.gpr[0] = value & 0xffff_ffff;
            c.regs.gpr[2] = value >> 32;
            c.exit(32, 0, 2);
        }
        ExitKind::Cpuid { leaf, sub } => {
            c.regs.gpr[0] = u64::from(*leaf);
            c.regs.gpr[1] = u64::from(*sub);
            c.exit(10, 0, 2);
        }
        ExitKind::Hlt => c.exit(12, 0, 1),
        ExitKind::TripleFault => c.exit(2, 0, 0),
        ExitKind::ExternalInterrupt => c.exit(1, 0, 0),
        ExitKind::InterruptWindow => c.exit(7, 0, 0),
        ExitKind::PreemptionTimer => c.exit(52, 0, 0),
        ExitKind::Exception { info } => {
            c.write(VmcsField::VmExitInterruptionInformation, u64::from(*info));
            c.exit(0, 0, 0);
        }
        ExitKind::EntryFailure { how } => {
            // The next VM entry fails its guest-state checks (SDM §27.3.1, §27.8): the model
            // CPU reports exit reason 33 with bit 31 and leaves the launch state as it was.
            // (A hook cannot fake that exit itself: the entry it runs in succeeded.)
            match how % 3 {
                // RFLAGS bit 1 clear (SDM §27.3.1.4).
                0 => {
                    let f = c.read(VmcsField::GuestRflags);
                    c.write(VmcsField::GuestRflags, f & !2);
                }
                // CR0.PG without CR0.PE (SDM §27.3.1.1).
                1 => c.write(VmcsField::GuestCr0, 0x8000_0010),
                // A reserved activity state.
                _ => c.write(VmcsField::GuestActivityState, 7),
            }
            // CPUID: handled in the kernel, which enters the guest again at once.
            c.exit(10, 0, 2);
        }
        ExitKind::Dr { qual } => c.exit(29, u64::from(*qual), 3),
        ExitKind::Other { reason, qual, len } => {
            c.exit(u32::from(*reason % 70), *qual, u32::from(*len % 16))
        }
        ExitKind::Raw {
            reason,
            qual,
            len,
            fields,
        } => {
            const FIELDS: [VmcsField; 8] = [
                VmcsField::GuestPhysicalAddress,
                VmcsField::GuestLinearAddress,
                VmcsField::VmExitInstructionInformation,
                VmcsField::VmExitInterruptionInformation,
                VmcsField::VmExitInterruptionErrorCode,
                VmcsField::GuestRip,
                VmcsField::GuestCsBase,
                VmcsField::GuestActivityState,
            ];
            for (f, v) in fields.iter().take(8) {
                c.write(FIELDS[usize::from(*f) % FIELDS.len()], *v);
            }
            // Bit 31 (VM-entry failure) only comes from a failed entry, never from a guest.
            c.exit(*reason & 0x7fff_ffff, *qual, *len);
        }
    }
}

/// Shorthand for the pools in [`play`].
struct W;

impl W {
    fn gpa(g: u8) -> u64 {
        World::gpa(g)
    }
}

// ------------------------------------------------------------------------ the target

fn model(input: &Input) -> usize {
    if input.model >= 0xf0 {
        usize::from(input.model) % MODELS.len()
    } else {
        usize::from(input.model) % 3
    }
}

/// A model CPU in VMX root operation, as it is after VMXON.
fn fresh_root(m: usize) -> VmxRoot<SoftVmx> {
    let vmx = SoftVmx::new(fixture().models[m].0.iter().copied());
    // SAFETY: software model, one thread.
    match unsafe { VmxRoot::enable(vmx, 0, vmxon_page(), 1) } {
        Ok(r) => r,
        Err(e) => panic!("VMXON on the model: {:?}", e.0),
    }
}

fn hypervisor(m: usize, windows: bool) -> Hv {
    let f = fixture();
    let platform = FuzzPlatform {
        heap: HeapPlatform::new(),
        pins: Cell::new(0),
        allocs: Cell::new(0),
        fail_alloc_at: Cell::new(None),
        pin_calls: Cell::new(0),
        fail_pin_at: Cell::new(None),
        tsc_frequency: Cell::new(1_000_000_000),
    };
    let codes = if windows {
        Codes::Windows
    } else {
        Codes::Linux
    };
    Hypervisor::new(platform, SoftCpuRoots::new(fresh_root(m)), codes, f.models[m].1)
        .with_cpuid(f.cpuid.clone())
}

thread_local! {
    /// One hypervisor per (CPU model, codes), reused by every input: `Hypervisor::new` builds
    /// the host CPUID table with the CPUID instruction (about 65% of an input's time under a
    /// hypervisor) even when `with_cpuid` replaces it. Reuse is sound because every input
    /// ends with every handle closed and the oracles check that this leaves nothing behind;
    /// the model CPU is replaced by a fresh one at each input's start and the memory limit
    /// reset at its end, so an input's outcome does not depend on the ones before.
    static HYPERVISORS: RefCell<std::collections::HashMap<(usize, bool), Rc<Hv>>> =
        RefCell::new(std::collections::HashMap::new());
}

fn reused(input: &Input) -> Rc<Hv> {
    let key = (model(input), input.windows);
    let h = HYPERVISORS.with(|m| {
        m.borrow_mut()
            .entry(key)
            .or_insert_with(|| Rc::new(hypervisor(key.0, key.1)))
            .clone()
    });
    h.roots().with_soft(|root| *root = fresh_root(key.0));
    let p = h.platform();
    p.allocs.set(0);
    p.pin_calls.set(0);
    p.tsc_frequency.set(if input.short_budget {
        20_000
    } else {
        1_000_000_000
    });
    h
}

/// Runs one input with every oracle.
pub fn run(input: &Input) {
    // SAFETY: the pool is this process's; the first part is reset so MMIO fetches see the
    // input's bytes only.
    unsafe { std::ptr::write_bytes(pool(), 0, POOL_RESET) };
    let h = reused(input);
    let baseline = h.platform().heap.live_pages.load(Ordering::Relaxed);
    h.platform()
        .fail_alloc_at
        .set(input.fail_alloc_at.map(|n| u32::from(n) + 1));
    h.platform()
        .fail_pin_at
        .set(input.fail_pin_at.map(u32::from));
    let script: Rc<RefCell<VecDeque<GuestExit>>> = Rc::default();
    let extra = Rc::new(Cell::new(0u32));
    {
        let script = script.clone();
        let extra = extra.clone();
        h.roots().with_soft(|root| {
            root.vmx().set_hook(move |c: &mut GuestCpu<'_>| {
                let next = script.borrow_mut().pop_front();
                match next {
                    Some(e) => play(c, &e),
                    None => {
                        // Past the script: an external interrupt always returns to the
                        // caller (no in-kernel loop can keep the RUN going).
                        extra.set(extra.get() + 1);
                        c.write(VmcsField::IdtVectoringInformation, 0);
                        c.exit(1, 0, 0);
                    }
                }
            })
        });
    }
    let mut w = World {
        h,
        systems: Vec::new(),
        vms: Vec::new(),
        vcpus: Vec::new(),
        stale: Vec::new(),
        script,
        extra,
    };
    if input.prologue {
        w.prologue();
    }
    for op in input.ops.iter().take(64) {
        w.op(op);
        assert!(
            w.extra.get() <= 1,
            "RUN entered the guest again after an external interrupt"
        );
    }
    // Close everything: vCPUs, then VMs, then system handles (and once more in the reverse
    // order's worth: a VM handle closed before its vCPUs lives on for them).
    let vcpus: Vec<Handle> = w.vcpus.drain(..).map(|v| v.handle).collect();
    for v in vcpus {
        w.h.close(v).expect("close vCPU");
    }
    let vms: Vec<Handle> = w.vms.drain(..).map(|v| v.0).collect();
    for v in vms {
        w.h.close(v).expect("close VM");
    }
    let systems: Vec<Handle> = w.systems.drain(..).collect();
    for s in systems {
        w.h.close(s).expect("close system");
    }
    let snap = w.h.snapshot();
    // A VM created by CREATE_VM on a system handle and opened, whose vCPU was created but
    // never opened, is destroyed with the VM handle; everything must be gone.
    assert!(
        snap.vms.is_empty(),
        "objects left after every handle closed: {snap:?}"
    );
    assert_eq!(snap.system_handles, 0);
    let live = w.h.platform().heap.live_pages.load(Ordering::Relaxed);
    assert_eq!(live, baseline, "pages leaked after every handle closed");
    assert_eq!(
        w.h.platform().pins.get(),
        0,
        "pins leaked after every handle closed"
    );
    // Back to the default memory quota for the next input (SET_MEMLIMIT needs no VM).
    if snap.mem_limit != Some(rhax_core::dispatch::DEFAULT_MEM_QUOTA) {
        let sys = w.h.open_system();
        let m = SetMemlimit {
            enable_memlimit: 1,
            pad: [0; 7],
            memory_limit: rhax_core::dispatch::DEFAULT_MEM_QUOTA >> 20,
        };
        let code = w.code(&ioctl::HAX_IOCTL_SET_MEMLIMIT);
        w.h.dispatch(sys, code, m.as_bytes(), &mut [])
            .expect("restoring the memory limit");
        w.h.close(sys).expect("close system");
    }
}
