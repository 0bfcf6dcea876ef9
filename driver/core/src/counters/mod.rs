//! Per-vCPU counters: VM exits, VMREADs, VMWRITEs, other VMX instructions and host TSC cycles
//! spent between a VM exit and the next VM entry, per basic exit reason; VMREAD/VMWRITE counts
//! per VMCS field for tuning. Filled by [`crate::vmx::Counted`], the wrapper every VMX
//! operation of a vCPU goes through, so nothing escapes.
//!
//! Attribution: a *window* runs from the VMREAD of one exit's reason to the VMREAD of the next
//! one, so it holds the decoding, the handling, the flush and the VMRESUME of that exit. The
//! window before the first VM exit (setup and VMLAUNCH) goes to [`SETUP_BUCKET`].
//!
//! Layering: these types sit below both `vmx/` (whose [`crate::vmx::Counted`] fills them) and
//! `vmcs/` (which reports them; `crate::vmcs::stats` re-exports this module), so no
//! dependency runs from `vmx/` up into `vmcs/`. The one edge left is to the VMCS field
//! *identities* ([`VmcsField`]: encoding and index from the component table), which the
//! per-field counters are indexed by.

use crate::vmcs::VmcsField;

/// Number of basic exit reasons tracked one by one (0..=79, SDM Appendix C).
pub const EXIT_REASONS: usize = 80;
/// Bucket for work done before the first VM exit and for unknown reasons (>= 80).
pub const SETUP_BUCKET: usize = EXIT_REASONS;
/// Number of buckets.
pub const BUCKETS: usize = EXIT_REASONS + 1;

/// Counters of one exit reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounters {
    /// VM exits with this reason.
    pub exits: u64,
    /// VMREADs in the windows of these exits.
    pub vmreads: u64,
    /// VMWRITEs (including the entry stub's HOST_RSP write).
    pub vmwrites: u64,
    /// Other VMX instructions (VMLAUNCH, VMRESUME, VMPTRLD, VMCLEAR, INVEPT, INVVPID, ...).
    pub other_vmx: u64,
    /// Host TSC cycles from the VM exit to the next VM entry.
    pub host_cycles: u64,
}

impl ExitCounters {
    fn add(&mut self, o: &ExitCounters) {
        self.exits += o.exits;
        self.vmreads += o.vmreads;
        self.vmwrites += o.vmwrites;
        self.other_vmx += o.other_vmx;
        self.host_cycles += o.host_cycles;
    }
}

/// VMREAD/VMWRITE counts of one field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldCounters {
    /// VMREADs.
    pub reads: u64,
    /// VMWRITEs.
    pub writes: u64,
}

/// The counters of one vCPU.
///
/// The VMX instruction hooks cost one increment of the open window (at a fixed place, counted
/// whether counting is on or not: what gathers while it is off is dropped) and one test of
/// [`VcpuStats::fields_live`], chosen once per exit (and when a switch changes): three
/// emulated instructions per VMREAD/VMWRITE (docs/bench/profile.md).
#[derive(Clone, Debug)]
pub struct VcpuStats {
    per_exit: [ExitCounters; BUCKETS],
    /// The open window: everything since the first exit of the current bucket's run
    /// (junk while counting is off, zeroed when it comes back on).
    window: ExitCounters,
    /// Per-field counts, kept while `fields_live`; [`FIELD_SLOTS`] long so that the flush's
    /// word-and-bit index needs no bounds test (the slots past the table stay 0).
    fields: [FieldCounters; FIELD_SLOTS],
    /// Counting on and per-field counts kept for the current window.
    fields_live: bool,
    /// Bucket the current window belongs to.
    bucket: usize,
    /// Counting switched off at run time (`RHAX_VCPU_IOCTL_SET_STATS_CONTROL`): nothing is
    /// counted and the exit path reads no TSC for the counters. Stored inverted so that the
    /// all-zero value [`VcpuStats::boxed`] starts from counts.
    disabled: bool,
    /// The bucket per-field counts are kept for, [`ALL_BUCKETS`] or [`NO_BUCKET`].
    field_bucket: usize,
    /// The basic reason of the last exit counted, or [`NO_REASON`] (counting off, or the
    /// bucket changed otherwise): [`VcpuStats::begin_exit`]'s one-compare hot case.
    same_reason: u32,
    /// Host cycles from exit to entry measured (with counting on): two RDTSCs and an add per
    /// exit, ~15 emulated instructions of a ~250-instruction round trip, so off unless asked
    /// for (`StatsFlags::CYCLES`; rhax-stat asks).
    timing: bool,
}

