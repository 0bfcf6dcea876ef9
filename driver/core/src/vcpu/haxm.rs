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

use alloc::boxed::Box;

use rhax_api::cpuid::CpuidEntry;
use rhax_api::debug::{DebugControl, VcpuDebug};
use rhax_api::ext;
use rhax_api::fpu::FxLayout;
use rhax_api::msr::{MsrData, VmxMsr, HAX_MAX_MSRS_PER_CALL};
use rhax_api::pod::Pod;
use rhax_api::tunnel::{
    ExitStatus, FastMmio, Tunnel, TunnelIo, TunnelPayload, HAX_EXIT_REASON_PAUSE_REQUEST,
};
use rhax_api::vcpu::{SegmentDesc, VcpuState};

use crate::emulate::{self, CpuMode, Extend, Operation, Register};
use crate::memory::{EptAccess, MemoryError, Resolution};
use crate::platform::{PhysPages, Platform, PlatformError};
use crate::vcpu::cpuid::{CpuidError, CpuidTable};
use crate::vcpu::guest::{read_linear, write_linear, GuestMemoryAccess, PagingMode, WalkError};
use crate::vcpu::{skip_instruction, CreateError, RunError, Vcpu};
use crate::vmcs::exit::{CrAccessType, InterruptionType, IoDirection, VmExit};
use crate::vmcs::stats::{ExitCounters, SETUP_BUCKET};
use crate::vmcs::{Vmcs, VmcsField};
use crate::vmx::caps::{EntryControls, PrimaryProcControls};
use crate::vmx::instructions::reg;
use crate::vmx::negotiate::{OptionalFeatures, VmxControls};
use crate::vmx::root::{
    VmxRoot, IA32_EFER, IA32_FS_BASE, IA32_GS_BASE, IA32_PAT, IA32_SYSENTER_CS, IA32_SYSENTER_EIP,
    IA32_SYSENTER_ESP,
};
use crate::vmx::{Counted, VmFail, Vmx};

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
    /// Not implemented (VCPU_DEBUG single-step and breakpoints).
    Unsupported(&'static str),
    /// [`HaxVcpu::resume`] or [`HaxVcpu::complete_memory`] called with no step waiting for
    /// it (a caller bug; nothing changed).
    NothingToResume,
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
    /// A string OUT (OUTS): `len` bytes from guest linear address `linear` go to the IO
    /// buffer. The exit (HAX_EXIT_IO) is otherwise complete; nothing follows in the region.
    StringOut {
        /// Lowest linear address.
        linear: u64,
        /// Bytes (at most 64).
        len: usize,
        /// Paging mode at the exit.
        mode: PagingMode,
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
    /// The instruction bytes (when not RAM) or why they could not be read.
    fetched: [u8; emulate::MAX_LENGTH],
    got: Result<usize, WalkError>,
    cpu_mode: CpuMode,
}

/// Where a RUN stands between its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// No step waits.
    Idle,
    /// [`HaxVcpu::complete_memory`] must do this.
    Waiting(MemoryRequest),
    /// The string IN completion is done: [`HaxVcpu::resume`] goes on with the RUN.
    InsDone,
    /// [`HaxVcpu::resume`] finishes this EPT violation.
    Violation(Resolved),
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
    /// An MMIO instruction the decoder does not know.
    Emulation(emulate::DecodeError),
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
    /// End the step: guest memory is needed (outside the non-preemptible region).
    Memory(MemoryRequest),
}

/// Basic exit reason of IO instructions (SDM Appendix C).
const EXIT_REASON_IO: u32 = 30;
/// Basic exit reason of EPT violations.
const EXIT_REASON_EPT_VIOLATION: u16 = 48;

const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_DF: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_PG: u64 = 1 << 31;
const IA32_TSC: u32 = 0x10;
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_DEFAULT: u64 = 0xfee0_0000;
const VALID: u32 = 1 << 31;

/// The HAXM vCPU.
pub struct HaxVcpu {
    core: Vcpu,
    tunnel: PhysPages,
    iobuf: PhysPages,
    vcpu_id: u32,
    pending: Pending,
    /// Queued vectors (HAX_VCPU_IOCTL_INTERRUPT), bit per vector.
    vectors: [u64; 4],
    panicked: Option<PanicReason>,
    apic_base: u64,
    /// DR0-3 and DR6 (not loaded into the CPU: hardware breakpoints are not supported yet).
    drs: [u64; 5],
    /// MSRs HAXM accepts and keeps without effect (MTRRs, MCE banks, PMU, MISC_ENABLE...).
    soft_msrs: alloc::collections::BTreeMap<u32, u64>,
    preemption_ticks: Option<u32>,
    window_on: bool,
    runs: u64,
    user_exits: u64,
    /// Where the RUN in progress stands between steps.
    step: Step,
    /// TSC at the start of the RUN's guest loop, and the budget in TSC ticks (it spans all
    /// the RUN's steps).
    run_start: u64,
    run_budget: u64,
}

fn tsc_ticks(platform: &impl Platform, us: u64) -> u64 {
    platform.tsc_frequency() / 1_000_000 * us
}

