//! The IRP handlers: IRP_MJ_CREATE, CLEANUP, CLOSE and DEVICE_CONTROL into the one core
//! dispatcher (`haxm-abi.md` §1-§2).
//!
//! * CREATE opens the core object of the device (`open_system`, `open_vm`, `open_vcpu`:
//!   the core refuses a second open of a VM or vCPU, HAXM's exclusive devices) and keeps the
//!   core handle in a pool record hung on the file object (`FsContext`, with a tag in
//!   `FsContext2`), freed by CLOSE only (CLEANUP can race an IRP still in flight).
//! * CLEANUP (the last handle to the file object closed; on Windows it runs in the owning
//!   process's context, also when the process exits without closing) closes the core handle:
//!   this is where a vCPU's tunnel and IO-buffer mappings leave that process. Then the device
//!   table follows the core's objects. CLOSE does the same if CLEANUP did not (the record is
//!   taken exactly once): Wine 8.0 sends no IRP_MJ_CLEANUP at all (measured with
//!   `WINEDEBUG=trace+ntoskrnl`: create, ioctl, close), so there CLOSE closes the handle.
//! * Wine 8.0 also does not wait for IRP_MJ_CREATE: `CreateFileW` returns a handle before the
//!   driver has seen the open, so a refusal here (a second open of an exclusive VM or vCPU,
//!   an id that does not exist) shows under Wine only as `ERROR_INVALID_HANDLE` on every
//!   request through that handle; Windows fails `CreateFileW` with the status (the I/O
//!   manager itself refuses a second open of an exclusive device with ACCESS_DENIED).
//! * DEVICE_CONTROL: every HAXM code is METHOD_BUFFERED, so the system buffer holds the
//!   input and receives the output. The input is copied out first (the core takes disjoint
//!   input and output), then the core dispatches `&input[..InputBufferLength]` and
//!   `&mut SystemBuffer[..OutputBufferLength]`; `Information` is the bytes it wrote, 0 on
//!   error (`crate::status::completion`). A code of another transfer type is no HAXM code:
//!   the core answers it as unknown on that device, and no buffer is touched.
//!
//! All four run at PASSIVE_LEVEL: they are the top-level dispatch routines of a legacy
//! (non-filter) driver, called in the requesting thread (RUN included).

use core::alloc::Layout;

use crate::status::ShellError;

/// Input bytes a request may bring: the largest HAXM input is SET_CPUID's 8 + 64 * 40 =
/// 2568 bytes, the largest of rhax's RHAX_VCPU_IOCTL_SET_XSAVE's 4112; anything longer is
/// passed cut at this bound (the core checks minimum sizes, so a valid request always fits).
const MAX_INPUT: usize = 8192;

/// Output bytes a request is given: the largest HAXM output is GET_CPUID's 2568 bytes, the
/// largest of rhax's GET_XSAVE's 4112 (the core checks minimum sizes; `Information` never
/// exceeds what it wrote). A caller's larger output length is cut here, so the shell never
/// zeroes or hands out more than this.
const MAX_OUTPUT: usize = 8192;

/// Inputs up to this size are copied to the stack, larger ones to a pool buffer (the frame
/// stays far below the 2 KiB budget).
const STACK_INPUT: usize = 256;

