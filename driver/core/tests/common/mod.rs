//! The harness the HaxVcpu tests share: the software VMX's hook plays the guest CPU, a buffer
//! plays guest RAM (everything at or above 1 MiB is MMIO).
#![allow(dead_code, unused_imports)]

pub mod apic;

pub use std::cell::{Cell, RefCell};
pub use std::rc::Rc;

pub use rhax_api::cpuid::CpuidEntry;
pub use rhax_api::msr::{MsrData, VmxMsr};
pub use rhax_api::tunnel::{ExitStatus, FastMmio, HAX_EXIT_REASON_PAUSE_REQUEST};
pub use rhax_api::Pod;
pub use rhax_core::memory::{EptAccess, MemoryError, Resolution};
pub use rhax_core::platform::{CpuIndex, PhysPages, PinnedMemory, PlatformError};
pub use rhax_core::platform::{HeapPlatform, Platform};
pub use rhax_core::vcpu::cpuid::{CpuidError, CpuidTable};
pub use rhax_core::vcpu::guest::{Backing, GuestMemoryAccess};
pub use rhax_core::vcpu::haxm::{
    AfterMemory, HaxError, HaxVcpu, MemoryRequest, PanicReason, RunStep,
};
pub use rhax_core::vcpu::RunError;
pub use rhax_core::vmcs::stats::bucket_of;
pub use rhax_core::vmcs::VmcsField;
pub use rhax_core::vmx::instructions::reg;
pub use rhax_core::vmx::negotiate::negotiate;
pub use rhax_core::vmx::root::VmxRoot;
pub use rhax_core::vmx::soft::{msrs_from_tsv, GuestCpu, SoftVmx};

pub const TSV: &str = include_str!("../data/bochs-vmx-msrs.tsv");
pub const RAM: usize = 0x10_0000;

/// Guest RAM, how many calls reached it, and the pages PROTECT_RAM protects (`[start, end)`
/// ranges: the guest's accesses resolve to PAGEFAULT, the host's copies fail as the memory
/// layer's do).
pub struct Ram(
    pub RefCell<Vec<u8>>,
    pub Cell<u32>,
    pub RefCell<Vec<(u64, u64)>>,
);

impl Ram {
    pub fn new() -> Ram {
        Ram(
            RefCell::new(vec![0; RAM]),
            Cell::new(0),
            RefCell::new(Vec::new()),
        )
    }

    fn protected(&self, gpa: u64, len: usize) -> Result<(), MemoryError> {
        let end = gpa + len as u64;
        match self.2.borrow().iter().find(|&&(s, e)| gpa < e && end > s) {
            Some(_) => Err(MemoryError::Protected { gpa: gpa & !0xfff }),
            None => Ok(()),
        }
    }
}

