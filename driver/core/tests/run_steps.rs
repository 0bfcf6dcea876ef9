//! RUN in steps through the dispatcher: every pin and every host-side copy of guest memory
//! happens outside the shell's non-preemptible region (`CpuRoots::with_current`). The
//! platform here really pins (a heap buffer stands for the user's RAM) and asserts, on every
//! pin and every page mapping for a copy, that the calling thread is not inside a lend.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use rhax_api::ioctl::{self, IoctlDef};
use rhax_api::{
    ExitStatus, FastMmio, Platform as Codes, Pod, RamblockInfo, SetRamInfo, TunnelInfo, VcpuState,
};
use rhax_core::dispatch::{
    CpuRoots, DispatchError, Handle, Hypervisor, PinHooks, PinningPlatform, RootUnavailable,
    SoftCpuRoots,
};
use rhax_core::platform::{CpuIndex, Platform};
use rhax_core::vmcs::VmcsField;
use rhax_core::vmx::instructions::reg;
use rhax_core::vmx::negotiate::negotiate;
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::soft::{msrs_from_tsv, GuestCpu, SoftVmx};

const TSV: &str = include_str!("data/bochs-vmx-msrs.tsv");

thread_local! {
    /// The thread is inside `CpuRoots::with_current` / `with_cpu`.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

fn assert_outside(what: &str) {
    assert!(
        !IN_REGION.with(Cell::get),
        "{what} inside the non-preemptible region"
    );
}

static COPIES: AtomicUsize = AtomicUsize::new(0);

/// Checks that every pin and every guest-page mapping for a copy happens outside the
/// region, and counts the copies.
struct Outside;

impl PinHooks for Outside {
    fn on_pin() {
        assert_outside("pin (probe-and-lock)");
    }
    fn on_guest_page() {
        assert_outside("a guest-memory copy");
        COPIES.fetch_add(1, Ordering::Relaxed);
    }
}

type Pinning = PinningPlatform<Outside>;

/// [`SoftCpuRoots`] that marks the thread as inside the region for the closures, and counts
/// the lends.
struct Marking {
    inner: SoftCpuRoots,
    lends: Cell<usize>,
}

fn marked<T>(f: impl FnOnce() -> T) -> T {
    IN_REGION.with(|c| c.set(true));
    let r = f();
    IN_REGION.with(|c| c.set(false));
    r
}

impl CpuRoots for Marking {
    type Vmx = SoftVmx;
    fn with_current<T>(
        &self,
        f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T,
    ) -> Result<T, RootUnavailable> {
        self.lends.set(self.lends.get() + 1);
        self.inner.with_current(|root| marked(|| f(root)))
    }
    fn with_cpu<T: Send>(
        &self,
        cpu: CpuIndex,
        f: impl FnOnce(&mut VmxRoot<SoftVmx>) -> T + Send,
    ) -> Result<T, RootUnavailable> {
        self.inner.with_cpu(cpu, |root| marked(|| f(root)))
    }
    fn invept_each_cpu(&self, eptp: u64, single_context: bool) {
        self.inner.invept_each_cpu(eptp, single_context)
    }
    fn vm_created(&self) -> Result<(), RootUnavailable> {
        self.inner.vm_created()
    }
    fn vm_destroyed(&self) {
        self.inner.vm_destroyed()
    }
}

type Hv = Hypervisor<Pinning, Marking>;

fn hv() -> Hv {
    let platform = Pinning::default();
    let vmx = SoftVmx::new(msrs_from_tsv(TSV, "corei7_skylake_x").expect("model"));
    let controls = negotiate(vmx.caps()).expect("negotiation");
    let page = platform.alloc_pages(1).expect("page");
    // SAFETY: software model, one thread.
    let root = match unsafe { VmxRoot::enable(vmx, 0, page) } {
        Ok(r) => r,
        Err(e) => panic!("enable: {:?}", e.0),
    };
    let roots = Marking {
        inner: SoftCpuRoots::new(root),
        lends: Cell::new(0),
    };
    Hypervisor::new(platform, roots, Codes::Linux, Ok(controls))
}

fn call(h: &Hv, handle: Handle, def: &IoctlDef, input: &[u8], out: &mut [u8]) -> usize {
    let code = def.code(h.codes()).expect("defined");
    h.dispatch(handle, code, input, out)
        .unwrap_or_else(|e: DispatchError| panic!("{}: {e}", def.name))
}

const RAM: usize = 0x1_0000;

/// Guest RAM: page-aligned, outlives the hypervisor (leaked).
fn guest_ram() -> &'static mut [u8] {
    let layout = std::alloc::Layout::from_size_align(RAM, 4096).unwrap();
    // SAFETY: non-zero layout; the allocation is never freed (the test's "user" RAM).
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    // SAFETY: fresh allocation of RAM bytes, owned by the returned slice for good.
    unsafe { std::slice::from_raw_parts_mut(p, RAM) }
}

