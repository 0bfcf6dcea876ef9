//! The general MMIO path (issue 11): an instruction the plain-MOV fast path does not take is
//! decoded by [`emulate::decode_full`] and carried out by [`emulate::execute`].
//!
//! KVM's model: the executor is transactional and only reads; an MMIO read whose data user
//! space has not given yet stops it with nothing changed, the vCPU exits with a FAST_MMIO
//! read, and the next RUN executes the instruction again with the value in a small cache
//! ([`Emulation::reads`]). A completed instruction's MMIO writes leave one per exit
//! (FAST_MMIO carries at most 8 bytes): the first with the exit that completes the
//! instruction, the rest at the start of the following RUNs, before the guest runs again.
//! A MOVS between two MMIO addresses leaves as one MMIO-to-MMIO move (direction 2, `gpa2`).
//!
//! Two routes, chosen per instruction:
//! * In the non-preemptible region ([`RegionEnv`]): instructions whose only memory access is
//!   the one that caused the EPT violation (MOV, ALU, TEST, BT*, SETcc, CMOVcc, XCHG, CMPXCHG,
//!   XADD, STOS, LODS, SCAS...). The access is at the exit's guest-physical address; paging
//!   and segmentation already let it through (an EPT violation comes after both, SDM Vol. 3C
//!   §29.3.3.2), so nothing is walked; the registers come from the VMCS cache.
//! * At passive level ([`PassiveEnv`]): instructions with a second memory access (MOVS, CMPS,
//!   PUSH/POP m), the SSE/AVX moves (the guest's vector registers are in the saved FPU image
//!   only outside the region), and accesses that do not match the exit (crossing a page).
//!   The region captures the registers and segments first ([`Context`]); every access is then
//!   checked against the segment (SDM Vol. 3A §6.3 limit and type checks, canonical addresses
//!   in 64-bit mode) and walked through the guest's page tables, RAM read and written
//!   directly, MMIO through the cache.

use super::*;
use crate::emulate::{
    self as emu, Decoded, Effects, Env, ExecError, Fault, MemWrite, Op, Rep, Seg,
};
use crate::vcpu::guest::{guest_walk, Backing};
use crate::vmcs::VmcsField;

mod env;
use env::{by_page, movs_between_mmio, pieces, single_access, uses_rsp, PassiveEnv, RegionEnv};

/// MMIO reads one instruction may need (a 32-byte VEX load is four 8-byte pieces; CMPS two).
const MAX_READS: usize = 8;
/// MMIO write pieces of one instruction (a 32-byte store).
const MAX_WRITES: usize = 8;

/// One MMIO access of at most 8 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct Piece {
    gpa: u64,
    size: u8,
    value: u64,
}

/// One segment register as the passive route checks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct SegState {
    selector: u16,
    base: u64,
    limit: u32,
    ar: u32,
}

/// What the passive route needs from the VMCS, captured in the region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct Context {
    rip: u64,
    rflags: u64,
    rsp: u64,
    segs: [SegState; 6],
}

/// The MMIO instruction in flight, kept across steps and RUNs until it completes.
#[derive(Clone, Debug, Default)]
pub(in crate::vcpu::haxm) struct Emulation {
    insn: Option<Decoded>,
    /// The guest-physical address of the exit.
    gpa: u64,
    mode: Option<PagingMode>,
    user: bool,
    /// Set once the instruction takes the passive route.
    ctx: Option<Context>,
    reads: [Piece; MAX_READS],
    nreads: usize,
    /// A read exit is out: its value comes back in the IO buffer.
    read_out: Option<Piece>,
    writes: [Piece; MAX_WRITES],
    nwrites: usize,
    next_write: usize,
}

impl Emulation {
    fn cached(&self, gpa: u64, size: u8) -> Option<u64> {
        self.reads
            .get(..self.nreads)?
            .iter()
            .find(|p| p.gpa == gpa && p.size == size)
            .map(|p| p.value)
    }

