//! A test [`Env`] for the MMIO emulator: registers in arrays, one flat byte buffer as memory
//! (linear address = segment base + offset), an optional "MMIO" range whose reads stop, an
//! optional read-only range whose writes fault with #PF, and a log of every access.

#![allow(dead_code)]

use rhax_core::emulate::{Effects, Env, Exception, Fault, Seg};

/// Why the test environment stops: an MMIO read at this linear address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioStop(pub u64);

pub struct TestEnv {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub xmm: [u128; 16],
    pub ymm_high: Option<[u128; 16]>,
    pub selectors: [u16; 6],
    pub bases: [u64; 6],
    pub stack32: bool,
    pub protected: bool,
    pub mem: Vec<u8>,
    /// Reads of linear addresses in [start, end) stop with MmioStop.
    pub mmio: Option<(u64, u64)>,
    /// Writes to linear addresses in [start, end) fault with #PF (write, present).
    pub read_only: Option<(u64, u64)>,
    /// (segment, offset, length) of every read, in order.
    pub reads: Vec<(Seg, u64, usize)>,
    /// (segment, offset, length) of every write check, in order.
    pub checks: Vec<(Seg, u64, usize)>,
}

pub const MEM_SIZE: usize = 0x1_0000;

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            gpr: [0; 16],
            rip: 0x1000,
            rflags: 0x2,
            xmm: [0; 16],
            ymm_high: Some([0; 16]),
            selectors: [0; 6],
            bases: [0; 6],
            stack32: true,
            protected: true,
            mem: vec![0; MEM_SIZE],
            mmio: None,
            read_only: None,
            reads: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn linear(&self, seg: Seg, offset: u64) -> u64 {
        self.bases[seg as usize].wrapping_add(offset)
    }

    fn range(
        &self,
        seg: Seg,
        offset: u64,
        len: usize,
    ) -> Result<std::ops::Range<usize>, Fault<MmioStop>> {
        let lin = self.linear(seg, offset);
        let start = usize::try_from(lin)
            .ok()
            .filter(|&s| s + len <= self.mem.len());
        // Outside the buffer: a #GP(0), like a limit violation.
        start
            .map(|s| s..s + len)
            .ok_or(Fault::Exception(Exception::GP0))
    }

    pub fn put(&mut self, lin: u64, bytes: &[u8]) {
        let s = lin as usize;
        self.mem[s..s + bytes.len()].copy_from_slice(bytes);
    }

    pub fn get(&self, lin: u64, len: usize) -> &[u8] {
        let s = lin as usize;
        &self.mem[s..s + len]
    }

    /// Commits `fx` as the vCPU would.
    pub fn apply(&mut self, fx: &Effects) {
        for (n, v) in fx.gpr.iter().enumerate() {
            if let Some(v) = v {
                self.gpr[n] = *v;
            }
        }
        self.rip = fx.rip;
        self.rflags = fx.rflags;
        if let Some(x) = fx.xmm {
            self.xmm[x.n as usize] = x.value;
            if let (Some(h), Some(y)) = (x.high, self.ymm_high.as_mut()) {
                y[x.n as usize] = h;
            }
        }
        if let Some((s, sel)) = fx.segment {
            self.selectors[s as usize] = sel;
            self.bases[s as usize] = u64::from(sel) << 4;
        }
        for w in fx.writes.iter().flatten() {
            let lin = self.linear(w.seg, w.offset);
            self.put(lin, w.bytes());
        }
    }
}

impl Env for TestEnv {
    type Stop = MmioStop;
    fn gpr(&self, n: u8) -> u64 {
        self.gpr[n as usize]
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn rflags(&self) -> u64 {
        self.rflags
    }
    fn xmm(&self, n: u8) -> u128 {
        self.xmm[n as usize]
    }
    fn ymm_high(&self, n: u8) -> Option<u128> {
        self.ymm_high.map(|y| y[n as usize])
    }
    fn selector(&self, s: Seg) -> u16 {
        self.selectors[s as usize]
    }
    fn segment_base(&self, s: Seg) -> u64 {
        self.bases[s as usize]
    }
    fn stack_is_32bit(&self) -> bool {
        self.stack32
    }
    fn protected_mode(&self) -> bool {
        self.protected
    }
    fn read(&mut self, seg: Seg, offset: u64, buf: &mut [u8]) -> Result<(), Fault<MmioStop>> {
        self.reads.push((seg, offset, buf.len()));
        let lin = self.linear(seg, offset);
        if let Some((s, e)) = self.mmio {
            if lin < e && lin + buf.len() as u64 > s {
                return Err(Fault::Env(MmioStop(lin)));
            }
        }
        let r = self.range(seg, offset, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }
    fn check_write(&mut self, seg: Seg, offset: u64, len: usize) -> Result<(), Fault<MmioStop>> {
        self.checks.push((seg, offset, len));
        let lin = self.linear(seg, offset);
        if let Some((s, e)) = self.read_only {
            if lin < e && lin + len as u64 > s {
                return Err(Fault::Exception(Exception {
                    vector: 14,
                    error_code: Some(3),
                    cr2: Some(lin.max(s)),
                }));
            }
        }
        self.range(seg, offset, len).map(|_| ())
    }
}
