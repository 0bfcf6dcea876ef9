//! Scenarios that run guests through rhax-core, the way a shell does (lib.rs of rhax-core):
//! negotiate, `VmxRoot::enable` per CPU, `Vcpu::new`, `vcpu.run` → `VmExit`, handle, repeat.
//!
//! The harness plays the VMM: it owns guest memory and (until rhax-core has its memory module)
//! builds the EPT that maps it, and it emulates the port I/O and CPUID the guest asks for. Each
//! scenario checks what the guest did: registers, bytes written to its memory, exit sequence.
//! Guests are hand-assembled; every byte is commented with its instruction.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use rhax_core::platform::Platform;
use rhax_core::vcpu::{skip_instruction, Vcpu};
use rhax_core::vmcs::exit::{IoDirection, VmExit};
use rhax_core::vmcs::stats::{ExitCounters, BUCKETS};
use rhax_core::vmx::caps::{EntryControls, VmxCaps};
use rhax_core::vmx::hw::HwVmx;
use rhax_core::vmx::instructions::InveptType;
use rhax_core::vmx::negotiate::{negotiate, OptionalFeatures, VmxControls};
use rhax_core::vmx::root::VmxRoot;
use rhax_core::vmx::{GuestRegisters, Vmx};

use crate::platform::Metal;
use crate::scenarios::Ctx;
use crate::sync::SpinLock;
use crate::{mm, println, smp, vmx};

mod mtf;
pub use mtf::mtf_probe;

const RAX: usize = 0;
const RBX: usize = 3;

/// Guest-physical memory `[0, pages * 4K)` backed by contiguous host pages, mapped by a
/// 4-level EPT with 4-KByte pages (SDM Vol. 3C §29.3.2, Tables 29-1..29-6): non-leaf entries
/// RWX, leaf entries RWX with memory type WB (6) in bits 5:3.
struct GuestMemory {
    host: u64,
    pages: u64,
    /// PML4, PDPT, PD, PT (one PT: the first 2 MiB of guest-physical space).
    ept: [u64; 4],
    extra: Vec<u64>,
}

impl GuestMemory {
    fn new(pages: u64) -> Result<Self, String> {
        if pages > 512 {
            return Err(String::from("guest memory larger than one page table"));
        }
        let host = mm::alloc_pages(pages, mm::PAGE).ok_or("no memory for the guest")?;
        let mut ept = [0u64; 4];
        for t in &mut ept {
            *t = mm::alloc_pages(1, mm::PAGE).ok_or("no memory for the EPT")?;
        }
        let g = GuestMemory {
            host,
            pages,
            ept,
            extra: Vec::new(),
        };
        g.set_entry(g.ept[0], 0, g.ept[1] | 7);
        g.set_entry(g.ept[1], 0, g.ept[2] | 7);
        g.set_entry(g.ept[2], 0, g.ept[3] | 7);
        for i in 0..pages {
            g.set_entry(g.ept[3], i, (host + i * mm::PAGE) | 7 | 6 << 3);
        }
        Ok(g)
    }

    fn set_entry(&self, table: u64, index: u64, value: u64) {
        // SAFETY: `table` is one of this guest's EPT pages (identity-mapped, owned) and
        // index < 512.
        unsafe { ((table + 8 * (index & 511)) as *mut u64).write_volatile(value) }
    }

    /// Maps the 4-KByte guest page at `gpa` (< 2 MiB) to a new host page holding `init`.
    fn map_new_page(&mut self, gpa: u64, init: &[u8]) -> Result<(), String> {
        let page = mm::alloc_pages(1, mm::PAGE).ok_or("no memory for the page")?;
        // SAFETY: a fresh identity-mapped page; init is at most a page (checked by slicing).
        unsafe {
            core::ptr::copy_nonoverlapping(init.as_ptr(), page as *mut u8, init.len().min(4096))
        };
        self.set_entry(self.ept[3], gpa >> 12, page | 7 | 6 << 3);
        self.extra.push(page);
        Ok(())
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        assert!(gpa + bytes.len() as u64 <= self.pages * mm::PAGE);
        // SAFETY: inside this guest's host pages (asserted), identity-mapped.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.host + gpa) as *mut u8,
                bytes.len(),
            )
        };
    }

    fn read_u64(&self, gpa: u64) -> u64 {
        assert!(gpa + 8 <= self.pages * mm::PAGE);
        // SAFETY: inside this guest's host pages (asserted).
        unsafe { ((self.host + gpa) as *const u64).read_unaligned() }
    }

    fn read_u32(&self, gpa: u64) -> u32 {
        self.read_u64(gpa) as u32
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        mm::free_pages(self.host, self.pages);
        for t in self.ept {
            mm::free_pages(t, 1);
        }
        for &p in &self.extra {
            mm::free_pages(p, 1);
        }
    }
}

