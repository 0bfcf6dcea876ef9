//! The vCPU: its VMCS and bitmaps, the entry/exit path, and the guest MSRs swapped around runs.
//!
//! The entry path (SDM Vol. 3C chapters 27-28, 2023+ numbering): make the VMCS current on this
//! CPU if it is not (VMPTRLD; the full host state only when the VMCS arrives on a CPU), refresh
//! the per-thread host fields through the cache, flush the cache once, VMLAUNCH a clear VMCS or
//! VMRESUME a launched one (never VMCLEAR per run), then read the exit reason and only what that
//! reason needs. Every VMX instruction goes through [`Counted`] into the vCPU's [`VcpuStats`].

pub mod bits;
pub mod checked;
pub mod cpuid;
pub mod guest;
pub mod haxm;
mod xsave;

use alloc::boxed::Box;

use rhax_api::fpu::{FxLayout, XsaveArea};
use rhax_api::pod::Pod;

use crate::platform::{CpuIndex, PhysPages, Platform, PlatformError};
use crate::vmcs::exit::{decode_reason, ExitReason, VmExit};
use crate::vmcs::setup::{self, VmcsConfig, PASS_THROUGH_MSRS, PASS_THROUGH_TSC_AUX};
use crate::vmcs::stats::VcpuStats;
use crate::vmcs::{FlushError, Vmcs, VmcsCache, VmcsField};
use crate::vmx::negotiate::VmxControls;
use crate::vmx::root::{
    VmxRoot, IA32_CSTAR, IA32_FMASK, IA32_FS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_STAR,
    IA32_TSC_AUX,
};
use crate::vmx::{Counted, GuestRegisters, VmFail, Vmx};

/// Why a vCPU could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// Page allocation failed.
    Platform(PlatformError),
    /// VPID 0 is the host's (SDM §27.2.1.1: VPID must not be 0 when enabled).
    InvalidVpid,
}

/// Why a run did not reach a VM exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The VMCS is still active on another CPU (or on this CPU before VMX was re-enabled):
    /// call [`Vcpu::unload`] there first (SDM §25.11.1: a VMCS must be VMCLEARed before it is
    /// made current on another CPU).
    ActiveElsewhere {
        /// Where it is active.
        cpu: CpuIndex,
    },
    /// VMCLEAR, VMPTRLD or a VMREAD failed.
    Vmx(VmFail),
    /// A VMWRITE of the flush failed.
    Flush(FlushError),
    /// VMLAUNCH/VMRESUME failed (VMfailValid 7: controls, 8: host state, 4/5: launch state).
    Entry(VmFail),
}

impl From<VmFail> for RunError {
    fn from(e: VmFail) -> Self {
        RunError::Vmx(e)
    }
}

/// Guest values of the MSRs the guest uses without exits and VMX does not switch.
use checked::SWAPPED_MSRS;
const _: () = {
    let m = [
        IA32_KERNEL_GS_BASE,
        IA32_STAR,
        IA32_LSTAR,
        IA32_CSTAR,
        IA32_FMASK,
        IA32_TSC_AUX,
    ];
    let mut i = 0;
    while i < m.len() {
        assert!(m[i] == SWAPPED_MSRS[i]);
        i += 1;
    }
};

/// [`Vcpu::use_virtual_apic`] after the VMCS was set up (or with a misaligned page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlreadySetUp;

/// A virtual CPU.
pub struct Vcpu {
    vmcs_page: PhysPages,
    msr_bitmap: PhysPages,
    io_bitmaps: PhysPages,
    cache: Box<VmcsCache>,
    /// Guest GPRs (RSP, RIP, RFLAGS are VMCS fields).
    pub regs: GuestRegisters,
    host_rsp: u64,
    launched: bool,
    initialized: bool,
    needs_setup: bool,
    /// [`VmxRoot::token`] of the root the VMCS is resident under, 0 when it is not resident
    /// anywhere: one compare on the hot path says "resident here, under this VMXON" (tokens
    /// are unique across CPUs and VMXONs).
    resident_token: u64,
    /// The CPU the VMCS is resident on (meaningful while `resident_token` is not 0).
    resident_cpu: CpuIndex,
    controls: VmxControls,
    config: VmcsConfig,
    stats: Box<VcpuStats>,
    /// The TSC at the last exit while timing is on, else 0 (a TSC of 0 at an exit would lose
    /// one sample; an `Option` cost two more instructions per exit).
    exit_tsc: u64,
    /// Guest values of [`SWAPPED_MSRS`] while not loaded on the CPU.
    guest_msrs: [u64; 6],
    /// Host values saved while the guest's are loaded.
    host_msrs: Option<[u64; 6]>,
    /// The guest's x87/SSE and extended state while not loaded on the CPU (loaded with the
    /// MSRs, saved by [`Vcpu::put`]): a standard-format XSAVE image whose legacy region is
    /// the FXSAVE image of GET/SET_FPU.
    xsave: Box<XsaveArea>,
    /// The host's state while the guest's is loaded.
    host_xsave: Box<XsaveArea>,
    /// The guest's XCR0, loaded into the CPU only around VM entry (see [`Vcpu::run`]).
    xcr0: checked::GuestXcr0,
    /// While the guest's state is loaded with XSAVE/XRSTOR (host CR4.OSXSAVE=1): the host's
    /// XCR0, restored right after every exit. `None` when FXSAVE/FXRSTOR switched the state
    /// (a host without OSXSAVE) or nothing is loaded.
    host_xcr0: Option<u64>,
    /// The guest's CR4.OSXSAVE (host-owned in the CR4 guest/host mask, so every change is
    /// seen: a MOV to CR4 exit or SET_REGS).
    guest_osxsave: bool,
    /// The guest's CR2 (VMX does not switch CR2; it is loaded before each entry when the CPU's
    /// value differs and read back after each exit).
    cr2: u64,
}

