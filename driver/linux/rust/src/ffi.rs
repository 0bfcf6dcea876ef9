//! The C glue's functions (`../../glue.c`), the only way this crate reaches the kernel.
//! Each is documented there with the kernel API it wraps and its context rules.

use core::ffi::{c_int, c_void};

extern "C" {
    /// printk at `level` (0: err, 1: warn, 2: info) of `len` bytes of `msg`.
    pub fn rhax_glue_log(level: c_int, msg: *const u8, len: usize);
    /// Stops the machine (a broken invariant): panic() with the message.
    pub fn rhax_glue_panic(msg: *const u8, len: usize) -> !;
    /// kmalloc of `size` bytes aligned to `align` (<= PAGE_SIZE), GFP_ATOMIC with interrupts
    /// off, else GFP_KERNEL; null on failure.
    pub fn rhax_glue_kmalloc(size: usize, align: usize) -> *mut u8;
    /// kfree.
    pub fn rhax_glue_kfree(p: *mut u8);
    /// `count` physically contiguous zeroed pages (alloc_pages + split_page: each page has
    /// its own reference count, so a user mapping keeps its page alive); null on failure.
    pub fn rhax_glue_alloc_pages(count: usize, phys: *mut u64) -> *mut u8;
    /// Drops the shell's reference of each page of an `rhax_glue_alloc_pages` block.
    pub fn rhax_glue_free_pages(virt: *mut u8, count: usize);
    /// pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM) of `len` bytes at page-aligned
    /// `uaddr` in the current process; 0 and `*handle` on success, -errno otherwise.
    pub fn rhax_glue_pin(uaddr: u64, len: usize, handle: *mut *mut c_void) -> c_int;
    /// The physical address of page `index` of a pin (0 when out of range).
    pub fn rhax_glue_pinned_page(handle: *mut c_void, index: usize) -> u64;
    /// unpin_user_pages_dirty_lock and free the pin record.
    pub fn rhax_glue_unpin(handle: *mut c_void);
    /// The direct-map address of a physical address of RAM (null if it is not RAM).
    pub fn rhax_glue_phys_to_virt(phys: u64) -> *mut u8;
    /// on_each_cpu(.., wait=1) calling `rhax_percpu_call(ctx)` on every online CPU.
    pub fn rhax_glue_on_each_cpu(ctx: *mut c_void);
    /// smp_call_function_single(cpu, .., wait=1) calling `rhax_percpu_call(ctx)`; 0 or -errno.
    pub fn rhax_glue_on_cpu(cpu: u32, ctx: *mut c_void) -> c_int;
    /// raw_smp_processor_id().
    pub fn rhax_glue_current_cpu() -> u32;
    /// nr_cpu_ids (CPU numbers are below it).
    pub fn rhax_glue_cpu_ids() -> u32;
    /// cpu_online(cpu).
    pub fn rhax_glue_cpu_online(cpu: u32) -> bool;
    /// tsc_khz.
    pub fn rhax_glue_tsc_khz() -> u64;
    /// An IPI to `cpu` that does nothing (forces a guest there out).
    pub fn rhax_glue_kick(cpu: u32);
    /// The non-preemptible lend: preemption and interrupts off, host state saved, then
    /// `rhax_lend_call(ctx)`, then host state restored. Returns the CPU it ran on.
    pub fn rhax_glue_lend(ctx: *mut c_void) -> u32;
    /// CR4.VMXE through the kernel's CR4 shadow (cr4_set_bits/cr4_clear_bits), on this CPU
    /// with interrupts off. `rhax_glue_cr4_vmxe(false)` only after VMXOFF.
    pub fn rhax_glue_cr4_vmxe(on: bool);
    /// Maps `count` pages of an `rhax_glue_alloc_pages` block into the current process
    /// (vm_mmap of an anon-inode file whose mmap inserts the pages); 0 or -errno.
    pub fn rhax_glue_map_user(virt: *mut u8, count: usize, uaddr: *mut u64) -> c_int;
    /// vm_munmap of that mapping if the current process still has it there.
    pub fn rhax_glue_unmap_user(uaddr: u64, virt: *mut u8, count: usize);
    /// copy_from_user; the bytes NOT copied.
    pub fn rhax_glue_copy_from_user(dst: *mut u8, uaddr: u64, len: usize) -> usize;
    /// copy_to_user; the bytes NOT copied.
    pub fn rhax_glue_copy_to_user(uaddr: u64, src: *const u8, len: usize) -> usize;
    /// Makes the VM and vCPU device nodes match the live objects (misc_register and
    /// misc_deregister under the glue's node mutex). Process context, no lock held.
    pub fn rhax_glue_nodes_sync(vms: u64, vcpus: *const u16);
    /// signal_pending(current) || need_resched(): RUN should return to user space.
    pub fn rhax_glue_user_return_pending() -> bool;
}

extern "C" {
    /// mutex_lock of the glue's VMX-state mutex (process context; may sleep).
    pub fn rhax_glue_state_lock();
    /// mutex_unlock of it.
    pub fn rhax_glue_state_unlock();
}