fn controls() -> Result<VmxControls, String> {
    let caps = VmxCaps::read(vmx::read_cap);
    negotiate(&caps).map_err(|e| format!("rhax-core refused this CPU: {e}"))
}

/// Enters VMX root operation through rhax-core on the running CPU (the kernel's own VMXON of
/// the bring-up is left first: VMX operation has one owner per CPU), runs `f`, leaves it.
fn with_root<R>(f: impl FnOnce(&mut VmxRoot<HwVmx>) -> Result<R, String>) -> Result<R, String> {
    let cpu = smp::cpu_index();
    vmx::vmxoff_on_this_cpu(cpu);
    let region = Metal
        .alloc_pages(1)
        .map_err(|e| format!("VMXON region: {e:?}"))?;
    // SAFETY: HwVmx is used only on this CPU, at CPL 0, inside this function.
    let hw = unsafe { HwVmx::new() };
    // SAFETY: CPL 0; this CPU runs nothing else (interrupts are off in scenarios and jobs) until
    // the root is disabled below; the region is one page from the platform.
    let mut root = match unsafe { VmxRoot::enable(hw, cpu as u32, region) } {
        Ok(r) => r,
        Err((e, _, region)) => {
            Metal.free_pages(region);
            return Err(format!("VmxRoot::enable on cpu {cpu}: {e:?}"));
        }
    };
    let result = f(&mut root);
    match root.disable() {
        Ok((_, region)) => Metal.free_pages(region),
        Err((_, e)) => return Err(format!("VMXOFF failed: {e:?}")),
    }
    result
}

/// What the handler wants after an exit.
enum Step {
    /// Advance RIP past the exiting instruction and resume.
    Skip,
    /// Resume at the same RIP (e.g. after mapping the page of an EPT violation).
    Again,
    /// Stop running.
    Stop,
}

/// Runs until the handler says Stop, at most `max` exits; returns the first 64 exits.
fn run_loop(
    root: &mut VmxRoot<HwVmx>,
    vcpu: &mut Vcpu,
    max: u64,
    mut handler: impl FnMut(&mut VmxRoot<HwVmx>, &VmExit, &mut GuestRegisters) -> Result<Step, String>,
) -> Result<Vec<VmExit>, String> {
    let mut seen = Vec::new();
    for _ in 0..max {
        let exit = vcpu.run(root).map_err(|e| format!("run: {e:?}"))?;
        if seen.len() < 64 {
            seen.push(exit);
        }
        match handler(root, &exit, &mut vcpu.regs)? {
            Step::Skip => vcpu
                .with_vmcs(root, |vmcs, _| skip_instruction(vmcs))
                .map_err(|e| format!("with_vmcs: {e:?}"))?
                .map_err(|e| format!("skip: {e:?}"))?,
            Step::Again => {}
            Step::Stop => {
                vcpu.put(root);
                return Ok(seen);
            }
        }
    }
    vcpu.put(root);
    Err(format!(
        "no HLT after {max} exits; first exits {:?}",
        &seen[..seen.len().min(4)]
    ))
}

/// Creates a vCPU on `controls` with the EPT pointer `eptp`, lets `setup` write its initial state, runs `body`,
/// then VMCLEARs and frees it.
fn with_vcpu<R>(
    root: &mut VmxRoot<HwVmx>,
    controls: &VmxControls,
    eptp: u64,
    vpid: u16,
    setup: impl FnOnce(&mut rhax_core::vmcs::Vmcs<'_, rhax_core::vmx::Counted<'_, HwVmx>>),
    body: impl FnOnce(&mut VmxRoot<HwVmx>, &mut Vcpu) -> Result<R, String>,
) -> Result<R, String> {
    let mut vcpu =
        Vcpu::new(&Metal, controls, vpid, eptp).map_err(|e| format!("Vcpu::new: {e:?}"))?;
    let result = vcpu
        .with_vmcs(root, |vmcs, _| setup(vmcs))
        .map_err(|e| format!("with_vmcs: {e:?}"))
        .and_then(|()| body(root, &mut vcpu));
    vcpu.unload(root).map_err(|e| format!("unload: {e:?}"))?;
    if vcpu.destroy(&Metal).is_err() {
        return Err(String::from("vCPU still resident after unload"));
    }
    result
}

