//! [`Counted`]: a [`Vmx`] that forwards to another and counts every operation into a vCPU's
//! [`VcpuStats`]. The vCPU reaches the CPU only through it, so nothing escapes the counters.

use rhax_api::fpu::{FxLayout, XsaveArea};

use crate::counters::VcpuStats;
use crate::vmcs::VmcsField;
use crate::vmx::instructions::{
    DescriptorTablePointer, GuestRegisters, InveptType, InvvpidType, Selectors, Vmx,
};
use crate::vmx::VmFail;

/// Counting wrapper around a borrowed [`Vmx`].
pub struct Counted<'a, V: Vmx> {
    inner: &'a mut V,
    stats: &'a mut VcpuStats,
}

impl<'a, V: Vmx> Counted<'a, V> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: &'a mut V, stats: &'a mut VcpuStats) -> Self {
        Counted { inner, stats }
    }

    /// The counters.
    pub fn stats(&mut self) -> &mut VcpuStats {
        self.stats
    }
}

// Each method: count, then forward under the caller's contract (identical preconditions).
// VMREAD/VMWRITE are always inlined: with the constant encoding of a typed accessor the
// counter slot folds to a constant, so counting costs two increments (see `VcpuStats`).
impl<V: Vmx> Vmx for Counted<'_, V> {
    unsafe fn vmxon(&mut self, region: u64) -> Result<(), VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmxon(region) }
    }

    unsafe fn vmxoff(&mut self) -> Result<(), VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmxoff() }
    }

    unsafe fn vmclear(&mut self, vmcs: u64) -> Result<(), VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmclear(vmcs) }
    }

    unsafe fn vmptrld(&mut self, vmcs: u64) -> Result<(), VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmptrld(vmcs) }
    }

    unsafe fn vmptrst(&mut self) -> Result<u64, VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmptrst() }
    }

    #[inline(always)]
    unsafe fn vmread(&mut self, encoding: u32) -> Result<u64, VmFail> {
        self.stats.count_read(encoding);
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmread(encoding) }
    }

    #[inline(always)]
    unsafe fn vmwrite(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
        self.stats.count_write(encoding);
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmwrite(encoding, value) }
    }

    #[inline(always)]
    unsafe fn vmwrite_indexed(
        &mut self,
        index: usize,
        encoding: u32,
        value: u64,
    ) -> Result<(), VmFail> {
        self.stats.count_write_index(index);
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.vmwrite(encoding, value) }
    }

    #[inline(always)]
    unsafe fn vmenter(
        &mut self,
        regs: &mut GuestRegisters,
        launched: bool,
        host_rsp: &mut u64,
    ) -> Result<(), VmFail> {
        self.stats.count_other();
        let before = *host_rsp;
        // SAFETY: forwarded under the caller's contract.
        let r = unsafe { self.inner.vmenter(regs, launched, host_rsp) };
        // The stub's HOST_RSP VMWRITE is a VMWRITE like any other. The stub (and the model)
        // writes it exactly when the cached value differs, and stores the new one, so the
        // changed cache says it (one compare; the report is for callers that want it).
        if *host_rsp != before {
            self.stats.count_write(VmcsField::HostRsp.encoding());
        }
        r
    }

    fn host_rip(&self) -> u64 {
        self.inner.host_rip()
    }

    unsafe fn invept(&mut self, kind: InveptType, eptp: u64) -> Result<(), VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.invept(kind, eptp) }
    }

    unsafe fn invvpid(&mut self, kind: InvvpidType, vpid: u16, a: u64) -> Result<(), VmFail> {
        self.stats.count_other();
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.invvpid(kind, vpid, a) }
    }

    unsafe fn rdmsr(&mut self, msr: u32) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.rdmsr(msr) }
    }

    unsafe fn wrmsr(&mut self, msr: u32, value: u64) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.wrmsr(msr, value) }
    }

    unsafe fn read_cr0(&mut self) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.read_cr0() }
    }

    unsafe fn read_cr3(&mut self) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.read_cr3() }
    }

    unsafe fn read_cr4(&mut self) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.read_cr4() }
    }

    unsafe fn write_cr4(&mut self, value: u64) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.write_cr4(value) }
    }

    unsafe fn selectors(&mut self) -> Selectors {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.selectors() }
    }

    unsafe fn sgdt(&mut self) -> DescriptorTablePointer {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.sgdt() }
    }

    unsafe fn sidt(&mut self) -> DescriptorTablePointer {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.sidt() }
    }

    unsafe fn tss_base(&mut self, gdt: DescriptorTablePointer, tr: u16) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.tss_base(gdt, tr) }
    }

    fn rdtsc(&mut self) -> u64 {
        self.inner.rdtsc()
    }

    unsafe fn read_cr2(&mut self) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.read_cr2() }
    }

    unsafe fn write_cr2(&mut self, value: u64) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.write_cr2(value) }
    }

    unsafe fn read_breakpoint_addresses(&mut self) -> [u64; 4] {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.read_breakpoint_addresses() }
    }

    unsafe fn write_breakpoint_addresses(&mut self, values: &[u64; 4]) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.write_breakpoint_addresses(values) }
    }

    unsafe fn fxsave(&mut self, area: &mut FxLayout) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.fxsave(area) }
    }

    unsafe fn fxrstor(&mut self, area: &FxLayout) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.fxrstor(area) }
    }

    unsafe fn xgetbv0(&mut self) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.xgetbv0() }
    }

    unsafe fn xsetbv0(&mut self, xcr0: u64) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.xsetbv0(xcr0) }
    }

    unsafe fn xsave(&mut self, area: &mut XsaveArea, mask: u64) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.xsave(area, mask) }
    }

    unsafe fn xrstor(&mut self, area: &XsaveArea, mask: u64) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.xrstor(area, mask) }
    }

    unsafe fn raise_host_nmi(&mut self) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.inner.raise_host_nmi() }
    }
}
