//! What HAXM's Windows driver answers on the control device `\\.\HAX`, written from
//! `haxm-abi.md` §2 ("Per-IOCTL semantics and errors", "Unknown IOCTL"), independently of
//! rhax-core's dispatcher (the host tests check that the two agree, request by request).
//!
//! The requests are what the Wine stage can send without VT-x: every IOCTL code (system, VM,
//! vCPU, rhax's extensions, codes no HAXM defines, the same function numbers with another
//! transfer method or access) with input and output buffers shorter than, equal to and longer
//! than what the IOCTL needs.

use rhax_api::ext::EXT_IOCTLS;
use rhax_api::ioctl::{IoctlDef, IOCTLS};
use rhax_api::{CapabilityInfo, ModuleVersion, Pod, Scope, SetMemlimit};

use crate::status::{
    STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER,
    STATUS_UNSUCCESSFUL,
};

/// The buffers of one request (Windows `DeviceIoControl`'s input and output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// No buffer at all.
    None,
    /// Only an input buffer of this many bytes.
    In(usize),
    /// Only an output buffer of this many bytes.
    Out(usize),
    /// One buffer of this many bytes as both input and output (as QEMU passes SET/GET_MSRS).
    InOut(usize),
}

impl Shape {
    /// The input length.
    pub fn input_len(self) -> usize {
        match self {
            Shape::In(n) | Shape::InOut(n) => n,
            Shape::None | Shape::Out(_) => 0,
        }
    }

    /// The output length.
    pub fn output_len(self) -> usize {
        match self {
            Shape::Out(n) | Shape::InOut(n) => n,
            Shape::None | Shape::In(_) => 0,
        }
    }
}

impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Shape::None => f.write_str("no buffers"),
            Shape::In(n) => write!(f, "in {n}"),
            Shape::Out(n) => write!(f, "out {n}"),
            Shape::InOut(n) => write!(f, "in/out {n}"),
        }
    }
}

/// Every shape sent with every code: the lengths around each system IOCTL's need (4, 8, 16)
/// and well past it (a page), both directions, plus no buffer and a shared buffer.
pub const SHAPES: &[Shape] = &[
    Shape::None,
    Shape::In(1),
    Shape::In(15),
    Shape::In(16),
    Shape::In(4096),
    Shape::Out(1),
    Shape::Out(3),
    Shape::Out(4),
    Shape::Out(7),
    Shape::Out(8),
    Shape::Out(15),
    Shape::Out(16),
    Shape::Out(17),
    Shape::Out(4096),
    Shape::InOut(16),
    Shape::InOut(520),
    Shape::InOut(4096),
];

/// The answer expected for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success with this many bytes returned (`IoStatus.Information`).
    Ok(usize),
    /// Failure with this NTSTATUS.
    Status(u32),
}

/// The driver state the expectation depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverState {
    /// CAPABILITY reports WORKING (VT-x and NX usable).
    pub working: bool,
    /// The driver is rhax (answers rhax's extension IOCTLs); HAXM answers them as unknown.
    pub rhax: bool,
    /// A VM exists (SET_MEMLIMIT is refused then).
    pub vm_exists: bool,
}

/// A code to send to the control device, with a name for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The IOCTL code.
    pub code: u32,
    /// What it is.
    pub name: String,
}

/// `CTL_CODE(device, function, method, access)` (`winioctl.h`).
pub const fn ctl_code(device: u32, function: u32, method: u32, access: u32) -> u32 {
    (device << 16) | (access << 14) | (function << 2) | method
}

/// HAXM's device type (`haxm-abi.md` §1).
pub const HAX_DEVICE_TYPE: u32 = 0x4000;

fn find(code: u32, scope: Scope) -> Option<&'static IoctlDef> {
    IOCTLS
        .iter()
        .chain(EXT_IOCTLS.iter())
        .find(|d| d.scope == scope && d.windows() == Some(code))
}

