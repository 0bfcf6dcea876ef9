//! The two environments the executor runs against (see the parent module): the region's,
//! which sees only the exit's access, and the passive level's, which checks segments and
//! walks the guest's page tables.

use super::*;

/// Splits `len` bytes at `gpa` into naturally sized pieces of at most 8 bytes (the sizes
/// FAST_MMIO carries), calling `f(gpa, size, offset)` for each.
pub(super) fn pieces<E>(
    gpa: u64,
    len: usize,
    mut f: impl FnMut(u64, u8, usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut done = 0;
    while done < len {
        let left = len - done;
        let size = [8usize, 4, 2, 1]
            .into_iter()
            .find(|&s| s <= left)
            .unwrap_or(1);
        f(gpa.wrapping_add(done as u64), size as u8, done)?;
        done += size;
    }
    Ok(())
}

/// Whether the instruction's only memory access is its one operand (the region route).
pub(super) fn single_access(insn: &Decoded) -> bool {
    !matches!(
        insn.op,
        Op::Movs | Op::Cmps | Op::PushMem | Op::PopMem | Op::VecLoad(_) | Op::VecStore(_)
    )
}

/// Whether the instruction reads or writes RSP (the region fetches it only then).
pub(super) fn uses_rsp(insn: &Decoded) -> bool {
    let reg = insn
        .reg
        .is_some_and(|r| r.number == reg::RSP as u8 && !r.high_byte);
    let mem = insn
        .mem
        .is_some_and(|m| m.base == Some(reg::RSP as u8) || m.index == Some(reg::RSP as u8));
    reg || mem
}

/// The region route's view: registers from the VMCS cache, the one access at the exit's
/// guest-physical address.
pub(super) struct RegionEnv<'a> {
    pub(super) gprs: &'a [u64; 16],
    pub(super) rsp: u64,
    pub(super) rip: u64,
    pub(super) rflags: u64,
    pub(super) bases: [u64; 6],
    pub(super) selectors: [u16; 6],
    pub(super) cr0: u64,
    pub(super) long: bool,
    pub(super) gpa: u64,
    pub(super) emu: &'a Emulation,
    pub(super) first: Option<u64>,
}

impl RegionEnv<'_> {
    /// The linear address must be the exit's (same page offset, not crossing the page), and
    /// every access of the instruction the same.
    fn check(&mut self, seg: Seg, offset: u64, len: usize) -> Result<(), Fault<Stop>> {
        let mut linear = self.bases[seg as usize].wrapping_add(offset);
        if !self.long {
            linear &= 0xffff_ffff;
        }
        let in_page = (self.gpa & 0xfff) as usize;
        if linear & 0xfff != self.gpa & 0xfff || in_page + len > 0x1000 {
            return Err(Fault::Env(Stop::Passive));
        }
        match self.first {
            Some(l) if l != linear => Err(Fault::Env(Stop::Passive)),
            _ => {
                self.first = Some(linear);
                Ok(())
            }
        }
    }
}

impl Env for RegionEnv<'_> {
    type Stop = Stop;

    fn gpr(&self, n: u8) -> u64 {
        if usize::from(n) == reg::RSP {
            self.rsp
        } else {
            self.gprs[usize::from(n & 15)]
        }
    }

    fn rip(&self) -> u64 {
        self.rip
    }

    fn rflags(&self) -> u64 {
        self.rflags
    }

    // The region route never takes a vector instruction (`single_access`).
    fn xmm(&self, _n: u8) -> u128 {
        0
    }

    fn ymm_high(&self, _n: u8) -> Option<u128> {
        None
    }

    fn selector(&self, s: Seg) -> u16 {
        self.selectors[s as usize]
    }

    fn segment_base(&self, s: Seg) -> u64 {
        self.bases[s as usize]
    }

    fn stack_is_32bit(&self) -> bool {
        true
    }

    fn protected_mode(&self) -> bool {
        self.cr0 & 1 != 0
    }

    fn read(&mut self, seg: Seg, offset: u64, buf: &mut [u8]) -> Result<(), Fault<Stop>> {
        self.check(seg, offset, buf.len())?;
        self.emu.read_mmio(self.gpa, buf)
    }

    fn check_write(&mut self, seg: Seg, offset: u64, len: usize) -> Result<(), Fault<Stop>> {
        self.check(seg, offset, len)
    }
}