#[test]
fn memory_work_of_a_run_happens_outside_the_region() {
    let h = hv();
    let ram = guest_ram();
    ram[0x500..0x504].copy_from_slice(&[0xa1, 0xa2, 0xa3, 0xa4]);
    ram[0x1000..0x1002].copy_from_slice(&[0x89, 0x07]); // mov [bx], ax
    let sys = h.open_system();
    let mut id = [0u8; 4];
    call(&h, sys, &ioctl::HAX_IOCTL_CREATE_VM, &[], &mut id);
    let vm = h.open_vm(u32::from_le_bytes(id)).unwrap();
    let block = RamblockInfo {
        start_va: ram.as_ptr() as u64,
        size: RAM as u64,
        reserved: 0,
    };
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_ADD_RAMBLOCK,
        block.as_bytes(),
        &mut [],
    );
    let set = SetRamInfo {
        pa_start: 0,
        size: RAM as u32,
        flags: 0,
        pad: [0; 3],
        va: ram.as_ptr() as u64,
    };
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_SET_RAM,
        set.as_bytes(),
        &mut [],
    );
    call(
        &h,
        vm,
        &ioctl::HAX_VM_IOCTL_VCPU_CREATE,
        &0u32.to_le_bytes(),
        &mut [],
    );
    let vc = h.open_vcpu(u32::from_le_bytes(id), 0).unwrap();
    let mut ti = [0u8; 24];
    call(&h, vc, &ioctl::HAX_VCPU_IOCTL_SETUP_TUNNEL, &[], &mut ti);
    let ti = TunnelInfo::from_bytes(&ti).unwrap();
    let tunnel = || {
        // SAFETY: the tunnel page is mapped at its kernel address and lives with the vCPU.
        let b = unsafe { std::slice::from_raw_parts(ti.va as *const u8, 4096) };
        rhax_api::Tunnel::read_from_prefix(b).unwrap()
    };
    let iobuf = || {
        // SAFETY: as the tunnel.
        unsafe { std::slice::from_raw_parts(ti.io_va as *const u8, 4096) }.to_vec()
    };
    let mut s = [0u8; VcpuState::SIZE];
    call(&h, vc, &ioctl::HAX_VCPU_GET_REGS, &[], &mut s);
    let mut st = VcpuState::from_bytes(&s).unwrap();
    st.cs.base = 0;
    st.cs.selector = 0;
    st.rip = 0x1000;
    st.regs[reg::RCX] = 4;
    st.regs[reg::RSI] = 0x500;
    st.regs[reg::RAX] = 0xbeef;
    call(&h, vc, &ioctl::HAX_VCPU_SET_REGS, st.as_bytes(), &mut []);

    let mut n = 0;
    h.roots().inner.with_soft(|root| {
        root.vmx().set_hook(move |c: &mut GuestCpu<'_>| {
            n += 1;
            match n {
                // A first touch of RAM: resolved (pinned, mapped), the guest resumes.
                1 => {
                    c.write(VmcsField::GuestPhysicalAddress, 0x3000);
                    c.exit(48, 1, 0);
                }
                // REP OUTSB of 4 bytes from DS:SI = 0x500.
                2 => {
                    c.write(VmcsField::GuestLinearAddress, 0x500);
                    c.write(VmcsField::VmExitInstructionInformation, 0);
                    c.exit(30, 0x03f8_0000 | 16 | 32, 2);
                }
                // `mov [bx], ax` into a hole: FAST_MMIO, the instruction fetched from RAM.
                3 => {
                    c.write(VmcsField::GuestRip, 0x1000);
                    c.write(VmcsField::GuestPhysicalAddress, 0xfee0_0080);
                    c.exit(48, 2, 0);
                }
                _ => c.exit(12, 0, 1),
            }
        })
    });
    let lends = h.roots().lends.get();
    let copies = COPIES.load(Ordering::Relaxed);
    call(&h, vc, &ioctl::HAX_VCPU_IOCTL_RUN, &[], &mut []);
    let t = tunnel();
    assert_eq!(t.status(), Ok(ExitStatus::Io));
    let io = *t.io();
    assert_eq!((io.count, io.flags, io.vaddr), (4, 1, 0x500));
    assert_eq!(&iobuf()[..4], &[0xa1, 0xa2, 0xa3, 0xa4]);
    assert!(
        h.platform().pins.load(Ordering::Relaxed) > 0,
        "RAM was pinned"
    );
    assert!(COPIES.load(Ordering::Relaxed) > copies, "OUTS copied");
    // The violation ended the first step, the OUTS the second.
    assert_eq!(h.roots().lends.get() - lends, 2);

    call(&h, vc, &ioctl::HAX_VCPU_IOCTL_RUN, &[], &mut []);
    assert_eq!(tunnel().status(), Ok(ExitStatus::FastMmio));
    let m = FastMmio::read_from_prefix(&iobuf()).unwrap();
    assert_eq!(
        (m.gpa, m.size, m.direction, m.value),
        (0xfee0_0080, 2, 1, 0xbeef)
    );
    call(&h, vc, &ioctl::HAX_VCPU_IOCTL_RUN, &[], &mut []);
    assert_eq!(tunnel().status(), Ok(ExitStatus::Hlt));
    call(&h, vc, &ioctl::HAX_VCPU_GET_REGS, &[], &mut s);
    let st = VcpuState::from_bytes(&s).unwrap();
    assert_eq!(st.rip, 0x1003, "past the MOV (2) and the HLT (1)");
    assert_eq!((st.regs[reg::RCX], st.regs[reg::RSI]), (0, 0x504));
}
