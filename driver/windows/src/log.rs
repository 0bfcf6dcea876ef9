//! The driver's messages: `DbgPrintEx` lines prefixed `rhax: `.
//!
//! `DbgPrint`'s format is printf: a `%` in text that reaches it as the format would read
//! arguments that are not there. So the format is a constant (`"rhax: %s\n"`) and every
//! message, formatted here by `core::fmt` into a fixed buffer on the stack (no allocation:
//! messages are written on failure paths too), is passed as the `%s` argument.
//!
//! `DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL, ...)` rather than `DbgPrint`: since
//! Windows Vista plain `DbgPrint` output is filtered out unless the Debug Print Filter is set
//! in the registry; error-level IHV driver messages are shown by default (WinDbg,
//! DebugView). Wine 8.0 prints both (`WINEDEBUG=warn+debugstr`).

use core::fmt;

/// Bytes of one message, the terminating NUL included (`DbgPrint` takes up to 512).
pub const LINE_CAP: usize = 240;

/// A message being formatted: ASCII-safe, truncated at [`LINE_CAP`] - 1 bytes, NUL-terminated.
pub struct Line {
    buf: [u8; LINE_CAP],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; LINE_CAP],
            len: 0,
        }
    }
}

impl Line {
    /// The text so far (without the NUL).
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// The NUL-terminated text, for `%s`.
    pub fn as_c_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }
}

impl fmt::Write for Line {
    /// Appends what fits; a NUL (which would end `%s` early) or a non-printable byte becomes
    /// `?`. Never fails: a truncated message is better than none.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len + 1 >= LINE_CAP {
                break;
            }
            // No indexing: the panic handler logs through this, and a bounds-check panic
            // here would recurse (`cargo xtask sys` checks the image for recursion).
            let Some(slot) = self.buf.get_mut(self.len) else {
                break;
            };
            *slot = if b == b' ' || b.is_ascii_graphic() {
                b
            } else {
                b'?'
            };
            self.len += 1;
        }
        if let Some(end) = self.buf.get_mut(self.len) {
            *end = 0;
        }
        Ok(())
    }
}

/// Formats `args` into a [`Line`].
pub fn format(args: fmt::Arguments<'_>) -> Line {
    let mut line = Line::default();
    let _ = fmt::Write::write_fmt(&mut line, args);
    line
}

/// Prints one message (any IRQL up to DIRQL: `%s` only, no `%ws`/`%wZ`, which need
/// PASSIVE_LEVEL).
#[cfg(rhax_nt)]
pub fn print(args: fmt::Arguments<'_>) {
    /// `DPFLTR_IHVDRIVER_ID`.
    const DPFLTR_IHVDRIVER_ID: u32 = 77;
    /// `DPFLTR_ERROR_LEVEL`.
    const DPFLTR_ERROR_LEVEL: u32 = 0;
    let line = format(args);
    // SAFETY: a constant format with one `%s`, whose argument is NUL-terminated (`Line`
    // keeps a NUL after its text) and lives across the call.
    unsafe {
        crate::nt::DbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            DPFLTR_ERROR_LEVEL,
            c"rhax: %s\n".as_ptr().cast(),
            line.as_c_ptr(),
        )
    };
}

/// `log!("...", args)`: one `rhax: ` line through `DbgPrintEx`.
#[cfg(rhax_nt)]
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::print(core::format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_terminates() {
        let l = format(format_args!("VT-x {} on {} CPUs", "usable", 8));
        assert_eq!(l.as_bytes(), b"VT-x usable on 8 CPUs");
        assert_eq!(l.buf[l.len], 0);
    }

    #[test]
    fn printf_directives_are_plain_text_and_nul_cannot_cut() {
        // The text is an argument, never the format; a NUL would end `%s` early.
        let l = format(format_args!("100%s done\0{}", "%n\n"));
        assert_eq!(l.as_bytes(), b"100%s done?%n?");
    }

    #[test]
    fn long_messages_are_truncated_with_room_for_the_nul() {
        let long = "x".repeat(1000);
        let l = format(format_args!("{long}"));
        assert_eq!(l.as_bytes().len(), LINE_CAP - 1);
        assert_eq!(l.buf[LINE_CAP - 1], 0);
    }
}
