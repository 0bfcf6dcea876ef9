//! `rhax-check`: is VT-x usable on this Windows machine for rhax (or HAXM), what is in the way,
//! and which fix applies.
//!
//! The facts come from three places: CPUID from user mode ([`cpu`]: vendor, VMX, NX, the
//! hypervisor-present bit and the hypervisor's vendor leaf 0x40000000, where "Microsoft Hv"
//! means Hyper-V, which VBS, Memory Integrity (HVCI), Credential Guard, WSL2 and Windows
//! Sandbox all run on); the registry and the service manager (Device Guard settings, which of
//! `rhax` / `IntelHaxm` is installed, other VT-x users); and the driver behind `\\.\HAX`
//! (VERSION, CAPABILITY, and rhax's extension IOCTL, which HAXM does not answer). The
//! gathering is Windows-only (`main.rs`); the decision ([`diagnose`]) is a pure function of
//! [`Facts`], unit-tested on any host.

pub mod cpu;
pub mod diagnose;
pub mod report;

pub use cpu::CpuFacts;
pub use diagnose::{diagnose, Diagnosis, Finding, Severity};

use rhax_api::ext::RhaxExtInfo;
use rhax_api::{CapabilityInfo, ModuleVersion};

/// The two service names a HAXM-compatible driver is installed under: rhax's own and HAXM's
/// (Android Studio's SDK manager and emulator run `sc query intelhaxm` to decide whether HAXM
/// is installed; rhax can be installed under that name as a drop-in).
pub const HAX_SERVICES: [&str; 2] = ["rhax", "IntelHaxm"];

/// Other kernel drivers that use VT-x (each enters VMX operation while its VMs run, so only
/// one of them can run VMs at a time) or that mean Hyper-V is installed.
pub const OTHER_VTX_SERVICES: [(&str, &str); 8] = [
    ("hvservice", "Hyper-V hypervisor"),
    (
        "vmcompute",
        "Hyper-V Host Compute Service (WSL2, containers, Sandbox)",
    ),
    ("aehd", "Android Emulator Hypervisor Driver"),
    ("gvm", "Android Emulator Hypervisor Driver (old name)"),
    ("VBoxSup", "VirtualBox"),
    ("VBoxDrv", "VirtualBox (old name)"),
    ("vmx86", "VMware Workstation"),
    ("HAXM", "an old HAXM service name"),
];

/// `SERVICE_RUNNING` (`winsvc.h`).
pub const SERVICE_RUNNING: u32 = 4;
/// `SERVICE_STOPPED` (`winsvc.h`).
pub const SERVICE_STOPPED: u32 = 1;

/// What the registry and the service manager say about one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFacts {
    /// The service name.
    pub name: String,
    /// `ImagePath`.
    pub image_path: Option<String>,
    /// `Start` (0 boot, 1 system, 2 automatic, 3 demand, 4 disabled).
    pub start: Option<u32>,
    /// `dwCurrentState` from `QueryServiceStatus` (1 stopped ... 4 running), if it could be
    /// queried.
    pub state: Option<u32>,
}

impl ServiceFacts {
    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.state == Some(SERVICE_RUNNING)
    }
}

/// The Windows settings that put Hyper-V (and so VT-x) in use, or that affect rhax.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsFacts {
    /// `IsProcessorFeaturePresent(PF_VIRT_FIRMWARE_ENABLED)`: the firmware enabled
    /// virtualization and the OS can use it.
    pub vt_firmware_enabled: Option<bool>,
    /// `IsProcessorFeaturePresent(PF_NX_ENABLED)`.
    pub nx_enabled: Option<bool>,
    /// `IsProcessorFeaturePresent(PF_SECOND_LEVEL_ADDRESS_TRANSLATION)` (EPT).
    pub slat: Option<bool>,
    /// `HKLM\SYSTEM\CurrentControlSet\Control\DeviceGuard\Scenarios\
    /// HypervisorEnforcedCodeIntegrity` `Enabled` (Memory Integrity).
    pub hvci: Option<u32>,
    /// `HKLM\SYSTEM\CurrentControlSet\Control\DeviceGuard` `EnableVirtualizationBasedSecurity`.
    pub vbs: Option<u32>,
    /// `HKLM\SYSTEM\CurrentControlSet\Control\Lsa` `LsaCfgFlags` (Credential Guard: 1 or 2).
    pub credential_guard: Option<u32>,
    /// The services of [`OTHER_VTX_SERVICES`] that are installed.
    pub other_vtx: Vec<ServiceFacts>,
    /// The running kernel was booted with test signing (`SystemStartOptions` names
    /// TESTSIGNING; `None` when not read).
    pub test_signing: Option<bool>,
}

/// What the driver behind `\\.\HAX` answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Opening `\\.\HAX` failed with this Win32 error (2: no such device).
    pub open_error: Option<u32>,
    /// VERSION, if it answered.
    pub version: Option<ModuleVersion>,
    /// CAPABILITY, if it answered.
    pub capability: Option<CapabilityInfo>,
    /// rhax's EXT_INFO, if the driver is rhax.
    pub rhax: Option<RhaxExtInfo>,
    /// Why EXT_INFO was not answered (HAXM answers it as an unknown IOCTL).
    pub ext_error: Option<String>,
}

/// Who answers `\\.\HAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answerer {
    /// Nobody: the device does not exist.
    Nothing,
    /// rhax (its extension IOCTL answered with the magic).
    Rhax,
    /// A driver that speaks HAXM's VERSION but not rhax's extension: Intel HAXM (or a fork).
    Haxm,
    /// The device opens but does not answer VERSION.
    Unknown,
}

impl DeviceFacts {
    /// Who answers.
    pub fn answerer(&self) -> Answerer {
        if self.open_error.is_some() {
            Answerer::Nothing
        } else if self.rhax.is_some() {
            Answerer::Rhax
        } else if self.version.is_some() {
            Answerer::Haxm
        } else {
            Answerer::Unknown
        }
    }
}

/// Everything the diagnosis looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// CPUID.
    pub cpu: CpuFacts,
    /// The OS settings (`None` off Windows).
    pub os: Option<OsFacts>,
    /// The installed services among [`HAX_SERVICES`].
    pub services: Vec<ServiceFacts>,
    /// The device (`None` off Windows).
    pub device: Option<DeviceFacts>,
}
