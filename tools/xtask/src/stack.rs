//! `cargo xtask stack`: stack frames of the release kernel code, from its disassembly.
//!
//! A Windows kernel thread has 12 KiB (x86: 12 KiB, x64: 24 KiB of which the IOCTL path gets
//! whatever its callers left); a deep or wide frame on the IOCTL path is a bugcheck waiting for
//! the wrong caller. The budget here: no function frame over [`BUDGET`] bytes, and no
//! recursion among direct calls, except the documented [`ALLOWED`] functions, none of which
//! may be reachable from an IOCTL entry point ([`IOCTL_ENTRIES`]) unless it is a TODO entry.
//!
//! A frame is what the prologue reserves: the pushes before the body, every `sub rsp, N`, the
//! stack probes of large frames (inline `sub rsp, 0x1000` pages, the `mov r11, rsp; sub r11,
//! N` loop, or `mov eax, N; call __rust_probestack/__chkstk; sub rsp, rax`). Tail-called or
//! inlined callees are part of their caller's frame.

use std::collections::{BTreeMap, BTreeSet};

use crate::disasm::Function;

/// The largest frame allowed, in bytes.
pub const BUDGET: u64 = 2048;

/// Entry points of the IOCTL paths: every function reachable from these by direct calls is on
/// an IOCTL path (the dispatcher as every shell calls it, and the metal shell's transport).
pub const IOCTL_ENTRIES: &[&str] = &[
    "rhax_core::dispatch::Hypervisor<P,R>::dispatch",
    "rhax_core::dispatch::Hypervisor<P,R>::open_vm",
    "rhax_core::dispatch::Hypervisor<P,R>::open_vcpu",
    "rhax_core::dispatch::Hypervisor<P,R>::close",
    "<rhax_metal::hv::KernelTransport as rhax::transport::Transport>::ioctl",
];

/// `(function name prefix, why it may exceed the budget, TODO)`: a TODO entry is an IOCTL-path
/// frame someone is fixing (it is reported, not failed); the others are boot-only or test
/// harness code that no IOCTL reaches (checked).
pub const ALLOWED: &[(&str, &str, bool)] = &[
    (
        "rhax_metal::haxm",
        "test-kernel scenarios: the user-space side of the IOCTLs (QEMU's role), on a 64 KiB \
         kernel stack",
        false,
    ),
    (
        "rhax_metal::guests::",
        "test-kernel raw-core guest scenarios (boot-time tests, no IOCTL)",
        false,
    ),
    (
        "rhax_metal::bench_table::",
        "test-kernel benchmark scenarios (cargo xtask bench): QEMU's role above the IOCTLs, on \
         a 64 KiB kernel stack",
        false,
    ),
    (
        "rhax_metal::bench_apic::",
        "test-kernel APIC benchmark scenario (bench-apic): QEMU's role above the IOCTLs, on a \
         64 KiB kernel stack",
        false,
    ),
    (
        "rhax_metal::bench_apic_remote::",
        "test-kernel APIC benchmark scenario (bench-apic's IPIs between vCPUs): QEMU's role \
         above the IOCTLs, on a 64 KiB kernel stack",
        false,
    ),
    (
        "rhax_stat::",
        "rhax-stat's library: user-mode observer code (in the test kernel it plays rhax-stat's \
         part, above the IOCTL)",
        false,
    ),
    (
        "rhax_metal::vmm::",
        "test-kernel multiboot VMM (`cargo xtask metal vmm`): the user-space side of the \
         IOCTLs, on a 64 KiB kernel stack",
        false,
    ),
    (
        "rhax_metal::scenarios::",
        "test-kernel scenario runner (boot-time tests, no IOCTL)",
        false,
    ),
    (
        "rhax::",
        "userlib: user-mode code (in the test kernel it plays QEMU's part, above the IOCTL)",
        false,
    ),
    (
        "rhax_metal::hv::Shell::new",
        "test kernel's DriverEntry: VMXON on every CPU and Hypervisor::new, once per scenario",
        false,
    ),
    (
        "DriverEntry",
        "rhax.sys's load path: runs once, at PASSIVE_LEVEL on the I/O manager's system thread \
         (x64 kernel stacks are 24 KiB), and builds the Hypervisor; no IOCTL reaches it (its \
         whole depth is bounded: syscheck::LOAD_PATH_LIMIT)",
        false,
    ),
    (
        "rhax_sys::entry::",
        "rhax.sys's load and unload paths (DriverEntry, DriverUnload and their helpers, e.g. \
         building the Hypervisor by value once): no IOCTL reaches them",
        false,
    ),
    (
        "core::ptr::drop_in_place<rhax_metal::hv::Shell>",
        "test kernel's DriverUnload (drops the Hypervisor, VMXOFF on every CPU)",
        false,
    ),
];

