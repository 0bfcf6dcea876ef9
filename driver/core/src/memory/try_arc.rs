//! [`TryArc`]: a reference-counted shared pointer whose construction reports a failed
//! allocation instead of aborting (`Arc::try_new` is not stable). Only what the dispatcher needs:
//! `try_new`, `clone`, `Deref`, and [`TryArc::into_inner`] with the standard library's
//! guarantee that exactly one of the owners calling it gets the value.

use alloc::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicUsize, Ordering};

use crate::platform::PlatformError;

struct Inner<T> {
    count: AtomicUsize,
    value: T,
}

/// A shared, immutable (interior mutability aside) `T` with an atomic reference count.
pub struct TryArc<T> {
    ptr: NonNull<Inner<T>>,
    _owns: PhantomData<Inner<T>>,
}

// SAFETY: as `Arc<T>`: the value is shared between threads (`Sync` needed) and may be dropped
// by any of them (`Send` needed); the count is atomic.
unsafe impl<T: Send + Sync> Send for TryArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for TryArc<T> {}

impl<T> TryArc<T> {
    /// Moves `value` into a new allocation, or hands it back when the heap is exhausted.
    pub fn try_new(value: T) -> Result<TryArc<T>, (PlatformError, T)> {
        let layout = Layout::new::<Inner<T>>();
        // An `Inner` always has the count in it: never zero-sized.
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc(layout) }.cast::<Inner<T>>();
        let Some(ptr) = NonNull::new(raw) else {
            return Err((PlatformError::OutOfMemory, value));
        };
        // SAFETY: `ptr` is a fresh allocation with `Inner<T>`'s layout, valid for writes.
        unsafe {
            ptr.as_ptr().write(Inner {
                count: AtomicUsize::new(1),
                value,
            })
        };
        Ok(TryArc {
            ptr,
            _owns: PhantomData,
        })
    }

    /// A zeroed `T` in a new allocation, completed in place by `init` (a large `T` never sits
    /// on the kernel stack). `oom` is the error when the heap is exhausted; an `init` error
    /// frees the allocation and is returned.
    pub fn try_new_zeroed_with<E>(
        oom: E,
        init: impl FnOnce(&mut T) -> Result<(), E>,
    ) -> Result<TryArc<T>, E>
    where
        T: crate::heap::Zeroable,
    {
        let layout = Layout::new::<Inner<T>>();
        // SAFETY: the layout has a non-zero size (the count is in it).
        let raw = unsafe { alloc_zeroed(layout) }.cast::<Inner<T>>();
        let Some(ptr) = NonNull::new(raw) else {
            return Err(oom);
        };
        // SAFETY: a fresh, zeroed allocation of `Inner<T>`: a zero `AtomicUsize` and a zero
        // `T` (`T: Zeroable`) are valid, so the whole `Inner<T>` is initialised; nothing else
        // refers to it yet, so the exclusive borrow is sound.
        let inner = unsafe { &mut *ptr.as_ptr() };
        *inner.count.get_mut() = 1;
        if let Err(e) = init(&mut inner.value) {
            let value: *mut T = &mut inner.value;
            // SAFETY: `value` is initialised and dropped once; then the allocation, made with
            // this layout and referenced by nothing, is freed.
            unsafe { core::ptr::drop_in_place(value) };
            // SAFETY: as above.
            unsafe { dealloc(ptr.as_ptr().cast::<u8>(), layout) };
            return Err(e);
        }
        Ok(TryArc {
            ptr,
            _owns: PhantomData,
        })
    }

    fn inner(&self) -> &Inner<T> {
        // SAFETY: the allocation lives while any `TryArc` to it does, and this is one.
        unsafe { self.ptr.as_ref() }
    }

    /// The value, if this is the last owner; otherwise drops this owner and returns `None`.
    /// When every owner calls this, exactly one gets the value (as `Arc::into_inner`).
    pub fn into_inner(this: TryArc<T>) -> Option<T> {
        let this = core::mem::ManuallyDrop::new(this);
        if this.inner().count.fetch_sub(1, Ordering::Release) != 1 {
            return None;
        }
        // Every other owner's use of the value happens before this (their Release decrements).
        fence(Ordering::Acquire);
        let ptr = this.ptr.as_ptr();
        // SAFETY: `ptr` points to a live `Inner<T>` (the count was 1 until now); only the
        // field's address is taken.
        let field = unsafe { core::ptr::addr_of!((*ptr).value) };
        // SAFETY: the count reached zero: this is the only access left; the value is read out
        // once and the allocation is then freed without dropping it again.
        let value = unsafe { field.read() };
        // SAFETY: allocated in `try_new` with this layout; nothing refers to it any more.
        unsafe { dealloc(ptr.cast::<u8>(), Layout::new::<Inner<T>>()) };
        Some(value)
    }
}

impl<T> Clone for TryArc<T> {
    fn clone(&self) -> Self {
        // Relaxed: a new owner is made from an existing one, which keeps the value alive.
        let old = self.inner().count.fetch_add(1, Ordering::Relaxed);
        // Counts are bounded by the objects that hold them (handles, requests); reaching
        // isize::MAX would need more owners than memory holds: a broken invariant.
        assert!(old < isize::MAX as usize, "TryArc count overflow");
        TryArc {
            ptr: self.ptr,
            _owns: PhantomData,
        }
    }
}

impl<T> Deref for TryArc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T> Drop for TryArc<T> {
    fn drop(&mut self) {
        if self.inner().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        let ptr = self.ptr.as_ptr();
        // SAFETY: the last owner: drop the value in place once.
        unsafe { core::ptr::drop_in_place(ptr) };
        // SAFETY: allocated in `try_new` with this layout; nothing refers to it any more.
        unsafe { dealloc(ptr.cast::<u8>(), Layout::new::<Inner<T>>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_deref_into_inner_exactly_once() {
        let a = TryArc::try_new(alloc::vec![1u32, 2, 3]).ok().unwrap();
        let b = a.clone();
        assert_eq!(&*b, &[1, 2, 3]);
        assert_eq!(TryArc::into_inner(a), None);
        assert_eq!(TryArc::into_inner(b), Some(alloc::vec![1, 2, 3]));
        let c = TryArc::try_new(alloc::string::String::from("x"))
            .ok()
            .unwrap();
        drop(c.clone());
        drop(c);
    }
}