    /// Fills `buf` with the MMIO data at `gpa` from the reads user space answered, piece by
    /// piece; the first piece not answered yet stops the instruction (a read exit).
    fn read_mmio(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Fault<Stop>> {
        pieces(gpa, buf.len(), |g, size, at| {
            let v = self
                .cached(g, size)
                .ok_or(Fault::Env(Stop::Read { gpa: g, size }))?;
            let n = usize::from(size);
            if let Some(dst) = buf.get_mut(at..at + n) {
                dst.copy_from_slice(&v.to_le_bytes()[..n]);
            }
            Ok(())
        })
    }

    /// Whether an instruction (or its remaining MMIO writes) is still in flight.
    pub(in crate::vcpu::haxm) fn active(&self) -> bool {
        self.insn.is_some() || self.next_write < self.nwrites
    }

    /// Forgets the instruction in flight (field by field: no 400-byte temporary on the
    /// stack of a RUN path).
    pub(in crate::vcpu::haxm) fn clear(&mut self) {
        self.insn = None;
        self.gpa = 0;
        self.mode = None;
        self.user = false;
        self.ctx = None;
        self.nreads = 0;
        self.read_out = None;
        self.nwrites = 0;
        self.next_write = 0;
    }
}

/// Why an environment stopped the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) enum Stop {
    /// User space must read `size` bytes at `gpa`.
    Read { gpa: u64, size: u8 },
    /// The instruction needs the passive-level route.
    Passive,
    /// Guest memory could not be walked or read (tables outside RAM, a memory-layer failure).
    Memory(WalkError),
    /// More MMIO reads than [`MAX_READS`] or writes than [`MAX_WRITES`].
    TooManyPieces,
}

/// The MMIO exit an emulation step ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) enum EmuExit {
    /// None: enter the guest again.
    None,
    /// FAST_MMIO read.
    Read(Piece),
    /// FAST_MMIO write.
    Write(Piece),
    /// FAST_MMIO move from `from` to `to`.
    Move { from: u64, to: u64, size: u8 },
    /// The guest takes this exception instead.
    Exception(emu::Exception),
    /// The vCPU panics (STATECHANGE).
    Panic(PanicReason),
    /// A page PROTECT_RAM protects: PAGEFAULT, nothing changed (the instruction runs again).
    Protected { gpa: u64, flags: u32 },
}

/// The exit of a failed guest-memory access: PAGEFAULT for a protected page, else the panic.
fn memory_exit(e: WalkError, write: bool) -> EmuExit {
    match e {
        WalkError::Memory(MemoryError::Protected { gpa }) => EmuExit::Protected {
            gpa,
            flags: if write { PF_FLAG_WRITE } else { PF_FLAG_READ },
        },
        other => EmuExit::Panic(PanicReason::GuestMemory(other)),
    }
}

/// Register changes the region applies (RIP, RFLAGS and RSP are VMCS fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct Commit {
    rip: u64,
    rflags: u64,
    rsp: Option<u64>,
    segment: Option<(Seg, u16)>,
}

impl Commit {
    /// The VMCS-held registers of `fx` (RIP, RFLAGS, RSP, a segment load).
    fn of(fx: &Effects) -> Commit {
        Commit {
            rip: fx.rip,
            rflags: fx.rflags,
            rsp: fx.gpr[reg::RSP],
            segment: fx.segment,
        }
    }
}

/// What the passive route hands to the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vcpu::haxm) struct Outcome {
    commit: Option<Commit>,
    exit: EmuExit,
}

const SEG_SELECTOR: [VmcsField; 6] = [
    VmcsField::GuestEsSelector,
    VmcsField::GuestCsSelector,
    VmcsField::GuestSsSelector,
    VmcsField::GuestDsSelector,
    VmcsField::GuestFsSelector,
    VmcsField::GuestGsSelector,
];
const SEG_BASE: [VmcsField; 6] = [
    VmcsField::GuestEsBase,
    VmcsField::GuestCsBase,
    VmcsField::GuestSsBase,
    VmcsField::GuestDsBase,
    VmcsField::GuestFsBase,
    VmcsField::GuestGsBase,
];
const SEG_LIMIT: [VmcsField; 6] = [
    VmcsField::GuestEsLimit,
    VmcsField::GuestCsLimit,
    VmcsField::GuestSsLimit,
    VmcsField::GuestDsLimit,
    VmcsField::GuestFsLimit,
    VmcsField::GuestGsLimit,
];
const SEG_AR: [VmcsField; 6] = [
    VmcsField::GuestEsAccessRights,
    VmcsField::GuestCsAccessRights,
    VmcsField::GuestSsAccessRights,
    VmcsField::GuestDsAccessRights,
    VmcsField::GuestFsAccessRights,
    VmcsField::GuestGsAccessRights,
];