type GuestVmcs<'a, 'b> = rhax_core::vmcs::Vmcs<'a, rhax_core::vmx::Counted<'b, HwVmx>>;

/// Real mode at CS=0, IP=`rip` (the rest is the power-on state rhax-core writes).
fn real_mode(rip: u64) -> impl FnOnce(&mut GuestVmcs<'_, '_>) {
    move |vmcs| {
        vmcs.set_guest_cs_selector(0);
        vmcs.set_guest_cs_base(0);
        vmcs.set_guest_rip(rip);
        vmcs.set_guest_rsp(0x8000);
    }
}

/// Flat segments with access rights `code_ar` for CS and 0xC093 (data, 4 GiB) for the others
/// (SDM Vol. 3C §25.4.1, Table 25-2 access-rights format).
fn flat_segments(vmcs: &mut GuestVmcs<'_, '_>, code_ar: u32) {
    vmcs.set_guest_cs_selector(0x08);
    vmcs.set_guest_cs_base(0);
    vmcs.set_guest_cs_limit(0xFFFF_FFFF);
    vmcs.set_guest_cs_access_rights(code_ar);
    macro_rules! data {
        ($($sel:ident $base:ident $limit:ident $ar:ident),*) => {$(
            vmcs.$sel(0x10);
            vmcs.$base(0);
            vmcs.$limit(0xFFFF_FFFF);
            vmcs.$ar(0xC093);
        )*};
    }
    data!(
        set_guest_ds_selector set_guest_ds_base set_guest_ds_limit set_guest_ds_access_rights,
        set_guest_es_selector set_guest_es_base set_guest_es_limit set_guest_es_access_rights,
        set_guest_ss_selector set_guest_ss_base set_guest_ss_limit set_guest_ss_access_rights,
        set_guest_fs_selector set_guest_fs_base set_guest_fs_limit set_guest_fs_access_rights,
        set_guest_gs_selector set_guest_gs_base set_guest_gs_limit set_guest_gs_access_rights
    );
}

/// 32-bit protected mode, flat, paging off, at `rip`.
fn protected_mode(c: VmxControls, rip: u64) -> impl FnOnce(&mut GuestVmcs<'_, '_>) {
    move |vmcs| {
        const CR0: u64 = 0x11; // PE | ET
        vmcs.set_cr0_read_shadow(CR0);
        vmcs.set_guest_cr0(c.guest_cr0_fixed.adjust(CR0));
        flat_segments(vmcs, 0xC09B);
        vmcs.set_guest_rip(rip);
        vmcs.set_guest_rsp(0x8000);
    }
}

fn io(exit: &VmExit) -> Option<(u16, u8, IoDirection)> {
    match exit {
        VmExit::Io(a) => Some((a.port, a.size, a.direction)),
        _ => None,
    }
}

/// Real mode: OUT 0x80 of 0x42, IN from 0x80 (the harness returns 0x99), CPUID leaf 0 (the
/// harness returns EAX = 0x12345678), the guest stores EAX at 0x2000 and halts.
pub fn real_mode_guest(_: &Ctx) -> Result<String, String> {
    const CODE: &[u8] = &[
        0xBA, 0x80, 0x00, // mov dx, 0x80
        0xB0, 0x42, // mov al, 0x42
        0xEE, // out dx, al
        0xEC, // in al, dx
        0x88, 0xC3, // mov bl, al
        0x66, 0x31, 0xC0, // xor eax, eax
        0x0F, 0xA2, // cpuid
        0x66, 0xA3, 0x00, 0x20, // mov [0x2000], eax
        0xF4, // hlt
    ];
    let c = controls()?;
    let mem = GuestMemory::new(16)?;
    mem.write(0x1000, CODE);
    let mut out_value = None;
    let mut cpuid_leaf = None;
    let exits = with_root(|root| {
        with_vcpu(
            root,
            &c,
            c.eptp(mem.ept[0]),
            1,
            real_mode(0x1000),
            |root, vcpu| {
                run_loop(root, vcpu, 16, |_, exit, regs| match exit {
                    VmExit::Io(a) if a.direction == IoDirection::Out => {
                        out_value = Some(regs.gpr[RAX] as u8);
                        Ok(Step::Skip)
                    }
                    VmExit::Io(_) => {
                        regs.gpr[RAX] = (regs.gpr[RAX] & !0xFF) | 0x99;
                        Ok(Step::Skip)
                    }
                    VmExit::Cpuid => {
                        cpuid_leaf = Some(regs.gpr[RAX] as u32);
                        regs.gpr[RAX] = 0x1234_5678;
                        Ok(Step::Skip)
                    }
                    VmExit::Hlt => Ok(Step::Stop),
                    other => Err(format!("unexpected exit {other:?}")),
                })
                .map(|seen| (seen, vcpu.regs))
            },
        )
    })?;
    let (seen, regs) = exits;
    let expected = [
        Some((0x80, 1, IoDirection::Out)),
        Some((0x80, 1, IoDirection::In)),
        None, // CPUID
        None, // HLT
    ];
    let got: Vec<_> = seen.iter().map(io).collect();
    if got != expected || seen[2] != VmExit::Cpuid || seen[3] != VmExit::Hlt {
        return Err(format!("exit sequence {seen:?}"));
    }
    if out_value != Some(0x42) {
        return Err(format!("OUT value {out_value:?}, expected 0x42"));
    }
    if cpuid_leaf != Some(0) || regs.gpr[RBX] & 0xFF != 0x99 || mem.read_u32(0x2000) != 0x1234_5678
    {
        return Err(format!(
            "leaf {cpuid_leaf:?}, BL {:#x}, [0x2000] {:#x}",
            regs.gpr[RBX] & 0xFF,
            mem.read_u32(0x2000)
        ));
    }
    Ok(String::from(
        "OUT 0x42, IN 0x99 -> BL, CPUID -> [0x2000], HLT",
    ))
}

