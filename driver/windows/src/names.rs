//! HAXM's device names (`haxm-abi.md` §1): `\Device\HAX` and `\DosDevices\HAX`,
//! `\Device\hax_vmNN`, `\Device\hax_vmNN_vcpuMM` and their `\DosDevices` links, formatted
//! like HAXM's `%02d` into fixed UTF-16 buffers (no allocation: they are made on IOCTL and
//! close paths).

use rhax_api::{Device, HAX_MAX_VCPUS, HAX_MAX_VMS};

/// UTF-16 units a name may hold: the longest, `\DosDevices\hax_vm63_vcpu15`, has 27.
pub const NAME_CAP: usize = 32;

/// Where a name lives in the object namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// `\Device\`: the device object itself.
    Device,
    /// `\DosDevices\`: the symbolic link Win32 `\\.\NAME` resolves to.
    DosDevices,
}

impl Namespace {
    fn prefix(self) -> &'static str {
        match self {
            Namespace::Device => "\\Device\\",
            Namespace::DosDevices => "\\DosDevices\\",
        }
    }
}

/// A formatted name: UTF-16, NUL-terminated in its buffer, counted without the NUL.
#[derive(Clone, Copy)]
pub struct NtName {
    buf: [u16; NAME_CAP],
    len: usize,
}

impl NtName {
    /// The characters, without the terminating NUL.
    pub fn as_slice(&self) -> &[u16] {
        &self.buf[..self.len]
    }

    /// Appends ASCII `s`; `None` when the buffer (less the NUL) is full.
    fn push(&mut self, s: &str) -> Option<()> {
        for b in s.bytes() {
            if self.len + 1 >= NAME_CAP {
                return None;
            }
            self.buf[self.len] = u16::from(b);
            self.len += 1;
        }
        Some(())
    }

    /// Appends `n` as HAXM's `%02d` (n < 100: always two digits).
    fn push_two_digits(&mut self, n: u32) -> Option<()> {
        if n >= 100 {
            return None;
        }
        let digits = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        self.push(core::str::from_utf8(&digits).ok()?)
    }
}

/// The name of `device` in `ns`; `None` for ids outside HAXM's ranges (VM < 64, vCPU < 16),
/// which have no device.
pub fn name(ns: Namespace, device: Device) -> Option<NtName> {
    let mut n = NtName {
        buf: [0; NAME_CAP],
        len: 0,
    };
    n.push(ns.prefix())?;
    match device {
        Device::System => n.push("HAX")?,
        Device::Vm { vm } => {
            if vm >= HAX_MAX_VMS {
                return None;
            }
            n.push("hax_vm")?;
            n.push_two_digits(vm)?;
        }
        Device::Vcpu { vm, vcpu } => {
            if vm >= HAX_MAX_VMS || vcpu >= HAX_MAX_VCPUS {
                return None;
            }
            n.push("hax_vm")?;
            n.push_two_digits(vm)?;
            n.push("_vcpu")?;
            n.push_two_digits(vcpu)?;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn s(ns: Namespace, d: Device) -> Option<String> {
        name(ns, d).map(|n| {
            assert_eq!(n.buf[n.len], 0, "NUL-terminated");
            String::from_utf16(n.as_slice()).expect("UTF-16")
        })
    }

    #[test]
    fn control_device_and_link() {
        assert_eq!(
            s(Namespace::Device, Device::System).as_deref(),
            Some("\\Device\\HAX")
        );
        assert_eq!(
            s(Namespace::DosDevices, Device::System).as_deref(),
            Some("\\DosDevices\\HAX")
        );
    }

    #[test]
    fn vm_names_have_two_digits() {
        assert_eq!(
            s(Namespace::Device, Device::Vm { vm: 0 }).as_deref(),
            Some("\\Device\\hax_vm00")
        );
        assert_eq!(
            s(Namespace::DosDevices, Device::Vm { vm: 7 }).as_deref(),
            Some("\\DosDevices\\hax_vm07")
        );
        assert_eq!(
            s(Namespace::Device, Device::Vm { vm: 63 }).as_deref(),
            Some("\\Device\\hax_vm63")
        );
    }

    #[test]
    fn vcpu_names() {
        assert_eq!(
            s(Namespace::Device, Device::Vcpu { vm: 0, vcpu: 0 }).as_deref(),
            Some("\\Device\\hax_vm00_vcpu00")
        );
        let longest = s(Namespace::DosDevices, Device::Vcpu { vm: 63, vcpu: 15 });
        assert_eq!(longest.as_deref(), Some("\\DosDevices\\hax_vm63_vcpu15"));
        assert!(longest.map(|l| l.len()).unwrap_or(NAME_CAP) < NAME_CAP);
    }

    #[test]
    fn ids_outside_haxm_ranges_have_no_name() {
        for ns in [Namespace::Device, Namespace::DosDevices] {
            assert!(s(ns, Device::Vm { vm: 64 }).is_none());
            assert!(s(ns, Device::Vm { vm: u32::MAX }).is_none());
            assert!(s(ns, Device::Vcpu { vm: 0, vcpu: 16 }).is_none());
            assert!(s(ns, Device::Vcpu { vm: 64, vcpu: 0 }).is_none());
            assert!(s(ns, Device::Vcpu { vm: 99, vcpu: 99 }).is_none());
        }
    }

    #[test]
    fn buffer_bound_is_enforced() {
        let mut n = NtName {
            buf: [0; NAME_CAP],
            len: 0,
        };
        assert!(n.push(&"x".repeat(NAME_CAP - 1)).is_some());
        assert!(n.push("y").is_none(), "the NUL's place is kept");
        assert_eq!(n.len, NAME_CAP - 1);
        assert!(n.push_two_digits(100).is_none());
    }
}
