//! Plain-old-data byte views.
//!
//! The dispatcher and every transport move ABI structs through byte buffers (the
//! `METHOD_BUFFERED` system buffer on Windows, the `ioctl` argument on POSIX). [`Pod`] gives
//! those byte views without any `unsafe` at the call site.

use core::mem::size_of;

/// A `#[repr(C)]` type that is nothing but bytes: no padding, no invalid bit patterns.
///
/// The provided methods give byte views and byte copies. They never panic: a slice of the
/// wrong length gives `None`.
///
/// # Safety
///
/// An implementor guarantees all of the following:
/// * every bit pattern of `size_of::<Self>()` bytes is a valid value of `Self` (no `bool`,
///   `char`, enum, reference or pointer inside);
/// * `Self` has no padding bytes: every byte of every value is initialised. For a struct this
///   means the fields tile it with no gap (checked by the compile-time layout assertions next
///   to each type); for a union it means every constructor initialises all of its bytes;
/// * `Self` has no interior mutability and no `Drop` (implied by `Copy`).
pub unsafe trait Pod: Copy + 'static {
    /// The size of the value in bytes, as encoded in the IOCTL codes.
    const SIZE: usize = size_of::<Self>();

    /// An all-zero value.
    fn zeroed() -> Self {
        // SAFETY: by the trait contract every bit pattern, so also all-zero, is a valid `Self`.
        unsafe { core::mem::zeroed() }
    }

    /// The value's bytes, in memory order (little-endian on every HAXM host).
    fn as_bytes(&self) -> &[u8] {
        let ptr = (self as *const Self).cast::<u8>();
        // SAFETY: `ptr` points to `size_of::<Self>()` bytes owned by `*self` and borrowed for
        // the returned lifetime; all of them are initialised because `Self` has no padding
        // (trait contract); `u8` has alignment 1.
        unsafe { core::slice::from_raw_parts(ptr, size_of::<Self>()) }
    }

    /// The value's bytes, writable. Any bytes written form a valid `Self`.
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        let ptr = (self as *mut Self).cast::<u8>();
        // SAFETY: as in `as_bytes`, and the exclusive borrow of `*self` makes the slice the
        // only access path; any bytes written leave a valid `Self` (all bit patterns valid).
        unsafe { core::slice::from_raw_parts_mut(ptr, size_of::<Self>()) }
    }

    /// Copies a value out of a slice of exactly `size_of::<Self>()` bytes (any alignment).
    ///
    /// Returns `None` if the length differs.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        Self::read_from_prefix(bytes)
    }

    /// Copies a value out of the first `size_of::<Self>()` bytes of `bytes` (any alignment).
    ///
    /// Returns `None` if the slice is shorter than that.
    fn read_from_prefix(bytes: &[u8]) -> Option<Self> {
        let src = bytes.get(..size_of::<Self>())?;
        let mut value = Self::zeroed();
        value.as_bytes_mut().copy_from_slice(src);
        Some(value)
    }

    /// Copies the value into the first `size_of::<Self>()` bytes of `out`.
    ///
    /// Returns the number of bytes written, or `None` (writing nothing) if `out` is too short.
    fn write_to_prefix(&self, out: &mut [u8]) -> Option<usize> {
        let dst = out.get_mut(..size_of::<Self>())?;
        dst.copy_from_slice(self.as_bytes());
        Some(size_of::<Self>())
    }
}

/// Implements [`Pod`] and an all-zero [`Default`] for ABI structs.
///
/// Only use it for `#[repr(C)]` structs made of integers, arrays of integers and other `Pod`
/// structs, whose layout is pinned by an `assert_layout!` next to the type.
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: `$ty` is `#[repr(C)]`, made only of integers, integer arrays and other
            // `Pod` types (all bit patterns valid), and its compile-time layout assertions pin
            // every field to an offset that leaves no padding.
            unsafe impl $crate::pod::Pod for $ty {}

            impl Default for $ty {
                /// The all-zero value.
                fn default() -> Self {
                    <Self as $crate::pod::Pod>::zeroed()
                }
            }
        )*
    };
}
pub(crate) use impl_pod;

/// Compile-time layout assertions: total size and the offset of every listed field.
///
/// A drift in any number fails the build on every target.
macro_rules! assert_layout {
    ($ty:ty, size = $size:expr $(, align = $align:expr)?; $($($field:ident).+ = $off:expr),* $(,)?) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            $(assert!(core::mem::align_of::<$ty>() == $align);)?
            $(assert!(core::mem::offset_of!($ty, $($field).+) == $off);)*
        };
    };
}
pub(crate) use assert_layout;

// SAFETY: primitive unsigned and signed integers: every bit pattern is valid, no padding.
unsafe impl Pod for u8 {}
// SAFETY: as for `u8`.
unsafe impl Pod for u16 {}
// SAFETY: as for `u8`.
unsafe impl Pod for u32 {}
// SAFETY: as for `u8`.
unsafe impl Pod for u64 {}
// SAFETY: as for `u8`.
unsafe impl Pod for i32 {}
// SAFETY: an array of `Pod` elements has no padding between elements (stride = size) and
// every bit pattern of each element is valid.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

#[cfg(test)]
mod tests {
    use super::Pod;

    #[test]
    fn round_trip_and_length_checks() {
        let v: u64 = 0x1122_3344_5566_7788;
        assert_eq!(
            v.as_bytes(),
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(u64::from_bytes(v.as_bytes()), Some(v));
        assert_eq!(u64::from_bytes(&[0; 7]), None);
        assert_eq!(u64::from_bytes(&[0; 9]), None);
        assert_eq!(
            u64::read_from_prefix(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff]),
            Some(1)
        );
        let mut out = [0xaa_u8; 4];
        assert_eq!(v.write_to_prefix(&mut out), None);
        assert_eq!(out, [0xaa; 4], "a failed write must not touch the buffer");
        // Unaligned source.
        let buf = [0u8, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(u64::from_bytes(&buf[1..]), Some(1));
    }
}
