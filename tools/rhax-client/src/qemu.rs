//! QEMU's HAX opening sequence (`haxm-clients.md` §1.1-§1.2, QEMU 7.1/8.1 `hax-all.c`,
//! `hax-windows.c`), step by step over any [`Transport`], reporting where QEMU would stop and
//! why, and going on where it can so a report shows the driver's later answers too (on a
//! machine without VT-x: that CREATE_VM is refused cleanly).
//!
//! QEMU's order: open `\\.\HAX`; CAPABILITY (working bit, then UG, then the memory quota
//! against the guest RAM size); VERSION (`cur >= 4 && compat <= 4`); CREATE_VM and open
//! `\\.\hax_vmNN`; NOTIFY_QEMU_VERSION {4, 4} (result ignored); per vCPU: VCPU_CREATE, open
//! `\\.\hax_vmNN_vcpuMM`, SETUP_TUNNEL (size >= 48); RAM: ADD_RAMBLOCK (or ALLOC_RAM without
//! 64BIT_RAMBLOCK) and SET_RAM. With `run`, a real-mode guest then executes
//! `mov al, 0x42; out 0x80, al; hlt` at 0x1000 and must exit with that OUT and then HLT.

use rhax::api::{CapabilityFeatures, CapabilityInfo, IoDirection, RamFlags, HAX_MAX_VCPUS};
use rhax::{Exit, System, Transport};

/// What QEMU's `hax_get_capability` concludes from a CAPABILITY answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapabilityVerdict {
    /// QEMU goes on; it uses ADD_RAMBLOCK when `ramblock_64bit`.
    Proceeds {
        /// `HAX_CAP_64BIT_RAMBLOCK`.
        ramblock_64bit: bool,
    },
    /// `wstatus` bit 0 clear: `-ENXIO`; QEMU prints the failure reason (VT first, else NX)
    /// as debug output and "No accelerator found."
    NotWorking {
        /// `HAX_CAP_FAILREASON_VT`.
        vt: bool,
        /// `HAX_CAP_FAILREASON_NX`.
        nx: bool,
    },
    /// No unrestricted guest: "UG mode is not supported by the hardware.", `-ENOTSUP`.
    NoUnrestrictedGuest,
    /// MEMQUOTA set and the quota (bytes) below the guest RAM: "The VM memory needed exceeds
    /// the driver limit.", `-ENOSPC`.
    QuotaTooSmall {
        /// The driver's quota in bytes.
        quota: u64,
        /// The guest RAM in bytes.
        ram: u64,
    },
}

/// QEMU's checks in `hax_get_capability`, in its order (`haxm-clients.md` §1.1 item 2).
pub fn capability_verdict(cap: &CapabilityInfo, ram_bytes: u64) -> CapabilityVerdict {
    if let Some(fail) = cap.failure() {
        return CapabilityVerdict::NotWorking {
            vt: fail.contains(rhax::api::CapabilityFailure::VT),
            nx: fail.contains(rhax::api::CapabilityFailure::NX),
        };
    }
    let features = cap.features().unwrap_or(CapabilityFeatures::empty());
    if !features.contains(CapabilityFeatures::UG) {
        return CapabilityVerdict::NoUnrestrictedGuest;
    }
    if let Some(quota) = cap.mem_quota() {
        if quota < ram_bytes {
            return CapabilityVerdict::QuotaTooSmall {
                quota,
                ram: ram_bytes,
            };
        }
    }
    CapabilityVerdict::Proceeds {
        ramblock_64bit: features.contains(CapabilityFeatures::RAMBLOCK_64BIT),
    }
}

impl core::fmt::Display for CapabilityVerdict {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            CapabilityVerdict::Proceeds { ramblock_64bit } => write!(
                f,
                "QEMU accepts it (RAM through {})",
                if ramblock_64bit {
                    "ADD_RAMBLOCK"
                } else {
                    "ALLOC_RAM"
                }
            ),
            CapabilityVerdict::NotWorking { vt, nx } => {
                let why = match (vt, nx) {
                    (true, _) => "VT-x not usable (HAX_CAP_FAILREASON_VT)",
                    (false, true) => "NX not usable (HAX_CAP_FAILREASON_NX)",
                    (false, false) => "no failure reason given",
                };
                write!(
                    f,
                    "not working: {why}; QEMU's hax_get_capability returns -ENXIO \
                     (\"No accelerator found.\")"
                )
            }
            CapabilityVerdict::NoUnrestrictedGuest => f.write_str(
                "no unrestricted guest (HAX_CAP_UG): QEMU prints \"UG mode is not supported by \
                 the hardware.\" and returns -ENOTSUP",
            ),
            CapabilityVerdict::QuotaTooSmall { quota, ram } => write!(
                f,
                "memory quota {quota} bytes < guest RAM {ram} bytes: QEMU prints \"The VM \
                 memory needed exceeds the driver limit.\" and returns -ENOSPC"
            ),
        }
    }
}

