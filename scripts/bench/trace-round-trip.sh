#!/bin/bash
# Traces round trips of a metal bench loop instruction by instruction with Bochs's built-in
# debugger (docs/bench/profile.md), and prints one round trip by phase.
#
# Usage: scripts/bench/trace-round-trip.sh [cpuid|haxm-out] [OUTDIR]   (default: cpuid,
# target/trace; ~1 min)
#   cpuid     the raw core loop's CPUID exit (`bench-table-short`, core-cpuid), phases.py
#   haxm-out  an OUT served by the user side through the full HAXM RUN path (`bench-haxm`'s
#             io loop: userlib, the in-kernel transport, the dispatcher, the HAXM vCPU),
#             phases-haxm.py
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-cpuid}
out=${2:-$root/target/trace}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
case "$mode" in
cpuid)
    scenario=bench-table-short
    # The guest's CPUID (real mode, at 0x100e: guests.rs's loop_code at 0x1000 + 14; its RAM
    # is kernel pages elsewhere, so a linear breakpoint, as for haxm-out).
    brk='lb 0x100e'
    mark='cpuid  '
    # Past the first 64 exits, which the harness records.
    skip=60000
    steps=2000
    phases=phases.py
    ;;
haxm-out)
    scenario=bench-haxm
    # The guest's `out 0x80, al` (real mode, CS base 0, at 0x1010: bench_loop's body at
    # 0x1000 + 16). The RAM block is kernel pages at another host-physical address, so a
    # linear breakpoint (the host never runs at linear 0x1010).
    brk='lb 0x1010'
    mark='out 0x80, al'
    # Past the first, cold iterations (about 25 round trips).
    skip=60000
    steps=8000
    phases=phases-haxm.py
    ;;
*)
    echo "unknown mode $mode (cpuid | haxm-out)" >&2
    exit 2
    ;;
esac
cargo xtask metal --model corei7_skylake_x "$scenario" | tail -1
kernel=target/metal/x86_64-unknown-none/release/rhax-metal
nm -n -C "$kernel" | grep -i ' [tw] ' > "$out/syms.txt"
printf '%s\nc\nd 1\ns %d\ntrace on\ns %d\ntrace off\nq\n' "$brk" "$skip" "$steps" > "$out/trace.rc"
(cd target/metal-runs/corei7_skylake_x-2cpu &&
    TERM=dumb timeout -s KILL 120 bochs-bin -q -f bochsrc -rc "$out/trace.rc" \
        < /dev/null > "$out/trace.txt" 2> /dev/null) || true
# One round trip of CPU 0: from the second traced marker instruction to the one before the
# third.
grep '^(0)\.' "$out/trace.txt" > "$out/cpu0.txt" || true
mapfile -t at < <(grep -n -F "$mark" "$out/cpu0.txt" | sed -n 2,3p | cut -d: -f1)
if [ "${#at[@]}" -lt 2 ]; then
    echo "fewer than 3 traced '$mark' in $out/trace.txt" >&2
    exit 1
fi
sed -n "${at[0]},$((at[1] - 1))p" "$out/cpu0.txt" |
    sed -E 's/^\(0\)\.\[[0-9]+\] \[0x0*([0-9a-f]+)\] (\S+) \(unk. ctxt\): /\1 \2 /' \
        > "$out/round-trip.txt"
python3 "$root/scripts/bench/$phases" "$out/syms.txt" "$out/round-trip.txt"