/// Slots of the per-field table: one per bit of the VMCS cache's 64-bit dirty words (the
/// slots past [`VmcsField::COUNT`] stay 0).
pub const FIELD_SLOTS: usize = VmcsField::COUNT.div_ceil(64) * 64;

/// [`VcpuStats::same_reason`]: no exit matches it (basic reasons are 16-bit).
const NO_REASON: u32 = u32::MAX;

/// [`VcpuStats::field_bucket`]: per-field counts for every exit reason.
const ALL_BUCKETS: usize = usize::MAX;
/// [`VcpuStats::field_bucket`]: no per-field counts (the default: the per-field table lookup
/// and increment cost ~28 emulated instructions per CPUID round trip, and only a tuner asks).
const NO_BUCKET: usize = usize::MAX - 1;

/// Which VM exits per-field VMREAD/VMWRITE counts are kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldFilter {
    /// None (the default).
    Off,
    /// Every exit reason (and the work outside exits).
    All,
    /// Exits with this basic reason only.
    Reason(u16),
}

// SAFETY: integer counters, a bucket index and bools: all zero is valid (bucket 0, counting
// on, per-field counts off; `VcpuStats::boxed` sets the setup bucket and the filters).
unsafe impl crate::heap::Zeroable for VcpuStats {}

impl VcpuStats {
    /// `VcpuStats::default()` on the heap, built in place (6 KiB: never on the kernel stack);
    /// `None` when memory is short.
    pub fn boxed() -> Option<alloc::boxed::Box<VcpuStats>> {
        let mut s = crate::heap::try_zeroed::<VcpuStats>()?;
        s.bucket = SETUP_BUCKET;
        s.field_bucket = NO_BUCKET;
        s.same_reason = NO_REASON;
        Some(s)
    }
}

impl Default for VcpuStats {
    fn default() -> Self {
        VcpuStats {
            per_exit: [ExitCounters::default(); BUCKETS],
            window: ExitCounters::default(),
            fields: [FieldCounters::default(); FIELD_SLOTS],
            fields_live: false,
            bucket: SETUP_BUCKET,
            disabled: false,
            field_bucket: NO_BUCKET,
            same_reason: NO_REASON,
            timing: false,
        }
    }
}

/// The bucket of a basic exit reason.
pub const fn bucket_of(basic_reason: u16) -> usize {
    if (basic_reason as usize) < EXIT_REASONS {
        basic_reason as usize
    } else {
        SETUP_BUCKET
    }
}

impl VcpuStats {
    // Inlined into every VMREAD/VMWRITE of `Counted`: with a constant encoding the table
    // lookup folds away, so counting is an increment and a test.
    #[inline(always)]
    pub(crate) fn count_read(&mut self, encoding: u32) {
        self.window.vmreads += 1;
        if self.fields_live {
            if let Some(f) = self.fields.get_mut(field_index(encoding)) {
                f.reads += 1;
            }
        }
    }

    #[inline(always)]
    pub(crate) fn count_write(&mut self, encoding: u32) {
        self.window.vmwrites += 1;
        if self.fields_live {
            if let Some(f) = self.fields.get_mut(field_index(encoding)) {
                f.writes += 1;
            }
        }
    }

    /// [`VcpuStats::count_write`] for a field known by its index: no encoding to decode.
    #[inline(always)]
    pub(crate) fn count_write_index(&mut self, index: usize) {
        self.window.vmwrites += 1;
        if self.fields_live {
            if let Some(f) = self.fields.get_mut(index) {
                f.writes += 1;
            }
        }
    }