/// One step of the sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What was done (`CAPABILITY`, `open \\.\hax_vm00`...).
    pub what: String,
    /// Whether the driver's answer is what QEMU needs.
    pub ok: bool,
    /// The answer, or the error.
    pub detail: String,
    /// QEMU would stop here (its init fails, or it exits).
    pub qemu_stops: bool,
}

/// The options of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Guest RAM QEMU would ask for (compared with the memory quota), bytes.
    pub ram_bytes: u64,
    /// vCPUs QEMU would create (`-smp`); above 16 QEMU refuses before CREATE_VM.
    pub vcpus: u32,
    /// Register 2 MiB of RAM, map it and run a tiny guest to its HLT.
    pub run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ram_bytes: 128 << 20,
            vcpus: 1,
            run: false,
        }
    }
}

/// The whole run: every step, and the first at which QEMU stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Report {
    fn push(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>, stop: bool) {
        self.steps.push(Step {
            what: what.into(),
            ok,
            detail: detail.into(),
            qemu_stops: stop,
        });
    }

    /// The first step where QEMU stops, if any.
    pub fn stop(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.qemu_stops)
    }
}

/// The guest of the `run` step: `mov al, 0x42; out 0x80, al; hlt`.
pub const GUEST_CODE: [u8; 5] = [0xb0, 0x42, 0xe6, 0x80, 0xf4];
/// Where the guest code is placed (guest-physical = linear: real mode, CS base 0).
pub const GUEST_CODE_GPA: u64 = 0x1000;
const GUEST_RAM: usize = 2 << 20;

