//! The MMIO instruction emulator: a decoder ([`decode_full`]) and a transactional executor
//! ([`execute`]) of every instruction that can touch memory the vCPU emulates (issue 11), pure
//! logic over an [`Env`] the vCPU (or a test double) implements.
//!
//! - `decode.rs`: prefixes, REX, VEX, the one- and two-byte opcode maps, ModRM/SIB/disp and
//!   immediates (Intel SDM Vol. 2A chapter 2 "Instruction Format", 2023+ numbering).
//! - `decode_0f.rs`: the 0F map, MOVBE and the VEX moves.
//! - `exec.rs`: the semantics of each family (Vol. 2A/2B instruction pages).
//! - `alu.rs`: the arithmetic and its exact flags (Vol. 1 §3.4.3.1, Appendix A "EFLAGS Cross
//!   Reference").
//! - `legacy.rs`: the plain MOV decoder the vCPU still uses (`decode`, `Instruction`,
//!   `merge_load`, `store_value`), until the vCPU switches to this API.
//!
//! The executor is transactional (KVM's model): it only reads through the [`Env`], and every
//! change is returned in [`Effects`]; a stop at any read leaves nothing changed, and the caller
//! re-executes the instruction once the data is available.
//!
//! How a vCPU drives it (one MMIO exit):
//! 1. fetch the instruction bytes (up to 15) and [`decode_full`] them in the guest's mode;
//!    a [`DecodeFailure`] other than `Unsupported` is a #UD (or #GP for > 15 bytes) to inject;
//! 2. [`execute`] over an [`Env`] whose `read` serves RAM directly and, for MMIO, returns
//!    `Fault::Env(stop)` the first time (the vCPU exits to user space for the value) and the
//!    value user space supplied on the re-execution after it;
//! 3. on `Ok(effects)`: commit registers, RIP, RFLAGS, XMM and segment, and do the writes in
//!    order (RAM directly; an MMIO write is handed to user space, after which the instruction
//!    is complete). `check_write` was already called for each, so no write can fault then;
//! 4. `effects.done == false` (a REP string form with iterations left): commit and execute
//!    again (or re-enter the guest, which re-executes the instruction: the SDM's REP model
//!    lets interrupts in between iterations, Vol. 2B REP "Operation").
//!
//! No instruction here produces more than one write; [`Effects::writes`] holds two so that
//! the shape does not change when one that does (e.g. a split access) is added.

mod alu;
mod decode;
mod decode_0f;
mod exec;
pub mod legacy;

pub use alu::{AluOp, Flags};
pub use decode::decode_full;
pub use exec::execute;
pub use legacy::*;

/// A segment register, numbered as ModRM.reg encodes it (SDM Vol. 2A §3.1.1.3, Table 3-6
/// "Sreg"): ES = 0, CS, SS, DS, FS, GS = 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// ES (0).
    Es,
    /// CS (1).
    Cs,
    /// SS (2).
    Ss,
    /// DS (3).
    Ds,
    /// FS (4).
    Fs,
    /// GS (5).
    Gs,
}

impl Seg {
    /// The segment register with SDM encoding `n` (0..=5), `None` for 6 and 7.
    pub fn from_number(n: u8) -> Option<Seg> {
        Some(match n {
            0 => Seg::Es,
            1 => Seg::Cs,
            2 => Seg::Ss,
            3 => Seg::Ds,
            4 => Seg::Fs,
            5 => Seg::Gs,
            _ => return None,
        })
    }
}

/// The repeat prefix as the instruction uses it (SDM Vol. 2B REP/REPE/REPZ/REPNE/REPNZ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rep {
    /// No repeat (also every non-string instruction, where F2/F3 are ignored or mandatory).
    None,
    /// F3 (or F2) on MOVS/STOS/LODS: repeat while rCX != 0.
    Rep,
    /// F3 on CMPS/SCAS: repeat while rCX != 0 and ZF = 1.
    Repe,
    /// F2 on CMPS/SCAS: repeat while rCX != 0 and ZF = 0.
    Repne,
}

