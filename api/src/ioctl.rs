//! IOCTL codes: every IOCTL of HAXM 7.8.0 with its device scope and its code on each host.
//!
//! Source: HAXM 7.8.0 `platforms/windows/hax_interface_windows.h`,
//! `platforms/linux/.../hax_interface_linux.h`, `platforms/darwin/hax_interface_mac.h`,
//! `platforms/netbsd/hax_interface_netbsd.h`, measured in `haxm-abi.md` §2 and
//! `haxm-ioctls.tsv`. Codes are computed by `const fn`s from the function number, direction
//! and argument size, as the platform headers' macros do; the unit tests below pin every one
//! to the literal number measured from the real headers.

use core::fmt;
use core::mem::size_of;

use crate::{
    AllocRamInfo, CapabilityInfo, FxLayout, ModuleVersion, MsrData, ProtectRamInfo, QemuVersion,
    RamblockInfo, SetMemlimit, SetRamInfo, SetRamInfo2, TunnelInfo, VcpuDebug, VcpuState,
};

/// `FILE_DEVICE_HAX`: the Windows device type of every HAXM device.
pub const HAX_DEVICE_TYPE: u32 = 0x4000;
/// `METHOD_BUFFERED`: input and output share the system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_ANY_ACCESS`.
pub const FILE_ANY_ACCESS: u32 = 0;

/// The Windows `CTL_CODE` macro (`devioctl.h`): `device << 16 | access << 14 | function << 2
/// | method`.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// The Windows code of a HAXM function number: `CTL_CODE(0x4000, function, METHOD_BUFFERED,
/// FILE_ANY_ACCESS)`.
pub const fn hax_windows_code(function: u16) -> u32 {
    ctl_code(
        HAX_DEVICE_TYPE,
        function as u32,
        METHOD_BUFFERED,
        FILE_ANY_ACCESS,
    )
}

/// The data direction of a POSIX IOCTL, named as in Linux `_IO`/`_IOR`/`_IOW`/`_IOWR`
/// ("read" = the kernel writes to user space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `_IO`: no data.
    None,
    /// `_IOR`: the kernel copies out.
    Read,
    /// `_IOW`: the kernel copies in.
    Write,
    /// `_IOWR`: both.
    ReadWrite,
}

/// The Linux `_IOC` encoding (`include/uapi/asm-generic/ioctl.h`): bits 0-7 nr, 8-15 type,
/// 16-29 size (14 bits), 30 write, 31 read.
pub const fn linux_ioc(dir: Direction, ty: u8, nr: u8, size: u16) -> u32 {
    let dir_bits: u32 = match dir {
        Direction::None => 0,
        Direction::Write => 1,
        Direction::Read => 2,
        Direction::ReadWrite => 3,
    };
    (dir_bits << 30) | (((size as u32) & 0x3fff) << 16) | ((ty as u32) << 8) | nr as u32
}

/// BSD `IOC_VOID` (`<sys/ioccom.h>`): no parameters.
pub const BSD_IOC_VOID: u32 = 0x2000_0000;
/// BSD `IOC_OUT`: copy out (used by `_IOR`).
pub const BSD_IOC_OUT: u32 = 0x4000_0000;
/// BSD `IOC_IN`: copy in (used by `_IOW`).
pub const BSD_IOC_IN: u32 = 0x8000_0000;
/// BSD `IOCPARM_MASK`: parameter length, 13 bits.
pub const BSD_IOCPARM_MASK: u32 = 0x1fff;

/// The BSD `_IOC` encoding of Darwin and NetBSD `<sys/ioccom.h>`: `inout | (len & 0x1fff) <<
/// 16 | group << 8 | num`. Note that `_IOR` sets `IOC_OUT` (bit 30) and `_IOW` sets `IOC_IN`
/// (bit 31), the reverse of Linux, and `_IO` sets `IOC_VOID`.
pub const fn bsd_ioc(dir: Direction, group: u8, num: u8, len: u16) -> u32 {
    let inout = match dir {
        Direction::None => BSD_IOC_VOID,
        Direction::Read => BSD_IOC_OUT,
        Direction::Write => BSD_IOC_IN,
        Direction::ReadWrite => BSD_IOC_IN | BSD_IOC_OUT,
    };
    inout | (((len as u32) & BSD_IOCPARM_MASK) << 16) | ((group as u32) << 8) | num as u32
}

