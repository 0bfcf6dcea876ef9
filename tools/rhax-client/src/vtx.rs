//! The checks for a machine where the driver can run VMs (real VT-x: a volunteer's PC), over any
//! [`Transport`] whose errors are Win32 codes: the VM and vCPU devices the no-VT-x checks
//! cannot reach.
//!
//! * a VM and a vCPU device are exclusive: a second open is `STATUS_ACCESS_DENIED`;
//! * every VM and vCPU IOCTL with no buffer or one byte short of what it needs, and every other
//!   device's code, gets `STATUS_INVALID_PARAMETER` (`haxm-abi.md` §2) and changes nothing;
//! * VCPU_CREATE of id 16 is `STATUS_UNSUCCESSFUL`; SETUP_TUNNEL reports at least 48 bytes;
//! * closing the handles deletes the devices (`\\.\hax_vm00` is gone again).
//!
//! Under Wine 8.0 (`wine` = true) two things differ, both measured by the driver's authors
//! (`driver/windows/src/irp.rs`, `tests/wine-smoke`): `CreateFileW` returns before the driver
//! has seen IRP_MJ_CREATE, so a refused open shows as a handle on which every request fails
//! (`ERROR_INVALID_HANDLE` from the driver, or `ERROR_ACCESS_DENIED` from wineserver once the
//! device is gone); and IRP_MJ_CLOSE is queued, not waited for, so a device goes a moment
//! after `CloseHandle`. Windows fails `CreateFileW` itself and closes synchronously; the
//! checks accept Wine's forms only when `wine` is set, and wait up to 3 s for a device to go.

use rhax::api::ioctl::{
    IoctlDef, HAX_IOCTL_CREATE_VM, HAX_IOCTL_VERSION, HAX_VCPU_IOCTL_SETUP_TUNNEL,
    HAX_VM_IOCTL_VCPU_CREATE, IOCTLS,
};
use rhax::api::{Pod, Scope, TunnelInfo};
use rhax::{DevicePath, OsError, System, Transport};

use crate::checks::{describe, describe_outcome, describe_win32, matches, send, Checks};
use crate::expect::{foreign_codes, short_shapes, Outcome, Shape};
use crate::status::{
    win32_from_nt, STATUS_ACCESS_DENIED, STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_UNSUCCESSFUL,
};

fn code(def: &IoctlDef) -> u32 {
    def.windows().unwrap_or(0)
}

/// Short buffers for every IOCTL of `scope`, then every foreign code, on handle `h`.
fn matrix<T: Transport>(c: &mut Checks, t: &T, h: &T::Handle, scope: Scope, device: &str) {
    let refused = Outcome::Status(STATUS_INVALID_PARAMETER);
    for def in IOCTLS
        .iter()
        .chain(rhax::api::ext::EXT_IOCTLS.iter())
        .filter(|d| d.scope == scope && d.windows().is_some())
    {
        let shapes = short_shapes(def);
        if shapes.is_empty() {
            continue;
        }
        let bad: Vec<String> = shapes
            .iter()
            .filter_map(|&shape| {
                let (got, _) = send(t, h, code(def), shape, 0);
                (!matches(&got, refused)).then(|| format!("{shape}: {}", describe(&got)))
            })
            .collect();
        c.check(
            format!("{} with short buffers on {device}", def.name),
            bad.is_empty(),
            if bad.is_empty() {
                format!("{} shapes: {}", shapes.len(), describe_outcome(refused))
            } else {
                bad.join("; ")
            },
        );
    }
    let mut bad = Vec::new();
    let foreign = foreign_codes(scope);
    for &(code, name) in &foreign {
        for shape in [Shape::None, Shape::InOut(4096)] {
            let (got, _) = send(t, h, code, shape, 0);
            if !matches(&got, refused) {
                bad.push(format!("{name} ({code:#x}) {shape}: {}", describe(&got)));
            }
        }
    }
    c.check(
        format!("other devices' codes on {device}"),
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} codes: {}", foreign.len(), describe_outcome(refused))
        } else {
            bad.join("; ")
        },
    );
}