/// [`Vcpu::destroy`] found the VMCS still active on a CPU (its VMCLEAR failed): the vCPU's
/// memory was leaked rather than freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StillResident;

impl Vcpu {
    /// Allocates the VMCS region, the MSR bitmap and the two I/O bitmaps, and prepares the
    /// power-on state (written into the VMCS on the first run).
    // Its own frame (see `HaxVcpu::new`).
    #[inline(never)]
    pub fn new<P: Platform>(
        platform: &P,
        controls: &VmxControls,
        vpid: u16,
        eptp: u64,
    ) -> Result<Vcpu, CreateError> {
        if vpid == 0 {
            return Err(CreateError::InvalidVpid);
        }
        let vmcs_page = platform.alloc_pages(1).map_err(CreateError::Platform)?;
        let mut msr_bitmap = match platform.alloc_pages(1) {
            Ok(p) => p,
            Err(e) => {
                platform.free_pages(vmcs_page);
                return Err(CreateError::Platform(e));
            }
        };
        let mut io_bitmaps = match platform.alloc_pages(2) {
            Ok(p) => p,
            Err(e) => {
                platform.free_pages(vmcs_page);
                platform.free_pages(msr_bitmap);
                return Err(CreateError::Platform(e));
            }
        };
        let mut pass = [0u32; PASS_THROUGH_MSRS.len() + 1];
        pass[..PASS_THROUGH_MSRS.len()].copy_from_slice(&PASS_THROUGH_MSRS);
        pass[PASS_THROUGH_MSRS.len()] = PASS_THROUGH_TSC_AUX;
        setup::fill_msr_bitmap(msr_bitmap.bytes_mut(), &pass);
        for msr in setup::WRITE_EXITING_MSRS {
            setup::set_msr_exits(msr_bitmap.bytes_mut(), msr, true, true);
        }
        let (a, b) = io_bitmaps.bytes_mut().split_at_mut(PhysPages::PAGE_SIZE);
        setup::fill_io_bitmaps(a, b);
        let config = VmcsConfig {
            eptp,
            vpid,
            msr_bitmap: msr_bitmap.phys(),
            io_bitmap_a: io_bitmaps.phys(),
            io_bitmap_b: io_bitmaps.phys() + PhysPages::PAGE_SIZE as u64,
            virtual_apic: 0,
            apic_access: 0,
        };
        // The large parts (VMCS cache, counters, two XSAVE areas: ~16 KiB) are allocated
        // zeroed in place, fallibly.
        let boxes = (|| {
            let cache = crate::heap::try_zeroed::<VmcsCache>()?;
            let stats = VcpuStats::boxed()?;
            let mut xsave = crate::heap::try_zeroed::<XsaveArea>()?;
            set_power_on_fpu(&mut xsave);
            let host_xsave = crate::heap::try_zeroed::<XsaveArea>()?;
            Some((cache, stats, xsave, host_xsave))
        })();
        let Some((cache, stats, xsave, host_xsave)) = boxes else {
            platform.free_pages(vmcs_page);
            platform.free_pages(msr_bitmap);
            platform.free_pages(io_bitmaps);
            return Err(CreateError::Platform(PlatformError::OutOfMemory));
        };
        Ok(Vcpu {
            vmcs_page,
            msr_bitmap,
            io_bitmaps,
            cache,
            regs: GuestRegisters::default(),
            host_rsp: 0,
            launched: false,
            initialized: false,
            needs_setup: true,
            resident_token: 0,
            resident_cpu: 0,
            controls: *controls,
            config,
            stats,
            exit_tsc: 0,
            guest_msrs: [0; 6],
            host_msrs: None,
            xsave,
            host_xsave,
            xcr0: checked::GuestXcr0::POWER_ON,
            host_xcr0: None,
            guest_osxsave: false,
            cr2: 0,
        })
    }

