//! rhax's own IOCTLs, outside HAXM's ABI.
//!
//! # Why these numbers
//!
//! * **Windows** function numbers `0xA00..=0xAFF`. Functions below 0x800 belong to Microsoft
//!   (`CTL_CODE` documentation: "values of less than 0x800 are reserved for Microsoft").
//!   Upstream HAXM 7.8.0 uses 0x900-0x918 (0x912 unused). Forks extend that range upward:
//!   an unmerged upstream PR (commit 9dce9fc) used 0x919 for `HAX_VCPU_IOCTL_SET_EXCBMP`,
//!   another third-party header 0x919 for `HAX_VCPU_IOCTL_SMI`, and crosvm's
//!   `haxm_sys/win.rs` gives 0x918 to `HAX_VM_IOCTL_REGISTER_LOG_FILE` on the VM device
//!   (`haxm-abi.md` §2, notes on the codes). Starting at 0xA00 leaves all of 0x919-0x9FF for
//!   whatever HAXM's forks add next, and no known HAXM variant uses 0xA00 or above.
//! * **POSIX** numbers `0xE0..=0xEF` (type byte 0, as HAXM). HAXM uses 0x20-0x24 (system),
//!   0x80-0x87 (VM) and 0xC0-0xCB (vCPU); none of the forks above defines POSIX numbers.
//!   0xE0 is well past the vCPU range so HAXM can keep growing it.
//! * Every code is also distinct from every HAXM code on the same device on every platform
//!   (tested below), so a HAXM driver answers an rhax IOCTL with its usual "unknown IOCTL"
//!   error, and a client can probe with [`RHAX_IOCTL_EXT_INFO`].
//!
//! Like HAXM's, this list is append-only and the structs are frozen.

use core::mem::size_of;

use crate::ioctl::{px, Direction};
use crate::pod::{assert_layout, impl_pod};

/// The number of VMX basic exit reasons [`VcpuStats`] counts one by one: reasons `0..80`.
///
/// The Intel SDM (Vol. 3D, Appendix C "VMX Basic Exit Reasons") defines reasons up to 79 as
/// of the 2024 editions (75 NOTIFY, 78/79 RDMSRLIST/WRMSRLIST); rhax's VMCS code handles at
/// most 0..=75. Exits with a larger reason are counted in [`VcpuStats::total`] only.
pub const RHAX_EXIT_REASONS: usize = 80;

/// [`RhaxExtInfo::magic`]: `"RHAX"` in little-endian byte order.
pub const RHAX_EXT_MAGIC: u32 = u32::from_le_bytes(*b"RHAX");

/// The extension API version this crate describes ([`RhaxExtInfo::version`]).
pub const RHAX_EXT_VERSION: u32 = 1;

/// [`VcpuStats::version`] of the layout defined here.
pub const RHAX_VCPU_STATS_VERSION: u32 = 1;

bitflags::bitflags! {
    /// [`RhaxExtInfo::features`]: the extension IOCTLs the driver implements.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ExtFeatures: u64 {
        /// [`RHAX_VCPU_IOCTL_GET_STATS`] and [`RHAX_VCPU_IOCTL_RESET_STATS`].
        const VCPU_STATS = 1 << 0;
        /// [`RHAX_VCPU_IOCTL_SET_STATS_CONTROL`]: counting can be switched off at run time.
        const STATS_CONTROL = 1 << 1;
        /// [`RHAX_IOCTL_VCPU_STATS`]: any vCPU's statistics through the system device.
        const SYSTEM_STATS = 1 << 2;
        /// [`RHAX_IOCTL_VCPU_FIELD_STATS`] and [`StatsFlags::FIELD_REASON`].
        const FIELD_STATS = 1 << 3;
        /// [`RHAX_VCPU_IOCTL_GET_XSAVE`] and [`RHAX_VCPU_IOCTL_SET_XSAVE`].
        const XSAVE = 1 << 4;
        /// [`RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL`]: the MMIO fast path can be switched off.
        const EMULATION_CONTROL = 1 << 5;
        /// The in-kernel local APIC: [`RHAX_VM_IOCTL_ENABLE_APIC`], [`RHAX_VM_IOCTL_SIGNAL_MSI`],
        /// [`RHAX_VCPU_IOCTL_APIC_LINT`], [`RHAX_VCPU_IOCTL_GET_APIC_STATE`],
        /// [`RHAX_VCPU_IOCTL_SET_APIC_STATE`].
        const IN_KERNEL_APIC = 1 << 6;
        /// [`StatsFlags::CYCLES`]: host cycles per exit are measured only when asked for.
        const STATS_CYCLES = 1 << 7;
    }
}