/// A shift-free bit test (SDM Vol. 2A BT, BTS, BTR, BTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    /// BT: CF = bit.
    Bt,
    /// BTS: CF = bit, bit = 1.
    Bts,
    /// BTR: CF = bit, bit = 0.
    Btr,
    /// BTC: CF = bit, bit = !bit.
    Btc,
}

/// Which SSE/AVX move: the alignment rule and the register's width rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VecMove {
    /// MOVDQA/MOVAPS/MOVAPD and their VEX forms: #GP(0) unless aligned to the access size.
    Aligned,
    /// MOVDQU/MOVUPS/MOVUPD and their VEX forms.
    Unaligned,
    /// MOVD/MOVQ (66 0F 6E/7E, F3 0F 7E, 66 0F D6): 4 or 8 bytes, a load zeroes the rest of
    /// the XMM register.
    Scalar,
}

/// The instruction's identity. "Load" is memory to register, "Store" register (or immediate)
/// to memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// MOV r/m, r (88/89), MOV moffs, rAX (A2/A3), MOVNTI (0F C3).
    MovStore,
    /// MOV r, r/m (8A/8B), MOV rAX, moffs (A0/A1).
    MovLoad,
    /// MOV r/m, imm (C6/C7 /0).
    MovImm,
    /// MOV r/m16, Sreg (8C): `reg` holds the segment number.
    MovFromSreg,
    /// MOV Sreg, r/m16 (8E): `reg` holds the segment number (never CS).
    MovToSreg,
    /// MOVZX r, r/m8/16 (0F B6/B7): `size` is the source size.
    Movzx,
    /// MOVSX r, r/m8/16 (0F BE/BF).
    Movsx,
    /// MOVSXD r, r/m32 (63 in 64-bit mode; without REX.W a plain 16/32-bit load).
    Movsxd,
    /// MOVS (A4/A5).
    Movs,
    /// CMPS (A6/A7).
    Cmps,
    /// STOS (AA/AB).
    Stos,
    /// LODS (AC/AD).
    Lods,
    /// SCAS (AE/AF).
    Scas,
    /// ADD..CMP r/m, r (00/01, 08/09 ... 38/39).
    AluStore(AluOp),
    /// ADD..CMP r, r/m (02/03 ... 3A/3B).
    AluLoad(AluOp),
    /// ADD..CMP r/m, imm (80/81/82/83).
    AluImm(AluOp),
    /// TEST r/m, r (84/85).
    TestReg,
    /// TEST r/m, imm (F6/F7 /0 and its alias /1).
    TestImm,
    /// INC r/m (FE/FF /0).
    Inc,
    /// DEC r/m (FE/FF /1).
    Dec,
    /// NOT r/m (F6/F7 /2).
    Not,
    /// NEG r/m (F6/F7 /3).
    Neg,
    /// XCHG r/m, r (86/87).
    Xchg,
    /// CMPXCHG r/m, r (0F B0/B1).
    Cmpxchg,
    /// XADD r/m, r (0F C0/C1).
    Xadd,
    /// BT/BTS/BTR/BTC r/m, r (0F A3/AB/B3/BB): the bit offset may leave the operand.
    BitReg(BitOp),
    /// BT/BTS/BTR/BTC r/m, imm8 (0F BA /4-7).
    BitImm(BitOp),
    /// SETcc r/m8 (0F 90-9F), condition code 0..15.
    Setcc(u8),
    /// CMOVcc r, r/m (0F 40-4F), condition code 0..15.
    Cmovcc(u8),
    /// PUSH r/m (FF /6).
    PushMem,
    /// POP r/m (8F /0).
    PopMem,
    /// MOVBE r, m (0F 38 F0).
    MovbeLoad,
    /// MOVBE m, r (0F 38 F1).
    MovbeStore,
    /// An SSE/AVX move from memory into XMM/YMM `reg`.
    VecLoad(VecMove),
    /// An SSE/AVX move from XMM/YMM `reg` into memory.
    VecStore(VecMove),
}