/// The device an IOCTL is sent to. HAXM dispatches per device, so one Windows code can mean
/// different IOCTLs on different devices (0x40002440: CAPABILITY on the system device,
/// NOTIFY_QEMU_VERSION on a VM device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The control device (`\\.\HAX`, `/dev/HAX`).
    System,
    /// A VM device (`\\.\hax_vmNN`, `/dev/hax_vm/vmNN`).
    Vm,
    /// A vCPU device (`\\.\hax_vmNN_vcpuMM`, `/dev/hax_vmNN/vcpuMM`).
    Vcpu,
}

impl Scope {
    /// The name used in `haxm-ioctls.tsv`: `system`, `vm`, `vcpu`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Vm => "vm",
            Self::Vcpu => "vcpu",
        }
    }
}

/// One HAXM device (`haxm-abi.md` §1 (a)): the control device, a VM device or a vCPU device.
///
/// This is the identity both sides share: the user library opens a `Device` and the driver's
/// dispatcher keeps one in every handle. Its [`scope`](Self::scope) selects the IOCTL table a
/// code is looked up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// The control device: `\\.\HAX` / `/dev/HAX`.
    System,
    /// A VM device: `\\.\hax_vmNN` / `/dev/hax_vm/vmNN`.
    Vm {
        /// The VM id from `HAX_IOCTL_CREATE_VM`.
        vm: u32,
    },
    /// A vCPU device: `\\.\hax_vmNN_vcpuMM` / `/dev/hax_vmNN/vcpuMM`.
    Vcpu {
        /// The VM id.
        vm: u32,
        /// The vCPU id given to `HAX_VM_IOCTL_VCPU_CREATE`.
        vcpu: u32,
    },
}

impl Device {
    /// The IOCTL scope of the device.
    pub const fn scope(&self) -> Scope {
        match self {
            Self::System => Scope::System,
            Self::Vm { .. } => Scope::Vm,
            Self::Vcpu { .. } => Scope::Vcpu,
        }
    }

    /// The Win32 name, as QEMU builds it (`hax-windows.c`): `\\.\HAX`, `\\.\hax_vm%02d`,
    /// `\\.\hax_vm%02d_vcpu%02d`. Formatting needs no allocation.
    pub const fn windows(&self) -> impl fmt::Display {
        WindowsName(*self)
    }

    /// The POSIX path, as QEMU builds it (`hax-posix.c`): `/dev/HAX`, `/dev/hax_vm/vm%02d`,
    /// `/dev/hax_vm%02d/vcpu%02d`. Formatting needs no allocation.
    pub const fn posix(&self) -> impl fmt::Display {
        PosixName(*self)
    }
}

impl fmt::Display for Device {
    /// The POSIX path (the shorter to read in messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        PosixName(*self).fmt(f)
    }
}

struct WindowsName(Device);

impl fmt::Display for WindowsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Device::System => f.write_str(r"\\.\HAX"),
            Device::Vm { vm } => write!(f, r"\\.\hax_vm{vm:02}"),
            Device::Vcpu { vm, vcpu } => write!(f, r"\\.\hax_vm{vm:02}_vcpu{vcpu:02}"),
        }
    }
}

struct PosixName(Device);

impl fmt::Display for PosixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Device::System => f.write_str("/dev/HAX"),
            Device::Vm { vm } => write!(f, "/dev/hax_vm/vm{vm:02}"),
            Device::Vcpu { vm, vcpu } => write!(f, "/dev/hax_vm{vm:02}/vcpu{vcpu:02}"),
        }
    }
}

/// The size a POSIX IOCTL encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgSize {
    /// The size of a struct or integer, the same for 32- and 64-bit user space.
    Fixed(u16),
    /// `sizeof(struct hax_cpuid *)`: 8 for 64-bit user space, 4 for i386 (SET/GET_CPUID).
    Pointer,
}

impl ArgSize {
    const fn bytes(self, pointer_size: u16) -> u16 {
        match self {
            Self::Fixed(n) => n,
            Self::Pointer => pointer_size,
        }
    }
}

/// The POSIX definition of an IOCTL: `_IOx(0, nr, T)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PosixIoctl {
    /// The macro used (`_IO`, `_IOR`, `_IOW`, `_IOWR`).
    pub dir: Direction,
    /// The number (`nr`); the type byte is 0 on every POSIX host.
    pub nr: u8,
    /// The encoded size.
    pub size: ArgSize,
    /// Whether NetBSD defines it (it lacks `HAX_VCPU_IOCTL_GET_CPUID`).
    pub on_netbsd: bool,
}

