//! I/O manager: driver and device objects, IRPs, file objects, and the calls a WDM control
//! driver makes on them; object security (the device DACLs of `crate::devices`).
//!
//! Layouts are the documented x64 `wdm.h` ones; every field read or written is at an offset
//! asserted below (windows-cross-build.md lists the ones verified in a disassembly; P10: the
//! `POINTER_ALIGNMENT` padding of `Parameters.DeviceIoControl`). Structures the shell never
//! allocates itself (`FILE_OBJECT`) are declared as the prefix it uses.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

use super::{NTSTATUS, UNICODE_STRING};

/// `DRIVER_DISPATCH`.
pub type DriverDispatch = unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS;
/// `DRIVER_UNLOAD`.
pub type DriverUnload = unsafe extern "system" fn(*mut DRIVER_OBJECT);

pub const IRP_MJ_CREATE: usize = 0x00;
pub const IRP_MJ_CLOSE: usize = 0x02;
pub const IRP_MJ_DEVICE_CONTROL: usize = 0x0e;
pub const IRP_MJ_CLEANUP: usize = 0x12;
pub const IRP_MJ_MAXIMUM_FUNCTION: usize = 0x1b;

/// `FILE_DEVICE_UNKNOWN`: HAXM's device type for all its devices.
pub const FILE_DEVICE_UNKNOWN: u32 = 0x22;
/// `FILE_DEVICE_SECURE_OPEN`: the device's DACL also guards names below it (`\\.\HAX\x`).
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;
/// `DO_BUFFERED_IO`.
pub const DO_BUFFERED_IO: u32 = 0x4;
/// `DO_DEVICE_INITIALIZING`: cleared by the I/O manager for devices created in DriverEntry,
/// by the driver for devices created later (`IoCreateDevice` remarks).
pub const DO_DEVICE_INITIALIZING: u32 = 0x80;
/// `IO_NO_INCREMENT`.
pub const IO_NO_INCREMENT: i8 = 0;

/// `METHOD_BUFFERED`: the transfer type in bits 0-1 of an IOCTL code (`CTL_CODE`).
pub const METHOD_BUFFERED: u32 = 0;

/// `OBJ_KERNEL_HANDLE`: a handle in the system handle table, not the caller's process's.
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// `WRITE_DAC`.
pub const WRITE_DAC: u32 = 0x0004_0000;
/// `DACL_SECURITY_INFORMATION`.
pub const DACL_SECURITY_INFORMATION: u32 = 0x4;
/// `PROTECTED_DACL_SECURITY_INFORMATION`: no inherited ACEs (SDDL `D:P`).
pub const PROTECTED_DACL_SECURITY_INFORMATION: u32 = 0x8000_0000;

/// `DRIVER_OBJECT` (x64 size 0x150).
#[repr(C)]
pub struct DRIVER_OBJECT {
    pub Type: i16,
    pub Size: i16,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Flags: u32,
    pub DriverStart: *mut c_void,
    pub DriverSize: u32,
    pub DriverSection: *mut c_void,
    pub DriverExtension: *mut c_void,
    pub DriverName: UNICODE_STRING,
    pub HardwareDatabase: *mut UNICODE_STRING,
    pub FastIoDispatch: *mut c_void,
    pub DriverInit: *mut c_void,
    pub DriverStartIo: *mut c_void,
    pub DriverUnload: Option<DriverUnload>,
    pub MajorFunction: [Option<DriverDispatch>; IRP_MJ_MAXIMUM_FUNCTION + 1],
}
const _: () = {
    assert!(offset_of!(DRIVER_OBJECT, DeviceObject) == 0x08);
    assert!(offset_of!(DRIVER_OBJECT, DriverName) == 0x38);
    assert!(offset_of!(DRIVER_OBJECT, DriverUnload) == 0x68);
    assert!(offset_of!(DRIVER_OBJECT, MajorFunction) == 0x70);
    assert!(size_of::<DRIVER_OBJECT>() == 0x150);
};

