//! MMIO: EPT violations outside RAM, the instruction fetch and FAST_MMIO (haxm-abi.md §4),
//! and the completion of loads at the next RUN.

use super::*;

impl HaxVcpu {
    /// Where the instruction of the exit is, and its decoding mode.
    pub(in crate::vcpu::haxm) fn fetch_site<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<Fetch, HaxError> {
        let (rip, cs_base, cs_ar, mode, rflags, user) =
            self.core.with_vmcs(root, |vmcs, _| -> Result<_, VmFail> {
                let cs_ar = vmcs.guest_cs_access_rights()?;
                let mode = Self::paging(vmcs)?;
                let rflags = vmcs.guest_rflags()?;
                // CPL = CS.DPL for a non-conforming code segment (no extra VMREAD on the
                // MMIO path); a conforming one needs SS.DPL (SDM Vol. 3A §6.5).
                let user = if mode.cr0 & 1 == 0 || rflags & RFLAGS_VM != 0 || cs_ar & 0x1c == 0x1c {
                    Self::user_mode(vmcs, &mode, rflags)?
                } else {
                    (cs_ar >> 5) & 3 == 3
                };
                Ok((
                    vmcs.guest_rip()?,
                    vmcs.guest_cs_base()?,
                    cs_ar,
                    mode,
                    rflags,
                    user,
                ))
            })??;
        let cpu_mode = if mode.lma && cs_ar & (1 << 13) != 0 {
            CpuMode::Bits64
        } else if mode.cr0 & 1 != 0 && rflags & RFLAGS_VM == 0 && cs_ar & (1 << 14) != 0 {
            CpuMode::Bits32
        } else {
            CpuMode::Bits16
        };
        let linear = if cpu_mode == CpuMode::Bits64 {
            rip
        } else {
            cs_base.wrapping_add(rip) & 0xffff_ffff
        };
        Ok(Fetch {
            linear,
            mode,
            cpu_mode,
            access: Access {
                kind: AccessKind::Fetch,
                user,
                ac: false,
            },
        })
    }

