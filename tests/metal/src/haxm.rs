//! Scenarios that drive rhax-core's HAXM dispatcher through userlib (`rhax`), in QEMU's call
//! order (`haxm-clients.md` §1-§3), over the in-kernel transport of `hv.rs`.
//!
//! * `haxm-qemu`: the conformance run. CAPABILITY, VERSION, CREATE_VM, open, NOTIFY_QEMU_VERSION,
//!   ADD_RAMBLOCK ×2, SET_RAM (RAM, the isa-bios ROM, the reset-vector ROM page), VCPU_CREATE,
//!   open, SETUP_TUNNEL, SET_REGS/SET_FPU/SET_MSRS (QEMU's reset state), then RUN from the reset
//!   vector: port OUT, IN, `rep outsb`, a 16-bit OUT, an MMIO store and load in the VGA hole,
//!   a write to ROM, `sti; hlt` then an injected interrupt through the IVT, an interrupt window
//!   after `cli ... sti`, the end. Every exit's fields and the registers (GET_REGS) checked.
//! * `haxm-pmode`, `haxm-long`: protected-mode and long-mode guests set up with SET_REGS (and
//!   EFER through SET_MSRS), GDT and page tables in guest RAM, MMIO through FAST_MMIO.
//! * `haxm-smp`: two vCPUs of one VM on two CPUs while the BSP unmaps and remaps a page both
//!   read (MMIO exits while unmapped, the new RAM contents afterwards).
//! * `haxm-bad-input`: invalid IOCTLs answered with HAXM's statuses; the VM runs afterwards.
//! * `bench-haxm`: VMREAD/VMWRITE per exit through the full RUN path (ext stats IOCTL).
//!
//! Guest RAM is kernel pages registered as "user" memory (identity-mapped). Guests are
//! hand-assembled with every instruction commented.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rhax::api::{
    CapabilityFeatures, FxLayout, IoDirection, MmioDirection, RamFlags, SegmentDesc, VcpuState,
    VmxMsr,
};
use rhax::{Exit, System, Transport, Vcpu, Vm};

use crate::hv::{KernelTransport, Shell};
use crate::scenarios::Ctx;
use crate::{mm, println, smp};

pub(crate) type V<'a> = Vcpu<KernelTransport<'a>>;
pub(crate) type R<T> = Result<T, String>;

pub(crate) fn e(what: &str) -> impl Fn(rhax::Error) -> String + '_ {
    move |err| format!("{what}: {err:?}")
}

/// Kernel pages given to the VM as a RAM block ("user" memory, identity-mapped).
pub(crate) struct Ram {
    pub(crate) addr: u64,
    pages: u64,
}

impl Ram {
    pub(crate) fn new(bytes: u64) -> R<Ram> {
        let pages = bytes.div_ceil(mm::PAGE);
        let addr = mm::alloc_pages(pages, mm::PAGE).ok_or("no memory for guest RAM")?;
        Ok(Ram { addr, pages })
    }

    /// As [`Ram::new`], filled with zeros.
    pub(crate) fn zeroed(bytes: u64) -> R<Ram> {
        let ram = Ram::new(bytes)?;
        ram.write(0, &vec![0u8; ram.len() as usize]);
        Ok(ram)
    }

    pub(crate) fn len(&self) -> u64 {
        self.pages * mm::PAGE
    }