bitflags::bitflags! {
    /// [`StatsControl::flags`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct StatsFlags: u32 {
        /// Count (the default): every VMX instruction and VM exit goes into [`VcpuStats`]
        /// (host cycles too with [`StatsFlags::CYCLES`]). Clear, the vCPU's exit path neither
        /// counts nor reads the TSC for it, and the counters keep their values.
        const COUNTING = 1 << 0;
        /// Keep per-field VMREAD/VMWRITE counts ([`RHAX_IOCTL_VCPU_FIELD_STATS`]) for VM
        /// exits with basic reason [`StatsControl::field_reason`] only. Per-field counts are
        /// off unless this or [`StatsFlags::ALL_FIELDS`] is set (they cost a table lookup per
        /// VMREAD/VMWRITE).
        const FIELD_REASON = 1 << 1;
        /// Keep per-field counts for every exit reason (not with `FIELD_REASON`).
        const ALL_FIELDS = 1 << 2;
        /// With [`StatsFlags::COUNTING`]: also measure the host cycles from each VM exit to
        /// the next entry ([`ExitReasonStats::cycles`]); two RDTSCs per exit, so off unless
        /// set (drivers without [`ExtFeatures::STATS_CYCLES`] refuse the bit).
        const CYCLES = 1 << 3;
    }
}

/// The input of [`RHAX_VCPU_IOCTL_SET_STATS_CONTROL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsControl {
    /// [`StatsFlags`] bits; a bit the driver does not know fails the IOCTL (`EINVAL`,
    /// `STATUS_INVALID_PARAMETER`) with nothing changed.
    pub flags: u32,
    /// With [`StatsFlags::FIELD_REASON`]: the basic exit reason (below
    /// [`RHAX_EXIT_REASONS`]) per-field counts are kept for; without it, 0. Anything else
    /// (or `FIELD_REASON` with `ALL_FIELDS`) fails the IOCTL.
    pub field_reason: u32,
}

impl_pod!(StatsControl);
assert_layout!(StatsControl, size = 8; flags = 0, field_reason = 4);

bitflags::bitflags! {
    /// [`EmulationControl::flags`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EmulationFlags: u32 {
        /// Send every MMIO access through the general emulator (decode, execute, KVM's
        /// re-execute model), plain MOV/MOVZX/MOVSX loads and stores included, which
        /// otherwise take the fast path (no executor). Clear (the default): the fast path.
        /// For measuring the two paths on the same instructions (issue 11); what the guest
        /// and the user side see is the same either way.
        const NO_MMIO_FAST_PATH = 1 << 0;
    }
}

/// The input of [`RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulationControl {
    /// [`EmulationFlags`] bits; a bit the driver does not know fails the IOCTL (`EINVAL`,
    /// `STATUS_INVALID_PARAMETER`) with nothing changed.
    pub flags: u32,
    /// 0; anything else fails the IOCTL the same way.
    pub reserved: u32,
}

impl_pod!(EmulationControl);
assert_layout!(EmulationControl, size = 8; flags = 0, reserved = 4);

/// [`VcpuStatsRequest::op`]: read the counters.
pub const RHAX_STATS_OP_GET: u32 = 0;
/// [`VcpuStatsRequest::op`]: zero the counters, then read them.
pub const RHAX_STATS_OP_RESET: u32 = 1;
/// [`VcpuStatsRequest::op`]: apply [`VcpuStatsRequest::flags`] as [`StatsFlags`] (as
/// [`RHAX_VCPU_IOCTL_SET_STATS_CONTROL`]), then read the counters.
pub const RHAX_STATS_OP_CONTROL: u32 = 2;

/// The request at the start of [`RHAX_IOCTL_VCPU_STATS`]'s buffer.
///
/// Why through the system device: VM and vCPU devices are exclusive (the VMM that created
/// them holds them open), so an observer such as `rhax-stat` cannot open them; the system
/// device can be opened by any process allowed to create VMs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStatsRequest {
    /// VM id.
    pub vm: u32,
    /// vCPU id.
    pub vcpu: u32,
    /// `RHAX_STATS_OP_*`; any other value fails the IOCTL (`EINVAL`).
    pub op: u32,
    /// [`StatsFlags`] for [`RHAX_STATS_OP_CONTROL`]; 0 otherwise.
    pub flags: u32,
    /// [`StatsControl::field_reason`] for [`RHAX_STATS_OP_CONTROL`]; 0 otherwise.
    pub field_reason: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

