//! The `dispatch` harness: a [`Hypervisor`] over a pinning heap platform and the software
//! VMX, driven by a sequence of IOCTLs decoded from the fuzz input ([`Input`]), with a
//! scripted guest CPU ([`GuestExit`]) that produces every VM-exit kind on RUN.
//!
//! The operations are biased to succeed (existing handles, valid sizes, addresses from a small
//! pool of page-aligned offsets into one real buffer that stands for the user's RAM) so that
//! sequences reach deep states: mapped and protected RAM, vCPUs with hostile registers, MSRs,
//! CPUID tables, pending IN/MMIO completions, queued interrupts. A `Raw` operation sends
//! arbitrary codes and buffers to any handle for the shallow checks.
//!
//! Oracles (a broken one panics, libFuzzer reports a crash):
//! 1. nothing panics (rhax-core is built with debug assertions and overflow checks);
//! 2. a refused request changes nothing: `Hypervisor::snapshot()` before and after every
//!    failed request other than RUN is equal, and a refused SET_REGS leaves GET_REGS equal;
//! 3. a successful RUN leaves QEMU something it can use ([`check_exit`]); RUN never enters
//!    the guest again after an external interrupt; every translation the kernel copies through
//!    lies in pinned memory; SETUP_TUNNEL answers the same pages; MSR batches report
//!    `done <= nr_msr`;
//! 4. after every handle is closed, every page the hypervisor allocated is back
//!    (`HeapPlatform::live_pages` at its value when the input started), every pin is released
//!    and no VM is left in the snapshot.

mod guest;
mod input;
mod ops;
mod platform;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::{
    Platform as Codes, Pod, RamblockInfo, SetMemlimit, SetRamInfo, TunnelInfo, VcpuState,
};
use rhax_core::dispatch::{DispatchError, Handle, Hypervisor, SoftCpuRoots};
use rhax_core::platform::HeapPlatform;
use rhax_core::vmcs::VmcsField;
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::soft::{GuestCpu, SoftVmx};

use guest::play;
pub use guest::{ExitKind, GuestExit, Insn};
pub use platform::FuzzPlatform;
use platform::{fixture, pool, vmxon_page, GPAS, MODELS, OFFSETS, POOL_RESET, POOL_SIZE, SIZES};

/// What a successful RUN left for user space must make sense to QEMU (haxm-abi.md §4): a
/// known exit status, an IO exit that fits the IO buffer (and the 64-byte string chunk), a
/// FAST_MMIO access of 1, 2, 4 or 8 bytes, a page-aligned PAGEFAULT address.
fn check_exit(tunnel: u64, io: u64) {
    // SAFETY: the tunnel page of an open vCPU (56 bytes of `hax_tunnel`), read after RUN
    // returned (nothing else writes it).
    let t = rhax_api::Tunnel::read_from_prefix(unsafe {
        std::slice::from_raw_parts(tunnel as *const u8, rhax_api::Tunnel::SIZE)
    })
    .expect("tunnel size");
    let status = t.status();
    assert!(
        status.is_ok(),
        "RUN left an unknown exit status {}",
        t.exit_status
    );
    match status {
        Ok(rhax_api::ExitStatus::Io) => {
            let x = *t.io();
            assert!(x.direction <= 1, "IO direction {}", x.direction);
            // 1, 2 or 4 from a real CPU; the scripted one may also report the sizes the SDM
            // leaves unused (qualification bits 2:0 = 2, 4-7), which rhax passes on.
            assert!((1..=8).contains(&x.size), "IO size {}", x.size);
            assert!(x.count >= 1, "IO count 0");
            let bytes = usize::from(x.count) * usize::from(x.size);
            if x.flags & rhax_api::tunnel::HAX_IO_FLAG_STRING != 0 {
                assert!(bytes <= 64, "string IO of {bytes} bytes in one exit");
            } else {
                assert_eq!(x.count, 1, "plain IO with count {}", x.count);
            }
        }
        Ok(rhax_api::ExitStatus::FastMmio) => {
            // SAFETY: the IO buffer page of the same vCPU (4 KiB).
            let m = rhax_api::FastMmio::read_from_prefix(unsafe {
                std::slice::from_raw_parts(io as *const u8, rhax_api::FastMmio::SIZE)
            })
            .expect("buffer size");
            assert!(matches!(m.size, 1 | 2 | 4 | 8), "FAST_MMIO size {}", m.size);
            assert!(m.direction <= 1, "FAST_MMIO direction {}", m.direction);
        }
        Ok(rhax_api::ExitStatus::PageFault) => {
            let gpa = t.pagefault().gpa;
            assert_eq!(gpa % 4096, 0, "PAGEFAULT gpa {gpa:#x} not a page");
        }
        _ => {}
    }
}