/// METHOD_BUFFERED: runs `f` with the request's input (a copy of the first `in_len` bytes of
/// the system buffer, cut at [`MAX_INPUT`], on the stack up to [`STACK_INPUT`] bytes, else in
/// pool) and its output (the first `out_len` bytes of the system buffer, cut at
/// [`MAX_OUTPUT`], which start as the
/// input, as HAXM's in-place handlers see them, followed by zeroes: the I/O manager leaves the
/// bytes past the input uninitialized, and stale pool data must not leak back to the caller).
/// A null buffer is only accepted with both lengths 0.
///
/// # Safety
/// `system` is null, or points to max(`in_len`, `out_len`) writable bytes whose first `in_len`
/// are initialized, not otherwise used until this returns.
pub unsafe fn with_buffers<R>(
    system: *mut u8,
    in_len: usize,
    out_len: usize,
    f: impl FnOnce(&[u8], &mut [u8]) -> R,
) -> Result<R, ShellError> {
    if system.is_null() {
        if in_len != 0 || out_len != 0 {
            return Err(ShellError::NoSystemBuffer);
        }
        return Ok(f(&[], &mut []));
    }
    let copied = in_len.min(MAX_INPUT);
    let out_len = out_len.min(MAX_OUTPUT);
    let mut on_stack = [0u8; STACK_INPUT];
    let mut in_pool = None;
    let input: &mut [u8] = if copied <= STACK_INPUT {
        &mut on_stack[..copied]
    } else {
        let buf = PoolBuffer::new(copied).ok_or(ShellError::OutOfMemory)?;
        in_pool.insert(buf).as_mut()
    };
    // SAFETY: the caller's contract: `copied <= in_len` initialized bytes; `input` is our own,
    // disjoint buffer of that length.
    unsafe { core::ptr::copy_nonoverlapping(system, input.as_mut_ptr(), copied) };
    if out_len > in_len {
        // SAFETY: within the buffer's max(in, out) bytes (the caller's contract).
        let tail = unsafe { system.add(in_len) };
        // SAFETY: `out_len - in_len` bytes from there are still inside it.
        unsafe { core::ptr::write_bytes(tail, 0, out_len - in_len) };
    }
    // SAFETY: `out_len` bytes of the buffer, initialized (input, or zeroes above), used only
    // through this slice until `f` returns.
    let output = unsafe { core::slice::from_raw_parts_mut(system, out_len) };
    Ok(f(input, output))
}

/// The little-endian u32 at the start of `b` (HAXM's VM and vCPU ids).
pub fn first_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// A pool block for an input copy, freed on drop.
struct PoolBuffer {
    ptr: Option<core::ptr::NonNull<u8>>,
    len: usize,
}

impl PoolBuffer {
    fn new(len: usize) -> Option<PoolBuffer> {
        let layout = Layout::array::<u8>(len).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a non-zero-sized layout; null on failure.
        let ptr = core::ptr::NonNull::new(unsafe { alloc::alloc::alloc(layout) })?;
        Some(PoolBuffer {
            ptr: Some(ptr),
            len,
        })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        match self.ptr {
            // SAFETY: `len` bytes allocated by `new`, owned by this buffer; u8 has no
            // invalid values and the bytes are overwritten before they are read.
            Some(p) => unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), self.len) },
            None => &mut [],
        }
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        if let Some(p) = self.ptr {
            if let Ok(layout) = Layout::array::<u8>(self.len) {
                // SAFETY: allocated by `new` with this layout; freed once.
                unsafe { alloc::alloc::dealloc(p.as_ptr(), layout) };
            }
        }
    }
}

#[cfg(rhax_nt)]
pub use nt_irp::{cleanup, close, create, device_control};

/// The NT dispatch routines.
#[cfg(rhax_nt)]
mod nt_irp {
    use core::alloc::Layout;
    use core::ffi::c_void;
    use core::ptr::null_mut;
    use core::sync::atomic::{AtomicBool, Ordering};

    use rhax_api::ioctl::{HAX_IOCTL_CREATE_VM, HAX_VM_IOCTL_VCPU_CREATE};
    use rhax_api::Device;
    use rhax_core::dispatch::Handle;

    use super::{first_u32, with_buffers};
    use crate::devices::DeviceExtension;
    use crate::entry::{shell, Shell};
    use crate::nt::io::{
        IofCompleteRequest, DEVICE_OBJECT, FILE_OBJECT, IO_NO_INCREMENT, IO_STACK_LOCATION, IRP,
        METHOD_BUFFERED,
    };
    use crate::nt::NTSTATUS;
    use crate::status::{completion, Failure, ShellError};

    /// `FsContext2` of a file object whose `FsContext` is the shell's record ("rhaxfile").
    const FILE_TAG: usize = u64::from_le_bytes(*b"rhaxfile") as usize;

    /// Windows codes of the requests that create objects (their devices follow).
    const CREATE_VM: Option<u32> = HAX_IOCTL_CREATE_VM.windows();
    const VCPU_CREATE: Option<u32> = HAX_VM_IOCTL_VCPU_CREATE.windows();

