//! The HAXM vCPU: RUN with HAXM's exit statuses and tunnel protocol, event injection, and the
//! register/FPU/MSR/CPUID IOCTL semantics (haxm-abi.md §2, §4, §6, §8; SDM Vol. 3C chapters
//! 27-29, 2023+ numbering).
//!
//! One RUN: complete the pending IN / MMIO read from the IO buffer, honour a pause request
//! (`_exit_reason == 8`), then loop: inject, enter, handle the exit in the kernel when HAXM
//! does (CPUID, MSRs, CR access, interrupt window, RAM EPT violations, HLT with a vector
//! queued) or fill the tunnel and return. RUN returns within a bounded time: the
//! VMX-preemption timer (when the CPU has it) cuts a guest that never exits after
//! [`TIME_SLICE_US`], and in-kernel resumes stop after [`RUN_BUDGET_US`] (counted from the
//! start of the RUN, across all its steps).
//!
//! # Steps: no guest-memory work in the non-preemptible region
//!
//! [`HaxVcpu::run`] and [`HaxVcpu::resume`] execute inside the shell's non-preemptible region
//! (`CpuRoots::with_current`: raised IRQL on Windows, interrupts off on bare metal). Guest
//! memory must not be touched there: resolving an EPT violation may pin user memory
//! (probe-and-lock, legal only at IRQL <= APC_LEVEL, and it may fault and block), and every
//! guest-memory access takes [`crate::memory::GuestMemory`]'s spin lock, whose holder may be
//! a preempted passive-level thread of the same CPU. So neither takes a
//! [`GuestMemoryAccess`] at all: an exit that needs guest memory (an EPT violation, a string
//! OUT, the completion of a string IN) ends the step with [`RunStep::NeedMemory`] after
//! capturing, from the VMCS, everything the memory work needs. The caller leaves the region,
//! calls [`HaxVcpu::complete_memory`] at passive level and, when that answers
//! [`AfterMemory::Resume`], re-enters the region and calls [`HaxVcpu::resume`], which finishes
//! the exit and re-enters the guest (VMRESUME) without redoing anything the first step did.
//! Exits without memory work (CPUID, MSRs, port IO, HLT, interrupt window) are handled in one
//! step as before, with no extra VMREAD or VMWRITE.
//!
//! Between steps the vCPU is not loaded on any CPU in a way a migration could break: every
//! step ends with [`Vcpu::put`] (host MSRs and FPU back), dirty VMCS fields stay in the cache
//! (kept by a VMCLEAR on migration, `VmcsCache::invalidate_all`), and the continuation reads
//! no VM-exit information field (the first step captured them). Each step starts by making
//! the VMCS current ([`RunError::ActiveElsewhere`] before any side effect when it is still
//! active on another CPU, for the caller to VMCLEAR there and retry).

use crate::vcpu::bits::{CR0_PG, EFER_LMA, EFER_LME, RFLAGS_AC, RFLAGS_DF, RFLAGS_IF, RFLAGS_VM};
use alloc::boxed::Box;

use rhax_api::cpuid::CpuidEntry;
use rhax_api::debug::{DebugControl, VcpuDebug};
use rhax_api::ext;
use rhax_api::fpu::FxLayout;
use rhax_api::msr::{MsrData, VmxMsr, HAX_MAX_MSRS_PER_CALL};
use rhax_api::pod::Pod;
use rhax_api::tunnel::{
    ExitStatus, FastMmio, Tunnel, TunnelIo, TunnelPageFault, TunnelPayload,
    HAX_EXIT_REASON_PAUSE_REQUEST,
};
use rhax_api::vcpu::{SegmentDesc, VcpuState};