impl HaxVcpu {
    /// The general path for the instruction `bytes` that faulted on MMIO at `gpa`.
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn emulate_mmio<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        gpa: u64,
        bytes: &[u8],
        cpu_mode: CpuMode,
        mode: PagingMode,
        user: bool,
    ) -> Result<Next, HaxError> {
        let insn = match emu::decode_full(bytes, cpu_mode) {
            Ok(i) => i,
            // Bytes the CPU ran but that decode as invalid now: the guest changed them since
            // the exit (another vCPU); executing them now raises #UD, as the CPU would.
            Err(emu::DecodeFailure::Invalid | emu::DecodeFailure::InvalidLock) => {
                self.inject_exception(root, 6, None)?;
                return Ok(Next::Resume);
            }
            Err(_) => return Ok(self.panic(PanicReason::Unemulated(unemulated(gpa, bytes)))),
        };
        self.emu.clear();
        self.emu.insn = Some(insn);
        self.emu.gpa = gpa;
        self.emu.mode = Some(mode);
        self.emu.user = user;
        self.emu_region(root, bytes)
    }

    /// Executes the instruction in flight in the region, or sends it to the passive route.
    // Its own frame: the executor's effects and environment stay off the caller's (the
    // 2 KiB budget of a RUN path, `cargo xtask stack`).
    #[inline(never)]
    fn emu_region<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        bytes: &[u8],
    ) -> Result<Next, HaxError> {
        let Some(insn) = self.emu.insn else {
            return Ok(Next::Resume);
        };
        if self.emu.ctx.is_some() || !single_access(&insn) {
            return self.emu_to_passive(root);
        }
        let long = insn.mode == CpuMode::Bits64;
        let want_rsp = uses_rsp(&insn);
        let mut segs = [insn.seg, insn.seg];
        if matches!(insn.op, Op::Stos | Op::Scas) {
            segs[1] = Seg::Es;
        }
        let sreg = match insn.op {
            Op::MovFromSreg => insn.reg.and_then(|r| Seg::from_number(r.number)),
            _ => None,
        };
        let (rip, rflags, rsp, bases, selectors, cr0) =
            self.core.with_vmcs(root, |vmcs, _| -> Result<_, VmFail> {
                let mut bases = [0u64; 6];
                for s in segs {
                    // 64-bit mode ignores the bases of ES, CS, SS and DS (SDM Vol. 3A §3.4.4).
                    if !long || matches!(s, Seg::Fs | Seg::Gs) {
                        bases[s as usize] = vmcs.read(SEG_BASE[s as usize])?;
                    }
                }
                let mut selectors = [0u16; 6];
                if let Some(s) = sreg {
                    selectors[s as usize] = vmcs.read(SEG_SELECTOR[s as usize])? as u16;
                }
                let rsp = if want_rsp { vmcs.guest_rsp()? } else { 0 };
                Ok((
                    vmcs.guest_rip()?,
                    vmcs.guest_rflags()?,
                    rsp,
                    bases,
                    selectors,
                    vmcs.guest_cr0()?,
                ))
            })??;
        let mut env = RegionEnv {
            gprs: &self.core.regs.gpr,
            rsp,
            rip,
            rflags,
            bases,
            selectors,
            cr0,
            long,
            gpa: self.emu.gpa,
            emu: &self.emu,
            first: None,
        };
        match emu::execute(&insn, &mut env) {
            Ok(fx) => {
                let commit = Commit::of(&fx);
                self.set_gprs_but_rsp(&fx);
                let gpa = self.emu.gpa;
                let exit = match self.queue_region_writes(&fx, gpa) {
                    Ok(()) => self.next_write_exit(),
                    Err(stop) => return self.emu_stopped(root, stop, bytes),
                };
                // Done, or one REP iteration done (the guest re-executes the rest): only the
                // MMIO writes not yet delivered stay.
                self.emu.clear_keep_writes();
                self.emu_apply(
                    root,
                    Outcome {
                        commit: Some(commit),
                        exit,
                    },
                    (rip, rflags),
                )
            }
            Err(ExecError::Env(stop)) => self.emu_stopped(root, stop, bytes),
            Err(ExecError::Exception(x)) => {
                self.emu.clear();
                self.emu_apply(
                    root,
                    Outcome {
                        commit: None,
                        exit: EmuExit::Exception(x),
                    },
                    (rip, rflags),
                )
            }
            Err(ExecError::Unsupported(_)) => {
                let gpa = self.emu.gpa;
                self.emu.clear();
                Ok(self.panic(PanicReason::Unemulated(unemulated(gpa, bytes))))
            }
        }
    }

    /// The region route stopped: a read for user space, or the passive route.
    #[inline(never)]
    fn emu_stopped<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        stop: Stop,
        bytes: &[u8],
    ) -> Result<Next, HaxError> {
        match stop {
            Stop::Read { gpa, size } => {
                let p = Piece {
                    gpa,
                    size,
                    value: 0,
                };
                self.emu.read_out = Some(p);
                self.fill_fast_mmio(gpa, size, 0, 0);
                Ok(Next::User(ExitStatus::FastMmio))
            }
            Stop::Passive => self.emu_to_passive(root),
            Stop::Memory(e) => {
                self.emu.clear();
                Ok(self.panic(PanicReason::GuestMemory(e)))
            }
            Stop::TooManyPieces => {
                let gpa = self.emu.gpa;
                self.emu.clear();
                Ok(self.panic(PanicReason::Unemulated(unemulated(gpa, bytes))))
            }
        }
    }

    /// Captures the registers and segments, then asks for a passive-level step.
    #[inline(never)]
    fn emu_to_passive<V: Vmx>(&mut self, root: &mut VmxRoot<V>) -> Result<Next, HaxError> {
        if self.emu.ctx.is_none() {
            let ctx = self
                .core
                .with_vmcs(root, |vmcs, _| -> Result<Context, VmFail> {
                    let mut segs = [SegState::default(); 6];
                    for (i, s) in segs.iter_mut().enumerate() {
                        *s = SegState {
                            selector: vmcs.read(SEG_SELECTOR[i])? as u16,
                            base: vmcs.read(SEG_BASE[i])?,
                            limit: vmcs.read(SEG_LIMIT[i])? as u32,
                            ar: vmcs.read(SEG_AR[i])? as u32,
                        };
                    }
                    Ok(Context {
                        rip: vmcs.guest_rip()?,
                        rflags: vmcs.guest_rflags()?,
                        rsp: vmcs.guest_rsp()?,
                        segs,
                    })
                })??;
            self.emu.ctx = Some(ctx);
        }
        Ok(self.wait_for_memory(MemoryRequest::Emulate))
    }

    /// The passive route (in [`HaxVcpu::complete_memory`]).
    // Its own frame: the executor's effects and environment stay off the caller's (the
    // 2 KiB budget of a RUN path, `cargo xtask stack`).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn emulate_passive<M: GuestMemoryAccess + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Outcome {
        let (Some(insn), Some(ctx), Some(mode)) = (self.emu.insn, self.emu.ctx, self.emu.mode)
        else {
            return Outcome {
                commit: None,
                exit: EmuExit::None,
            };
        };
        let long = insn.mode == CpuMode::Bits64;
        if let Some(x) = sse_fault(&insn, &mode) {
            self.emu.clear();
            return Outcome {
                commit: None,
                exit: EmuExit::Exception(x),
            };
        }
        let mut env = PassiveEnv {
            mem,
            gprs: &self.core.regs.gpr,
            vcpu: &self.core,
            ctx: &ctx,
            mode: &mode,
            user: self.emu.user,
            long,
            emu: &self.emu,
            copy: false,
        };
        let copy = if insn.op == Op::Movs && self.emu.nreads == 0 {
            movs_between_mmio(&env, &insn)
        } else {
            None
        };
        env.copy = copy.is_some();
        let result = emu::execute(&insn, &mut env);
        let fx = match result {
            Ok(fx) => fx,
            Err(ExecError::Env(Stop::Read { gpa, size })) => {
                let p = Piece {
                    gpa,
                    size,
                    value: 0,
                };
                self.emu.read_out = Some(p);
                return Outcome {
                    commit: None,
                    exit: EmuExit::Read(p),
                };
            }
            Err(ExecError::Env(Stop::Memory(e))) => {
                self.emu.clear();
                return Outcome {
                    commit: None,
                    exit: memory_exit(e, false),
                };
            }
            Err(ExecError::Env(Stop::Passive | Stop::TooManyPieces))
            | Err(ExecError::Unsupported(_)) => {
                let gpa = self.emu.gpa;
                self.emu.clear();
                return Outcome {
                    commit: None,
                    exit: EmuExit::Panic(PanicReason::Unemulated(Unemulated {
                        gpa,
                        ..Unemulated::default()
                    })),
                };
            }
            Err(ExecError::Exception(x)) => {
                self.emu.clear();
                return Outcome {
                    commit: None,
                    exit: EmuExit::Exception(x),
                };
            }
        };
        // Memory first: a write the guest's paging refuses now (its tables changed since
        // the checks) faults with nothing changed.
        let mut exit = EmuExit::None;
        for w in fx.writes.iter().flatten() {
            match self.passive_write(mem, &ctx, &mode, long, w, copy) {
                Ok(Some(m)) => exit = m,
                Ok(None) => {}
                Err(f) => {
                    self.emu.clear();
                    return Outcome {
                        commit: None,
                        exit: match f {
                            Fault::Exception(x) => EmuExit::Exception(x),
                            Fault::Env(Stop::Memory(e)) => memory_exit(e, true),
                            Fault::Env(_) => {
                                EmuExit::Panic(PanicReason::Unemulated(Unemulated::default()))
                            }
                        },
                    };
                }
            }
        }
        if exit == EmuExit::None {
            exit = self.next_write_exit();
        }
        self.set_gprs_but_rsp(&fx);
        if let Some(x) = fx.xmm {
            self.core.set_xmm(x.n, x.value, x.high);
        }
        // Done, or one REP iteration done (the guest re-executes the rest: RIP did not move):
        // only the MMIO writes not yet delivered stay.
        self.emu.clear_keep_writes();
        Outcome {
            commit: Some(Commit::of(&fx)),
            exit,
        }
    }

    /// The GPRs of `fx` that live in memory (RSP is a VMCS field: [`Commit`]).
    fn set_gprs_but_rsp(&mut self, fx: &Effects) {
        for (n, v) in fx.gpr.iter().enumerate() {
            if let (Some(v), false) = (v, n == reg::RSP) {
                self.core.regs.gpr[n] = *v;
            }
        }
    }

    /// Performs one write of a completed instruction at passive level: RAM directly, MMIO
    /// queued (or, for a MOVS between two MMIO addresses, the move exit).
    // Its own frame: the executor's effects and environment stay off the caller's (the
    // 2 KiB budget of a RUN path, `cargo xtask stack`).
    #[inline(never)]
    fn passive_write<M: GuestMemoryAccess + ?Sized>(
        &mut self,
        mem: &M,
        ctx: &Context,
        mode: &PagingMode,
        long: bool,
        w: &MemWrite,
        copy: Option<(u64, u64)>,
    ) -> Result<Option<EmuExit>, Fault<Stop>> {
        let env = PassiveEnv {
            mem,
            gprs: &self.core.regs.gpr,
            vcpu: &self.core,
            ctx,
            mode,
            user: self.emu.user,
            long,
            emu: &self.emu,
            copy: false,
        };
        let data = w.bytes();
        let la = env.linear(w.seg, w.offset, data.len(), true)?;
        let mut queue: [Piece; MAX_WRITES] = [Piece::default(); MAX_WRITES];
        let mut n = 0;
        let mut moved = None;
        by_page(la, data.len(), |at, len, done| {
            let gpa = env.walk(at, true)?;
            let chunk = data.get(done..done + len).unwrap_or(&[]);
            match mem.write(gpa, chunk) {
                Ok(Backing::Ram) => Ok(()),
                Ok(Backing::NotRam) => {
                    if let Some((from, to)) = copy {
                        if to == gpa {
                            moved = Some(EmuExit::Move {
                                from,
                                to,
                                size: len as u8,
                            });
                            return Ok(());
                        }
                    }
                    write_pieces(gpa, chunk, |p| {
                        let slot = queue.get_mut(n).ok_or(Fault::Env(Stop::TooManyPieces))?;
                        *slot = p;
                        n += 1;
                        Ok(())
                    })
                }
                Err(e) => Err(Fault::Env(Stop::Memory(e.into()))),
            }
        })?;
        for p in queue.iter().take(n) {
            self.emu.push_write(*p).map_err(Fault::Env)?;
        }
        Ok(moved)
    }

    /// Queues the MMIO writes of an instruction completed in the region (all at the exit's
    /// address).
    fn queue_region_writes(&mut self, fx: &Effects, gpa: u64) -> Result<(), Stop> {
        for w in fx.writes.iter().flatten() {
            write_pieces(gpa, w.bytes(), |p| self.emu.push_write(p))?;
        }
        Ok(())
    }

    /// The next queued MMIO write as an exit (or none).
    fn next_write_exit(&mut self) -> EmuExit {
        match self.emu.writes.get(self.emu.next_write) {
            Some(p) if self.emu.next_write < self.emu.nwrites => {
                self.emu.next_write += 1;
                EmuExit::Write(*p)
            }
            _ => EmuExit::None,
        }
    }

    /// Applies an emulation step's outcome in the region: registers, then the exit.
    /// `seen` is (RIP, RFLAGS) as the VMCS holds them, to write only what changed.
    #[inline(never)]
    fn emu_apply<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        o: Outcome,
        seen: (u64, u64),
    ) -> Result<Next, HaxError> {
        if let Some(c) = o.commit {
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                    if c.rip != seen.0 {
                        vmcs.set_guest_rip(c.rip);
                    }
                    if c.rflags != seen.1 {
                        vmcs.set_guest_rflags(c.rflags);
                    }
                    if let Some(rsp) = c.rsp {
                        vmcs.set_guest_rsp(rsp);
                    }
                    if let Some((s, sel)) = c.segment {
                        // Only real/virtual-8086 mode loads are emulated: base = selector * 16.
                        vmcs.write(SEG_SELECTOR[s as usize], u64::from(sel));
                        vmcs.write(SEG_BASE[s as usize], u64::from(sel) << 4);
                    }
                    Ok(())
                })??;
        }
        Ok(match o.exit {
            EmuExit::None => Next::Resume,
            EmuExit::Read(p) => {
                self.fill_fast_mmio(p.gpa, p.size, 0, 0);
                Next::User(ExitStatus::FastMmio)
            }
            EmuExit::Write(p) => {
                self.fill_fast_mmio(p.gpa, p.size, 1, p.value);
                Next::User(ExitStatus::FastMmio)
            }
            EmuExit::Move { from, to, size } => {
                self.fill_fast_mmio(from, size, 2, to);
                Next::User(ExitStatus::FastMmio)
            }
            EmuExit::Exception(x) => {
                match (x.vector, x.cr2, x.error_code) {
                    (14, Some(cr2), Some(code)) => self.inject_page_fault(root, cr2, code)?,
                    (v, _, code) => self.inject_exception(root, v, code)?,
                }
                Next::Resume
            }
            EmuExit::Panic(why) => self.panic(why),
            EmuExit::Protected { gpa, flags } => self.protected_exit(gpa, flags),
        })
    }

    /// The passive route's outcome, back in the region (from [`HaxVcpu::resume`]).
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn emu_finish<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        o: Outcome,
    ) -> Result<Next, HaxError> {
        let seen = self
            .core
            .with_vmcs(root, |vmcs, _| -> Result<(u64, u64), VmFail> {
                Ok((vmcs.guest_rip()?, vmcs.guest_rflags()?))
            })??;
        self.emu_apply(root, o, seen)
    }

    /// At the start of a RUN: the instruction in flight goes on. `Some(next)` when it did
    /// something (an exit, or the guest may run); `None` when nothing was in flight.
    #[inline(never)]
    pub(in crate::vcpu::haxm) fn emu_continue<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Option<Next>, HaxError> {
        if !self.emu.active() {
            return Ok(None);
        }
        if let Some(mut p) = self.emu.read_out.take() {
            p.value = FastMmio::read_from_prefix(self.iobuf.bytes_mut())
                .map(|m| m.value)
                .unwrap_or(0)
                & size_mask(p.size);
            if self.emu.push_read(p).is_err() {
                let gpa = self.emu.gpa;
                self.emu.clear();
                return Ok(Some(self.panic(PanicReason::Unemulated(Unemulated {
                    gpa,
                    ..Unemulated::default()
                }))));
            }
        } else if self.emu.insn.is_none() || self.emu.next_write < self.emu.nwrites {
            // The rest of a completed instruction's MMIO writes, one per RUN.
            let exit = self.next_write_exit();
            if !self.emu.active() {
                self.emu.clear();
            }
            return Ok(Some(self.emu_apply(
                root,
                Outcome { commit: None, exit },
                (0, 0),
            )?));
        }
        let next = self.emu_region(root, &[])?;
        Ok(Some(next))
    }
}

