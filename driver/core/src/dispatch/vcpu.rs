//! vCPU-device IOCTLs (`hax_vmNN_vcpuMM`): RUN, registers, FPU, MSRs, interrupts, CPUID, the
//! tunnel, debug, and rhax's statistics (`haxm-abi.md` §2-§4).
//!
//! A request that works on the vCPU borrows it from its slot ([`Hypervisor::lease`]) and holds
//! no dispatcher lock while it works (the lock hierarchy, [`super::lockorder`]). KICKOFF,
//! SETUP_TUNNEL and the CPUID table (the VM's) need no vCPU state and never wait for a RUN.

use crate::memory::try_arc::TryArc;
use core::sync::atomic::Ordering;

use rhax_api::{
    cpuid_size, CpuidHeader, FxLayout, MsrData, Pod, TunnelInfo, VcpuDebug, VcpuState,
    HAX_MAX_CPUID_ENTRIES, HAX_MAX_MSR_ARRAY, HAX_TUNNEL_PAGE_SIZE,
};

use super::lockorder::LockTracker;
use super::objects::{VcpuObject, VmObject, NOT_RUNNING};
use super::table::{Call, Ctx};
use super::{CpuRoots, ErrorKind, Hypervisor, Res, UserMapping};
use crate::platform::{CpuIndex, Platform};
use crate::vcpu::cpuid::CpuidTable;
use crate::vcpu::guest::MappedGuestMemory;
use crate::vcpu::haxm::{AfterMemory, HaxError, HaxVcpu, RunStep};
use crate::vcpu::RunError;
use crate::vmx::root::VmxRoot;

/// Why a lent root could not serve a vCPU operation. Narrow on purpose: it comes back through
/// the non-preemptible region on every RUN step, and a `HaxError` in it made every step copy
/// and re-pack the wide error's fields (the error itself waits in `on_this_cpu`'s slot).
enum OnCpu {
    /// The vCPU's VMCS is active on this other CPU: clear it there first.
    Migrate(CpuIndex),
    /// The operation failed; its error is in `on_this_cpu`'s `failed`.
    Failed,
}

type VmArc = TryArc<VmObject>;
type VcpuArc = TryArc<VcpuObject>;

impl<P: Platform + UserMapping, R: CpuRoots> Hypervisor<P, R> {
    pub(super) fn kickoff(&self, _vm: &VmArc, vcpu: &VcpuArc, _c: Call<'_>) -> Res<usize> {
        // No lock: RUN has the vCPU. A vCPU not in the guest has nothing to leave; one about to
        // enter sees the user-event/kick state the run loop checks.
        let cpu = vcpu.running_on.load(Ordering::Acquire);
        if cpu != NOT_RUNNING {
            self.platform.kick(cpu as CpuIndex);
        }
        Ok(0)
    }

    pub(super) fn setup_tunnel(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        // The mapping was made at VCPU_CREATE; a repeated call returns the same pointers
        // (`haxm-abi.md` §2).
        let info = TunnelInfo {
            va: vcpu.user_tunnel,
            io_va: vcpu.user_io_buffer,
            size: HAX_TUNNEL_PAGE_SIZE,
            pad: [0; 6],
        };
        c.ctx.write(&info, c.output)
    }

    /// SET_CPUID: the table is the VM's (`haxm-abi.md` §2), replaced whole, so running vCPUs
    /// keep the one they started with until their next RUN.
    pub(super) fn set_cpuid(&self, vm: &VmArc, _vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let header = cpuid_header(c.input, c.ctx)?;
        let need = cpuid_bytes(header.total, c.ctx)?;
        c.ctx.sizes(c.input, need, c.output, 0)?;
        let body = c
            .input
            .get(core::mem::size_of::<CpuidHeader>()..need)
            .unwrap_or(&[]);
        let t = LockTracker::new();
        let mut slot = vm.cpuid.lock(&t);
        // Copy-on-write (a RUN may hold the current table), built in its new allocation: no
        // 2.6 KiB table and no 64-entry array on the kernel stack.
        let oom = c.ctx.err(ErrorKind::Platform(
            crate::platform::PlatformError::OutOfMemory,
        ));
        let new = TryArc::try_new_zeroed_with(oom, |table: &mut CpuidTable| {
            table.copy_from(&slot);
            table
                .set_from_bytes(body)
                .map_err(|e| c.ctx.err(ErrorKind::Vcpu(HaxError::Cpuid(e))))
        })?;
        *slot = new;
        Ok(0)
    }