impl HaxVcpu {
    /// Creates a vCPU in HAXM's power-on state with its tunnel page and IO buffer. VPID is
    /// `(vm_id << 8) | (vcpu_id + 1)` as HAXM; `eptp` comes from the VM's memory. The
    /// VMX-preemption timer is used when `controls` offers it.
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
        let vpid = (((vm_id & 0xff) << 8) | ((vcpu_id & 0xff) + 1)) as u16;
        let core = Vcpu::new(platform, &controls, vpid, eptp).map_err(HaxError::Create)?;
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
            soft_msrs: alloc::collections::BTreeMap::new(),
            preemption_ticks,
            window_on: false,
            runs: 0,
            user_exits: 0,
            step: Step::Idle,
            run_start: 0,
            run_budget: 0,
        };
        let apic = v.apic_base;
        v.with_tunnel(|t| t.apic_base = apic);
        Ok(v)
    }

    /// Frees everything. The VMCS must not be active on a CPU (`Vcpu::unload` there first);
    /// otherwise the vCPU is handed back.
    pub fn destroy<P: Platform>(self, platform: &P) -> Result<(), Box<HaxVcpu>> {
        if self.core.resident_cpu().is_some() {
            return Err(Box::new(self));
        }
        let HaxVcpu {
            core,
            tunnel,
            iobuf,
            ..
        } = self;
        if core.destroy(platform).is_err() {
            return Ok(());
        }
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

    /// Reads and updates the tunnel (as user space would, for tests and in-kernel clients).
    pub fn with_tunnel<R>(&mut self, f: impl FnOnce(&mut Tunnel) -> R) -> R {
        let bytes = &mut self.tunnel.bytes_mut()[..core::mem::size_of::<Tunnel>()];
        let mut t = Tunnel::read_from_prefix(bytes).unwrap_or_default();
        let r = f(&mut t);
        bytes.copy_from_slice(t.as_bytes());
        r
    }

    /// Test-and-clear of `user_event_pending` bit 0 (quirk 8), atomically: user space may set
    /// it at any time.
    fn take_user_event(&mut self) -> bool {
        let p = self.tunnel.virt().as_ptr();
        // SAFETY: offset 12 of the page-aligned tunnel page is 4-byte aligned and inside the
        // page this vCPU owns; user space shares it, so only atomic access is used.
        let field = p.wrapping_add(12) as *const core::sync::atomic::AtomicU32;
        // SAFETY: see above; the page lives as long as `self`.
        let a = unsafe { &*field };
        a.fetch_and(!1, core::sync::atomic::Ordering::AcqRel) & 1 != 0
    }

    /// `HAX_VCPU_IOCTL_INTERRUPT`: queues `vector & 0xff`; duplicates are ignored.
    pub fn interrupt(&mut self, vector: u32) {
        let v = (vector & 0xff) as usize;
        self.vectors[v / 64] |= 1 << (v % 64);
    }

    fn highest_vector(&self) -> Option<u8> {
        (0..4)
            .rev()
            .find(|&w| self.vectors[w] != 0)
            .map(|w| (w * 64 + 63 - self.vectors[w].leading_zeros() as usize) as u8)
    }

    fn vectors_pending(&self) -> bool {
        self.vectors.iter().any(|&w| w != 0)
    }

    /// `HAX_VCPU_IOCTL_RUN`, first step (inside the non-preemptible region; see the module
    /// documentation). Fills the tunnel; `Ok` for every exit status (as HAXM returns 0), `Err`
    /// for a failed VM entry (status UNKNOWN) or a failed MMIO completion. A RUN abandoned
    /// between its steps (the caller could not re-enter the region) is not continued: the
    /// only state kept across steps is a resolved EPT violation or a completed string IN,
    /// and entering the guest again re-raises the violation (a fault: RIP did not move, SDM
    /// Vol. 3C §29.3.3.2) or simply goes on.
    pub fn run<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        // Before any side effect: a VMCS still active elsewhere is reported now, so the
        // caller's VMCLEAR-and-retry repeats nothing.
        self.core.with_vmcs(root, |_, _| ())?;
        self.runs += 1;
        self.user_exits += 1;
        self.step = Step::Idle;
        let r = self.start(root, cpuid, platform);
        self.leave(root);
        r
    }

    /// Continues a RUN after [`HaxVcpu::complete_memory`] answered [`AfterMemory::Resume`]
    /// (inside the non-preemptible region, on any CPU: the caller moves the VMCS as for
    /// [`HaxVcpu::run`]). [`HaxError::NothingToResume`] if no step waits.
    pub fn resume<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        if !matches!(self.step, Step::InsDone | Step::Violation(_)) {
            return Err(HaxError::NothingToResume);
        }
        self.core.with_vmcs(root, |_, _| ())?;
        let r = match core::mem::replace(&mut self.step, Step::Idle) {
            Step::Violation(v) => match self.finish_violation(root, &v) {
                Ok(next) => {
                    match self.after_handler(root, next, EXIT_REASON_EPT_VIOLATION, platform) {
                        Ok(Some(step)) => Ok(step),
                        Ok(None) => self.guest_loop(root, cpuid, platform),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            _ => self.begin_guest(root, cpuid, platform),
        };
        self.leave(root);
        r
    }

    /// The guest-memory work of the last step, at passive level (outside the non-preemptible
    /// region): the pins, the memory lock and the copies happen here.
    pub fn complete_memory<M: GuestMemoryAccess + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<AfterMemory, HaxError> {
        let Step::Waiting(request) = self.step else {
            return Err(HaxError::NothingToResume);
        };
        self.step = Step::Idle;
        match request {
            MemoryRequest::CompleteIns { linear, len, mode } => {
                self.pending = Pending::None;
                let len = len.min(64);
                let mut data = [0u8; 64];
                data[..len].copy_from_slice(&self.iobuf.bytes_mut()[..len]);
                if let Err(e) = write_linear(mem, &mode, linear, &data[..len]) {
                    self.panicked = Some(PanicReason::GuestMemory(e));
                    return Err(HaxError::EmulationFailed);
                }
                self.step = Step::InsDone;
                Ok(AfterMemory::Resume)
            }
            MemoryRequest::StringOut { linear, len, mode } => {
                let len = len.min(64);
                let mut buf = [0u8; 64];
                match read_linear(mem, &mode, linear, &mut buf[..len]) {
                    Ok(_) => self.iobuf.bytes_mut()[..len].copy_from_slice(&buf[..len]),
                    // The registers already moved past the elements; the vCPU is dead
                    // anyway (STATECHANGE on this and every later RUN).
                    Err(e) => {
                        self.panicked = Some(PanicReason::GuestMemory(e));
                        self.set_status(ExitStatus::StateChange, EXIT_REASON_IO);
                    }
                }
                Ok(AfterMemory::Done)
            }
            MemoryRequest::EptViolation {
                gpa,
                access,
                qualification,
                fetch,
            } => {
                let resolution = mem.resolve(gpa, access).map_err(HaxError::Memory)?;
                let mut fetched = [0u8; emulate::MAX_LENGTH];
                let got = match resolution {
                    Resolution::Mmio | Resolution::WriteToRom => {
                        read_linear(mem, &fetch.mode, fetch.linear, &mut fetched)
                    }
                    Resolution::Mapped | Resolution::Protected { .. } => Ok(0),
                };
                self.step = Step::Violation(Resolved {
                    gpa,
                    qualification,
                    resolution,
                    fetched,
                    got,
                    cpu_mode: fetch.cpu_mode,
                });
                Ok(AfterMemory::Resume)
            }
        }
    }

    /// The end of every step: the guest's MSRs and FPU go back before the thread can leave
    /// the non-preemptible region the caller holds.
    fn leave<V: Vmx>(&mut self, root: &mut VmxRoot<V>) {
        self.core.put(root);
        let apic = self.apic_base;
        self.with_tunnel(|t| t.apic_base = apic);
    }

    fn set_status(&mut self, status: ExitStatus, reason: u32) {
        self.with_tunnel(|t| {
            t.exit_status = status as u32;
            t.exit_reason = reason;
        });
    }

    fn start<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        if self.panicked.is_some() {
            self.set_status(ExitStatus::StateChange, 0);
            return Ok(RunStep::Done);
        }
        if let Pending::Ins { linear, len, mode } = self.pending {
            let request = MemoryRequest::CompleteIns { linear, len, mode };
            self.step = Step::Waiting(request);
            return Ok(RunStep::NeedMemory(request));
        }
        self.complete_pending(root)?;
        self.begin_guest(root, cpuid, platform)
    }

    /// The pause handshake, then the guest loop.
    fn begin_guest<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        // Quirk 7: `_exit_reason == 8` written by user space asks for an immediate exit. It is
        // consumed (cleared) so the next RUN runs the guest.
        let pause = self.with_tunnel(|t| {
            let p = t.exit_reason == HAX_EXIT_REASON_PAUSE_REQUEST;
            if p {
                t.exit_status = ExitStatus::Paused as u32;
                t.exit_reason = 0;
            }
            p
        });
        if pause {
            return Ok(RunStep::Done);
        }
        self.run_start = platform.tsc();
        self.run_budget = tsc_ticks(platform, RUN_BUDGET_US);
        self.guest_loop(root, cpuid, platform)
    }

    fn guest_loop<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        platform: &P,
    ) -> Result<RunStep, HaxError> {
        loop {
            if self.take_user_event() {
                self.set_status(ExitStatus::Interrupt, 0);
                self.finish_user_exit(root)?;
                return Ok(RunStep::Done);
            }
            let injected = self.prepare_entry(root)?;
            let exit = match self.core.run(root) {
                Ok(e) => e,
                Err(e @ RunError::Entry(_)) => {
                    self.set_status(ExitStatus::Unknown, 0);
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            if let VmExit::EntryFailure {
                reason,
                qualification,
            } = exit
            {
                self.set_status(ExitStatus::Unknown, 0);
                return Err(HaxError::InvalidGuestState {
                    reason,
                    qualification,
                });
            }
            self.after_exit(root, &exit, injected)?;
            let next = self.handle(root, cpuid, &exit)?;
            if let Some(step) = self.after_handler(root, next, exit.basic_reason(), platform)? {
                return Ok(step);
            }
        }
    }

    /// Acts on a handler's decision: `Some` ends the step, `None` enters the guest again.
    fn after_handler<V: Vmx, P: Platform>(
        &mut self,
        root: &mut VmxRoot<V>,
        next: Next,
        reason: u16,
        platform: &P,
    ) -> Result<Option<RunStep>, HaxError> {
        match next {
            Next::User(status) => {
                self.set_status(status, u32::from(reason));
                if status == ExitStatus::StateChange {
                    return Ok(Some(RunStep::Done));
                }
                self.finish_user_exit(root)?;
                if status == ExitStatus::Hlt {
                    self.with_tunnel(|t| t.ready_for_interrupt_injection = 1);
                }
                Ok(Some(RunStep::Done))
            }
            Next::Memory(request) => {
                if let MemoryRequest::StringOut { .. } = request {
                    // The exit is complete but for the data: the tunnel is filled now, while
                    // the VMCS is at hand.
                    self.set_status(ExitStatus::Io, u32::from(reason));
                    self.finish_user_exit(root)?;
                }
                self.step = Step::Waiting(request);
                Ok(Some(RunStep::NeedMemory(request)))
            }
            Next::Resume => {
                // Rule (b) of status 4: the user asked for a window and the guest can take
                // an interrupt now, with nothing of ours queued or being injected.
                let wants = self.with_tunnel(|t| t.request_interrupt_window != 0);
                if wants && !self.vectors_pending() && self.guest_interruptible(root)? {
                    self.set_status(ExitStatus::Interrupt, u32::from(reason));
                    self.finish_user_exit(root)?;
                    return Ok(Some(RunStep::Done));
                }
                if platform.tsc().wrapping_sub(self.run_start) >= self.run_budget {
                    self.set_status(ExitStatus::Interrupt, u32::from(reason));
                    self.finish_user_exit(root)?;
                    return Ok(Some(RunStep::Done));
                }
                Ok(None)
            }
        }
    }

    /// `ready_for_interrupt_injection`: 1 iff nothing is queued and the guest can take an
    /// interrupt now (§4). Computed when RUN returns (the only time user space reads it).
    fn finish_user_exit<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        let ready = !self.vectors_pending() && self.guest_interruptible(root)?;
        self.with_tunnel(|t| t.ready_for_interrupt_injection = i32::from(ready));
        Ok(())
    }

    fn guest_interruptible<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<bool, HaxError> {
        let r = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<bool, VmFail> {
                let intr = vmcs.vm_entry_interruption_information()?;
                Ok(vmcs.guest_rflags()? & RFLAGS_IF != 0
                    && interrupt_shadow(vmcs)? == 0
                    && intr & VALID == 0)
            })??;
        Ok(r)
    }

    /// Injection before an entry (§4 "Interrupt delivery"): the highest queued vector as an
    /// external interrupt when RFLAGS.IF=1, no STI/MOV-SS blocking and no event already being
    /// injected (a re-injection from IDT-vectoring information has priority); interrupt-window
    /// exiting while vectors remain or user space asked. Returns whether an event is injected.
    fn prepare_entry<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<bool, HaxError> {
        let want_window_user = self.with_tunnel(|t| t.request_interrupt_window != 0);
        let queued: u32 = self.vectors.iter().map(|w| w.count_ones()).sum();
        let highest = self.highest_vector();
        let preemption = self.preemption_ticks;
        let window_on = self.window_on;
        let (injected, took, window) =
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(bool, bool, bool), VmFail> {
                    if let Some(t) = preemption {
                        vmcs.set_vmx_preemption_timer_value(t);
                    }
                    let mut took = false;
                    let entry = vmcs.vm_entry_interruption_information()?;
                    let mut injected = entry & VALID != 0;
                    if !injected
                        && queued > 0
                        && vmcs.guest_rflags()? & RFLAGS_IF != 0
                        && interrupt_shadow(vmcs)? == 0
                    {
                        if let Some(v) = highest {
                            vmcs.set_vm_entry_interruption_information(VALID | u32::from(v));
                            injected = true;
                            took = true;
                        }
                    }
                    let remaining = if took { queued > 1 } else { queued > 0 };
                    let want = remaining || want_window_user;
                    if want != window_on {
                        let proc = vmcs.primary_processor_based_vm_execution_controls()?;
                        let bit = PrimaryProcControls::INTERRUPT_WINDOW_EXITING.bits();
                        vmcs.set_primary_processor_based_vm_execution_controls(if want {
                            proc | bit
                        } else {
                            proc & !bit
                        });
                    }
                    Ok((injected, took, want))
                })??;
        if took {
            if let Some(v) = highest {
                let v = usize::from(v);
                self.vectors[v / 64] &= !(1 << (v % 64));
            }
        }
        self.window_on = window;
        Ok(injected)
    }

    /// After every exit: an event whose delivery the exit interrupted is re-injected (SDM
    /// §28.2.4 IDT-vectoring information, §27.6 event injection), with its error code and, for
    /// software interrupts and exceptions, the instruction length; NMI blocking is restored when
    /// an exit reports "NMI unblocking due to IRET" outside event delivery (SDM §28.2.3).
    fn after_exit<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        exit: &VmExit,
        injected: bool,
    ) -> Result<(), HaxError> {
        let may = injected
            || matches!(
                exit,
                VmExit::ExceptionOrNmi { .. }
                    | VmExit::ExternalInterrupt
                    | VmExit::TripleFault
                    | VmExit::EptViolation { .. }
                    | VmExit::EptMisconfig { .. }
                    | VmExit::NmiWindow
                    | VmExit::Other { .. }
            );
        if !may {
            return Ok(());
        }
        let exit = *exit;
        self.core
            .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                let info = vmcs.idt_vectoring_information()?;
                if info & VALID != 0 {
                    let kind = (info >> 8) & 7;
                    // Bit 12 is undefined in IDT-vectoring information and reserved on entry.
                    vmcs.set_vm_entry_interruption_information(info & !(1 << 12) & 0x8000_0fff);
                    if info & (1 << 11) != 0 {
                        let code = vmcs.idt_vectoring_error_code()?;
                        vmcs.set_vm_entry_exception_error_code(code);
                    }
                    if (4..=6).contains(&kind) {
                        let len = vmcs.vm_exit_instruction_length()?;
                        vmcs.set_vm_entry_instruction_length(len);
                    }
                    return Ok(());
                }
                let unblock = match exit {
                    VmExit::EptViolation { qualification, .. } => qualification
                        .contains(crate::vmcs::exit::EptViolationQualification::NMI_UNBLOCKING),
                    VmExit::ExceptionOrNmi { interruption, .. } => {
                        interruption.nmi_unblocking && interruption.vector != 8
                    }
                    _ => false,
                };
                if unblock {
                    let s = vmcs.guest_interruptibility_state()?;
                    vmcs.set_guest_interruptibility_state(s | (1 << 3));
                }
                Ok(())
            })??;
        Ok(())
    }

    fn handle<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cpuid: &CpuidTable,
        exit: &VmExit,
    ) -> Result<Next, HaxError> {
        Ok(match *exit {
            VmExit::ExternalInterrupt | VmExit::PreemptionTimer => {
                Next::User(ExitStatus::Interrupt)
            }
            VmExit::InterruptWindow => {
                self.core
                    .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                        let proc = vmcs.primary_processor_based_vm_execution_controls()?;
                        vmcs.set_primary_processor_based_vm_execution_controls(
                            proc & !PrimaryProcControls::INTERRUPT_WINDOW_EXITING.bits(),
                        );
                        Ok(())
                    })??;
                self.window_on = false;
                Next::Resume
            }
            VmExit::TripleFault => self.panic(PanicReason::TripleFault),
            VmExit::Hlt => {
                self.skip(root)?;
                if self.vectors_pending() {
                    Next::Resume
                } else {
                    Next::User(ExitStatus::Hlt)
                }
            }
            VmExit::Cpuid => {
                let apic_id = self.vcpu_id as u8;
                self.core
                    .with_vmcs(root, |vmcs, regs| -> Result<(), VmFail> {
                        let r = cpuid.lookup(
                            regs.gpr[reg::RAX] as u32,
                            regs.gpr[reg::RCX] as u32,
                            apic_id,
                        );
                        regs.gpr[reg::RAX] = u64::from(r[0]);
                        regs.gpr[reg::RBX] = u64::from(r[1]);
                        regs.gpr[reg::RCX] = u64::from(r[2]);
                        regs.gpr[reg::RDX] = u64::from(r[3]);
                        skip_instruction(vmcs)
                    })??;
                Next::Resume
            }
            VmExit::Rdmsr | VmExit::Wrmsr => {
                let write = matches!(exit, VmExit::Wrmsr);
                let msr = self.core.regs.gpr[reg::RCX] as u32;
                if write {
                    let v = (self.core.regs.gpr[reg::RDX] << 32)
                        | (self.core.regs.gpr[reg::RAX] & 0xffff_ffff);
                    if self.write_msr(root, msr, v)? {
                        self.skip(root)?;
                    } else {
                        self.inject_gp(root)?;
                    }
                } else {
                    match self.read_msr(root, msr)? {
                        Some(v) => {
                            self.core.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                            self.core.regs.gpr[reg::RDX] = v >> 32;
                            self.skip(root)?;
                        }
                        None => self.inject_gp(root)?,
                    }
                }
                Next::Resume
            }
            VmExit::CrAccess(cr) => {
                self.cr_access(root, cr)?;
                Next::Resume
            }
            VmExit::Io(io) => self.io(root, io)?,
            VmExit::EptViolation {
                gpa, qualification, ..
            } => {
                // Resolved outside the region (it may pin). Where the instruction is, for the
                // MMIO emulator, is read now with the exit's VMCS at hand: the fields are the
                // ones an MMIO exit reads anyway, so MMIO costs no extra VMREAD and no third
                // step; a RAM violation (first touch of a chunk, or after a zap) pays them.
                let fetch = self.fetch_site(root)?;
                Next::Memory(MemoryRequest::EptViolation {
                    gpa,
                    access: EptAccess::from_exit_qualification(qualification.bits()),
                    qualification: qualification.bits(),
                    fetch,
                })
            }
            VmExit::EptMisconfig { gpa } => self.panic(PanicReason::EptMisconfig { gpa }),
            VmExit::ExceptionOrNmi { interruption, .. } => match interruption.kind {
                // An NMI for the host arrived in the guest; it is lost on the software model
                // and is the shell's to re-raise on hardware (not yet done: see the report).
                InterruptionType::Nmi => Next::Resume,
                _ => self.panic(PanicReason::FatalException {
                    vector: interruption.vector,
                }),
            },
            VmExit::Other { reason, .. } => match reason {
                // DR access: DR0-3/6 kept in software, DR7 in the VMCS.
                29 => {
                    self.dr_access(root)?;
                    Next::Resume
                }
                // INVD, GETSEC, VMCALL, VMX instructions, XSETBV (XSAVE is hidden), RDPMC: #UD
                // (HAXM PR #247) / #GP.
                11 | 13 | 18..=27 | 50 | 53 | 55 => {
                    self.inject_exception(root, 6, None)?;
                    Next::Resume
                }
                15 => {
                    self.inject_gp(root)?;
                    Next::Resume
                }
                // MWAIT, MONITOR: no-ops (MONITOR is hidden in CPUID).
                36 | 39 => {
                    self.skip(root)?;
                    Next::Resume
                }
                other => self.panic(PanicReason::UnhandledExit { reason: other }),
            },
            VmExit::Vmcall => {
                self.inject_exception(root, 6, None)?;
                Next::Resume
            }
            VmExit::Xsetbv => {
                self.inject_exception(root, 6, None)?;
                Next::Resume
            }
            VmExit::Init | VmExit::Sipi { .. } => Next::Resume,
            other => self.panic(PanicReason::UnhandledExit {
                reason: other.basic_reason(),
            }),
        })
    }

    fn panic(&mut self, why: PanicReason) -> Next {
        self.panicked = Some(why);
        Next::User(ExitStatus::StateChange)
    }

    fn skip<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        self.core
            .with_vmcs(root, |vmcs, _| skip_instruction(vmcs))??;
        Ok(())
    }

    fn inject_exception<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        vector: u8,
        code: Option<u32>,
    ) -> Result<(), HaxError> {
        self.core.with_vmcs(root, |vmcs, _| {
            let mut info = VALID | (3 << 8) | u32::from(vector);
            if let Some(c) = code {
                info |= 1 << 11;
                vmcs.set_vm_entry_exception_error_code(c);
            }
            vmcs.set_vm_entry_interruption_information(info);
        })?;
        Ok(())
    }

    fn inject_gp<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        self.inject_exception(root, 13, Some(0))
    }

    fn paging<V: Vmx>(vmcs: &mut Vmcs<'_, Counted<'_, V>>) -> Result<PagingMode, VmFail> {
        Ok(PagingMode {
            cr0: vmcs.guest_cr0()?,
            cr3: vmcs.guest_cr3()?,
            cr4: vmcs.guest_cr4()?,
            lma: vmcs.vm_entry_controls()? & EntryControls::IA32E_MODE_GUEST.bits() != 0,
        })
    }

    fn io<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        io: crate::vmcs::exit::IoAccess,
    ) -> Result<Next, HaxError> {
        let inward = io.direction == IoDirection::In;
        let mut t = TunnelIo {
            direction: u8::from(inward),
            df: 0,
            size: u16::from(io.size),
            port: io.port,
            count: 1,
            flags: 0,
            pad0: 0,
            pad1: 0,
            pad2: 0,
            vaddr: 0,
        };
        if !io.string {
            if inward {
                self.pending = Pending::In { size: io.size };
            } else {
                let v = self.core.regs.gpr[reg::RAX].to_le_bytes();
                self.iobuf.bytes_mut()[..usize::from(io.size)]
                    .copy_from_slice(&v[..usize::from(io.size)]);
            }
            self.skip(root)?;
            self.with_tunnel(|tn| tn.payload = TunnelPayload::from_io(t));
            return Ok(Next::User(ExitStatus::Io));
        }
        // String IO (INS/OUTS), at most 64 bytes per exit (IOS_MAX_BUFFER).
        let size = u64::from(io.size);
        let (la, rflags, cs_ar, mode, info) =
            self.core.with_vmcs(root, |vmcs, _| -> Result<_, VmFail> {
                Ok((
                    vmcs.guest_linear_address()?,
                    vmcs.guest_rflags()?,
                    vmcs.guest_cs_access_rights()?,
                    Self::paging(vmcs)?,
                    vmcs.vm_exit_instruction_information()?,
                ))
            })??;
        // Address size: instruction-information bits 9:7 (SDM Table 28-8) when the CPU reports
        // it (IA32_VMX_BASIC bit 54), else the code segment's default.
        let addr_bits = if root.caps().basic.ins_outs_info {
            match (info >> 7) & 7 {
                0 => 16,
                1 => 32,
                _ => 64,
            }
        } else if cs_ar & (1 << 13) != 0 {
            64
        } else if cs_ar & (1 << 14) != 0 {
            32
        } else {
            16
        };
        let mask = if addr_bits == 64 {
            u64::MAX
        } else {
            (1u64 << addr_bits) - 1
        };
        let df = rflags & RFLAGS_DF != 0;
        let rcx = self.core.regs.gpr[reg::RCX];
        let total = if io.rep { rcx & mask } else { 1 };
        if total == 0 {
            self.skip(root)?;
            return Ok(Next::Resume);
        }
        let n = total.min(64 / size);
        let bytes = (n * size) as usize;
        // With DF=1 the elements go downwards; the buffer holds them in ascending memory order.
        let lowest = if df {
            la.wrapping_sub((n - 1) * size)
        } else {
            la
        };
        // The bytes of an OUTS are copied after this step (guest memory is not touched in
        // the region); an INS completes at the next RUN, in the paging mode of this exit.
        if inward {
            self.pending = Pending::Ins {
                linear: lowest,
                len: bytes,
                mode,
            };
        }
        let index = if inward { reg::RDI } else { reg::RSI };
        let delta = n * size;
        let old = self.core.regs.gpr[index];
        let moved = if df {
            old.wrapping_sub(delta)
        } else {
            old.wrapping_add(delta)
        };
        // A 32-bit address write zero-extends (64-bit mode), a 16-bit one keeps bits 63:16.
        self.core.regs.gpr[index] = match addr_bits {
            16 => (old & !0xffff) | (moved & 0xffff),
            32 => moved & 0xffff_ffff,
            _ => moved,
        };
        let done = if io.rep {
            let left = (rcx & mask) - n;
            self.core.regs.gpr[reg::RCX] = (rcx & !mask) | left;
            left == 0
        } else {
            true
        };
        // RIP moves only when the whole REP is done; otherwise the guest runs the instruction
        // again for the next chunk (§4 "String IO").
        if done {
            self.skip(root)?;
        }
        t.df = u8::from(df);
        t.count = n as u16;
        t.flags = rhax_api::tunnel::HAX_IO_FLAG_STRING;
        t.vaddr = lowest;
        self.with_tunnel(|tn| tn.payload = TunnelPayload::from_io(t));
        Ok(if inward {
            Next::User(ExitStatus::Io)
        } else {
            Next::Memory(MemoryRequest::StringOut {
                linear: lowest,
                len: bytes,
                mode,
            })
        })
    }

    /// Where the instruction of the exit is, and its decoding mode.
    fn fetch_site<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<Fetch, HaxError> {
        let (rip, cs_base, cs_ar, mode, rflags) =
            self.core.with_vmcs(root, |vmcs, _| -> Result<_, VmFail> {
                Ok((
                    vmcs.guest_rip()?,
                    vmcs.guest_cs_base()?,
                    vmcs.guest_cs_access_rights()?,
                    Self::paging(vmcs)?,
                    vmcs.guest_rflags()?,
                ))
            })??;
        let cpu_mode = if mode.lma && cs_ar & (1 << 13) != 0 {
            CpuMode::Bits64
        } else if mode.cr0 & 1 != 0 && rflags & (1 << 17) == 0 && cs_ar & (1 << 14) != 0 {
            CpuMode::Bits32
        } else {
            CpuMode::Bits16
        };
        let linear = if cpu_mode == CpuMode::Bits64 {
            rip
        } else {
            cs_base.wrapping_add(rip) & 0xffff_ffff
        };
        Ok(Fetch {
            linear,
            mode,
            cpu_mode,
        })
    }

    /// The second step of an EPT violation, resolved at passive level.
    fn finish_violation<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        v: &Resolved,
    ) -> Result<Next, HaxError> {
        Ok(match v.resolution {
            Resolution::Mapped => Next::Resume,
            Resolution::Mmio | Resolution::WriteToRom => match v.got {
                Ok(n) => self.mmio(root, v.gpa, v.fetched.get(..n).unwrap_or(&[]), v.cpu_mode)?,
                Err(e) => self.panic(PanicReason::GuestMemory(e)),
            },
            Resolution::Protected { gpa: page } => {
                let flags = (v.qualification & 0x3f) as u32;
                self.with_tunnel(|t| {
                    let pf = t.pagefault_mut();
                    pf.gpa = page;
                    pf.flags = flags;
                    pf.reserved1 = 0;
                    pf.reserved2 = 0;
                });
                Next::User(ExitStatus::PageFault)
            }
        })
    }

    /// FAST_MMIO for the instruction `bytes` (fetched at passive level) at `gpa`.
    fn mmio<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        gpa: u64,
        bytes: &[u8],
        cpu_mode: CpuMode,
    ) -> Result<Next, HaxError> {
        let insn = match emulate::decode(bytes, cpu_mode) {
            Ok(i) => i,
            Err(e) => return Ok(self.panic(PanicReason::Emulation(e))),
        };
        let mut m = FastMmio {
            gpa,
            size: insn.size,
            ..FastMmio::default()
        };
        match insn.operation {
            Operation::Load {
                dest,
                dest_size,
                extend,
            } => {
                m.direction = 0;
                self.pending = Pending::MmioLoad {
                    dest,
                    dest_size,
                    size: insn.size,
                    extend,
                    length: insn.length,
                };
            }
            Operation::StoreRegister { src } => {
                let v = self.gpr(root, src.number)?;
                m.direction = 1;
                m.value = emulate::store_value(v, src, insn.size);
            }
            Operation::StoreImmediate { value } => {
                m.direction = 1;
                m.value = emulate::store_value(
                    value,
                    Register {
                        number: 0,
                        high_byte: false,
                    },
                    insn.size,
                );
            }
        }
        // Only gpa, value, size and direction are HAXM's to write (§4); the rest keeps what
        // the buffer held.
        {
            let buf = &mut self.iobuf.bytes_mut()[..core::mem::size_of::<FastMmio>()];
            let mut old = FastMmio::read_from_prefix(buf).unwrap_or_default();
            old.gpa = m.gpa;
            if m.direction == 1 {
                old.value = m.value;
            }
            old.size = m.size;
            old.direction = m.direction;
            buf.copy_from_slice(old.as_bytes());
        }
        if m.direction == 1 {
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                    let rip = vmcs.guest_rip()?;
                    vmcs.set_guest_rip(rip.wrapping_add(u64::from(insn.length)));
                    Ok(())
                })??;
        }
        Ok(Next::User(ExitStatus::FastMmio))
    }

    fn gpr<V: Vmx>(&mut self, root: &mut VmxRoot<V>, n: u8) -> Result<u64, HaxError> {
        if usize::from(n) == reg::RSP {
            Ok(self.core.with_vmcs(root, |vmcs, _| vmcs.guest_rsp())??)
        } else {
            Ok(self.core.regs.gpr[usize::from(n & 15)])
        }
    }

    fn set_gpr<V: Vmx>(&mut self, root: &mut VmxRoot<V>, n: u8, v: u64) -> Result<(), HaxError> {
        if usize::from(n) == reg::RSP {
            self.core.with_vmcs(root, |vmcs, _| vmcs.set_guest_rsp(v))?;
        } else {
            self.core.regs.gpr[usize::from(n & 15)] = v;
        }
        Ok(())
    }

    /// Completes the IN or MMIO read of the previous exit from the IO buffer (quirk 6).
    /// A string IN is not completed here but by [`HaxVcpu::complete_memory`] (guest memory).
    fn complete_pending<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        let pending = core::mem::replace(&mut self.pending, Pending::None);
        match pending {
            Pending::None => {}
            Pending::In { size } => {
                let mut b = [0u8; 8];
                b[..usize::from(size)]
                    .copy_from_slice(&self.iobuf.bytes_mut()[..usize::from(size)]);
                let v = u64::from_le_bytes(b);
                let rax = &mut self.core.regs.gpr[reg::RAX];
                // Hardware: a 32-bit IN zero-extends into RAX (rhax does not reproduce HAXM's
                // quirk 9, which keeps RAX[63:32]).
                *rax = match size {
                    1 => (*rax & !0xff) | v,
                    2 => (*rax & !0xffff) | v,
                    _ => v & 0xffff_ffff,
                };
            }
            Pending::Ins { .. } => self.pending = pending,
            Pending::MmioLoad {
                dest,
                dest_size,
                size,
                extend,
                length,
            } => {
                let value = FastMmio::read_from_prefix(self.iobuf.bytes_mut())
                    .map(|m| m.value)
                    .unwrap_or(0);
                let old = self.gpr(root, dest.number)?;
                let new = emulate::merge_load(old, dest, dest_size, size, extend, value);
                self.set_gpr(root, dest.number, new)?;
                self.core
                    .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                        let rip = vmcs.guest_rip()?;
                        vmcs.set_guest_rip(rip.wrapping_add(u64::from(length)));
                        Ok(())
                    })??;
            }
        }
        Ok(())
    }

    fn cr_access<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        cr: crate::vmcs::exit::CrAccess,
    ) -> Result<(), HaxError> {
        let value = match cr.access {
            CrAccessType::MovTo { gpr } => Some(self.gpr(root, gpr)?),
            _ => None,
        };
        let read =
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<Option<(u8, u64)>, VmFail> {
                    let mut out = None;
                    match (cr.cr, cr.access) {
                        (0, CrAccessType::MovTo { .. }) => write_cr0(vmcs, value.unwrap_or(0))?,
                        (0, CrAccessType::Clts) => {
                            let v = guest_cr(vmcs, 0)? & !8;
                            write_cr0(vmcs, v)?;
                        }
                        (0, CrAccessType::Lmsw { source, .. }) => {
                            // LMSW loads CR0[3:0] and cannot clear PE (SDM Vol. 2A LMSW).
                            let cur = guest_cr(vmcs, 0)?;
                            let v = (cur & !0xe) | u64::from(source & 0xf) | (cur & 1);
                            write_cr0(vmcs, v)?;
                        }
                        (0, CrAccessType::MovFrom { gpr }) => out = Some((gpr, guest_cr(vmcs, 0)?)),
                        (4, CrAccessType::MovTo { .. }) => write_cr4(vmcs, value.unwrap_or(0))?,
                        (4, CrAccessType::MovFrom { gpr }) => out = Some((gpr, guest_cr(vmcs, 4)?)),
                        (3, CrAccessType::MovTo { .. }) => vmcs.set_guest_cr3(value.unwrap_or(0)),
                        (3, CrAccessType::MovFrom { gpr }) => out = Some((gpr, vmcs.guest_cr3()?)),
                        // CR8 (TPR) is not virtualized: writes are dropped, reads give 0 (§6).
                        (8, CrAccessType::MovFrom { gpr }) => out = Some((gpr, 0)),
                        _ => {}
                    }
                    skip_instruction(vmcs)?;
                    Ok(out)
                })??;
        if let Some((gpr, v)) = read {
            self.set_gpr(root, gpr, v)?;
        }
        Ok(())
    }

    fn dr_access<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), HaxError> {
        // Exit qualification for MOV DR (SDM Table 28-4): bits 2:0 DR, bit 4 direction
        // (0 = MOV to DR), bits 11:8 GPR.
        let q = self
            .core
            .with_vmcs(root, |vmcs, _| vmcs.exit_qualification())??;
        let dr = (q & 7) as usize;
        let gpr = ((q >> 8) & 0xf) as u8;
        let dr = match dr {
            4 => 6,
            5 => 7,
            d => d,
        };
        if q & (1 << 4) == 0 {
            let v = self.gpr(root, gpr)?;
            match dr {
                7 => self
                    .core
                    .with_vmcs(root, |vmcs, _| vmcs.set_guest_dr7(v & 0xffff_ffff))?,
                6 => self.drs[4] = v,
                d => self.drs[d] = v,
            }
        } else {
            let v = match dr {
                7 => self.core.with_vmcs(root, |vmcs, _| vmcs.guest_dr7())??,
                6 => self.drs[4],
                d => self.drs[d],
            };
            self.set_gpr(root, gpr, v)?;
        }
        self.skip(root)
    }

    /// Reads an MSR HAXM handles (§6 list); `None` for one it does not (RDMSR → #GP).
    fn read_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        msr: u32,
    ) -> Result<Option<u64>, HaxError> {
        if let Some(v) = self.core.swapped_msr(root, msr) {
            return Ok(Some(v));
        }
        let soft = self.soft_msrs.get(&msr).copied();
        let apic = self.apic_base;
        let v = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<Option<u64>, VmFail> {
                Ok(Some(match msr {
                    IA32_TSC => vmcs.vmx().rdtsc().wrapping_add(vmcs.tsc_offset()?),
                    IA32_EFER => {
                        let lma =
                            vmcs.vm_entry_controls()? & EntryControls::IA32E_MODE_GUEST.bits() != 0;
                        (vmcs.guest_ia32_efer()? & !EFER_LMA) | if lma { EFER_LMA } else { 0 }
                    }
                    IA32_SYSENTER_CS => u64::from(vmcs.guest_ia32_sysenter_cs()?),
                    IA32_SYSENTER_ESP => vmcs.guest_ia32_sysenter_esp()?,
                    IA32_SYSENTER_EIP => vmcs.guest_ia32_sysenter_eip()?,
                    IA32_FS_BASE => vmcs.guest_fs_base()?,
                    IA32_GS_BASE => vmcs.guest_gs_base()?,
                    IA32_PAT => vmcs.guest_ia32_pat()?,
                    0x1d9 => vmcs.guest_ia32_debugctl()?,
                    IA32_APIC_BASE => apic,
                    // FEATURE_CONTROL: locked, VMX off (VMX is hidden in CPUID).
                    0x3a => 1,
                    m if is_soft_msr(m) => soft.unwrap_or(0),
                    _ => return Ok(None),
                }))
            })??;
        Ok(v)
    }

    /// Writes an MSR HAXM handles; false if refused (WRMSR → #GP).
    fn write_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        msr: u32,
        v: u64,
    ) -> Result<bool, HaxError> {
        if self.core.set_swapped_msr(root, msr, v) {
            return Ok(true);
        }
        match msr {
            IA32_APIC_BASE => {
                // Only the default base; only vCPU 0 may be the BSP (§6).
                if v & 0xffff_f000 != APIC_DEFAULT || (v & APIC_BASE_BSP != 0 && self.vcpu_id != 0)
                {
                    return Ok(false);
                }
                self.apic_base = v;
                return Ok(true);
            }
            m if is_soft_msr(m) => {
                self.soft_msrs.insert(msr, v);
                return Ok(true);
            }
            0x3a => return Ok(false),
            _ => {}
        }
        let ok = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<bool, VmFail> {
                match msr {
                    IA32_TSC => {
                        let now = vmcs.vmx().rdtsc();
                        vmcs.set_tsc_offset(v.wrapping_sub(now));
                    }
                    IA32_EFER => {
                        // SCE, LME, LMA, NXE only. "IA-32e mode guest" follows LMA (SDM §27.3.1.1
                        // requires them equal on entry).
                        if v & !0xd01 != 0 {
                            return Ok(false);
                        }
                        vmcs.set_guest_ia32_efer(v);
                        let entry = vmcs.vm_entry_controls()?;
                        let bit = EntryControls::IA32E_MODE_GUEST.bits();
                        vmcs.set_vm_entry_controls(if v & EFER_LMA != 0 {
                            entry | bit
                        } else {
                            entry & !bit
                        });
                    }
                    IA32_SYSENTER_CS => vmcs.set_guest_ia32_sysenter_cs(v as u32),
                    IA32_SYSENTER_ESP => vmcs.set_guest_ia32_sysenter_esp(v),
                    IA32_SYSENTER_EIP => vmcs.set_guest_ia32_sysenter_eip(v),
                    IA32_FS_BASE => vmcs.set_guest_fs_base(v),
                    IA32_GS_BASE => vmcs.set_guest_gs_base(v),
                    IA32_PAT => {
                        if !(0..8).all(|i| matches!((v >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7)) {
                            return Ok(false);
                        }
                        vmcs.set_guest_ia32_pat(v);
                    }
                    0x1d9 => vmcs.set_guest_ia32_debugctl(v),
                    _ => return Ok(false),
                }
                Ok(true)
            })??;
        Ok(ok)
    }

    /// `HAX_VCPU_IOCTL_GET_MSRS`: entries `0..nr_msr` in order, stopping at the first MSR
    /// refused; `done` = the number processed. `nr_msr >= 32` is refused with nothing changed.
    pub fn get_msrs<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        d: &mut MsrData,
    ) -> Result<(), HaxError> {
        self.msr_batch(root, d, |vcpu, root, msr, e| {
            Ok(match vcpu.read_msr(root, msr)? {
                Some(v) => {
                    e.value = v;
                    true
                }
                None => false,
            })
        })
    }

    /// `HAX_VCPU_IOCTL_SET_MSRS`: as [`HaxVcpu::get_msrs`], writing.
    pub fn set_msrs<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        d: &mut MsrData,
    ) -> Result<(), HaxError> {
        self.msr_batch(root, d, |vcpu, root, msr, e| {
            vcpu.write_msr(root, msr, e.value)
        })
    }

    /// HAXM's MSR batch protocol shared by GET and SET (haxm-abi.md §2): `nr_msr` above 31 is
    /// refused before anything is touched; entries are processed in order until `op` refuses
    /// one (or its index does not fit 32 bits); `done` counts the processed entries.
    fn msr_batch<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        d: &mut MsrData,
        mut op: impl FnMut(&mut Self, &mut VmxRoot<V>, u32, &mut VmxMsr) -> Result<bool, HaxError>,
    ) -> Result<(), HaxError> {
        let n = usize::from(d.nr_msr);
        if n > HAX_MAX_MSRS_PER_CALL {
            return Err(HaxError::TooManyMsrs { nr_msr: d.nr_msr });
        }
        let mut done = 0;
        for e in &mut d.entries[..n] {
            let Ok(msr) = u32::try_from(e.entry) else {
                break;
            };
            if !op(self, root, msr, e)? {
                break;
            }
            done += 1;
        }
        d.done = done;
        Ok(())
    }

    /// `HAX_VCPU_IOCTL_GET_FPU`: the guest's FXSAVE image.
    pub fn get_fpu(&self) -> FxLayout {
        *self.core_ref().fpu()
    }

    /// `HAX_VCPU_IOCTL_SET_FPU` (reserved MXCSR bits are dropped).
    pub fn set_fpu(&mut self, f: &FxLayout) {
        self.core.set_fpu(f);
    }

    fn core_ref(&self) -> &Vcpu {
        &self.core
    }

    /// `HAX_VCPU_GET_REGS`: the whole `vcpu_state_t`, including the fields HAXM leaves
    /// unwritten (EFER, SYSENTER, activity and interruptibility state; `pde` is 0).
    pub fn get_regs<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<VcpuState, HaxError> {
        let drs = self.drs;
        let cr2 = self.core.cr2();
        let mut s = self
            .core
            .with_vmcs(root, |vmcs, regs| -> Result<VcpuState, VmFail> {
                let mut s = VcpuState {
                    regs: regs.gpr,
                    ..VcpuState::default()
                };
                s.regs[reg::RSP] = vmcs.guest_rsp()?;
                s.rip = vmcs.guest_rip()?;
                s.rflags = vmcs.guest_rflags()?;
                for (i, seg) in SEGMENTS.iter().enumerate() {
                    let d = SegmentDesc::new(
                        vmcs.read(seg[0])? as u16,
                        vmcs.read(seg[1])?,
                        vmcs.read(seg[2])? as u32,
                        vmcs.read(seg[3])? as u32,
                    );
                    *segment_mut(&mut s, i) = d;
                }
                s.gdt = SegmentDesc::new(0, vmcs.guest_gdtr_base()?, vmcs.guest_gdtr_limit()?, 0);
                s.idt = SegmentDesc::new(0, vmcs.guest_idtr_base()?, vmcs.guest_idtr_limit()?, 0);
                s.cr0 = guest_cr(vmcs, 0)?;
                s.cr3 = vmcs.guest_cr3()?;
                s.cr4 = guest_cr(vmcs, 4)?;
                s.dr7 = vmcs.guest_dr7()?;
                let lma = vmcs.vm_entry_controls()? & EntryControls::IA32E_MODE_GUEST.bits() != 0;
                s.efer =
                    ((vmcs.guest_ia32_efer()? & !EFER_LMA) | if lma { EFER_LMA } else { 0 }) as u32;
                s.sysenter_cs = vmcs.guest_ia32_sysenter_cs()?;
                s.sysenter_eip = vmcs.guest_ia32_sysenter_eip()?;
                s.sysenter_esp = vmcs.guest_ia32_sysenter_esp()?;
                s.activity_state = vmcs.guest_activity_state()?;
                s.interruptibility_state.raw = vmcs.guest_interruptibility_state()?;
                Ok(s)
            })??;
        s.cr2 = cr2;
        s.dr0 = drs[0];
        s.dr1 = drs[1];
        s.dr2 = drs[2];
        s.dr3 = drs[3];
        s.dr6 = drs[4];
        Ok(s)
    }

    /// `HAX_VCPU_SET_REGS`: GPRs, RIP, RFLAGS, CR0/2/3/4, DR0-3/6/7 and the segments; the
    /// fields HAXM ignores stay ignored (EFER and SYSENTER come through SET_MSRS). QEMU's zeros
    /// are accepted: DRs of 0 get their fixed bits, `ar == 0` means unusable (AR 0x10000), a
    /// non-accessed code/data type gets the accessed bit and TR a busy type (VM entry requires
    /// both, SDM §27.3.1.2). No consistency check here: CR0.PG/CR4.PAE/EFER.LME may disagree
    /// until SET_MSRS (haxm-clients.md §3.5); VM entry checks.
    pub fn set_regs<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        s: &VcpuState,
    ) -> Result<(), HaxError> {
        let s = *s;
        self.core.with_vmcs(root, |vmcs, regs| {
            regs.gpr = s.regs;
            vmcs.set_guest_rsp(s.regs[reg::RSP]);
            vmcs.set_guest_rip(s.rip);
            vmcs.set_guest_rflags(s.rflags);
            for (i, seg) in SEGMENTS.iter().enumerate() {
                let d = segment(&s, i);
                let ar = fix_ar(i, d.ar);
                vmcs.write(seg[0], u64::from(d.selector));
                vmcs.write(seg[1], d.base);
                vmcs.write(seg[2], u64::from(d.limit));
                vmcs.write(seg[3], u64::from(ar));
            }
            vmcs.set_guest_gdtr_base(s.gdt.base);
            vmcs.set_guest_gdtr_limit(s.gdt.limit & 0xffff);
            vmcs.set_guest_idtr_base(s.idt.base);
            vmcs.set_guest_idtr_limit(s.idt.limit & 0xffff);
            vmcs.set_guest_cr3(s.cr3);
            // DR7: bit 10 is fixed to 1, bits 63:32 must be 0 (SDM §27.3.1.1).
            vmcs.set_guest_dr7((s.dr7 & 0xffff_ffff) | 0x400);
        })?;
        let c = *self.controls();
        self.core.with_vmcs(root, |vmcs, _| {
            vmcs.set_cr0_read_shadow(s.cr0);
            vmcs.set_guest_cr0(c.guest_cr0_fixed.adjust(s.cr0));
            vmcs.set_cr4_read_shadow(s.cr4);
            vmcs.set_guest_cr4(c.guest_cr4_fixed.adjust(s.cr4));
        })?;
        self.core.set_cr2(s.cr2);
        self.drs = [
            s.dr0,
            s.dr1,
            s.dr2,
            s.dr3,
            (s.dr6 & 0xffff_ffff) | 0xffff_0ff0,
        ];
        Ok(())
    }

    fn controls(&self) -> &VmxControls {
        self.core.controls()
    }

    /// `HAX_IOCTL_VCPU_DEBUG`. Only "debugging off" is implemented (DR0-3 = 0, DR7 = 0x400,
    /// as HAXM without ENABLE); ENABLE with STEP or breakpoints is refused as
    /// [`HaxError::Unsupported`].
    pub fn debug<V: Vmx>(&mut self, root: &mut VmxRoot<V>, d: &VcpuDebug) -> Result<(), HaxError> {
        if d.control().contains(DebugControl::ENABLE) {
            return Err(HaxError::Unsupported(
                "VCPU_DEBUG: single-step and breakpoints",
            ));
        }
        self.drs[..4].fill(0);
        self.core
            .with_vmcs(root, |vmcs, _| vmcs.set_guest_dr7(0x400))?;
        Ok(())
    }

    /// The counters in the extension ABI's format.
    pub fn stats(&self) -> ext::VcpuStats {
        let snap = self.core_ref().stats().snapshot();
        let conv = |c: &ExitCounters| ext::ExitReasonStats {
            exits: c.exits,
            vmreads: c.vmreads,
            vmwrites: c.vmwrites,
            vmx_other: c.other_vmx,
            cycles: c.host_cycles,
        };
        let mut out = ext::VcpuStats::new();
        out.runs = self.runs;
        out.user_exits = self.user_exits;
        let mut total = ext::ExitReasonStats::default();
        for (i, c) in snap.per_exit.iter().enumerate() {
            let s = conv(c);
            if i == SETUP_BUCKET {
                out.outside_exits = ext::ExitReasonStats { exits: 0, ..s };
            } else if let Some(slot) = out.per_reason.get_mut(i) {
                *slot = s;
            }
            total = total.wrapping_add(s);
        }
        out.total = total;
        out
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.core.reset_stats();
        self.runs = 0;
        self.user_exits = 0;
    }

    /// SET_CPUID through the vCPU handle (the table is the VM's).
    pub fn set_cpuid(table: &mut CpuidTable, entries: &[CpuidEntry]) -> Result<(), HaxError> {
        table.set(entries).map_err(HaxError::Cpuid)
    }
}