    pub(crate) fn write(&self, off: u64, bytes: &[u8]) {
        assert!(off + bytes.len() as u64 <= self.len());
        // SAFETY: inside this block (asserted); the guest may run concurrently only in
        // haxm-smp, where the harness writes a page the guest cannot see (unmapped).
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.addr + off) as *mut u8,
                bytes.len(),
            )
        }
    }

    pub(crate) fn read(&self, off: u64, len: usize) -> Vec<u8> {
        assert!(off + len as u64 <= self.len());
        let mut v = vec![0u8; len];
        // SAFETY: inside this block (asserted).
        unsafe {
            core::ptr::copy_nonoverlapping((self.addr + off) as *const u8, v.as_mut_ptr(), len)
        };
        v
    }

    fn u16(&self, off: u64) -> u16 {
        let b = self.read(off, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub(crate) fn u32(&self, off: u64) -> u32 {
        let b = self.read(off, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn u64(&self, off: u64) -> u64 {
        u64::from(self.u32(off)) | u64::from(self.u32(off + 4)) << 32
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        mm::free_pages(self.addr, self.pages);
    }
}

/// A tiny assembler: bytes plus named offsets.
struct Asm {
    base: u64,
    code: Vec<u8>,
    marks: Vec<(&'static str, u64)>,
}

impl Asm {
    fn new(base: u64) -> Asm {
        Asm {
            base,
            code: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// Appends one instruction.
    fn i(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    /// Names the address of the next instruction.
    fn at(&mut self, name: &'static str) -> &mut Self {
        self.marks.push((name, self.base + self.code.len() as u64));
        self
    }

    fn addr(&self, name: &str) -> u64 {
        self.marks
            .iter()
            .find(|m| m.0 == name)
            .map_or(u64::MAX, |m| m.1)
    }
}

/// What one RUN returned, copied out of the borrowed [`Exit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Io {
        dir: IoDirection,
        size: u8,
        count: u16,
        port: u16,
        df: bool,
        string: bool,
        data: Vec<u8>,
    },
    Mmio {
        gpa: u64,
        size: u8,
        dir: MmioDirection,
        value: u64,
    },
    Hlt,
    Interrupt,
    Other(String),
}

/// RUN once; an IN gets `answer` in the IO buffer, an MMIO read `answer` as its value.
pub(crate) fn step(v: &mut V<'_>, answer: u64) -> R<Ev> {
    Ok(match v.run().map_err(e("RUN"))? {
        Exit::Io {
            direction,
            size,
            count,
            port,
            df,
            string,
            data,
        } => {
            if direction == IoDirection::In {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = (answer >> (8 * (i % 8))) as u8;
                }
            }
            Ev::Io {
                dir: direction,
                size,
                count,
                port,
                df,
                string,
                data: data.to_vec(),
            }
        }
        Exit::FastMmio(mut m) => {
            if m.direction == MmioDirection::Read {
                m.complete_read(answer).map_err(e("complete_read"))?;
            }
            Ev::Mmio {
                gpa: m.gpa,
                size: m.size,
                dir: m.direction,
                value: if m.direction == MmioDirection::Write {
                    m.write_data()
                } else {
                    0
                },
            }
        }
        Exit::Hlt => Ev::Hlt,
        Exit::Interrupt => Ev::Interrupt,
        other => Ev::Other(format!("{other:?}")),
    })
}

/// The kind of exit one RUN of a bench loop returned ([`BenchLoop::run`]): what a VMM's
/// dispatch looks at, with nothing copied out of the tunnel or the IO buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BenchExit {
    Io,
    Mmio,
    Hlt,
    Interrupt,
}

/// The user side of a bench loop, served the way a VMM's RUN loop serves it (no allocation,
/// no copy of the exit: [`step`]'s `Ev` is for the conformance scenarios' comparisons), and
/// its own share of the round trip, in emulated instructions (Bochs's TSC counts them, so
/// RDTSC measures them; the RDTSCs are included): the harness between RUNs (`handler`) and
/// everything outside the dispatcher (`user`: the handler, userlib's RUN call and exit
/// decoding, the in-kernel transport's own code; `hv::DISPATCH_TSC` measures the rest).
///
/// Measuring costs ~35 instructions per round trip (the RDTSCs and their bookkeeping here and
/// in the transport), so a bench measures the round trip in one pass ([`BenchLoop::new`]) and
/// the share in another ([`BenchLoop::measuring`]).
#[derive(Default)]
pub(crate) struct BenchLoop {
    /// Whether the user side's share is measured.
    measure: bool,
    /// TSC when the last RUN returned.
    returned: Option<u64>,
    /// Instructions between a RUN's return and the next RUN call, in all.
    pub(crate) handler: u64,
    /// Instructions on the user side (everything but the dispatcher and the guest), in all.
    pub(crate) user: u64,
}

impl Drop for BenchLoop {
    fn drop(&mut self) {
        if self.measure {
            crate::hv::MEASURE_DISPATCH.store(false, Ordering::Relaxed);
        }
    }
}

impl BenchLoop {
    /// A loop that does not measure the user side (the round trip's own pass).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A loop that measures the user side's share (`handler`, `user`).
    pub(crate) fn measuring() -> Self {
        crate::hv::MEASURE_DISPATCH.store(true, Ordering::Relaxed);
        Self {
            measure: true,
            ..Self::default()
        }
    }

    /// RUN once; an IN gets `answer` in its bytes of the IO buffer, an MMIO read `answer`.
    pub(crate) fn run(&mut self, v: &mut V<'_>, answer: u64) -> R<BenchExit> {
        if !self.measure {
            let exit = v.run().map_err(e("RUN"))?;
            return Self::serve(exit, answer);
        }
        let call = crate::arch::rdtsc();
        if let Some(r) = self.returned {
            self.handler += call.wrapping_sub(r);
            self.user += call.wrapping_sub(r);
        }
        let kernel = crate::hv::DISPATCH_TSC.load(Ordering::Relaxed);
        let exit = v.run().map_err(e("RUN"))?;
        let returned = crate::arch::rdtsc();
        let in_kernel = crate::hv::DISPATCH_TSC
            .load(Ordering::Relaxed)
            .wrapping_sub(kernel);
        self.user += returned.wrapping_sub(call).wrapping_sub(in_kernel);
        self.returned = Some(returned);
        Self::serve(exit, answer)
    }

    /// The user side's answer to one exit.
    #[inline(always)]
    fn serve(exit: Exit<'_>, answer: u64) -> R<BenchExit> {
        Ok(match exit {
            Exit::Io {
                direction, data, ..
            } => {
                if direction == IoDirection::In {
                    // At most 64 bytes (IOS_MAX_BUFFER): the answer's bytes, repeated.
                    let bytes = answer.to_le_bytes();
                    for chunk in data.chunks_mut(8) {
                        chunk.copy_from_slice(&bytes[..chunk.len()]);
                    }
                }
                BenchExit::Io
            }
            Exit::FastMmio(mut m) => {
                if m.direction == MmioDirection::Read {
                    m.complete_read(answer).map_err(e("complete_read"))?;
                }
                BenchExit::Mmio
            }
            Exit::Hlt => BenchExit::Hlt,
            Exit::Interrupt => BenchExit::Interrupt,
            other => return Err(format!("unexpected exit {other:?}")),
        })
    }
}

/// RUN until an exit other than INTERRUPT (a host interrupt or the preemption timer may cut
/// any run short; QEMU simply runs again).
pub(crate) fn next(v: &mut V<'_>, answer: u64) -> R<Ev> {
    for _ in 0..1000 {
        match step(v, answer)? {
            Ev::Interrupt => {}
            ev => return Ok(ev),
        }
    }
    Err(String::from("1000 INTERRUPT exits in a row"))
}

pub(crate) fn io_out(port: u16, size: u8, data: &[u8]) -> Ev {
    Ev::Io {
        dir: IoDirection::Out,
        size,
        count: 1,
        port,
        df: false,
        string: false,
        data: data.to_vec(),
    }
}

pub(crate) fn expect(what: &str, got: Ev, want: Ev) -> R<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: exit {got:?}, expected {want:?}"))
    }
}

/// Checks CS:IP (as CS base + IP), and the named 64-bit registers.
fn check_regs(v: &V<'_>, what: &str, rip: u64, gprs: &[(usize, u64, u64)]) -> R<VcpuState> {
    let s = v.get_regs().map_err(e("GET_REGS"))?;
    let lin = s.cs.base + s.rip;
    if lin != rip {
        return Err(format!(
            "{what}: CS {:#x} base {:#x} RIP {:#x} (linear {lin:#x}), expected linear {rip:#x}",
            s.cs.selector, s.cs.base, s.rip
        ));
    }
    for &(i, mask, want) in gprs {
        if s.regs[i] & mask != want {
            return Err(format!(
                "{what}: GPR{i} = {:#x}, expected {want:#x} under mask {mask:#x}",
                s.regs[i]
            ));
        }
    }
    Ok(s)
}

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSP: usize = 4;
const RSI: usize = 6;

/// The state QEMU's `x86_cpu_reset` + `hax_set_registers` send (`haxm-clients.md` §3.5):
/// zeros, then the reset values; DRs, EFER, SYSENTER, activity and interruptibility left 0.
pub(crate) fn qemu_reset_state() -> VcpuState {
    let mut s = VcpuState::default();
    s.regs[RDX] = 0x600; // EDX = CPUID version at reset
    s.rip = 0xfff0;
    s.rflags = 2;
    // VMX access rights: type | S << 4 | P << 7 (SDM Vol. 3C Table 25-2).
    s.cs = SegmentDesc::new(0xf000, 0xffff_0000, 0xffff, 0x9b);
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = SegmentDesc::new(0, 0, 0xffff, 0x93);
    }
    s.ldt = SegmentDesc::new(0, 0, 0xffff, 0x82);
    s.tr = SegmentDesc::new(0, 0, 0xffff, 0x8b);
    s.gdt = SegmentDesc::new(0, 0, 0xffff, 0);
    s.idt = SegmentDesc::new(0, 0, 0xffff, 0);
    s.cr0 = 0x6000_0010; // CD | NW | ET
    s
}

/// QEMU's reset state moved to CS = 0, IP = `ip`.
pub(crate) fn real_mode_at(ip: u64) -> VcpuState {
    let mut s = qemu_reset_state();
    s.cs = SegmentDesc::new(0, 0, 0xffff, 0x9b);
    s.rip = ip;
    s
}

/// The FXSAVE image QEMU sends at reset: FCW 0x37F, MXCSR 0x1F80, everything else 0.
fn qemu_reset_fpu() -> FxLayout {
    FxLayout {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..FxLayout::default()
    }
}

/// The ten MSRs an x86-64 QEMU syncs, all 0 at reset (`haxm-clients.md` §3.5).
const QEMU_MSRS: [u64; 10] = [
    0x174,
    0x175,
    0x176,
    0x10,
    0xC000_0080,
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084,
    0xC000_0102,
];

pub(crate) fn qemu_msrs() -> Vec<VmxMsr> {
    QEMU_MSRS
        .iter()
        .map(|&entry| VmxMsr { entry, value: 0 })
        .collect()
}

/// CAPABILITY, VERSION, CREATE_VM (+open), NOTIFY_QEMU_VERSION: QEMU's `hax_init`.
pub(crate) fn qemu_init<'a>(sys: &System<KernelTransport<'a>>) -> R<Vm<KernelTransport<'a>>> {
    let caps = sys.working_capability().map_err(e("CAPABILITY"))?;
    let f = caps
        .features()
        .ok_or_else(|| format!("CAPABILITY: no feature word in {caps:?}"))?;
    // QEMU refuses a driver without unrestricted guest and uses 64-bit ramblocks if offered.
    if !f.contains(CapabilityFeatures::UG | CapabilityFeatures::RAMBLOCK_64BIT) {
        return Err(format!(
            "CAPABILITY features {f:?}: no UG or 64-bit ramblock"
        ));
    }
    let v = sys.check_version().map_err(e("VERSION"))?;
    if (v.compat_version, v.cur_version) != (1, 4) {
        return Err(format!("VERSION {v:?}, expected compat 1 cur 4 (HAXM's)"));
    }
    let vm = sys.create_vm().map_err(e("CREATE_VM"))?;
    vm.notify_qemu_version().map_err(e("NOTIFY_QEMU_VERSION"))?;
    Ok(vm)
}

