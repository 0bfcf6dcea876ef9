//! HAXM's device objects (`haxm-abi.md` §1): the control device `\Device\HAX` (link
//! `\DosDevices\HAX`, not exclusive) made at load, and one exclusive device per VM
//! (`\Device\hax_vmNN`) and per vCPU (`\Device\hax_vmNN_vcpuMM`), with their links, made when
//! the core creates the object and deleted when it is gone ([`Devices::reconcile`] compares
//! the device table with [`rhax_core::dispatch::LiveObjects`]).
//!
//! # Security
//!
//! HAXM creates its devices with `IoCreateDeviceSecure` and the SDDL strings
//! `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGWGX;;;AU)` (control device) and
//! `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;WD)` (VM and vCPU devices). `IoCreateDeviceSecure`
//! is a static library routine (`wdmsec.lib`), not an ntoskrnl export, and parsing SDDL in
//! the kernel is what it brings; so the shell builds the two descriptors itself, as bytes
//! (self-relative `SECURITY_DESCRIPTOR_RELATIVE`, revision 1, one protected DACL of revision
//! 2, no owner, group or SACL: the object manager keeps the device's existing owner), and
//! applies them to each device right after `IoCreateDevice` with
//! `ObOpenObjectByPointer(WRITE_DAC, KernelMode)` + `ZwSetSecurityObject(DACL)` + `ZwClose`,
//! before the symbolic link makes the device reachable from user mode. A device whose DACL
//! cannot be set is deleted: no device is ever reachable with the default descriptor.
//!
//! Generic rights are stored already mapped through the file/device generic mapping
//! (`IoFileObjectType`'s: `FILE_GENERIC_READ` 0x120089, `FILE_GENERIC_WRITE` 0x120116,
//! `FILE_GENERIC_EXECUTE` 0x1200A0, `FILE_ALL_ACCESS` 0x1F01FF, `winnt.h`), as the access
//! check compares an ACE's mask with the mapped desired access and does not map ACEs
//! itself: GA is `FILE_ALL_ACCESS`, GRGWGX is 0x1201BF. The effective access equals
//! HAXM's. The bytes are host-tested below.

use rhax_api::Device;

/// `FILE_ALL_ACCESS` (GA on a device/file object).
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;
/// `FILE_GENERIC_READ`.
pub const FILE_GENERIC_READ: u32 = 0x0012_0089;
/// `FILE_GENERIC_WRITE`.
pub const FILE_GENERIC_WRITE: u32 = 0x0012_0116;
/// `FILE_GENERIC_EXECUTE`.
pub const FILE_GENERIC_EXECUTE: u32 = 0x0012_00A0;

/// S-1-5-18, LocalSystem (SDDL `SY`): revision 1, one sub-authority, NT authority 5.
const SID_SYSTEM: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
/// S-1-5-32-544, Administrators (SDDL `BA`).
const SID_ADMINISTRATORS: [u8; 16] = [1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
/// S-1-5-11, Authenticated Users (SDDL `AU`).
const SID_AUTHENTICATED_USERS: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 5, 11, 0, 0, 0];
/// S-1-1-0, Everyone (SDDL `WD`): world authority 1.
const SID_EVERYONE: [u8; 12] = [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];

/// `SECURITY_DESCRIPTOR_RELATIVE` header bytes.
const SD_HEADER: usize = 20;
/// `ACL` header bytes.
const ACL_HEADER: usize = 8;
/// `ACCESS_ALLOWED_ACE` bytes before the SID.
const ACE_HEADER: usize = 8;
/// The descriptor's size: header, ACL header, and the three ACEs (SY, BA, AU or WD).
pub const SD_LEN: usize = SD_HEADER + ACL_HEADER + ACE_HEADER * 3 + 12 + 16 + 12;