impl_pod!(VcpuStatsRequest);
assert_layout!(VcpuStatsRequest, size = 24;
    vm = 0, vcpu = 4, op = 8, flags = 12, field_reason = 16, reserved = 20);

/// The most fields one [`VcpuFieldStats`] lists (the record stays under 4 KiB, the bound of
/// the shells' buffered IOCTLs; a profile touches far fewer fields).
pub const RHAX_FIELD_STATS_MAX: usize = 160;

/// [`VcpuFieldStats::field_reason`]: counts kept for every exit reason.
pub const RHAX_FIELDS_ALL: u32 = u32::MAX;
/// [`VcpuFieldStats::field_reason`]: per-field counting is off.
pub const RHAX_FIELDS_OFF: u32 = u32::MAX - 1;

/// [`VcpuFieldStats::version`] of the layout defined here.
pub const RHAX_FIELD_STATS_VERSION: u32 = 1;

/// VMREAD/VMWRITE counts of one VMCS field (a 64-bit field's high half counts for it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldStats {
    /// The field's encoding (SDM Vol. 3D, Appendix B).
    pub encoding: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// VMREADs.
    pub reads: u64,
    /// VMWRITEs.
    pub writes: u64,
}

impl_pod!(FieldStats);
assert_layout!(FieldStats, size = 24; encoding = 0, reserved = 4, reads = 8, writes = 16);

/// The answer of [`RHAX_IOCTL_VCPU_FIELD_STATS`]: the fields with any VMREAD or VMWRITE,
/// in the driver's field-table order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuFieldStats {
    /// [`RHAX_FIELD_STATS_VERSION`].
    pub version: u32,
    /// Entries of `fields` filled.
    pub nr: u32,
    /// The basic exit reason the counts are kept for, [`RHAX_FIELDS_ALL`] for every reason,
    /// [`RHAX_FIELDS_OFF`] while per-field counting is off.
    pub field_reason: u32,
    /// Fields with counts; more than `nr` when the list was cut at
    /// [`RHAX_FIELD_STATS_MAX`].
    pub active: u32,
    /// `nr` entries, then zeros.
    pub fields: [FieldStats; RHAX_FIELD_STATS_MAX],
}

impl_pod!(VcpuFieldStats);
assert_layout!(VcpuFieldStats, size = 3856;
    version = 0, nr = 4, field_reason = 8, active = 12, fields = 16);

impl VcpuFieldStats {
    /// The filled entries (at most [`RHAX_FIELD_STATS_MAX`], whatever `nr` says).
    pub fn entries(&self) -> &[FieldStats] {
        let n = usize::try_from(self.nr).unwrap_or(usize::MAX);
        self.fields.get(..n).unwrap_or(&self.fields)
    }
}

/// The answer of [`RHAX_IOCTL_EXT_INFO`]: identifies rhax and its extensions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RhaxExtInfo {
    /// [`RHAX_EXT_MAGIC`].
    pub magic: u32,
    /// The extension API version, [`RHAX_EXT_VERSION`] or later.
    pub version: u32,
    /// [`ExtFeatures`] bits.
    pub features: u64,
}

impl_pod!(RhaxExtInfo);
assert_layout!(RhaxExtInfo, size = 16; magic = 0, version = 4, features = 8);

impl RhaxExtInfo {
    /// Whether the magic is right.
    pub const fn is_rhax(&self) -> bool {
        self.magic == RHAX_EXT_MAGIC
    }

    /// `features`, typed (unknown bits kept).
    pub const fn features(&self) -> ExtFeatures {
        ExtFeatures::from_bits_retain(self.features)
    }
}

/// VMX work done for one exit reason (or a sum of them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReasonStats {
    /// VM exits with this basic exit reason.
    pub exits: u64,
    /// VMREADs executed while handling them (exit to next entry).
    pub vmreads: u64,
    /// VMWRITEs executed while handling them, including the flush before VM entry.
    pub vmwrites: u64,
    /// Other VMX instructions (VMXON, VMXOFF, VMPTRLD, VMCLEAR, VMLAUNCH, VMRESUME, INVEPT,
    /// INVVPID) executed while handling them.
    pub vmx_other: u64,
    /// Host TSC cycles from VM exit to the next VM entry, summed.
    pub cycles: u64,
}