/// Selector, base, limit, access-rights fields of CS, SS, DS, ES, FS, GS, LDTR, TR (the order
/// of `vcpu_state_t`).
const SEGMENTS: [[VmcsField; 4]; 8] = {
    use VmcsField as F;
    [
        [
            F::GuestCsSelector,
            F::GuestCsBase,
            F::GuestCsLimit,
            F::GuestCsAccessRights,
        ],
        [
            F::GuestSsSelector,
            F::GuestSsBase,
            F::GuestSsLimit,
            F::GuestSsAccessRights,
        ],
        [
            F::GuestDsSelector,
            F::GuestDsBase,
            F::GuestDsLimit,
            F::GuestDsAccessRights,
        ],
        [
            F::GuestEsSelector,
            F::GuestEsBase,
            F::GuestEsLimit,
            F::GuestEsAccessRights,
        ],
        [
            F::GuestFsSelector,
            F::GuestFsBase,
            F::GuestFsLimit,
            F::GuestFsAccessRights,
        ],
        [
            F::GuestGsSelector,
            F::GuestGsBase,
            F::GuestGsLimit,
            F::GuestGsAccessRights,
        ],
        [
            F::GuestLdtrSelector,
            F::GuestLdtrBase,
            F::GuestLdtrLimit,
            F::GuestLdtrAccessRights,
        ],
        [
            F::GuestTrSelector,
            F::GuestTrBase,
            F::GuestTrLimit,
            F::GuestTrAccessRights,
        ],
    ]
};