    /// Frees the pages. The VMCS must not be active on any CPU ([`Vcpu::unload`] first);
    /// otherwise everything is leaked instead ([`StillResident`]).
    pub fn destroy<P: Platform>(self, platform: &P) -> Result<(), StillResident> {
        if self.resident_token != 0 {
            // A CPU may still write this VMCS (SDM Vol. 3C §25.11.1: only VMCLEAR makes it
            // safe to reuse the region): its pages must not go back. Leaked, with no
            // allocation on this path (a close reaches it).
            core::mem::forget(self);
            return Err(StillResident);
        }
        platform.free_pages(self.vmcs_page);
        platform.free_pages(self.msr_bitmap);
        platform.free_pages(self.io_bitmaps);
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> &VcpuStats {
        &self.stats
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.stats.reset();
    }

    /// Switches counting on or off (`RHAX_VCPU_IOCTL_SET_STATS_CONTROL`).
    pub fn set_counting(&mut self, on: bool) {
        self.stats.set_counting(on);
    }

    /// Switches the host-cycle measurement per exit on or off (off by default; see
    /// [`VcpuStats::timing`]).
    pub fn set_timing(&mut self, on: bool) {
        self.stats.set_timing(on);
    }

    /// Chooses which exits per-field counts are kept for (none by default).
    pub fn set_field_filter(&mut self, filter: crate::counters::FieldFilter) {
        self.stats.set_field_filter(filter);
    }

    /// The CPU whose VMCS is this vCPU's, if any.
    pub fn resident_cpu(&self) -> Option<CpuIndex> {
        (self.resident_token != 0).then_some(self.resident_cpu)
    }

    /// The negotiated controls this vCPU runs with.
    pub fn controls(&self) -> &VmxControls {
        &self.controls
    }

    /// Switches to `controls` (the negotiated ones plus "use TPR shadow") with the
    /// virtual-APIC page at physical address `page` (SDM Vol. 3C §25.6.8). Only before the
    /// VMCS is first set up: `Err` afterwards, with nothing changed.
    pub fn use_virtual_apic(
        &mut self,
        controls: VmxControls,
        page: u64,
    ) -> Result<(), AlreadySetUp> {
        if !self.needs_setup || page & 0xfff != 0 {
            return Err(AlreadySetUp);
        }
        self.controls = controls;
        self.config.virtual_apic = page;
        Ok(())
    }

    /// Switches to `controls` (with "virtualize APIC accesses") and the APIC-access page at
    /// physical address `page` (SDM Vol. 3C §25.6.8). Only before the VMCS is first set up.
    pub fn use_apic_access(
        &mut self,
        controls: VmxControls,
        page: u64,
    ) -> Result<(), AlreadySetUp> {
        if !self.needs_setup || page & 0xfff != 0 {
            return Err(AlreadySetUp);
        }
        self.controls = controls;
        self.config.apic_access = page;
        Ok(())
    }

    /// Switches to `controls` (e.g. with virtual-interrupt delivery, whose structures the
    /// VMCS setup initializes). Only before the VMCS is first set up.
    pub fn use_controls(&mut self, controls: VmxControls) -> Result<(), AlreadySetUp> {
        if !self.needs_setup {
            return Err(AlreadySetUp);
        }
        self.controls = controls;
        Ok(())
    }

    /// Switches a vCPU that may already run to `controls` (built from [`Vcpu::controls`] with
    /// `with`/`without`, which apply the SDM's rules): before the first setup they are simply
    /// taken; afterwards the processor-based control fields that differ are written through
    /// the VMCS cache (flushed before the next entry, whose checks they then face).
    pub fn switch_controls<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        controls: VmxControls,
    ) -> Result<(), RunError> {
        if self.needs_setup {
            self.controls = controls;
            return Ok(());
        }
        let (old_proc, old_proc2) = (self.controls.proc, self.controls.proc2);
        self.with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
            // Only the bits that change: the field also holds what the vCPU turns on and off
            // per exit (interrupt- and NMI-window exiting, MTF).
            let diff = controls.proc.bits() ^ old_proc.bits();
            if diff != 0 {
                let cur = vmcs.primary_processor_based_vm_execution_controls()?;
                vmcs.set_primary_processor_based_vm_execution_controls(
                    (cur & !diff) | (controls.proc.bits() & diff),
                );
            }
            if controls.proc2 != old_proc2 {
                vmcs.set_secondary_processor_based_vm_execution_controls(controls.proc2.bits());
            }
            Ok(())
        })?
        .map_err(RunError::from)?;
        self.controls = controls;
        Ok(())
    }

    /// Whether RDMSR (`write` false) or WRMSR of `msr` exits: sets or clears its bit in the
    /// MSR bitmap (SDM Vol. 3C §25.6.9; read by the CPU at each access, no VMCS change).
    pub fn intercept_msr(&mut self, msr: u32, write: bool, exits: bool) {
        setup::set_msr_exits(self.msr_bitmap.bytes_mut(), msr, write, exits);
    }

    /// The VMCS configuration (EPTP, VPID, bitmap addresses).
    pub fn config(&self) -> &VmcsConfig {
        &self.config
    }

    /// Makes the VMCS current on `root`'s CPU if needed (see [`Vcpu::make_current`]).
    #[inline(always)]
    fn ensure_current<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), RunError> {
        // Every run and every handler access passes here: the common case (resident under
        // this root's VMXON, and the current VMCS) is two compares inline, the rest out of line.
        if self.resident_token == root.token && root.current_vmcs == Some(self.vmcs_page.phys()) {
            return Ok(());
        }
        self.make_current(root)
    }

    /// The slow part of [`Vcpu::ensure_current`]. On arrival on a CPU: VMCLEAR of a never
    /// used region (SDM §25.11.3 initializes a VMCS that way), VMPTRLD, the cache forgets
    /// everything not dirty, and the host state (and, the first time, the whole VMCS) is written.
    #[inline(never)]
    fn make_current<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), RunError> {
        let phys = self.vmcs_page.phys();
        let mut vmx = Counted::new(&mut root.vmx, &mut self.stats);
        match self.resident_token {
            t if t == root.token => {
                if root.current_vmcs != Some(phys) {
                    // Another vCPU's VMCS was current here; ours kept its state (no VMCLEAR
                    // needed between VMCSs on one CPU, SDM §25.11.1), so the cache stays valid.
                    // SAFETY: VMX root on this CPU (root invariant); the region is ours.
                    unsafe { vmx.vmptrld(phys) }?;
                    root.current_vmcs = Some(phys);
                }
                return Ok(());
            }
            // Resident on another CPU, or on this one under an older VMXON.
            0 => {}
            _ => {
                return Err(RunError::ActiveElsewhere {
                    cpu: self.resident_cpu,
                })
            }
        }
        if !self.initialized {
            let revision = root.caps.basic.revision_id & 0x7fff_ffff;
            self.vmcs_page.bytes_mut()[..4].copy_from_slice(&revision.to_le_bytes());
            // SAFETY: VMX root; the region is ours and carries the revision identifier.
            unsafe { vmx.vmclear(phys) }?;
            self.initialized = true;
            self.launched = false;
        }
        // SAFETY: VMX root; the region is ours, VMCLEARed, not active on another CPU.
        unsafe { vmx.vmptrld(phys) }?;
        root.current_vmcs = Some(phys);
        self.resident_token = root.token;
        self.resident_cpu = root.cpu;
        self.cache.invalidate_all();
        // The HOST_RSP value the stub caches is still the VMCS's (VMCLEAR keeps the data), but
        // this is another CPU's stack: force the stub to write it.
        self.host_rsp = 0;
        // SAFETY: CPL0 on the root's CPU.
        let cr3 = unsafe { vmx.read_cr3() };
        // SAFETY: as above.
        let fs_base = unsafe { vmx.rdmsr(IA32_FS_BASE) };
        // SAFETY: the VMCS mirrored by `self.cache` was just made current.
        let mut vmcs = unsafe { Vmcs::new(&mut self.cache, &mut vmx) };
        setup::write_host_state(&mut vmcs, &root.host, &self.controls, cr3, fs_base);
        if self.needs_setup {
            setup::write_controls(&mut vmcs, &self.controls, &self.config);
            setup::write_power_on_state(&mut vmcs, &self.controls);
            self.needs_setup = false;
        }
        Ok(())
    }

    /// Gives the handler access to the VMCS (through the cache) and the GPRs; loads the VMCS
    /// on this CPU first if needed.
    // Always inlined: the exit handlers call it several times per exit, and out of line each
    // call paid a frame and the closure's captures through memory (~12 emulated instructions).
    #[inline(always)]
    pub fn with_vmcs<V: Vmx, R>(
        &mut self,
        root: &mut VmxRoot<V>,
        f: impl FnOnce(&mut Vmcs<'_, Counted<'_, V>>, &mut GuestRegisters) -> R,
    ) -> Result<R, RunError> {
        self.ensure_current(root)?;
        let mut vmx = Counted::new(&mut root.vmx, &mut self.stats);
        // SAFETY: ensure_current made this vCPU's VMCS current on the root's CPU.
        let mut vmcs = unsafe { Vmcs::new(&mut self.cache, &mut vmx) };
        Ok(f(&mut vmcs, &mut self.regs))
    }

    /// Enters the guest and returns the decoded VM exit: [`Vcpu::enter`] and
    /// [`decode_reason`] (the VMREADs the reason needs) in one call.
    ///
    /// Runs on `root`'s CPU with interrupts disabled (the contract of [`VmxRoot::enable`]).
    /// The guest's STAR/LSTAR/CSTAR/FMASK/KERNEL_GS_BASE/TSC_AUX stay loaded after the return;
    /// call [`Vcpu::put`] before the thread can reach user mode or be preempted.
    pub fn run<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<VmExit, RunError> {
        Ok(self.enter_with(root, |exit, vmcs, _| decode_reason(vmcs, exit.raw()))??)
    }

    /// [`Vcpu::enter`], then `handle` with the exit's VMCS and GPRs at once: the VMCS is
    /// current (the exit just happened on this CPU), so unlike [`Vcpu::with_vmcs`] nothing is
    /// checked again. The shape of a run loop's hot handler. Same contract as [`Vcpu::run`].
    #[inline(always)]
    pub fn enter_with<V: Vmx, R>(
        &mut self,
        root: &mut VmxRoot<V>,
        handle: impl FnOnce(ExitReason, &mut Vmcs<'_, Counted<'_, V>>, &mut GuestRegisters) -> R,
    ) -> Result<R, RunError> {
        let exit = self.enter(root)?;
        let mut vmx = Counted::new(&mut root.vmx, &mut self.stats);
        // SAFETY: `enter` just returned from a VM exit on the root's CPU: this vCPU's VMCS is
        // current there.
        let mut vmcs = unsafe { Vmcs::new(&mut self.cache, &mut vmx) };
        Ok(handle(exit, &mut vmcs, &mut self.regs))
    }

    /// Decodes an exit [`Vcpu::enter`] returned: the VMREADs its reason needs (through the
    /// cache, so what the handler already read costs nothing).
    pub fn decode<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        exit: ExitReason,
    ) -> Result<VmExit, RunError> {
        self.with_vmcs(root, |vmcs, _| decode_reason(vmcs, exit.raw()))?
            .map_err(RunError::from)
    }

    /// Enters the guest and returns the exit reason, nothing decoded: the handler reads what
    /// it needs through [`Vcpu::with_vmcs`] (or [`Vcpu::decode`]). Same contract as
    /// [`Vcpu::run`].
    // Always inlined: every run loop calls it from one place, and a call of its own (frame,
    // six callee-saved registers, the result through memory) cost ~25 emulated instructions
    // per round trip.
    #[inline(always)]
    pub fn enter<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<ExitReason, RunError> {
        self.ensure_current(root)?;
        // HOST_CR3 and HOST_FS_BASE belong to the calling thread (SDM §28.5.1, §28.5.2 load
        // them at every exit): refreshed at the first run after a `put`, not per exit. Until
        // the next `put` the thread cannot be preempted nor reach user mode (this method's
        // contract), so neither can change; the VMCS keeps them across exits (and across a
        // VMCLEAR/VMPTRLD on this CPU, which `make_current` handles itself). Saves a MOV from
        // CR3, an RDMSR and two cache compares per exit.
        let thread_state = if self.host_msrs.is_none() {
            // SAFETY: CPL0 on the root's CPU (root invariant).
            let cr3 = unsafe { root.vmx.read_cr3() };
            // SAFETY: as above.
            let fs_base = unsafe { root.vmx.rdmsr(IA32_FS_BASE) };
            self.load_guest_msrs(root);
            Some((cr3, fs_base))
        } else {
            None
        };
        let Vcpu {
            cache,
            regs,
            host_rsp,
            launched,
            stats,
            exit_tsc,
            cr2,
            xcr0,
            host_xcr0,
            guest_osxsave,
            ..
        } = self;
        let mut vmx = Counted::new(&mut root.vmx, stats);
        // SAFETY: ensure_current made this vCPU's VMCS current on the root's CPU.
        let mut vmcs = unsafe { Vmcs::new(cache, &mut vmx) };
        if let Some((cr3, fs_base)) = thread_state {
            setup::write_host_thread_state(&mut vmcs, cr3, fs_base);
        }
        clear_stale_interrupt_shadow(&mut vmcs)?;
        // The guest's XCR0 is in the CPU only from the entry to the exit (KVM does the same):
        // host code, an NMI handler included, never runs with it. Nothing to do when it is the
        // host's, or while the guest's CR4.OSXSAVE is 0 (XGETBV, XSAVE and VEX instructions
        // #UD then, SDM Vol. 1 §13.3: XCR0 is invisible to it). No VMREAD: OSXSAVE is
        // host-owned in the CR4 guest/host mask, tracked in `guest_osxsave`.
        let swap_xcr0 = host_xcr0.filter(|&h| *guest_osxsave && h != xcr0.get());
        vmcs.flush().map_err(RunError::Flush)?;
        // Host cycles from exit to entry: two RDTSCs per exit, only while timing is on.
        if *exit_tsc != 0 {
            let t = core::mem::take(exit_tsc);
            let now = vmcs.vmx().rdtsc();
            vmcs.vmx().stats().add_host_cycles(now.wrapping_sub(t));
        }
        // SAFETY: CPL0 (contract of VmxRoot::enable).
        let cpu_cr2 = unsafe { vmcs.vmx().read_cr2() };
        if cpu_cr2 != *cr2 {
            // SAFETY: CPL0 with interrupts off: nothing can fault between this write and the
            // entry.
            unsafe { vmcs.vmx().write_cr2(*cr2) };
        }
        if swap_xcr0.is_some() {
            // SAFETY: CPL0, CR4.OSXSAVE=1 (host_xcr0 is Some only then), interrupts off; the
            // value passed the XSETBV checks against this host (GuestXcr0) and is undone
            // right after the exit.
            unsafe { vmcs.vmx().xsetbv0(xcr0.get()) };
        }
        // SAFETY: VMX root, this VMCS current, interrupts off (contract of VmxRoot::enable);
        // host state written for this CPU; `host_rsp` belongs to this VMCS.
        let entered = unsafe { vmcs.vmx().vmenter(regs, *launched, host_rsp) };
        if let Some(h) = swap_xcr0 {
            // SAFETY: restores the host's own XCR0 (read with XGETBV), CPL0, OSXSAVE=1.
            unsafe { vmcs.vmx().xsetbv0(h) };
        }
        // SAFETY: CPL0; the guest's CR2 is still in the register (interrupts off since exit).
        *cr2 = unsafe { vmcs.vmx().read_cr2() };
        if let Err(fail) = entered {
            // VMfailInvalid/VMfailValid: no VM exit happened, so the CPU cleared nothing
            // (`on_exit` assumes the exit's clearing of the entry's valid bit).
            vmcs.on_exit();
            vmcs.forget(VmcsField::VmEntryInterruptionInformation);
            return Err(RunError::Entry(fail));
        }
        if vmcs.vmx().stats().timing() {
            *exit_tsc = vmcs.vmx().rdtsc();
        }
        vmcs.on_exit();
        let raw = vmcs.exit_reason()?;
        // SDM §27.8: a VM entry that fails while loading guest state leaves the VMCS's launch
        // state as it was; any other exit means the entry succeeded (the VMCS is launched).
        if raw & (1 << 31) == 0 {
            *launched = true;
        }
        vmcs.vmx().stats().begin_exit(raw as u16);
        Ok(ExitReason::from_raw(raw))
    }

    /// VMCLEAR on the CPU where the VMCS is active (call it there, e.g. through
    /// [`Platform::run_on_cpu`], before the vCPU runs elsewhere or is destroyed). Restores the
    /// host MSRs first if the guest's are loaded.
    pub fn unload<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<(), RunError> {
        self.put(root);
        match self.resident_token {
            0 => return Ok(()),
            t if t == root.token => {}
            _ if self.resident_cpu != root.cpu => {
                return Err(RunError::ActiveElsewhere {
                    cpu: self.resident_cpu,
                })
            }
            // Resident under an older VMXON of this CPU: VMXOFF already made it inactive.
            _ => {
                self.resident_token = 0;
                self.launched = false;
                self.cache.invalidate_all();
                return Ok(());
            }
        }
        let phys = self.vmcs_page.phys();
        let mut vmx = Counted::new(&mut root.vmx, &mut self.stats);
        // SAFETY: VMX root on this CPU; the region is ours and active here.
        unsafe { vmx.vmclear(phys) }?;
        if root.current_vmcs == Some(phys) {
            root.current_vmcs = None;
        }
        self.resident_token = 0;
        self.launched = false;
        self.cache.invalidate_all();
        Ok(())
    }

    fn load_guest_msrs<V: Vmx>(&mut self, root: &mut VmxRoot<V>) {
        if self.host_msrs.is_some() {
            return;
        }
        // KERNEL_GS_BASE is the thread's; the others are the CPU's, read once at VMXON.
        // SAFETY: CPL0; the MSR exists on every Intel 64 CPU.
        let kernel_gs_base = unsafe { root.vmx.rdmsr(IA32_KERNEL_GS_BASE) };
        let [star, lstar, cstar, fmask, tsc_aux] = root.host.syscall_msrs;
        let host = [kernel_gs_base, star, lstar, cstar, fmask, tsc_aux];
        for (&msr, &guest) in SWAPPED_MSRS.iter().zip(&self.guest_msrs) {
            // SAFETY: CPL0; the MSRs exist on every Intel 64 CPU (TSC_AUX with RDTSCP, which
            // every VMX CPU with unrestricted guest has); the host value is restored by `put`
            // before the thread can leave the non-preemptible region.
            unsafe { root.vmx.wrmsr(msr, guest) };
        }
        self.load_guest_fpu(root);
        self.host_msrs = Some(host);
    }

    /// Saves the guest's swapped MSRs and restores the host's (before returning to user mode or
    /// enabling preemption). Cheap when nothing is loaded.
    pub fn put<V: Vmx>(&mut self, root: &mut VmxRoot<V>) {
        let Some(host) = self.host_msrs.take() else {
            return;
        };
        self.put_guest_fpu(root);
        // Only KERNEL_GS_BASE can have changed without an exit (SWAPGS); the others' writes
        // exit (setup::WRITE_EXITING_MSRS) and `set_swapped_msr` kept `guest_msrs` current.
        // SAFETY: CPL0; see load_guest_msrs.
        self.guest_msrs[0] = unsafe { root.vmx.rdmsr(IA32_KERNEL_GS_BASE) };
        for (&msr, &value) in SWAPPED_MSRS.iter().zip(&host) {
            // SAFETY: restores the value read in load_guest_msrs.
            unsafe { root.vmx.wrmsr(msr, value) };
        }
    }
}