/// 32-bit protected mode: stores a 32-bit immediate (decoded as such only with a 32-bit code
/// segment) to memory and OUTs it as a dword.
pub fn protected_mode_guest(_: &Ctx) -> Result<String, String> {
    const CODE: &[u8] = &[
        0xB8, 0xEF, 0xBE, 0xAD, 0xDE, // mov eax, 0xDEADBEEF
        0xA3, 0x00, 0x30, 0x00, 0x00, // mov [0x3000], eax
        0xE7, 0x84, // out 0x84, eax
        0xF4, // hlt
    ];
    let c = controls()?;
    let mem = GuestMemory::new(16)?;
    mem.write(0x1000, CODE);
    let mut out = None;
    let seen = with_root(|root| {
        with_vcpu(
            root,
            &c,
            c.eptp(mem.ept[0]),
            1,
            protected_mode(c, 0x1000),
            |root, vcpu| {
                run_loop(root, vcpu, 8, |_, exit, regs| match exit {
                    VmExit::Io(a) if a.direction == IoDirection::Out && a.immediate => {
                        out = Some((a.port, a.size, regs.gpr[RAX] as u32));
                        Ok(Step::Skip)
                    }
                    VmExit::Hlt => Ok(Step::Stop),
                    other => Err(format!("unexpected exit {other:?}")),
                })
            },
        )
    })?;
    if seen.len() != 2 || out != Some((0x84, 4, 0xDEAD_BEEF)) || mem.read_u32(0x3000) != 0xDEAD_BEEF
    {
        return Err(format!(
            "exits {seen:?}, OUT {out:x?}, [0x3000] {:#x}",
            mem.read_u32(0x3000)
        ));
    }
    Ok(String::from(
        "OUT dword 0xdeadbeef to 0x84, [0x3000] written, HLT",
    ))
}