/// Runs QEMU's sequence on `transport`.
pub fn run<T: Transport>(transport: T, opts: Options) -> Report {
    let mut r = Report::default();
    let windows = transport.platform() == rhax::api::Platform::Windows;
    let open = if windows {
        "open \\\\.\\HAX"
    } else {
        "open /dev/HAX"
    };
    let sys = match System::open(transport) {
        Ok(s) => {
            r.push(open, true, "opened", false);
            s
        }
        Err(e) => {
            r.push(
                open,
                false,
                format!("{e}; QEMU: -ENODEV, \"Failed to open the hax module\""),
                true,
            );
            return r;
        }
    };

    // 1. CAPABILITY (QEMU asks it before VERSION).
    let mut ramblock_64bit = true;
    match sys.capability() {
        Ok(cap) => {
            let verdict = capability_verdict(&cap, opts.ram_bytes);
            let stops = !matches!(verdict, CapabilityVerdict::Proceeds { .. });
            if let CapabilityVerdict::Proceeds { ramblock_64bit: b } = verdict {
                ramblock_64bit = b;
            }
            r.push(
                "HAX_IOCTL_CAPABILITY",
                !stops,
                format!(
                    "wstatus {:#x} winfo {:#x} refcount {} mem_quota {:#x}: {verdict}",
                    cap.wstatus, cap.winfo, cap.win_refcount, cap.mem_quota
                ),
                stops,
            );
        }
        Err(e) => r.push(
            "HAX_IOCTL_CAPABILITY",
            false,
            format!("{e}; QEMU: -EINVAL, \"No accelerator found.\""),
            true,
        ),
    }

    // 2. VERSION.
    match sys.check_version() {
        Ok(v) => r.push(
            "HAX_IOCTL_VERSION",
            true,
            format!(
                "compat {} cur {}: QEMU accepts (cur >= 4, compat <= 4)",
                v.compat_version, v.cur_version
            ),
            false,
        ),
        Err(e) => r.push(
            "HAX_IOCTL_VERSION",
            false,
            format!("{e}; QEMU: \"Incompatible HAX module version\", -EINVAL"),
            true,
        ),
    }

    // 3. CREATE_VM and the VM device.
    if opts.vcpus > HAX_MAX_VCPUS {
        r.push(
            "vCPU count",
            false,
            format!(
                "{} vCPUs > {HAX_MAX_VCPUS}: QEMU refuses before CREATE_VM",
                opts.vcpus
            ),
            true,
        );
        return r;
    }
    let vm = match sys.create_vm() {
        Ok(vm) => {
            r.push(
                "HAX_IOCTL_CREATE_VM + open",
                true,
                format!("VM {} created, \\\\.\\hax_vm{:02} opened", vm.id(), vm.id()),
                false,
            );
            vm
        }
        Err(e) => {
            let what = if matches!(e, rhax::Error::Open { .. }) {
                if windows {
                    "open \\\\.\\hax_vmNN"
                } else {
                    "open /dev/hax_vm/vmNN"
                }
            } else {
                "HAX_IOCTL_CREATE_VM"
            };
            r.push(
                what,
                false,
                format!("{e}; QEMU: \"Failed to create vm\", -EINVAL"),
                true,
            );
            // The control device must still answer after a refused CREATE_VM.
            match sys.version() {
                Ok(v) => r.push(
                    "HAX_IOCTL_VERSION after the refusal",
                    true,
                    format!(
                        "compat {} cur {}: the driver still answers",
                        v.compat_version, v.cur_version
                    ),
                    false,
                ),
                Err(e) => r.push(
                    "HAX_IOCTL_VERSION after the refusal",
                    false,
                    e.to_string(),
                    false,
                ),
            }
            return r;
        }
    };

    // 4. NOTIFY_QEMU_VERSION (QEMU ignores the result).
    match vm.notify_qemu_version() {
        Ok(()) => r.push(
            "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION",
            true,
            "{4, 4} accepted",
            false,
        ),
        Err(e) => r.push(
            "HAX_VM_IOCTL_NOTIFY_QEMU_VERSION",
            false,
            format!("{e} (QEMU ignores this result)"),
            false,
        ),
    }

    // 5. RAM: QEMU registers pc.ram before it creates vCPUs (`haxm-clients.md` §2.1).
    let ram = if opts.run {
        match guest_ram() {
            Some(ram) => {
                let added = if ramblock_64bit {
                    // SAFETY: `ram` is a leaked, page-aligned allocation no Rust object lives
                    // in; it stays allocated for the life of the process, so for the VM's.
                    unsafe { vm.add_ramblock(ram, GUEST_RAM as u64) }
                } else {
                    // SAFETY: as for ADD_RAMBLOCK just above.
                    unsafe { vm.alloc_ram(ram, GUEST_RAM as u32) }
                };
                let name = if ramblock_64bit {
                    "HAX_VM_IOCTL_ADD_RAMBLOCK"
                } else {
                    "HAX_VM_IOCTL_ALLOC_RAM"
                };
                match added {
                    Ok(()) => r.push(name, true, format!("2 MiB at {ram:#x}"), false),
                    Err(e) => {
                        r.push(
                            name,
                            false,
                            format!("{e}; QEMU aborts: \"HAX failed to populate RAM\""),
                            true,
                        );
                        return r;
                    }
                }
                Some(ram)
            }
            None => {
                r.push("guest RAM", false, "cannot allocate 2 MiB here", false);
                None
            }
        }
    } else {
        None
    };

    // 6. vCPUs: VCPU_CREATE, open, SETUP_TUNNEL (each in its thread in QEMU; here in turn).
    let mut vcpus = Vec::new();
    for id in 0..opts.vcpus {
        match vm.create_vcpu(id) {
            Ok(v) => {
                let info = v.tunnel_info();
                let size_ok = usize::from(info.size) >= 48;
                r.push(
                    format!("VCPU_CREATE {id} + open + SETUP_TUNNEL"),
                    size_ok,
                    format!(
                        "tunnel {:#x} io {:#x} size {} ({})",
                        info.va,
                        info.io_va,
                        info.size,
                        if size_ok {
                            "QEMU needs >= 48: ok"
                        } else {
                            "QEMU needs >= 48"
                        }
                    ),
                    !size_ok,
                );
                vcpus.push(v);
            }
            Err(e) => {
                r.push(
                    format!("VCPU_CREATE {id} + open + SETUP_TUNNEL"),
                    false,
                    format!("{e}; QEMU exits: \"Failed to create HAX vcpu\""),
                    true,
                );
                return r;
            }
        }
    }

    // 7. SET_RAM and the guest.
    let (Some(ram), Some(vcpu)) = (ram, vcpus.first_mut()) else {
        return r;
    };
    match vm.set_ram(0, GUEST_RAM as u32, ram, RamFlags::empty()) {
        Ok(()) => r.push("HAX_VM_IOCTL_SET_RAM", true, "GPA 0..2 MiB mapped", false),
        Err(e) => {
            r.push(
                "HAX_VM_IOCTL_SET_RAM",
                false,
                format!("{e} (QEMU only prints it)"),
                false,
            );
            return r;
        }
    }
    let regs = vcpu.get_regs().and_then(|mut regs| {
        regs.cs.selector = 0;
        regs.cs.base = 0;
        regs.rip = GUEST_CODE_GPA;
        vcpu.set_regs(&regs)
    });
    if let Err(e) = regs {
        r.push("GET_REGS/SET_REGS", false, e.to_string(), true);
        return r;
    }
    r.push(
        "GET_REGS/SET_REGS",
        true,
        "CS base 0, RIP 0x1000 (real mode)",
        false,
    );
    let mut seen_out = false;
    for _ in 0..16 {
        match vcpu.run() {
            Ok(Exit::Io {
                direction: IoDirection::Out,
                port: 0x80,
                data,
                ..
            }) if data == [0x42] => {
                seen_out = true;
                r.push("RUN", true, "OUT 0x80, 0x42", false);
            }
            Ok(Exit::Interrupt | Exit::Paused) => {}
            Ok(Exit::Hlt) => {
                r.push("RUN", seen_out, "HLT", !seen_out);
                return r;
            }
            Ok(other) => {
                r.push("RUN", false, format!("unexpected exit {other:?}"), true);
                return r;
            }
            Err(e) => {
                r.push("RUN", false, e.to_string(), true);
                return r;
            }
        }
    }
    r.push("RUN", false, "no HLT after 16 RUNs", true);
    r
}