    pub(super) fn get_cpuid(&self, vm: &VmArc, _vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let header = cpuid_header(c.input, c.ctx)?;
        let room = header.total.min(HAX_MAX_CPUID_ENTRIES as u32) as usize;
        let need = cpuid_size(room).unwrap_or(usize::MAX);
        c.ctx.sizes(c.input, 0, c.output, need)?;
        let t = LockTracker::new();
        // A reference to the VM's table (no copy of it, or of its entries, on the stack).
        let table = TryArc::clone(&vm.cpuid.lock(&t));
        let total = table.entries().len() as u32;
        let copied = table.entries().len() <= room;
        let out_header = CpuidHeader {
            total,
            pad: 0,
            entries: [],
        };
        let mut n = c.ctx.write(&out_header, c.output)?;
        if !copied {
            // HAXM: `total` too small → the header with the table's size; POSIX -ENOMEM (the
            // header is still copied back), Windows success with Info 8.
            if c.ctx.windows() {
                return Ok(n);
            }
            return Err(c.ctx.err(ErrorKind::CpuidTooSmall { total }));
        }
        for e in table.entries() {
            n += c.ctx.write(e, c.output.get_mut(n..).unwrap_or(&mut []))?;
        }
        Ok(n)
    }

    /// RUN in steps (vcpu::haxm module documentation): the guest runs inside the
    /// non-preemptible region; an exit that needs guest memory (an EPT violation may pin, every
    /// access takes the memory lock) ends the step, the work is done here at passive level with
    /// no dispatcher lock held (the vCPU is lent to this request, the memory referenced), and
    /// the next step continues. A thread moved to another CPU in between finds its VMCS
    /// cleared there by `on_this_cpu`.
    pub(super) fn run(&self, vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let ctx = c.ctx;
        let t = LockTracker::new();
        let cpuid = vm.cpuid.lock(&t).clone();
        // Declared before the lease: dropped after it, so a vCPU closed meanwhile is torn down
        // (its VMCS cleared) before the last reference to the EPT can go.
        let memory = self.memory_of(vm, ctx)?;
        let mut lease = self.lease(vcpu, ctx)?;
        let hax = lease.get();
        // SAFETY: `UserMapping::guest_page` satisfies `MappedGuestMemory::new`'s contract (the
        // unsafe trait's requirement).
        let mapped = unsafe { MappedGuestMemory::new(&memory, &self.platform, P::guest_page) };
        let running = &vcpu.running_on;
        let mut first = true;
        loop {
            let done = self.on_this_cpu(hax, ctx, |hax, root| {
                running.store(root.cpu(), Ordering::Release);
                hax.note_running(root.cpu());
                let r = if first {
                    hax.run(root, &cpuid, &self.platform)
                } else {
                    hax.resume(root, &cpuid, &self.platform)
                };
                hax.note_running(NOT_RUNNING);
                running.store(NOT_RUNNING, Ordering::Release);
                // Only "done or not" leaves the region: the vCPU keeps its own copy of a
                // memory request, and the wide `RunStep` is not copied out of it.
                r.map(|step| matches!(step, RunStep::Done))
            })?;
            first = false;
            if done {
                self.apic_after_run(hax, &memory);
                return Ok(0);
            }
            let after = hax
                .complete_memory(&mapped)
                .map_err(|e| ctx.err(ErrorKind::Vcpu(e)))?;
            if after == AfterMemory::Done {
                return Ok(0);
            }
        }
    }

    pub(super) fn set_msrs(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        self.msrs(vcpu, c, true)
    }

    pub(super) fn get_msrs(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        self.msrs(vcpu, c, false)
    }