/// How a refused open showed.
fn refused_open<T: Transport>(t: &T, path: DevicePath, wine: bool) -> Result<String, String> {
    match t.open(path) {
        Err(OsError::Win32(e)) => Ok(describe_win32(e)),
        Err(e) => Err(e.to_string()),
        Ok(h) if wine => {
            let (got, _) = send(t, &h, code(&HAX_IOCTL_VERSION), Shape::Out(8), 0);
            t.close(h);
            let ok = matches!(
                got,
                Err(OsError::Win32(e))
                    if Some(e) == win32_from_nt(STATUS_INVALID_HANDLE)
                        || Some(e) == win32_from_nt(STATUS_ACCESS_DENIED)
            );
            let seen = format!(
                "Wine: CreateFileW returned a handle, a request on it: {}",
                describe(&got)
            );
            if ok {
                Ok(seen)
            } else {
                Err(seen)
            }
        }
        Ok(h) => {
            t.close(h);
            Err("opened".into())
        }
    }
}

/// A second open of an exclusive device is refused: `STATUS_ACCESS_DENIED` (the I/O manager's
/// answer for an exclusive device, and the core's), or Wine's form.
fn expect_exclusive<T: Transport>(c: &mut Checks, t: &T, path: DevicePath, wine: bool) {
    let want = win32_from_nt(STATUS_ACCESS_DENIED).map(describe_win32);
    let name = format!("second open of {} is refused (exclusive)", path.windows());
    match refused_open(t, path, wine) {
        Ok(seen) => {
            let pass = seen.starts_with("Wine:") || Some(&seen) == want.as_ref();
            c.check(name, pass, format!("{seen} (expected {want:?})"));
        }
        Err(seen) => c.check(name, false, seen),
    }
}