use crate::emulate::{self, CpuMode, Extend, Operation, Register};
use crate::memory::{EptAccess, MemoryError, Resolution};
use crate::platform::{PhysPages, Platform, PlatformError};
use crate::vcpu::cpuid::{CpuidError, CpuidTable};
use crate::vcpu::guest::{
    fetch_linear, probe_linear, read_linear, write_linear, Access, AccessKind, GuestMemoryAccess,
    PagingMode, WalkError,
};
use crate::vcpu::{skip_instruction, CreateError, RunError, StillResident, Vcpu};
use crate::vmcs::exit::{CrAccessType, InterruptionType, IoDirection, VmExit};
use crate::vmcs::stats::{ExitCounters, SETUP_BUCKET};
use crate::vmcs::{Vmcs, VmcsField};
use crate::vmx::caps::{EntryControls, PrimaryProcControls};
use crate::vmx::instructions::reg;
use crate::vmx::negotiate::{OptionalFeatures, VmxControls};
use crate::vmx::root::{
    VmxRoot, IA32_APIC_BASE, IA32_DEBUGCTL, IA32_EFER, IA32_FS_BASE, IA32_GS_BASE, IA32_PAT,
    IA32_SYSENTER_CS, IA32_SYSENTER_EIP, IA32_SYSENTER_ESP, IA32_TSC,
};
use crate::vmx::{Counted, VmFail, Vmx};

mod apic;
mod apic_exits;
mod apic_state;
mod apic_vid;
mod apic_virt;
mod debug;
pub use debug::StepRoute;
mod events;
mod exits;
pub use exits::{TaskSource, TaskSwitch, Unemulated};
mod run;
mod state;
mod tunnel;

/// Longest stretch in the guest without a VM exit when the preemption timer exists (µs).
pub const TIME_SLICE_US: u64 = 4_000;
/// After this long in one RUN, an in-kernel resume returns INTERRUPT instead (µs). With the
/// slice, RUN comes back within 9 ms (issue 5: at most 10 ms).
pub const RUN_BUDGET_US: u64 = 5_000;

/// Why a HAXM vCPU operation failed. The dispatcher maps these to HAXM's statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaxError {
    /// vCPU creation failed.
    Create(CreateError),
    /// A platform service failed.
    Platform(PlatformError),
    /// The VMCS could not be made current or accessed (HAXM: -EFAULT / UNSUCCESSFUL).
    Vmcs(RunError),
    /// VMLAUNCH/VMRESUME failed with VMfailValid/VMfailInvalid (HAXM RUN: -EINVAL /
    /// UNSUCCESSFUL, `_exit_status = HAX_EXIT_UNKNOWN`). The vCPU stays usable.
    EntryFailed(VmFail),
    /// VM entry failed while checking or loading guest state (exit reason 33, 34 or 41 with
    /// bit 31). Reported like HAXM's VM-entry failure; SET_REGS with a valid state fixes it.
    InvalidGuestState {
        /// Basic exit reason.
        reason: u16,
        /// Exit qualification (SDM §27.8).
        qualification: u64,
    },
    /// `nr_msr` of SET/GET_MSRS is 32 or more (HAXM: -EFAULT / INVALID_PARAMETER).
    TooManyMsrs {
        /// The count asked for.
        nr_msr: u16,
    },
    /// SET_CPUID refused.
    Cpuid(CpuidError),
    /// Completing an MMIO read at the start of RUN failed (HAXM: RUN returns +1 / UNSUCCESSFUL
    /// and the vCPU has panicked).
    EmulationFailed,
    /// The memory layer failed.
    Memory(MemoryError),
    /// Not available on this CPU (VCPU_DEBUG hardware breakpoints without the
    /// load-debug-controls entry control).
    Unsupported(&'static str),
    /// [`HaxVcpu::resume`] or [`HaxVcpu::complete_memory`] called with no step waiting for
    /// it (a caller bug; nothing changed).
    NothingToResume,
    /// A value from the caller that would fault in the host or fail VM entry (an MXCSR bit
    /// outside the host's MXCSR_MASK, ...); nothing changed.
    InvalidValue(crate::vcpu::checked::Refused),
    /// RHAX_VCPU_IOCTL_SET_APIC_STATE refused the state; nothing changed.
    ApicState(crate::apic::ApicStateError),
}

/// How one step of RUN inside the non-preemptible region ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStep {
    /// The RUN is over: the tunnel holds the exit.
    Done,
    /// The exit needs guest memory, which must not be touched inside the region: leave it,
    /// call [`HaxVcpu::complete_memory`], and on [`AfterMemory::Resume`] re-enter it and call
    /// [`HaxVcpu::resume`]. The request says what is pending (the vCPU keeps its own copy).
    NeedMemory(MemoryRequest),
}