/// SET_REGS, SET_FPU, SET_MSRS (QEMU's `hax_arch_set_registers` order).
pub(crate) fn qemu_set(v: &V<'_>, s: &VcpuState, msrs: &[VmxMsr]) -> R<()> {
    v.set_regs(s).map_err(e("SET_REGS"))?;
    v.set_fpu(&qemu_reset_fpu()).map_err(e("SET_FPU"))?;
    let done = v.set_msrs(msrs).map_err(e("SET_MSRS"))?;
    if done != msrs.len() {
        return Err(format!("SET_MSRS done {done} of {}", msrs.len()));
    }
    Ok(())
}

/// The `haxm-qemu` guest: real mode from the reset vector (ROM), code at F000:E000, the
/// interrupt handler at F000:E800, data in RAM at 0x600.. and the stack below 0x8000.
fn qemu_guest() -> (Asm, Asm) {
    let mut a = Asm::new(0xF_E000);
    a.i(&[0xFA]) // cli
        .i(&[0x31, 0xC0]) // xor ax, ax
        .i(&[0x8E, 0xD8]) // mov ds, ax
        .i(&[0x8E, 0xD0]) // mov ss, ax
        .i(&[0xBC, 0x00, 0x80]) // mov sp, 0x8000
        .i(&[0xC7, 0x06, 0x80, 0x00, 0x00, 0xE8]) // mov word [0x80], 0xE800 (IVT 0x20)
        .i(&[0xC7, 0x06, 0x82, 0x00, 0x00, 0xF0]) // mov word [0x82], 0xF000
        .i(&[0xC7, 0x06, 0x84, 0x00, 0x00, 0xE8]) // mov word [0x84], 0xE800 (IVT 0x21)
        .i(&[0xC7, 0x06, 0x86, 0x00, 0x00, 0xF0]) // mov word [0x86], 0xF000
        .i(&[0xB0, 0x42]) // mov al, 0x42
        .at("out1")
        .i(&[0xE6, 0x80]) // out 0x80, al
        .i(&[0xBA, 0x71, 0x00]) // mov dx, 0x71
        .at("in1")
        .i(&[0xEC]) // in al, dx
        .at("after_in")
        .i(&[0xA2, 0x00, 0x06]) // mov [0x600], al
        .i(&[0xBE, 0x10, 0x06]) // mov si, 0x610
        .i(&[0xB9, 0x05, 0x00]) // mov cx, 5
        .i(&[0xBA, 0xE9, 0x00]) // mov dx, 0xE9
        .i(&[0xFC]) // cld
        .at("outs")
        .i(&[0xF3, 0x6E]) // rep outsb
        .at("after_outs")
        .i(&[0xB8, 0xEF, 0xBE]) // mov ax, 0xBEEF
        .i(&[0xEF]) // out dx, ax
        .at("after_out16")
        .i(&[0xB8, 0x00, 0xA0]) // mov ax, 0xA000
        .i(&[0x8E, 0xC0]) // mov es, ax
        .i(&[0xBB, 0x34, 0x12]) // mov bx, 0x1234
        .at("mmio_store")
        .i(&[0x26, 0x89, 0x1E, 0x10, 0x00]) // mov [es:0x10], bx
        .at("mmio_load")
        .i(&[0x26, 0x8B, 0x06, 0x20, 0x00]) // mov ax, [es:0x20]
        .at("after_load")
        .i(&[0xA3, 0x02, 0x06]) // mov [0x602], ax
        .at("rom_write")
        .i(&[0x2E, 0x88, 0x1E, 0x00, 0xF0]) // mov [cs:0xF000], bl
        .at("after_rom_write")
        .i(&[0xFB]) // sti
        .i(&[0xF4]) // hlt
        .at("after_hlt")
        .i(&[0xFA]) // cli
        .i(&[0xE6, 0x82]) // out 0x82, al
        .at("after_cli_out")
        .i(&[0xFB]) // sti
        .i(&[0x90]) // nop (STI shadow)
        .at("window")
        .i(&[0x90]) // nop
        .i(&[0xA0, 0x04, 0x06]) // mov al, [0x604]
        .i(&[0xE6, 0x83]) // out 0x83, al
        .at("after_end_out")
        .i(&[0xFA]) // cli
        .i(&[0xF4]) // hlt
        .at("end");
    let mut h = Asm::new(0xF_E800);
    h.i(&[0x50]) // push ax
        .i(&[0xFE, 0x06, 0x04, 0x06]) // inc byte [0x604]
        .i(&[0xA0, 0x04, 0x06]) // mov al, [0x604]
        .i(&[0xE6, 0x81]) // out 0x81, al
        .at("handler_after_out")
        .i(&[0x58]) // pop ax
        .i(&[0xCF]); // iret
    (a, h)
}