    fn msrs(&self, vcpu: &VcpuObject, c: Call<'_>, set: bool) -> Res<usize> {
        let mut d: MsrData = c.ctx.read(c.input)?;
        // At most 31 per call (`haxm-abi.md` §8 quirk 4); checked before any work.
        if usize::from(d.nr_msr) >= HAX_MAX_MSR_ARRAY {
            return Err(c.ctx.err(ErrorKind::TooManyMsrs { nr_msr: d.nr_msr }));
        }
        let mut lease = self.lease(vcpu, c.ctx)?;
        self.on_this_cpu(lease.get(), c.ctx, |hax, root| {
            if set {
                hax.set_msrs(root, &mut d)
            } else {
                hax.get_msrs(root, &mut d)
            }
        })?;
        c.ctx.write(&d, c.output)
    }

    pub(super) fn set_fpu(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let f: FxLayout = c.ctx.read(c.input)?;
        // Checked against this host's MXCSR_MASK (FXRSTOR would #GP in the host otherwise).
        let host = self
            .roots
            .with_current(|root| root.host_state().mxcsr_mask)
            .map_err(|_| c.ctx.err(ErrorKind::NoVmxRoot))?;
        self.lease(vcpu, c.ctx)?
            .get()
            .set_fpu(host, &f)
            .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))?;
        Ok(0)
    }

    pub(super) fn get_fpu(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let f = self.lease(vcpu, c.ctx)?.get().get_fpu();
        c.ctx.write(&f, c.output)
    }

    pub(super) fn set_regs(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let s: VcpuState = c.ctx.read(c.input)?;
        let mut lease = self.lease(vcpu, c.ctx)?;
        self.on_this_cpu(lease.get(), c.ctx, |hax, root| hax.set_regs(root, &s))?;
        Ok(0)
    }

    pub(super) fn get_regs(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let mut lease = self.lease(vcpu, c.ctx)?;
        // The 1 KiB state goes straight into the output: no copies through the closure's
        // result on the kernel stack.
        let out = &mut *c.output;
        let written = self.on_this_cpu(lease.get(), c.ctx, |hax, root| {
            Ok(hax.get_regs(root)?.write_to_prefix(out))
        })?;
        drop(lease);
        written.ok_or_else(|| {
            c.ctx.err(ErrorKind::OutputSize {
                expected: VcpuState::SIZE,
                got: c.output.len(),
            })
        })
    }

    pub(super) fn interrupt(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        // Linux copies one byte, Windows and Darwin a u32; only bits 7:0 count.
        let v: u32 = c.ctx.read(c.input)?;
        self.lease(vcpu, c.ctx)?.get().interrupt(v & 0xff);
        Ok(0)
    }

    pub(super) fn vcpu_debug(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let d: VcpuDebug = c.ctx.read(c.input)?;
        let mut lease = self.lease(vcpu, c.ctx)?;
        self.on_this_cpu(lease.get(), c.ctx, |hax, root| hax.debug(root, &d))?;
        Ok(0)
    }

    pub(super) fn get_stats(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        // Written record by record into the output (no 3312-byte copy on the stack).
        let n = self.lease(vcpu, c.ctx)?.get().write_stats(c.output);
        if n == 0 {
            return Err(c.ctx.err(ErrorKind::OutputSize {
                expected: rhax_api::ext::VcpuStats::SIZE,
                got: c.output.len(),
            }));
        }
        Ok(n)
    }

    pub(super) fn get_xsave(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        // Written straight into the output from a heap copy (4 KiB never on the stack).
        self.lease(vcpu, c.ctx)?
            .get()
            .write_xsave(c.output)
            .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))
    }

    pub(super) fn set_xsave(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let host = self
            .roots
            .with_current(|root| root.host_state().mxcsr_mask)
            .map_err(|_| c.ctx.err(ErrorKind::NoVmxRoot))?;
        let mut lease = self.lease(vcpu, c.ctx)?;
        self.on_this_cpu(lease.get(), c.ctx, |hax, root| {
            hax.set_xsave(root, host, c.input)
        })?;
        Ok(0)
    }

    pub(super) fn reset_stats(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        self.lease(vcpu, c.ctx)?.get().reset_stats();
        Ok(0)
    }

    pub(super) fn set_emulation_control(
        &self,
        _vm: &VmArc,
        vcpu: &VcpuArc,
        c: Call<'_>,
    ) -> Res<usize> {
        let control: rhax_api::ext::EmulationControl = c.ctx.read(c.input)?;
        self.lease(vcpu, c.ctx)?
            .get()
            .set_emulation_control(&control)
            .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))?;
        Ok(0)
    }

    pub(super) fn set_stats_control(&self, _vm: &VmArc, vcpu: &VcpuArc, c: Call<'_>) -> Res<usize> {
        let control: rhax_api::ext::StatsControl = c.ctx.read(c.input)?;
        self.lease(vcpu, c.ctx)?
            .get()
            .set_stats_control(&control)
            .map_err(|e| c.ctx.err(ErrorKind::Vcpu(e)))?;
        Ok(0)
    }

    /// Runs `f` on the current CPU's VMX root with the vCPU's VMCS usable there: if the VMCS
    /// is active on another CPU it is VMCLEARed there first (SDM Vol. 3C §25.11.1), through
    /// [`CpuRoots::with_cpu`], outside the non-preemptible region. The caller holds the vCPU's
    /// lease and no lock.
    fn on_this_cpu<T>(
        &self,
        hax: &mut HaxVcpu,
        ctx: Ctx,
        mut f: impl FnMut(&mut HaxVcpu, &mut VmxRoot<R::Vmx>) -> Result<T, HaxError>,
    ) -> Res<T> {
        // A thread may be moved between the attempts; two moves in a row are unlikely, three
        // mean something is wrong.
        let mut failed: Option<HaxError> = None;
        for _ in 0..3 {
            let r = self
                .roots
                .with_current(|root| {
                    match hax.core().resident_cpu() {
                        Some(cpu) if cpu != root.cpu() => return Err(OnCpu::Migrate(cpu)),
                        _ => {}
                    }
                    f(hax, root).map_err(|e| match e {
                        HaxError::Vmcs(RunError::ActiveElsewhere { cpu }) => OnCpu::Migrate(cpu),
                        e => {
                            failed = Some(e);
                            OnCpu::Failed
                        }
                    })
                })
                .map_err(|_| ctx.err(ErrorKind::NoVmxRoot))?;
            let cpu = match r {
                Ok(v) => return Ok(v),
                Err(OnCpu::Migrate(cpu)) => cpu,
                Err(OnCpu::Failed) => match failed.take() {
                    Some(e) => return Err(ctx.err(ErrorKind::Vcpu(e))),
                    // Never: `Failed` comes with its error. Reported as the loop's own end.
                    None => break,
                },
            };
            let core = hax.core();
            self.roots
                .with_cpu(cpu, |root| core.unload(root))
                .map_err(|_| ctx.err(ErrorKind::NoVmxRoot))?
                .map_err(|e| ctx.err(ErrorKind::Vcpu(HaxError::Vmcs(e))))?;
        }
        Err(
            ctx.err(ErrorKind::Vcpu(HaxError::Vmcs(RunError::ActiveElsewhere {
                cpu: self.platform.current_cpu(),
            }))),
        )
    }
}

fn cpuid_header(input: &[u8], ctx: Ctx) -> Res<CpuidHeader> {
    CpuidHeader::read_from_prefix(input).ok_or_else(|| {
        ctx.err(ErrorKind::InputSize {
            expected: core::mem::size_of::<CpuidHeader>(),
            got: input.len(),
        })
    })
}

/// SET_CPUID: `0 < total <= 64` (`haxm-abi.md` §2), then `8 + total * 40` bytes.
fn cpuid_bytes(total: u32, ctx: Ctx) -> Res<usize> {
    if total == 0 || total as usize > HAX_MAX_CPUID_ENTRIES {
        return Err(ctx.err(ErrorKind::CpuidTotal { total }));
    }
    Ok(cpuid_size(total as usize).unwrap_or(usize::MAX))
}