impl_pod!(ExitReasonStats);
assert_layout!(ExitReasonStats, size = 40;
    exits = 0, vmreads = 8, vmwrites = 16, vmx_other = 24, cycles = 32);

impl ExitReasonStats {
    /// Field-by-field wrapping sum.
    #[must_use]
    pub const fn wrapping_add(self, o: Self) -> Self {
        Self {
            exits: self.exits.wrapping_add(o.exits),
            vmreads: self.vmreads.wrapping_add(o.vmreads),
            vmwrites: self.vmwrites.wrapping_add(o.vmwrites),
            vmx_other: self.vmx_other.wrapping_add(o.vmx_other),
            cycles: self.cycles.wrapping_add(o.cycles),
        }
    }

    /// Field-by-field wrapping difference (`self - earlier`), for interval sampling.
    #[must_use]
    pub const fn wrapping_sub(self, earlier: Self) -> Self {
        Self {
            exits: self.exits.wrapping_sub(earlier.exits),
            vmreads: self.vmreads.wrapping_sub(earlier.vmreads),
            vmwrites: self.vmwrites.wrapping_sub(earlier.vmwrites),
            vmx_other: self.vmx_other.wrapping_sub(earlier.vmx_other),
            cycles: self.cycles.wrapping_sub(earlier.cycles),
        }
    }
}

/// The answer of [`RHAX_VCPU_IOCTL_GET_STATS`]: per-vCPU exit statistics, read by
/// `rhax-stat` and the user library.
///
/// Counters only grow (wrapping at 2^64) until [`RHAX_VCPU_IOCTL_RESET_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStats {
    /// [`RHAX_VCPU_STATS_VERSION`].
    pub version: u32,
    /// `size_of::<VcpuStats>()` as the driver knows it.
    pub size: u32,
    /// [`RHAX_EXIT_REASONS`]: the length of `per_reason`.
    pub nr_reasons: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// `HAX_VCPU_IOCTL_RUN` calls.
    pub runs: u64,
    /// Returns from RUN to user space.
    pub user_exits: u64,
    /// The sum over every exit reason plus `outside_exits`.
    pub total: ExitReasonStats,
    /// VMX work not caused by a VM exit (IOCTLs such as GET_REGS, vCPU setup); `exits` is 0.
    pub outside_exits: ExitReasonStats,
    /// Indexed by VMX basic exit reason (exit-reason bits 15:0, SDM Vol. 3C 28.2.1).
    pub per_reason: [ExitReasonStats; RHAX_EXIT_REASONS],
}

impl_pod!(VcpuStats);
assert_layout!(VcpuStats, size = 3312;
    version = 0, size = 4, nr_reasons = 8, reserved = 12, runs = 16, user_exits = 24,
    total = 32, outside_exits = 72, per_reason = 112);

impl VcpuStats {
    /// The counters of basic exit reason `reason`, or `None` if it is not counted
    /// separately.
    pub fn reason(&self, reason: u32) -> Option<&ExitReasonStats> {
        self.per_reason.get(usize::try_from(reason).ok()?)
    }

    /// An empty record with the header filled in, as a driver starts one.
    pub fn new() -> Self {
        Self {
            version: RHAX_VCPU_STATS_VERSION,
            size: size_of::<Self>() as u32,
            nr_reasons: RHAX_EXIT_REASONS as u32,
            ..Self::default()
        }
    }
}

/// [`RhaxXsave::version`] of the layout defined here.
pub const RHAX_XSAVE_VERSION: u32 = 1;

/// [`RhaxUnemulated::magic`]: "RHXU".
pub const RHAX_UNEMULATED_MAGIC: u32 = u32::from_le_bytes(*b"RHXU");

/// What the IO buffer holds after a RUN that ended with `HAX_EXIT_STATECHANGE` because the
/// guest touched MMIO with an instruction rhax's emulator does not carry out (HAXM clients
/// ignore the IO buffer on STATECHANGE; a client that knows rhax can show the instruction).
/// Written at offset 0 only for that panic, so `magic` tells it apart from stale IO data.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RhaxUnemulated {
    /// [`RHAX_UNEMULATED_MAGIC`].
    pub magic: u32,
    /// Bytes of `bytes` fetched (up to 15; fewer when the fetch stopped at a page).
    pub len: u32,
    /// The guest-physical address of the MMIO access.
    pub gpa: u64,
    /// The instruction's bytes, then zeros.
    pub bytes: [u8; 16],
}