/// Guest-memory work a RUN step left for passive level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryRequest {
    /// The string IN (INS) of the previous exit: `len` bytes of the IO buffer go to guest
    /// linear address `linear`, translated in the paging mode of that exit.
    CompleteIns {
        /// Lowest linear address.
        linear: u64,
        /// Bytes (at most 64).
        len: usize,
        /// Paging mode at the exit.
        mode: PagingMode,
        /// The guest's privilege for the writes.
        access: Access,
    },
    /// A string IN (INS) exit, before it goes to user space: the guest's paging must allow
    /// writing the `len` bytes at `linear`, or the guest takes #PF instead of the exit
    /// (hardware checks the destination before the port is read).
    ProbeIns {
        /// Lowest linear address.
        linear: u64,
        /// Bytes (at most 64).
        len: usize,
        /// Paging mode at the exit.
        mode: PagingMode,
        /// The guest's privilege for the writes.
        access: Access,
    },
    /// An EPT violation: resolve it (lazy pin and map of RAM, or MMIO); when it is not RAM,
    /// fetch the instruction at `fetch` for the MMIO emulator.
    EptViolation {
        /// Guest-physical address of the access.
        gpa: u64,
        /// Exit-qualification bits 2:0.
        access: EptAccess,
        /// The whole exit qualification (for HAX_EXIT_PAGEFAULT's flags).
        qualification: u64,
        /// Where the faulting instruction is.
        fetch: Fetch,
    },
    /// A task switch (exit reason 9): descriptor tables and TSSs are read and written at
    /// passive level.
    TaskSwitch(exits::TaskSwitch),
    /// The MMIO instruction in flight needs guest memory or the saved FPU state (the passive
    /// route of the emulator: MOVS, CMPS, PUSH/POP m, SSE moves, page-crossing accesses).
    Emulate,
    /// A string OUT (OUTS): `len` bytes from guest linear address `linear` go to the IO
    /// buffer. The exit (HAX_EXIT_IO) is otherwise complete; nothing follows in the region.
    StringOut {
        /// Lowest linear address.
        linear: u64,
        /// Bytes (at most 64).
        len: usize,
        /// Paging mode at the exit.
        mode: PagingMode,
        /// The guest's privilege for the reads.
        access: Access,
    },
}

/// Where an instruction that faulted on MMIO is, read from the VMCS at the exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// Linear address of its first byte (CS base + RIP).
    pub linear: u64,
    /// Paging mode.
    pub mode: PagingMode,
    /// Decoding mode.
    pub cpu_mode: CpuMode,
    /// The guest's privilege for the fetch.
    pub access: Access,
}

/// What [`HaxVcpu::complete_memory`] leaves to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterMemory {
    /// Re-enter the non-preemptible region and call [`HaxVcpu::resume`].
    Resume,
    /// The RUN is over (the tunnel holds the exit).
    Done,
}

/// An EPT violation resolved at passive level, waiting for [`HaxVcpu::resume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resolved {
    gpa: u64,
    qualification: u64,
    resolution: Resolution,
    /// The instruction bytes (when not RAM): `got` of them, then why the fetch stopped if
    /// the guest's paging refused a page.
    fetched: [u8; emulate::MAX_LENGTH],
    got: usize,
    fault: Option<WalkError>,
    cpu_mode: CpuMode,
    /// Paging mode and privilege at the exit (the general MMIO path's accesses).
    mode: PagingMode,
    user: bool,
}