/// The hypervisor under test.
pub type Hv = Hypervisor<FuzzPlatform, SoftCpuRoots>;

thread_local! {
    static TALLY: RefCell<Option<std::collections::BTreeMap<String, u64>>> =
        const { RefCell::new(None) };
}

/// Counts request outcomes while [`tally_start`] is in effect (for `examples/tally.rs`: which
/// requests succeed, which exit statuses RUN reaches). Free otherwise.
fn tally(what: impl FnOnce() -> String) {
    TALLY.with(|t| {
        if let Some(m) = t.borrow_mut().as_mut() {
            *m.entry(what()).or_default() += 1;
        }
    });
}

/// Starts counting request outcomes on this thread.
pub fn tally_start() {
    TALLY.with(|t| *t.borrow_mut() = Some(Default::default()));
}

/// The counts so far.
pub fn tally_take() -> std::collections::BTreeMap<String, u64> {
    TALLY.with(|t| t.borrow_mut().take().unwrap_or_default())
}

pub use input::{Input, Op, RawCpuid};

// ------------------------------------------------------------------------ state

struct VcpuRef {
    handle: Handle,
    /// Tunnel and IO buffer kernel addresses once SETUP_TUNNEL answered (valid while the
    /// handle is open: the vCPU lives at least as long).
    tunnel: Option<(u64, u64)>,
}

struct World {
    h: Rc<Hv>,
    systems: Vec<Handle>,
    vms: Vec<(Handle, u32)>,
    vcpus: Vec<VcpuRef>,
    /// Closed handles, to be sent requests again (they must be refused).
    stale: Vec<Handle>,
    /// Guest exits the CPU hook plays, shared with it.
    script: Rc<RefCell<VecDeque<GuestExit>>>,
    /// Entries past the script (the hook then answers with an external interrupt).
    extra: Rc<Cell<u32>>,
}

fn pick<T>(v: &[T], i: u8) -> Option<&T> {
    if v.is_empty() {
        None
    } else {
        v.get(usize::from(i) % v.len())
    }
}

impl World {
    fn code(&self, def: &IoctlDef) -> u32 {
        def.code(self.h.codes()).unwrap_or(0xdead_0000)
    }