/// A function's frame and what it calls directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The function's (demangled) name; several monomorphizations may share one.
    pub name: String,
    /// Bytes reserved by the prologue (not counting the return address).
    pub bytes: u64,
    /// Direct callees (calls and tail jumps to another function's start), as indexes into
    /// the frame list; empty for an unlinked object (its calls are unresolved relocations).
    pub callees: BTreeSet<usize>,
}

fn imm(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Bytes reserved by `f`'s prologue and the addresses it calls or tail-jumps to.
pub fn frame_bytes(f: &Function) -> (u64, Vec<u64>) {
    let mut bytes = 0;
    let mut pushes_done = false;
    let mut probe_loop_until_cmp = false;
    let mut last_imm_eax = None;
    let mut targets = Vec::new();
    for i in &f.insns {
        let ops = i.operands.as_str();
        match i.mnemonic.as_str() {
            // The saved registers: the first run of pushes (a shrink-wrapped prologue may come
            // after a few instructions of early-exit test).
            "push" if !pushes_done => bytes += 8,
            "sub" if ops.starts_with("rsp,") => {
                let v = &ops[4..];
                if let Some(n) = imm(v) {
                    // Inside a probe loop the page step repeats; `sub r11` counted it all.
                    if !(probe_loop_until_cmp && n == 0x1000) {
                        bytes += n;
                    }
                } else if v == "rax" || v == "eax" {
                    // `mov eax, N; call __chkstk; sub rsp, rax`.
                    bytes += last_imm_eax.take().unwrap_or(0);
                }
                pushes_done = true;
            }
            "sub" if ops.starts_with("r11,") => {
                if let Some(n) = imm(&ops[4..]) {
                    bytes += n;
                    probe_loop_until_cmp = true;
                }
            }
            "cmp" if ops == "rsp,r11" => probe_loop_until_cmp = false,
            "mov" if ops.starts_with("eax,") || ops.starts_with("rax,") => {
                last_imm_eax = imm(&ops[4..]);
            }
            m => {
                if m != "push" && bytes > 0 {
                    pushes_done = true;
                }
                if m == "call" || m == "jmp" {
                    let probe = i
                        .target_symbol()
                        .is_some_and(|t| t.contains("__rust_probestack") || t.contains("__chkstk"));
                    // A jump back to the function's own start is a loop, not a call.
                    let own_start = m == "jmp" && i.target_addr() == Some(f.addr);
                    if let (Some(t), false, false) = (i.target_addr(), probe, own_start) {
                        targets.push(t);
                    }
                }
            }
        }
    }
    (bytes, targets)
}

/// True for the stack-probe routines (`__rust_probestack` of compiler_builtins, `__chkstk`),
/// called by prologues of frames over a page.
pub fn is_probe_routine(name: &str) -> bool {
    name.ends_with("__rust_probestack") || name.ends_with("__chkstk")
}

/// Frames of every function, in `functions`' order; `linked`: resolve call targets (an
/// executable; an object's addresses are section-relative and its calls unresolved).
pub fn frames(functions: &[Function], linked: bool) -> Vec<Frame> {
    let by_addr: BTreeMap<u64, usize> = functions
        .iter()
        .enumerate()
        .map(|(i, f)| (f.addr, i))
        .collect();
    functions
        .iter()
        .map(|f| {
            let (mut bytes, targets) = frame_bytes(f);
            if is_probe_routine(&f.name) {
                // The probe routine walks down its caller's frame a page at a time and gives
                // it back (`add rsp, rax`) before returning: that frame is the caller's, which
                // counts it from `mov eax, N; call; sub rsp, rax`. Its own is its pushes.
                bytes = 8 * f.insns.iter().take_while(|i| i.mnemonic == "push").count() as u64;
            }
            let callees = if linked {
                targets
                    .iter()
                    .filter_map(|t| by_addr.get(t).copied())
                    .collect()
            } else {
                BTreeSet::new()
            };
            Frame {
                name: f.name.clone(),
                bytes,
                callees,
            }
        })
        .collect()
}

/// Functions on a call cycle (direct calls), one sorted `Vec` of indexes per cycle (Tarjan's
/// strongly connected components, iterative; a self-call is a cycle of one).
pub fn cycles(frames: &[Frame]) -> Vec<Vec<usize>> {
    struct Tarjan {
        index: Vec<usize>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        /// The depth-first path: a node and the callees it has yet to visit.
        work: Vec<(usize, Vec<usize>)>,
    }
    impl Tarjan {
        fn enter(&mut self, v: usize, frames: &[Frame]) {
            self.index[v] = self.next;
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            self.work
                .push((v, frames[v].callees.iter().copied().collect()));
        }
    }
    let n = frames.len();
    let mut t = Tarjan {
        index: vec![usize::MAX; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        work: Vec::new(),
    };
    let mut out = Vec::new();
    for root in 0..n {
        if t.index[root] != usize::MAX {
            continue;
        }
        t.enter(root, frames);
        while let Some((v, mut succ)) = t.work.pop() {
            if let Some(w) = succ.pop() {
                t.work.push((v, succ));
                if t.index[w] == usize::MAX {
                    t.enter(w, frames);
                } else if t.on_stack[w] {
                    t.low[v] = t.low[v].min(t.index[w]);
                }
                continue;
            }
            if let Some(&(parent, _)) = t.work.last() {
                t.low[parent] = t.low[parent].min(t.low[v]);
            }
            if t.low[v] == t.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 || frames[v].callees.contains(&v) {
                    comp.sort();
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// True when `name` is an entry point named by `root`: it starts with `root`, or, for a root
/// naming a module (ending in `::`, e.g. `rhax_sys::irp::`), it contains it (a method of a
/// type of the module, `<rhax_sys::irp::X as T>::f`, is an entry too).
pub fn is_root(name: &str, root: &str) -> bool {
    name.starts_with(root) || (root.ends_with("::") && name.contains(root))
}

/// Every function reachable by direct calls from those named by a root ([`is_root`]).
pub fn reachable(frames: &[Frame], roots: &[&str]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut work: Vec<usize> = (0..frames.len())
        .filter(|&i| roots.iter().any(|r| is_root(&frames[i].name, r)))
        .collect();
    while let Some(f) = work.pop() {
        if seen.insert(f) {
            work.extend(frames[f].callees.iter().filter(|c| !seen.contains(c)));
        }
    }
    seen
}

/// The deepest stack from `root` (frames plus 8 bytes of return address per call), with its
/// path; cycle edges are cut (cycles are reported separately).
pub fn deepest(frames: &[Frame], root: usize) -> (u64, Vec<usize>) {
    // (depth, deepest callee) once a node is finished.
    let mut memo: Vec<Option<(u64, Option<usize>)>> = vec![None; frames.len()];
    let mut on_path = vec![false; frames.len()];
    let mut work = vec![(root, false)];
    while let Some((v, done)) = work.pop() {
        if done {
            on_path[v] = false;
            let best = frames[v]
                .callees
                .iter()
                .filter_map(|&c| memo[c].map(|m| (c, m.0)))
                .max_by_key(|x| x.1);
            memo[v] = Some((
                frames[v].bytes + 8 + best.map_or(0, |b| b.1),
                best.map(|b| b.0),
            ));
            continue;
        }
        if memo[v].is_some() || on_path[v] {
            continue;
        }
        on_path[v] = true;
        work.push((v, true));
        for &c in &frames[v].callees {
            if memo[c].is_none() && !on_path[c] {
                work.push((c, false));
            }
        }
    }
    let total = memo[root].map_or(0, |m| m.0);
    let mut path = Vec::new();
    let mut at = Some(root);
    while let Some(v) = at {
        if path.contains(&v) {
            break;
        }
        path.push(v);
        at = memo[v].and_then(|m| m.1);
    }
    (total, path)
}

fn allowed(name: &str) -> Option<&'static (&'static str, &'static str, bool)> {
    ALLOWED.iter().find(|a| name.starts_with(a.0))
}

/// `(cycle member name prefix, why)`: recursion that no IOCTL path reaches is tolerated only
/// here.
pub const RECURSION_ALLOWED: &[(&str, &str)] = &[];

/// Checks one binary's frames against the budget; prints the 10 largest frames and (for a
/// linked binary) the deepest IOCTL paths. `linked`: call targets are resolved (not an rlib).
pub fn check(what: &str, functions: &[Function], linked: bool) -> crate::Result {
    check_from(what, functions, linked, IOCTL_ENTRIES)
}

/// [`check`] with the IOCTL entry points `entries` (roots, see [`is_root`]): the Windows
/// driver's are its IRP handlers as well as the dispatcher's.
pub fn check_from(
    what: &str,
    functions: &[Function],
    linked: bool,
    entries: &[&str],
) -> crate::Result {
    let frames = frames(functions, linked);
    let mut by_size: Vec<usize> = (0..frames.len()).collect();
    by_size.sort_by(|&a, &b| {
        frames[b]
            .bytes
            .cmp(&frames[a].bytes)
            .then(frames[a].name.cmp(&frames[b].name))
    });
    println!("stack: {what}: the 10 largest frames:");
    for &i in by_size.iter().take(10) {
        println!("stack:   {:>6} B  {}", frames[i].bytes, frames[i].name);
    }
    let ioctl = reachable(&frames, if linked { entries } else { &[] });
    let mut errors = Vec::new();
    let mut todo = Vec::new();
    for &i in &by_size {
        let (name, bytes) = (&frames[i].name, frames[i].bytes);
        if bytes <= BUDGET {
            break;
        }
        let on_ioctl = if ioctl.contains(&i) {
            ", on an IOCTL path"
        } else {
            ""
        };
        match allowed(name) {
            Some((_, _, true)) => todo.push(format!("{name} ({bytes} B{on_ioctl})")),
            Some(_) if ioctl.contains(&i) => errors.push(format!(
                "{name}: {bytes} B, allowlisted as not on an IOCTL path, but an IOCTL reaches it"
            )),
            Some(_) => {}
            None => errors.push(format!(
                "{name}: {bytes} B frame (budget {BUDGET} B){on_ioctl}"
            )),
        }
    }
    for c in cycles(&frames) {
        let names: Vec<&str> = c.iter().map(|&i| frames[i].name.as_str()).collect();
        let tolerated = c.iter().all(|&i| !ioctl.contains(&i))
            && names
                .iter()
                .all(|n| RECURSION_ALLOWED.iter().any(|a| n.starts_with(a.0)));
        if !tolerated {
            errors.push(format!("recursion: {}", names.join(" -> ")));
        }
    }
    for entry in entries.iter().filter(|_| linked) {
        for root in (0..frames.len()).filter(|&i| is_root(&frames[i].name, entry)) {
            let (total, path) = deepest(&frames, root);
            println!(
                "stack: {what}: deepest direct-call stack from {}: {total} B",
                frames[root].name
            );
            for &p in path.iter().take(12) {
                println!("stack:     {:>6} B  {}", frames[p].bytes, frames[p].name);
            }
        }
    }
    for t in &todo {
        println!("stack: {what}: TODO (allowlisted while being fixed): {t}");
    }
    if errors.is_empty() {
        println!(
            "stack: {what}: {} functions, none over {BUDGET} B outside the allowlist, no \
             recursion{}",
            frames.len(),
            if linked {
                ""
            } else {
                " (self-calls only: unlinked)"
            }
        );
        Ok(())
    } else {
        Err(format!(
            "{what}: stack budget exceeded:\n  {}",
            errors.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{cycles, deepest, frame_bytes, frames, reachable};
    use crate::disasm::parse;

    const LISTING: &str = "\
0000000000001000 <big>:
    1000:\tpush   rbp
    1001:\tpush   rbx
    1002:\tsub    rsp,0x1000
    1009:\tmov    QWORD PTR [rsp],0x0
    1011:\tsub    rsp,0x7c8
    1018:\tcall   2000 <loop_probe>
    101d:\tpush   rax
    101e:\tret
0000000000002000 <loop_probe>:
    2000:\tpush   rbx
    2001:\tmov    r11,rsp
    2004:\tsub    r11,0x5000
    200b:\tsub    rsp,0x1000
    2012:\tmov    QWORD PTR [rsp],0x0
    201a:\tcmp    rsp,r11
    201d:\tjne    200b <loop_probe+0xb>
    201f:\tsub    rsp,0x10
    2023:\tjmp    3000 <chkstk_user>
0000000000003000 <chkstk_user>:
    3000:\ttest   rdi,rdi
    3003:\tje     3020 <chkstk_user+0x20>
    3005:\tpush   rsi
    3006:\tmov    eax,0x2028
    300b:\tcall   4000 <__chkstk>
    3010:\tsub    rsp,rax
    3013:\tcall   3000 <chkstk_user>
    3018:\tcall   5000 <same>
    3020:\tret
0000000000005000 <same>:
    5000:\tcall   6000 <same>
0000000000006000 <same>:
    6000:\tcall   5000 <same>
0000000000007000 <same>:
    7000:\tret
0000000000008000 <__rustc::__rust_probestack>:
    8000:\tpush   rbp
    8001:\tmov    rbp,rsp
    8004:\tmov    r11,rax
    8007:\tsub    rsp,0x1000
    800e:\tsub    r11,0x1000
    8015:\tsub    rsp,r11
    8018:\tadd    rsp,rax
    801b:\tleave
    801c:\tret
";

    #[test]
    fn measures_frames_from_prologues() {
        let f = parse(LISTING);
        assert_eq!(frame_bytes(&f[0]).0, 16 + 0x1000 + 0x7c8);
        assert_eq!(frame_bytes(&f[1]).0, 8 + 0x5000 + 0x10);
        let (bytes, targets) = frame_bytes(&f[2]);
        assert_eq!(bytes, 8 + 0x2028);
        assert_eq!(targets, [0x3000, 0x5000], "__chkstk is not a callee");
        assert_eq!(frame_bytes(&f[1]).1, [0x3000]);
    }

    #[test]
    fn finds_recursion_reachability_and_depth() {
        let fr = frames(&parse(LISTING), true);
        // Two monomorphizations named `same` call each other; the third is not involved.
        let mut c = cycles(&fr);
        c.sort();
        assert_eq!(c, vec![vec![2], vec![3, 4]]);
        let r = reachable(&fr, &["loop_probe"]);
        // A module root also names the methods of its types.
        assert!(super::is_root("<m::irp::X as T>::f", "m::irp::"));
        assert!(!super::is_root("<m::irp::X as T>::f", "m::irp::X::f"));
        assert!(r.contains(&3) && r.contains(&2) && !r.contains(&0) && !r.contains(&5));
        let (total, path) = deepest(&fr, 0);
        // big → loop_probe → chkstk_user → same → same (the cycle edge back is cut).
        assert_eq!(total, (0x17d8 + 8) + (0x5018 + 8) + (0x2030 + 8) + 8 + 8);
        assert_eq!(path, [0, 1, 2, 3, 4]);
        // The probe routine's page walk is its caller's frame, not its own.
        assert_eq!(fr[6].bytes, 8);
        // Unlinked: no callees at all.
        assert!(frames(&parse(LISTING), false)
            .iter()
            .all(|f| f.callees.is_empty()));
    }
}