/// `DEVICE_OBJECT` (x64 size 0x150): the fields up to `StackSize` declared, the rest opaque.
#[repr(C)]
pub struct DEVICE_OBJECT {
    pub Type: i16,
    pub Size: u16,
    pub ReferenceCount: i32,
    pub DriverObject: *mut DRIVER_OBJECT,
    pub NextDevice: *mut DEVICE_OBJECT,
    pub AttachedDevice: *mut DEVICE_OBJECT,
    pub CurrentIrp: *mut IRP,
    pub Timer: *mut c_void,
    pub Flags: u32,
    pub Characteristics: u32,
    pub Vpb: *mut c_void,
    pub DeviceExtension: *mut c_void,
    pub DeviceType: u32,
    pub StackSize: i8,
    _rest: [u8; 0x150 - 0x4d],
}
const _: () = {
    assert!(offset_of!(DEVICE_OBJECT, ReferenceCount) == 0x04);
    assert!(offset_of!(DEVICE_OBJECT, DriverObject) == 0x08);
    assert!(offset_of!(DEVICE_OBJECT, NextDevice) == 0x10);
    assert!(offset_of!(DEVICE_OBJECT, Flags) == 0x30);
    assert!(offset_of!(DEVICE_OBJECT, Characteristics) == 0x34);
    assert!(offset_of!(DEVICE_OBJECT, DeviceExtension) == 0x40);
    assert!(offset_of!(DEVICE_OBJECT, DeviceType) == 0x48);
    assert!(offset_of!(DEVICE_OBJECT, StackSize) == 0x4c);
    assert!(size_of::<DEVICE_OBJECT>() == 0x150);
};

/// `IO_STATUS_BLOCK` (x64: Status/Pointer 0, Information 8).
#[repr(C)]
pub struct IO_STATUS_BLOCK {
    /// `Status` (low 4 bytes of the `Status`/`Pointer` union).
    pub Status: NTSTATUS,
    _pad: u32,
    pub Information: usize,
}
const _: () = assert!(size_of::<IO_STATUS_BLOCK>() == 16);

/// `IRP` (x64 size 0xD0). `Tail.Overlay.CurrentStackLocation` is what the `wdm.h` inline
/// `IoGetCurrentIrpStackLocation` reads (P11: not an export).
#[repr(C)]
pub struct IRP {
    pub Type: i16,
    pub Size: u16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub MdlAddress: *mut c_void,
    pub Flags: u32,
    /// `AssociatedIrp.SystemBuffer` (METHOD_BUFFERED: input in, output out).
    pub SystemBuffer: *mut c_void,
    pub ThreadListEntry: [usize; 2],
    pub IoStatus: IO_STATUS_BLOCK,
    pub RequestorMode: i8,
    pub PendingReturned: u8,
    pub StackCount: i8,
    pub CurrentLocation: i8,
    pub Cancel: u8,
    pub CancelIrql: u8,
    pub ApcEnvironment: i8,
    pub AllocationFlags: u8,
    pub UserIosb: *mut IO_STATUS_BLOCK,
    pub UserEvent: *mut c_void,
    pub Overlay: [usize; 2],
    pub CancelRoutine: *mut c_void,
    pub UserBuffer: *mut c_void,
    /// `Tail.Overlay.DriverContext[4]`, `Thread`, `AuxiliaryBuffer`, `ListEntry`.
    pub TailOverlay: [usize; 8],
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
    pub OriginalFileObject: *mut FILE_OBJECT,
    /// The rest of the `Tail` union (its `Apc` member, a KAPC of 0x58 bytes, is the largest).
    _tail_rest: usize,
}
const _: () = {
    assert!(offset_of!(IRP, MdlAddress) == 0x08);
    assert!(offset_of!(IRP, Flags) == 0x10);
    assert!(offset_of!(IRP, SystemBuffer) == 0x18);
    assert!(offset_of!(IRP, IoStatus) == 0x30);
    assert!(offset_of!(IRP, RequestorMode) == 0x40);
    assert!(offset_of!(IRP, UserBuffer) == 0x70);
    assert!(offset_of!(IRP, TailOverlay) == 0x78);
    assert!(offset_of!(IRP, CurrentStackLocation) == 0xB8);
    assert!(offset_of!(IRP, OriginalFileObject) == 0xC0);
    assert!(size_of::<IRP>() == 0xD0);
};

/// `IO_STACK_LOCATION.Parameters.DeviceIoControl`, with wdm.h's `POINTER_ALIGNMENT`
/// padding after each ULONG (P10: windows-sys drops it and reads the code at +0x10).
#[repr(C)]
pub struct DeviceIoControlParams {
    pub OutputBufferLength: u32,
    _pad0: u32,
    pub InputBufferLength: u32,
    _pad1: u32,
    pub IoControlCode: u32,
    _pad2: u32,
    pub Type3InputBuffer: *mut c_void,
}