fn segment(s: &VcpuState, i: usize) -> SegmentDesc {
    [s.cs, s.ss, s.ds, s.es, s.fs, s.gs, s.ldt, s.tr][i]
}

fn segment_mut(s: &mut VcpuState, i: usize) -> &mut SegmentDesc {
    match i {
        0 => &mut s.cs,
        1 => &mut s.ss,
        2 => &mut s.ds,
        3 => &mut s.es,
        4 => &mut s.fs,
        5 => &mut s.gs,
        6 => &mut s.ldt,
        _ => &mut s.tr,
    }
}

/// The access rights VM entry accepts for what QEMU sends (HAXM `core/cpu.c` fix-ups).
/// Blocking by STI / by MOV SS (interruptibility bits 1:0) as it applies to the next entry.
/// The bits saved at an exit describe the instruction after the exiting one; once software
/// moved RIP past that instruction (HLT skipped inside `sti; hlt`, an emulated OUT, SET_REGS),
/// the shadow is over (SDM Vol. 3C §27.3.1.5; `clear_stale_interrupt_shadow` clears it in the
/// VMCS at entry when an event is injected). Without this, `sti; hlt` followed by INTERRUPT
/// never injects: the stale STI blocking enables a window that the guest's next `cli` closes.
fn interrupt_shadow<V: Vmx>(vmcs: &mut Vmcs<'_, V>) -> Result<u32, VmFail> {
    if vmcs.cache().is_dirty(VmcsField::GuestRip) {
        return Ok(0);
    }
    Ok(vmcs.guest_interruptibility_state()? & 3)
}