/// 2 MiB of page-aligned, zeroed memory holding [`GUEST_CODE`] at [`GUEST_CODE_GPA`], leaked
/// (a VM's RAM must outlive it and HAXM has no way to unregister a block).
fn guest_ram() -> Option<u64> {
    let layout = std::alloc::Layout::from_size_align(GUEST_RAM, 4096).ok()?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return None;
    }
    // SAFETY: 0x1000 + 5 bytes lie inside the GUEST_RAM bytes just allocated.
    let at = unsafe { p.add(GUEST_CODE_GPA as usize) };
    // SAFETY: `at` points to 5 writable bytes of that allocation, not otherwise referenced.
    let code = unsafe { core::slice::from_raw_parts_mut(at, GUEST_CODE.len()) };
    code.copy_from_slice(&GUEST_CODE);
    Some(p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhax::api::CapabilityStatus;

    fn cap(wstatus: u16, winfo: u16, quota: u64) -> CapabilityInfo {
        CapabilityInfo {
            wstatus,
            winfo,
            win_refcount: 1,
            mem_quota: quota,
        }
    }

    #[test]
    fn qemu_capability_checks_in_order() {
        let m = CapabilityStatus::MEMQUOTA.bits();
        assert_eq!(
            capability_verdict(&cap(0, 0x3, 0), 1),
            CapabilityVerdict::NotWorking { vt: true, nx: true }
        );
        assert_eq!(
            capability_verdict(&cap(m, 0x2, 0), 1),
            CapabilityVerdict::NotWorking {
                vt: false,
                nx: true
            }
        );
        // Working without UG: refused before the quota is looked at.
        assert_eq!(
            capability_verdict(&cap(1 | m, 0x3fb, 0), 1),
            CapabilityVerdict::NoUnrestrictedGuest
        );
        assert_eq!(
            capability_verdict(&cap(1 | m, 0x3ff, 100), 101),
            CapabilityVerdict::QuotaTooSmall {
                quota: 100,
                ram: 101
            }
        );
        // Without MEMQUOTA the quota field means nothing.
        assert_eq!(
            capability_verdict(&cap(1, 0x3ff, 100), 101),
            CapabilityVerdict::Proceeds {
                ramblock_64bit: true
            }
        );
        assert_eq!(
            capability_verdict(&cap(1 | m, 0x3f7, 1 << 48), 2 << 30),
            CapabilityVerdict::Proceeds {
                ramblock_64bit: false
            }
        );
    }
}
