#!/usr/bin/env python3
"""Splits one traced OUT round trip through the HAXM RUN path (scripts/bench/trace-round-trip.sh
haxm-out) into phases by function; prints a Markdown table (docs/bench/profile.md, "OUT through
HAXM RUN").

Usage: phases-haxm.py SYMS ROUND_TRIP [SYMS2 ROUND_TRIP2 ...]: one column per pair (before,
after). ROUND_TRIP lines: `address selector:offset instruction`. The direction (exit side:
guest exit to the user side; entry side: user side to the guest) switches at the harness; the
dispatcher's lookup is told from the transport by the RDTSCs the transport puts around
`Hypervisor::dispatch` (hv.rs DISPATCH_TSC): without them (older builds) the two are one row."""
import bisect, sys

PHASES = [
    ('guest', 'guest (out, dec, jnz)'),
    ('core-exit', 'rhax-core: exit stub (and, before `Vcpu::enter` was inlined into the guest loop, Vcpu::run after the exit)'),
    ('hax-exit', 'HAXM vCPU: (since the inlining, `Vcpu::enter` after the exit and the lazy decode), IO exit (skip, IO buffer), tunnel, ready-for-injection'),
    ('leave', 'HAXM vCPU leave: Vcpu::put (guest MSRs, FPU back), apic_base'),
    ('disp-exit', 'dispatcher RUN handler, return: lend end, lease, memory and CPUID references dropped'),
    ('lookup', 'dispatcher: handle resolution, IOCTL row, sizes (both ways)'),
    ('transport', 'in-kernel transport (KernelTransport::ioctl, DISPATCH_TSC)'),
    ('transport+lookup', 'in-kernel transport + dispatcher lookup (inlined, one row)'),
    ('userlib', 'userlib: Vcpu::run, IOCTL call, exit decoding'),
    ('harness', 'harness: BenchLoop handler, bench loop, interrupt-window flag'),
    ('disp-entry', 'dispatcher RUN handler, call: CPUID and memory references, lease, CPU lend'),
    ('hax-entry', 'HAXM vCPU: RUN start, pause handshake, prepare_entry (and, since the inlining, `Vcpu::enter` before the entry: ensure_current, guest MSRs, flush)'),
    ('core-entry', 'rhax-core: entry stub (and, before the inlining, Vcpu::run before the entry)'),
]


def load_syms(path):
    syms = [(int(l.split(' ', 2)[0], 16), l.split(' ', 2)[2].strip()) for l in open(path)]
    return [a for a, _ in syms], syms


def phases(symf, rtf):
    addrs, syms = load_syms(symf)
    has_marks = False
    rows = []
    for l in open(rtf):
        a, ctx, ins = l.rstrip('\n').split(' ', 2)
        a = int(a, 16)
        f = 'GUEST' if not ctx.startswith('0008:') else syms[bisect.bisect_right(addrs, a) - 1][1]
        rows.append((f, ins))
        if 'KernelTransport' in f and ins.startswith('rdtsc'):
            has_marks = True
    out = {}
    side = 'exit'
    in_dispatch = True  # the trace starts in the guest, inside a RUN IOCTL
    prev = 'hax-exit'
    for f, ins in rows:
        if f in ('memcpy', 'memset', 'memmove', 'memcmp') or f.startswith('alloc::') \
                or f.startswith('__rust') or f.startswith('core::'):
            # Helpers count with their caller's phase.
            p = prev
        elif f == 'GUEST':
            p = 'guest'
        elif 'rhax_metal::haxm' in f or 'rhax_metal::arch' in f:
            side = 'entry'
            p = 'harness'
        elif f.startswith('rhax::') or '<rhax::' in f or 'IoctlDef::code' in f or 'rhax_api::' in f:
            p = 'userlib'
        elif 'KernelTransport' in f:
            if not has_marks:
                p = 'transport+lookup'
            else:
                if ins.startswith('rdtsc'):
                    in_dispatch = not in_dispatch
                    p = 'transport'
                else:
                    p = 'lookup' if in_dispatch else 'transport'
        elif 'dispatch::table' in f or 'drop_in_place<rhax_core::dispatch::objects::Target>' in f:
            p = 'lookup' if has_marks else 'transport+lookup'
        elif 'rhax_core::dispatch' in f or 'drop_in_place<rhax_core::dispatch' in f or 'TryArc' in f \
                or 'note_running' in f or 'MetalRoots' in f or 'rhax_metal::hv' in f:
            p = 'disp-' + side
        elif 'Vcpu::put' in f or 'fxsave' in f or 'fxrstor' in f or 'publish_apic_base' in f \
                or 'restore_host_breakpoints' in f:
            p = 'leave'
        elif 'rhax_vmx_exit' in f or 'rhax_vmx_enter' in f or 'vmenter' in f \
                or 'rhax_core::vcpu::Vcpu::run' in f:
            p = 'core-' + side
        else:
            # The HAXM vCPU and what it calls (skip_instruction, memcpy, VMX wrappers).
            p = 'hax-' + side
        prev = p
        out[p] = out.get(p, 0) + 1
    return out


def main():
    args = sys.argv[1:]
    cols = [phases(args[i], args[i + 1]) for i in range(0, len(args), 2)]
    # A column without the transport's RDTSC marks has the two as one row: fold them in all.
    if any('transport+lookup' in c for c in cols):
        for c in cols:
            c['transport+lookup'] = c.get('transport+lookup', 0) + c.pop('transport', 0) \
                + c.pop('lookup', 0)
    names = ['before', 'after'] if len(cols) == 2 else ['instructions'] * len(cols)
    print('| phase | ' + ' | '.join(names) + (' | change |' if len(cols) == 2 else ' |'))
    print('|---|' + '---|' * (len(cols) + (1 if len(cols) == 2 else 0)))
    for key, label in PHASES:
        vals = [c.get(key, 0) for c in cols]
        if not any(vals):
            continue
        line = f'| {label} | ' + ' | '.join(str(v) for v in vals)
        if len(cols) == 2:
            line += f' | {vals[1] - vals[0]:+d}'
        print(line + ' |')
    tots = [sum(c.values()) for c in cols]
    line = '| **total, OUT to OUT** | ' + ' | '.join(f'**{t}**' for t in tots)
    if len(cols) == 2:
        line += f' | **{tots[1] - tots[0]:+d}**'
    print(line + ' |')


main()
