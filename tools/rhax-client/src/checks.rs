//! The Wine stage's assertions about a driver that cannot run VMs (no VT-x: Wine runs the
//! driver in a user-mode process), over any [`Transport`] whose errors are Win32 codes.
//!
//! Every expectation is computed, not observed: versions from rhax-api's constants, statuses
//! from [`crate::expect`] (HAXM's rules) turned into Win32 errors with [`crate::status`]
//! (`RtlNtStatusToDosError`'s table).

use rhax::api::ext::RHAX_EXT_MAGIC;
use rhax::api::ioctl::{IoctlDef, HAX_IOCTL_VERSION, IOCTLS};
use rhax::api::{
    CapabilityFailure, CapabilityInfo, ModuleVersion, Pod, Scope, HAX_COMPAT_VERSION,
    HAX_CUR_VERSION,
};
use rhax::{DevicePath, IoctlBuf, IoctlRequest, OsError, System, Transport};

use crate::expect::{self, DriverState, Outcome, Shape};
use crate::qemu::{capability_verdict, CapabilityVerdict};
use crate::status::{self, win32_from_nt};

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// What was seen (and, on failure, what was expected).
    pub detail: String,
}

/// The results of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// In the order run.
    pub list: Vec<Check>,
}

impl Checks {
    /// Records a check.
    pub fn check(&mut self, name: impl Into<String>, pass: bool, detail: impl Into<String>) {
        self.list.push(Check {
            name: name.into(),
            pass,
            detail: detail.into(),
        });
    }

    /// The failed checks.
    pub fn failures(&self) -> usize {
        self.list.iter().filter(|c| !c.pass).count()
    }
}

/// A Win32 error, described.
pub fn describe_win32(e: u32) -> String {
    format!("Win32 {e} {}", status::win32_name(e))
}

pub(crate) fn describe(r: &Result<usize, OsError>) -> String {
    match r {
        Ok(n) => format!("success, {n} bytes"),
        Err(OsError::Win32(e)) => describe_win32(*e),
        Err(e) => e.to_string(),
    }
}

pub(crate) fn describe_outcome(o: Outcome) -> String {
    match o {
        Outcome::Ok(n) => format!("success, {n} bytes"),
        Outcome::Status(s) => match win32_from_nt(s) {
            Some(w) => format!("{} ({s:#x}) = {}", status::nt_name(s), describe_win32(w)),
            None => format!("NTSTATUS {s:#x} (no Win32 mapping known)"),
        },
    }
}

/// Whether a transport result matches an expected outcome.
pub(crate) fn matches(got: &Result<usize, OsError>, want: Outcome) -> bool {
    match (got, want) {
        (Ok(n), Outcome::Ok(m)) => *n == m,
        (Err(OsError::Win32(e)), Outcome::Status(s)) => win32_from_nt(s) == Some(*e),
        _ => false,
    }
}

/// The definition of a control-device code, or a stand-in for codes rhax-api does not define
/// (a Windows transport sends `code` and never reads the definition).
fn def_for(code: u32) -> &'static IoctlDef {
    static UNDEFINED: IoctlDef = IoctlDef {
        name: "undefined",
        scope: Scope::System,
        windows_function: None,
        posix: None,
    };
    IOCTLS
        .iter()
        .chain(rhax::api::ext::EXT_IOCTLS.iter())
        .find(|d| d.windows() == Some(code))
        .unwrap_or(&UNDEFINED)
}

/// Sends one raw request.
pub fn send<T: Transport>(
    t: &T,
    h: &T::Handle,
    code: u32,
    shape: Shape,
    fill: u8,
) -> (Result<usize, OsError>, Vec<u8>) {
    let mut buf = vec![fill; shape.input_len().max(shape.output_len())];
    let b = match shape {
        Shape::None => IoctlBuf::None,
        Shape::In(_) => IoctlBuf::In(&buf),
        Shape::Out(_) => IoctlBuf::Out(&mut buf),
        Shape::InOut(_) => IoctlBuf::InOut(&mut buf),
    };
    let r = t.ioctl(
        h,
        IoctlRequest {
            def: def_for(code),
            code,
            buf: b,
        },
    );
    (r, buf)
}

