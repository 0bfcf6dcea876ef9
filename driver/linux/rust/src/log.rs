//! printk from Rust: a message formatted into a fixed buffer (no allocation: usable in a lend
//! and when memory is short), prefixed "rhax: " by the glue.

use core::fmt::{self, Write};

/// A message buffer (truncates what does not fit).
pub(crate) struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    pub(crate) const fn new() -> Self {
        Line {
            buf: [0; 200],
            len: 0,
        }
    }

    /// The message so far. No indexing that can panic: the panic handler uses it.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // No indexing that can panic: the panic handler formats through this.
        let room = self.buf.len().saturating_sub(self.len);
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

/// Prints one line at `level` (0 err, 1 warn, 2 info).
pub(crate) fn print(level: i32, args: fmt::Arguments<'_>) {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    let b = line.bytes();
    // SAFETY: `b` is valid for `b.len()` bytes during the call.
    unsafe { crate::ffi::rhax_glue_log(level, b.as_ptr(), b.len()) };
}

/// printk at KERN_INFO.
macro_rules! info {
    ($($t:tt)*) => { $crate::log::print(2, format_args!($($t)*)) };
}

/// printk at KERN_ERR.
macro_rules! error {
    ($($t:tt)*) => { $crate::log::print(0, format_args!($($t)*)) };
}