/// The passive route's view: the captured [`Context`], guest memory through the guest's
/// paging, the saved FPU image.
pub(super) struct PassiveEnv<'a, M: GuestMemoryAccess + ?Sized> {
    pub(super) mem: &'a M,
    pub(super) gprs: &'a [u64; 16],
    /// The vCPU: its saved XSAVE image holds the guest's XMM and YMM registers.
    pub(super) vcpu: &'a crate::vcpu::Vcpu,
    pub(super) ctx: &'a Context,
    pub(super) mode: &'a PagingMode,
    pub(super) user: bool,
    pub(super) long: bool,
    pub(super) emu: &'a Emulation,
    /// MOVS between two MMIO addresses: the source reads as zeros (user space copies).
    pub(super) copy: bool,
}

/// #GP(0), or #SS(0) for the stack segment (SDM Vol. 3A §6.3 "Limit Checking").
pub(super) fn seg_fault(seg: Seg) -> Fault<Stop> {
    Fault::Exception(emu::Exception {
        vector: if seg == Seg::Ss { 12 } else { 13 },
        error_code: Some(0),
        cr2: None,
    })
}

impl<M: GuestMemoryAccess + ?Sized> PassiveEnv<'_, M> {
    /// The linear address of `len` bytes at seg:offset, after the segment's checks.
    pub(super) fn linear(
        &self,
        seg: Seg,
        offset: u64,
        len: usize,
        write: bool,
    ) -> Result<u64, Fault<Stop>> {
        let s = &self.ctx.segs[seg as usize];
        let last = offset.wrapping_add(len.saturating_sub(1) as u64);
        if self.long {
            // 64-bit mode: no limits; FS/GS bases apply; the address must be canonical
            // (SDM Vol. 3A §3.3.7.1).
            let base = if matches!(seg, Seg::Fs | Seg::Gs) {
                s.base
            } else {
                0
            };
            let linear = base.wrapping_add(offset);
            let end = base.wrapping_add(last);
            let canonical = |a: u64| ((a as i64) << 16 >> 16) as u64 == a;
            if !canonical(linear) || !canonical(end) {
                return Err(seg_fault(seg));
            }
            return Ok(linear);
        }
        let protected = self.mode.cr0 & 1 != 0 && self.ctx.rflags & RFLAGS_VM == 0;
        if protected {
            // Unusable (null) segment, then the type: execute-only code cannot be read,
            // code and read-only data cannot be written (SDM Vol. 3A §6.4).
            let ty = s.ar & 0xf;
            let code = ty & 8 != 0;
            let unusable = s.ar & (1 << 16) != 0;
            let readable = !code || ty & 2 != 0;
            let writable = !code && ty & 2 != 0;
            if unusable || (write && !writable) || (!write && !readable) {
                return Err(seg_fault(seg));
            }
        }
        let big = s.ar & (1 << 14) != 0;
        let expand_down = s.ar & 0xc == 0x4;
        let limit = u64::from(s.limit);
        let upper = if big { 0xffff_ffff } else { 0xffff };
        let ok = if expand_down {
            offset > limit && last <= upper && last >= offset
        } else {
            last <= limit && last >= offset
        };
        if !ok {
            return Err(seg_fault(seg));
        }
        Ok(s.base.wrapping_add(offset) & 0xffff_ffff)
    }

    fn access(&self, write: bool) -> Access {
        Access {
            kind: if write {
                AccessKind::Write
            } else {
                AccessKind::Read
            },
            user: self.user,
            ac: self.ctx.rflags & RFLAGS_AC != 0,
        }
    }

    /// Guest-physical address of linear `la`, or the fault.
    pub(super) fn walk(&self, la: u64, write: bool) -> Result<u64, Fault<Stop>> {
        guest_walk(self.mem, self.mode, la, self.access(write)).map_err(walk_fault)
    }
}

pub(super) fn walk_fault(e: WalkError) -> Fault<Stop> {
    match e {
        WalkError::PageFault { linear, code } => Fault::Exception(emu::Exception {
            vector: 14,
            error_code: Some(code),
            cr2: Some(linear),
        }),
        other => Fault::Env(Stop::Memory(other)),
    }
}