impl PosixIoctl {
    const fn new(dir: Direction, nr: u8, size: usize) -> Self {
        // Both the Linux (14-bit) and the BSD (13-bit) size fields must hold the size.
        assert!(
            size <= BSD_IOCPARM_MASK as usize,
            "IOCTL argument too large for BSD"
        );
        Self {
            dir,
            nr,
            size: ArgSize::Fixed(size as u16),
            on_netbsd: true,
        }
    }
}

/// A host and user-space ABI whose IOCTL codes differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Windows (32- and 64-bit user space use the same codes).
    Windows,
    /// Linux, 64-bit user space.
    Linux,
    /// Linux, 32-bit (i386) user space.
    LinuxI386,
    /// macOS, 64-bit user space.
    Darwin,
    /// macOS, 32-bit user space.
    DarwinI386,
    /// NetBSD, 64-bit user space.
    NetBsd,
    /// NetBSD, 32-bit user space.
    NetBsdI386,
}

impl Platform {
    /// Every platform, in declaration order.
    pub const ALL: [Platform; 7] = [
        Self::Windows,
        Self::Linux,
        Self::LinuxI386,
        Self::Darwin,
        Self::DarwinI386,
        Self::NetBsd,
        Self::NetBsdI386,
    ];

    /// The platform this crate is compiled for, if HAXM exists there.
    pub const HOST: Option<Platform> = if cfg!(windows) {
        Some(Self::Windows)
    } else if cfg!(target_os = "linux") {
        if cfg!(target_pointer_width = "32") {
            Some(Self::LinuxI386)
        } else {
            Some(Self::Linux)
        }
    } else if cfg!(target_os = "macos") {
        if cfg!(target_pointer_width = "32") {
            Some(Self::DarwinI386)
        } else {
            Some(Self::Darwin)
        }
    } else if cfg!(target_os = "netbsd") {
        if cfg!(target_pointer_width = "32") {
            Some(Self::NetBsdI386)
        } else {
            Some(Self::NetBsd)
        }
    } else {
        None
    };
}

/// One IOCTL: its name, device and codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoctlDef {
    /// The HAXM (or rhax) macro name.
    pub name: &'static str,
    /// The device it is sent to.
    pub scope: Scope,
    /// The Windows function number, or `None` if Windows lacks it.
    pub windows_function: Option<u16>,
    /// The POSIX definition, or `None` if only Windows has it.
    pub posix: Option<PosixIoctl>,
}

impl IoctlDef {
    /// The Windows code.
    pub const fn windows(&self) -> Option<u32> {
        match self.windows_function {
            Some(f) => Some(hax_windows_code(f)),
            None => None,
        }
    }

    /// The Linux code for 64-bit user space (the `posix_code_hex` column).
    pub const fn linux(&self) -> Option<u32> {
        self.posix_code(Platform::Linux)
    }

    /// The code on `platform`, or `None` if that platform does not define the IOCTL.
    pub const fn code(&self, platform: Platform) -> Option<u32> {
        match platform {
            Platform::Windows => self.windows(),
            _ => self.posix_code(platform),
        }
    }

    const fn posix_code(&self, platform: Platform) -> Option<u32> {
        let Some(p) = self.posix else {
            return None;
        };
        let (bsd, ptr) = match platform {
            Platform::Windows => return None,
            Platform::Linux => (false, 8),
            Platform::LinuxI386 => (false, 4),
            Platform::Darwin => (true, 8),
            Platform::DarwinI386 => (true, 4),
            Platform::NetBsd | Platform::NetBsdI386 if !p.on_netbsd => return None,
            Platform::NetBsd => (true, 8),
            Platform::NetBsdI386 => (true, 4),
        };
        let size = p.size.bytes(ptr);
        Some(if bsd {
            bsd_ioc(p.dir, 0, p.nr, size)
        } else {
            linux_ioc(p.dir, 0, p.nr, size)
        })
    }
}