fn fix_ar(index: usize, ar: u32) -> u32 {
    if ar == 0 {
        return 1 << 16;
    }
    if ar & (1 << 16) != 0 {
        return ar;
    }
    match index {
        // TR: a TSS must be busy (11, or 3 for a 16-bit TSS).
        7 => {
            (ar & !0xf)
                | if ar & 0xf == 1 || ar & 0xf == 3 {
                    3
                } else {
                    11
                }
        }
        6 => ar,
        // Code/data (S=1): the accessed bit must be set.
        _ if ar & (1 << 4) != 0 => ar | 1,
        _ => ar,
    }
}

/// The guest's view of CR0 or CR4: host-owned bits from the read shadow (SDM §25.6.6).
fn guest_cr<V: Vmx>(vmcs: &mut Vmcs<'_, Counted<'_, V>>, n: u8) -> Result<u64, VmFail> {
    let (real, mask, shadow) = if n == 0 {
        (
            vmcs.guest_cr0()?,
            vmcs.cr0_guest_host_mask()?,
            vmcs.cr0_read_shadow()?,
        )
    } else {
        (
            vmcs.guest_cr4()?,
            vmcs.cr4_guest_host_mask()?,
            vmcs.cr4_read_shadow()?,
        )
    };
    Ok((real & !mask) | (shadow & mask))
}

