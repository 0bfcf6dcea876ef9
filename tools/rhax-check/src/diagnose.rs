//! The decision: from [`Facts`] to findings, each with the fix that applies.
//!
//! Sources of the rules: HAXM's requirements (Intel CPU with VT-x and NX, `haxm-abi.md` §6
//! "Module load"); HAXM's most reported install failure, Hyper-V / VBS / Memory Integrity
//! owning VT-x (`haxm-abi.md` §7); QEMU's own refusals (no unrestricted guest,
//! `haxm-clients.md` §1.1); Microsoft's documentation of `IsProcessorFeaturePresent`
//! (PF_VIRT_FIRMWARE_ENABLED) and of the Device Guard registry values.

use rhax_api::{CapabilityFailure, CapabilityFeatures, HAX_CUR_VERSION};

use crate::{Answerer, Facts};

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// rhax cannot run VMs until this is fixed.
    Blocker,
    /// Worth fixing; VMs may still run.
    Warning,
    /// For the record.
    Info,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What is the matter.
    pub what: String,
    /// What to do, in order.
    pub fix: Vec<String>,
}

/// The whole diagnosis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// In the order found (CPU, Windows, services, driver).
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    fn add(&mut self, severity: Severity, what: impl Into<String>, fix: &[&str]) {
        self.findings.push(Finding {
            severity,
            what: what.into(),
            fix: fix.iter().map(|s| s.to_string()).collect(),
        });
    }

    /// Whether nothing blocks running VMs.
    pub fn usable(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Blocker)
    }

    /// The first blocker.
    pub fn first_blocker(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| f.severity == Severity::Blocker)
    }
}

const USE_WHPX: &str = "or keep Hyper-V and use WHPX instead of HAX: QEMU `-accel whpx`, the \
     Android Emulator with the Windows Hypervisor Platform feature";