/// The codes the control-device checks send: every Windows code rhax-api defines (on any
/// device), and codes no HAXM defines.
pub fn probes() -> Vec<Probe> {
    let mut v: Vec<Probe> = IOCTLS
        .iter()
        .chain(EXT_IOCTLS.iter())
        .filter_map(|d| {
            d.windows().map(|code| Probe {
                code,
                name: format!("{} ({:?} device)", d.name, d.scope),
            })
        })
        .collect();
    let extra = [
        // The gaps and edges of HAXM's function range (0x912 unused; 0x919 used by forks).
        (
            ctl_code(HAX_DEVICE_TYPE, 0x912, 0, 0),
            "function 0x912 (unused by HAXM)",
        ),
        (
            ctl_code(HAX_DEVICE_TYPE, 0x919, 0, 0),
            "function 0x919 (forks)",
        ),
        (ctl_code(HAX_DEVICE_TYPE, 0x8ff, 0, 0), "function 0x8ff"),
        (
            ctl_code(HAX_DEVICE_TYPE, 0xaff, 0, 0),
            "function 0xaff (rhax range end)",
        ),
        (ctl_code(HAX_DEVICE_TYPE, 0xfff, 0, 0), "function 0xfff"),
        // VERSION's function with the other transfer methods and access rights: a shell that
        // reads SystemBuffer for them would read a buffer the I/O manager did not make
        // (METHOD_NEITHER) or one sized for the input only (METHOD_*_DIRECT).
        (
            ctl_code(HAX_DEVICE_TYPE, 0x900, 1, 0),
            "VERSION's function, METHOD_IN_DIRECT",
        ),
        (
            ctl_code(HAX_DEVICE_TYPE, 0x900, 2, 0),
            "VERSION's function, METHOD_OUT_DIRECT",
        ),
        (
            ctl_code(HAX_DEVICE_TYPE, 0x900, 3, 0),
            "VERSION's function, METHOD_NEITHER",
        ),
        (
            ctl_code(HAX_DEVICE_TYPE, 0x900, 0, 1),
            "VERSION's function, FILE_READ_ACCESS",
        ),
        (
            ctl_code(HAX_DEVICE_TYPE, 0x910, 3, 3),
            "CAPABILITY's function, NEITHER, RW access",
        ),
        // Another device type, and the all-zero and all-ones codes.
        (
            ctl_code(0x22, 0x900, 0, 0),
            "FILE_DEVICE_UNKNOWN, function 0x900",
        ),
        (0, "code 0"),
        (u32::MAX, "code 0xffffffff"),
    ];
    v.extend(extra.iter().map(|&(code, name)| Probe {
        code,
        name: name.to_string(),
    }));
    v
}

/// The buffer sizes HAXM checks for a control-device IOCTL (input, output), or `None` when
/// the code means nothing there. Sizes from `haxm-abi.md` §2 and §3.
fn system_needs(code: u32, state: DriverState) -> Option<(usize, usize, &'static str)> {
    let d = find(code, Scope::System)?;
    Some(match d.name {
        "HAX_IOCTL_VERSION" => (0, ModuleVersion::SIZE, d.name),
        "HAX_IOCTL_CAPABILITY" => (0, CapabilityInfo::SIZE, d.name),
        "HAX_IOCTL_SET_MEMLIMIT" => (SetMemlimit::SIZE, 0, d.name),
        "HAX_IOCTL_CREATE_VM" => (0, 4, d.name),
        "RHAX_IOCTL_EXT_INFO" if state.rhax => (0, 16, d.name),
        // A request naming the VM and vCPU in, their counters out.
        "RHAX_IOCTL_VCPU_STATS" if state.rhax => (
            rhax_api::ext::VcpuStatsRequest::SIZE,
            rhax_api::ext::VcpuStats::SIZE,
            d.name,
        ),
        "RHAX_IOCTL_VCPU_FIELD_STATS" if state.rhax => (
            rhax_api::ext::VcpuStatsRequest::SIZE,
            rhax_api::ext::VcpuFieldStats::SIZE,
            d.name,
        ),
        _ => return None,
    })
}

/// What the control device answers to `code` with `shape`.
///
/// * Unknown on the control device (including every VM and vCPU code, which HAXM dispatches
///   per device): `STATUS_INVALID_DEVICE_REQUEST` whatever the buffers.
/// * An input or output buffer shorter than the IOCTL needs: `STATUS_INVALID_PARAMETER`, except
///   CREATE_VM's output: `STATUS_BUFFER_TOO_SMALL`. Longer buffers are accepted.
/// * CREATE_VM when not working: `STATUS_UNSUCCESSFUL`. SET_MEMLIMIT while a VM exists:
///   `STATUS_UNSUCCESSFUL`.
/// * Success returns the struct's size (SET_MEMLIMIT: 0 bytes).
pub fn system_device(code: u32, shape: Shape, state: DriverState) -> Outcome {
    let Some((need_in, need_out, name)) = system_needs(code, state) else {
        return Outcome::Status(STATUS_INVALID_DEVICE_REQUEST);
    };
    if shape.input_len() < need_in {
        return Outcome::Status(STATUS_INVALID_PARAMETER);
    }
    if shape.output_len() < need_out {
        return Outcome::Status(if name == "HAX_IOCTL_CREATE_VM" {
            STATUS_BUFFER_TOO_SMALL
        } else {
            STATUS_INVALID_PARAMETER
        });
    }
    match name {
        "HAX_IOCTL_CREATE_VM" if !state.working => Outcome::Status(STATUS_UNSUCCESSFUL),
        "HAX_IOCTL_SET_MEMLIMIT" if state.vm_exists => Outcome::Status(STATUS_UNSUCCESSFUL),
        // The probes' zero request names VM 0, vCPU 0: there is none without a VM.
        "RHAX_IOCTL_VCPU_STATS" | "RHAX_IOCTL_VCPU_FIELD_STATS" if !state.vm_exists => {
            Outcome::Status(crate::status::STATUS_OBJECT_NAME_NOT_FOUND)
        }
        _ => Outcome::Ok(need_out),
    }
}