    /// One request, with the "refusal changes nothing" oracle.
    fn call(
        &self,
        handle: Handle,
        def: &IoctlDef,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DispatchError> {
        let code = self.code(def);
        self.call_code(handle, code, input, out)
    }

    fn call_code(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, DispatchError> {
        let run = Some(code) == ioctl::HAX_VCPU_IOCTL_RUN.code(self.h.codes());
        if run {
            let r = self.h.dispatch(handle, code, input, out);
            tally(|| {
                let status = self
                    .vcpus
                    .iter()
                    .find(|v| v.handle == handle)
                    .and_then(|v| v.tunnel)
                    // SAFETY: the tunnel of an open vCPU handle; offset 8 is `_exit_status`.
                    .map(|(t, _)| unsafe { (t as *const u32).add(2).read_volatile() });
                match &r {
                    Ok(_) => format!("RUN ok status {status:?}"),
                    Err(e) => format!("RUN err {:?}", e.kind),
                }
            });
            return r;
        }
        let before = self.h.snapshot();
        let r = self.h.dispatch(handle, code, input, out);
        tally(|| match &r {
            Ok(_) => format!("{code:#x} ok"),
            Err(e) => format!("{code:#x} err {:?}", e.kind),
        });
        if let Err(e) = &r {
            let after = self.h.snapshot();
            assert_eq!(
                before, after,
                "a refused request changed the hypervisor: code {code:#x}: {e}"
            );
        }
        if let Ok(n) = r {
            assert!(
                n <= out.len(),
                "reported {n} bytes written into {}",
                out.len()
            );
        }
        r
    }

    fn vm(&self, i: u8) -> Option<(Handle, u32)> {
        pick(&self.vms, i).copied()
    }

    fn vcpu(&self, i: u8) -> Option<Handle> {
        pick(&self.vcpus, i).map(|v| v.handle)
    }

    fn sized<T: Pod>(&self, v: &T) -> Vec<u8> {
        v.as_bytes().to_vec()
    }

    fn pool_addr(off: u8) -> u64 {
        pool() as u64 + OFFSETS[usize::from(off) % OFFSETS.len()]
    }

    fn size(s: u8) -> u64 {
        SIZES[usize::from(s) % SIZES.len()]
    }

    fn gpa(g: u8) -> u64 {
        GPAS[usize::from(g) % GPAS.len()]
    }

    fn open_system(&mut self) {
        let s = self.h.open_system();
        self.systems.push(s);
    }

    fn create_vm(&mut self, sys: u8) -> Option<u32> {
        let s = *pick(&self.systems, sys)?;
        let mut id = [0u8; 4];
        self.call(s, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id)
            .ok()?;
        Some(u32::from_le_bytes(id))
    }

    fn open_vm(&mut self, id: u32) {
        if let Ok(h) = self.h.open_vm(id) {
            self.vms.push((h, id));
        }
    }

    fn create_vcpu(&mut self, vm: u8, id: u8) {
        let Some((h, _)) = self.vm(vm) else { return };
        // Mostly ids 0..4; sometimes anything (16+ must be refused).
        let id = if id & 0x80 != 0 {
            u32::from(id)
        } else {
            u32::from(id & 3)
        };
        let _ = self.call(
            h,
            &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
            &id.to_le_bytes(),
            &mut [],
        );
    }

    fn open_vcpu(&mut self, vm: u8, id: u8) {
        // A VM id from the open handles, or from the snapshot (a VM whose handle is closed).
        let vm_id = match self.vm(vm) {
            Some((_, id)) if vm & 0x80 == 0 => id,
            _ => u32::from(vm & 3),
        };
        if let Ok(handle) = self.h.open_vcpu(vm_id, u32::from(id & 3)) {
            self.vcpus.push(VcpuRef {
                handle,
                tunnel: None,
            });
        }
    }

    fn setup_tunnel(&mut self, i: u8) {
        let Some(h) = self.vcpu(i) else { return };
        let mut out = [0u8; TunnelInfo::SIZE];
        if self
            .call(h, &ioctl::HAX_VCPU_IOCTL_SETUP_TUNNEL, &[], &mut out)
            .is_ok()
        {
            let ti = TunnelInfo::from_bytes(&out).expect("size");
            let idx = usize::from(i) % self.vcpus.len();
            if let Some(prev) = self.vcpus[idx].tunnel {
                assert_eq!(
                    prev,
                    (ti.va, ti.io_va),
                    "SETUP_TUNNEL answers the same pages"
                );
            }
            self.vcpus[idx].tunnel = Some((ti.va, ti.io_va));
        }
    }

    fn close(&mut self, i: u8) {
        let total = self.systems.len() + self.vms.len() + self.vcpus.len() + self.stale.len();
        if total == 0 {
            return;
        }
        let mut k = usize::from(i) % total;
        let handle = if k < self.systems.len() {
            self.systems.remove(k)
        } else {
            k -= self.systems.len();
            if k < self.vms.len() {
                self.vms.remove(k).0
            } else {
                k -= self.vms.len();
                if k < self.vcpus.len() {
                    self.vcpus.remove(k).handle
                } else {
                    // A second close of a closed handle: refused, nothing changes.
                    k -= self.vcpus.len();
                    let h = self.stale[k];
                    let before = self.h.snapshot();
                    assert!(self.h.close(h).is_err(), "a closed handle closed twice");
                    assert_eq!(before, self.h.snapshot(), "a refused close changed state");
                    return;
                }
            }
        };
        self.h.close(handle).expect("closing an open handle");
        self.stale.push(handle);
    }

    fn tunnel(&self, i: u8) -> Option<(u64, u64)> {
        pick(&self.vcpus, i).and_then(|v| v.tunnel)
    }

    fn get_regs(&self, h: Handle) -> Option<VcpuState> {
        let mut out = [0u8; VcpuState::SIZE];
        self.call(h, &ioctl::HAX_VCPU_GET_REGS, &[], &mut out)
            .ok()?;
        VcpuState::from_bytes(&out)
    }

    fn set_regs(&self, h: Handle, preset: u8, changes: &[(u8, u64)]) {
        let Some(mut s) = self.get_regs(h) else {
            return;
        };
        match preset % 5 {
            // Real mode, flat: what the scripted MMIO fetches assume.
            1 => {
                s.cr0 = 0x10;
                s.cr4 = 0;
                s.rflags = 2;
                s.cs.selector = 0;
                s.cs.base = 0;
                s.cs.limit = 0xffff;
                s.cs.ar = 0x9b;
            }
            // 32-bit protected, flat.
            2 => {
                s.cr0 = 0x11;
                s.rflags = 2;
                s.cs.base = 0;
                s.cs.limit = 0xffff_ffff;
                s.cs.ar = 0xc09b;
            }
            // 64-bit: paging, PAE, CS.L (EFER comes through SET_MSRS).
            3 => {
                s.cr0 = 0x8000_0011;
                s.cr4 = 0x20;
                s.cr3 = 0x1000;
                s.rflags = 2;
                s.cs.ar = 0xa09b;
            }
            4 => s.rflags = 0x202,
            _ => {}
        }
        // Hostile changes: any 8 bytes of the state.
        let mut bytes = s.as_bytes().to_vec();
        for (at, v) in changes.iter().take(8) {
            let off = (usize::from(*at) * 8) % VcpuState::SIZE;
            bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        let before = self.get_regs(h);
        if self
            .call(h, &ioctl::HAX_VCPU_SET_REGS, &bytes, &mut [])
            .is_err()
        {
            assert_eq!(
                before.map(|s| s.as_bytes().to_vec()),
                self.get_regs(h).map(|s| s.as_bytes().to_vec()),
                "a refused SET_REGS changed the registers"
            );
        }
    }

    fn run(&self, i: u8, script: &[GuestExit]) {
        let Some(h) = self.vcpu(i) else { return };
        {
            let mut s = self.script.borrow_mut();
            s.clear();
            s.extend(script.iter().take(24).cloned());
        }
        self.extra.set(0);
        let r = self.call(h, &ioctl::HAX_VCPU_IOCTL_RUN, &[], &mut []);
        self.script.borrow_mut().clear();
        if r.is_ok() {
            if let Some((tunnel, io)) = pick(&self.vcpus, i).and_then(|v| v.tunnel) {
                check_exit(tunnel, io);
            }
        }
    }

    /// QEMU's opening: system handle, VM 0 opened, a RAM block over the pool, the first
    /// 1 MiB of guest RAM from the pool, vCPU 0 opened with its tunnel.
    fn prologue(&mut self) {
        self.open_system();
        let Some(id) = self.create_vm(0) else { return };
        self.open_vm(id);
        let Some((vm, _)) = self.vms.last().copied() else {
            return;
        };
        let b = RamblockInfo {
            start_va: pool() as u64,
            size: POOL_SIZE as u64,
            reserved: 0,
        };
        let _ = self.call(vm, &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK, b.as_bytes(), &mut []);
        let r = SetRamInfo {
            pa_start: 0,
            size: 0x10_0000,
            flags: 0,
            pad: [0; 3],
            va: pool() as u64,
        };
        let _ = self.call(vm, &ioctl::HAX_VM_IOCTL_SET_RAM, r.as_bytes(), &mut []);
        let _ = self.call(
            vm,
            &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
            &0u32.to_le_bytes(),
            &mut [],
        );
        let n = self.vms.len() as u8 - 1;
        self.open_vcpu(n, 0);
        if !self.vcpus.is_empty() {
            self.setup_tunnel(self.vcpus.len() as u8 - 1);
        }
    }
}

// ------------------------------------------------------------------------ the target

fn model(input: &Input) -> usize {
    if input.model >= 0xf0 {
        usize::from(input.model) % MODELS.len()
    } else {
        usize::from(input.model) % 3
    }
}

/// A model CPU in VMX root operation, as it is after VMXON.
fn fresh_root(m: usize) -> VmxRoot<SoftVmx> {
    let vmx = SoftVmx::new(fixture().models[m].0.iter().copied());
    // SAFETY: software model, one thread.
    match unsafe { VmxRoot::enable(vmx, 0, vmxon_page()) } {
        Ok(r) => r,
        Err(e) => panic!("VMXON on the model: {:?}", e.0),
    }
}

fn hypervisor(m: usize, windows: bool) -> Hv {
    let f = fixture();
    let platform = FuzzPlatform {
        heap: HeapPlatform::new(),
        pins: Cell::new(0),
        allocs: Cell::new(0),
        fail_alloc_at: Cell::new(None),
        pin_calls: Cell::new(0),
        fail_pin_at: Cell::new(None),
        tsc_frequency: Cell::new(1_000_000_000),
    };
    let codes = if windows {
        Codes::Windows
    } else {
        Codes::Linux
    };
    Hypervisor::new(
        platform,
        SoftCpuRoots::new(fresh_root(m)),
        codes,
        f.models[m].1,
    )
    .with_cpuid(f.cpuid.clone())
}

thread_local! {
    /// One hypervisor per (CPU model, codes), reused by every input: `Hypervisor::new` builds
    /// the host CPUID table with the CPUID instruction (about 65% of an input's time under a
    /// hypervisor) even when `with_cpuid` replaces it. Reuse is sound because every input
    /// ends with every handle closed and the oracles check that this leaves nothing behind;
    /// the model CPU is replaced by a fresh one at each input's start and the memory limit
    /// reset at its end, so an input's outcome does not depend on the ones before.
    static HYPERVISORS: RefCell<std::collections::HashMap<(usize, bool), Rc<Hv>>> =
        RefCell::new(std::collections::HashMap::new());
}

fn reused(input: &Input) -> Rc<Hv> {
    let key = (model(input), input.windows);
    let h = HYPERVISORS.with(|m| {
        m.borrow_mut()
            .entry(key)
            .or_insert_with(|| Rc::new(hypervisor(key.0, key.1)))
            .clone()
    });
    h.roots().with_soft(|root| *root = fresh_root(key.0));
    let p = h.platform();
    p.allocs.set(0);
    p.pin_calls.set(0);
    p.tsc_frequency.set(if input.short_budget {
        20_000
    } else {
        1_000_000_000
    });
    h
}

/// Runs one input with every oracle.
pub fn run(input: &Input) {
    // SAFETY: the pool is this process's; the first part is reset so MMIO fetches see the
    // input's bytes only.
    unsafe { std::ptr::write_bytes(pool(), 0, POOL_RESET) };
    let h = reused(input);
    let baseline = h.platform().heap.live_pages.load(Ordering::Relaxed);
    h.platform()
        .fail_alloc_at
        .set(input.fail_alloc_at.map(|n| u32::from(n) + 1));
    h.platform()
        .fail_pin_at
        .set(input.fail_pin_at.map(u32::from));
    let script: Rc<RefCell<VecDeque<GuestExit>>> = Rc::default();
    let extra = Rc::new(Cell::new(0u32));
    {
        let script = script.clone();
        let extra = extra.clone();
        h.roots().with_soft(|root| {
            root.vmx().set_hook(move |c: &mut GuestCpu<'_>| {
                let next = script.borrow_mut().pop_front();
                match next {
                    Some(e) => play(c, &e),
                    None => {
                        // Past the script: an external interrupt always returns to the
                        // caller (no in-kernel loop can keep the RUN going).
                        extra.set(extra.get() + 1);
                        c.write(VmcsField::IdtVectoringInformation, 0);
                        c.exit(1, 0, 0);
                    }
                }
            })
        });
    }
    let mut w = World {
        h,
        systems: Vec::new(),
        vms: Vec::new(),
        vcpus: Vec::new(),
        stale: Vec::new(),
        script,
        extra,
    };
    if input.prologue {
        w.prologue();
    }
    for op in input.ops.iter().take(64) {
        w.op(op);
        assert!(
            w.extra.get() <= 1,
            "RUN entered the guest again after an external interrupt"
        );
    }
    // Close everything: vCPUs, then VMs, then system handles (and once more in the reverse
    // order's worth: a VM handle closed before its vCPUs lives on for them).
    let vcpus: Vec<Handle> = w.vcpus.drain(..).map(|v| v.handle).collect();
    for v in vcpus {
        w.h.close(v).expect("close vCPU");
    }
    let vms: Vec<Handle> = w.vms.drain(..).map(|v| v.0).collect();
    for v in vms {
        w.h.close(v).expect("close VM");
    }
    let systems: Vec<Handle> = w.systems.drain(..).collect();
    for s in systems {
        w.h.close(s).expect("close system");
    }
    let snap = w.h.snapshot();
    // A VM created by CREATE_VM on a system handle and opened, whose vCPU was created but
    // never opened, is destroyed with the VM handle; everything must be gone.
    assert!(
        snap.vms.is_empty(),
        "objects left after every handle closed: {snap:?}"
    );
    assert_eq!(snap.system_handles, 0);
    let live = w.h.platform().heap.live_pages.load(Ordering::Relaxed);
    assert_eq!(live, baseline, "pages leaked after every handle closed");
    assert_eq!(
        w.h.platform().pins.get(),
        0,
        "pins leaked after every handle closed"
    );
    // Back to the default memory quota for the next input (SET_MEMLIMIT needs no VM).
    if snap.mem_limit != Some(rhax_core::dispatch::DEFAULT_MEM_QUOTA) {
        let sys = w.h.open_system();
        let m = SetMemlimit {
            enable_memlimit: 1,
            pad: [0; 7],
            memory_limit: rhax_core::dispatch::DEFAULT_MEM_QUOTA >> 20,
        };
        let code = w.code(&ioctl::HAX_IOCTL_SET_MEMLIMIT);
        w.h.dispatch(sys, code, m.as_bytes(), &mut [])
            .expect("restoring the memory limit");
        w.h.close(sys).expect("close system");
    }
}