/// A guest write of CR0: the shadow gets the value, the register the value with the bits VMX
/// forces; EFER.LMA and "IA-32e mode guest" follow a paging switch with EFER.LME (SDM Vol. 3A
/// §11.8.5 "Initializing IA-32e Mode").
fn write_cr0<V: Vmx>(vmcs: &mut Vmcs<'_, Counted<'_, V>>, v: u64) -> Result<(), VmFail> {
    let old = vmcs.guest_cr0()?;
    let mask = vmcs.cr0_guest_host_mask()?;
    let must = mask & old & !vmcs.cr0_read_shadow()?;
    vmcs.set_cr0_read_shadow(v);
    vmcs.set_guest_cr0(v | must);
    let efer = vmcs.guest_ia32_efer()?;
    if (old ^ v) & CR0_PG != 0 && efer & EFER_LME != 0 {
        let on = v & CR0_PG != 0;
        vmcs.set_guest_ia32_efer(if on {
            efer | EFER_LMA
        } else {
            efer & !EFER_LMA
        });
        let entry = vmcs.vm_entry_controls()?;
        let bit = EntryControls::IA32E_MODE_GUEST.bits();
        vmcs.set_vm_entry_controls(if on { entry | bit } else { entry & !bit });
    }
    Ok(())
}