impl GuestMemoryAccess for Ram {
    fn resolve(&self, gpa: u64, _: EptAccess) -> Result<Resolution, MemoryError> {
        self.1.set(self.1.get() + 1);
        if self.protected(gpa, 1).is_err() {
            return Ok(Resolution::Protected { gpa: gpa & !0xfff });
        }
        Ok(if (gpa as usize) < RAM {
            Resolution::Mapped
        } else {
            Resolution::Mmio
        })
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<Backing, MemoryError> {
        self.1.set(self.1.get() + 1);
        self.protected(gpa, buf.len())?;
        let m = self.0.borrow();
        match m.get(gpa as usize..gpa as usize + buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(Backing::Ram)
            }
            None => Ok(Backing::NotRam),
        }
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<Backing, MemoryError> {
        self.1.set(self.1.get() + 1);
        self.protected(gpa, data.len())?;
        let mut m = self.0.borrow_mut();
        match m.get_mut(gpa as usize..gpa as usize + data.len()) {
            Some(d) => {
                d.copy_from_slice(data);
                Ok(Backing::Ram)
            }
            None => Ok(Backing::NotRam),
        }
    }
}

pub struct T {
    pub platform: HeapPlatform,
    pub root: VmxRoot<SoftVmx>,
    pub vcpu: HaxVcpu,
    pub mem: Ram,
    pub cpuid: CpuidTable,
}

pub fn host_cpuid(leaf: u32, _: u32) -> [u32; 4] {
    match leaf {
        0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
        1 => [0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff],
        _ => [0; 4],
    }
}

pub fn setup() -> T {
    setup_model("corei7_skylake_x")
}

/// [`setup`] on another Bochs CPU model of the table.
pub fn setup_model(model: &str) -> T {
    setup_with(
        SoftVmx::new(msrs_from_tsv(TSV, model).unwrap()),
        CpuidTable::new(host_cpuid),
    )
}

/// [`setup`] over a prepared model CPU and CPUID table.
pub fn setup_with(mut vmx: SoftVmx, cpuid: CpuidTable) -> T {
    let platform = HeapPlatform::new();
    // The model CPU reads and writes the virtual-APIC page itself (virtual-interrupt delivery).
    let memory = platform.memory();
    vmx.set_memory(move |phys| memory.page(phys));
    let controls = negotiate(vmx.caps()).unwrap();
    let page = platform.alloc_pages(1).unwrap();
    // SAFETY: software model, one thread.
    let root = unsafe { VmxRoot::enable(vmx, 0, page) }
        .map_err(|e| e.0)
        .unwrap();
    let vcpu = HaxVcpu::new(&platform, &controls, 0, 0, controls.eptp(0x4000_0000)).unwrap();
    T {
        platform,
        root,
        vcpu,
        mem: Ram::new(),
        cpuid,
    }
}

impl T {
    pub fn hook(&mut self, f: impl FnMut(&mut GuestCpu<'_>) + 'static) {
        self.root.vmx().set_hook(f);
    }
    /// One RUN as the dispatcher drives it: steps in the "region", memory work between.
    pub fn run(&mut self) -> Result<ExitStatus, HaxError> {
        let mut step = self.vcpu.run(&mut self.root, &self.cpuid, &self.platform)?;
        while let RunStep::NeedMemory(_) = step {
            if self.vcpu.complete_memory(&self.mem)? == AfterMemory::Done {
                break;
            }
            step = self
                .vcpu
                .resume(&mut self.root, &self.cpuid, &self.platform)?;
        }
        Ok(self.vcpu.tunnel().status().unwrap())
    }
    pub fn step(&mut self) -> Result<RunStep, HaxError> {
        self.vcpu.run(&mut self.root, &self.cpuid, &self.platform)
    }
    pub fn resume(&mut self) -> Result<RunStep, HaxError> {
        self.vcpu
            .resume(&mut self.root, &self.cpuid, &self.platform)
    }
    pub fn entries(&mut self) -> u64 {
        let c = &self.root.vmx().counts;
        c.vmlaunch + c.vmresume
    }
    pub fn status(&mut self) -> ExitStatus {
        self.vcpu.tunnel().status().unwrap()
    }
    pub fn rip(&mut self) -> u64 {
        self.vcpu.get_regs(&mut self.root).unwrap().rip
    }
    /// 32-bit flat protected mode (paging off) at 0x1000 with `code` there; `f` adjusts the
    /// rest of the state.
    pub fn flat32(&mut self, code: &[u8], f: impl FnOnce(&mut rhax_api::vcpu::VcpuState)) {
        use rhax_api::vcpu::SegmentDesc;
        self.mem.0.borrow_mut()[0x1000..0x1000 + code.len()].copy_from_slice(code);
        let mut s = self.vcpu.get_regs(&mut self.root).unwrap();
        s.cr0 = 0x11;
        s.cs = SegmentDesc::new(8, 0, 0xffff_ffff, 0xc09b);
        s.ss = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xc093);
        s.ds = s.ss;
        s.es = s.ss;
        s.rip = 0x1000;
        f(&mut s);
        self.vcpu.set_regs(&mut self.root, &s).unwrap();
    }
}

/// One scripted guest step.
pub type Step = Box<dyn FnMut(&mut GuestCpu<'_>)>;

/// A guest that runs one scripted exit per entry.
pub fn script(steps: Vec<Step>) -> impl FnMut(&mut GuestCpu<'_>) {
    let mut steps = steps.into_iter();
    move |cpu| match steps.next() {
        Some(mut s) => s(cpu),
        None => panic!("guest ran past its script"),
    }
}