/// A memory operand before its effective address is computed (the register values are only
/// known at execution). SDM Vol. 2A §2.1.5, Tables 2-1 to 2-3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register (0-15); 16-bit addressing names BX = 3, BP = 5, SI = 6, DI = 7.
    pub base: Option<u8>,
    /// Index register (0-15, never RSP).
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// The displacement sign-extended to 64 bits (moffs: zero-extended, it is an offset).
    pub disp: u64,
    /// RIP-relative (64-bit mode, ModRM mod 00 r/m 101): the address is next RIP + disp.
    pub rip_relative: bool,
}

/// The VEX prefix's fields that matter to a move (SDM Vol. 2A §2.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vex {
    /// VEX.L: 256-bit.
    pub l256: bool,
    /// VEX.W.
    pub w: bool,
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Length in bytes (1..=15).
    pub length: u8,
    /// The mode it was decoded in.
    pub mode: CpuMode,
    /// What it does.
    pub op: Op,
    /// Operand size in bytes (2, 4, 8) from the mode, 66 and REX.W (SDM Vol. 2A §3.6 Table
    /// 3-4; PUSH/POP default to 8 in 64-bit mode).
    pub operand_size: u8,
    /// Address size in bytes (2, 4, 8) from the mode and 67.
    pub address_size: u8,
    /// Bytes of memory one access touches (1..=32; a string form's element size).
    pub size: u8,
    /// The memory operand's segment: the override, else DS (SS for an rSP/rBP base); in
    /// 64-bit mode only FS/GS overrides count (SDM Vol. 1 §3.4.2.1). For string forms the
    /// source's (the destination is always ES).
    pub seg: Seg,
    /// The repeat prefix (string forms only).
    pub rep: Rep,
    /// LOCK (only accepted where legal).
    pub lock: bool,
    /// The register operand (ModRM.reg, or the implicit accumulator).
    pub reg: Option<Register>,
    /// The explicit memory operand (`None` for the string forms, whose operands are implicit,
    /// and for moffs it has no base or index).
    pub mem: Option<MemOperand>,
    /// The immediate, sign- or zero-extended to 64 bits as the instruction defines it.
    pub imm: u64,
    /// The VEX prefix, if any.
    pub vex: Option<Vex>,
}

/// Why an instruction was not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeFailure {
    /// The bytes ran out, or the instruction would be longer than 15 bytes (SDM Vol. 2A
    /// §2.3.11, #GP on hardware).
    Truncated,
    /// An opcode this emulator does not handle (`opcode`: the map (0, 0x0f, 0x0f38, VEX
    /// 0xc4_0f..) shifted left 8, or'ed with the opcode byte).
    Unsupported {
        /// Map and opcode.
        opcode: u32,
    },
    /// The ModRM names a register, not memory: such an instruction cannot touch MMIO.
    RegisterOperand,
    /// LOCK on an instruction or form that does not allow it (#UD, SDM Vol. 2A LOCK).
    InvalidLock,
    /// An encoding the CPU rejects with #UD (bad VEX, MOV to CS, BT group /0-3...).
    Invalid,
}

/// An exception the instruction raises (SDM Vol. 3A §6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// The vector (6 = #UD, 13 = #GP, 14 = #PF...).
    pub vector: u8,
    /// The error code, for the vectors that push one.
    pub error_code: Option<u32>,
    /// The faulting linear address (#PF).
    pub cr2: Option<u64>,
}

impl Exception {
    /// #UD (vector 6).
    pub const UD: Exception = Exception {
        vector: 6,
        error_code: None,
        cr2: None,
    };
    /// #GP(0) (vector 13).
    pub const GP0: Exception = Exception {
        vector: 13,
        error_code: Some(0),
        cr2: None,
    };
}

/// Why the environment refused an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault<S> {
    /// The environment stops the instruction (e.g. an MMIO read that needs user space).
    Env(S),
    /// The access faults (segmentation, paging, EPT misconfiguration reflected...).
    Exception(Exception),
}