/// 64-bit mode with the guest's own 4-level page tables at 0x10000: identity for the first
/// 2 MiB and an alias of it at 1 GiB. The guest loads a 64-bit immediate and stores it through
/// the alias; the harness finds it at guest-physical 0x4000.
pub fn long_mode_guest(_: &Ctx) -> Result<String, String> {
    const CODE: &[u8] = &[
        0x48, 0xB8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
        0x11, // mov rax, 0x1122334455667788
        0x48, 0xBF, 0x00, 0x40, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, // mov rdi, 0x40004000
        0x48, 0x89, 0x07, // mov [rdi], rax
        0xF4, // hlt
    ];
    const VALUE: u64 = 0x1122_3344_5566_7788;
    let c = controls()?;
    if !c.entry.contains(EntryControls::LOAD_EFER) {
        return Err(String::from(
            "negotiated controls do not load the guest EFER",
        ));
    }
    let mem = GuestMemory::new(32)?;
    mem.write(0x1000, CODE);
    // PML4[0] -> PDPT; PDPT[0] and PDPT[1] -> PD; PD[0] = 2 MiB page at 0 (P, RW, PS).
    mem.write(0x10000, &(0x11000u64 | 3).to_le_bytes());
    mem.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
    mem.write(0x11008, &(0x12000u64 | 3).to_le_bytes());
    mem.write(0x12000, &0x83u64.to_le_bytes());
    let setup = move |vmcs: &mut GuestVmcs<'_, '_>| {
        const CR0: u64 = 0x8000_0011; // PG | ET | PE
        const CR4: u64 = 0x20; // PAE
        vmcs.set_cr0_read_shadow(CR0);
        vmcs.set_guest_cr0(c.guest_cr0_fixed.adjust(CR0));
        vmcs.set_cr4_read_shadow(CR4);
        vmcs.set_guest_cr4(c.guest_cr4_fixed.adjust(CR4));
        vmcs.set_guest_cr3(0x10000);
        // EFER.LME | LMA, and the "IA-32e mode guest" entry control (SDM §27.3.1.1: they must
        // agree with CR0.PG).
        vmcs.set_guest_ia32_efer(0x500);
        vmcs.set_vm_entry_controls((c.entry | EntryControls::IA32E_MODE_GUEST).bits());
        flat_segments(vmcs, 0xA09B); // L=1, D=0
        vmcs.set_guest_rip(0x1000);
        vmcs.set_guest_rsp(0x8000);
    };
    let (seen, regs) = with_root(|root| {
        with_vcpu(root, &c, c.eptp(mem.ept[0]), 1, setup, |root, vcpu| {
            run_loop(root, vcpu, 8, |_, exit, _| match exit {
                VmExit::Hlt => Ok(Step::Stop),
                other => Err(format!("unexpected exit {other:?}")),
            })
            .map(|s| (s, vcpu.regs))
        })
    })?;
    if seen != [VmExit::Hlt] || regs.gpr[RAX] != VALUE || mem.read_u64(0x4000) != VALUE {
        return Err(format!(
            "exits {seen:?}, RAX {:#x}, [0x4000] {:#x}",
            regs.gpr[RAX],
            mem.read_u64(0x4000)
        ));
    }
    Ok(String::from(
        "64-bit store through the guest's page tables (alias at 1 GiB) reached 0x4000",
    ))
}

/// EPT violation: the guest reads guest-physical 0x100000, which is not mapped. The harness
/// checks the exit (address, read access), maps a page holding 0xCAFEBABE, invalidates the EPT
/// TLB (INVEPT single-context) and resumes the same instruction, which now reads the value and
/// OUTs it.
pub fn ept_violation_guest(_: &Ctx) -> Result<String, String> {
    const CODE: &[u8] = &[
        0xA1, 0x00, 0x00, 0x10, 0x00, // mov eax, [0x100000]
        0xE7, 0x84, // out 0x84, eax
        0xF4, // hlt
    ];
    let c = controls()?;
    let mut mem = GuestMemory::new(16)?;
    mem.write(0x1000, CODE);
    let eptp = c.eptp(mem.ept[0]);
    let mut violation = None;
    let mut out = None;
    let mut map_err = None;
    let seen = with_root(|root| {
        with_vcpu(
            root,
            &c,
            eptp,
            1,
            protected_mode(c, 0x1000),
            |root, vcpu| {
                run_loop(root, vcpu, 8, |root, exit, regs| match exit {
                    VmExit::EptViolation {
                        gpa, qualification, ..
                    } if violation.is_none() => {
                        violation = Some((*gpa, qualification.bits()));
                        if let Err(e) =
                            mem.map_new_page(*gpa & !0xFFF, &0xCAFE_BABEu32.to_le_bytes())
                        {
                            map_err = Some(e);
                            return Ok(Step::Stop);
                        }
                        // SAFETY: VMX root on this CPU; single-context INVEPT is offered (the
                        // negotiation requires INVEPT single- or all-context; fall back below).
                        let r = unsafe { root.vmx().invept(InveptType::SingleContext, eptp) };
                        if r.is_err() {
                            // SAFETY: as above; all-context INVEPT.
                            unsafe { root.vmx().invept(InveptType::Global, 0) }
                                .map_err(|e| format!("INVEPT: {e:?}"))?;
                        }
                        Ok(Step::Again)
                    }
                    VmExit::Io(a) => {
                        out = Some((a.port, regs.gpr[RAX] as u32));
                        Ok(Step::Skip)
                    }
                    VmExit::Hlt => Ok(Step::Stop),
                    other => Err(format!("unexpected exit {other:?}")),
                })
            },
        )
    })?;
    if let Some(e) = map_err {
        return Err(e);
    }
    let Some((gpa, q)) = violation else {
        return Err(format!("no EPT violation: {seen:?}"));
    };
    // Exit qualification bit 0: the access was a data read (SDM Table 28-7).
    if gpa != 0x10_0000 || q & 1 == 0 || q & 2 != 0 {
        return Err(format!("EPT violation at {gpa:#x}, qualification {q:#x}"));
    }
    if out != Some((0x84, 0xCAFE_BABE)) || seen.len() != 3 {
        return Err(format!("after mapping: OUT {out:x?}, exits {seen:?}"));
    }
    Ok(format!(
        "read of {gpa:#x} exited (qualification {q:#x}), mapped, resumed, value seen"
    ))
}