/// `SE_DACL_PRESENT` | `SE_DACL_PROTECTED` (SDDL `D:P`) | `SE_SELF_RELATIVE`.
const SD_CONTROL: u16 = 0x0004 | 0x1000 | 0x8000;
/// `ACL_REVISION`.
const ACL_REVISION: u8 = 2;
/// `ACCESS_ALLOWED_ACE_TYPE`.
const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;

/// A self-relative security descriptor, aligned as `ZwSetSecurityObject` wants (the
/// capture requires 4-byte alignment of its parts).
#[repr(C, align(8))]
pub struct SecurityDescriptor(pub [u8; SD_LEN]);

/// Appends `bytes` at `*at` (const-evaluated: the descriptors are built at compile time).
const fn put(out: &mut [u8; SD_LEN], at: &mut usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        out[*at] = bytes[i];
        *at += 1;
        i += 1;
    }
}

/// Appends one `ACCESS_ALLOWED_ACE` for `sid` with `mask`.
const fn put_ace(out: &mut [u8; SD_LEN], at: &mut usize, mask: u32, sid: &[u8]) {
    let size = (ACE_HEADER + sid.len()) as u16;
    let s = size.to_le_bytes();
    put(out, at, &[ACCESS_ALLOWED_ACE_TYPE, 0, s[0], s[1]]);
    put(out, at, &mask.to_le_bytes());
    put(out, at, sid);
}

/// `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;<third_mask>;;;<third_sid>)`.
const fn build(third_mask: u32, third_sid: &[u8; 12]) -> SecurityDescriptor {
    let mut out = [0u8; SD_LEN];
    let mut at = 0;
    let control = SD_CONTROL.to_le_bytes();
    // Revision 1, Sbz1, Control, then the Owner, Group, Sacl, Dacl offsets.
    put(&mut out, &mut at, &[1, 0, control[0], control[1]]);
    put(&mut out, &mut at, &0u32.to_le_bytes());
    put(&mut out, &mut at, &0u32.to_le_bytes());
    put(&mut out, &mut at, &0u32.to_le_bytes());
    put(&mut out, &mut at, &(SD_HEADER as u32).to_le_bytes());
    let acl_size = ((SD_LEN - SD_HEADER) as u16).to_le_bytes();
    // AclRevision, Sbz1, AclSize, AceCount 3, Sbz2.
    put(
        &mut out,
        &mut at,
        &[ACL_REVISION, 0, acl_size[0], acl_size[1], 3, 0, 0, 0],
    );
    put_ace(&mut out, &mut at, FILE_ALL_ACCESS, &SID_SYSTEM);
    put_ace(&mut out, &mut at, FILE_ALL_ACCESS, &SID_ADMINISTRATORS);
    put_ace(&mut out, &mut at, third_mask, third_sid);
    assert!(at == SD_LEN);
    SecurityDescriptor(out)
}

/// The control device's: `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGWGX;;;AU)`.
pub static CONTROL_SD: SecurityDescriptor = build(
    FILE_GENERIC_READ | FILE_GENERIC_WRITE | FILE_GENERIC_EXECUTE,
    &SID_AUTHENTICATED_USERS,
);

/// VM and vCPU devices': `D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;WD)`.
pub static OBJECT_SD: SecurityDescriptor = build(FILE_ALL_ACCESS, &SID_EVERYONE);

/// The descriptor of `device`'s device object.
pub fn security_of(device: Device) -> &'static SecurityDescriptor {
    match device {
        Device::System => &CONTROL_SD,
        _ => &OBJECT_SD,
    }
}

/// HAXM's device extension tag (`haxm-abi.md` §1: 1 control, 2 VM, 3 vCPU) and ids: what a
/// device is, read back by the IRP handlers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceExtension {
    /// 1 control, 2 VM, 3 vCPU.
    pub kind: u32,
    /// The VM id (VM and vCPU devices).
    pub vm: u32,
    /// The vCPU id (vCPU devices).
    pub vcpu: u32,
}