/// Where a RUN stands between its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// No step waits.
    Idle,
    /// [`HaxVcpu::complete_memory`] must do this.
    Waiting(MemoryRequest),
    /// The string IN completion is done: [`HaxVcpu::resume`] goes on with the RUN.
    InsDone,
    /// [`HaxVcpu::resume`] finishes this EPT violation.
    Violation(Resolved),
    /// The guest's paging refused an access the host made for it: [`HaxVcpu::resume`]
    /// undoes what the exit's first step did to the registers and injects #PF.
    Fault {
        /// CR2.
        linear: u64,
        /// The #PF error code.
        code: u32,
    },
    /// [`HaxVcpu::resume`] injects this exception (a task switch the architecture refuses).
    Exception {
        /// Vector.
        vector: u8,
        /// Error code.
        code: u32,
    },
    /// [`HaxVcpu::resume`] loads this task (a task switch done at passive level).
    TaskSwitched(Box<exits::NewTask>),
    /// [`HaxVcpu::resume`] applies the passive route's outcome of the MMIO instruction.
    Emulated(exits::Outcome),
    /// A host-side copy for the guest (string IO, the MMIO instruction's memory, a task
    /// switch) touched a page PROTECT_RAM protects: [`HaxVcpu::resume`] takes the string IO
    /// exit back when `undo`, and the RUN ends with PAGEFAULT (`flags`: EPT-violation
    /// qualification bits 0-2, read/write/fetch).
    Protected { gpa: u64, flags: u32, undo: bool },
}

/// `pagefault.flags` of a host-side read, write and fetch (the EPT-violation qualification's
/// access bits, as for the guest's own accesses).
const PF_FLAG_READ: u32 = 1;
const PF_FLAG_WRITE: u32 = 2;
const PF_FLAG_FETCH: u32 = 4;

/// What a string IO exit changed before its memory was touched, to be undone when the
/// guest's paging refuses the access (the instruction then faults without any effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StringUndo {
    /// RSI (OUTS) or RDI (INS), and its value before.
    index: usize,
    old_index: u64,
    old_rcx: u64,
    /// RIP before, when the exit moved it.
    old_rip: Option<u64>,
}

impl From<RunError> for HaxError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Entry(f) => HaxError::EntryFailed(f),
            other => HaxError::Vmcs(other),
        }
    }
}

impl From<VmFail> for HaxError {
    fn from(e: VmFail) -> Self {
        HaxError::Vmcs(RunError::Vmx(e))
    }
}

/// Why the vCPU panicked (STATECHANGE on this and every later RUN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicReason {
    /// Triple fault or shutdown (exit reason 2).
    TripleFault,
    /// An exit reason rhax does not handle.
    UnhandledExit {
        /// Basic exit reason.
        reason: u16,
    },
    /// A machine check or double fault reflected by the guest (exit reason 0).
    FatalException {
        /// Vector.
        vector: u8,
    },
    /// An MMIO instruction the emulator does not carry out (its bytes and address).
    Unemulated(exits::Unemulated),
    /// Guest memory needed by string IO or MMIO could not be walked or read.
    GuestMemory(WalkError),
    /// EPT misconfiguration.
    EptMisconfig {
        /// Guest-physical address.
        gpa: u64,
    },
}

/// An IN or MMIO read waiting for user-space data, completed at the next RUN (quirk 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// IN: AL/AX/EAX from the IO buffer.
    In {
        size: u8,
    },
    /// INS: `len` bytes from the IO buffer to guest memory at `linear` (paging `mode`).
    Ins {
        linear: u64,
        len: usize,
        mode: PagingMode,
        access: Access,
    },
    /// MMIO load: `FastMmio.value` into a register, then RIP += `length`.
    MmioLoad {
        dest: Register,
        dest_size: u8,
        size: u8,
        extend: Extend,
        length: u8,
    },
}

/// What an exit handler decided.
enum Next {
    /// Enter the guest again.
    Resume,
    /// Return to user space with this status.
    User(ExitStatus),
    /// End the step: guest memory is needed (outside the non-preemptible region). The
    /// request waits in `HaxVcpu::step` ([`HaxVcpu::wait_for_memory`]): `Next` stays two
    /// bytes, so the RUN path's moves of it and of its `Result` are register moves, not
    /// copies of the largest request (issue 13).
    Memory,
}

/// Basic exit reason of IO instructions (SDM Appendix C).
const EXIT_REASON_IO: u32 = 30;
/// Basic exit reason of EPT violations.
const EXIT_REASON_EPT_VIOLATION: u16 = 48;