/// VMX-preemption timer: a guest spinning on `jmp $` is stopped by a preemption-timer exit at
/// the same RIP.
pub fn preemption_timer_guest(_: &Ctx) -> Result<String, String> {
    const CODE: &[u8] = &[0xEB, 0xFE]; // jmp $
    let c = controls()?
        .with(OptionalFeatures::PREEMPTION_TIMER)
        .map_err(|e| format!("no preemption timer: {e}"))?;
    let mem = GuestMemory::new(16)?;
    mem.write(0x1000, CODE);
    let setup = |vmcs: &mut GuestVmcs<'_, '_>| {
        real_mode(0x1000)(vmcs);
        vmcs.set_vmx_preemption_timer_value(20_000);
    };
    let (seen, rip) = with_root(|root| {
        with_vcpu(root, &c, c.eptp(mem.ept[0]), 1, setup, |root, vcpu| {
            let seen = run_loop(root, vcpu, 4, |_, exit, _| match exit {
                VmExit::PreemptionTimer => Ok(Step::Stop),
                other => Err(format!("unexpected exit {other:?}")),
            })?;
            let rip = vcpu
                .with_vmcs(root, |vmcs, _| vmcs.guest_rip())
                .map_err(|e| format!("{e:?}"))?
                .map_err(|e| format!("{e:?}"))?;
            Ok((seen, rip))
        })
    })?;
    if seen != [VmExit::PreemptionTimer] || rip != 0x1000 {
        return Err(format!("exits {seen:?}, RIP {rip:#x}"));
    }
    Ok(format!(
        "timer exit at RIP {rip:#x}, rate TSC>>{}",
        c.preemption_timer_rate
    ))
}

/// A guest loop of `n` exits (CPUID or OUT) between two RDTSCs; the delta lands at 0x2000.
fn loop_code(n: u32, cpuid: bool) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend([0x66, 0xBF]); // mov edi, n
    v.extend(n.to_le_bytes());
    v.extend([0x0F, 0x31]); // rdtsc
    v.extend([0x66, 0x89, 0xC6]); // mov esi, eax
    let top = v.len();
    if cpuid {
        v.extend([0x66, 0x31, 0xC0, 0x0F, 0xA2]); // xor eax, eax; cpuid
    } else {
        v.extend([0xE6, 0x80]); // out 0x80, al
    }
    v.extend([0x66, 0x4F]); // dec edi
    let rel = top as i32 - (v.len() as i32 + 2);
    v.extend([0x75, rel as i8 as u8]); // jnz top
    v.extend([0x0F, 0x31]); // rdtsc
    v.extend([0x66, 0x29, 0xF0]); // sub eax, esi
    v.extend([0x66, 0xA3, 0x00, 0x20]); // mov [0x2000], eax
    v.push(0xF4); // hlt
    v
}

/// What the counters of a loop guest's vCPU do (rhax-core's run-time switches).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counting {
    /// Nothing counted.
    Off,
    /// Exits and VMX instructions counted (the default of a vCPU).
    On,
    /// Counted, and host cycles from exit to entry measured (two RDTSCs per exit).
    Cycles,
}

/// What one exit of [`run_exit_loop`]'s guest was.
#[derive(Clone, Copy)]
enum Loop {
    Counted,
    Halted,
    Unexpected,
}