/// `IO_STACK_LOCATION` (x64 size 0x48); `Parameters` is the 0x20-byte union, of which the
/// shell reads only the DeviceIoControl member.
#[repr(C)]
pub struct IO_STACK_LOCATION {
    pub MajorFunction: u8,
    pub MinorFunction: u8,
    pub Flags: u8,
    pub Control: u8,
    _pad: u32,
    pub DeviceIoControl: DeviceIoControlParams,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub FileObject: *mut FILE_OBJECT,
    pub CompletionRoutine: *mut c_void,
    pub Context: *mut c_void,
}
const _: () = {
    const P: usize = offset_of!(IO_STACK_LOCATION, DeviceIoControl);
    assert!(P == 0x08);
    assert!(P + offset_of!(DeviceIoControlParams, OutputBufferLength) == 0x08);
    assert!(P + offset_of!(DeviceIoControlParams, InputBufferLength) == 0x10);
    assert!(P + offset_of!(DeviceIoControlParams, IoControlCode) == 0x18);
    assert!(P + offset_of!(DeviceIoControlParams, Type3InputBuffer) == 0x20);
    assert!(size_of::<DeviceIoControlParams>() == 0x20);
    assert!(offset_of!(IO_STACK_LOCATION, DeviceObject) == 0x28);
    assert!(offset_of!(IO_STACK_LOCATION, FileObject) == 0x30);
    assert!(size_of::<IO_STACK_LOCATION>() == 0x48);
};

/// `FILE_OBJECT` (x64 size 0xD8): the prefix up to `FileName`; never allocated by the shell.
#[repr(C)]
pub struct FILE_OBJECT {
    pub Type: i16,
    pub Size: i16,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Vpb: *mut c_void,
    /// The driver's per-open context (the shell: its core handle).
    pub FsContext: *mut c_void,
    /// The driver's second per-open word (the shell: a tag saying `FsContext` is its own).
    pub FsContext2: *mut c_void,
    pub SectionObjectPointer: *mut c_void,
    pub PrivateCacheMap: *mut c_void,
    pub FinalStatus: NTSTATUS,
    pub RelatedFileObject: *mut FILE_OBJECT,
    pub LockOperation: u8,
    pub DeletePending: u8,
    pub ReadAccess: u8,
    pub WriteAccess: u8,
    pub DeleteAccess: u8,
    pub SharedRead: u8,
    pub SharedWrite: u8,
    pub SharedDelete: u8,
    pub Flags: u32,
    /// The path below the device the caller opened (empty for `\\.\HAX` itself).
    pub FileName: UNICODE_STRING,
}
const _: () = {
    assert!(offset_of!(FILE_OBJECT, DeviceObject) == 0x08);
    assert!(offset_of!(FILE_OBJECT, FsContext) == 0x18);
    assert!(offset_of!(FILE_OBJECT, FsContext2) == 0x20);
    assert!(offset_of!(FILE_OBJECT, FinalStatus) == 0x38);
    assert!(offset_of!(FILE_OBJECT, RelatedFileObject) == 0x40);
    assert!(offset_of!(FILE_OBJECT, Flags) == 0x50);
    assert!(offset_of!(FILE_OBJECT, FileName) == 0x58);
};

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    pub fn IoCreateDevice(
        driver: *mut DRIVER_OBJECT,
        extension_size: u32,
        name: *const UNICODE_STRING,
        device_type: u32,
        characteristics: u32,
        exclusive: u8,
        device: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    pub fn IoDeleteDevice(device: *mut DEVICE_OBJECT);
    pub fn IoCreateSymbolicLink(
        link: *const UNICODE_STRING,
        target: *const UNICODE_STRING,
    ) -> NTSTATUS;
    pub fn IoDeleteSymbolicLink(link: *const UNICODE_STRING) -> NTSTATUS;
    pub fn IofCompleteRequest(irp: *mut IRP, priority_boost: i8);
    /// Opens a handle to an object the caller holds a pointer to (here: a device, to set its
    /// DACL). `object_type` may be null for kernel-mode callers.
    pub fn ObOpenObjectByPointer(
        object: *mut c_void,
        attributes: u32,
        access_state: *mut c_void,
        desired_access: u32,
        object_type: *mut c_void,
        access_mode: i8,
        handle: *mut *mut c_void,
    ) -> NTSTATUS;
    pub fn ZwSetSecurityObject(
        handle: *mut c_void,
        information: u32,
        descriptor: *const c_void,
    ) -> NTSTATUS;
    pub fn ZwClose(handle: *mut c_void) -> NTSTATUS;
}