    /// Completes `irp` with `result` and returns its status.
    ///
    /// # Safety
    /// `irp` is the IRP being dispatched, completed exactly once, here.
    unsafe fn complete(
        irp: *mut IRP,
        result: Result<usize, Failure>,
        output_len: usize,
    ) -> NTSTATUS {
        let (status, information) = completion(result, output_len);
        let status = status as NTSTATUS;
        // SAFETY: the caller's IRP, ours until completed; IoStatus is the driver's to fill.
        let io_status = unsafe { &mut (*irp).IoStatus };
        io_status.Status = status;
        io_status.Information = information;
        // SAFETY: completed once, not touched afterwards.
        unsafe { IofCompleteRequest(irp, IO_NO_INCREMENT) };
        status
    }

    /// The IRP's current stack location.
    ///
    /// # Safety
    /// `irp` is an IRP being dispatched to this driver.
    unsafe fn stack(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
        // SAFETY: `IoGetCurrentIrpStackLocation` (a wdm.h inline): a dispatched IRP's current
        // location is valid.
        unsafe { (*irp).CurrentStackLocation }
    }

    /// What `dev` is, from the extension the shell wrote when creating it.
    ///
    /// # Safety
    /// `dev` is one of this driver's device objects.
    unsafe fn device_of(dev: *mut DEVICE_OBJECT) -> Result<Device, Failure> {
        // SAFETY: the caller's contract: a live device object.
        let ext = unsafe { (*dev).DeviceExtension }.cast::<DeviceExtension>();
        // SAFETY: every device of this driver has a `DeviceExtension` (devices.rs `create`).
        let ext = unsafe { ext.read() };
        ext.device().ok_or(Failure::Shell(ShellError::NotOurFile))
    }

    /// The file object of the request.
    ///
    /// # Safety
    /// `irp` is an IRP being dispatched to this driver.
    unsafe fn file_of(irp: *mut IRP) -> Result<*mut FILE_OBJECT, Failure> {
        // SAFETY: the caller's contract.
        let stack = unsafe { stack(irp) };
        // SAFETY: the current stack location of a dispatched IRP.
        let file = unsafe { (*stack).FileObject };
        if file.is_null() {
            Err(ShellError::NotOurFile.into())
        } else {
            Ok(file)
        }
    }

    /// What the shell keeps per open file object (`FsContext`): the core handle, and whether
    /// it was closed. Written once by CREATE, before any other IRP of the file object can
    /// exist; freed only by CLOSE, which the I/O manager sends when the last reference to the
    /// file object is gone, i.e. after every other IRP of it completed. CLEANUP may run while
    /// another IRP of the file object is still in flight (a thread's DeviceIoControl racing
    /// another thread's CloseHandle): it only marks the record closed, so that IRP still
    /// reads a live record (and the core answers its closed handle as invalid).
    struct OpenFile {
        handle: Handle,
        closed: AtomicBool,
    }

    /// The shell's record of a file object.
    ///
    /// # Safety
    /// `file` is the file object of an IRP being dispatched to this driver (not CLOSE's after
    /// `free_record`); the reference lives no longer than that IRP.
    unsafe fn record_of<'a>(file: *mut FILE_OBJECT) -> Result<&'a OpenFile, Failure> {
        // SAFETY: the caller's contract: a live file object (its driver fields are ours, and
        // only CREATE and CLOSE write them, with no other IRP of the file object running).
        let record = unsafe { (*file).FsContext };
        // SAFETY: as above.
        let tag = unsafe { (*file).FsContext2 };
        if tag as usize != FILE_TAG || record.is_null() {
            return Err(ShellError::NotOurFile.into());
        }
        // SAFETY: with the tag, FsContext is the record written by `open`, freed only by
        // `free_record` in CLOSE, which runs after every other IRP of this file object.
        Ok(unsafe { &*record.cast::<OpenFile>() })
    }

    /// Closes the file object's core handle if it is still open (CLEANUP, or CLOSE when no
    /// CLEANUP came); the devices then follow the core's objects. Once per file object.
    fn close_record(shell: &Shell, record: &OpenFile, dev: *mut DEVICE_OBJECT) {
        if !record.closed.swap(true, Ordering::AcqRel) {
            // Fails only for a handle that is not open: nothing to undo then.
            let _ = shell.hv.close(record.handle);
            reconcile(shell, dev);
        }
    }