/// Runs a loop guest of `n` exits on this CPU; returns (exits by kind, TSC delta, stats).
///
/// The loop is the shape a kernel's run loop has: `Vcpu::enter` returns the exit reason only,
/// the handler reads what it needs through the VMCS cache (the I/O exit's qualification) and
/// advances RIP in the same VMCS access. It is the benchmark of rhax-core's own round trip
/// (`bench-table`'s core rows, docs/bench/profile.md), so nothing of the harness's own
/// (recording exits, closures, decoding unused fields) runs in it.
pub(crate) fn run_exit_loop(
    n: u32,
    cpuid: bool,
    vpid: u16,
    counting: Counting,
) -> Result<(u64, u32, [ExitCounters; BUCKETS]), String> {
    use rhax_core::vmcs::exit::{reason, ExitReason, IoAccess};
    let c = controls()?;
    let mem = GuestMemory::new(16)?;
    mem.write(0x1000, &loop_code(n, cpuid));
    with_root(|root| {
        with_vcpu(
            root,
            &c,
            c.eptp(mem.ept[0]),
            vpid,
            real_mode(0x1000),
            |root, vcpu| {
                vcpu.reset_stats();
                vcpu.set_counting(counting != Counting::Off);
                vcpu.set_timing(counting == Counting::Cycles);
                let mut count = 0u64;
                let mut halted = false;
                for _ in 0..u64::from(n) + 2 {
                    // The handler runs on the exit's VMCS (`enter_with`): the reason, then
                    // only what it needs (the I/O exit's qualification) and the RIP advance.
                    let step = vcpu
                        .enter_with(root, |exit, vmcs, regs| -> Result<Loop, _> {
                            match exit.exit() {
                                Some(reason::CPUID) if cpuid => regs.gpr[RAX] = 0,
                                Some(reason::IO_INSTRUCTION) if !cpuid => {
                                    let q = vmcs.exit_qualification()?;
                                    if IoAccess::from_qualification(q).port != 0x80 {
                                        return Ok(Loop::Unexpected);
                                    }
                                }
                                Some(reason::HLT) => return Ok(Loop::Halted),
                                _ => return Ok(Loop::Unexpected),
                            }
                            skip_instruction(vmcs).map(|()| Loop::Counted)
                        })
                        .map_err(|e| format!("enter: {e:?}"))?
                        .map_err(|e| format!("handler: {e:?}"))?;
                    match step {
                        Loop::Counted => count += 1,
                        Loop::Halted => {
                            halted = true;
                            break;
                        }
                        Loop::Unexpected => {
                            let decoded = vcpu
                                .with_vmcs(root, |v, _| v.exit_reason())
                                .and_then(|r| Ok(r?))
                                .and_then(|r| vcpu.decode(root, ExitReason::from_raw(r)));
                            vcpu.put(root);
                            return Err(format!("unexpected exit {decoded:?}"));
                        }
                    }
                }
                vcpu.put(root);
                if !halted {
                    return Err(format!("no HLT after {} exits", u64::from(n) + 2));
                }
                Ok((
                    count,
                    mem.read_u32(0x2000),
                    vcpu.stats().snapshot().per_exit,
                ))
            },
        )
    })
}

/// Two vCPUs on two CPUs at the same time, each 2,000 CPUID exits; checks both completed on
/// their own CPU and that their runs overlapped in time (one TSC for all CPUs in Bochs).
pub fn two_vcpus(ctx: &Ctx) -> Result<String, String> {
    if smp::cpu_count() < 2 || ctx.cpus_wanted < 2 {
        return Err(String::from("needs 2 CPUs (--cpus 2)"));
    }
    const N: u32 = 2000;
    let start = [AtomicU64::new(0), AtomicU64::new(0)];
    let end = [AtomicU64::new(0), AtomicU64::new(0)];
    let exits = [AtomicU64::new(0), AtomicU64::new(0)];
    let errors: SpinLock<Vec<String>> = SpinLock::new(Vec::new());
    smp::run_on_cpus(0b11, &|cpu| {
        start[cpu].store(crate::arch::rdtsc(), Ordering::SeqCst);
        match run_exit_loop(N, true, cpu as u16 + 1, Counting::On) {
            Ok((n, _, _)) => exits[cpu].store(n, Ordering::SeqCst),
            Err(e) => errors.lock().push(format!("cpu {cpu}: {e}")),
        }
        end[cpu].store(crate::arch::rdtsc(), Ordering::SeqCst);
    });
    if let Some(e) = errors.lock().first() {
        return Err(e.clone());
    }
    let (e0, e1) = (
        exits[0].load(Ordering::SeqCst),
        exits[1].load(Ordering::SeqCst),
    );
    if e0 != u64::from(N) || e1 != u64::from(N) {
        return Err(format!("CPUID exits: {e0} and {e1}, expected {N} each"));
    }
    let (s0, s1) = (
        start[0].load(Ordering::SeqCst),
        start[1].load(Ordering::SeqCst),
    );
    let (t0, t1) = (end[0].load(Ordering::SeqCst), end[1].load(Ordering::SeqCst));
    if !(s0 < t1 && s1 < t0) {
        return Err(format!(
            "runs did not overlap: cpu0 {s0}..{t0}, cpu1 {s1}..{t1}"
        ));
    }
    Ok(format!("{N} CPUID exits on each of 2 CPUs, overlapping"))
}