/// After the last handle is closed the device goes (polled for up to 3 s: Wine queues CLOSE).
fn expect_gone<T: Transport>(c: &mut Checks, t: &T, path: DevicePath, wine: bool) {
    let want = win32_from_nt(STATUS_OBJECT_NAME_NOT_FOUND).map(describe_win32);
    let name = format!("{} is gone after its handles are closed", path.windows());
    let start = std::time::Instant::now();
    loop {
        let seen = refused_open(t, path, wine);
        // Under Wine the deletion is waited for a second before its other form is taken.
        let waited = start.elapsed() > std::time::Duration::from_secs(1);
        let done = match &seen {
            Ok(s) => Some(s) == want.as_ref() || (wine && waited && s.starts_with("Wine:")),
            Err(_) => false,
        };
        if done || start.elapsed() > std::time::Duration::from_secs(3) {
            let detail = match seen {
                Ok(s) | Err(s) => format!("{s} (expected {want:?})"),
            };
            c.check(name, done, detail);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn expect_status(c: &mut Checks, name: &str, got: Result<usize, OsError>, status: u32) {
    let want = Outcome::Status(status);
    c.check(
        name,
        matches(&got, want),
        format!("{} (expected {})", describe(&got), describe_outcome(want)),
    );
}

/// The checks on a driver with working VT-x; `wine`: running under Wine (see the module
/// documentation).
pub fn with_vtx<T: Transport>(t: T, wine: bool) -> Checks {
    let mut c = Checks::default();
    let sys = match System::open(t.clone()) {
        Ok(s) => s,
        Err(e) => {
            c.check("open \\\\.\\HAX", false, e.to_string());
            return c;
        }
    };
    match sys.working_capability() {
        Ok(cap) => c.check(
            "CAPABILITY: working",
            true,
            format!("wstatus {:#x} winfo {:#x}", cap.wstatus, cap.winfo),
        ),
        Err(e) => {
            c.check(
                "CAPABILITY: working",
                false,
                format!("{e}: VT-x is not usable here; `assert-no-vtx` is the check for that"),
            );
            return c;
        }
    }
    // A raw CREATE_VM on a handle of our own (System keeps its handle private).
    let Ok(sh) = t.open(DevicePath::System) else {
        c.check("open \\\\.\\HAX again", false, "refused");
        return c;
    };
    let (got, out) = send(&t, &sh, code(&HAX_IOCTL_CREATE_VM), Shape::Out(4), 0);
    let vm = match got {
        Ok(4) => u32::from_le_bytes([out[0], out[1], out[2], out[3]]),
        other => {
            c.check("CREATE_VM", false, describe(&other));
            t.close(sh);
            return c;
        }
    };
    c.check("CREATE_VM", vm < 64, format!("VM {vm}"));
    let vm_path = DevicePath::Vm { vm };
    let vmh = match t.open(vm_path) {
        Ok(h) => h,
        Err(e) => {
            c.check(format!("open {}", vm_path.windows()), false, e.to_string());
            t.close(sh);
            return c;
        }
    };
    c.check(format!("open {}", vm_path.windows()), true, "opened");
    expect_exclusive(&mut c, &t, vm_path, wine);
    matrix(&mut c, &t, &vmh, Scope::Vm, "the VM device");

    let got = vcpu_create(&t, &vmh, 16);
    expect_status(
        &mut c,
        "VCPU_CREATE 16 is refused",
        got,
        STATUS_UNSUCCESSFUL,
    );
    let got = vcpu_create(&t, &vmh, 0);
    c.check("VCPU_CREATE 0", got.is_ok(), describe(&got));
    let vcpu_path = DevicePath::Vcpu { vm, vcpu: 0 };
    match t.open(vcpu_path) {
        Ok(vh) => {
            c.check(format!("open {}", vcpu_path.windows()), true, "opened");
            expect_exclusive(&mut c, &t, vcpu_path, wine);
            let (got, out) = send(
                &t,
                &vh,
                code(&HAX_VCPU_IOCTL_SETUP_TUNNEL),
                Shape::Out(24),
                0,
            );
            let info = TunnelInfo::read_from_prefix(&out);
            c.check(
                "SETUP_TUNNEL: QEMU needs size >= 48",
                got == Ok(24) && info.is_some_and(|i| i.size >= 48 && i.va != 0 && i.io_va != 0),
                format!("{} {info:?}", describe(&got)),
            );
            matrix(&mut c, &t, &vh, Scope::Vcpu, "the vCPU device");
            t.close(vh);
        }
        Err(e) => c.check(
            format!("open {}", vcpu_path.windows()),
            false,
            e.to_string(),
        ),
    }
    t.close(vmh);
    // The VM dies with its last handle (its vCPU's was closed first): the device goes too.
    expect_gone(&mut c, &t, vm_path, wine);
    t.close(sh);
    c
}

/// VCPU_CREATE with `id` as its 4-byte input.
fn vcpu_create<T: Transport>(t: &T, h: &T::Handle, id: u32) -> Result<usize, OsError> {
    let buf = id.to_le_bytes();
    t.ioctl(
        h,
        rhax::IoctlRequest {
            def: &HAX_VM_IOCTL_VCPU_CREATE,
            code: code(&HAX_VM_IOCTL_VCPU_CREATE),
            buf: rhax::IoctlBuf::In(&buf),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use rhax_core::platform::HeapPlatform;

    use crate::checks::tests::{not_working, Core};

    #[test]
    fn a_correct_driver_with_vtx_passes_every_check() {
        const TSV: &str = include_str!("../../../driver/core/tests/data/bochs-vmx-msrs.tsv");
        let msrs = rhax_core::vmx::soft::msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
        let hv = rhax_core::dispatch::soft_hypervisor(
            HeapPlatform::new(),
            msrs,
            rhax::api::Platform::Windows,
        )
        .expect("negotiation");
        let t = Core(Rc::new(hv));
        let c = super::with_vtx(t.clone(), false);
        for x in &c.list {
            assert!(x.pass, "{}: {}", x.name, x.detail);
        }
        // 7 VM IOCTLs and 10 vCPU IOCTLs with fixed sizes, two foreign-code checks, and the
        // opens, creations and closes around them.
        assert!(c.list.len() >= 28, "{}", c.list.len());
        assert!(t.0.snapshot().vms.is_empty());
    }

    #[test]
    fn without_vtx_it_says_so() {
        let c = super::with_vtx(not_working(), false);
        assert_eq!(c.failures(), 1);
        assert!(c.list[0].detail.contains("assert-no-vtx"), "{:?}", c.list);
    }
}
