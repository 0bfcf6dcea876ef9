#!/usr/bin/env python3
"""docs/bench/apic.md's results table from two `bench-apic` logs (sandy_bridge, skylake_x):
`cargo xtask metal --model M --cpus 2 bench-apic > LOG`. The "vs user space" column is the
user-space row's inst/op over this row's (see apic.md, Method)."""
import re, sys

def rows(path):
    out = {}
    for line in open(path):
        m = re.search(r'bench-apic: op=(\S+) variant=(\S+) iters=\d+ .*?inst/op=([0-9.]+) exits/1000=([0-9.]+)', line)
        if m:
            out[(m[1], m[2])] = (float(m[3]), float(m[4]))
    return out

def baseline(op):
    # CR8 rows: against the user-space xAPIC TPR write; x2APIC self-IPIs: against the xAPIC
    # self-IPI through user space (a HAXM guest cannot reach the x2APIC); TSC-deadline rows:
    # against the same timer through user space by MMIO.
    return {
        'cr8-write': 'xapic-tpr-write',
        'x2apic-self-ipi-msr+eoi': 'xapic-self-ipi+eoi',
        'x2apic-icr-self+eoi': 'xapic-self-ipi+eoi',
    }.get(op, op)

def ratio(r, op, variant, inst, exits):
    if variant == 'user-space' or variant == 'haxm-no-apic' or op in ('calibrate', 'tsc-deadline-spin'):
        return ''
    if exits == 0:
        return 'no exit'
    u = r.get((baseline(op), 'user-space'))
    return f'{u[0] / inst:.1f}x' if u and inst > 0 else ''

sandy, sky = rows(sys.argv[1]), rows(sys.argv[2])
print('| operation | variant | sandy_bridge exits/1000 | sandy_bridge inst/op | vs user space '
      '| skylake_x exits/1000 | skylake_x inst/op | vs user space |')
print('|---|---|---:|---:|---:|---:|---:|---:|')
for key in sandy:
    op, variant = key
    if op == 'calibrate':
        continue
    cells = [op, variant]
    for r in (sandy, sky):
        inst, exits = r.get(key, (float('nan'), float('nan')))
        cells += [f'{exits:.0f}', f'{inst:.0f}', ratio(r, op, variant, inst, exits)]
    print('| ' + ' | '.join(cells) + ' |')