/// Whether sending `code` with `shape` to the control device changes driver state on success
/// (CREATE_VM creates a VM, SET_MEMLIMIT sets the quota); the checks restore what they change.
pub fn changes_state(code: u32, state: DriverState) -> bool {
    matches!(
        system_needs(code, state),
        Some((_, _, "HAX_IOCTL_CREATE_VM" | "HAX_IOCTL_SET_MEMLIMIT"))
    )
}

/// The fixed minimum buffer sizes (input, output) HAXM's Windows driver checks for a VM or
/// vCPU IOCTL before doing anything (`haxm-abi.md` §2, struct sizes §3), or `None` when the
/// IOCTL takes no buffer or computes its size from the request (SET/GET_CPUID).
pub fn device_needs(def: &IoctlDef) -> Option<(usize, usize)> {
    Some(match def.name {
        "HAX_VM_IOCTL_VCPU_CREATE" => (4, 0),
        "HAX_VM_IOCTL_ALLOC_RAM" => (16, 0),
        "HAX_VM_IOCTL_ADD_RAMBLOCK" => (24, 0),
        "HAX_VM_IOCTL_SET_RAM" => (24, 0),
        "HAX_VM_IOCTL_SET_RAM2" => (40, 0),
        "HAX_VM_IOCTL_PROTECT_RAM" => (24, 0),
        "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION" => (8, 0),
        "HAX_VCPU_IOCTL_SETUP_TUNNEL" => (0, 24),
        "HAX_VCPU_IOCTL_SET_MSRS" | "HAX_VCPU_IOCTL_GET_MSRS" => (520, 520),
        "HAX_VCPU_IOCTL_SET_FPU" => (512, 0),
        "HAX_VCPU_IOCTL_GET_FPU" => (0, 512),
        "HAX_VCPU_SET_REGS" => (512, 0),
        "HAX_VCPU_GET_REGS" => (0, 512),
        "HAX_VCPU_IOCTL_INTERRUPT" => (4, 0),
        "HAX_IOCTL_VCPU_DEBUG" => (72, 0),
        "RHAX_VCPU_IOCTL_GET_STATS" => (0, 3312),
        _ => return None,
    })
}

/// Requests one byte short of what `def` needs (and with no buffer at all): HAXM answers
/// `STATUS_INVALID_PARAMETER` before looking at the contents, so nothing changes.
pub fn short_shapes(def: &IoctlDef) -> Vec<Shape> {
    match device_needs(def) {
        Some((i, 0)) => vec![Shape::None, Shape::In(i - 1)],
        Some((0, o)) => vec![Shape::None, Shape::Out(o - 1)],
        Some((i, o)) => vec![Shape::None, Shape::InOut(i.min(o) - 1)],
        None => Vec::new(),
    }
}

