//! [`Vcpu`]: a vCPU device (`\\.\hax_vmNN_vcpuMM`, `/dev/hax_vmNN/vcpuMM`), its run loop and
//! the typed [`Exit`] it returns.

use rhax_api::ext::{
    EmulationControl, EmulationFlags, RhaxXsave, VcpuStats, RHAX_VCPU_IOCTL_GET_XSAVE,
    RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL, RHAX_VCPU_IOCTL_SET_XSAVE, RHAX_XSAVE_VERSION,
};
use rhax_api::ioctl::{
    HAX_IOCTL_VCPU_DEBUG, HAX_VCPU_GET_REGS, HAX_VCPU_IOCTL_GET_CPUID, HAX_VCPU_IOCTL_GET_FPU,
    HAX_VCPU_IOCTL_GET_MSRS, HAX_VCPU_IOCTL_INTERRUPT, HAX_VCPU_IOCTL_KICKOFF, HAX_VCPU_IOCTL_RUN,
    HAX_VCPU_IOCTL_SETUP_TUNNEL, HAX_VCPU_IOCTL_SET_CPUID, HAX_VCPU_IOCTL_SET_FPU,
    HAX_VCPU_IOCTL_SET_MSRS, HAX_VCPU_SET_REGS,
};
use rhax_api::{
    cpuid_size, CpuidEntry, CpuidHeader, CpuidTable, ExitStatus, FxLayout, IoDirection,
    MmioDirection, MsrData, PageFaultFlags, Pod, TunnelInfo, VcpuDebug, VcpuState, VmxMsr,
    HAX_EXIT_REASON_PAUSE_REQUEST, HAX_MAX_CPUID_ENTRIES, HAX_MAX_MSRS_PER_CALL, IOS_MAX_BUFFER,
};

use crate::error::{Error, Result};
use crate::transport::{Device, DevicePath, IoctlBuf, Transport};
use crate::tunnel::SharedTunnel;

const RUN: &str = HAX_VCPU_IOCTL_RUN.name;

/// Why RUN returned, decoded from the tunnel and the IO buffer.
///
/// It borrows the [`Vcpu`], so the vCPU cannot run again (and the driver cannot touch the IO
/// buffer) while an exit is being handled; the data of an IN or of an MMIO read is completed
/// by writing through the exit, and the driver consumes it at the next RUN.
#[derive(Debug)]
pub enum Exit<'a> {
    /// `HAX_EXIT_IO`: port IO. For OUT, `data` holds what the guest wrote; for IN, write the
    /// device's answer into `data` before the next RUN. `data` is `count * size` bytes
    /// (at most [`IOS_MAX_BUFFER`]) in ascending guest-memory order: with `df` set the guest
    /// processes the **last** element first, so walk it backwards (as QEMU does).
    Io {
        /// OUT (guest to device) or IN.
        direction: IoDirection,
        /// Element size: 1, 2 or 4.
        size: u8,
        /// Element count: 1 unless `string`; at most `64 / size`.
        count: u16,
        /// The port, the same for every element.
        port: u16,
        /// RFLAGS.DF for string IO.
        df: bool,
        /// INS/OUTS (the driver updates RCX/RSI/RDI and RIP itself).
        string: bool,
        /// The IO buffer's first `count * size` bytes.
        data: &'a mut [u8],
    },
    /// `HAX_EXIT_FAST_MMIO`: an access to unmapped (or ROM) guest-physical memory.
    FastMmio(MmioExit<'a>),
    /// `HAX_EXIT_MMIO`: the legacy MMIO exit (never produced by HAXM 7.8.0).
    Mmio {
        /// `mmio.gla`.
        gla: u64,
    },
    /// `HAX_EXIT_REALMODE`: the guest is in real mode and the host lacks unrestricted guest;
    /// user space must emulate.
    RealMode,
    /// `HAX_EXIT_INTERRUPT`: a host interrupt, an open interrupt window that was asked for,
    /// or `user_event_pending`. Inject pending interrupts and run again.
    Interrupt,
    /// `HAX_EXIT_UNKNOWN` (QEMU: `HAX_EXIT_UNKNOWN_VMEXIT`): VM entry failed or the exit was
    /// not handled; fatal for QEMU.
    UnknownVmExit {
        /// `_exit_reason`: the VMX basic exit reason, 0 for an entry failure.
        exit_reason: u32,
    },
    /// `HAX_EXIT_HLT`: the guest halted with nothing to inject; RIP is already past HLT.
    Hlt,
    /// `HAX_EXIT_STATECHANGE`: the vCPU is dead (triple fault, invalid state...); every later
    /// RUN returns this again.
    StateChange,
    /// `HAX_EXIT_PAUSED`: the pause asked for with [`Vcpu::request_pause`] (or the vCPU is
    /// being torn down). A pending IN or MMIO read was completed first.
    Paused,
    /// `HAX_EXIT_PAGEFAULT`: an access to memory protected with
    /// [`Vm::protect_ram`](crate::Vm::protect_ram).
    PageFault {
        /// The first protected page of the 2 MiB block containing the faulting address.
        gpa: u64,
        /// The access and permission bits as the driver reports them.
        flags: PageFaultFlags,
    },
    /// `HAX_EXIT_DEBUG`: #DB or #BP while debugging ([`Vcpu::debug`]).
    Debug {
        /// Guest RIP at the exception.
        rip: u64,
        /// #DB: the exit qualification (B0-B3, BD, BS); #BP: 0.
        dr6: u64,
        /// #DB: guest DR7; #BP: 0.
        dr7: u64,
    },
    /// An `_exit_status` this library does not know (a newer driver). QEMU treats such an
    /// exit as a reset request.
    Unknown(u32),
}