fn write_cr4<V: Vmx>(vmcs: &mut Vmcs<'_, Counted<'_, V>>, v: u64) -> Result<(), VmFail> {
    let old = vmcs.guest_cr4()?;
    let mask = vmcs.cr4_guest_host_mask()?;
    let must = mask & old & !vmcs.cr4_read_shadow()?;
    vmcs.set_cr4_read_shadow(v);
    vmcs.set_guest_cr4(v | must);
    Ok(())
}

/// MSRs HAXM keeps in software per vCPU (haxm-abi.md §6): written values are remembered and
/// read back, nothing reaches the hardware. PLATFORM_ID (0x17), BIOS_SIGN_ID (0x8b), MCG_CAP/
/// MCG_STATUS (0x179/0x17a), MTRRcap (0xfe), MTRR def type (0x2ff), MISC_ENABLE (0x1a0),
/// PMC0-3 (0xc1-0xc4), PERFEVTSEL0-3 (0x186-0x189), variable MTRRs (0x200-0x20f), fixed MTRRs
/// (0x250, 0x258, 0x259, 0x268-0x26f) and the MC0-MC4 banks (0x400-0x413).
const fn is_soft_msr(msr: u32) -> bool {
    matches!(
        msr,
        0x17 | 0x8b
            | 0x179
            | 0x17a
            | 0xfe
            | 0x2ff
            | 0x1a0
            | 0xc1..=0xc4
            | 0x186..=0x189
            | 0x200..=0x20f
            | 0x250
            | 0x258
            | 0x259
            | 0x268..=0x26f
            | 0x400..=0x413
    )
}