    #[inline(always)]
    pub(crate) fn count_other(&mut self) {
        self.window.other_vmx += 1;
    }

    pub(crate) fn add_host_cycles(&mut self, cycles: u64) {
        self.window.host_cycles = self.window.host_cycles.wrapping_add(cycles);
    }

    /// Whether counting is on (the default).
    #[inline]
    pub fn counting(&self) -> bool {
        !self.disabled
    }

    /// Whether host cycles per exit are measured: counting on and timing asked for.
    #[inline]
    pub fn timing(&self) -> bool {
        self.timing && !self.disabled
    }

    /// Switches the host-cycle measurement on or off (off by default; only counts while
    /// counting is on).
    pub fn set_timing(&mut self, on: bool) {
        self.timing = on;
    }

    /// Switches counting on or off; the counters keep their values either way. Switched on
    /// again, counting resumes in the bucket of the last exit counted.
    pub fn set_counting(&mut self, on: bool) {
        if on == self.counting() {
            return;
        }
        if on {
            // What the window gathered while off is not counted.
            self.window = ExitCounters::default();
        } else {
            // The open window so far is counted; what follows until counting is back is not.
            let w = core::mem::take(&mut self.window);
            if let Some(c) = self.per_exit.get_mut(self.bucket) {
                c.add(&w);
            }
        }
        self.disabled = !on;
        self.same_reason = NO_REASON;
        self.select_fields();
    }

    /// Chooses which VM exits per-field counts are kept for, so a tuner sees which fields one
    /// exit kind touches. The VMREAD of the exit reason itself counts for the window before
    /// it (it happens before the reason is known). Existing per-field counts are kept; reset
    /// them to start clean.
    pub fn set_field_filter(&mut self, filter: FieldFilter) {
        self.field_bucket = match filter {
            FieldFilter::Off => NO_BUCKET,
            FieldFilter::All => ALL_BUCKETS,
            FieldFilter::Reason(r) => bucket_of(r),
        };
        self.select_fields();
    }

    /// Which VM exits per-field counts are kept for.
    pub fn field_filter(&self) -> FieldFilter {
        match self.field_bucket {
            NO_BUCKET => FieldFilter::Off,
            ALL_BUCKETS => FieldFilter::All,
            b => u16::try_from(b).map_or(FieldFilter::Off, FieldFilter::Reason),
        }
    }

    /// Per-field counts are kept only while counting is on and for the chosen exits.
    fn select_fields(&mut self) {
        self.fields_live = !self.disabled
            && (self.field_bucket == ALL_BUCKETS || self.field_bucket == self.bucket);
    }

    /// The open window (nothing while counting is off).
    fn window(&self) -> ExitCounters {
        if self.disabled {
            ExitCounters::default()
        } else {
            self.window
        }
    }

    /// Starts the window of a VM exit with this basic reason. Call it right after the VMREAD
    /// of the exit reason, which belongs to this exit's window.
    ///
    /// The open window is folded into its bucket only when the bucket changes: a run of exits
    /// with one reason (the hot case) just keeps accumulating, which costs nothing per exit, and
    /// every reader folds the open window in.
    #[inline]
    pub(crate) fn begin_exit(&mut self, basic_reason: u16) {
        // One compare in the hot case: the same reason as the last exit counted (never true
        // while counting is off: `same_reason` is then out of the u16 range).
        if u32::from(basic_reason) == self.same_reason {
            self.window.exits += 1;
        } else if !self.disabled {
            self.begin_other_exit(basic_reason);
        }
    }

    #[cold]
    fn begin_other_exit(&mut self, basic_reason: u16) {
        self.same_reason = u32::from(basic_reason);
        let bucket = bucket_of(basic_reason);
        if bucket != self.bucket {
            self.switch_bucket(bucket);
        }
        self.window.exits += 1;
    }

    #[cold]
    fn switch_bucket(&mut self, bucket: usize) {
        // Only called with counting on: the window is the open one.
        let mut w = core::mem::take(&mut self.window);
        // The exit-reason VMREAD just counted opens the new window.
        let reason_read = w.vmreads.min(1);
        w.vmreads -= reason_read;
        if let Some(c) = self.per_exit.get_mut(self.bucket) {
            c.add(&w);
        }
        self.window.vmreads = reason_read;
        self.bucket = bucket;
        self.select_fields();
    }

