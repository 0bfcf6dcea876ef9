//! [`Vm`]: a VM device (`\\.\hax_vmNN`, `/dev/hax_vm/vmNN`).

use rhax_api::ioctl::{
    HAX_VM_IOCTL_ADD_RAMBLOCK, HAX_VM_IOCTL_ALLOC_RAM, HAX_VM_IOCTL_NOTIFY_QEMU_VERSION,
    HAX_VM_IOCTL_PROTECT_RAM, HAX_VM_IOCTL_SET_RAM, HAX_VM_IOCTL_SET_RAM2,
    HAX_VM_IOCTL_VCPU_CREATE,
};
use rhax_api::{
    AllocRamInfo, Pod, ProtectRamInfo, QemuVersion, RamFlags, RamPermission, RamblockInfo,
    SetRamInfo, SetRamInfo2,
};

use rhax_api::ext::{
    ApicConfig, ApicFlags, RhaxMsi, RHAX_VM_IOCTL_ENABLE_APIC, RHAX_VM_IOCTL_SIGNAL_MSI,
};

use crate::error::{Error, Result};
use crate::system::CLIENT_API_VERSION;
use crate::transport::{Device, DevicePath, Transport};
use crate::vcpu::Vcpu;

/// An open VM. Dropping it closes the device; the driver frees the VM once its vCPUs are
/// closed too.
///
/// Memory IOCTLs take `&self`: QEMU issues SET_RAM from any thread while vCPUs run
/// (`haxm-clients.md` §2.2), so a `Vm` may be shared between threads if its transport and
/// handle allow.
pub struct Vm<T: Transport> {
    dev: Device<T>,
    id: u32,
}

impl<T: Transport> Vm<T> {
    /// Opens the device of VM `id` (already created with `HAX_IOCTL_CREATE_VM`).
    pub fn open(transport: T, id: u32) -> Result<Self> {
        Ok(Self {
            dev: Device::open(transport, DevicePath::Vm { vm: id })?,
            id,
        })
    }

    /// The VM id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `HAX_VM_IOCTL_NOTIFY_QEMU_VERSION` with `{cur_version: 4, least_version: 4}`, as QEMU
    /// sends it (HAXM enables fast-MMIO "basic" for >= 2 and "extra" for >= 4).
    pub fn notify_qemu_version(&self) -> Result<()> {
        self.notify_version(CLIENT_API_VERSION, CLIENT_API_VERSION)
    }

    /// `RHAX_VM_IOCTL_ENABLE_APIC` (rhax only): every vCPU created afterwards gets an
    /// in-kernel local APIC. `flags` must contain [`ApicFlags::ENABLE`]; the `NO_*` flags
    /// switch accelerations off. Call it before the first [`Vm::create_vcpu`].
    pub fn enable_apic(&self, flags: ApicFlags) -> Result<()> {
        let arg = ApicConfig {
            flags: flags.bits(),
            reserved: 0,
        };
        self.dev.send(
            &RHAX_VM_IOCTL_ENABLE_APIC,
            arg.as_bytes(),
            Error::EnableApic,
        )
    }

    /// `RHAX_VM_IOCTL_SIGNAL_MSI` (rhax only): a message-signalled interrupt, as a device
    /// would write `data` to `address` (SDM Vol. 3A §11.11).
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<()> {
        let arg = RhaxMsi {
            address,
            data,
            reserved: 0,
        };
        self.dev
            .send(&RHAX_VM_IOCTL_SIGNAL_MSI, arg.as_bytes(), Error::SignalMsi)
    }

    /// `HAX_VM_IOCTL_NOTIFY_QEMU_VERSION` with explicit versions.
    pub fn notify_version(&self, cur_version: u32, least_version: u32) -> Result<()> {
        let arg = QemuVersion {
            cur_version,
            least_version,
        };
        self.dev.send(
            &HAX_VM_IOCTL_NOTIFY_QEMU_VERSION,
            arg.as_bytes(),
            Error::NotifyQemuVersion,
        )
    }

    /// `HAX_VM_IOCTL_ALLOC_RAM`: registers `[va, va + size)` as a RAM block (32-bit size;
    /// prefer [`Vm::add_ramblock`] when the driver has `HAX_CAP_64BIT_RAMBLOCK`).
    ///
    /// # Safety
    ///
    /// The range must be memory of this process that stays allocated for as long as the VM
    /// exists and that no Rust object lives in: once mapped with SET_RAM, the guest reads and
    /// writes it at any time a vCPU runs.
    pub unsafe fn alloc_ram(&self, va: u64, size: u32) -> Result<()> {
        let arg = AllocRamInfo { size, pad: 0, va };
        self.dev
            .send(&HAX_VM_IOCTL_ALLOC_RAM, arg.as_bytes(), Error::AllocRam)
    }

    /// `HAX_VM_IOCTL_ADD_RAMBLOCK`: registers `[va, va + size)` as a RAM block.
    ///
    /// # Safety
    ///
    /// As for [`Vm::alloc_ram`].
    pub unsafe fn add_ramblock(&self, va: u64, size: u64) -> Result<()> {
        let arg = RamblockInfo {
            start_va: va,
            size,
            reserved: 0,
        };
        self.dev.send(
            &HAX_VM_IOCTL_ADD_RAMBLOCK,
            arg.as_bytes(),
            Error::AddRamblock,
        )
    }