/// The guest as the executor sees it. Implemented by the vCPU and by test doubles.
pub trait Env {
    /// Why the environment stops.
    type Stop;
    /// General register `n` (0..=15), all 64 bits.
    fn gpr(&self, n: u8) -> u64;
    /// RIP of the instruction.
    fn rip(&self) -> u64;
    /// RFLAGS.
    fn rflags(&self) -> u64;
    /// XMM register `n` (0..=15) from the guest's FXSAVE/XSAVE image.
    fn xmm(&self, n: u8) -> u128;
    /// Bits 255:128 of YMM `n`; `None`: the guest has no AVX state enabled (XCR0.YMM clear),
    /// so every VEX instruction is #UD (SDM Vol. 2A §2.3.10.2).
    fn ymm_high(&self, n: u8) -> Option<u128>;
    /// The selector of segment register `s` (MOV r/m16, Sreg).
    fn selector(&self, s: Seg) -> u16;
    /// The base of segment `s`: the alignment checks of MOVDQA & co. apply to the linear
    /// address (SDM Vol. 2B MOVDQA "#GP ... not aligned on a 16-byte boundary").
    fn segment_base(&self, s: Seg) -> u64;
    /// SS.B: the stack pointer is ESP (true) or SP (false) outside 64-bit mode (SDM Vol. 3A
    /// §3.4.5 "D/B flag").
    fn stack_is_32bit(&self) -> bool;
    /// CR0.PE: MOV Sreg loads are emulated only in real mode (and virtual-8086 mode, seen
    /// in RFLAGS.VM), where a selector load is only `base = selector << 4`.
    fn protected_mode(&self) -> bool;
    /// Reads `buf.len()` bytes at logical address seg:offset. The environment does
    /// segmentation (limits, #GP/#SS), paging (#PF), EPT, and decides RAM or MMIO.
    fn read(&mut self, seg: Seg, offset: u64, buf: &mut [u8]) -> Result<(), Fault<Self::Stop>>;
    /// Would a write of `len` bytes at seg:offset be allowed (same checks, no side effect)?
    fn check_write(&mut self, seg: Seg, offset: u64, len: usize) -> Result<(), Fault<Self::Stop>>;
}

/// Why [`execute`] produced no effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecError<S> {
    /// The environment stopped the instruction (nothing changed).
    Env(S),
    /// The instruction raises this exception (nothing changed).
    Exception(Exception),
    /// A decoded form this executor does not carry out (MOV Sreg load in protected mode).
    Unsupported(Op),
}

impl<S> From<Fault<S>> for ExecError<S> {
    fn from(f: Fault<S>) -> Self {
        match f {
            Fault::Env(s) => ExecError::Env(s),
            Fault::Exception(e) => ExecError::Exception(e),
        }
    }
}

/// The most bytes one memory write carries (a YMM register).
pub const MAX_WRITE: usize = 32;

/// A memory write, to be done by the caller in program order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemWrite {
    /// Segment.
    pub seg: Seg,
    /// Offset in the segment (already wrapped to the address size).
    pub offset: u64,
    /// Bytes (1..=32).
    pub len: u8,
    /// The bytes, little-endian; only `len` count.
    pub data: [u8; MAX_WRITE],
}

impl MemWrite {
    /// The bytes that count.
    pub fn bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// An XMM/YMM register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XmmWrite {
    /// Register 0..=15.
    pub n: u8,
    /// Bits 127:0.
    pub value: u128,
    /// Bits 255:128: `None` leaves them (legacy SSE), `Some` sets them (VEX, which also
    /// zeroes any bits above 255).
    pub high: Option<u128>,
}

/// Everything one execution changes. Nothing is applied by [`execute`]; the caller commits
/// it all or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// New values of the general registers (full 64 bits, already merged with the old).
    pub gpr: [Option<u64>; 16],
    /// The next RIP (the same RIP while a REP form has iterations left).
    pub rip: u64,
    /// The new RFLAGS.
    pub rflags: u64,
    /// An XMM/YMM write.
    pub xmm: Option<XmmWrite>,
    /// A segment register load (real/virtual-8086 mode: base = selector << 4; a load of SS
    /// also blocks interrupts for one instruction, SDM Vol. 3A §7.8.3).
    pub segment: Option<(Seg, u16)>,
    /// Memory writes in program order.
    pub writes: [Option<MemWrite>; 2],
    /// False: a REP form with iterations left; execute it again.
    pub done: bool,
}