    /// Frees the file object's record (CLOSE: no other IRP of the file object is left).
    ///
    /// # Safety
    /// As [`record_of`], in IRP_MJ_CLOSE; the record's handle was closed.
    unsafe fn free_record(file: *mut FILE_OBJECT) {
        // SAFETY: CLOSE is the last IRP of the file object: nothing else reads its fields.
        let file = unsafe { &mut *file };
        if file.FsContext2 as usize != FILE_TAG || file.FsContext.is_null() {
            return;
        }
        let record = core::mem::replace(&mut file.FsContext, null_mut());
        file.FsContext2 = null_mut();
        // SAFETY: allocated by `open` with this layout; freed once (the fields are cleared).
        unsafe { alloc::alloc::dealloc(record.cast(), Layout::new::<OpenFile>()) };
    }

    /// IRP_MJ_CREATE.
    ///
    /// # Safety
    /// Called by the I/O manager at PASSIVE_LEVEL for one of this driver's devices.
    pub unsafe extern "system" fn create(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
        // SAFETY: the I/O manager's contract above.
        let result = unsafe { open(dev, irp) };
        // SAFETY: the IRP being dispatched, completed once.
        unsafe { complete(irp, result.map(|()| 0), 0) }
    }

    /// # Safety
    /// As [`create`].
    unsafe fn open(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> Result<(), Failure> {
        let shell = shell().ok_or(ShellError::NotReady)?;
        // SAFETY: the caller's contract.
        let device = unsafe { device_of(dev) }?;
        // SAFETY: as above.
        let file = unsafe { file_of(irp) }?;
        // SAFETY: a live file object's name, set by the I/O manager.
        if unsafe { (*file).FileName.Length } != 0 {
            // `\\.\HAX\anything`: HAXM's devices have no namespace below them.
            return Err(ShellError::NameBelowDevice.into());
        }
        let hv = &shell.hv;
        let handle = match device {
            Device::System => hv.open_system(),
            Device::Vm { vm } => hv.open_vm(vm)?,
            Device::Vcpu { vm, vcpu } => hv.open_vcpu(vm, vcpu)?,
        };
        let layout = Layout::new::<OpenFile>();
        // SAFETY: a non-zero-sized layout; null on failure.
        let record = unsafe { alloc::alloc::alloc(layout) }.cast::<OpenFile>();
        if record.is_null() {
            let _ = hv.close(handle);
            return Err(ShellError::OutOfMemory.into());
        }
        let open = OpenFile {
            handle,
            closed: AtomicBool::new(false),
        };
        // SAFETY: a fresh block for an OpenFile.
        unsafe { record.write(open) };
        // SAFETY: the IRP's file object; its driver fields are ours until CLOSE.
        let file = unsafe { &mut *file };
        file.FsContext = record.cast::<c_void>();
        file.FsContext2 = FILE_TAG as *mut c_void;
        Ok(())
    }

    /// CLEANUP and CLOSE: closes the core handle (once), and in CLOSE frees the record.
    ///
    /// # Safety
    /// As [`cleanup`] / [`close`]; `last` only from CLOSE.
    unsafe fn release(dev: *mut DEVICE_OBJECT, irp: *mut IRP, last: bool) {
        let Some(shell) = shell() else { return };
        // SAFETY: the caller's contract.
        let Ok(file) = (unsafe { file_of(irp) }) else {
            return;
        };
        // SAFETY: an IRP of this file object being dispatched.
        if let Ok(record) = unsafe { record_of(file) } {
            close_record(shell, record, dev);
        }
        if last {
            // SAFETY: IRP_MJ_CLOSE, after the record's handle was closed just above; the
            // record reference above is no longer used.
            unsafe { free_record(file) };
        }
    }

    /// Makes the devices follow the core's objects, keeping `dev` (the IRP's own device) until
    /// a later pass (devices.rs, `reconcile`).
    fn reconcile(shell: &Shell, dev: *mut DEVICE_OBJECT) {
        shell.devices.reconcile(&shell.hv, shell.driver, dev)
    }

    /// IRP_MJ_CLEANUP.
    ///
    /// # Safety
    /// Called by the I/O manager at PASSIVE_LEVEL for one of this driver's devices.
    pub unsafe extern "system" fn cleanup(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
        // SAFETY: the caller's contract.
        unsafe { release(dev, irp, false) };
        // SAFETY: the IRP being dispatched, completed once.
        unsafe { complete(irp, Ok(0), 0) }
    }

    /// IRP_MJ_CLOSE.
    ///
    /// # Safety
    /// Called by the I/O manager at PASSIVE_LEVEL for one of this driver's devices.
    pub unsafe extern "system" fn close(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
        // SAFETY: the caller's contract (the handle is closed already when CLEANUP came;
        // Wine 8.0 sends none).
        unsafe { release(dev, irp, true) };
        // SAFETY: the IRP being dispatched, completed once.
        unsafe { complete(irp, Ok(0), 0) }
    }

    /// IRP_MJ_DEVICE_CONTROL.
    ///
    /// # Safety
    /// Called by the I/O manager at PASSIVE_LEVEL for one of this driver's devices.
    pub unsafe extern "system" fn device_control(
        dev: *mut DEVICE_OBJECT,
        irp: *mut IRP,
    ) -> NTSTATUS {
        // SAFETY: the I/O manager's contract below.
        let stack = unsafe { stack(irp) };
        // SAFETY: the current stack location of the dispatched IRP.
        let params = unsafe { &(*stack).DeviceIoControl };
        let (code, in_len, out_len) = (
            params.IoControlCode,
            params.InputBufferLength as usize,
            params.OutputBufferLength as usize,
        );
        // SAFETY: the I/O manager's contract above.
        let result = unsafe { control(dev, irp, code, in_len, out_len) };
        // SAFETY: the IRP being dispatched, completed once.
        unsafe { complete(irp, result, out_len) }
    }

    /// # Safety
    /// As [`device_control`]; the lengths are the IRP's.
    unsafe fn control(
        dev: *mut DEVICE_OBJECT,
        irp: *mut IRP,
        code: u32,
        in_len: usize,
        out_len: usize,
    ) -> Result<usize, Failure> {
        let shell = shell().ok_or(ShellError::NotReady)?;
        // SAFETY: the caller's contract.
        let device = unsafe { device_of(dev) }?;
        // SAFETY: as above.
        let file = unsafe { file_of(irp) }?;
        // SAFETY: as above.
        let handle = unsafe { record_of(file) }?.handle;
        let hv = &shell.hv;
        if code & 3 != METHOD_BUFFERED {
            // No HAXM code: the core's answer for an unknown code on this device, without
            // touching buffers that are not the system buffer.
            return Ok(hv.dispatch(handle, code, &[], &mut [])?);
        }
        // SAFETY: the dispatched IRP's system buffer.
        let system = unsafe { (*irp).SystemBuffer }.cast::<u8>();
        // SAFETY: METHOD_BUFFERED: the I/O manager's system buffer holds max(in, out) bytes, the
        // first `in_len` of them the caller's input, and is ours until the IRP completes.
        let (result, created) = unsafe {
            with_buffers(system, in_len, out_len, |input, output| {
                let r = hv.dispatch(handle, code, input, output);
                // The object a successful CREATE_VM (its id: the output) or VCPU_CREATE (its id:
                // the input, on the VM's device) made.
                let created = match device {
                    Device::System if r.is_ok() && Some(code) == CREATE_VM => {
                        first_u32(output).map(|vm| Device::Vm { vm })
                    }
                    Device::Vm { vm } if r.is_ok() && Some(code) == VCPU_CREATE => {
                        first_u32(input).map(|vcpu| Device::Vcpu { vm, vcpu })
                    }
                    _ => None,
                };
                (r, created)
            })
        }?;
        let written = result?;
        if let Some(new) = created {
            reconcile(shell, null_mut());
            if !shell.devices.exists(new) {
                // The object exists in the core, but its device does not: the client could not
                // open it. Reported as HAXM reports a failed creation; the object dies with the
                // handle that made it (the next reconcile tries its device again meanwhile).
                return Err(ShellError::DeviceNotCreated.into());
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A system buffer as the I/O manager leaves it: the input, then stale bytes.
    fn system(input: &[u8], out_len: usize) -> Vec<u8> {
        let mut b = vec![0xA5; input.len().max(out_len)];
        b[..input.len()].copy_from_slice(input);
        b
    }

    /// Runs `with_buffers` and returns (input seen, output seen, buffer after).
    fn run(input: &[u8], out_len: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut b = system(input, out_len);
        // SAFETY: a buffer of max(in, out) bytes, the input initialized.
        let (seen_in, seen_out) = unsafe {
            with_buffers(b.as_mut_ptr(), input.len(), out_len, |i, o| {
                let seen = (i.to_vec(), o.to_vec());
                o.fill(0x11);
                seen
            })
        }
        .expect("buffers");
        (seen_in, seen_out, b)
    }

    #[test]
    fn output_starts_as_the_input_then_zeroes() {
        let (i, o, after) = run(&[1, 2, 3, 4], 8);
        assert_eq!(i, [1, 2, 3, 4]);
        assert_eq!(
            o,
            [1, 2, 3, 4, 0, 0, 0, 0],
            "no stale bytes reach the handler"
        );
        assert_eq!(after, [0x11; 8]);
    }

    #[test]
    fn input_is_a_copy_that_output_writes_cannot_change() {
        let mut b = system(&[7; 16], 16);
        // SAFETY: as in `run`.
        let r = unsafe {
            with_buffers(b.as_mut_ptr(), 16, 16, |i, o| {
                o.fill(0);
                i.to_vec()
            })
        };
        assert_eq!(r, Ok(vec![7; 16]));
    }

    #[test]
    fn output_shorter_than_input() {
        let (i, o, after) = run(&[9; 40], 8);
        assert_eq!(i.len(), 40);
        assert_eq!(o, [9; 8]);
        assert_eq!(&after[8..], &[9; 32], "bytes past the output untouched");
    }

    #[test]
    fn large_inputs_go_to_pool_and_are_cut_at_the_bound() {
        let big: Vec<u8> = (0..3000u32).map(|n| n as u8).collect();
        let (i, o, _) = run(&big, 0);
        assert_eq!(i, big, "SET_CPUID-sized input copied whole");
        assert!(o.is_empty());
        let huge = vec![3u8; MAX_INPUT + 100];
        let (i, _, _) = run(&huge, 4);
        assert_eq!(i.len(), MAX_INPUT);
    }

    #[test]
    fn huge_outputs_are_cut_and_not_zeroed_past_the_bound() {
        let mut b = system(&[1, 2], 1 << 20);
        // SAFETY: as in `run`.
        let len = unsafe { with_buffers(b.as_mut_ptr(), 2, 1 << 20, |_, o| o.len()) };
        assert_eq!(len, Ok(MAX_OUTPUT));
        assert_eq!(&b[..4], &[1, 2, 0, 0]);
        assert!(
            b[MAX_OUTPUT..].iter().all(|&x| x == 0xA5),
            "nothing past the bound"
        );
    }

    #[test]
    fn no_buffer_only_without_lengths() {
        // SAFETY: null is allowed by the contract.
        let r = unsafe { with_buffers(core::ptr::null_mut(), 0, 0, |i, o| (i.len(), o.len())) };
        assert_eq!(r, Ok((0, 0)));
        for (i, o) in [(4, 0), (0, 8)] {
            // SAFETY: as above.
            let r = unsafe { with_buffers(core::ptr::null_mut(), i, o, |_, _| ()) };
            assert_eq!(r, Err(ShellError::NoSystemBuffer));
        }
    }

    #[test]
    fn every_request_fits_the_bounds() {
        use rhax_api::ext::EXT_IOCTLS;
        use rhax_api::ioctl::{ArgSize, IOCTLS};
        // The fixed-size arguments (the POSIX encoding carries the struct size) ...
        for def in IOCTLS.iter().chain(EXT_IOCTLS) {
            if let Some(ArgSize::Fixed(n)) = def.posix.map(|p| p.size) {
                assert!(usize::from(n) <= MAX_INPUT.min(MAX_OUTPUT), "{}", def.name);
            }
        }
        // ... and SET/GET_CPUID's variable one: a header and up to 64 entries.
        let cpuid = core::mem::size_of::<rhax_api::cpuid::CpuidTable>();
        assert_eq!(cpuid, 8 + 40 * rhax_api::cpuid::HAX_MAX_CPUID_ENTRIES);
        assert!(cpuid <= MAX_INPUT.min(MAX_OUTPUT));
    }

    #[test]
    fn ids_from_buffers() {
        assert_eq!(first_u32(&[5, 0, 0, 0]), Some(5));
        assert_eq!(first_u32(&[1, 2, 3, 4, 5]), Some(0x0403_0201));
        assert_eq!(first_u32(&[1, 2, 3]), None);
        assert_eq!(first_u32(&[]), None);
    }
}
