//! The vCPU's counters ([`crate::vmcs::stats::VcpuStats`]) as the ABI's extension record
//! ([`rhax_api::ext::VcpuStats`], `RHAX_VCPU_IOCTL_GET_STATS`).

use rhax_api::ext::{ExitReasonStats, VcpuStats, RHAX_EXIT_REASONS};

use crate::vmcs::stats::{ExitCounters, StatsSnapshot, EXIT_REASONS, SETUP_BUCKET};

const _: () = assert!(EXIT_REASONS == RHAX_EXIT_REASONS);

fn convert(c: &ExitCounters) -> ExitReasonStats {
    ExitReasonStats {
        exits: c.exits,
        vmreads: c.vmreads,
        vmwrites: c.vmwrites,
        vmx_other: c.other_vmx,
        cycles: c.host_cycles,
    }
}

/// Builds the extension record: `per_reason[r]` from the core's bucket `r`; the core's setup
/// bucket (work before the first exit, and exits whose reason is 80 or above) becomes
/// `outside_exits` with its VMX work but `exits` 0 (such exits still count in `total`);
/// `total` sums everything.
pub fn vcpu_stats(snapshot: &StatsSnapshot, runs: u64, user_exits: u64) -> VcpuStats {
    let mut out = VcpuStats::new();
    out.runs = runs;
    out.user_exits = user_exits;
    let mut total = ExitReasonStats::default();
    for (dst, src) in out
        .per_reason
        .iter_mut()
        .zip(&snapshot.per_exit[..EXIT_REASONS])
    {
        *dst = convert(src);
        total = total.wrapping_add(*dst);
    }
    let outside = convert(&snapshot.per_exit[SETUP_BUCKET]);
    total = total.wrapping_add(outside);
    out.outside_exits = ExitReasonStats {
        exits: 0,
        ..outside
    };
    out.total = total;
    out
}