/// A `HAX_EXIT_FAST_MMIO` exit: the [`FastMmio`](rhax_api::FastMmio) in the IO buffer,
/// checked and decoded.
#[derive(Debug)]
pub struct MmioExit<'a> {
    /// The guest-physical address accessed (the source, for a move).
    pub gpa: u64,
    /// The access size: 1, 2, 4 or 8.
    pub size: u8,
    /// Read, write or MMIO-to-MMIO move.
    pub direction: MmioDirection,
    /// For a write: the data (low `size` bytes). For a read: whatever the buffer holds.
    pub value: u64,
    /// For a move: the destination (`gpa2`, the same bytes as `value`).
    pub gpa2: Option<u64>,
    tunnel: &'a mut SharedTunnel,
}

impl MmioExit<'_> {
    /// The low `size` bytes of `value`, masked.
    pub fn write_data(&self) -> u64 {
        self.value & size_mask(self.size)
    }

    /// Completes a read: stores `data` (masked to `size` bytes) in `hax_fastmmio.value`,
    /// which the driver moves into the guest's register or memory at the next RUN.
    ///
    /// Fails with [`Error::InvalidArgument`] unless this is a read.
    pub fn complete_read(&mut self, data: u64) -> Result<()> {
        if self.direction != MmioDirection::Read {
            return Err(Error::InvalidArgument {
                what: "complete_read on an MMIO exit that is not a read",
            });
        }
        let data = data & size_mask(self.size);
        self.tunnel.set_fastmmio_value(data);
        self.value = data;
        Ok(())
    }
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// An open vCPU with its tunnel.
///
/// All IOCTLs of one vCPU should come from one thread (HAXM's rule; QEMU breaks it only
/// while the vCPU thread is parked). `Vcpu` is `Send` when its transport and handle are.
pub struct Vcpu<T: Transport> {
    tunnel: SharedTunnel,
    info: TunnelInfo,
    dev: Device<T>,
    vm: u32,
    id: u32,
    pause_requested: bool,
    /// `HAX_VCPU_IOCTL_RUN`'s code on the transport's platform, worked out at open (`None`:
    /// the platform has none, and RUN answers [`Error::Unsupported`]).
    run_code: Option<u32>,
}

fn malformed(ioctl: &'static str, field: &'static str, value: u64) -> Error {
    Error::Malformed {
        ioctl,
        field,
        value,
    }
}