impl_pod!(RhaxUnemulated);
assert_layout!(RhaxUnemulated, size = 32; magic = 0, len = 4, gpa = 8, bytes = 16);

/// The argument of [`RHAX_VCPU_IOCTL_GET_XSAVE`] / [`RHAX_VCPU_IOCTL_SET_XSAVE`]: the guest's
/// whole extended state, for snapshots. `area` is a standard-format XSAVE image (SDM Vol. 1
/// §13.4; the legacy region is what GET/SET_FPU exchange).
///
/// SET checks everything before it changes anything: `version`, `size` (the XSAVE size of
/// `xcr0`, as GET reports it), `xcr0` (the XSETBV rules and the components this vCPU may
/// enable), XSTATE_BV within `xcr0`, XCOMP_BV and the reserved header bytes 0, MXCSR within
/// the host's MXCSR_MASK. A refused SET returns `-EINVAL` with the vCPU unchanged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RhaxXsave {
    /// [`RHAX_XSAVE_VERSION`].
    pub version: u32,
    /// The bytes of `area` that are meaningful for `xcr0` (CPUID.(EAX=0xD,ECX=0).EBX for
    /// that XCR0): 512 + 64 + the extended components.
    pub size: u32,
    /// The guest's XCR0.
    pub xcr0: u64,
    /// The XSAVE image; bytes past `size` are 0 on GET and ignored on SET.
    pub area: [u8; crate::fpu::XSAVE_AREA_SIZE],
}

impl_pod!(RhaxXsave);
assert_layout!(RhaxXsave, size = 16 + crate::fpu::XSAVE_AREA_SIZE;
    version = 0, size = 4, xcr0 = 8, area = 16);

bitflags::bitflags! {
    /// [`ApicConfig::flags`]: the in-kernel APIC and which of its accelerations to use. Every
    /// acceleration is on by default where the CPU has it; the `NO_*` bits switch one off
    /// (for measuring it, or for working around a CPU), and what the guest sees is the same.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ApicFlags: u32 {
        /// Required: a local APIC per vCPU in the kernel (xAPIC MMIO at the APIC base,
        /// x2APIC MSRs, timer, IPIs). CR8 is then the APIC's TPR, not dropped as by HAXM.
        const ENABLE = 1 << 0;
        /// Do not use the TPR shadow (CR8 accesses exit).
        const NO_TPR_SHADOW = 1 << 1;
        /// Do not use "virtualize APIC accesses" (xAPIC accesses are EPT violations).
        const NO_APIC_ACCESS_PAGE = 1 << 2;
        /// Do not use APIC-register virtualization or virtual-interrupt delivery.
        const NO_APIC_VIRTUALIZATION = 1 << 3;
        /// Handle x2APIC ICR / TSC_DEADLINE writes and APIC-access exits on the general
        /// path (the exit handler and the emulator) instead of the fast paths.
        const NO_FAST_PATHS = 1 << 4;
        /// Do not run the APIC timer on the VMX-preemption timer (it is then checked at exits
        /// only, and HLT returns to user space while it is armed).
        const NO_PREEMPTION_TIMER = 1 << 5;
    }
}

/// The input of [`RHAX_VM_IOCTL_ENABLE_APIC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicConfig {
    /// [`ApicFlags`]; [`ApicFlags::ENABLE`] must be set; unknown bits fail the IOCTL
    /// (`EINVAL`) with nothing changed.
    pub flags: u32,
    /// 0; anything else fails the IOCTL the same way.
    pub reserved: u32,
}

impl_pod!(ApicConfig);
assert_layout!(ApicConfig, size = 8; flags = 0, reserved = 4);

/// The input of [`RHAX_VM_IOCTL_SIGNAL_MSI`]: a message-signalled interrupt as a device
/// writes it (SDM Vol. 3A §11.11: the address 0xFEExxxxx with the destination, the data with
/// the vector, delivery mode and trigger).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RhaxMsi {
    /// The message address (bits 31:20 must be 0xFEE).
    pub address: u64,
    /// The message data (bits 15:0; the rest must be 0).
    pub data: u32,
    /// 0.
    pub reserved: u32,
}

impl_pod!(RhaxMsi);
assert_layout!(RhaxMsi, size = 16; address = 0, data = 8, reserved = 12);