impl Vcpu {
    /// The guest value of one of the MSRs swapped around runs (KERNEL_GS_BASE, STAR, LSTAR,
    /// CSTAR, FMASK, TSC_AUX), or `None` for another MSR. Reads the CPU when the guest's
    /// values are loaded.
    pub fn swapped_msr<V: Vmx>(&mut self, root: &mut VmxRoot<V>, msr: u32) -> Option<u64> {
        let i = SWAPPED_MSRS.iter().position(|&m| m == msr)?;
        if self.host_msrs.is_some() {
            // SAFETY: CPL0; the MSR exists (see load_guest_msrs) and holds the guest value.
            Some(unsafe { root.vmx.rdmsr(msr) })
        } else {
            Some(self.guest_msrs[i])
        }
    }

    /// Sets one of the swapped MSRs to a value WRMSR accepts (checked by the caller's
    /// [`checked::SwappedMsrValue::check`]).
    pub fn set_swapped_msr<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        value: checked::SwappedMsrValue,
    ) {
        self.guest_msrs[value.slot()] = value.value();
        if self.host_msrs.is_some() {
            // SAFETY: CPL0; the guest's values are loaded and `put` restores the host's; the
            // value passed the architectural checks WRMSR applies (SwappedMsrValue).
            unsafe { root.vmx.wrmsr(value.msr(), value.value()) };
        }
    }

    /// The guest's x87/SSE image (the legacy region of its XSAVE image). Current only while
    /// the guest's state is not loaded (after [`Vcpu::put`], which every RUN of the HAXM vCPU
    /// ends with).
    pub fn fpu(&self) -> &FxLayout {
        &self.xsave.legacy
    }

    /// Sets XMM register `n` (0-15) in the guest's saved image (after [`Vcpu::put`]): the
    /// result of an emulated SSE/AVX load; `high` the upper half of YMM `n` (VEX forms). Register
    /// bits carry no privileged meaning (unlike MXCSR), so the next XRSTOR cannot fault on them.
    pub fn set_xmm(&mut self, n: u8, value: u128, high: Option<u128>) {
        let at = FX_XMM0 + 16 * usize::from(n);
        if let Some(r) = self.xsave.legacy.as_bytes_mut().get_mut(at..at + 16) {
            r.copy_from_slice(&value.to_le_bytes());
            // XRSTOR loads a component only when XSTATE_BV says it is not in its initial
            // state (SDM Vol. 1 §13.8.1).
            self.xsave.header.xstate_bv |= checked::xcr0::SSE;
        }
        if let (Some(h), Some(_)) = (high, self.ymm_high(n)) {
            let at = YMM_HI128 + 16 * usize::from(n & 15);
            if let Some(r) = self.xsave.extended.get_mut(at..at + 16) {
                r.copy_from_slice(&h.to_le_bytes());
                self.xsave.header.xstate_bv |= checked::xcr0::AVX;
            }
        }
    }

    /// XMM register `n` (0-15) in the guest's saved image (after [`Vcpu::put`]).
    pub fn xmm(&self, n: u8) -> u128 {
        let at = FX_XMM0 + 16 * usize::from(n);
        let mut v = [0u8; 16];
        if let Some(r) = self.xsave.legacy.as_bytes().get(at..at + 16) {
            v.copy_from_slice(r);
        }
        u128::from_le_bytes(v)
    }

    /// Bits 255:128 of YMM `n` in the saved image, or `None` when the guest's XCR0 has no AVX
    /// state (VEX instructions are then #UD, SDM Vol. 2A §2.3.10.2).
    pub fn ymm_high(&self, n: u8) -> Option<u128> {
        if self.xcr0.get() & checked::xcr0::AVX == 0 {
            return None;
        }
        if self.xsave.header.xstate_bv & checked::xcr0::AVX == 0 {
            return Some(0); // the initial state
        }
        let at = YMM_HI128 + 16 * usize::from(n & 15);
        let b = self.xsave.extended.get(at..at + 16)?;
        let mut v = [0u8; 16];
        v.copy_from_slice(b);
        Some(u128::from_le_bytes(v))
    }

    /// Replaces the guest's x87/SSE image (after [`Vcpu::put`]) with one checked against the
    /// host's MXCSR_MASK, so the FXRSTOR/XRSTOR of the next run cannot fault. The x87 and SSE
    /// components are marked present (XSTATE_BV bits 0 and 1) so XRSTOR loads them rather
    /// than their initial configuration.
    pub fn set_fpu(&mut self, image: &checked::FxImage) {
        self.xsave.legacy = *image.get();
        self.xsave.header.xstate_bv |= checked::xcr0::X87 | checked::xcr0::SSE;
    }

    /// The guest's CR2.
    pub fn cr2(&self) -> u64 {
        self.cr2
    }

    /// Sets the guest's CR2 (loaded into the CPU before the next entry).
    pub fn set_cr2(&mut self, value: u64) {
        self.cr2 = value;
    }
}