/// The diagnosis of `facts`.
pub fn diagnose(facts: &Facts) -> Diagnosis {
    let mut d = Diagnosis::default();
    let cpu = &facts.cpu;
    let os = facts.os.as_ref();
    let on = |v: Option<u32>| v.is_some_and(|v| v != 0);

    // --- The CPU and what runs beneath Windows.
    if !cpu.intel() {
        d.add(
            Severity::Blocker,
            format!(
                "the CPU is {:?}: rhax (like HAXM) needs an Intel CPU with VT-x",
                cpu.vendor
            ),
            &[
                "on AMD, use WHPX (QEMU `-accel whpx`; Android Emulator with the Windows \
                 Hypervisor Platform) or the Android Emulator Hypervisor Driver (AEHD)",
            ],
        );
    }
    if cpu.hyper_v() && cpu.hv_root != Some(false) {
        let mut fix: Vec<&str> = Vec::new();
        if os.is_some_and(|o| on(o.hvci)) {
            fix.push(
                "turn off Memory Integrity: Windows Security > Device security > Core \
                 isolation details > Memory integrity: Off (registry: ...\\DeviceGuard\\Scenarios\\\
                 HypervisorEnforcedCodeIntegrity Enabled = 0)",
            );
        }
        if os.is_some_and(|o| on(o.vbs)) {
            fix.push(
                "turn off virtualization-based security (Group Policy: Computer Configuration > \
                 Administrative Templates > System > Device Guard > Turn On Virtualization Based \
                 Security: Disabled; registry ...\\Control\\DeviceGuard \
                 EnableVirtualizationBasedSecurity = 0)",
            );
        }
        if os.is_some_and(|o| on(o.credential_guard)) {
            fix.push("turn off Credential Guard (...\\Control\\Lsa LsaCfgFlags = 0)");
        }
        fix.push(
            "turn off the Windows features Hyper-V, Virtual Machine Platform, Windows \
             Hypervisor Platform and Windows Sandbox (WSL2 needs Virtual Machine Platform)",
        );
        fix.push("run `bcdedit /set hypervisorlaunchtype off` as administrator, then reboot");
        fix.push(USE_WHPX);
        d.add(
            Severity::Blocker,
            "Hyper-V is running beneath Windows (CPUID 0x40000000 = \"Microsoft Hv\", root \
             partition): it owns VT-x, so neither rhax nor HAXM can use it. VBS, Memory \
             Integrity, Credential Guard, WSL2 and Windows Sandbox all start Hyper-V",
            &fix,
        );
    } else if cpu.hypervisor {
        let name = cpu.hv_vendor.clone().unwrap_or_else(|| "unknown".into());
        if cpu.vmx {
            d.add(
                Severity::Warning,
                format!(
                    "this Windows runs in a virtual machine (hypervisor {name:?}) that exposes \
                     VT-x (nested): rhax may work, slower than on bare metal"
                ),
                &[],
            );
        } else {
            d.add(
                Severity::Blocker,
                format!(
                    "this Windows runs in a virtual machine (hypervisor {name:?}) that does not \
                     expose VT-x"
                ),
                &["enable nested virtualization on the host: Hyper-V \
                     `Set-VMProcessor -VMName NAME -ExposeVirtualizationExtensions $true`; VMware \
                     \"Virtualize Intel VT-x/EPT\"; KVM `kvm_intel nested=1` and `-cpu host`"],
            );
        }
    } else if cpu.intel() && !cpu.vmx {
        d.add(
            Severity::Blocker,
            "CPUID reports no VMX: this CPU has no VT-x",
            &["rhax needs a CPU with VT-x, EPT and unrestricted guest (Intel Westmere or later)"],
        );
    }
    if cpu.vmx && !cpu.hypervisor && os.and_then(|o| o.vt_firmware_enabled) == Some(false) {
        d.add(
            Severity::Blocker,
            "VT-x is disabled by the firmware (IsProcessorFeaturePresent(\
             PF_VIRT_FIRMWARE_ENABLED) is false)",
            &[
                "enable \"Intel Virtualization Technology\" (VT-x) in the BIOS/UEFI setup, save, \
                 then power off completely and on again",
            ],
        );
    }
    if !cpu.nx || os.and_then(|o| o.nx_enabled) == Some(false) {
        d.add(
            Severity::Blocker,
            "NX (Execute Disable) is not available or not enabled",
            &[
                "enable \"Execute Disable Bit\" (XD) in the BIOS/UEFI setup",
                "run `bcdedit /set nx OptIn` as administrator, then reboot",
            ],
        );
    }
    if cpu.vmx && os.and_then(|o| o.slat) == Some(false) {
        d.add(
            Severity::Warning,
            "Windows reports no second-level address translation (EPT): rhax needs EPT; the \
             driver's CAPABILITY will say whether it can run VMs",
            &[],
        );
    }
    if let Some(o) = os {
        for s in &o.other_vtx {
            if s.name == "hvservice" || s.name == "vmcompute" {
                // Covered by the Hyper-V finding when it runs.
                if s.running() && !cpu.hyper_v() {
                    d.add(
                        Severity::Info,
                        format!("service {} is running but CPUID shows no Hyper-V", s.name),
                        &[],
                    );
                }
                continue;
            }
            d.add(
                Severity::Warning,
                format!(
                    "{} (service {}) is installed{}: it uses VT-x while its VMs run",
                    crate::OTHER_VTX_SERVICES
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&s.name))
                        .map_or("another hypervisor", |(_, w)| w),
                    s.name,
                    if s.running() { " and running" } else { "" }
                ),
                &["do not run its VMs and rhax's at the same time"],
            );
        }
    }

    // --- The services (read only on Windows: `os` is `None` elsewhere).
    let installed: Vec<&crate::ServiceFacts> = facts.services.iter().collect();
    match installed.as_slice() {
        _ if os.is_none() => {}
        [] => d.add(
            Severity::Blocker,
            "no HAXM-compatible driver is installed (neither service rhax nor IntelHaxm)",
            &[
                "install rhax: run scripts/windows/rhax-volunteer.ps1 as administrator, or \
                 `sc create rhax type= kernel start= demand binPath= C:\\Windows\\System32\\\
                 drivers\\rhax.sys` and `sc start rhax` (test signing must be on)",
            ],
        ),
        [_, _, ..] => d.add(
            Severity::Warning,
            "both services rhax and IntelHaxm are installed: the one started first owns \\\\.\\HAX",
            &[
                "remove the one you do not want: Intel HAXM from Settings > Apps (or \
                 `sc stop IntelHaxm` and `sc delete IntelHaxm`), rhax with `sc stop rhax` and \
                 `sc delete rhax`",
            ],
        ),
        [_] => {}
    }
    for s in &installed {
        if !s.running() {
            d.add(
                Severity::Warning,
                format!("service {} is installed but not running", s.name),
                &[
                    "start it as administrator: `sc start NAME`; for a test-signed rhax.sys \
                     test signing must be on (`bcdedit /set testsigning on`, Secure Boot off, \
                     reboot)",
                ],
            );
        }
    }
    if let Some(o) = os {
        let rhax_down = !installed.iter().any(|s| s.running());
        if o.test_signing == Some(false) && rhax_down {
            d.add(
                Severity::Warning,
                "test signing is off: Windows refuses a test-signed rhax.sys",
                &["run `bcdedit /set testsigning on` as administrator (Secure Boot must be off), reboot"],
            );
        }
    }

    // --- The driver's own answers.
    if let Some(dev) = &facts.device {
        match dev.answerer() {
            Answerer::Nothing => {
                if installed.iter().any(|s| s.running()) {
                    d.add(
                        Severity::Blocker,
                        "a service is running but \\\\.\\HAX does not exist",
                        &["see the driver's log (Event Viewer > System, or DbgView)"],
                    );
                }
            }
            Answerer::Unknown => d.add(
                Severity::Blocker,
                "\\\\.\\HAX opens but does not answer VERSION",
                &["stop the service that owns it; reinstall rhax"],
            ),
            Answerer::Haxm => d.add(
                Severity::Info,
                "\\\\.\\HAX is answered by Intel HAXM (or a fork): it does not answer rhax's \
                 extension IOCTL",
                &["to switch to rhax: uninstall HAXM first, then install rhax (drop-in under the \
                   service name IntelHaxm if your tools look for it)"],
            ),
            Answerer::Rhax => {}
        }
        if let Some(v) = dev.version {
            if v.cur_version < HAX_CUR_VERSION || v.compat_version > HAX_CUR_VERSION {
                d.add(
                    Severity::Blocker,
                    format!(
                        "driver API version {} (compatible down to {}): QEMU needs current >= 4 \
                         and compatible <= 4",
                        v.cur_version, v.compat_version
                    ),
                    &["install HAXM 7.x or rhax"],
                );
            }
        }
        if let Some(cap) = dev.capability {
            if let Some(fail) = cap.failure() {
                let mut why = Vec::new();
                if fail.contains(CapabilityFailure::VT) {
                    why.push("VT-x");
                }
                if fail.contains(CapabilityFailure::NX) {
                    why.push("NX");
                }
                let explained = d.findings.iter().any(|f| f.severity == Severity::Blocker);
                d.add(
                    Severity::Blocker,
                    format!(
                        "the driver reports it cannot run VMs (CAPABILITY not working: {}); QEMU \
                         stops with \"No accelerator found.\"",
                        if why.is_empty() {
                            "no reason given".into()
                        } else {
                            why.join(" and ")
                        }
                    ),
                    if explained {
                        &["fix the findings above, then reboot"]
                    } else {
                        &[
                            "nothing above explains it: another VT-x user (VirtualBox, VMware, \
                           AEHD) may be holding VT-x, or the firmware locked it off; read the \
                           driver's messages (DbgView, or the System event log)",
                        ]
                    },
                );
            } else if let Some(f) = cap.features() {
                if !f.contains(CapabilityFeatures::UG) {
                    d.add(
                        Severity::Blocker,
                        "the driver reports no unrestricted guest: QEMU refuses (\"UG mode is \
                         not supported by the hardware.\")",
                        &["rhax needs an Intel CPU from Westmere (2010) on"],
                    );
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{CpuFacts, MICROSOFT_HV};
    use crate::{DeviceFacts, OsFacts, ServiceFacts};
    use rhax_api::ext::RhaxExtInfo;
    use rhax_api::{CapabilityInfo, ModuleVersion};

    fn intel_vmx() -> CpuFacts {
        CpuFacts {
            vendor: "GenuineIntel".into(),
            vmx: true,
            nx: true,
            ..Default::default()
        }
    }

    fn service(name: &str, state: u32) -> ServiceFacts {
        ServiceFacts {
            name: name.into(),
            image_path: Some(format!("\\SystemRoot\\System32\\drivers\\{name}.sys")),
            start: Some(3),
            state: Some(state),
        }
    }

    fn rhax_device(wstatus: u16, winfo: u16) -> DeviceFacts {
        DeviceFacts {
            open_error: None,
            version: Some(ModuleVersion {
                compat_version: 1,
                cur_version: 4,
            }),
            capability: Some(CapabilityInfo {
                wstatus,
                winfo,
                win_refcount: 1,
                mem_quota: 1 << 48,
            }),
            rhax: Some(RhaxExtInfo {
                magic: rhax_api::ext::RHAX_EXT_MAGIC,
                version: 1,
                features: 1,
            }),
            ext_error: None,
        }
    }

    fn ready() -> Facts {
        Facts {
            cpu: intel_vmx(),
            os: Some(OsFacts {
                vt_firmware_enabled: Some(true),
                nx_enabled: Some(true),
                slat: Some(true),
                test_signing: Some(true),
                ..Default::default()
            }),
            services: vec![service("rhax", 4)],
            device: Some(rhax_device(3, 0x37f)),
        }
    }

    fn blockers(d: &Diagnosis) -> Vec<&str> {
        d.findings
            .iter()
            .filter(|f| f.severity == Severity::Blocker)
            .map(|f| f.what.as_str())
            .collect()
    }

    #[test]
    fn a_ready_machine_has_no_blocker() {
        let d = diagnose(&ready());
        assert!(d.usable(), "{d:?}");
        assert!(d.findings.is_empty(), "{d:?}");
    }

    #[test]
    fn hyper_v_with_memory_integrity_names_that_fix_first() {
        let mut f = ready();
        f.cpu.vmx = false;
        f.cpu.hypervisor = true;
        f.cpu.hv_vendor = Some(MICROSOFT_HV.into());
        f.cpu.hv_root = Some(true);
        f.os.as_mut().unwrap().hvci = Some(1);
        f.device = Some(rhax_device(0, 1));
        let d = diagnose(&f);
        assert!(!d.usable());
        let first = d.first_blocker().unwrap();
        assert!(first.what.contains("Hyper-V"), "{first:?}");
        assert!(first.fix[0].contains("Memory Integrity"), "{:?}", first.fix);
        assert!(first
            .fix
            .iter()
            .any(|s| s.contains("hypervisorlaunchtype off")));
        // The driver's own refusal is explained by the finding above it.
        let last = d.findings.last().unwrap();
        assert!(last.what.contains("VT-x"), "{last:?}");
        assert_eq!(last.fix, ["fix the findings above, then reboot"]);
    }

    #[test]
    fn firmware_off_and_unexplained_refusal() {
        let mut f = ready();
        f.os.as_mut().unwrap().vt_firmware_enabled = Some(false);
        let d = diagnose(&f);
        assert_eq!(blockers(&d).len(), 1);
        assert!(d.first_blocker().unwrap().fix[0].contains("BIOS/UEFI"));
        let mut f = ready();
        f.device = Some(rhax_device(0, 1));
        let d = diagnose(&f);
        assert_eq!(blockers(&d).len(), 1);
        assert!(d.first_blocker().unwrap().fix[0].contains("nothing above explains it"));
    }

    #[test]
    fn amd_guest_without_nested_and_no_nx() {
        let mut f = Facts {
            cpu: CpuFacts {
                vendor: "AuthenticAMD".into(),
                hypervisor: true,
                hv_vendor: Some("KVMKVMKVM".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        // Off Windows (no OS facts) the services are unknown, not missing.
        assert_eq!(blockers(&diagnose(&f)).len(), 3);
        f.os = Some(OsFacts::default());
        let b = diagnose(&f);
        let b = blockers(&b);
        assert_eq!(b.len(), 4, "{b:?}");
        assert!(b[0].contains("AuthenticAMD"));
        assert!(b[1].contains("does not expose VT-x"));
        assert!(b[2].contains("NX"));
        assert!(b[3].contains("no HAXM-compatible driver"));
    }

    #[test]
    fn services_and_answerer() {
        let mut f = ready();
        f.services = vec![service("rhax", 1), service("IntelHaxm", 4)];
        f.device.as_mut().unwrap().rhax = None;
        let d = diagnose(&f);
        assert!(d.usable());
        let what: Vec<&str> = d.findings.iter().map(|x| x.what.as_str()).collect();
        assert!(what[0].contains("both services"), "{what:?}");
        assert!(
            what[1].contains("rhax is installed but not running"),
            "{what:?}"
        );
        assert!(what[2].contains("Intel HAXM"), "{what:?}");
        assert_eq!(f.device.unwrap().answerer(), Answerer::Haxm);
    }

    #[test]
    fn no_unrestricted_guest_and_old_api() {
        let mut f = ready();
        let dev = f.device.as_mut().unwrap();
        dev.capability.as_mut().unwrap().winfo = 0x37b;
        dev.version.as_mut().unwrap().cur_version = 3;
        let d = diagnose(&f);
        let b = blockers(&d);
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(b[0].contains("API version 3"));
        assert!(b[1].contains("unrestricted guest"));
    }
}