/// The faults of an SSE/AVX move that depend on control registers the executor does not see
/// (SDM Vol. 2A §2.5 Table 2-22 and Vol. 3A §2.5): #UD with CR0.EM set or CR4.OSFXSR clear,
/// then #NM with CR0.TS set.
fn sse_fault(insn: &Decoded, mode: &PagingMode) -> Option<emu::Exception> {
    use crate::vcpu::bits::{CR0_EM, CR0_TS, CR4_OSFXSR};
    if !matches!(insn.op, Op::VecLoad(_) | Op::VecStore(_)) {
        return None;
    }
    if mode.cr0 & CR0_EM != 0 || mode.cr4 & CR4_OSFXSR == 0 {
        Some(emu::Exception::UD)
    } else if mode.cr0 & CR0_TS != 0 {
        Some(emu::Exception {
            vector: 7,
            error_code: None,
            cr2: None,
        })
    } else {
        None
    }
}

/// The MMIO writes of `data` at `gpa`, as FAST_MMIO pieces (see [`pieces`]).
fn write_pieces<E>(
    gpa: u64,
    data: &[u8],
    mut f: impl FnMut(Piece) -> Result<(), E>,
) -> Result<(), E> {
    pieces(gpa, data.len(), |g, size, at| {
        let mut b = [0u8; 8];
        let k = usize::from(size);
        if let Some(src) = data.get(at..at + k) {
            b[..k].copy_from_slice(src);
        }
        f(Piece {
            gpa: g,
            size,
            value: u64::from_le_bytes(b),
        })
    })
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// The instruction the emulator could not carry out: reported with the vCPU's panic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unemulated {
    /// The guest-physical address of the MMIO access.
    pub gpa: u64,
    /// The instruction's bytes (`len` of them).
    pub bytes: [u8; emulate::MAX_LENGTH],
    /// How many bytes were fetched.
    pub len: u8,
}

pub(in crate::vcpu::haxm) fn unemulated(gpa: u64, bytes: &[u8]) -> Unemulated {
    let mut u = Unemulated {
        gpa,
        ..Unemulated::default()
    };
    let n = bytes.len().min(emulate::MAX_LENGTH);
    u.bytes[..n].copy_from_slice(&bytes[..n]);
    u.len = n as u8;
    u
}

impl Emulation {
    fn push_read(&mut self, p: Piece) -> Result<(), Stop> {
        let slot = self.reads.get_mut(self.nreads).ok_or(Stop::TooManyPieces)?;
        *slot = p;
        self.nreads += 1;
        Ok(())
    }

    fn push_write(&mut self, p: Piece) -> Result<(), Stop> {
        let slot = self
            .writes
            .get_mut(self.nwrites)
            .ok_or(Stop::TooManyPieces)?;
        *slot = p;
        self.nwrites += 1;
        Ok(())
    }

    /// After a REP iteration: the instruction is done with (the guest re-executes it), only
    /// the MMIO writes not yet delivered stay.
    fn clear_keep_writes(&mut self) {
        let (nwrites, next_write) = (self.nwrites, self.next_write);
        self.clear();
        self.nwrites = nwrites;
        self.next_write = next_write;
    }
}