impl<T: Transport> Vcpu<T> {
    /// Opens the device of vCPU `id` of VM `vm` (already created with
    /// `HAX_VM_IOCTL_VCPU_CREATE`) and sets up its tunnel.
    pub fn open(transport: T, vm: u32, id: u32) -> Result<Self> {
        let dev = Device::open(transport, DevicePath::Vcpu { vm, vcpu: id })?;
        let run_code = HAX_VCPU_IOCTL_RUN.code(dev.transport.platform());
        let info = setup_tunnel(&dev)?;
        // SAFETY: the reply came from `T`, whose `Transport` contract says the two areas are
        // mapped in this address space until `dev` is closed; `dev` is dropped after
        // `tunnel` (field order) and nothing else in this process gets the addresses.
        let tunnel = unsafe { SharedTunnel::new(&info)? };
        Ok(Self {
            tunnel,
            info,
            dev,
            vm,
            id,
            pause_requested: false,
            run_code,
        })
    }

    /// The VM id.
    pub fn vm_id(&self) -> u32 {
        self.vm
    }

    /// The vCPU id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `HAX_VCPU_IOCTL_SETUP_TUNNEL` again, returning the raw answer (the mapping the vCPU
    /// already uses; HAXM answers with the same addresses every time). A reply that differs
    /// from the areas in use is refused as [`Error::Malformed`].
    pub fn setup_tunnel(&mut self) -> Result<TunnelInfo> {
        let info = setup_tunnel(&self.dev)?;
        let name = HAX_VCPU_IOCTL_SETUP_TUNNEL.name;
        if info.va != self.info.va {
            return Err(malformed(name, "va (moved)", info.va));
        }
        if info.io_va != self.info.io_va {
            return Err(malformed(name, "io_va (moved)", info.io_va));
        }
        if info.size < self.info.size {
            return Err(malformed(name, "size (shrunk)", info.size.into()));
        }
        Ok(info)
    }

    /// After a RUN that returned [`Exit::StateChange`]: the instruction rhax's MMIO emulator
    /// did not carry out (its guest-physical address and bytes), when that is why the vCPU
    /// stopped; `None` otherwise, and always with HAXM (rhax's `RhaxUnemulated` record in the
    /// IO buffer, recognized by its magic).
    pub fn unemulated(&mut self) -> Option<rhax_api::ext::RhaxUnemulated> {
        use rhax_api::Pod;
        let bytes = self
            .tunnel
            .io_data(core::mem::size_of::<rhax_api::ext::RhaxUnemulated>())?;
        let r = rhax_api::ext::RhaxUnemulated::read_from_prefix(bytes)?;
        (r.magic == rhax_api::ext::RHAX_UNEMULATED_MAGIC && r.len <= 15).then_some(r)
    }

    /// The SETUP_TUNNEL answer in use.
    pub fn tunnel_info(&self) -> TunnelInfo {
        self.info
    }

    /// The tunnel.
    pub fn tunnel(&self) -> &SharedTunnel {
        &self.tunnel
    }