pub(crate) fn expect_open_fails<T: Transport>(
    c: &mut Checks,
    t: &T,
    path: DevicePath,
    status: u32,
) {
    let name = format!("open {} is refused", path.windows());
    let want = win32_from_nt(status);
    match t.open(path) {
        Ok(h) => {
            t.close(h);
            c.check(name, false, "opened; no such device may exist without a VM");
        }
        Err(OsError::Win32(e)) => c.check(
            name,
            Some(e) == want,
            format!(
                "{} (expected {})",
                describe_win32(e),
                describe_outcome(Outcome::Status(status))
            ),
        ),
        Err(e) => c.check(name, false, e.to_string()),
    }
}

/// The checks on a driver without VT-x. `ram_bytes` is the guest RAM QEMU's quota check uses;
/// `expect_refcount`, when known, is the control device's open-handle count CAPABILITY must
/// report while the checks hold their two handles (the Wine stage knows nothing else has
/// `\\.\HAX` open; a count left high by a process that died with open handles means the
/// driver missed its CLEANUP/CLOSE).
pub fn no_vtx<T: Transport>(t: T, ram_bytes: u64, expect_refcount: Option<u32>) -> Checks {
    let mut c = Checks::default();

    // Two opens of the control device: it is not exclusive (`haxm-abi.md` §1).
    let sys = match System::open(t.clone()) {
        Ok(s) => {
            c.check("open \\\\.\\HAX", true, "opened");
            s
        }
        Err(e) => {
            c.check("open \\\\.\\HAX", false, e.to_string());
            return c;
        }
    };
    let second = t.open(DevicePath::System);
    c.check(
        "second open of \\\\.\\HAX (not exclusive)",
        second.is_ok(),
        match &second {
            Ok(_) => "opened".to_string(),
            Err(e) => e.to_string(),
        },
    );
    use crate::status::STATUS_OBJECT_NAME_NOT_FOUND as NOT_FOUND;
    expect_open_fails(&mut c, &t, DevicePath::Vm { vm: 0 }, NOT_FOUND);
    expect_open_fails(&mut c, &t, DevicePath::Vcpu { vm: 0, vcpu: 0 }, NOT_FOUND);

    // VERSION 4/1 and QEMU's acceptance rule.
    match sys.version() {
        Ok(v) => c.check(
            "VERSION is HAXM 7.8.0's",
            v.cur_version == HAX_CUR_VERSION && v.compat_version == HAX_COMPAT_VERSION,
            format!(
                "cur {} compat {} (expected cur {HAX_CUR_VERSION} compat {HAX_COMPAT_VERSION})",
                v.cur_version, v.compat_version
            ),
        ),
        Err(e) => c.check("VERSION is HAXM 7.8.0's", false, e.to_string()),
    }
    c.check(
        "VERSION passes QEMU's check (cur >= 4, compat <= 4)",
        sys.check_version().is_ok(),
        match sys.check_version() {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        },
    );

    // CAPABILITY: not working, VT reason; QEMU stops at hax_get_capability.
    let cap = sys.capability();
    let initial = match cap {
        Ok(cap) => {
            let fail = cap.failure();
            c.check(
                "CAPABILITY: not working, HAX_CAP_FAILREASON_VT",
                fail.is_some_and(|f| f.contains(CapabilityFailure::VT)),
                format!(
                    "wstatus {:#x} winfo {:#x} win_refcount {} mem_quota {:#x}",
                    cap.wstatus, cap.winfo, cap.win_refcount, cap.mem_quota
                ),
            );
            if let Some(n) = expect_refcount {
                // Polled for up to 3 s: Wine queues the CLOSE of handles a process left open
                // when it exited instead of waiting for it.
                let start = std::time::Instant::now();
                let mut count = cap.win_refcount;
                while count != n && start.elapsed() < std::time::Duration::from_secs(3) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    count = sys.capability().map_or(count, |c| c.win_refcount);
                }
                c.check(
                    "CAPABILITY win_refcount counts the open handles",
                    count == n && second.is_ok(),
                    format!("win_refcount {count} (expected {n})"),
                );
            }
            let verdict = capability_verdict(&cap, ram_bytes);
            c.check(
                "QEMU's hax_get_capability stops with -ENXIO",
                matches!(verdict, CapabilityVerdict::NotWorking { vt: true, .. }),
                verdict.to_string(),
            );
            Some(cap)
        }
        Err(e) => {
            c.check(
                "CAPABILITY: not working, HAX_CAP_FAILREASON_VT",
                false,
                e.to_string(),
            );
            None
        }
    };

    // Which driver: rhax answers its extension IOCTL.
    let rhax = match sys.ext_info() {
        Ok(info) => {
            c.check(
                "RHAX_IOCTL_EXT_INFO: the driver is rhax",
                info.magic == RHAX_EXT_MAGIC && info.version >= 1,
                format!(
                    "magic {:#x} version {} features {:#x}",
                    info.magic, info.version, info.features
                ),
            );
            true
        }
        Err(e) => {
            c.check(
                "RHAX_IOCTL_EXT_INFO: the driver is rhax",
                false,
                e.to_string(),
            );
            false
        }
    };

    // Every code, every shape, on a second handle (the first keeps the state checks).
    let state = DriverState {
        working: false,
        rhax,
        vm_exists: false,
    };
    if let Ok(h) = &second {
        for p in expect::probes() {
            let mut bad = Vec::new();
            for &shape in expect::SHAPES {
                let (got, buf) = send(&t, h, p.code, shape, 0);
                let want = expect::system_device(p.code, shape, state);
                let mut ok = matches(&got, want);
                // VERSION's answer is also checked byte for byte, whatever the buffer length.
                if ok && p.code == HAX_IOCTL_VERSION.windows().unwrap_or(0) && got.is_ok() {
                    let v = ModuleVersion::read_from_prefix(&buf);
                    ok = v.is_some_and(|v| {
                        v.cur_version == HAX_CUR_VERSION && v.compat_version == HAX_COMPAT_VERSION
                    });
                }
                if !ok {
                    bad.push(format!(
                        "{shape}: got {}, expected {}",
                        describe(&got),
                        describe_outcome(want)
                    ));
                }
            }
            let sample = expect::system_device(p.code, Shape::Out(4096), state);
            c.check(
                format!("{:#010x} {} on \\\\.\\HAX", p.code, p.name),
                bad.is_empty(),
                if bad.is_empty() {
                    format!(
                        "{} shapes as expected (out 4096: {})",
                        expect::SHAPES.len(),
                        describe_outcome(sample)
                    )
                } else {
                    bad.join("; ")
                },
            );
        }
    }

    // The matrix changed the quota (SET_MEMLIMIT succeeds while no VM exists): restore what
    // CAPABILITY said at the start, then check that it says so again.
    if let Some(init) = initial {
        let restore = sys.set_memlimit(init.mem_quota().map(|q| q >> 20));
        let now = sys.capability();
        let same = |a: &CapabilityInfo, b: &CapabilityInfo| {
            a.wstatus == b.wstatus && a.winfo == b.winfo && a.mem_quota() == b.mem_quota()
        };
        c.check(
            "SET_MEMLIMIT restores the quota CAPABILITY reported",
            restore.is_ok() && now.as_ref().is_ok_and(|n| same(n, &init)),
            format!("restore {restore:?}, CAPABILITY now {now:?}"),
        );
    }

    // CREATE_VM is refused cleanly: the answer, no VM device appears, the driver still answers.
    let want = win32_from_nt(crate::status::STATUS_UNSUCCESSFUL);
    match sys.create_vm() {
        Ok(vm) => c.check(
            "CREATE_VM is refused without VT-x",
            false,
            format!("VM {} was created", vm.id()),
        ),
        Err(e) => c.check(
            "CREATE_VM is refused without VT-x",
            matches!(e, rhax::Error::CreateVm(OsError::Win32(w)) if Some(w) == want),
            format!("{e} (expected STATUS_UNSUCCESSFUL = Win32 31)"),
        ),
    }
    expect_open_fails(&mut c, &t, DevicePath::Vm { vm: 0 }, NOT_FOUND);
    c.check(
        "VERSION still answers after the refusal",
        sys.version().is_ok(),
        format!("{:?}", sys.version()),
    );

    // Closing one handle leaves the other working.
    if let Ok(h) = second {
        t.close(h);
        c.check(
            "VERSION after closing the second handle",
            sys.version().is_ok(),
            format!("{:?}", sys.version()),
        );
    }
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rhax_core::dispatch::{CpuRoots, Handle, Hypervisor, NoCpuRoots, SoftCpuRoots};
    use rhax_core::platform::HeapPlatform;
    use std::rc::Rc;

    /// A transport into rhax-core's dispatcher with Windows codes, reporting Win32 errors as
    /// the system would (`RtlNtStatusToDosError` of the dispatcher's NTSTATUS): the shell's
    /// job, done in user space, so the checks can be tested on the host.
    pub(crate) struct Core<R: CpuRoots>(pub(crate) Rc<Hypervisor<HeapPlatform, R>>);

    impl<R: CpuRoots> Clone for Core<R> {
        fn clone(&self) -> Self {
            Core(self.0.clone())
        }
    }

    fn os(status: u32) -> OsError {
        OsError::Win32(win32_from_nt(status).expect("a mapped status"))
    }

    // SAFETY: `HeapPlatform` maps the tunnel and IO buffer "into the user" at their kernel
    // (heap) addresses in this process, and frees them only when the vCPU is closed.
    unsafe impl<R: CpuRoots> Transport for Core<R> {
        type Handle = Handle;

        fn platform(&self) -> rhax::api::Platform {
            rhax::api::Platform::Windows
        }

        fn open(&self, path: DevicePath) -> Result<Handle, OsError> {
            match path {
                DevicePath::System => Ok(self.0.open_system()),
                DevicePath::Vm { vm } => self.0.open_vm(vm).map_err(|e| os(e.nt_status())),
                DevicePath::Vcpu { vm, vcpu } => {
                    self.0.open_vcpu(vm, vcpu).map_err(|e| os(e.nt_status()))
                }
            }
        }

        fn ioctl(&self, h: &Handle, req: IoctlRequest<'_>) -> Result<usize, OsError> {
            let mut req = req;
            let input = req.buf.input().to_vec();
            let mut none = [0u8; 0];
            let out = req.buf.output().unwrap_or(&mut none);
            self.0
                .dispatch(*h, req.code, &input, out)
                .map_err(|e| os(e.nt_status()))
        }

        fn close(&self, h: Handle) {
            let _ = self.0.close(h);
        }
    }

    pub(crate) fn not_working() -> Core<NoCpuRoots> {
        Core(Rc::new(Hypervisor::new(
            HeapPlatform::new(),
            NoCpuRoots::default(),
            rhax::api::Platform::Windows,
            Err(CapabilityFailure::VT),
        )))
    }

    #[test]
    fn a_correct_driver_passes_every_check() {
        let c = no_vtx(not_working(), 128 << 20, Some(2));
        for x in &c.list {
            assert!(x.pass, "{}: {}", x.name, x.detail);
        }
        assert!(c.list.len() > 40, "{}", c.list.len());
        // A count left high (handles of a dead process never closed) is caught.
        let c = no_vtx(not_working(), 128 << 20, Some(3));
        let failed: Vec<&str> = c
            .list
            .iter()
            .filter(|x| !x.pass)
            .map(|x| x.name.as_str())
            .collect();
        assert_eq!(failed, ["CAPABILITY win_refcount counts the open handles"]);
    }

    #[test]
    fn a_driver_with_wrong_answers_fails() {
        // VT-x usable: CAPABILITY working and CREATE_VM would succeed (NoCpuRoots refuses
        // only later), so the no-VT-x checks must fail.
        let hv = Hypervisor::new(
            HeapPlatform::new(),
            NoCpuRoots::default(),
            rhax::api::Platform::Windows,
            Err(CapabilityFailure::NX),
        );
        let c = no_vtx(Core(Rc::new(hv)), 128 << 20, None);
        let failed: Vec<&str> = c
            .list
            .iter()
            .filter(|x| !x.pass)
            .map(|x| x.name.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "CAPABILITY: not working, HAX_CAP_FAILREASON_VT",
                "QEMU's hax_get_capability stops with -ENXIO"
            ]
        );
    }

    /// The sequence on a working (software-VMX) dispatcher: every step up to SETUP_TUNNEL
    /// succeeds and QEMU would not stop.
    #[test]
    fn the_qemu_sequence_completes_on_a_working_driver() {
        const TSV: &str = include_str!("../../../driver/core/tests/data/bochs-vmx-msrs.tsv");
        let msrs = rhax_core::vmx::soft::msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
        let hv: Hypervisor<HeapPlatform, SoftCpuRoots> = rhax_core::dispatch::soft_hypervisor(
            HeapPlatform::new(),
            msrs,
            rhax::api::Platform::Windows,
        )
        .expect("negotiation");
        let t = Core(Rc::new(hv));
        let opts = crate::qemu::Options {
            vcpus: 2,
            ..Default::default()
        };
        let r = crate::qemu::run(t.clone(), opts);
        assert!(r.stop().is_none(), "{r:#?}");
        let names: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            names,
            [
                "open \\\\.\\HAX",
                "HAX_IOCTL_CAPABILITY",
                "HAX_IOCTL_VERSION",
                "HAX_IOCTL_CREATE_VM + open",
                "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION",
                "VCPU_CREATE 0 + open + SETUP_TUNNEL",
                "VCPU_CREATE 1 + open + SETUP_TUNNEL",
            ]
        );
        assert!(r.steps.iter().all(|s| s.ok), "{r:#?}");
        // Everything was closed again: the VM is gone.
        assert!(t.0.snapshot().vms.is_empty());
        // 17 vCPUs: QEMU refuses before CREATE_VM.
        let r = crate::qemu::run(
            t,
            crate::qemu::Options {
                vcpus: 17,
                ..Default::default()
            },
        );
        assert_eq!(r.stop().map(|s| s.what.as_str()), Some("vCPU count"));
    }

    /// `--run` on the software VMX: the model's CPU is scripted to exit as the real guest
    /// would (OUT imm8 0x80 with AL = 0x42, then HLT); RAM registration, mapping, registers
    /// and the RUN loop of the sequence go through the dispatcher for real.
    #[test]
    fn the_qemu_sequence_runs_its_guest_to_hlt() {
        use rhax_core::vmx::soft::GuestCpu;
        const TSV: &str = include_str!("../../../driver/core/tests/data/bochs-vmx-msrs.tsv");
        let msrs = rhax_core::vmx::soft::msrs_from_tsv(TSV, "corei7_skylake_x").expect("model");
        let hv = rhax_core::dispatch::soft_hypervisor(
            HeapPlatform::new(),
            msrs,
            rhax::api::Platform::Windows,
        )
        .expect("negotiation");
        let mut n = 0;
        hv.roots().with_soft(|root| {
            root.vmx().set_hook(move |c: &mut GuestCpu<'_>| {
                n += 1;
                if n == 1 {
                    c.regs.gpr[0] = 0x42;
                    // Exit qualification (SDM Vol. 3C Table 28-5): size 1 (0), OUT (bit 3
                    // clear), immediate operand (bit 6), port in bits 31:16.
                    c.exit(30, 0x0080_0040, 2)
                } else {
                    c.exit(12, 0, 1)
                }
            })
        });
        let opts = crate::qemu::Options {
            run: true,
            ..Default::default()
        };
        let r = crate::qemu::run(Core(Rc::new(hv)), opts);
        assert!(r.stop().is_none(), "{r:#?}");
        let tail: Vec<(&str, &str)> = r
            .steps
            .iter()
            .skip(5)
            .map(|s| (s.what.as_str(), s.detail.as_str()))
            .collect();
        assert_eq!(tail[0].0, "HAX_VM_IOCTL_ADD_RAMBLOCK");
        assert_eq!(tail[1].0, "VCPU_CREATE 0 + open + SETUP_TUNNEL");
        assert_eq!(tail[2].0, "HAX_VM_IOCTL_SET_RAM");
        assert_eq!(tail[3].0, "GET_REGS/SET_REGS");
        assert_eq!(&tail[4..], [("RUN", "OUT 0x80, 0x42"), ("RUN", "HLT")]);
    }

    #[test]
    fn the_qemu_sequence_stops_at_capability_and_shows_create_vm_refused() {
        let r = crate::qemu::run(not_working(), crate::qemu::Options::default());
        let stop = r.stop().expect("QEMU stops");
        assert_eq!(stop.what, "HAX_IOCTL_CAPABILITY");
        let names: Vec<&str> = r.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            names,
            [
                "open \\\\.\\HAX",
                "HAX_IOCTL_CAPABILITY",
                "HAX_IOCTL_VERSION",
                "HAX_IOCTL_CREATE_VM",
                "HAX_IOCTL_VERSION after the refusal"
            ]
        );
        assert!(
            r.steps[3].detail.contains("Win32 error 31"),
            "{}",
            r.steps[3].detail
        );
        assert!(r.steps[4].ok);
    }
}