    /// The counters of one bucket, including the still-open window.
    pub fn exit(&self, bucket: usize) -> ExitCounters {
        let mut c = self.per_exit.get(bucket).copied().unwrap_or_default();
        if bucket == self.bucket {
            c.add(&self.window());
        }
        c
    }

    /// The counters of one field.
    pub fn field(&self, field: VmcsField) -> FieldCounters {
        self.fields.get(field.index()).copied().unwrap_or_default()
    }

    /// Sum over all buckets (open window included).
    pub fn total(&self) -> ExitCounters {
        let mut t = ExitCounters::default();
        for c in &self.per_exit {
            t.add(c);
        }
        t.add(&self.window());
        t
    }

    /// A copy of every counter with the open window folded in, for export (e.g. to the stats
    /// extension of the ABI): `per_exit[reason]`, `per_field[VmcsField::index()]`.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut per_exit = self.per_exit;
        if let Some(c) = per_exit.get_mut(self.bucket) {
            c.add(&self.window());
        }
        StatsSnapshot {
            per_exit,
            per_field: self.fields,
        }
    }

    /// Zeroes every counter (the current window keeps its bucket; the switch stays as it is).
    pub fn reset(&mut self) {
        // In place: a `VcpuStats::default()` temporary would put 6 KiB on the kernel stack.
        self.per_exit.fill(ExitCounters::default());
        self.window = ExitCounters::default();
        self.fields.fill(FieldCounters::default());
    }
}

/// A plain copy of a vCPU's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// By basic exit reason; index [`SETUP_BUCKET`] holds setup and unknown reasons.
    pub per_exit: [ExitCounters; BUCKETS],
    /// By field, indexed by [`VmcsField::index`] ([`FIELD_SLOTS`] long; the rest 0).
    pub per_field: [FieldCounters; FIELD_SLOTS],
}

/// Bits of an encoding the lookup table keys on: access type (0), index 5:0 (bits 6:1), type
/// (11:10) and width (14:13) (SDM §25.11.2, Table 25-21). No field of the table uses the others
/// (index bits 8:6 above 5, bit 12, bits 31:15), which the table build checks.
const KEY_BITS: u32 = 0x6c7f;

/// Slot of an encoding in [`FIELD_BY_KEY`]: width, type and index 5:0. Bit 0 is left out: the
/// high half of a 64-bit field (encoding | 1) counts for that field.
const fn key_of(encoding: u32) -> usize {
    ((((encoding >> 13) & 3) << 8) | (((encoding >> 10) & 3) << 6) | ((encoding >> 1) & 0x3f))
        as usize
}

/// `VmcsField::index()` of each key, [`NO_FIELD`] where no field has it. A `const`, not a
/// `static`: the crate that inlines a typed accessor sees the contents and folds the lookup of
/// a constant encoding (a `static` of another crate stays an opaque load).
const FIELD_BY_KEY: [u8; 1024] = field_by_key();

/// An index past every field (`per_field.get_mut` finds nothing there).
const NO_FIELD: u8 = u8::MAX;

const fn field_by_key() -> [u8; 1024] {
    assert!(
        VmcsField::COUNT < NO_FIELD as usize,
        "field index must fit a u8"
    );
    let mut t = [NO_FIELD; 1024];
    let mut i = 0;
    while i < VmcsField::COUNT {
        let e = VmcsField::ALL[i].encoding();
        assert!(
            e & !KEY_BITS == 0 && e & 1 == 0,
            "a field encoding uses bits the lookup does not key on"
        );
        assert!(t[key_of(e)] == NO_FIELD, "two fields share a key");
        t[key_of(e)] = i as u8;
        i += 1;
    }
    t
}