    /// `HAX_VCPU_IOCTL_RUN`, then decodes why it returned.
    ///
    /// Before RUN `_exit_reason` is written: 8 if [`Vcpu::request_pause`] was called since
    /// the last RUN, else 0 (as the Android emulator does, so one pause request does not
    /// stick). A pending IN or MMIO read written through the previous [`Exit`] is completed
    /// by the driver at this RUN.
    ///
    /// A failing RUN is [`Error::Run`]; QEMU retries on [`OsError::is_retryable`]. An exit
    /// the ABI does not allow (IO count or size out of range, an unknown direction) is
    /// [`Error::Malformed`].
    ///
    /// [`OsError::is_retryable`]: crate::OsError::is_retryable
    pub fn run(&mut self) -> Result<Exit<'_>> {
        let reason = if core::mem::take(&mut self.pause_requested) {
            HAX_EXIT_REASON_PAUSE_REQUEST
        } else {
            0
        };
        self.tunnel.set_exit_reason(reason);
        let code = self.run_code.ok_or(Error::Unsupported {
            ioctl: HAX_VCPU_IOCTL_RUN.name,
        })?;
        self.dev
            .call_code(&HAX_VCPU_IOCTL_RUN, code, IoctlBuf::None, Error::Run, 0)?;
        decode_exit(&mut self.tunnel)
    }

    /// Asks the next RUN to complete any pending IO/MMIO, not enter the guest and return
    /// [`Exit::Paused`] (`_exit_reason = 8`, `haxm-clients.md` §5 item 5).
    pub fn request_pause(&mut self) {
        self.pause_requested = true;
    }

    /// `ready_for_interrupt_injection`: the driver has no queued vector and the guest can
    /// take an interrupt now. Inject with [`Vcpu::interrupt`] only when this is true.
    pub fn ready_for_interrupt_injection(&self) -> bool {
        self.tunnel.ready_for_interrupt_injection() != 0
    }

    /// Sets or clears `request_interrupt_window` (QEMU writes it before every RUN: set while
    /// an interrupt is waiting).
    pub fn request_interrupt_window(&mut self, on: bool) {
        self.tunnel.set_request_interrupt_window(i32::from(on));
    }

    /// `user_event_pending` bit 0.
    pub fn user_event_pending(&self) -> bool {
        self.tunnel.user_event_pending() & 1 != 0
    }

    /// Sets or clears `user_event_pending`: while set, the driver returns
    /// [`Exit::Interrupt`] at its next resume point and clears it.
    pub fn set_user_event_pending(&mut self, on: bool) {
        self.tunnel.set_user_event_pending(u32::from(on));
    }

    /// What QEMU's reset handler does: clear `user_event_pending` and
    /// `ready_for_interrupt_injection`.
    pub fn reset_tunnel_flags(&mut self) {
        self.tunnel.set_user_event_pending(0);
        self.tunnel.set_ready_for_interrupt_injection(0);
    }

    /// `apic_base`: the guest's IA32_APIC_BASE as of the last RUN.
    pub fn apic_base(&self) -> u64 {
        self.tunnel.snapshot().apic_base
    }

    /// `HAX_VCPU_SET_REGS`.
    pub fn set_regs(&self, regs: &VcpuState) -> Result<()> {
        self.dev
            .send(&HAX_VCPU_SET_REGS, regs.as_bytes(), Error::SetRegs)
    }

    /// `HAX_VCPU_GET_REGS`. HAXM leaves `_pde`, `_efer`, `_sysenter_*`, `_activity_state`
    /// and `_interruptibility_state` unwritten; read EFER and SYSENTER with
    /// [`Vcpu::get_msrs`].
    pub fn get_regs(&self) -> Result<VcpuState> {
        self.dev.fetch(&HAX_VCPU_GET_REGS, Error::GetRegs)
    }

    /// `HAX_VCPU_IOCTL_SET_FPU` (the 512-byte FXSAVE image).
    pub fn set_fpu(&self, fpu: &FxLayout) -> Result<()> {
        self.dev
            .send(&HAX_VCPU_IOCTL_SET_FPU, fpu.as_bytes(), Error::SetFpu)
    }

    /// `HAX_VCPU_IOCTL_GET_FPU`.
    pub fn get_fpu(&self) -> Result<FxLayout> {
        self.dev.fetch(&HAX_VCPU_IOCTL_GET_FPU, Error::GetFpu)
    }

    /// `HAX_VCPU_IOCTL_SET_MSRS`: writes `msrs` in order; returns `done`, the number the
    /// driver processed before the first one it refused.
    ///
    /// At most [`HAX_MAX_MSRS_PER_CALL`] (31) entries, else [`Error::TooManyMsrs`] and
    /// nothing is sent. Note: HAXM's Linux driver does not copy `done` back for SET_MSRS,
    /// so against it this returns 0 (the value sent, as QEMU sends it).
    pub fn set_msrs(&self, msrs: &[VmxMsr]) -> Result<usize> {
        let mut data =
            MsrData::from_entries(msrs).ok_or(Error::TooManyMsrs { count: msrs.len() })?;
        self.msr_call(&HAX_VCPU_IOCTL_SET_MSRS, &mut data, Error::SetMsrs)
    }

    /// `HAX_VCPU_IOCTL_GET_MSRS`: the caller fills `entry` of each element; the driver's
    /// values are stored into the first `done` elements, and `done` is returned (it stops
    /// at the first MSR it refuses).
    ///
    /// At most [`HAX_MAX_MSRS_PER_CALL`] (31) entries, else [`Error::TooManyMsrs`].
    pub fn get_msrs(&self, msrs: &mut [VmxMsr]) -> Result<usize> {
        let mut data =
            MsrData::from_entries(msrs).ok_or(Error::TooManyMsrs { count: msrs.len() })?;
        let done = self.msr_call(&HAX_VCPU_IOCTL_GET_MSRS, &mut data, Error::GetMsrs)?;
        msrs[..done].copy_from_slice(&data.entries[..done]);
        Ok(done)
    }

    fn msr_call(
        &self,
        def: &'static rhax_api::IoctlDef,
        data: &mut MsrData,
        err: fn(crate::OsError) -> Error,
    ) -> Result<usize> {
        debug_assert!(usize::from(data.nr_msr) <= HAX_MAX_MSRS_PER_CALL);
        let nr = data.nr_msr;
        self.dev.call(
            def,
            IoctlBuf::InOut(data.as_bytes_mut()),
            err,
            MsrData::SIZE,
        )?;
        if data.done > nr {
            return Err(malformed(def.name, "done", data.done.into()));
        }
        Ok(usize::from(data.done))
    }

    /// `HAX_VCPU_IOCTL_INTERRUPT`: queues external-interrupt `vector` for injection at the
    /// next VM entry that can take it (a `u32` with the vector in the low byte).
    pub fn interrupt(&self, vector: u8) -> Result<()> {
        let arg = u32::from(vector);
        self.dev
            .send(&HAX_VCPU_IOCTL_INTERRUPT, arg.as_bytes(), Error::Interrupt)
    }

    /// `HAX_VCPU_IOCTL_KICKOFF` (Windows only; [`Error::Unsupported`] elsewhere): forces a
    /// running vCPU out with [`Exit::Interrupt`]. It is meant to be sent from another thread
    /// while this vCPU is in RUN, which needs a second handle; on the vCPU's own thread it
    /// does nothing useful.
    pub fn kickoff(&self) -> Result<()> {
        self.dev.send(&HAX_VCPU_IOCTL_KICKOFF, &[], Error::Kickoff)
    }

    /// `HAX_IOCTL_VCPU_DEBUG` (cap `HAX_CAP_DEBUG`).
    pub fn debug(&self, debug: &VcpuDebug) -> Result<()> {
        self.dev
            .send(&HAX_IOCTL_VCPU_DEBUG, debug.as_bytes(), Error::Debug)
    }

    /// `HAX_VCPU_IOCTL_SET_CPUID` (cap `HAX_CAP_CPUID`): `1..=64` entries, else
    /// [`Error::BadCpuidCount`]. The argument is `hax_cpuid` followed by the entries; on
    /// POSIX the transport passes the address of a pointer to it (HAXM's quirk).
    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        if entries.is_empty() {
            return Err(Error::BadCpuidCount { count: 0 });
        }
        let table = CpuidTable::from_entries(entries).ok_or(Error::BadCpuidCount {
            count: entries.len(),
        })?;
        self.dev.send(
            &HAX_VCPU_IOCTL_SET_CPUID,
            table.used_bytes(),
            Error::SetCpuid,
        )
    }

    /// `HAX_VCPU_IOCTL_GET_CPUID` (HAXM 7.7.0; not on NetBSD): the driver's CPUID table. It
    /// is asked with room for [`HAX_MAX_CPUID_ENTRIES`] entries (HAXM holds 18).
    ///
    /// A reply whose `total` exceeds 64, or shorter than `8 + 40 * total` bytes, is an
    /// error.
    pub fn get_cpuid(&self) -> Result<CpuidTable> {
        let mut table = CpuidTable {
            total: HAX_MAX_CPUID_ENTRIES as u32,
            ..CpuidTable::default()
        };
        let got = self.dev.call(
            &HAX_VCPU_IOCTL_GET_CPUID,
            IoctlBuf::InOut(table.as_bytes_mut()),
            Error::GetCpuid,
            CpuidHeader::SIZE,
        )?;
        let total = table.total as usize;
        if total > HAX_MAX_CPUID_ENTRIES {
            return Err(malformed(
                HAX_VCPU_IOCTL_GET_CPUID.name,
                "total",
                table.total.into(),
            ));
        }
        // Cannot overflow: total <= 64.
        let needed = cpuid_size(total).unwrap_or(usize::MAX);
        if got < needed {
            return Err(Error::ShortReply {
                ioctl: HAX_VCPU_IOCTL_GET_CPUID.name,
                expected: needed,
                got,
            });
        }
        Ok(table)
    }

    /// `RHAX_VCPU_IOCTL_GET_STATS` (rhax only): this vCPU's exit statistics. A record whose
    /// header (version, size, number of reasons) is not the one this library knows is
    /// refused as [`Error::Malformed`].
    pub fn stats(&self) -> Result<VcpuStats> {
        crate::stats::get_stats(&self.dev)
    }

    /// `RHAX_VCPU_IOCTL_GET_XSAVE` (rhax only, [`ExtFeatures::XSAVE`]): the guest's XCR0 and
    /// whole XSAVE image, for snapshots. A record of another version is refused as
    /// [`Error::Malformed`].
    ///
    /// [`ExtFeatures::XSAVE`]: rhax_api::ext::ExtFeatures::XSAVE
    pub fn get_xsave(&self) -> Result<RhaxXsave> {
        let x: RhaxXsave = self
            .dev
            .fetch(&RHAX_VCPU_IOCTL_GET_XSAVE, Error::GetXsave)?;
        if x.version != RHAX_XSAVE_VERSION {
            let name = RHAX_VCPU_IOCTL_GET_XSAVE.name;
            return Err(malformed(name, "version", x.version.into()));
        }
        Ok(x)
    }

    /// `RHAX_VCPU_IOCTL_SET_XSAVE` (rhax only): restores XCR0 and the XSAVE image; the driver
    /// refuses (EINVAL, nothing changed) what XSETBV or XRSTOR would refuse.
    pub fn set_xsave(&self, x: &RhaxXsave) -> Result<()> {
        self.dev
            .send(&RHAX_VCPU_IOCTL_SET_XSAVE, x.as_bytes(), Error::SetXsave)
    }

    /// `RHAX_VCPU_IOCTL_RESET_STATS` (rhax only): zeroes this vCPU's counters.
    pub fn reset_stats(&self) -> Result<()> {
        crate::stats::reset_stats(&self.dev)
    }

    /// `RHAX_VCPU_IOCTL_SET_STATS_CONTROL` (rhax only): switches counting on or off at run
    /// time (off: the exit path neither counts nor times; the counters keep their values).
    pub fn set_counting(&self, on: bool) -> Result<()> {
        crate::stats::set_counting(&self.dev, on)
    }

    /// `RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL` (rhax only): `false` sends plain MOV MMIO
    /// accesses through the general emulator too, to measure both paths (the guest and the
    /// user side see the same exits either way); `true` (the default) restores the fast path.
    pub fn set_mmio_fast_path(&self, on: bool) -> Result<()> {
        let flags = if on {
            EmulationFlags::empty()
        } else {
            EmulationFlags::NO_MMIO_FAST_PATH
        };
        let control = EmulationControl {
            flags: flags.bits(),
            reserved: 0,
        };
        self.dev.send(
            &RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL,
            control.as_bytes(),
            Error::SetEmulationControl,
        )
    }
}