/// Builds an [`IoctlDef`] list: one documented `pub const` per IOCTL plus a table in order.
macro_rules! ioctl_table {
    (
        $(#[$tdoc:meta])* $table:ident;
        $($(#[$doc:meta])* $name:ident: $scope:ident, $win:expr, $posix:expr;)*
    ) => {
        $(
            $(#[$doc])*
            pub const $name: $crate::ioctl::IoctlDef = $crate::ioctl::IoctlDef {
                name: stringify!($name),
                scope: $crate::ioctl::Scope::$scope,
                windows_function: $win,
                posix: $posix,
            };
        )*
        $(#[$tdoc])*
        pub const $table: &[$crate::ioctl::IoctlDef] = &[$($name),*];
    };
}
pub(crate) use ioctl_table;

use Direction::{None as Io, Read as Ior, ReadWrite as Iowr, Write as Iow};

/// `_IOx(0, nr, size)` on every POSIX host.
pub(crate) const fn px(dir: Direction, nr: u8, size: usize) -> Option<PosixIoctl> {
    Some(PosixIoctl::new(dir, nr, size))
}

const U32: usize = size_of::<u32>();

ioctl_table! {
    /// Every HAXM IOCTL, in the order of `haxm-ioctls.tsv`.
    IOCTLS;
    /// `HAX_IOCTL_VERSION`: out [`ModuleVersion`]. API v1.
    HAX_IOCTL_VERSION: System, Some(0x900), px(Iowr, 0x20, size_of::<ModuleVersion>());
    /// `HAX_IOCTL_CREATE_VM`: out `u32` VM id. API v1.
    HAX_IOCTL_CREATE_VM: System, Some(0x901), px(Iowr, 0x21, U32);
    /// `HAX_IOCTL_DESTROY_VM`: in `u32`. Defined on POSIX only and never implemented by HAXM
    /// (a VM is destroyed by closing its handle).
    HAX_IOCTL_DESTROY_VM: System, None, px(Iow, 0x22, U32);
    /// `HAX_IOCTL_CAPABILITY`: out [`CapabilityInfo`]. API v1.
    HAX_IOCTL_CAPABILITY: System, Some(0x910), px(Ior, 0x23, size_of::<CapabilityInfo>());
    /// `HAX_IOCTL_SET_MEMLIMIT`: in [`SetMemlimit`]. API v1.
    HAX_IOCTL_SET_MEMLIMIT: System, Some(0x911), px(Iowr, 0x24, size_of::<SetMemlimit>());
    /// `HAX_VM_IOCTL_VCPU_CREATE`: in `u32` vCPU id (< 16). API v1 (id honoured since v3).
    HAX_VM_IOCTL_VCPU_CREATE: Vm, Some(0x902), px(Iowr, 0x80, U32);
    /// `HAX_VM_IOCTL_VCPU_CREATE_ORIG`: POSIX legacy `_IOR` alias of VCPU_CREATE.
    HAX_VM_IOCTL_VCPU_CREATE_ORIG: Vm, None, px(Ior, 0x80, size_of::<i32>());
    /// `HAX_VM_IOCTL_ALLOC_RAM`: in [`AllocRamInfo`]. API v1.
    HAX_VM_IOCTL_ALLOC_RAM: Vm, Some(0x903), px(Iowr, 0x81, size_of::<AllocRamInfo>());
    /// `HAX_VM_IOCTL_SET_RAM`: in [`SetRamInfo`]. API v1 (`HAX_RAM_INFO_INVALID` since v4).
    HAX_VM_IOCTL_SET_RAM: Vm, Some(0x904), px(Iowr, 0x82, size_of::<SetRamInfo>());
    /// `HAX_VM_IOCTL_VCPU_DESTROY`: in `u32`. Defined but never implemented by HAXM.
    HAX_VM_IOCTL_VCPU_DESTROY: Vm, Some(0x905), px(Ior, 0x83, U32);
    /// `HAX_VM_IOCTL_ADD_RAMBLOCK`: in [`RamblockInfo`]. Cap `HAX_CAP_64BIT_RAMBLOCK`.
    HAX_VM_IOCTL_ADD_RAMBLOCK: Vm, Some(0x913), px(Iow, 0x85, size_of::<RamblockInfo>());
    /// `HAX_VM_IOCTL_SET_RAM2`: in [`SetRamInfo2`]. Cap `HAX_CAP_64BIT_SETRAM`.
    HAX_VM_IOCTL_SET_RAM2: Vm, Some(0x914), px(Iowr, 0x86, size_of::<SetRamInfo2>());
    /// `HAX_VM_IOCTL_PROTECT_RAM`: in [`ProtectRamInfo`]. Cap `HAX_CAP_RAM_PROTECTION`.
    HAX_VM_IOCTL_PROTECT_RAM: Vm, Some(0x915), px(Iowr, 0x87, size_of::<ProtectRamInfo>());
    /// `HAX_VM_IOCTL_NOTIFY_QEMU_VERSION`: in [`QemuVersion`]. API v2. Same Windows code as
    /// `HAX_IOCTL_CAPABILITY`, on a different device.
    HAX_VM_IOCTL_NOTIFY_QEMU_VERSION: Vm, Some(0x910), px(Iow, 0x84, size_of::<QemuVersion>());
    /// `HAX_VCPU_IOCTL_RUN`: no argument; the result is in the tunnel. API v1.
    HAX_VCPU_IOCTL_RUN: Vcpu, Some(0x906), px(Io, 0xc0, 0);
    /// `HAX_VCPU_IOCTL_SET_MSRS`: in/out [`MsrData`] (`done`). API v1.
    HAX_VCPU_IOCTL_SET_MSRS: Vcpu, Some(0x907), px(Iowr, 0xc1, size_of::<MsrData>());
    /// `HAX_VCPU_IOCTL_GET_MSRS`: in/out [`MsrData`]. API v1.
    HAX_VCPU_IOCTL_GET_MSRS: Vcpu, Some(0x908), px(Iowr, 0xc2, size_of::<MsrData>());
    /// `HAX_VCPU_IOCTL_SET_FPU`: in [`FxLayout`]. API v1.
    HAX_VCPU_IOCTL_SET_FPU: Vcpu, Some(0x909), px(Iow, 0xc3, size_of::<FxLayout>());
    /// `HAX_VCPU_IOCTL_GET_FPU`: out [`FxLayout`]. API v1.
    HAX_VCPU_IOCTL_GET_FPU: Vcpu, Some(0x90a), px(Ior, 0xc4, size_of::<FxLayout>());
    /// `HAX_VCPU_IOCTL_SETUP_TUNNEL`: out [`TunnelInfo`]. API v1.
    HAX_VCPU_IOCTL_SETUP_TUNNEL: Vcpu, Some(0x90b), px(Iowr, 0xc5, size_of::<TunnelInfo>());
    /// `HAX_VCPU_IOCTL_INTERRUPT`: in `u32` vector (low 8 bits used). API v1.
    HAX_VCPU_IOCTL_INTERRUPT: Vcpu, Some(0x90c), px(Iowr, 0xc6, U32);
    /// `HAX_VCPU_SET_REGS`: in [`VcpuState`]. API v1.
    HAX_VCPU_SET_REGS: Vcpu, Some(0x90d), px(Iowr, 0xc7, size_of::<VcpuState>());
    /// `HAX_VCPU_GET_REGS`: out [`VcpuState`]. API v1.
    HAX_VCPU_GET_REGS: Vcpu, Some(0x90e), px(Iowr, 0xc8, size_of::<VcpuState>());
    /// `HAX_VCPU_IOCTL_KICKOFF`: Windows only; forces a running vCPU out with
    /// `HAX_EXIT_INTERRUPT`.
    HAX_VCPU_IOCTL_KICKOFF: Vcpu, Some(0x90f), None;
    /// `HAX_IOCTL_VCPU_DEBUG`: in [`VcpuDebug`]. Cap `HAX_CAP_DEBUG`.
    HAX_IOCTL_VCPU_DEBUG: Vcpu, Some(0x916), px(Iow, 0xc9, size_of::<VcpuDebug>());
    /// `HAX_VCPU_IOCTL_SET_CPUID`: in [`CpuidHeader`](crate::CpuidHeader) plus `total` entries. Cap
    /// `HAX_CAP_CPUID`. On POSIX the argument is the *address of a pointer* to the table and
    /// the code encodes the pointer size.
    HAX_VCPU_IOCTL_SET_CPUID: Vcpu, Some(0x917), Some(PosixIoctl {
        dir: Iow, nr: 0xca, size: ArgSize::Pointer, on_netbsd: true,
    });
    /// `HAX_VCPU_IOCTL_GET_CPUID`: in/out [`CpuidHeader`](crate::CpuidHeader) plus entries. HAXM 7.7.0, no cap bit.
    /// Not defined on NetBSD; POSIX passes the address of a pointer, as SET_CPUID.
    HAX_VCPU_IOCTL_GET_CPUID: Vcpu, Some(0x918), Some(PosixIoctl {
        dir: Iow, nr: 0xcb, size: ArgSize::Pointer, on_netbsd: false,
    });
}

impl IoctlDef {
    /// The HAXM or rhax extension IOCTL with this name.
    pub fn by_name(name: &str) -> Option<&'static IoctlDef> {
        IOCTLS
            .iter()
            .chain(crate::ext::EXT_IOCTLS)
            .find(|d| d.name == name)
    }

    /// The IOCTL that `code` means on a device of `scope` on `platform`, searching HAXM's
    /// IOCTLs and then rhax's extensions. Codes are unique per device and platform (tested),
    /// so the answer is unambiguous; HAXM dispatches the same way (`haxm-abi.md` §1).
    ///
    /// The constants are usable as patterns:
    ///
    /// ```
    /// use rhax_api::ioctl::{self, IoctlDef, HAX_VCPU_IOCTL_RUN};
    /// use rhax_api::{Platform, Scope};
    ///
    /// let def = IoctlDef::lookup(Platform::Windows, Scope::Vcpu, 0x4000_2418);
    /// assert!(matches!(def, Some(&HAX_VCPU_IOCTL_RUN)));
    /// // 0x40002440 is CAPABILITY on the system device, NOTIFY_QEMU_VERSION on a VM device.
    /// let vm = IoctlDef::lookup(Platform::Windows, Scope::Vm, 0x4000_2440).unwrap();
    /// assert_eq!(vm.name, "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION");
    /// ```
    pub fn lookup(platform: Platform, scope: Scope, code: u32) -> Option<&'static IoctlDef> {
        IOCTLS
            .iter()
            .chain(crate::ext::EXT_IOCTLS)
            .find(|d| d.scope == scope && d.code(platform) == Some(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literal codes measured from the real HAXM headers (`haxm-ioctls.tsv`): name, Windows,
    /// Linux x86_64, Darwin, NetBSD, Linux i386, Darwin i386. Not recomputed.
    type Code = Option<u32>;
    type Pinned = (&'static str, Code, Code, Code, Code, Code, Code);

    #[rustfmt::skip]
    const PINNED: &[Pinned] = &[
        ("HAX_IOCTL_VERSION", Some(0x40002400), Some(0xc0080020), Some(0xc0080020), Some(0xc0080020), Some(0xc0080020), Some(0xc0080020)),
        ("HAX_IOCTL_CREATE_VM", Some(0x40002404), Some(0xc0040021), Some(0xc0040021), Some(0xc0040021), Some(0xc0040021), Some(0xc0040021)),
        ("HAX_IOCTL_DESTROY_VM", None, Some(0x40040022), Some(0x80040022), Some(0x80040022), Some(0x40040022), Some(0x80040022)),
        ("HAX_IOCTL_CAPABILITY", Some(0x40002440), Some(0x80100023), Some(0x40100023), Some(0x40100023), Some(0x80100023), Some(0x40100023)),
        ("HAX_IOCTL_SET_MEMLIMIT", Some(0x40002444), Some(0xc0100024), Some(0xc0100024), Some(0xc0100024), Some(0xc0100024), Some(0xc0100024)),
        ("HAX_VM_IOCTL_VCPU_CREATE", Some(0x40002408), Some(0xc0040080), Some(0xc0040080), Some(0xc0040080), Some(0xc0040080), Some(0xc0040080)),
        ("HAX_VM_IOCTL_VCPU_CREATE_ORIG", None, Some(0x80040080), Some(0x40040080), Some(0x40040080), Some(0x80040080), Some(0x40040080)),
        ("HAX_VM_IOCTL_ALLOC_RAM", Some(0x4000240c), Some(0xc0100081), Some(0xc0100081), Some(0xc0100081), Some(0xc0100081), Some(0xc0100081)),
        ("HAX_VM_IOCTL_SET_RAM", Some(0x40002410), Some(0xc0180082), Some(0xc0180082), Some(0xc0180082), Some(0xc0180082), Some(0xc0180082)),
        ("HAX_VM_IOCTL_VCPU_DESTROY", Some(0x40002414), Some(0x80040083), Some(0x40040083), Some(0x40040083), Some(0x80040083), Some(0x40040083)),
        ("HAX_VM_IOCTL_ADD_RAMBLOCK", Some(0x4000244c), Some(0x40180085), Some(0x80180085), Some(0x80180085), Some(0x40180085), Some(0x80180085)),
        ("HAX_VM_IOCTL_SET_RAM2", Some(0x40002450), Some(0xc0280086), Some(0xc0280086), Some(0xc0280086), Some(0xc0280086), Some(0xc0280086)),
        ("HAX_VM_IOCTL_PROTECT_RAM", Some(0x40002454), Some(0xc0180087), Some(0xc0180087), Some(0xc0180087), Some(0xc0180087), Some(0xc0180087)),
        ("HAX_VM_IOCTL_NOTIFY_QEMU_VERSION", Some(0x40002440), Some(0x40080084), Some(0x80080084), Some(0x80080084), Some(0x40080084), Some(0x80080084)),
        ("HAX_VCPU_IOCTL_RUN", Some(0x40002418), Some(0x000000c0), Some(0x200000c0), Some(0x200000c0), Some(0x000000c0), Some(0x200000c0)),
        ("HAX_VCPU_IOCTL_SET_MSRS", Some(0x4000241c), Some(0xc20800c1), Some(0xc20800c1), Some(0xc20800c1), Some(0xc20800c1), Some(0xc20800c1)),
        ("HAX_VCPU_IOCTL_GET_MSRS", Some(0x40002420), Some(0xc20800c2), Some(0xc20800c2), Some(0xc20800c2), Some(0xc20800c2), Some(0xc20800c2)),
        ("HAX_VCPU_IOCTL_SET_FPU", Some(0x40002424), Some(0x420000c3), Some(0x820000c3), Some(0x820000c3), Some(0x420000c3), Some(0x820000c3)),
        ("HAX_VCPU_IOCTL_GET_FPU", Some(0x40002428), Some(0x820000c4), Some(0x420000c4), Some(0x420000c4), Some(0x820000c4), Some(0x420000c4)),
        ("HAX_VCPU_IOCTL_SETUP_TUNNEL", Some(0x4000242c), Some(0xc01800c5), Some(0xc01800c5), Some(0xc01800c5), Some(0xc01800c5), Some(0xc01800c5)),
        ("HAX_VCPU_IOCTL_INTERRUPT", Some(0x40002430), Some(0xc00400c6), Some(0xc00400c6), Some(0xc00400c6), Some(0xc00400c6), Some(0xc00400c6)),
        ("HAX_VCPU_SET_REGS", Some(0x40002434), Some(0xc20000c7), Some(0xc20000c7), Some(0xc20000c7), Some(0xc20000c7), Some(0xc20000c7)),
        ("HAX_VCPU_GET_REGS", Some(0x40002438), Some(0xc20000c8), Some(0xc20000c8), Some(0xc20000c8), Some(0xc20000c8), Some(0xc20000c8)),
        ("HAX_VCPU_IOCTL_KICKOFF", Some(0x4000243c), None, None, None, None, None),
        ("HAX_IOCTL_VCPU_DEBUG", Some(0x40002458), Some(0x404800c9), Some(0x804800c9), Some(0x804800c9), Some(0x404800c9), Some(0x804800c9)),
        ("HAX_VCPU_IOCTL_SET_CPUID", Some(0x4000245c), Some(0x400800ca), Some(0x800800ca), Some(0x800800ca), Some(0x400400ca), Some(0x800400ca)),
        ("HAX_VCPU_IOCTL_GET_CPUID", Some(0x40002460), Some(0x400800cb), Some(0x800800cb), None, Some(0x400400cb), Some(0x800400cb)),
    ];

    #[test]
    fn every_code_is_pinned_to_its_literal() {
        assert_eq!(IOCTLS.len(), PINNED.len());
        for (def, &(name, win, linux, darwin, netbsd, linux32, darwin32)) in
            IOCTLS.iter().zip(PINNED)
        {
            assert_eq!(def.name, name);
            assert_eq!(def.code(Platform::Windows), win, "{name} windows");
            assert_eq!(def.code(Platform::Linux), linux, "{name} linux");
            assert_eq!(def.code(Platform::Darwin), darwin, "{name} darwin");
            assert_eq!(def.code(Platform::NetBsd), netbsd, "{name} netbsd");
            assert_eq!(def.code(Platform::LinuxI386), linux32, "{name} linux i386");
            assert_eq!(
                def.code(Platform::DarwinI386),
                darwin32,
                "{name} darwin i386"
            );
            // NetBSD i386 is Darwin i386 wherever NetBSD defines the IOCTL.
            let netbsd32 = if netbsd.is_some() { darwin32 } else { None };
            assert_eq!(
                def.code(Platform::NetBsdI386),
                netbsd32,
                "{name} netbsd i386"
            );
        }
    }

    #[test]
    fn named_constants_and_scopes() {
        assert_eq!(HAX_VCPU_IOCTL_RUN.windows(), Some(0x40002418));
        assert_eq!(HAX_VCPU_IOCTL_RUN.linux(), Some(0xc0));
        assert_eq!(
            HAX_IOCTL_CAPABILITY.windows(),
            HAX_VM_IOCTL_NOTIFY_QEMU_VERSION.windows()
        );
        assert_ne!(
            HAX_IOCTL_CAPABILITY.scope,
            HAX_VM_IOCTL_NOTIFY_QEMU_VERSION.scope
        );
        assert_eq!(
            IoctlDef::by_name("HAX_VCPU_GET_REGS"),
            Some(&HAX_VCPU_GET_REGS)
        );
        assert_eq!(IoctlDef::by_name("nope"), None);
        assert_eq!(
            IoctlDef::lookup(Platform::Windows, Scope::System, 0x4000_2440),
            Some(&HAX_IOCTL_CAPABILITY)
        );
        assert_eq!(
            IoctlDef::lookup(Platform::Windows, Scope::Vcpu, 0x4000_2440),
            None
        );
        assert_eq!(
            IoctlDef::lookup(Platform::Linux, Scope::Vcpu, 0x4000_2418),
            None
        );
        assert_eq!(
            IoctlDef::lookup(Platform::Linux, Scope::Vcpu, 0x400400ca),
            None,
            "the i386 SET_CPUID code is not a 64-bit code"
        );
        assert_eq!(
            IoctlDef::lookup(Platform::LinuxI386, Scope::Vcpu, 0x400400ca),
            Some(&HAX_VCPU_IOCTL_SET_CPUID)
        );
        for def in IOCTLS {
            for p in [Platform::Windows, Platform::Linux, Platform::Darwin] {
                if let Some(code) = def.code(p) {
                    assert_eq!(
                        IoctlDef::lookup(p, def.scope, code),
                        Some(def),
                        "{}",
                        def.name
                    );
                }
            }
        }
        // Within one device, no two IOCTLs share a code on any platform.
        for p in Platform::ALL {
            for (i, a) in IOCTLS.iter().enumerate() {
                for b in &IOCTLS[i + 1..] {
                    if a.scope == b.scope && a.code(p).is_some() {
                        assert_ne!(a.code(p), b.code(p), "{} vs {} on {p:?}", a.name, b.name);
                    }
                }
            }
        }
    }

    #[test]
    fn encoders() {
        assert_eq!(ctl_code(0x22, 0x800, 0, 0), 0x0022_2000);
        assert_eq!(linux_ioc(Direction::Read, 0xae, 0x01, 0), 0x8000_ae01);
        assert_eq!(bsd_ioc(Direction::None, 0, 0xc0, 0), 0x2000_00c0);
        assert_eq!(
            bsd_ioc(Direction::Write, 0, 1, 0x2000),
            0x8000_0001,
            "13-bit length"
        );
    }

    /// A fixed buffer to format into: the crate is `no_std` even under test.
    struct Text {
        buf: [u8; 64],
        len: usize,
    }

    impl fmt::Write for Text {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            self.buf
                .get_mut(self.len..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    fn text(d: impl fmt::Display) -> Text {
        let mut t = Text {
            buf: [0; 64],
            len: 0,
        };
        fmt::write(&mut t, format_args!("{d}")).unwrap();
        t
    }

    fn eq(t: Text, want: &str) {
        assert_eq!(core::str::from_utf8(&t.buf[..t.len]).unwrap(), want);
    }

    #[test]
    fn device_scope_and_names_follow_haxm() {
        let (sys, vm, cpu) = (
            Device::System,
            Device::Vm { vm: 3 },
            Device::Vcpu { vm: 3, vcpu: 12 },
        );
        assert_eq!(sys.scope(), Scope::System);
        assert_eq!(vm.scope(), Scope::Vm);
        assert_eq!(cpu.scope(), Scope::Vcpu);
        // haxm-abi.md §1 (a): two-digit decimal ids, QEMU's hax-windows.c / hax-posix.c names.
        eq(text(sys.windows()), r"\\.\HAX");
        eq(text(vm.windows()), r"\\.\hax_vm03");
        eq(text(cpu.windows()), r"\\.\hax_vm03_vcpu12");
        eq(text(sys.posix()), "/dev/HAX");
        eq(text(vm.posix()), "/dev/hax_vm/vm03");
        eq(text(cpu.posix()), "/dev/hax_vm03/vcpu12");
        eq(text(cpu), "/dev/hax_vm03/vcpu12");
        // Ids past 99 are not truncated (`%02d` is a minimum width).
        eq(
            text(Device::Vcpu { vm: 100, vcpu: 7 }.windows()),
            r"\\.\hax_vm100_vcpu07",
        );
    }
}