    /// `HAX_VM_IOCTL_SET_RAM`: maps guest-physical `[gpa, gpa + size)` onto host `va`, which
    /// must lie inside a registered RAM block. `flags` may be empty or
    /// [`RamFlags::ROM`]; use [`Vm::unmap`] to unmap.
    ///
    /// [`RamFlags::STANDALONE`] (which registers the range as its own block) needs the
    /// promise of [`Vm::set_ram_unchecked`] and is refused here, as is any flag that does not
    /// fit SET_RAM's `u8`.
    pub fn set_ram(&self, gpa: u64, size: u32, va: u64, flags: RamFlags) -> Result<()> {
        let flags = checked_map_flags(flags)?;
        let flags = u8::try_from(flags.bits()).map_err(|_| Error::InvalidArgument {
            what: "SET_RAM flags do not fit in 8 bits",
        })?;
        let arg = SetRamInfo {
            pa_start: gpa,
            size,
            flags,
            pad: [0; 3],
            va,
        };
        self.send_set_ram(&arg)
    }

    /// `HAX_VM_IOCTL_SET_RAM` with `flags = HAX_RAM_INFO_INVALID` and `va = 0`: unmaps
    /// `[gpa, gpa + size)` (the API-v4 convention QEMU uses).
    pub fn unmap(&self, gpa: u64, size: u32) -> Result<()> {
        let arg = SetRamInfo {
            pa_start: gpa,
            size,
            flags: RamFlags::INVALID.bits() as u8,
            pad: [0; 3],
            va: 0,
        };
        self.send_set_ram(&arg)
    }

    /// `HAX_VM_IOCTL_SET_RAM` with any argument, including
    /// [`RamFlags::STANDALONE`].
    ///
    /// # Safety
    ///
    /// If `info` carries `STANDALONE`, the range `[info.va, info.va + info.size)` must meet
    /// the requirements of [`Vm::alloc_ram`].
    pub unsafe fn set_ram_unchecked(&self, info: &SetRamInfo) -> Result<()> {
        self.send_set_ram(info)
    }

    fn send_set_ram(&self, info: &SetRamInfo) -> Result<()> {
        self.dev
            .send(&HAX_VM_IOCTL_SET_RAM, info.as_bytes(), Error::SetRam)
    }

    /// `HAX_VM_IOCTL_SET_RAM2` (64-bit size, cap `HAX_CAP_64BIT_SETRAM`). Flags as for
    /// [`Vm::set_ram`], plus [`RamFlags::INVALID`] (with `va = 0`) to unmap.
    pub fn set_ram2(&self, gpa: u64, size: u64, va: u64, flags: RamFlags) -> Result<()> {
        let flags = checked_map_flags(flags)?;
        let arg = SetRamInfo2 {
            pa_start: gpa,
            size,
            va,
            flags: flags.bits(),
            reserved1: 0,
            reserved2: 0,
        };
        self.send_set_ram2(&arg)
    }

    /// `HAX_VM_IOCTL_SET_RAM2` with any argument, including [`RamFlags::STANDALONE`]
    /// (Android's user-backed mappings).
    ///
    /// # Safety
    ///
    /// If `info` carries `STANDALONE`, the range `[info.va, info.va + info.size)` must meet
    /// the requirements of [`Vm::alloc_ram`].
    pub unsafe fn set_ram2_unchecked(&self, info: &SetRamInfo2) -> Result<()> {
        self.send_set_ram2(info)
    }

    fn send_set_ram2(&self, info: &SetRamInfo2) -> Result<()> {
        self.dev
            .send(&HAX_VM_IOCTL_SET_RAM2, info.as_bytes(), Error::SetRam2)
    }

    /// `HAX_VM_IOCTL_PROTECT_RAM` (cap `HAX_CAP_RAM_PROTECTION`): with
    /// [`RamPermission::None`] every guest access to the range exits with
    /// [`Exit::PageFault`](crate::Exit::PageFault).
    pub fn protect_ram(&self, gpa: u64, size: u64, perm: RamPermission) -> Result<()> {
        let arg = ProtectRamInfo {
            pa_start: gpa,
            size,
            flags: perm as u32,
            reserved: 0,
        };
        self.dev
            .send(&HAX_VM_IOCTL_PROTECT_RAM, arg.as_bytes(), Error::ProtectRam)
    }

    /// `HAX_VM_IOCTL_VCPU_CREATE(id)`, then opens the vCPU device and sets up its tunnel
    /// (`HAX_VCPU_IOCTL_SETUP_TUNNEL`), in QEMU's order. HAXM takes ids 0..16; 0 is the BSP.
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu<T>> {
        self.dev
            .send(&HAX_VM_IOCTL_VCPU_CREATE, id.as_bytes(), |os| {
                Error::CreateVcpu { id, os }
            })?;
        Vcpu::open(self.dev.transport.clone(), self.id, id)
    }
}

/// Flags a safe mapping call accepts: ROM and INVALID, not STANDALONE, nothing unknown.
fn checked_map_flags(flags: RamFlags) -> Result<RamFlags> {
    if flags.contains(RamFlags::STANDALONE) {
        return Err(Error::InvalidArgument {
            what: "STANDALONE mappings need set_ram_unchecked/set_ram2_unchecked",
        });
    }
    if !RamFlags::all().contains(flags) {
        return Err(Error::InvalidArgument {
            what: "unknown RAM flags",
        });
    }
    Ok(flags)
}