/// The conformance scenario (see the module documentation).
pub fn haxm_qemu(_: &Ctx) -> R<String> {
    // Declared first, dropped last: the VM unpins it when it goes.
    let ram = Ram::new(0x1_0000)?;
    let rom = Ram::new(0x1_0000)?;
    let (main, handler) = qemu_guest();
    rom.write(0xE000, &main.code);
    rom.write(0xE800, &handler.code);
    rom.write(0xFFF0, &[0xEA, 0x00, 0xE0, 0x00, 0xF0]); // jmp far F000:E000
    ram.write(0x610, b"HELLO");
    let rom_before = rom.read(0, 0x1_0000);
    let shell = Shell::new()?;
    let sys = System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: a kernel page block owned by this function until after the VM is gone (`ram`
    // drops last), and no Rust object lives in it.
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK pc.ram"))?;
    // SAFETY: as above, for `rom`.
    unsafe { vm.add_ramblock(rom.addr, rom.len()) }.map_err(e("ADD_RAMBLOCK bios"))?;
    vm.set_ram(0, 0x1_0000, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM RAM"))?;
    vm.set_ram(0xF_0000, 0x1_0000, rom.addr, RamFlags::ROM)
        .map_err(e("SET_RAM isa-bios"))?;
    vm.set_ram(0xFFFF_F000, 0x1000, rom.addr + 0xF000, RamFlags::ROM)
        .map_err(e("SET_RAM reset vector"))?;
    let mut v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    let t = v.tunnel_info();
    if t.size < 48 || v.setup_tunnel().map_err(e("SETUP_TUNNEL again"))? != t {
        return Err(format!("SETUP_TUNNEL {t:?} not stable or too small"));
    }
    // HAXM's power-on state before anything is set (`haxm-abi.md` §2, VCPU_CREATE).
    let power_on = v.get_regs().map_err(e("GET_REGS"))?;
    if power_on.cs.base + power_on.rip != 0xFFFF_FFF0 || power_on.cr0 & 1 != 0 {
        return Err(format!(
            "power-on CS base {:#x} RIP {:#x} CR0 {:#x}",
            power_on.cs.base, power_on.rip, power_on.cr0
        ));
    }
    qemu_set(&v, &qemu_reset_state(), &qemu_msrs())?;
    let a = |n: &str| main.addr(n);

    // 1. OUT 0x80 of AL = 0x42; RIP past it.
    expect("OUT", next(&mut v, 0)?, io_out(0x80, 1, &[0x42]))?;
    check_regs(&v, "after OUT", a("in1") - 3, &[(RAX, 0xff, 0x42)])?;
    // 2. IN from 0x71: RIP already past the IN, AL not yet written (completed at next RUN).
    let ev = next(&mut v, 0x5A)?;
    expect(
        "IN",
        ev,
        Ev::Io {
            dir: IoDirection::In,
            size: 1,
            count: 1,
            port: 0x71,
            df: false,
            string: false,
            data: vec![0x5A],
        },
    )?;
    check_regs(&v, "IN pending", a("after_in"), &[(RAX, 0xff, 0x42)])?;
    // 3. rep outsb of "HELLO" to 0xE9: one exit, RCX/RSI/RIP updated by the driver.
    expect(
        "rep outsb",
        next(&mut v, 0)?,
        Ev::Io {
            dir: IoDirection::Out,
            size: 1,
            count: 5,
            port: 0xE9,
            df: false,
            string: true,
            data: b"HELLO".to_vec(),
        },
    )?;
    check_regs(
        &v,
        "after rep outsb",
        a("after_outs"),
        &[(RAX, 0xff, 0x5A), (RCX, 0xffff, 0), (RSI, 0xffff, 0x615)],
    )?;
    // 4. OUT DX, AX: a 16-bit OUT.
    expect("OUT16", next(&mut v, 0)?, io_out(0xE9, 2, &[0xEF, 0xBE]))?;
    check_regs(
        &v,
        "after OUT16",
        a("after_out16"),
        &[(RAX, 0xffff, 0xBEEF)],
    )?;
    // 5. MMIO store and load in the VGA hole (unmapped): FAST_MMIO with gpa, size, direction.
    let store = Ev::Mmio {
        gpa: 0xA_0010,
        size: 2,
        dir: MmioDirection::Write,
        value: 0x1234,
    };
    expect("MMIO store", next(&mut v, 0)?, store)?;
    check_regs(&v, "after MMIO store", a("mmio_load"), &[])?;
    let load = Ev::Mmio {
        gpa: 0xA_0020,
        size: 2,
        dir: MmioDirection::Read,
        value: 0,
    };
    expect("MMIO load", next(&mut v, 0x5678)?, load)?;
    // The load completes at the next RUN: RIP still at the MOV, AX untouched.
    check_regs(
        &v,
        "MMIO load pending",
        a("mmio_load"),
        &[(RAX, 0xffff, 0xA000)],
    )?;
    // 6. A write to ROM reaches user space as an MMIO write; the ROM is unchanged.
    let rom_w = Ev::Mmio {
        gpa: 0xF_F000,
        size: 1,
        dir: MmioDirection::Write,
        value: 0x34,
    };
    expect("ROM write", next(&mut v, 0)?, rom_w)?;
    check_regs(
        &v,
        "after ROM write",
        a("after_rom_write"),
        &[(RAX, 0xffff, 0x5678)],
    )?;
    // 7. sti; hlt: HLT with RIP past it, ready for injection; inject 0x20.
    expect("HLT", next(&mut v, 0)?, Ev::Hlt)?;
    let s = check_regs(&v, "after HLT", a("after_hlt"), &[])?;
    if s.rflags & 0x200 == 0 || !v.ready_for_interrupt_injection() {
        return Err(format!(
            "after sti; hlt: RFLAGS {:#x}, ready_for_interrupt_injection {}",
            s.rflags,
            v.ready_for_interrupt_injection()
        ));
    }
    v.interrupt(0x20).map_err(e("INTERRUPT"))?;
    v.request_interrupt_window(false);
    // The handler runs: IVT entry F000:E800, frame of 3 words below SP, IF cleared.
    expect("handler OUT", next(&mut v, 0)?, io_out(0x81, 1, &[1]))?;
    let s = check_regs(
        &v,
        "in handler",
        handler.addr("handler_after_out"),
        &[(RSP, 0xffff, 0x8000 - 8)],
    )?;
    let frame = (ram.u16(0x7FFA), ram.u16(0x7FFC), ram.u16(0x7FFE));
    if s.cs.selector != 0xF000
        || s.rflags & 0x200 != 0
        || frame.0 as u64 != a("after_hlt") - 0xF_0000
        || frame.1 != 0xF000
        || frame.2 & 0x200 == 0
    {
        return Err(format!(
            "interrupt frame (IP, CS, FLAGS) {frame:x?}, CS {:#x}, RFLAGS {:#x}",
            s.cs.selector, s.rflags
        ));
    }
    // 8. Back from IRET (the handler restored AX); `cli; out`: with IF = 0 the driver is not
    // ready; ask for a window.
    expect("OUT after cli", next(&mut v, 0)?, io_out(0x82, 1, &[0x78]))?;
    check_regs(&v, "after cli; out", a("after_cli_out"), &[])?;
    if v.ready_for_interrupt_injection() {
        return Err(String::from("ready_for_interrupt_injection with IF = 0"));
    }
    v.request_interrupt_window(true);
    // `sti; nop`: the window opens after the STI shadow: INTERRUPT, then ready.
    let ev = step(&mut v, 0)?;
    expect("interrupt window", ev, Ev::Interrupt)?;
    check_regs(&v, "window open", a("window"), &[])?;
    if !v.ready_for_interrupt_injection() {
        return Err(String::from(
            "window open but not ready_for_interrupt_injection",
        ));
    }
    v.interrupt(0x21).map_err(e("INTERRUPT"))?;
    v.request_interrupt_window(false);
    expect("handler OUT (2)", next(&mut v, 0)?, io_out(0x81, 1, &[2]))?;
    // 9. The end.
    expect("end OUT", next(&mut v, 0)?, io_out(0x83, 1, &[2]))?;
    check_regs(&v, "end OUT", a("after_end_out"), &[])?;
    expect("end HLT", next(&mut v, 0)?, Ev::Hlt)?;
    check_regs(&v, "end", a("end"), &[(RBX, 0xffff, 0x1234)])?;
    // Memory the guest wrote, the ROM it could not, and the state QEMU reads back.
    if ram.read(0x600, 1)[0] != 0x5A || ram.u16(0x602) != 0x5678 || ram.read(0x604, 1)[0] != 2 {
        return Err(format!("guest data {:x?}", ram.read(0x600, 6)));
    }
    if rom.read(0, 0x1_0000) != rom_before {
        return Err(String::from("the guest changed its ROM"));
    }
    let fpu = v.get_fpu().map_err(e("GET_FPU"))?;
    if fpu.fcw != 0x37f || fpu.mxcsr != 0x1f80 {
        return Err(format!("GET_FPU fcw {:#x} mxcsr {:#x}", fpu.fcw, fpu.mxcsr));
    }
    let mut msrs = qemu_msrs();
    let done = v.get_msrs(&mut msrs).map_err(e("GET_MSRS"))?;
    if done != 10 || msrs.iter().any(|m| m.entry == 0xC000_0080 && m.value != 0) {
        return Err(format!("GET_MSRS done {done}: {msrs:x?}"));
    }
    let stats = v.stats().map_err(e("ext stats"))?;
    Ok(format!(
        "14 exits checked, {} RUNs, {} VM exits",
        stats.runs, stats.total.exits
    ))
}

/// A VM with `ram` at GPA 0 (one block, one mapping) and vCPU 0, in QEMU's order.
pub(crate) fn simple_vm<'a>(
    shell: &'a Shell,
    ram: &Ram,
) -> R<(System<KernelTransport<'a>>, Vm<KernelTransport<'a>>, V<'a>)> {
    let sys = System::open(shell.transport()).map_err(e("open \\\\.\\HAX"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: `ram` is kernel pages that outlive the VM (the callers declare it first).
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, ram.len() as u32, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    let v = vm.create_vcpu(0).map_err(e("VCPU_CREATE"))?;
    Ok((sys, vm, v))
}

/// Flat 4-GiB segments: CS with access rights `code_ar`, data 0xC093 (selector 0x10).
pub(crate) fn flat(s: &mut VcpuState, code_ar: u32) {
    s.cs = SegmentDesc::new(0x08, 0, 0xffff_ffff, code_ar);
    for seg in [&mut s.ds, &mut s.es, &mut s.ss, &mut s.fs, &mut s.gs] {
        *seg = SegmentDesc::new(0x10, 0, 0xffff_ffff, 0xC093);
    }
    s.gdt = SegmentDesc::new(0, 0x500, 0x17, 0);
    s.rip = 0x1000;
    s.regs[RSP] = 0x8000;
    s.rflags = 2;
}

/// GDT at 0x500: null, flat code (0x08), flat data (0x10).
pub(crate) fn write_gdt(ram: &Ram, code: u64) {
    ram.write(0x500, &0u64.to_le_bytes());
    ram.write(0x508, &code.to_le_bytes());
    ram.write(0x510, &0x00CF_9300_0000_FFFFu64.to_le_bytes());
}

/// 32-bit protected mode (paging off) set up with SET_REGS: reloads DS from its GDT, stores,
/// OUTs a dword, an MMIO store and load at 0xFEC00010/0xFEC00020, halts.
pub fn haxm_pmode(_: &Ctx) -> R<String> {
    let ram = Ram::new(0x1_0000)?;
    let mut a = Asm::new(0x1000);
    a.i(&[0xB8, 0x10, 0x00, 0x00, 0x00]) // mov eax, 0x10
        .i(&[0x8E, 0xD8]) // mov ds, ax (descriptor from the guest's GDT)
        .i(&[0xB8, 0xEF, 0xBE, 0xAD, 0xDE]) // mov eax, 0xDEADBEEF
        .i(&[0xA3, 0x00, 0x30, 0x00, 0x00]) // mov [0x3000], eax
        .i(&[0xE7, 0x84]) // out 0x84, eax
        .at("after_out")
        .i(&[0xBB, 0x10, 0x00, 0xC0, 0xFE]) // mov ebx, 0xFEC00010
        .i(&[0x89, 0x03]) // mov [ebx], eax
        .at("load")
        .i(&[0x8B, 0x4B, 0x10]) // mov ecx, [ebx+0x10]
        .i(&[0x89, 0x0D, 0x04, 0x30, 0x00, 0x00]) // mov [0x3004], ecx
        .i(&[0xF4]) // hlt
        .at("end");
    ram.write(0x1000, &a.code);
    write_gdt(&ram, 0x00CF_9B00_0000_FFFF);
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    let mut s = qemu_reset_state();
    flat(&mut s, 0xC09B);
    s.cr0 = 0x11; // PE | ET
    qemu_set(&v, &s, &qemu_msrs())?;
    expect(
        "OUT dword",
        next(&mut v, 0)?,
        io_out(0x84, 4, &0xDEAD_BEEFu32.to_le_bytes()),
    )?;
    let st = check_regs(&v, "after OUT", a.addr("after_out"), &[])?;
    if st.ds.selector != 0x10 || st.cr0 & 1 == 0 || st.cs.ar & 0x4000 == 0 {
        return Err(format!(
            "DS {:#x}, CR0 {:#x}, CS ar {:#x}",
            st.ds.selector, st.cr0, st.cs.ar
        ));
    }
    let store = Ev::Mmio {
        gpa: 0xFEC0_0010,
        size: 4,
        dir: MmioDirection::Write,
        value: 0xDEAD_BEEF,
    };
    expect("MMIO store", next(&mut v, 0)?, store)?;
    let load = Ev::Mmio {
        gpa: 0xFEC0_0020,
        size: 4,
        dir: MmioDirection::Read,
        value: 0,
    };
    expect("MMIO load", next(&mut v, 0xCAFE_F00D)?, load)?;
    check_regs(&v, "load pending", a.addr("load"), &[])?;
    expect("HLT", next(&mut v, 0)?, Ev::Hlt)?;
    check_regs(&v, "end", a.addr("end"), &[(RCX, 0xffff_ffff, 0xCAFE_F00D)])?;
    if ram.u32(0x3000) != 0xDEAD_BEEF || ram.u32(0x3004) != 0xCAFE_F00D {
        return Err(format!("guest data {:x?}", ram.read(0x3000, 8)));
    }
    Ok(String::from(
        "GDT load, OUT dword, MMIO store/load at 0xfec000x0, HLT",
    ))
}

/// 64-bit mode set up with SET_REGS (CR0.PG, CR4.PAE, CR3) and SET_MSRS (EFER.LME|LMA): the
/// guest stores through an alias mapping at 1 GiB and loads 8 bytes by MMIO at 0xD0000000.
pub fn haxm_long(_: &Ctx) -> R<String> {
    const VALUE: u64 = 0x1122_3344_5566_7788;
    const MMIO: u64 = 0x0123_4567_89AB_CDEF;
    let ram = Ram::new(0x2_0000)?;
    let mut a = Asm::new(0x1000);
    a.i(&[0x48, 0xB8])
        .i(&VALUE.to_le_bytes()) // mov rax, VALUE
        .i(&[0x48, 0xBF, 0x00, 0x40, 0x00, 0x40, 0, 0, 0, 0]) // mov rdi, 0x40004000
        .i(&[0x48, 0x89, 0x07]) // mov [rdi], rax
        .i(&[0xE7, 0x84]) // out 0x84, eax
        .i(&[0x48, 0xBE, 0x00, 0x00, 0x00, 0xD0, 0, 0, 0, 0]) // mov rsi, 0xD0000000
        .at("load")
        .i(&[0x48, 0x8B, 0x1E]) // mov rbx, [rsi]
        .i(&[0x48, 0x89, 0x1C, 0x25, 0x08, 0x40, 0x00, 0x00]) // mov [0x4008], rbx
        .i(&[0xF4]) // hlt
        .at("end");
    ram.write(0x1000, &a.code);
    write_gdt(&ram, 0x00AF_9B00_0000_FFFF);
    // PML4 → PDPT; PDPT[0], [1] → PD (identity 2 MiB, aliased at 1 GiB); PDPT[3] → PD2 with
    // a 2-MiB page at 0xD0000000 (P | RW | PS).
    ram.write(0x10000, &(0x11000u64 | 3).to_le_bytes());
    ram.write(0x11000, &(0x12000u64 | 3).to_le_bytes());
    ram.write(0x11008, &(0x12000u64 | 3).to_le_bytes());
    ram.write(0x11018, &(0x13000u64 | 3).to_le_bytes());
    ram.write(0x12000, &0x83u64.to_le_bytes());
    ram.write(0x13000 + 8 * 128, &(0xD000_0000u64 | 0x83).to_le_bytes());
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    let mut s = qemu_reset_state();
    flat(&mut s, 0xA09B); // L = 1, D = 0
    s.cr0 = 0x8000_0011; // PG | ET | PE
    s.cr4 = 0x20; // PAE
    s.cr3 = 0x10000;
    // EFER arrives after CR0/CR4, in SET_MSRS (`haxm-clients.md` §3.5).
    let mut msrs = qemu_msrs();
    for m in &mut msrs {
        if m.entry == 0xC000_0080 {
            m.value = 0x500; // LME | LMA
        }
    }
    qemu_set(&v, &s, &msrs)?;
    expect(
        "OUT",
        next(&mut v, 0)?,
        io_out(0x84, 4, &(VALUE as u32).to_le_bytes()),
    )?;
    let load = Ev::Mmio {
        gpa: 0xD000_0000,
        size: 8,
        dir: MmioDirection::Read,
        value: 0,
    };
    expect("MMIO load", next(&mut v, MMIO)?, load)?;
    check_regs(
        &v,
        "load pending",
        a.addr("load"),
        &[(RAX, u64::MAX, VALUE)],
    )?;
    expect("HLT", next(&mut v, 0)?, Ev::Hlt)?;
    let st = check_regs(&v, "end", a.addr("end"), &[(RBX, u64::MAX, MMIO)])?;
    if st.efer & 0x500 != 0x500 || st.cs.ar & 0x2000 == 0 {
        return Err(format!("EFER {:#x}, CS ar {:#x}", st.efer, st.cs.ar));
    }
    if ram.u64(0x4000) != VALUE || ram.u64(0x4008) != MMIO {
        return Err(format!(
            "[0x4000] {:#x}, [0x4008] {:#x}",
            ram.u64(0x4000),
            ram.u64(0x4008)
        ));
    }
    Ok(String::from(
        "store through an alias at 1 GiB, 8-byte MMIO load at 0xd0000000, HLT",
    ))
}

/// The toggled page of `haxm-smp`.
const SMP_PAGE: u64 = 0x8000;
/// `haxm-smp` state: bit 0 = a change is in progress, bit 1 = unmapped, bits 63:2 = epoch.
static SMP_STATE: AtomicU64 = AtomicU64::new(0);
static SMP_DONE: AtomicBool = AtomicBool::new(false);

/// What one vCPU of `haxm-smp` saw: (RAM reads checked, MMIO exits checked, RUNs).
#[derive(Clone, Copy, Default, Debug)]
struct SmpSeen {
    ram: u64,
    mmio: u64,
    runs: u64,
}

/// The value the page holds in epoch `epoch`.
fn smp_value(epoch: u64) -> u32 {
    0x5A00_0000 | epoch as u32
}

/// Runs one `haxm-smp` vCPU; `between` is called after every exit (the BSP changes the map
/// there). Every RUN that began and ended in one stable state is checked exactly.
fn smp_vcpu(v: &mut V<'_>, mut between: impl FnMut(u64) -> R<bool>) -> R<SmpSeen> {
    let mut seen = SmpSeen::default();
    let mut load_pending = false;
    // After an INTERRUPT exit the guest may have read the page in the previous RUN.
    let mut uncertain = false;
    loop {
        let before = SMP_STATE.load(Ordering::SeqCst);
        let ev = step(v, 0xDEAD_0000)?;
        let after = SMP_STATE.load(Ordering::SeqCst);
        seen.runs += 1;
        let stable = before == after && before & 1 == 0;
        let unmapped = before & 2 != 0;
        match ev {
            Ev::Mmio {
                gpa: SMP_PAGE,
                size: 4,
                dir: MmioDirection::Read,
                ..
            } => {
                if stable && !unmapped {
                    return Err(format!("MMIO exit for a mapped page (state {before:#x})"));
                }
                seen.mmio += u64::from(stable);
                load_pending = true;
            }
            Ev::Io {
                dir: IoDirection::Out,
                port: 0x90,
                size: 4,
                data,
                ..
            } => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                if load_pending {
                    if value != 0xDEAD_0000 {
                        return Err(format!("MMIO completion gave {value:#x}"));
                    }
                } else if stable && !uncertain {
                    if unmapped {
                        return Err(format!(
                            "read {value:#x} from RAM while the page was unmapped"
                        ));
                    }
                    if value != smp_value(before >> 2) {
                        return Err(format!(
                            "read {value:#x}, expected {:#x} (stale translation?)",
                            smp_value(before >> 2)
                        ));
                    }
                    seen.ram += 1;
                }
                load_pending = false;
                uncertain = false;
            }
            Ev::Interrupt => uncertain = true,
            other => return Err(format!("unexpected exit {other:?}")),
        }
        if !between(seen.runs)? {
            return Ok(seen);
        }
    }
}

/// Two vCPUs of one VM on CPUs 0 and 1 read the page at 0x8000 in a loop and OUT what they
/// read; between its own RUNs the BSP unmaps the page (SET_RAM INVALID), writes a new value
/// into the (invisible) RAM, and maps it again, while vCPU 1 keeps running on CPU 1.
pub fn haxm_smp(ctx: &Ctx) -> R<String> {
    if smp::cpu_count() < 2 || ctx.cpus_wanted < 2 {
        return Err(String::from("needs 2 CPUs (--cpus 2)"));
    }
    const TOGGLES: u64 = 8;
    let ram = Ram::new(0x1_0000)?;
    let mut a = Asm::new(0x1000);
    a.at("top")
        .i(&[0x66, 0xA1, 0x00, 0x80]) // mov eax, [0x8000]
        .i(&[0x66, 0xE7, 0x90]) // out 0x90, eax
        .i(&[0xEB, 0xF7]); // jmp top
    ram.write(0x1000, &a.code);
    ram.write(SMP_PAGE, &smp_value(0).to_le_bytes());
    SMP_STATE.store(0, Ordering::SeqCst);
    SMP_DONE.store(false, Ordering::SeqCst);
    let shell = Shell::new()?;
    let sys = System::open(shell.transport()).map_err(e("open"))?;
    let vm = qemu_init(&sys)?;
    // SAFETY: kernel pages that outlive the VM.
    unsafe { vm.add_ramblock(ram.addr, ram.len()) }.map_err(e("ADD_RAMBLOCK"))?;
    vm.set_ram(0, 0x1_0000, ram.addr, RamFlags::empty())
        .map_err(e("SET_RAM"))?;
    let s = real_mode_at(0x1000);
    let results: crate::sync::SpinLock<[Option<R<SmpSeen>>; 2]> =
        crate::sync::SpinLock::new([None, None]);
    let vm_ref = &vm;
    smp::run_on_cpus(0b11, &|cpu| {
        // Each vCPU is created, set up and run on its own CPU, as QEMU's vCPU threads do.
        let r = (|| -> R<SmpSeen> {
            let mut v = vm_ref.create_vcpu(cpu as u32).map_err(e("VCPU_CREATE"))?;
            qemu_set(&v, &s, &qemu_msrs())?;
            if cpu == 1 {
                let r = smp_vcpu(&mut v, |_| Ok(!SMP_DONE.load(Ordering::SeqCst)));
                SMP_DONE.store(true, Ordering::SeqCst);
                return r;
            }
            let mut toggles = 0;
            let r = smp_vcpu(&mut v, |runs| {
                if runs % 40 != 0 {
                    return Ok(true);
                }
                if toggles == TOGGLES {
                    return Ok(false);
                }
                let st = SMP_STATE.load(Ordering::SeqCst);
                let epoch = st >> 2;
                SMP_STATE.store(st | 1, Ordering::SeqCst);
                if st & 2 == 0 {
                    vm_ref.unmap(SMP_PAGE, 0x1000).map_err(e("SET_RAM unmap"))?;
                    SMP_STATE.store(epoch << 2 | 2, Ordering::SeqCst);
                } else {
                    ram.write(SMP_PAGE, &smp_value(epoch + 1).to_le_bytes());
                    vm_ref
                        .set_ram(SMP_PAGE, 0x1000, ram.addr + SMP_PAGE, RamFlags::empty())
                        .map_err(e("SET_RAM remap"))?;
                    SMP_STATE.store((epoch + 1) << 2, Ordering::SeqCst);
                }
                toggles += 1;
                Ok(!SMP_DONE.load(Ordering::SeqCst))
            });
            SMP_DONE.store(true, Ordering::SeqCst);
            if toggles < TOGGLES {
                return Err(format!("only {toggles} map changes before vCPU 1 stopped"));
            }
            r
        })();
        results.lock()[cpu] = Some(r);
    });
    let [r0, r1] = core::mem::take(&mut *results.lock());
    let s0 = r0
        .ok_or("vCPU 0 did not report")?
        .map_err(|e| format!("vCPU 0: {e}"))?;
    let s1 = r1
        .ok_or("vCPU 1 did not report")?
        .map_err(|e| format!("vCPU 1: {e}"))?;
    println!("haxm-smp: vcpu0 {s0:?}, vcpu1 {s1:?}");
    if s0.mmio == 0 || s0.ram == 0 || s1.mmio == 0 || s1.ram == 0 {
        return Err(format!(
            "a vCPU never saw both states: vcpu0 {s0:?}, vcpu1 {s1:?}"
        ));
    }
    Ok(format!(
        "{TOGGLES} map changes; vcpu0 {} RAM / {} MMIO checked, vcpu1 {} / {} on CPU 1",
        s0.ram, s0.mmio, s1.ram, s1.mmio
    ))
}

/// Raw IOCTL through the transport: `(def, input)` on `handle`, with an output buffer of
/// `out_len` bytes. Returns the Win32 error, or `None` on success.
pub(crate) fn raw<T: Transport>(
    t: &T,
    handle: &T::Handle,
    def: &'static rhax::api::IoctlDef,
    input: &[u8],
    out_len: usize,
) -> Option<u32> {
    let code = def.code(t.platform()).unwrap_or(0);
    raw_code(t, handle, def, code, input, out_len)
}

fn raw_code<T: Transport>(
    t: &T,
    handle: &T::Handle,
    def: &'static rhax::api::IoctlDef,
    code: u32,
    input: &[u8],
    out_len: usize,
) -> Option<u32> {
    let mut inb = input.to_vec();
    let mut out = vec![0u8; out_len];
    let buf = match (input.is_empty(), out_len) {
        (true, 0) => rhax::IoctlBuf::None,
        (false, 0) => rhax::IoctlBuf::In(&inb),
        (true, _) => rhax::IoctlBuf::Out(&mut out),
        (false, _) => {
            inb.resize(inb.len().max(out_len), 0);
            rhax::IoctlBuf::InOut(&mut inb)
        }
    };
    match t.ioctl(handle, rhax::IoctlRequest { def, code, buf }) {
        Ok(_) => None,
        Err(rhax::OsError::Win32(w)) => Some(w),
        Err(other) => Some(0x8000_0000 | other_code(other)),
    }
}

fn other_code(e: rhax::OsError) -> u32 {
    match e {
        rhax::OsError::Errno(n) | rhax::OsError::Positive(n) => n as u32,
        _ => 0xffff,
    }
}

/// Invalid IOCTLs through the transport get HAXM's Windows statuses (as Win32 errors: 87
/// INVALID_PARAMETER, 31 GEN_FAILURE, 2 FILE_NOT_FOUND, 5 ACCESS_DENIED, 6 INVALID_HANDLE),
/// and the VM still runs afterwards.
pub fn haxm_bad_input(_: &Ctx) -> R<String> {
    use rhax::api::ioctl as c;
    let ram = Ram::new(0x1_0000)?;
    let mut a = Asm::new(0x1000);
    a.i(&[0xB0, 0x77]) // mov al, 0x77
        .i(&[0xE6, 0x80]) // out 0x80, al
        .i(&[0xF4]); // hlt
    ram.write(0x1000, &a.code);
    let other = Ram::new(0x2000)?;
    let shell = Shell::new()?;
    let t = shell.transport();
    let (sys, vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(0x1000), &qemu_msrs())?;
    let id = vm.id();
    let missing_vm = t.open(rhax::DevicePath::Vm { vm: id + 1 }).err();
    let second_vm_open = t.open(rhax::DevicePath::Vm { vm: id }).err();
    let missing_vcpu = t.open(rhax::DevicePath::Vcpu { vm: id, vcpu: 5 }).err();
    let second_vcpu_open = t.open(rhax::DevicePath::Vcpu { vm: id, vcpu: 0 }).err();
    let sysh = t
        .open(rhax::DevicePath::System)
        .map_err(|e| format!("open system: {e:?}"))?;
    let set_ram = |pa: u64, size: u32, flags: u8, va: u64| {
        let mut b = Vec::new();
        b.extend(pa.to_le_bytes());
        b.extend(size.to_le_bytes());
        b.extend([flags, 0, 0, 0]);
        b.extend(va.to_le_bytes());
        b
    };
    // A VM closed without vCPUs dies at once: its id cannot be opened and is reused first.
    let vm_b = sys.create_vm().map_err(e("CREATE_VM 2"))?;
    let vb_id = vm_b.id();
    drop(vm_b);
    let reopen = t.open(rhax::DevicePath::Vm { vm: vb_id }).err();
    // A VM whose raw handle the checks below use (userlib keeps its handles private).
    let mut idb = [0u8; 4];
    let req = rhax::IoctlRequest {
        def: &c::HAX_IOCTL_CREATE_VM,
        code: c::HAX_IOCTL_CREATE_VM.code(t.platform()).unwrap_or(0),
        buf: rhax::IoctlBuf::Out(&mut idb),
    };
    t.ioctl(&sysh, req)
        .map_err(|e| format!("CREATE_VM raw: {e:?}"))?;
    let id2 = u32::from_le_bytes(idb);
    if id2 != vb_id {
        return Err(format!(
            "CREATE_VM gave id {id2} after {vb_id} was freed (lowest free first)"
        ));
    }
    let vmh2 = t
        .open(rhax::DevicePath::Vm { vm: id2 })
        .map_err(|e| format!("open VM {id2}: {e:?}"))?;
    // `other` is kernel memory that outlives the VM (declared before the shell).
    let block = {
        let mut b = Vec::new();
        b.extend(other.addr.to_le_bytes());
        b.extend(other.len().to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b
    };
    let checks: Vec<(&str, Option<u32>, Option<u32>)> = vec![
        (
            "open VM that does not exist",
            missing_vm.map(code_of),
            Some(2),
        ),
        ("second open of a VM", second_vm_open.map(code_of), Some(5)),
        (
            "open vCPU that does not exist",
            missing_vcpu.map(code_of),
            Some(2),
        ),
        (
            "second open of a vCPU",
            second_vcpu_open.map(code_of),
            Some(5),
        ),
        ("open a closed VM's id", reopen.map(code_of), Some(2)),
        (
            "ADD_RAMBLOCK",
            raw(&t, &vmh2, &c::HAX_VM_IOCTL_ADD_RAMBLOCK, &block, 0),
            None,
        ),
        (
            "ADD_RAMBLOCK overlapping",
            raw(&t, &vmh2, &c::HAX_VM_IOCTL_ADD_RAMBLOCK, &block, 0),
            Some(31),
        ),
        (
            "ADD_RAMBLOCK reserved != 0",
            raw(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_ADD_RAMBLOCK,
                &{
                    let mut b = block.clone();
                    b[16] = 1;
                    b
                },
                0,
            ),
            Some(87),
        ),
        (
            "SET_RAM short input",
            raw(&t, &vmh2, &c::HAX_VM_IOCTL_SET_RAM, &[0u8; 8], 0),
            Some(87),
        ),
        (
            "SET_RAM unaligned size",
            raw(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_SET_RAM,
                &set_ram(0, 0x800, 0, other.addr),
                0,
            ),
            Some(87),
        ),
        (
            "SET_RAM va outside every block",
            raw(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_SET_RAM,
                &set_ram(0, 0x1000, 0, 0x1000),
                0,
            ),
            Some(87),
        ),
        (
            "SET_RAM INVALID with va",
            raw(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_SET_RAM,
                &set_ram(0, 0x1000, 0x80, other.addr),
                0,
            ),
            Some(87),
        ),
        (
            "SET_RAM gpa overflow",
            raw(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_SET_RAM,
                &set_ram(!0xfff, 0x2000, 0, other.addr),
                0,
            ),
            Some(87),
        ),
        (
            "VCPU_CREATE id 16",
            raw(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_VCPU_CREATE,
                &16u32.to_le_bytes(),
                0,
            ),
            Some(31),
        ),
        (
            "VCPU_CREATE short input",
            raw(&t, &vmh2, &c::HAX_VM_IOCTL_VCPU_CREATE, &[0u8; 2], 0),
            Some(87),
        ),
        (
            "unknown code on a VM",
            raw_code(
                &t,
                &vmh2,
                &c::HAX_VM_IOCTL_SET_RAM,
                0x4000_2600,
                &[0u8; 24],
                0,
            ),
            Some(87),
        ),
        (
            "unknown code on the system device",
            raw_code(&t, &sysh, &c::HAX_IOCTL_VERSION, 0x4000_2600, &[], 8),
            Some(1),
        ),
        (
            "VERSION with a short output",
            raw(&t, &sysh, &c::HAX_IOCTL_VERSION, &[], 4),
            Some(87),
        ),
    ];
    t.close(vmh2);
    t.close(sysh);
    let mut failures = Vec::new();
    for (what, got, want) in &checks {
        if got != want {
            failures.push(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    // The VM still runs: its OUT, then HLT.
    expect(
        "OUT after bad input",
        next(&mut v, 0)?,
        io_out(0x80, 1, &[0x77]),
    )?;
    expect("HLT after bad input", next(&mut v, 0)?, Ev::Hlt)?;
    Ok(format!(
        "{} refusals with HAXM's statuses, VM ran after",
        checks.len()
    ))
}

fn code_of(e: rhax::OsError) -> u32 {
    match e {
        rhax::OsError::Win32(w) => w,
        other => 0x8000_0000 | other_code(other),
    }
}

/// A loop guest (real mode at 0x1000) of `n` iterations of `body` between two RDTSCs; the
/// delta lands at 0x2000, then HLT.
pub(crate) fn bench_loop(n: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend([0xB8, 0x00, 0xA0, 0x8E, 0xC0]); // mov ax, 0xA000; mov es, ax
    v.extend([0x66, 0xBF]); // mov edi, n
    v.extend(n.to_le_bytes());
    v.extend([0x0F, 0x31]); // rdtsc
    v.extend([0x66, 0x89, 0xC6]); // mov esi, eax
    let top = v.len();
    v.extend(body);
    v.extend([0x66, 0x4F]); // dec edi
    let rel = top as i32 - (v.len() as i32 + 2);
    v.extend([0x75, rel as i8 as u8]); // jnz top
    v.extend([0x0F, 0x31]); // rdtsc
    v.extend([0x66, 0x29, 0xF0]); // sub eax, esi
    v.extend([0x66, 0xA3, 0x00, 0x20]); // mov [0x2000], eax
    v.extend([0xFA, 0xF4]); // cli; hlt
    v
}

/// One pass of a bench guest through the HAXM path with `lp`: (the guest's TSC delta, the
/// vCPU's statistics, RUNs, the loop).
fn bench_haxm_pass(
    name: &str,
    n: u32,
    body: &[u8],
    reason: u32,
    window: bool,
    mut lp: BenchLoop,
) -> R<(u32, rhax::api::ext::VcpuStats, u64, BenchLoop)> {
    let ram = Ram::new(0x1_0000)?;
    ram.write(0x1000, &bench_loop(n, body));
    let shell = Shell::new()?;
    let (_sys, _vm, mut v) = simple_vm(&shell, &ram)?;
    qemu_set(&v, &real_mode_at(0x1000), &qemu_msrs())?;
    v.reset_stats().map_err(e("reset stats"))?;
    let mut user_exits = 0u64;
    let mut halts = 0u64;
    let mut want_window = false;
    loop {
        // As QEMU: the window is asked for only while something waits for it (here: after
        // each OUT made with IF = 0), else an open window would exit at every entry.
        v.request_interrupt_window(want_window);
        let ev = lp.run(&mut v, 0).map_err(|m| format!("{name}: {m}"))?;
        want_window = window && ev == BenchExit::Io;
        user_exits += 1;
        if ev == BenchExit::Hlt {
            halts += 1;
            if halts > u64::from(n) || reason != 12 {
                break;
            }
        }
    }
    let st = v.stats().map_err(e("ext stats"))?;
    Ok((ram.u32(0x2000), st, user_exits, lp))
}

/// Runs one bench guest through the HAXM path; prints VMREAD/VMWRITE per exit of `reason`,
/// the round trip (a pass that does not measure the user side) and the user side's share (a
/// second pass that does).
fn bench_haxm_one(name: &str, n: u32, body: &[u8], reason: u32, window: bool) -> R<()> {
    println!("bench-timer: haxm-{name} start");
    let (tsc, st, user_exits, _) =
        bench_haxm_pass(name, n, body, reason, window, BenchLoop::new())?;
    println!("bench-timer: haxm-{name} stop {n}");
    let (_, _, _, lp) = bench_haxm_pass(name, n, body, reason, window, BenchLoop::measuring())?;
    let r = st
        .reason(reason)
        .copied()
        .ok_or_else(|| format!("no counters for reason {reason}"))?;
    if r.exits < u64::from(n) {
        return Err(format!(
            "{name}: {} exits of reason {reason}, expected ≥ {n}",
            r.exits
        ));
    }
    let per = |x: u64| x as f64 / r.exits as f64;
    println!("bench: haxm-{name}-exits {} exits", r.exits);
    println!(
        "bench: haxm-{name}-vmread-per-exit {:.2} VMREAD/exit",
        per(r.vmreads)
    );
    println!(
        "bench: haxm-{name}-vmwrite-per-exit {:.2} VMWRITE/exit",
        per(r.vmwrites)
    );
    println!(
        "bench: haxm-{name}-round-trip {:.1} emulated-instructions/iteration",
        f64::from(tsc) / f64::from(n)
    );
    println!(
        "bench: haxm-{name}-user-exits-per-iteration {:.2} RUN/iteration",
        user_exits as f64 / f64::from(n)
    );
    println!(
        "bench: haxm-{name}-user-share {:.1} emulated-instructions/iteration",
        lp.user as f64 / f64::from(n)
    );
    println!(
        "bench: haxm-{name}-user-handler {:.1} emulated-instructions/iteration",
        lp.handler as f64 / f64::from(n)
    );
    Ok(())
}

/// VMREAD/VMWRITE per exit through the full HAXM RUN path (dispatcher, HaxVcpu, tunnel), from
/// the ext stats IOCTL through userlib: IO (OUT), HLT, MMIO (FAST_MMIO store) and interrupt
/// window exits, plus emulated instructions per iteration (Bochs's TSC counts instructions).
pub fn bench_haxm(_: &Ctx) -> R<String> {
    const N: u32 = 5_000;
    bench_haxm_one("io", N, &[0xE6, 0x80], 30, false)?; // out 0x80, al
    bench_haxm_one("hlt", N, &[0xF4], 12, false)?; // hlt
    bench_haxm_one("mmio", N, &[0x26, 0x88, 0x06, 0x00, 0x00], 48, false)?; // mov [es:0], al
                                                                            // cli; out 0x80, al; sti; nop: with the window requested, each iteration exits once for
                                                                            // the OUT and once when the window opens after the STI shadow.
    bench_haxm_one("window", N, &[0xFA, 0xE6, 0x80, 0xFB, 0x90], 7, true)?;
    Ok(String::from("see bench: lines"))
}