impl DeviceExtension {
    /// The extension of `device`'s device object.
    pub fn of(device: Device) -> DeviceExtension {
        match device {
            Device::System => DeviceExtension {
                kind: 1,
                vm: 0,
                vcpu: 0,
            },
            Device::Vm { vm } => DeviceExtension {
                kind: 2,
                vm,
                vcpu: 0,
            },
            Device::Vcpu { vm, vcpu } => DeviceExtension { kind: 3, vm, vcpu },
        }
    }

    /// The device it describes; `None` for a tag the shell never writes.
    pub fn device(&self) -> Option<Device> {
        match self.kind {
            1 => Some(Device::System),
            2 => Some(Device::Vm { vm: self.vm }),
            3 => Some(Device::Vcpu {
                vm: self.vm,
                vcpu: self.vcpu,
            }),
            _ => None,
        }
    }
}

#[cfg(rhax_nt)]
pub use nt_devices::Devices;

#[cfg(rhax_nt)]
mod nt_devices {
    use core::cell::UnsafeCell;
    use core::ptr::null_mut;

    use rhax_api::{Device, HAX_MAX_VCPUS, HAX_MAX_VMS};
    use rhax_core::dispatch::{CpuRoots, Hypervisor, UserMapping};
    use rhax_core::platform::Platform;

    use super::{security_of, DeviceExtension, SecurityDescriptor};
    use crate::names::{name, Namespace};
    use crate::nt::ex::{
        KeInitializeMutex, KeReleaseMutex, KeWaitForSingleObject, EXECUTIVE, KERNEL_MODE, KMUTEX,
    };
    use crate::nt::io::{
        IoCreateDevice, IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink,
        ObOpenObjectByPointer, ZwClose, ZwSetSecurityObject, DACL_SECURITY_INFORMATION,
        DEVICE_OBJECT, DO_DEVICE_INITIALIZING, DRIVER_OBJECT, FILE_DEVICE_SECURE_OPEN,
        FILE_DEVICE_UNKNOWN, OBJ_KERNEL_HANDLE, WRITE_DAC,
    };
    use crate::nt::{nt_success, NTSTATUS, UNICODE_STRING};

    /// `STATUS_OBJECT_NAME_INVALID`: a device id without a HAXM name.
    const STATUS_OBJECT_NAME_INVALID: NTSTATUS = 0xC000_0033_u32 as i32;

    const VMS: usize = HAX_MAX_VMS as usize;
    const VCPUS: usize = HAX_MAX_VCPUS as usize;

    struct Table {
        control: *mut DEVICE_OBJECT,
        vms: [*mut DEVICE_OBJECT; VMS],
        vcpus: [[*mut DEVICE_OBJECT; VCPUS]; VMS],
    }

    /// The driver's device objects, behind a dispatcher mutex (`KMUTEX`: creating a device
    /// needs PASSIVE_LEVEL, so a spin lock cannot be held across it). Lives in the shell's
    /// pool block, which never moves (the mutex must not).
    pub struct Devices {
        mutex: UnsafeCell<KMUTEX>,
        table: UnsafeCell<Table>,
    }

    // SAFETY: `table` is only reached under `mutex` (`Guard`); the mutex is a kernel object
    // made for use from any thread.
    unsafe impl Sync for Devices {}
    // SAFETY: as above; the raw device pointers are kernel objects, not thread-bound.
    unsafe impl Send for Devices {}