const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_DEFAULT: u64 = 0xfee0_0000;
const VALID: u32 = 1 << 31;

/// The HAXM vCPU.
pub struct HaxVcpu {
    /// Boxed: keeps `HaxVcpu` small enough to move on a 2 KiB frame budget.
    core: Box<Vcpu>,
    tunnel: PhysPages,
    iobuf: PhysPages,
    vcpu_id: u32,
    pending: Pending,
    /// Queued vectors (HAX_VCPU_IOCTL_INTERRUPT), bit per vector.
    vectors: [u64; 4],
    panicked: Option<PanicReason>,
    apic_base: u64,
    /// The guest's own DR0-3 and DR6 (MOV-DR exiting keeps them in software; the CPU holds
    /// the host's, or the debugger's while it runs the guest).
    drs: [u64; 5],
    /// The VCPU_DEBUG session and the breakpoint registers in the CPU. Boxed: VCPU_CREATE
    /// builds `HaxVcpu` in a frame that must stay under 2 KiB (`cargo xtask stack`).
    dbg: Box<debug::DebugRegs>,
    /// MSRs HAXM accepts and keeps without effect (MTRRs, MCE banks, PMU, MISC_ENABLE...).
    soft_msrs: alloc::vec::Vec<u64>,
    preemption_ticks: Option<u32>,
    window_on: bool,
    runs: u64,
    user_exits: u64,
    /// Where the RUN in progress stands between steps.
    step: Step,
    /// How to take back the string IO exit whose memory step is pending.
    undo: Option<StringUndo>,
    /// The MMIO instruction in flight on the general path (boxed, allocated at creation).
    emu: Box<exits::Emulation>,
    /// Plain MOVs to MMIO skip the general emulator (on by default; off to measure it).
    mmio_fast_path: bool,
    /// The passive step in progress re-executes the last RUN's MMIO instruction (the RUN then
    /// goes on as a fresh one).
    emu_from_start: bool,
    /// TSC at the start of the RUN's guest loop, and the budget in TSC ticks (it spans all
    /// the RUN's steps).
    run_start: u64,
    run_budget: u64,
    /// The in-kernel local APIC (RHAX_VM_IOCTL_ENABLE_APIC), boxed: most VMs have none.
    apic: Option<Box<apic::ApicUnit>>,
}

fn tsc_ticks(platform: &impl Platform, us: u64) -> u64 {
    platform.tsc_frequency() / 1_000_000 * us
}

/// The core vCPU, boxed. Its own frame: the by-value `Vcpu` and its `Result` (~1.2 KiB) stay
/// out of [`HaxVcpu::new`]'s, which otherwise exceeds the 2 KiB budget of an IOCTL path in
/// the Windows image (`cargo xtask sys`).
#[inline(never)]
fn boxed_core<P: Platform>(
    platform: &P,
    controls: &VmxControls,
    vpid: u16,
    eptp: u64,
) -> Result<Box<Vcpu>, HaxError> {
    let core = Vcpu::new(platform, controls, vpid, eptp).map_err(HaxError::Create)?;
    crate::heap::try_box(core).map_err(|core| {
        let _ = core.destroy(platform);
        HaxError::Platform(PlatformError::OutOfMemory)
    })
}