/// The input of [`RHAX_VCPU_IOCTL_APIC_LINT`]: a level change on the vCPU's LINT0 or LINT1
/// pin, delivered as its LVT entry says (an 8259's INTR on LINT0 as ExtINT, NMI on LINT1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RhaxLint {
    /// 0 (LINT0) or 1 (LINT1).
    pub pin: u32,
    /// 1 asserted, 0 deasserted.
    pub level: u32,
    /// For an LVT in ExtINT mode: the vector the interrupt controller supplies (an 8259's
    /// INTA answer); ignored otherwise.
    pub vector: u32,
    /// 0.
    pub reserved: u32,
}

impl_pod!(RhaxLint);
assert_layout!(RhaxLint, size = 16; pin = 0, level = 4, vector = 8, reserved = 12);

crate::ioctl::ioctl_table! {
    /// Every rhax extension IOCTL, in number order.
    EXT_IOCTLS;
    /// `RHAX_IOCTL_EXT_INFO` (system device): out [`RhaxExtInfo`]. A HAXM driver fails it.
    RHAX_IOCTL_EXT_INFO: System, Some(0xa00), px(Direction::Read, 0xe0, size_of::<RhaxExtInfo>());
    /// `RHAX_VCPU_IOCTL_GET_STATS` (vCPU device): out [`VcpuStats`]. Feature
    /// [`ExtFeatures::VCPU_STATS`].
    RHAX_VCPU_IOCTL_GET_STATS: Vcpu, Some(0xa01), px(Direction::Read, 0xe1, size_of::<VcpuStats>());
    /// `RHAX_VCPU_IOCTL_RESET_STATS` (vCPU device): no argument; zeroes the counters of
    /// [`VcpuStats`]. Feature [`ExtFeatures::VCPU_STATS`].
    RHAX_VCPU_IOCTL_RESET_STATS: Vcpu, Some(0xa02), px(Direction::None, 0xe2, 0);
    /// `RHAX_VCPU_IOCTL_SET_STATS_CONTROL` (vCPU device): in [`StatsControl`]; switches
    /// counting on or off. Feature [`ExtFeatures::STATS_CONTROL`].
    RHAX_VCPU_IOCTL_SET_STATS_CONTROL: Vcpu, Some(0xa03), px(Direction::Write, 0xe3, size_of::<StatsControl>());
    /// `RHAX_IOCTL_VCPU_STATS` (system device): in a [`VcpuStatsRequest`] (Windows: the input
    /// buffer; POSIX: the first 24 bytes of the one buffer), out the vCPU's [`VcpuStats`]
    /// after the operation. A vCPU inside RUN answers `EBUSY` (Windows
    /// `STATUS_DEVICE_BUSY`); no such VM or vCPU: `ENOENT` (`STATUS_OBJECT_NAME_NOT_FOUND`).
    /// Feature [`ExtFeatures::SYSTEM_STATS`].
    RHAX_IOCTL_VCPU_STATS: System, Some(0xa04), px(Direction::ReadWrite, 0xe4, size_of::<VcpuStats>());
    /// `RHAX_IOCTL_VCPU_FIELD_STATS` (system device): in a [`VcpuStatsRequest`] with op
    /// [`RHAX_STATS_OP_GET`] (the buffer's first 24 bytes), out the vCPU's per-field counts
    /// ([`VcpuFieldStats`]). Errors as [`RHAX_IOCTL_VCPU_STATS`]. Feature
    /// [`ExtFeatures::FIELD_STATS`].
    RHAX_IOCTL_VCPU_FIELD_STATS: System, Some(0xa05), px(Direction::ReadWrite, 0xe5, size_of::<VcpuFieldStats>());
    /// `RHAX_VCPU_IOCTL_GET_XSAVE` (vCPU device): out [`RhaxXsave`]. Feature
    /// [`ExtFeatures::XSAVE`].
    RHAX_VCPU_IOCTL_GET_XSAVE: Vcpu, Some(0xa06), px(Direction::Read, 0xe6, size_of::<RhaxXsave>());
    /// `RHAX_VCPU_IOCTL_SET_XSAVE` (vCPU device): in [`RhaxXsave`]. Feature
    /// [`ExtFeatures::XSAVE`].
    RHAX_VCPU_IOCTL_SET_XSAVE: Vcpu, Some(0xa07), px(Direction::Write, 0xe7, size_of::<RhaxXsave>());
    /// `RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL` (vCPU device): in [`EmulationControl`];
    /// switches the MMIO fast path off or on. Feature [`ExtFeatures::EMULATION_CONTROL`].
    RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL: Vcpu, Some(0xa08), px(Direction::Write, 0xe8, size_of::<EmulationControl>());
    /// `RHAX_VM_IOCTL_ENABLE_APIC` (VM device): in [`ApicConfig`]; gives every vCPU created
    /// afterwards an in-kernel local APIC. Only before the first VCPU_CREATE (`EBUSY`
    /// after), once (`EEXIST`). Feature [`ExtFeatures::IN_KERNEL_APIC`].
    RHAX_VM_IOCTL_ENABLE_APIC: Vm, Some(0xa09), px(Direction::Write, 0xe9, size_of::<ApicConfig>());
    /// `RHAX_VM_IOCTL_SIGNAL_MSI` (VM device): in [`RhaxMsi`]; delivers the message to the
    /// vCPUs it addresses and kicks those in the guest. Without ENABLE_APIC: `ENXIO`.
    RHAX_VM_IOCTL_SIGNAL_MSI: Vm, Some(0xa0a), px(Direction::Write, 0xea, size_of::<RhaxMsi>());
    /// `RHAX_VCPU_IOCTL_APIC_LINT` (vCPU device): in [`RhaxLint`].
    RHAX_VCPU_IOCTL_APIC_LINT: Vcpu, Some(0xa0b), px(Direction::Write, 0xeb, size_of::<RhaxLint>());
    /// `RHAX_VCPU_IOCTL_GET_APIC_STATE` (vCPU device): out [`crate::apic::RhaxApicState`]
    /// (snapshots). Without ENABLE_APIC: `ENXIO`.
    RHAX_VCPU_IOCTL_GET_APIC_STATE: Vcpu, Some(0xa0c), px(Direction::Read, 0xec, size_of::<crate::apic::RhaxApicState>());
    /// `RHAX_VCPU_IOCTL_SET_APIC_STATE` (vCPU device): in [`crate::apic::RhaxApicState`],
    /// checked whole (`EINVAL` with nothing changed).
    RHAX_VCPU_IOCTL_SET_APIC_STATE: Vcpu, Some(0xa0d), px(Direction::Write, 0xed, size_of::<crate::apic::RhaxApicState>());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioctl::{Platform, IOCTLS};

    #[test]
    fn ext_codes_are_pinned() {
        // Literal values, worked out by hand from CTL_CODE and _IOC, not recomputed.
        assert_eq!(RHAX_IOCTL_EXT_INFO.windows(), Some(0x4000_2800));
        assert_eq!(RHAX_IOCTL_EXT_INFO.linux(), Some(0x8010_00e0));
        assert_eq!(
            RHAX_IOCTL_EXT_INFO.code(Platform::Darwin),
            Some(0x4010_00e0)
        );
        assert_eq!(RHAX_VCPU_IOCTL_GET_STATS.windows(), Some(0x4000_2804));
        assert_eq!(RHAX_VCPU_IOCTL_GET_STATS.linux(), Some(0x8cf0_00e1));
        assert_eq!(
            RHAX_VCPU_IOCTL_GET_STATS.code(Platform::Darwin),
            Some(0x4cf0_00e1)
        );
        assert_eq!(RHAX_VCPU_IOCTL_RESET_STATS.windows(), Some(0x4000_2808));
        assert_eq!(RHAX_VCPU_IOCTL_RESET_STATS.linux(), Some(0x0000_00e2));
        assert_eq!(
            RHAX_VCPU_IOCTL_RESET_STATS.code(Platform::NetBsd),
            Some(0x2000_00e2)
        );
        // CTL_CODE(0x22, 0xa03, METHOD_BUFFERED, FILE_ANY_ACCESS); _IOW(0, 0xe3, 8).
        assert_eq!(
            RHAX_VCPU_IOCTL_SET_STATS_CONTROL.windows(),
            Some(0x4000_280c)
        );
        assert_eq!(RHAX_VCPU_IOCTL_SET_STATS_CONTROL.linux(), Some(0x4008_00e3));
        // CTL_CODE(0x22, 0xa04, ...); _IOWR(0, 0xe4, 3312).
        assert_eq!(RHAX_IOCTL_VCPU_STATS.windows(), Some(0x4000_2810));
        assert_eq!(RHAX_IOCTL_VCPU_STATS.linux(), Some(0xccf0_00e4));
        // CTL_CODE(0x22, 0xa05, ...); _IOWR(0, 0xe5, 3856).
        assert_eq!(RHAX_IOCTL_VCPU_FIELD_STATS.windows(), Some(0x4000_2814));
        assert_eq!(RHAX_IOCTL_VCPU_FIELD_STATS.linux(), Some(0xcf10_00e5));
        // 4112 = 0x1010 bytes: _IOR/_IOW carry it in the 14-bit size field.
        assert_eq!(RHAX_VCPU_IOCTL_GET_XSAVE.windows(), Some(0x4000_2818));
        assert_eq!(RHAX_VCPU_IOCTL_GET_XSAVE.linux(), Some(0x9010_00e6));
        assert_eq!(RHAX_VCPU_IOCTL_SET_XSAVE.windows(), Some(0x4000_281c));
        assert_eq!(RHAX_VCPU_IOCTL_SET_XSAVE.linux(), Some(0x5010_00e7));
        // CTL_CODE(0x22, 0xa08, METHOD_BUFFERED, FILE_ANY_ACCESS); _IOW(0, 0xe8, 8).
        assert_eq!(
            RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL.windows(),
            Some(0x4000_2820)
        );
        assert_eq!(
            RHAX_VCPU_IOCTL_SET_EMULATION_CONTROL.linux(),
            Some(0x4008_00e8)
        );
        // CTL_CODE(0x4000, 0xa09, METHOD_BUFFERED, FILE_ANY_ACCESS) = 0x4000 << 16 | 0xa09 << 2;
        // _IOW(0, 0xe9, 8) = 1 << 30 | 8 << 16 | 0xe9.
        assert_eq!(RHAX_VM_IOCTL_ENABLE_APIC.windows(), Some(0x4000_2824));
        assert_eq!(RHAX_VM_IOCTL_ENABLE_APIC.linux(), Some(0x4008_00e9));
        assert_eq!(RHAX_VM_IOCTL_SIGNAL_MSI.windows(), Some(0x4000_2828));
        assert_eq!(RHAX_VM_IOCTL_SIGNAL_MSI.linux(), Some(0x4010_00ea));
        assert_eq!(RHAX_VCPU_IOCTL_APIC_LINT.windows(), Some(0x4000_282c));
        assert_eq!(RHAX_VCPU_IOCTL_APIC_LINT.linux(), Some(0x4010_00eb));
        // 1072 = 0x430 bytes.
        assert_eq!(RHAX_VCPU_IOCTL_GET_APIC_STATE.windows(), Some(0x4000_2830));
        assert_eq!(RHAX_VCPU_IOCTL_GET_APIC_STATE.linux(), Some(0x8430_00ec));
        assert_eq!(RHAX_VCPU_IOCTL_SET_APIC_STATE.windows(), Some(0x4000_2834));
        assert_eq!(RHAX_VCPU_IOCTL_SET_APIC_STATE.linux(), Some(0x4430_00ed));
        assert_eq!(RHAX_EXT_MAGIC, 0x5841_4852);
    }

    #[test]
    fn ext_codes_never_collide_with_haxm() {
        for e in EXT_IOCTLS {
            let f = e.windows_function.unwrap();
            assert!((0xa00..=0xaff).contains(&f), "{}", e.name);
            assert!((0xe0..=0xef).contains(&e.posix.unwrap().nr), "{}", e.name);
            for h in IOCTLS {
                for p in Platform::ALL {
                    // Across all devices, not only the same one: a stricter rule than needed.
                    if e.code(p).is_some() {
                        assert_ne!(e.code(p), h.code(p), "{} vs {} on {p:?}", e.name, h.name);
                    }
                }
            }
        }
    }

    #[test]
    fn stats_helpers() {
        let mut s = VcpuStats::new();
        assert_eq!(s.size as usize, size_of::<VcpuStats>());
        s.per_reason[30].exits = 3;
        assert_eq!(s.reason(30).map(|r| r.exits), Some(3));
        assert!(s.reason(80).is_none());
        assert!(s.reason(u32::MAX).is_none());
        let a = ExitReasonStats {
            exits: 1,
            vmreads: 32,
            vmwrites: 23,
            vmx_other: 5,
            cycles: 9,
        };
        assert_eq!(a.wrapping_add(a).wrapping_sub(a), a);
    }
}