    /// The table, locked.
    struct Guard<'a> {
        devices: &'a Devices,
    }

    impl Guard<'_> {
        fn table(&mut self) -> &mut Table {
            // SAFETY: the mutex is held while the guard lives, and `&mut self` makes this the
            // only reference to the table.
            unsafe { &mut *self.devices.table.get() }
        }
    }

    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            // SAFETY: this thread holds the mutex (acquired in `lock`).
            unsafe { KeReleaseMutex(self.devices.mutex.get(), 0) };
        }
    }

    impl Devices {
        /// Initializes in place: an empty table and the mutex.
        ///
        /// # Safety
        /// `this` points to writable memory for a `Devices` in non-paged pool that will not
        /// move, used by nobody else yet.
        pub unsafe fn init(this: *mut Devices) {
            // SAFETY: the caller's contract: writable, unshared.
            let this = unsafe { &mut *this };
            // A zeroed `Devices` is not assumed valid: the table is written whole, in place
            // (a `Table` value is ~26 KiB, which an unoptimized build would put on DriverEntry's
            // stack; kernel stacks are 24 KiB).
            let t = this.table.get_mut();
            t.control = null_mut();
            t.vms.iter_mut().for_each(|p| *p = null_mut());
            t.vcpus
                .iter_mut()
                .flat_map(|row| row.iter_mut())
                .for_each(|p| *p = null_mut());
            // SAFETY: the mutex's storage is in place and never moves; level 0.
            unsafe { KeInitializeMutex(this.mutex.get(), 0) };
        }

        fn lock(&self) -> Guard<'_> {
            // SAFETY: an initialized KMUTEX; a kernel-mode, non-alertable wait without a
            // timeout at PASSIVE_LEVEL (IRP dispatch, DriverEntry/Unload) always acquires it.
            unsafe {
                KeWaitForSingleObject(
                    self.mutex.get().cast(),
                    EXECUTIVE,
                    KERNEL_MODE,
                    0,
                    core::ptr::null(),
                )
            };
            Guard { devices: self }
        }

        /// Creates the control device `\Device\HAX` and its link (DriverEntry).
        pub fn create_control(&self, driver: *mut DRIVER_OBJECT) -> Result<(), NTSTATUS> {
            let mut g = self.lock();
            if g.table().control.is_null() {
                g.table().control = create(driver, Device::System)?;
            }
            Ok(())
        }

        /// Makes the device table match the objects alive in `hv`: creates the devices of
        /// new VMs and vCPUs, deletes those of objects that are gone, except `keep` (the
        /// device of the IRP being served: a device is not deleted under its own IRP, as
        /// Wine's dispatcher still touches the device object when the handler returns; it
        /// goes with the next reconcile, or at unload). A device that cannot be created is
        /// logged and tried again by the next reconcile; [`Devices::exists`] tells whether a
        /// given one is there.
        pub fn reconcile<P: Platform + UserMapping, R: CpuRoots>(
            &self,
            hv: &Hypervisor<P, R>,
            driver: *mut DRIVER_OBJECT,
            keep: *mut DEVICE_OBJECT,
        ) {
            let mut g = self.lock();
            // Read under the device mutex, so the last reconcile sees the newest state.
            let live = hv.live();
            let t = g.table();
            for vm in 0..VMS as u32 {
                let slot = &mut t.vms[vm as usize];
                sync_one(slot, live.vm(vm), driver, Device::Vm { vm }, keep);
                for vcpu in 0..VCPUS as u32 {
                    let slot = &mut t.vcpus[vm as usize][vcpu as usize];
                    let want = live.vcpu(vm, vcpu);
                    sync_one(slot, want, driver, Device::Vcpu { vm, vcpu }, keep);
                }
            }
        }

        /// Whether `device`'s device object exists (ids out of range: no).
        pub fn exists(&self, device: Device) -> bool {
            let mut g = self.lock();
            let t = g.table();
            let slot = match device {
                Device::System => Some(&t.control),
                Device::Vm { vm } => t.vms.get(vm as usize),
                Device::Vcpu { vm, vcpu } => {
                    t.vcpus.get(vm as usize).and_then(|v| v.get(vcpu as usize))
                }
            };
            slot.is_some_and(|d| !d.is_null())
        }

        /// Deletes every device and link (DriverUnload, or a failed DriverEntry).
        pub fn delete_all(&self) {
            let mut g = self.lock();
            let t = g.table();
            for vm in 0..VMS as u32 {
                for vcpu in 0..VCPUS as u32 {
                    let slot = &mut t.vcpus[vm as usize][vcpu as usize];
                    delete(
                        core::mem::replace(slot, null_mut()),
                        Device::Vcpu { vm, vcpu },
                    );
                }
                let slot = &mut t.vms[vm as usize];
                delete(core::mem::replace(slot, null_mut()), Device::Vm { vm });
            }
            delete(
                core::mem::replace(&mut t.control, null_mut()),
                Device::System,
            );
        }
    }

    /// Creates or deletes one device so that it exists exactly when `want` (a failed
    /// creation is logged by `create` and leaves the slot empty).
    fn sync_one(
        slot: &mut *mut DEVICE_OBJECT,
        want: bool,
        driver: *mut DRIVER_OBJECT,
        device: Device,
        keep: *mut DEVICE_OBJECT,
    ) {
        if want && slot.is_null() {
            if let Ok(dev) = create(driver, device) {
                *slot = dev;
            }
        } else if !want && !slot.is_null() && *slot != keep {
            delete(core::mem::replace(slot, null_mut()), device);
        }
    }

    /// A counted string over `n`.
    fn counted(n: &[u16]) -> Result<UNICODE_STRING, NTSTATUS> {
        UNICODE_STRING::from_slice(n).ok_or(STATUS_OBJECT_NAME_INVALID)
    }

    /// Creates `device`'s device object with HAXM's properties and security, then its link.
    fn create(driver: *mut DRIVER_OBJECT, device: Device) -> Result<*mut DEVICE_OBJECT, NTSTATUS> {
        let dev_name = name(Namespace::Device, device).ok_or(STATUS_OBJECT_NAME_INVALID)?;
        let link_name = name(Namespace::DosDevices, device).ok_or(STATUS_OBJECT_NAME_INVALID)?;
        let dev_us = counted(dev_name.as_slice())?;
        let link_us = counted(link_name.as_slice())?;
        let exclusive = u8::from(device != Device::System);
        let mut dev: *mut DEVICE_OBJECT = null_mut();
        // SAFETY: `driver` is this driver's object; the name outlives the call; the
        // extension is sized for `DeviceExtension`; PASSIVE_LEVEL.
        let status = unsafe {
            IoCreateDevice(
                driver,
                size_of::<DeviceExtension>() as u32,
                &dev_us,
                FILE_DEVICE_UNKNOWN,
                FILE_DEVICE_SECURE_OPEN,
                exclusive,
                &mut dev,
            )
        };
        if !nt_success(status) {
            crate::log!("IoCreateDevice({}) failed: {:#x}", device.windows(), status);
            return Err(status);
        }
        // SAFETY: IoCreateDevice succeeded: `dev` is a new device object, not yet reachable
        // by anyone else (no link, DO_DEVICE_INITIALIZING).
        let dev_ref = unsafe { &mut *dev };
        let ext = dev_ref.DeviceExtension.cast::<DeviceExtension>();
        // SAFETY: the extension has `size_of::<DeviceExtension>()` bytes of pool memory
        // (8-byte aligned), ours.
        unsafe { ext.write(DeviceExtension::of(device)) };
        if let Err(status) = set_security(dev, security_of(device)) {
            crate::log!(
                "cannot set the security descriptor of {}: {:#x}",
                device.windows(),
                status
            );
            // SAFETY: our device, without a link, unknown to anyone else.
            unsafe { IoDeleteDevice(dev) };
            return Err(status);
        }
        // SAFETY: both names outlive the call; PASSIVE_LEVEL.
        let status = unsafe { IoCreateSymbolicLink(&link_us, &dev_us) };
        if !nt_success(status) {
            crate::log!(
                "IoCreateSymbolicLink({}) failed: {:#x}",
                device.windows(),
                status
            );
            // SAFETY: as above.
            unsafe { IoDeleteDevice(dev) };
            return Err(status);
        }
        // Devices made outside DriverEntry must be marked initialized by the driver
        // (IoCreateDevice remarks); for the control device the I/O manager would do it.
        dev_ref.Flags &= !DO_DEVICE_INITIALIZING;
        Ok(dev)
    }

    /// Deletes `device`'s link and device object (`dev` may be null: nothing to do).
    fn delete(dev: *mut DEVICE_OBJECT, device: Device) {
        if dev.is_null() {
            return;
        }
        if let Some(link) = name(Namespace::DosDevices, device) {
            if let Ok(us) = counted(link.as_slice()) {
                // SAFETY: the link this driver created for the device; PASSIVE_LEVEL.
                unsafe { IoDeleteSymbolicLink(&us) };
            }
        }
        // SAFETY: our device, removed from the table: deleted once. Open file objects keep
        // it referenced on Windows until their IRP_MJ_CLOSE.
        unsafe { IoDeleteDevice(dev) };
    }

    /// Replaces `dev`'s DACL with `sd`'s (module documentation).
    fn set_security(dev: *mut DEVICE_OBJECT, sd: &SecurityDescriptor) -> Result<(), NTSTATUS> {
        let mut handle = null_mut();
        // SAFETY: a live device object; a kernel handle (not in the caller's process) with
        // WRITE_DAC; kernel mode, so no access check and the object type may be null.
        let status = unsafe {
            ObOpenObjectByPointer(
                dev.cast(),
                OBJ_KERNEL_HANDLE,
                null_mut(),
                WRITE_DAC,
                null_mut(),
                KERNEL_MODE,
                &mut handle,
            )
        };
        if !nt_success(status) {
            return Err(status);
        }
        // SAFETY: an open kernel handle with WRITE_DAC; a valid self-relative descriptor
        // (host-tested bytes) that outlives the call (a static).
        let status =
            unsafe { ZwSetSecurityObject(handle, DACL_SECURITY_INFORMATION, sd.0.as_ptr().cast()) };
        // SAFETY: the handle opened above, closed once.
        unsafe { ZwClose(handle) };
        if nt_success(status) {
            Ok(())
        } else {
            Err(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The descriptor written out by hand from `winnt.h`'s layouts, as a second opinion on
    /// the const builder.
    #[rustfmt::skip]
    const CONTROL_BYTES: [u8; SD_LEN] = [
        // SECURITY_DESCRIPTOR_RELATIVE: rev 1, sbz, control 0x9004, owner/group/sacl 0, dacl 20
        0x01, 0x00, 0x04, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0,
        // ACL: rev 2, sbz, size 72, 3 ACEs, sbz
        0x02, 0x00, 0x48, 0x00, 0x03, 0x00, 0x00, 0x00,
        // ACE allowed, size 20, FILE_ALL_ACCESS, S-1-5-18
        0x00, 0x00, 0x14, 0x00, 0xff, 0x01, 0x1f, 0x00,
        0x01, 0x01, 0, 0, 0, 0, 0, 0x05, 0x12, 0, 0, 0,
        // ACE allowed, size 24, FILE_ALL_ACCESS, S-1-5-32-544
        0x00, 0x00, 0x18, 0x00, 0xff, 0x01, 0x1f, 0x00,
        0x01, 0x02, 0, 0, 0, 0, 0, 0x05, 0x20, 0, 0, 0, 0x20, 0x02, 0, 0,
        // ACE allowed, size 20, read|write|execute = 0x1201bf, S-1-5-11
        0x00, 0x00, 0x14, 0x00, 0xbf, 0x01, 0x12, 0x00,
        0x01, 0x01, 0, 0, 0, 0, 0, 0x05, 0x0b, 0, 0, 0,
    ];

    #[test]
    fn control_descriptor_bytes() {
        assert_eq!(CONTROL_SD.0, CONTROL_BYTES);
    }

    #[test]
    fn object_descriptor_differs_only_in_the_third_ace() {
        let mut expected = CONTROL_BYTES;
        // Everyone (S-1-1-0) with FILE_ALL_ACCESS instead of Authenticated Users RWX.
        expected[SD_LEN - 16..SD_LEN - 12].copy_from_slice(&FILE_ALL_ACCESS.to_le_bytes());
        expected[SD_LEN - 12..].copy_from_slice(&[1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(OBJECT_SD.0, expected);
    }

    #[test]
    fn descriptors_are_self_consistent() {
        for sd in [&CONTROL_SD, &OBJECT_SD] {
            let b = &sd.0;
            assert_eq!(b[0], 1, "SECURITY_DESCRIPTOR_REVISION");
            let control = u16_at(b, 2);
            assert_ne!(control & 0x0004, 0, "SE_DACL_PRESENT");
            assert_ne!(control & 0x1000, 0, "SE_DACL_PROTECTED (D:P)");
            assert_ne!(control & 0x8000, 0, "SE_SELF_RELATIVE");
            assert_eq!(control & 0x0008, 0, "not SE_DACL_DEFAULTED");
            let dacl = u32_at(b, 16) as usize;
            assert_eq!((u32_at(b, 4), u32_at(b, 8), u32_at(b, 12)), (0, 0, 0));
            assert_eq!(dacl % 4, 0);
            assert_eq!(usize::from(u16_at(b, dacl + 2)), SD_LEN - dacl, "AclSize");
            // Walk the ACEs: each is allowed, sized to its SID, 4-byte multiple.
            let mut at = dacl + 8;
            for _ in 0..u16_at(b, dacl + 4) {
                assert_eq!(b[at], 0, "ACCESS_ALLOWED_ACE_TYPE");
                assert_eq!(b[at + 1], 0, "no inheritance flags");
                let size = usize::from(u16_at(b, at + 2));
                let sub_authorities = usize::from(b[at + 9]);
                assert_eq!(size, 8 + 8 + 4 * sub_authorities);
                assert_eq!(size % 4, 0);
                at += size;
            }
            assert_eq!(at, SD_LEN);
        }
        assert_eq!(core::mem::align_of::<SecurityDescriptor>() % 4, 0);
    }

    #[test]
    fn mapped_generic_rights() {
        // winnt.h: FILE_GENERIC_* and FILE_ALL_ACCESS = STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE
        // | 0x1FF.
        assert_eq!(FILE_ALL_ACCESS, 0x000F_0000 | 0x0010_0000 | 0x1FF);
        assert_eq!(
            FILE_GENERIC_READ | FILE_GENERIC_WRITE | FILE_GENERIC_EXECUTE,
            0x0012_01BF
        );
    }

    #[test]
    fn extension_round_trips_every_device() {
        let devices = [
            Device::System,
            Device::Vm { vm: 0 },
            Device::Vm { vm: 63 },
            Device::Vcpu { vm: 5, vcpu: 15 },
        ];
        for d in devices {
            assert_eq!(DeviceExtension::of(d).device(), Some(d));
        }
        assert_eq!(DeviceExtension::of(Device::System).kind, 1);
        assert_eq!(DeviceExtension::of(Device::Vm { vm: 1 }).kind, 2);
        assert_eq!(DeviceExtension::of(Device::Vcpu { vm: 1, vcpu: 2 }).kind, 3);
        let bogus = DeviceExtension {
            kind: 0,
            vm: 0,
            vcpu: 0,
        };
        assert_eq!(bogus.device(), None);
        assert!(security_of(Device::System).0 != security_of(Device::Vm { vm: 0 }).0);
        assert!(core::ptr::eq(
            security_of(Device::Vcpu { vm: 0, vcpu: 0 }),
            &OBJECT_SD
        ));
    }
}