/// The `VmcsField::index()` an encoding counts for (a 64-bit field's high half counts for the
/// field), or an index past the table for encodings the table does not know.
#[inline]
fn field_index(encoding: u32) -> usize {
    if encoding & !KEY_BITS != 0 {
        return NO_FIELD as usize;
    }
    FIELD_BY_KEY[key_of(encoding)] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition the table replaces: the field itself, else the field whose high half
    /// this is.
    fn by_search(encoding: u32) -> Option<VmcsField> {
        VmcsField::from_encoding(encoding).or_else(|| VmcsField::from_encoding(encoding & !1))
    }

    #[test]
    fn table_lookup_matches_the_search_for_every_16_bit_encoding_and_beyond() {
        let extra = [0x1_0000, 0x1_6c00, 0x8000_6c00, u32::MAX, 0x7fff_ffff];
        for e in (0..=0xffff).chain(extra) {
            let want = by_search(e).map_or(NO_FIELD as usize, VmcsField::index);
            assert_eq!(field_index(e), want, "encoding {e:#x}");
        }
    }

    /// One exit as `Vcpu::run` counts it: work of the previous window, then the exit-reason
    /// VMREAD, then `begin_exit`.
    fn exit(s: &mut VcpuStats, reason: u16, reads: u64, writes: u64, cycles: u64) {
        for _ in 0..reads {
            s.count_read(VmcsField::GuestRip.encoding());
        }
        for _ in 0..writes {
            s.count_write(VmcsField::GuestRip.encoding());
        }
        s.count_other();
        s.add_host_cycles(cycles);
        s.count_read(VmcsField::ExitReason.encoding());
        s.begin_exit(reason);
    }

    #[test]
    fn windows_go_to_the_reason_that_opened_them_across_reason_changes() {
        let mut s = VcpuStats::default();
        // Setup window (2 reads), then CPUID x3 (1 read, 1 write each), IO x2 (2 reads), HLT.
        exit(&mut s, 10, 2, 0, 100);
        exit(&mut s, 10, 1, 1, 10);
        exit(&mut s, 10, 1, 1, 10);
        exit(&mut s, 30, 1, 1, 10);
        exit(&mut s, 30, 2, 0, 20);
        exit(&mut s, 12, 2, 0, 20);
        let setup = s.exit(SETUP_BUCKET);
        assert_eq!(
            (
                setup.exits,
                setup.vmreads,
                setup.other_vmx,
                setup.host_cycles
            ),
            (0, 2, 1, 100)
        );
        // Each exit's window: its reason read + the next window's work.
        let cpuid = s.exit(10);
        assert_eq!(
            (cpuid.exits, cpuid.vmreads, cpuid.vmwrites, cpuid.other_vmx),
            (3, 3 + 3, 3, 3)
        );
        assert_eq!(cpuid.host_cycles, 30);
        let io = s.exit(30);
        assert_eq!(
            (io.exits, io.vmreads, io.vmwrites, io.host_cycles),
            (2, 2 + 4, 0, 40)
        );
        // The open window: HLT's reason read only.
        let hlt = s.exit(12);
        assert_eq!((hlt.exits, hlt.vmreads, hlt.other_vmx), (1, 1, 0));
        let t = s.total();
        assert_eq!((t.exits, t.vmreads, t.vmwrites), (6, 15, 3));
        assert_eq!(s.snapshot().per_exit[10], cpuid);
        assert_eq!(s.snapshot().per_exit[12], hlt);
    }

    #[test]
    fn counts_land_on_the_field_including_high_halves() {
        let mut s = VcpuStats::default();
        s.count_read(VmcsField::GuestRip.encoding());
        assert_eq!(
            s.field(VmcsField::GuestRip).reads,
            0,
            "per-field counts are opt-in"
        );
        s.set_field_filter(FieldFilter::All);
        s.count_read(VmcsField::GuestRip.encoding());
        s.count_write(VmcsField::EptPointer.encoding() | 1);
        s.count_write(0x7fff_fffe);
        s.count_write_index(VmcsField::GuestRip.index());
        assert_eq!(s.field(VmcsField::GuestRip).reads, 1);
        assert_eq!(s.field(VmcsField::GuestRip).writes, 1);
        assert_eq!(s.field(VmcsField::EptPointer).writes, 1);
        let t = s.total();
        assert_eq!((t.vmreads, t.vmwrites), (2, 3));
    }

    #[test]
    fn switched_off_nothing_is_counted_and_the_counters_stay() {
        let mut s = VcpuStats::default();
        assert!(s.counting());
        exit(&mut s, 10, 1, 1, 10);
        exit(&mut s, 10, 1, 1, 10);
        let before = s.snapshot();
        s.set_counting(false);
        assert!(!s.counting());
        exit(&mut s, 10, 5, 5, 50);
        exit(&mut s, 30, 5, 5, 50);
        assert_eq!(s.snapshot(), before);
        s.reset();
        assert!(!s.counting(), "a reset keeps the switch");
        s.set_counting(true);
        exit(&mut s, 10, 1, 2, 7);
        let cpuid = s.exit(10);
        assert_eq!(
            (
                cpuid.exits,
                cpuid.vmreads,
                cpuid.vmwrites,
                cpuid.host_cycles
            ),
            (1, 2, 2, 7)
        );
    }

    #[test]
    fn per_field_counts_only_for_the_chosen_reason() {
        let mut s = VcpuStats::default();
        s.set_field_filter(FieldFilter::Reason(30));
        assert_eq!(s.field_filter(), FieldFilter::Reason(30));
        // Setup window and a CPUID window: not reason 30.
        exit(&mut s, 10, 2, 1, 0);
        exit(&mut s, 30, 3, 2, 0);
        // The IO window's work (next call's reads/writes) counts per field.
        exit(&mut s, 10, 4, 5, 0);
        assert_eq!(s.field(VmcsField::GuestRip).reads, 4);
        assert_eq!(s.field(VmcsField::GuestRip).writes, 5);
        // Window counts are unaffected by the filter.
        assert_eq!(s.total().vmreads, 2 + 3 + 4 + 3);
        s.set_field_filter(FieldFilter::All);
        exit(&mut s, 10, 1, 0, 0);
        assert_eq!(s.field(VmcsField::GuestRip).reads, 5);
        // Off wins over the filter; on again, the filter holds.
        s.set_field_filter(FieldFilter::Reason(12));
        s.set_counting(false);
        exit(&mut s, 12, 7, 7, 0);
        s.set_counting(true);
        assert_eq!(s.field(VmcsField::GuestRip).reads, 5);
        assert_eq!(s.field_filter(), FieldFilter::Reason(12));
        s.set_field_filter(FieldFilter::Off);
        exit(&mut s, 12, 1, 1, 0);
        assert_eq!(s.field(VmcsField::GuestRip).reads, 5);
    }

    /// With per-field counts off the window still counts; it is kept when counting goes off,
    /// and what it gathers while off is dropped.
    #[test]
    fn the_window_counts_while_on_and_is_dropped_while_off() {
        let mut s = VcpuStats::default();
        exit(&mut s, 10, 0, 0, 0);
        s.count_read(VmcsField::GuestRip.encoding());
        s.count_write(VmcsField::GuestRip.encoding());
        s.count_other();
        let open = s.exit(10);
        assert_eq!((open.vmreads, open.vmwrites, open.other_vmx), (2, 1, 1));
        s.set_counting(false);
        s.count_read(VmcsField::GuestRip.encoding());
        s.add_host_cycles(99);
        assert_eq!(s.exit(10), open, "nothing counted while off");
        s.set_counting(true);
        assert_eq!(s.exit(10), open, "the off-time counts are dropped");
        s.count_read(VmcsField::GuestRip.encoding());
        assert_eq!(s.exit(10).vmreads, 3);
        assert_eq!(s.field(VmcsField::GuestRip), FieldCounters::default());
        // A filter change keeps the open window.
        s.set_field_filter(FieldFilter::All);
        s.count_read(VmcsField::GuestRip.encoding());
        assert_eq!(s.exit(10).vmreads, 4);
        assert_eq!(s.field(VmcsField::GuestRip).reads, 1);
        assert_eq!(s.total().vmreads, 4);
    }
}