impl<T: Transport> Vcpu<T> {
    /// `RHAX_VCPU_IOCTL_APIC_LINT` (rhax only): LINT0 (`pin` 0) or LINT1 (1) goes to
    /// `asserted`; an LVT in ExtINT mode delivers `vector`.
    pub fn apic_lint(&self, pin: u32, asserted: bool, vector: u8) -> Result<()> {
        let arg = rhax_api::ext::RhaxLint {
            pin,
            level: u32::from(asserted),
            vector: u32::from(vector),
            reserved: 0,
        };
        self.dev.send(
            &rhax_api::ext::RHAX_VCPU_IOCTL_APIC_LINT,
            arg.as_bytes(),
            Error::ApicLint,
        )
    }

    /// `RHAX_VCPU_IOCTL_GET_APIC_STATE` (rhax only): the in-kernel local APIC's registers,
    /// timer and latched events. A layout version other than
    /// [`rhax_api::apic::RHAX_APIC_STATE_VERSION`] is [`Error::Malformed`].
    pub fn get_apic_state(&self) -> Result<rhax_api::apic::RhaxApicState> {
        let def = &rhax_api::ext::RHAX_VCPU_IOCTL_GET_APIC_STATE;
        let s: rhax_api::apic::RhaxApicState = self.dev.fetch(def, Error::GetApicState)?;
        if s.version != rhax_api::apic::RHAX_APIC_STATE_VERSION {
            return Err(malformed(def.name, "version", s.version.into()));
        }
        Ok(s)
    }
}