    /// The second step of an EPT violation, resolved at passive level.
    pub(in crate::vcpu::haxm) fn finish_violation<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        v: &Resolved,
    ) -> Result<Next, HaxError> {
        Ok(match v.resolution {
            Resolution::Mapped => Next::Resume,
            Resolution::Mmio | Resolution::WriteToRom => {
                let bytes = v.fetched.get(..v.got).unwrap_or(&[]);
                // The fetch stopped at a page the guest's paging refuses: only an instruction
                // that runs into that page faults (#PF on its first byte there, as the CPU's
                // own fetch would); one that ends before it is emulated.
                let truncated = |b: &[u8]| {
                    matches!(
                        emulate::decode_full(b, v.cpu_mode),
                        Err(emulate::DecodeFailure::Truncated)
                    )
                };
                match v.fault {
                    Some(WalkError::PageFault { linear, code }) if truncated(bytes) => {
                        self.inject_page_fault(root, linear, code)?;
                        Next::Resume
                    }
                    // The instruction's bytes run into a page PROTECT_RAM protects.
                    Some(WalkError::Memory(MemoryError::Protected { gpa })) if truncated(bytes) => {
                        self.protected_exit(gpa, PF_FLAG_FETCH)
                    }
                    Some(e) if truncated(bytes) => self.panic(PanicReason::GuestMemory(e)),
                    _ => self.mmio(root, v, bytes)?,
                }
            }
            Resolution::Protected { gpa: page } => {
                self.protected_exit(page, (v.qualification & 0x3f) as u32)
            }
        })
    }

    /// HAX_EXIT_PAGEFAULT for a page PROTECT_RAM protects (haxm-abi.md §4): `gpa`, the
    /// access `flags`; the instruction runs again at the next RUN.
    pub(in crate::vcpu::haxm) fn protected_exit(&mut self, gpa: u64, flags: u32) -> Next {
        self.set_payload(TunnelPayload::from_pagefault(TunnelPageFault {
            gpa,
            flags,
            ..TunnelPageFault::default()
        }));
        Next::User(ExitStatus::PageFault)
    }

    /// FAST_MMIO for the instruction `bytes` (fetched at passive level) of violation `v`:
    /// the plain MOV loads and stores take the fast path here (no executor, the load
    /// completed at the next RUN); everything else the general path (`emulation.rs`).
    pub(in crate::vcpu::haxm) fn mmio<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
        v: &Resolved,
        bytes: &[u8],
    ) -> Result<Next, HaxError> {
        let (gpa, cpu_mode) = (v.gpa, v.cpu_mode);
        if let Some(next) = self.apic_mmio(root, gpa, bytes, cpu_mode)? {
            return Ok(next);
        }
        let insn = match emulate::decode(bytes, cpu_mode) {
            Ok(i) if self.mmio_fast_path => i,
            _ => return self.emulate_mmio(root, gpa, bytes, cpu_mode, v.mode, v.user),
        };
        let mut m = FastMmio {
            gpa,
            size: insn.size,
            ..FastMmio::default()
        };
        match insn.operation {
            Operation::Load {
                dest,
                dest_size,
                extend,
            } => {
                m.direction = 0;
                self.pending = Pending::MmioLoad {
                    dest,
                    dest_size,
                    size: insn.size,
                    extend,
                    length: insn.length,
                };
            }
            Operation::StoreRegister { src } => {
                let v = self.gpr(root, src.number)?;
                m.direction = 1;
                m.value = emulate::store_value(v, src, insn.size);
            }
            Operation::StoreImmediate { value } => {
                m.direction = 1;
                m.value = emulate::store_value(
                    value,
                    Register {
                        number: 0,
                        high_byte: false,
                    },
                    insn.size,
                );
            }
        }
        self.fill_fast_mmio(m.gpa, m.size, m.direction, m.value);
        if m.direction == 1 {
            self.core
                .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                    let rip = vmcs.guest_rip()?;
                    vmcs.set_guest_rip(rip.wrapping_add(u64::from(insn.length)));
                    Ok(())
                })??;
        }
        Ok(Next::User(ExitStatus::FastMmio))
    }

    /// Writes a FAST_MMIO record into the IO buffer. Only gpa, value, size and direction are
    /// HAXM's to write (§4); the rest keeps what the buffer held, and a read (direction 0)
    /// leaves `value` for user space to fill. For a move (2), `value` is `gpa2`.
    pub(in crate::vcpu::haxm) fn fill_fast_mmio(
        &mut self,
        gpa: u64,
        size: u8,
        direction: u8,
        value: u64,
    ) {
        let buf = &mut self.iobuf.bytes_mut()[..core::mem::size_of::<FastMmio>()];
        let mut old = FastMmio::read_from_prefix(buf).unwrap_or_default();
        old.gpa = gpa;
        if direction != 0 {
            old.value = value;
        }
        old.size = size;
        old.direction = direction;
        buf.copy_from_slice(old.as_bytes());
    }

    /// Completes the IN or MMIO read of the previous exit from the IO buffer (quirk 6).
    /// A string IN is not completed here but by [`HaxVcpu::complete_memory`] (guest memory).
    pub(in crate::vcpu::haxm) fn complete_pending<V: Vmx>(
        &mut self,
        root: &mut VmxRoot<V>,
    ) -> Result<(), HaxError> {
        let pending = core::mem::replace(&mut self.pending, Pending::None);
        match pending {
            Pending::None => {}
            Pending::In { size } => {
                let mut b = [0u8; 8];
                b[..usize::from(size)]
                    .copy_from_slice(&self.iobuf.bytes_mut()[..usize::from(size)]);
                let v = u64::from_le_bytes(b);
                let rax = &mut self.core.regs.gpr[reg::RAX];
                // Hardware: a 32-bit IN zero-extends into RAX (rhax does not reproduce HAXM's
                // quirk 9, which keeps RAX[63:32]).
                *rax = match size {
                    1 => (*rax & !0xff) | v,
                    2 => (*rax & !0xffff) | v,
                    _ => v & 0xffff_ffff,
                };
            }
            Pending::Ins { .. } => self.pending = pending,
            Pending::MmioLoad {
                dest,
                dest_size,
                size,
                extend,
                length,
            } => {
                let value = FastMmio::read_from_prefix(self.iobuf.bytes_mut())
                    .map(|m| m.value)
                    .unwrap_or(0);
                let old = self.gpr(root, dest.number)?;
                let new = emulate::merge_load(old, dest, dest_size, size, extend, value);
                self.set_gpr(root, dest.number, new)?;
                self.core
                    .with_vmcs(root, |vmcs, _| -> Result<(), VmFail> {
                        let rip = vmcs.guest_rip()?;
                        vmcs.set_guest_rip(rip.wrapping_add(u64::from(length)));
                        Ok(())
                    })??;
            }
        }
        Ok(())
    }
}