/// Calls `f(linear, gpa_start_in_page, len, offset_in_buffer)` for each page of `len` bytes at
/// linear `la`.
pub(super) fn by_page<E>(
    la: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> Result<(), E>,
) -> Result<(), E> {
    let mut done = 0;
    while done < len {
        let at = la.wrapping_add(done as u64);
        let n = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
        f(at, n, done)?;
        done += n;
    }
    Ok(())
}

impl<M: GuestMemoryAccess + ?Sized> Env for PassiveEnv<'_, M> {
    type Stop = Stop;

    fn gpr(&self, n: u8) -> u64 {
        if usize::from(n) == reg::RSP {
            self.ctx.rsp
        } else {
            self.gprs[usize::from(n & 15)]
        }
    }

    fn rip(&self) -> u64 {
        self.ctx.rip
    }

    fn rflags(&self) -> u64 {
        self.ctx.rflags
    }

    fn xmm(&self, n: u8) -> u128 {
        self.vcpu.xmm(n)
    }

    fn ymm_high(&self, n: u8) -> Option<u128> {
        self.vcpu.ymm_high(n)
    }

    fn selector(&self, s: Seg) -> u16 {
        self.ctx.segs[s as usize].selector
    }

    fn segment_base(&self, s: Seg) -> u64 {
        self.ctx.segs[s as usize].base
    }

    fn stack_is_32bit(&self) -> bool {
        self.ctx.segs[Seg::Ss as usize].ar & (1 << 14) != 0
    }

    fn protected_mode(&self) -> bool {
        self.mode.cr0 & 1 != 0
    }

    fn read(&mut self, seg: Seg, offset: u64, buf: &mut [u8]) -> Result<(), Fault<Stop>> {
        let la = self.linear(seg, offset, buf.len(), false)?;
        by_page(la, buf.len(), |at, n, done| {
            let gpa = self.walk(at, false)?;
            let dst = buf
                .get_mut(done..done + n)
                .ok_or(Fault::Env(Stop::TooManyPieces))?;
            match self.mem.read(gpa, dst) {
                Ok(Backing::Ram) => Ok(()),
                Ok(Backing::NotRam) if self.copy => {
                    dst.fill(0);
                    Ok(())
                }
                Ok(Backing::NotRam) => self.emu.read_mmio(gpa, dst),
                Err(e) => Err(Fault::Env(Stop::Memory(e.into()))),
            }
        })
    }

    fn check_write(&mut self, seg: Seg, offset: u64, len: usize) -> Result<(), Fault<Stop>> {
        let la = self.linear(seg, offset, len, true)?;
        by_page(la, len, |at, _, _| self.walk(at, true).map(|_| ()))
    }
}

/// A MOVS whose source and destination are both MMIO: (source, destination) guest-physical
/// addresses, for one move exit.
pub(super) fn movs_between_mmio<M: GuestMemoryAccess + ?Sized>(
    env: &PassiveEnv<'_, M>,
    insn: &Decoded,
) -> Option<(u64, u64)> {
    let mask = match insn.address_size {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let count = env.gpr(reg::RCX as u8) & mask;
    if insn.rep != Rep::None && count == 0 {
        return None;
    }
    let size = usize::from(insn.size);
    let src = env
        .linear(insn.seg, env.gpr(reg::RSI as u8) & mask, size, false)
        .ok()?;
    let dst = env
        .linear(Seg::Es, env.gpr(reg::RDI as u8) & mask, size, true)
        .ok()?;
    // Both must stay inside one page (a split element is copied the general way).
    if (src & 0xfff) as usize + size > 0x1000 || (dst & 0xfff) as usize + size > 0x1000 {
        return None;
    }
    let from = env.walk(src, false).ok()?;
    let to = env.walk(dst, true).ok()?;
    let mut probe = [0u8; 1];
    let not_ram =
        |g: u64, probe: &mut [u8; 1]| matches!(env.mem.read(g, probe), Ok(Backing::NotRam));
    if not_ram(from, &mut probe) && not_ram(to, &mut probe) {
        Some((from, to))
    } else {
        None
    }
}