/// Codes a device of `scope` does not serve (every other device's codes, minus the ones that
/// mean something there too), all answered `STATUS_INVALID_PARAMETER` on VM and vCPU devices
/// (`haxm-abi.md` §2, "Unknown IOCTL").
pub fn foreign_codes(scope: Scope) -> Vec<(u32, &'static str)> {
    let served: Vec<u32> = IOCTLS
        .iter()
        .chain(EXT_IOCTLS.iter())
        .filter(|d| d.scope == scope && d.name != "HAX_VM_IOCTL_VCPU_DESTROY")
        .filter_map(|d| d.windows())
        .collect();
    IOCTLS
        .iter()
        .chain(EXT_IOCTLS.iter())
        .filter(|d| d.scope != scope || d.name == "HAX_VM_IOCTL_VCPU_DESTROY")
        .filter_map(|d| d.windows().map(|c| (c, d.name)))
        .filter(|(c, _)| !served.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhax_api::ioctl::{HAX_IOCTL_CREATE_VM, HAX_IOCTL_VERSION, HAX_VM_IOCTL_VCPU_CREATE};
    use rhax_api::CapabilityFailure;
    use rhax_core::dispatch::{Hypervisor, NoCpuRoots};
    use rhax_core::platform::HeapPlatform;

    const NOT_WORKING: DriverState = DriverState {
        working: false,
        rhax: true,
        vm_exists: false,
    };

    /// The expectation agrees with rhax-core's dispatcher (Windows codes, VT-x not usable) for
    /// every probe and shape: two derivations of HAXM's answers, one from the reference text,
    /// one from the IOCTL table the driver serves.
    #[test]
    fn agrees_with_the_core_dispatcher_when_vt_is_not_usable() {
        let hv: Hypervisor<HeapPlatform, NoCpuRoots> = Hypervisor::new(
            HeapPlatform::new(),
            NoCpuRoots::default(),
            rhax_api::Platform::Windows,
            Err(CapabilityFailure::VT),
        );
        let sys = hv.open_system();
        let mut checked = 0;
        for p in probes() {
            for &shape in SHAPES {
                let input = vec![0u8; shape.input_len()];
                let mut output = vec![0u8; shape.output_len()];
                let got = match hv.dispatch(sys, p.code, &input, &mut output) {
                    Ok(n) => Outcome::Ok(n),
                    Err(e) => Outcome::Status(e.nt_status()),
                };
                let want = system_device(p.code, shape, NOT_WORKING);
                assert_eq!(got, want, "{} with {shape}", p.name);
                checked += 1;
            }
        }
        assert!(hv.snapshot().vms.is_empty());
        assert!(checked > 600, "{checked}");
    }

    #[test]
    fn the_rules_by_hand() {
        let v = HAX_IOCTL_VERSION.windows().unwrap();
        assert_eq!(v, 0x4000_2400);
        assert_eq!(system_device(v, Shape::Out(8), NOT_WORKING), Outcome::Ok(8));
        assert_eq!(
            system_device(v, Shape::Out(7), NOT_WORKING),
            Outcome::Status(STATUS_INVALID_PARAMETER)
        );
        assert_eq!(
            system_device(v, Shape::Out(4096), NOT_WORKING),
            Outcome::Ok(8)
        );
        let c = HAX_IOCTL_CREATE_VM.windows().unwrap();
        assert_eq!(
            system_device(c, Shape::Out(3), NOT_WORKING),
            Outcome::Status(STATUS_BUFFER_TOO_SMALL)
        );
        assert_eq!(
            system_device(c, Shape::Out(4), NOT_WORKING),
            Outcome::Status(STATUS_UNSUCCESSFUL)
        );
        let working = DriverState {
            working: true,
            ..NOT_WORKING
        };
        assert_eq!(system_device(c, Shape::Out(4), working), Outcome::Ok(4));
        // A VM code on the control device is unknown there, whatever the buffers.
        let vc = HAX_VM_IOCTL_VCPU_CREATE.windows().unwrap();
        assert_eq!(
            system_device(vc, Shape::In(4), NOT_WORKING),
            Outcome::Status(STATUS_INVALID_DEVICE_REQUEST)
        );
        // HAXM does not know rhax's extension.
        let haxm = DriverState {
            rhax: false,
            ..NOT_WORKING
        };
        let ext = rhax_api::ext::RHAX_IOCTL_EXT_INFO.windows().unwrap();
        assert_eq!(
            system_device(ext, Shape::Out(16), NOT_WORKING),
            Outcome::Ok(16)
        );
        assert_eq!(
            system_device(ext, Shape::Out(16), haxm),
            Outcome::Status(STATUS_INVALID_DEVICE_REQUEST)
        );
        assert!(changes_state(c, NOT_WORKING));
        assert!(!changes_state(v, NOT_WORKING));
    }

    #[test]
    fn probes_are_distinct_and_cover_every_windows_code() {
        let p = probes();
        let windows = IOCTLS
            .iter()
            .chain(EXT_IOCTLS.iter())
            .filter(|d| d.windows().is_some());
        assert_eq!(p.len(), windows.count() + 13);
        // NOTIFY_QEMU_VERSION and CAPABILITY share 0x40002440: the only duplicate code.
        let mut codes: Vec<u32> = p.iter().map(|p| p.code).collect();
        codes.sort_unstable();
        let before = codes.len();
        codes.dedup();
        assert_eq!(before - codes.len(), 1);
    }
}