impl HaxVcpu {
    /// Creates a vCPU in HAXM's power-on state with its tunnel page and IO buffer. VPID is
    /// `(vm_id << 8) | (vcpu_id + 1)` as HAXM; `eptp` comes from the VM's memory. The
    /// VMX-preemption timer is used when `controls` offers it.
    // Its own frame: the vCPU it builds is moved once into a box by the caller.
    #[inline(never)]
    pub fn new<P: Platform>(
        platform: &P,
        controls: &VmxControls,
        vm_id: u32,
        vcpu_id: u32,
        eptp: u64,
    ) -> Result<HaxVcpu, HaxError> {
        let mut controls = *controls;
        let mut preemption_ticks = None;
        if let Ok(c) = controls.with(OptionalFeatures::PREEMPTION_TIMER) {
            controls = c;
            // SDM §26.5.1: the timer counts down by 1 every 2^rate TSC ticks.
            let ticks = tsc_ticks(platform, TIME_SLICE_US) >> controls.preemption_timer_rate;
            preemption_ticks = Some(ticks.clamp(1, u64::from(u32::MAX)) as u32);
        }
        // The software-kept MSRs live on the heap, allocated fallibly (no frame on the
        // VCPU_CREATE path holds them).
        let mut soft_msrs = alloc::vec::Vec::new();
        soft_msrs
            .try_reserve_exact(exits::SOFT_MSRS)
            .map_err(|_| HaxError::Platform(PlatformError::OutOfMemory))?;
        soft_msrs.resize(exits::SOFT_MSRS, 0);
        let emu = crate::heap::try_box(exits::Emulation::default())
            .map_err(|_| HaxError::Platform(PlatformError::OutOfMemory))?;
        let dbg = crate::heap::try_box(debug::DebugRegs::default())
            .map_err(|_| HaxError::Platform(PlatformError::OutOfMemory))?;
        let vpid = (((vm_id & 0xff) << 8) | ((vcpu_id & 0xff) + 1)) as u16;
        let core = boxed_core(platform, &controls, vpid, eptp)?;
        let tunnel = match platform.alloc_pages(1) {
            Ok(p) => p,
            Err(e) => {
                let _ = core.destroy(platform);
                return Err(HaxError::Platform(e));
            }
        };
        let iobuf = match platform.alloc_pages(1) {
            Ok(p) => p,
            Err(e) => {
                let _ = core.destroy(platform);
                platform.free_pages(tunnel);
                return Err(HaxError::Platform(e));
            }
        };
        let mut v = HaxVcpu {
            core,
            tunnel,
            iobuf,
            vcpu_id,
            pending: Pending::None,
            vectors: [0; 4],
            panicked: None,
            apic_base: APIC_DEFAULT
                | APIC_BASE_ENABLE
                | if vcpu_id == 0 { APIC_BASE_BSP } else { 0 },
            drs: [0, 0, 0, 0, 0xffff_0ff0],
            dbg,
            soft_msrs,
            preemption_ticks,
            window_on: false,
            runs: 0,
            user_exits: 0,
            step: Step::Idle,
            undo: None,
            emu,
            mmio_fast_path: true,
            emu_from_start: false,
            run_start: 0,
            run_budget: 0,
            apic: None,
        };
        v.publish_apic_base();
        Ok(v)
    }

    /// Frees everything. The VMCS must not be active on a CPU (`Vcpu::unload` there first);
    /// otherwise everything is leaked instead ([`StillResident`]; no allocation on the close
    /// path).
    pub fn destroy<P: Platform>(mut self, platform: &P) -> Result<(), StillResident> {
        if self.core.resident_cpu().is_some() {
            // See `Vcpu::destroy`: a CPU may still write the VMCS.
            core::mem::forget(self);
            return Err(StillResident);
        }
        self.release_apic(platform);
        let HaxVcpu {
            core,
            tunnel,
            iobuf,
            ..
        } = self;
        (*core).destroy(platform)?;
        platform.free_pages(tunnel);
        platform.free_pages(iobuf);
        Ok(())
    }

    /// The tunnel page and the IO buffer page (kernel addresses; the shell maps them to user
    /// space once and reports the same addresses on every SETUP_TUNNEL).
    pub fn tunnel_pages(&self) -> (&PhysPages, &PhysPages) {
        (&self.tunnel, &self.iobuf)
    }

    /// The core vCPU (VMCS access, counters, migration).
    pub fn core(&mut self) -> &mut Vcpu {
        &mut self.core
    }

    /// Why the vCPU panicked, if it did.
    pub fn panic_reason(&self) -> Option<PanicReason> {
        self.panicked
    }

    /// The IO buffer page (port data, or a [`FastMmio`] at offset 0).
    pub fn io_buffer_mut(&mut self) -> &mut [u8] {
        self.iobuf.bytes_mut()
    }

    fn core_ref(&self) -> &Vcpu {
        &self.core
    }

    fn controls(&self) -> &VmxControls {
        self.core.controls()
    }
}