const EXIT_NAMES: &[(usize, &str)] = &[
    (0, "EXCEPTION_NMI"),
    (1, "EXTERNAL_INTERRUPT"),
    (10, "CPUID"),
    (12, "HLT"),
    (28, "CR_ACCESS"),
    (30, "IO_INSTRUCTION"),
    (48, "EPT_VIOLATION"),
    (52, "PREEMPTION_TIMER"),
];

fn exit_name(reason: usize) -> String {
    EXIT_NAMES.iter().find(|(r, _)| *r == reason).map_or_else(
        || {
            if reason == BUCKETS - 1 {
                String::from("SETUP")
            } else {
                format!("REASON_{reason}")
            }
        },
        |(_, n)| String::from(*n),
    )
}

fn bench_one(name: &str, n: u32, cpuid: bool) -> Result<(), String> {
    let reason = if cpuid { 10 } else { 30 };
    println!("bench-timer: {name} start");
    let (count, tsc, stats) = run_exit_loop(n, cpuid, 1, Counting::Cycles)?;
    println!("bench-timer: {name} stop {n}");
    if count != u64::from(n) {
        return Err(format!("{name}: {count} exits, expected {n}"));
    }
    let s = stats[reason];
    let per = |v: u64| v as f64 / s.exits.max(1) as f64;
    println!("bench: {name}-exits {} exits", s.exits);
    println!(
        "bench: {name}-vmread-per-exit {:.2} VMREAD/exit",
        per(s.vmreads)
    );
    println!(
        "bench: {name}-vmwrite-per-exit {:.2} VMWRITE/exit",
        per(s.vmwrites)
    );
    println!(
        "bench: {name}-other-vmx-per-exit {:.2} instr/exit",
        per(s.other_vmx)
    );
    println!(
        "bench: {name}-round-trip {:.1} emulated-instructions/exit",
        f64::from(tsc) / f64::from(n)
    );
    println!(
        "bench: {name}-host-handler {:.1} emulated-instructions/exit",
        per(s.host_cycles)
    );
    Ok(())
}

/// 100,000 CPUID exits and 100,000 OUT exits: VMREAD/VMWRITE per exit from rhax-core's
/// counters, emulated instructions per round trip from guest RDTSC deltas (Bochs's TSC counts
/// instructions), wall time from xtask (bench-timer lines).
pub fn bench_exits(_: &Ctx) -> Result<String, String> {
    bench_one("cpuid", 100_000, true)?;
    bench_one("out", 100_000, false)?;
    // The counters' own cost (issue 13): the same loops with counting switched off.
    for (name, cpuid) in [("cpuid", true), ("out", false)] {
        const N: u32 = 20_000;
        let (count, tsc, stats) = run_exit_loop(N, cpuid, 1, Counting::Off)?;
        let counted: u64 = stats.iter().map(|s| s.exits + s.vmreads + s.vmwrites).sum();
        if count != u64::from(N) || counted != 0 {
            return Err(format!(
                "{name} with counting off: {count} exits, {counted} counted"
            ));
        }
        println!(
            "bench: {name}-round-trip-counting-off {:.1} emulated-instructions/exit",
            f64::from(tsc) / f64::from(N)
        );
    }
    Ok(String::from("see bench: lines"))
}

/// The demo guest: 1,000 CPUID and 1,000 OUT exits plus the real-mode guest, then the
/// per-exit-reason statistics (`exit-stats: REASON EXITS VMREADS VMWRITES`).
pub fn demo(ctx: &Ctx) -> Result<String, String> {
    real_mode_guest(ctx)?;
    let mut total = [ExitCounters::default(); BUCKETS];
    for cpuid in [true, false] {
        let (_, _, s) = run_exit_loop(1000, cpuid, 1, Counting::On)?;
        for (t, s) in total.iter_mut().zip(s.iter()) {
            t.exits += s.exits;
            t.vmreads += s.vmreads;
            t.vmwrites += s.vmwrites;
        }
    }
    for (reason, s) in total.iter().enumerate() {
        if s.exits > 0 || s.vmreads + s.vmwrites > 0 {
            println!(
                "exit-stats: {} {} {} {}",
                exit_name(reason),
                s.exits,
                s.vmreads,
                s.vmwrites
            );
        }
    }
    Ok(String::from("demo guest ran"))
}