/// The x87/SSE state after power-up/reset (SDM Vol. 3A Table 10-1: FCW 0x37F, MXCSR 0x1F80,
/// tags empty), x87 and SSE marked present so XRSTOR loads them; AVX and beyond in their
/// initial configuration (XSTATE_BV clear).
/// Offset of XMM0 in an FXSAVE image; XMM0-15 follow, 16 bytes each (SDM Vol. 1 §10.5.1,
/// Table 10-2).
const FX_XMM0: usize = 160;

/// Offset of the AVX component (YMM_Hi128) in `XsaveArea::extended`: the standard format puts
/// it at byte 576 of the area, the start of `extended` (SDM Vol. 1 §13.4.3, CPUID.(0xD,2).EBX).
const YMM_HI128: usize = 0;

fn set_power_on_fpu(a: &mut XsaveArea) {
    a.legacy.fcw = 0x37f;
    a.legacy.mxcsr = 0x1f80;
    a.legacy.mxcsr_mask = 0xffbf;
    a.header.xstate_bv = checked::xcr0::X87 | checked::xcr0::SSE;
}

/// Advances the guest RIP past the instruction that caused the exit (VM-exit instruction
/// length, SDM §28.2.5): two VMREADs (length, RIP) and one cached write.
///
/// Blocking by STI or MOV SS ends with the skipped instruction; it is cleared lazily (see
/// `clear_stale_interrupt_shadow`), which costs nothing unless an event is injected.
// Always inlined: the run loop's hot handler; out of line it paid a call and two pointer
// loads per VMREAD (~10 emulated instructions per round trip).
#[inline(always)]
pub fn skip_instruction<V: Vmx>(vmcs: &mut Vmcs<'_, V>) -> Result<(), VmFail> {
    let len = u64::from(vmcs.vm_exit_instruction_length()?);
    let rip = vmcs.guest_rip()?;
    vmcs.set_guest_rip(rip.wrapping_add(len));
    Ok(())
}

/// When the guest RIP was moved by software (dirty) the interruptibility state saved at the
/// exit may still say "blocking by STI/MOV SS" for an instruction that no longer comes next.
/// That only matters to VM entry when an event is injected or RFLAGS changed (SDM §27.3.1.5:
/// STI blocking requires RFLAGS.IF=1; §27.3.1.5 event-injection checks), so the VMREAD is paid
/// only then. Otherwise the stale blocking at most delays an interrupt-window exit by one
/// instruction, which the guest cannot tell from a later interrupt.
#[inline(always)]
fn clear_stale_interrupt_shadow<V: Vmx>(vmcs: &mut Vmcs<'_, V>) -> Result<(), VmFail> {
    let c = vmcs.cache();
    if !c.is_dirty(VmcsField::GuestRip) {
        return Ok(());
    }
    let injecting = c.is_dirty(VmcsField::VmEntryInterruptionInformation)
        && c.peek(VmcsField::VmEntryInterruptionInformation)
            .is_some_and(|v| v & (1 << 31) != 0);
    if injecting || c.is_dirty(VmcsField::GuestRflags) {
        let state = vmcs.guest_interruptibility_state()?;
        vmcs.set_guest_interruptibility_state(state & !3);
    }
    Ok(())
}
