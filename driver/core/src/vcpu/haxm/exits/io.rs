//! Port IO exits (exit reason 30): IN/OUT to user space, string IO in chunks of at most 64
//! bytes (haxm-abi.md §4 "String IO", SDM Vol. 3C §28.2.1 Table 28-5).

use super::*;

impl HaxVcpu {
    // Inlined into the guest loop's IO fast path: IN/OUT (every exit of a device model's
    // port) stays in its frame; string IO is out of line (`string_io`).
    #[inline(always)]
    pub(in crate::vcpu::haxm) fn io<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        io: crate::vmcs::exit::IoAccess,
    ) -> Result<Next, HaxError> {
        if io.string {
            return self.string_io(root, io);
        }
        let inward = io.direction == IoDirection::In;
        let t = tunnel_io(&io);
        if inward {
            self.pending = Pending::In { size: io.size };
        } else {
            // AL, AX or EAX into the buffer's first bytes, as one store of the access's
            // width (not a byte-wise copy: this is every OUT's path).
            let v = self.core.regs.gpr[reg::RAX];
            let buf = self.iobuf.bytes_mut();
            match io.size {
                1 => buf[0] = v as u8,
                2 => buf[..2].copy_from_slice(&(v as u16).to_le_bytes()),
                4 => buf[..4].copy_from_slice(&(v as u32).to_le_bytes()),
                // Sizes the CPU never reports (qualification bits 2:0 = 2, 4..7).
                n => {
                    let n = usize::from(n);
                    buf[..n].copy_from_slice(&v.to_le_bytes()[..n]);
                }
            }
        }
        // `skip`'s body, inline: this is every IN/OUT's path.
        self.core
            .with_vmcs(root, |vmcs, _| skip_instruction(vmcs))??;
        self.set_io_payload(&t);
        Ok(Next::User(ExitStatus::Io))
    }

    /// INS/OUTS.
    #[inline(never)]
    fn string_io<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        io: crate::vmcs::exit::IoAccess,
    ) -> Result<Next, HaxError> {
        let inward = io.direction == IoDirection::In;
        let mut t = tunnel_io(&io);
        // String IO (INS/OUTS), at most 64 bytes per exit (IOS_MAX_BUFFER).
        let size = u64::from(io.size);
        let (la, rflags, cs_ar, mode, info, user, rip) =
            self.core.with_vmcs(root, |vmcs, _| -> Result<_, VmFail> {
                let mode = Self::paging(vmcs)?;
                let rflags = vmcs.guest_rflags()?;
                Ok((
                    vmcs.guest_linear_address()?,
                    rflags,
                    vmcs.guest_cs_access_rights()?,
                    mode,
                    vmcs.vm_exit_instruction_information()?,
                    Self::user_mode(vmcs, &mode, rflags)?,
                    vmcs.guest_rip()?,
                ))
            })??;
        let access = Access {
            kind: if inward {
                AccessKind::Write
            } else {
                AccessKind::Read
            },
            user,
            ac: rflags & RFLAGS_AC != 0,
        };
        // Address size: instruction-information bits 9:7 (SDM Table 28-8) when the CPU reports
        // it (IA32_VMX_BASIC bit 54), else the code segment's default.
        let addr_bits = if root.caps().basic.ins_outs_info {
            match (info >> 7) & 7 {
                0 => 16,
                1 => 32,
                _ => 64,
            }
        } else if cs_ar & (1 << 13) != 0 {
            64
        } else if cs_ar & (1 << 14) != 0 {
            32
        } else {
            16
        };
        let mask = if addr_bits == 64 {
            u64::MAX
        } else {
            (1u64 << addr_bits) - 1
        };
        let df = rflags & RFLAGS_DF != 0;
        let rcx = self.core.regs.gpr[reg::RCX];
        let total = if io.rep { rcx & mask } else { 1 };
        if total == 0 {
            self.skip(root)?;
            return Ok(Next::Resume);
        }
        let n = total.min(64 / size);
        let bytes = (n * size) as usize;
        // With DF=1 the elements go downwards; the buffer holds them in ascending memory order.
        let lowest = if df {
            la.wrapping_sub((n - 1) * size)
        } else {
            la
        };
        // The bytes of an OUTS are copied after this step (guest memory is not touched in
        // the region); an INS completes at the next RUN, in the paging mode of this exit.
        if inward {
            self.pending = Pending::Ins {
                linear: lowest,
                len: bytes,
                mode,
                access,
            };
        }
        let index = if inward { reg::RDI } else { reg::RSI };
        let delta = n * size;
        let old = self.core.regs.gpr[index];
        // Taken back if the guest's paging refuses the memory access (the instruction then
        // faults with no effect, SDM Vol. 3A §7.5 "faults ... before any state changes").
        self.undo = Some(StringUndo {
            index,
            old_index: old,
            old_rcx: rcx,
            old_rip: None,
        });
        let moved = if df {
            old.wrapping_sub(delta)
        } else {
            old.wrapping_add(delta)
        };
        // A 32-bit address write zero-extends (64-bit mode), a 16-bit one keeps bits 63:16.
        self.core.regs.gpr[index] = match addr_bits {
            16 => (old & !0xffff) | (moved & 0xffff),
            32 => moved & 0xffff_ffff,
            _ => moved,
        };
        let done = if io.rep {
            let left = (rcx & mask) - n;
            self.core.regs.gpr[reg::RCX] = (rcx & !mask) | left;
            left == 0
        } else {
            true
        };
        // RIP moves only when the whole REP is done; otherwise the guest runs the instruction
        // again for the next chunk (§4 "String IO").
        if done {
            self.skip(root)?;
            if let Some(u) = self.undo.as_mut() {
                u.old_rip = Some(rip);
            }
        }
        t.df = u8::from(df);
        t.count = n as u16;
        t.flags = rhax_api::tunnel::HAX_IO_FLAG_STRING;
        t.vaddr = lowest;
        self.set_io_payload(&t);
        Ok(self.wait_for_memory(if inward {
            MemoryRequest::ProbeIns {
                linear: lowest,
                len: bytes,
                mode,
                access,
            }
        } else {
            MemoryRequest::StringOut {
                linear: lowest,
                len: bytes,
                mode,
                access,
            }
        }))
    }
}

/// The tunnel's IO record of a one-element access (string IO sets its count, flags and
/// address afterwards).
fn tunnel_io(io: &crate::vmcs::exit::IoAccess) -> TunnelIo {
    TunnelIo {
        direction: u8::from(io.direction == IoDirection::In),
        df: 0,
        size: u16::from(io.size),
        port: io.port,
        count: 1,
        flags: 0,
        pad0: 0,
        pad1: 0,
        pad2: 0,
        vaddr: 0,
    }
}
