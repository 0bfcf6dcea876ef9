#!/bin/bash
# Traces CPUID round trips of the metal `bench-table-short` scenario instruction by instruction
# with Bochs's built-in debugger (docs/bench/profile.md), and prints one round trip by phase.
# Usage: scripts/bench/trace-round-trip.sh [OUTDIR]   (default target/trace; ~1 min)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/trace}
mkdir -p "$out"
cd "$root"
cargo xtask metal --model corei7_skylake_x bench-table-short | tail -1
kernel=target/metal/x86_64-unknown-none/release/rhax-metal
nm -n -C "$kernel" | grep -i ' [tw] ' > "$out/syms.txt"
# Break at the guest's CPUID (linear 0x100e in the real-mode guest of guests.rs::loop_code; no host
# code lives that low, and a physical breakpoint would depend on the allocator), skip
# 60,000 instructions (past the first 64 exits, which the harness records), trace 2,000.
printf 'lb 0x100e\nc\nd 1\ns 60000\ntrace on\ns 2000\ntrace off\nq\n' > "$out/trace.rc"
(cd target/metal-runs/corei7_skylake_x-2cpu &&
    TERM=dumb timeout -s KILL 120 bochs-bin -q -f bochsrc -rc "$out/trace.rc" \
        < /dev/null > "$out/trace.txt" 2> /dev/null) || true
# One round trip: from the second traced CPUID to the instruction before the third.
mapfile -t at < <(grep -n 'cpuid  ' "$out/trace.txt" | sed -n 2,3p | cut -d: -f1)
sed -n "${at[0]},$((at[1] - 1))p" "$out/trace.txt" |
    sed -E 's/^\(0\)\.\[[0-9]+\] \[0x0*([0-9a-f]+)\] \S+ \(unk. ctxt\): /\1 /' > "$out/round-trip.txt"
python3 "$root/scripts/bench/phases.py" "$out/syms.txt" "$out/round-trip.txt"
