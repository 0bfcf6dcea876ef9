//! The Linux `_IOC` encoding of an IOCTL command (`include/uapi/asm-generic/ioctl.h`: bits
//! 0-7 nr, 8-15 type, 16-29 size, 30 write, 31 read), decoded into what the shell copies.
//!
//! The core's POSIX semantics (`rhax_core::dispatch`): the input is exactly the bytes the
//! command encodes when it writes (`_IOW`, `_IOWR`), the output exactly the encoded size when
//! it reads (`_IOR`, `_IOWR`); the handler reports how many bytes it wrote and only those are
//! copied back (HAXM's Linux port copies out only for the IOCTLs that answer, so an `_IOWR`
//! that only consumes, like VCPU_CREATE, leaves the caller's buffer alone).

use rhax_api::ioctl::IoctlDef;
use rhax_api::ioctl::{self as codes};
use rhax_api::Platform as Codes;

/// HAXM's `_IOC` type byte on POSIX (`HAX_IOCTL_TYPE`... its macros use type 0).
pub const HAX_IOC_TYPE: u32 = 0;

/// The largest size the 14-bit field can encode.
pub const MAX_SIZE: usize = 0x3fff;

/// What one command asks the shell to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Bytes copied from user space before the dispatch (0: none).
    pub input: usize,
    /// Bytes of output buffer handed to the dispatch (0: none).
    pub output: usize,
    /// The argument is the address of a pointer to a CPUID table (SET_CPUID, GET_CPUID on
    /// POSIX: `haxm-abi.md` §2): the shell reads the pointer, then the table's header, then
    /// [`cpuid_table_bytes`] of it.
    pub indirect: Option<Indirect>,
}

/// The two IOCTLs whose argument points to a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Indirect {
    /// SET_CPUID: the whole table is input.
    SetCpuid,
    /// GET_CPUID: the header is input, the table output.
    GetCpuid,
}

/// The size of a CPUID header (`total`, `pad`).
pub const CPUID_HEADER: usize = 8;
/// The size of one CPUID entry.
pub const CPUID_ENTRY: usize = 40;
/// HAXM's limit on entries.
pub const CPUID_MAX_ENTRIES: usize = 64;

/// The bytes of a CPUID table of `total` entries, bounded by HAXM's 64 (a larger or zero
/// `total` gives just the header: the core then refuses the request with its own error).
pub fn cpuid_table_bytes(total: u32) -> usize {
    let total = total as usize;
    if total == 0 || total > CPUID_MAX_ENTRIES {
        CPUID_HEADER
    } else {
        CPUID_HEADER + total * CPUID_ENTRY
    }
}

impl Plan {
    /// The bytes of kernel buffer the request needs (input and output are separate slices).
    pub fn buffer(&self) -> usize {
        self.input + self.output
    }
}

/// Decodes `cmd`. `None` for a command of another driver's type (HAXM's type is `'\0'`...
/// see [`HAX_IOCTL_TYPE_LINUX`]): the shell answers those `-ENOTTY` without looking further.
pub fn plan(cmd: u32) -> Option<Plan> {
    if (cmd >> 8) & 0xff != HAX_IOC_TYPE {
        return None;
    }
    let is = |d: &IoctlDef| d.code(Codes::Linux) == Some(cmd);
    let indirect = if is(&codes::HAX_VCPU_IOCTL_SET_CPUID) {
        Some(Indirect::SetCpuid)
    } else if is(&codes::HAX_VCPU_IOCTL_GET_CPUID) {
        Some(Indirect::GetCpuid)
    } else {
        None
    };
    let size = ((cmd >> 16) & MAX_SIZE as u32) as usize;
    let write = cmd & (1 << 30) != 0; // _IOC_WRITE: user space writes, the kernel copies in
    let read = cmd & (1 << 31) != 0; // _IOC_READ: the kernel copies out
    Some(Plan {
        input: if write { size } else { 0 },
        output: if read { size } else { 0 },
        indirect,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhax_api::ioctl::{linux_ioc, Direction, IOCTLS};

    #[test]
    fn directions_and_sizes() {
        let t = HAX_IOC_TYPE as u8;
        assert_eq!(
            plan(linux_ioc(Direction::None, t, 1, 0)),
            Some(Plan {
                input: 0,
                output: 0,
                indirect: None
            })
        );
        assert_eq!(
            plan(linux_ioc(Direction::Read, t, 2, 24)),
            Some(Plan {
                input: 0,
                output: 24,
                indirect: None
            })
        );
        assert_eq!(
            plan(linux_ioc(Direction::Write, t, 3, 8)),
            Some(Plan {
                input: 8,
                output: 0,
                indirect: None
            })
        );
        assert_eq!(
            plan(linux_ioc(Direction::ReadWrite, t, 4, 0x3fff)),
            Some(Plan {
                input: 0x3fff,
                output: 0x3fff,
                indirect: None
            })
        );
    }

    #[test]
    fn other_types_are_not_ours() {
        assert_eq!(plan(linux_ioc(Direction::Read, b'T', 2, 4)), None);
        // TCGETS, the first ioctl many programs send to any fd.
        assert_eq!(plan(0x5401), None);
    }

    #[test]
    fn every_linux_haxm_code_is_planned_with_its_size() {
        let mut n = 0;
        for def in IOCTLS.iter().chain(rhax_api::ext::EXT_IOCTLS) {
            let Some(code) = def.code(Codes::Linux) else {
                continue;
            };
            let p = plan(code).expect("a HAXM Linux code has HAXM's type");
            let size = ((code >> 16) & 0x3fff) as usize;
            assert!(p.input == size || p.input == 0, "{}", def.name);
            assert!(p.output == size || p.output == 0, "{}", def.name);
            assert!(p.buffer() <= 2 * MAX_SIZE);
            n += 1;
        }
        assert!(n >= 25, "only {n} Linux codes");
    }

    #[test]
    fn cpuid_ioctls_are_indirect() {
        let set = codes::HAX_VCPU_IOCTL_SET_CPUID.code(Codes::Linux).unwrap();
        let get = codes::HAX_VCPU_IOCTL_GET_CPUID.code(Codes::Linux).unwrap();
        assert_eq!(plan(set).unwrap().indirect, Some(Indirect::SetCpuid));
        assert_eq!(plan(get).unwrap().indirect, Some(Indirect::GetCpuid));
        let run = codes::HAX_VCPU_IOCTL_RUN.code(Codes::Linux).unwrap();
        assert_eq!(plan(run).unwrap().indirect, None);
    }

    #[test]
    fn cpuid_table_sizes_are_bounded() {
        assert_eq!(cpuid_table_bytes(0), 8);
        assert_eq!(cpuid_table_bytes(1), 48);
        assert_eq!(cpuid_table_bytes(64), 8 + 64 * 40);
        assert_eq!(cpuid_table_bytes(65), 8);
        assert_eq!(cpuid_table_bytes(u32::MAX), 8);
    }
}