fn setup_tunnel<T: Transport>(dev: &Device<T>) -> Result<TunnelInfo> {
    dev.fetch(&HAX_VCPU_IOCTL_SETUP_TUNNEL, Error::SetupTunnel)
}

/// Reads the tunnel after RUN and builds the [`Exit`].
// Inlined into its one caller (`Vcpu::run`): out of line, the call, six callee-saved
// registers and the `Exit` returned through memory cost ~15 emulated instructions per RUN
// (docs/bench/profile.md, "OUT through HAXM RUN").
#[inline(always)]
fn decode_exit(tunnel: &mut SharedTunnel) -> Result<Exit<'_>> {
    // Field by field: the status, then only the payload member the status names (not a
    // snapshot of the whole tunnel per RUN).
    let raw_status = tunnel.exit_status();
    let Ok(status) = ExitStatus::try_from(raw_status) else {
        return Ok(Exit::Unknown(raw_status));
    };
    Ok(match status {
        ExitStatus::Io => {
            let io = *tunnel.payload().io();
            let direction = io
                .direction()
                .map_err(|_| malformed(RUN, "io._direction", io.direction.into()))?;
            let size = match io.size {
                1 | 2 | 4 => io.size as u8,
                _ => return Err(malformed(RUN, "io._size", io.size.into())),
            };
            let len = io.data_len();
            if io.count == 0 || len > IOS_MAX_BUFFER {
                return Err(malformed(RUN, "io._count", io.count.into()));
            }
            let data = tunnel
                .io_data(len)
                .ok_or(malformed(RUN, "io._count", io.count.into()))?;
            Exit::Io {
                direction,
                size,
                count: io.count,
                port: io.port,
                df: io.df != 0,
                string: io.is_string(),
                data,
            }
        }
        ExitStatus::FastMmio => {
            let m = tunnel.fastmmio();
            let direction = m
                .direction()
                .map_err(|_| malformed(RUN, "fastmmio.direction", m.direction.into()))?;
            if !matches!(m.size, 1 | 2 | 4 | 8) {
                return Err(malformed(RUN, "fastmmio.size", m.size.into()));
            }
            Exit::FastMmio(MmioExit {
                gpa: m.gpa,
                size: m.size,
                direction,
                value: m.value,
                gpa2: (direction == MmioDirection::Move).then_some(m.gpa2()),
                tunnel,
            })
        }
        ExitStatus::Mmio => Exit::Mmio {
            gla: tunnel.payload().mmio().gla,
        },
        ExitStatus::RealMode => Exit::RealMode,
        ExitStatus::Interrupt => Exit::Interrupt,
        ExitStatus::Unknown => Exit::UnknownVmExit {
            exit_reason: tunnel.exit_reason(),
        },
        ExitStatus::Hlt => Exit::Hlt,
        ExitStatus::StateChange => Exit::StateChange,
        ExitStatus::Paused => Exit::Paused,
        ExitStatus::PageFault => {
            let pf = *tunnel.payload().pagefault();
            Exit::PageFault {
                gpa: pf.gpa,
                flags: PageFaultFlags::from_bits_retain(pf.flags),
            }
        }
        ExitStatus::Debug => {
            let d = *tunnel.payload().debug();
            Exit::Debug {
                rip: d.rip,
                dr6: d.dr6,
                dr7: d.dr7,
            }
        }
    })
}
