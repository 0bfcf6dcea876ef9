#!/usr/bin/env python3
"""Splits one traced round trip (scripts/bench/trace-round-trip.sh) into phases by function
and by marker instructions inside Vcpu::run; prints a Markdown table (docs/bench/profile.md)."""
import re,sys,bisect
symf,rtf=sys.argv[1],sys.argv[2]
syms=[(int(l.split(' ',2)[0],16),l.split(' ',2)[2].strip()) for l in open(symf)]
addrs=[a for a,_ in syms]
def fn(a):
    if a>=0x200000: return 'GUEST'
    return syms[bisect.bisect_right(addrs,a)-1][1]
rows=[l.rstrip() for l in open(rtf)]
# phase state machine
ph={}
order=[]
def add(p):
    if p not in ph: ph[p]=0; order.append(p)
    ph[p]+=1
state=None
seen_run_exit=False
for l in rows:
    a=int(l.split()[0],16); f=fn(a); ins=l.split(' ',2)[2]  # address, selector:offset, instruction
    if f=='GUEST': add('guest (xor, cpuid, dec, jnz)'); continue
    if 'rhax_vmx_exit' in f: add('exit stub: save guest GPRs, restore host'); continue
    if 'rhax_vmx_enter' in f: add('entry stub: HOST_RSP check, load guest GPRs, VMRESUME'); continue
    if 'HwVmx' in f and 'vmenter' in f: add('HwVmx::vmenter wrapper (call, result)'); continue
    # Since the floor work (issue 13) Vcpu::enter, the flush and skip_instruction are inlined
    # into the run loop: docs/bench/profile.md splits it by hand from the listing below.
    if 'run_exit_loop' in f: add('run loop: Vcpu::enter (inlined), handler, skip, flush'); continue
    if 'skip_instruction' in f: add('skip_instruction: 2 VMREADs (cached), RIP update'); continue
    if 'Vcpu::run' in f or 'load_guest_msrs' in f:
        if ins.startswith('push rbp') and state!='entry': state='N1'
        if state is None: state='E1'
        if state=='E1' and '0x00004402' in ins: state='E2'
        if state=='E2' and ins.startswith('jmp qword ptr ds:[rax*8'): state='E3'
        if state=='N1' and re.search(r'mov r\w+, qword ptr ds:\[r\d+(\+r\w+\*8)?\+1472\]',ins): state='N2'
        if state=='N2' and re.search(r'rdtsc|cmp eax, 0x00000001',ins) : state='N3'
        names={'E1':'run, after exit: XCR0/CR2, exit TSC, cache invalidation',
               'E2':'run: exit-reason VMREAD, launched, counters begin_exit',
               'E3':'run: decode_reason, build and return VmExit',
               'N1':'run, before entry: ensure_current, host thread state, interrupt shadow',
               'N2':'run: VMCS cache flush (dirty bitmap, 1 VMWRITE)',
               'N3':'run: host-cycle count, CR2, call the stub'}
        add(names[state]); continue
    add('other: '+f)
tot=sum(ph.values())
print(f"| phase | instructions |\n|---|---|")
for p in order: print(f"| {p} | {ph[p]} |")
print(f"| **total (CPUID to CPUID; round trip = total - 3)** | **{tot}** |")
# The listing the by-hand split in docs/bench/profile.md is made from.
with open(rtf + '.listing', 'w') as out:
    for l in rows:
        a = int(l.split()[0], 16)
        out.write(f"{fn(a)[:48]:48} {l.split(' ', 1)[1].split(';')[0].strip()}\n")
