//! Integer-only number formatting: kernels build without SSE (ARCHITECTURE.md, "Values at the
//! edge"), so the metal kernel, which renders through this crate, cannot use `f64`. A ratio is
//! printed with two decimals from 128-bit integer arithmetic.

use core::fmt;

/// `num / den` printed with two decimals, rounded half up; `-` when `den` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    /// Numerator.
    pub num: u64,
    /// Denominator.
    pub den: u64,
}

impl Ratio {
    /// `num / den`.
    pub const fn new(num: u64, den: u64) -> Self {
        Self { num, den }
    }

    /// The value in hundredths, rounded half up, or `None` when `den` is 0.
    pub fn hundredths(self) -> Option<u128> {
        if self.den == 0 {
            return None;
        }
        let den = u128::from(self.den);
        Some((u128::from(self.num) * 100 + den / 2) / den)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = StrBuf::<48>::new();
        match self.hundredths() {
            Some(h) => fmt::Write::write_fmt(&mut b, format_args!("{}.{:02}", h / 100, h % 100))?,
            None => fmt::Write::write_str(&mut b, "-")?,
        }
        f.pad(b.as_str())
    }
}

/// A rate: `count` events in `ms` milliseconds, printed per second as an integer (rounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerSecond {
    /// Events.
    pub count: u64,
    /// Milliseconds.
    pub ms: u64,
}

impl PerSecond {
    /// Events per second, rounded half up; `None` for an empty interval.
    pub fn value(self) -> Option<u64> {
        if self.ms == 0 {
            return None;
        }
        let ms = u128::from(self.ms);
        let v = (u128::from(self.count) * 1000 + ms / 2) / ms;
        Some(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for PerSecond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = StrBuf::<24>::new();
        match self.value() {
            Some(v) => fmt::Write::write_fmt(&mut b, format_args!("{v}"))?,
            None => fmt::Write::write_str(&mut b, "-")?,
        }
        f.pad(b.as_str())
    }
}

/// A fixed-capacity string on the stack; writing past its end is a `fmt::Error`.
pub struct StrBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StrBuf<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the bytes are UTF-8.
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl<const N: usize> Default for StrBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StrBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
