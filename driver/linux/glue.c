// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * rhax.ko's C glue: every kernel API call of the Linux shell. The hypervisor (rhax-core) and
 * the shell's logic are Rust (rust/, linked in as rhax_rust.o); this file owns HAXM's device
 * nodes and file operations and the services the Rust side calls (rust/src/ffi.rs lists them
 * with their contracts).
 *
 * Nodes (HAXM's Linux port, haxm-abi.md "Linux"): misc device "HAX" -> /dev/HAX; per VM
 * "hax_vm/vmNN" -> /dev/hax_vm/vmNN; per vCPU "hax_vmNN/vcpuMM" -> /dev/hax_vmNN/vcpuMM
 * (a '/' in a misc name becomes a directory under devtmpfs: device_get_devnode). Mode 0600;
 * the VM and vCPU nodes belong to the creating process (as HAXM's), /dev/HAX to root; a udev
 * rule gives a group access to /dev/HAX (README.md). Every misc fops has .owner = THIS_MODULE,
 * so an open file pins the module (rmmod is refused while QEMU runs).
 */
#include <linux/module.h>
#include <linux/version.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/uaccess.h>
#include <linux/smp.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/anon_inodes.h>
#include <linux/mutex.h>
#include <linux/highmem.h>
#include <linux/vmalloc.h>
#include <linux/file.h>
#include <linux/io.h>
#include <linux/namei.h>
#include <linux/cred.h>
#include <asm/tsc.h>
#include <asm/desc.h>
#include <asm/debugreg.h>
#include <asm/msr.h>
#include <asm/tlbflush.h>

MODULE_LICENSE("Dual MIT/GPL");
MODULE_DESCRIPTION("rhax: a HAXM-compatible hypervisor (/dev/HAX)");
MODULE_AUTHOR("rhax");
MODULE_VERSION("0.1.0");

/* ---- the Rust side (rust/src/entry.rs, platform.rs, roots.rs) ---- */
int rhax_init(void);
void rhax_exit(void);
int rhax_open(u32 kind, u32 vm, u32 vcpu, void **out);
void rhax_release(void *h);
long rhax_ioctl(void *h, u32 cmd, u64 arg);
void rhax_percpu_call(void *ctx);
void rhax_lend_call(void *ctx);

/*
 * Every call into the Rust side goes through a thunk that aligns the stack to 16 bytes.
 *
 * The x86-64 kernel keeps the stack only 8-byte aligned (arch/x86/Makefile:
 * -mpreferred-stack-boundary=3, "Align the stack to the register width"), but rustc's
 * x86_64-unknown-none follows the SysV ABI: RSP+8 is a multiple of 16 at every function entry,
 * and locals of 16-byte alignment are placed relative to RSP without realigning. rhax-core's
 * FXSAVE area (rhax-api FxLayout, #[repr(align(16))]; FXSAVE #GPs on a misaligned operand,
 * SDM Vol. 2A FXSAVE) is such a local in HostState::capture. Seen on the first 2-CPU run:
 * "general protection fault, maybe for address 0xffffc9000009b758" at HwVmx::fxsave+0x4,
 * from HostState::capture in LinuxRoots::enable_all's IPI on CPU 1 (the idle task's stack),
 * so the kernel panicked ("Attempted to kill the idle task"); on 1 CPU the stack happened to
 * be aligned. An `and $-16, %rsp` before the call restores the ABI's invariant for the whole
 * Rust call tree. The arguments (at most 4, all in registers: rdi, rsi, rdx, rcx) and the
 * result (rax) pass through untouched. The frame-pointer prologue is the realignment form
 * objtool accepts (CFA on RBP, tools/objtool/check.c "and imm, %rsp"); the return goes
 * through the return thunk like compiled code (ASM_RET, CONFIG_RETHUNK).
 */
#define RHAX_A16_THUNK(fn)                                                  \
	asm(".pushsection .text, \"ax\"\n"                                  \
	    ".type rhax_a16_" #fn ", @function\n"                            \
	    "rhax_a16_" #fn ":\n\t"                                          \
	    "push %rbp\n\t"                                                  \
	    "mov %rsp, %rbp\n\t"                                             \
	    "and $-16, %rsp\n\t"                                             \
	    "call " #fn "\n\t"                                               \
	    "leave\n\t" ASM_RET                                              \
	    ".size rhax_a16_" #fn ", . - rhax_a16_" #fn "\n"                 \
	    ".popsection\n")

RHAX_A16_THUNK(rhax_init);
RHAX_A16_THUNK(rhax_exit);
RHAX_A16_THUNK(rhax_open);
RHAX_A16_THUNK(rhax_release);
RHAX_A16_THUNK(rhax_ioctl);
RHAX_A16_THUNK(rhax_percpu_call);
RHAX_A16_THUNK(rhax_lend_call);

int rhax_a16_rhax_init(void);
void rhax_a16_rhax_exit(void);
int rhax_a16_rhax_open(u32 kind, u32 vm, u32 vcpu, void **out);
void rhax_a16_rhax_release(void *h);
long rhax_a16_rhax_ioctl(void *h, u32 cmd, u64 arg);
void rhax_a16_rhax_percpu_call(void *ctx);
void rhax_a16_rhax_lend_call(void *ctx);

#define RHAX_MAX_VMS 64
#define RHAX_MAX_VCPUS 16

/* ---- logging, panic ---- */
void rhax_glue_log(int level, const u8 *msg, size_t len)
{
	int n = (int)min_t(size_t, len, 512);

	if (level == 0)
		pr_err("rhax: %.*s\n", n, msg);
	else if (level == 1)
		pr_warn("rhax: %.*s\n", n, msg);
	else
		pr_info("rhax: %.*s\n", n, msg);
}

void __noreturn rhax_glue_panic(const u8 *msg, size_t len)
{
	panic("rhax: %.*s\n", (int)min_t(size_t, len, 512), msg);
}

/* ---- memory ---- */
static gfp_t rhax_gfp(void)
{
	/* Inside a lend (interrupts off) nothing may sleep. */
	return irqs_disabled() ? GFP_ATOMIC : GFP_KERNEL;
}

void *rhax_glue_kmalloc(size_t size, size_t align)
{
	/* kmalloc aligns power-of-two sizes naturally (slab.h); rust/src/kalloc.rs rounds. */
	(void)align;
	return kmalloc(size, rhax_gfp() | __GFP_NOWARN);
}

void rhax_glue_kfree(void *p)
{
	kfree(p);
}

/* Pages the shell gives out: counted, so the module's counters show leaks (issue 10 e). */
static atomic_long_t rhax_pages_live = ATOMIC_LONG_INIT(0);
static atomic_long_t rhax_pins_live = ATOMIC_LONG_INIT(0);

/* Read-only counters in /sys/module/rhax/parameters/{pages_live,pins_live}: after every QEMU
 * is gone (also one killed with SIGKILL) both must be 0. */
static int rhax_counter_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read((atomic_long_t *)kp->arg));
}

static const struct kernel_param_ops rhax_counter_ops = {
	.get = rhax_counter_get,
};

module_param_cb(pages_live, &rhax_counter_ops, &rhax_pages_live, 0444);
MODULE_PARM_DESC(pages_live, "pages the module holds (VMCS, EPT, tunnels, ...)");
module_param_cb(pins_live, &rhax_counter_ops, &rhax_pins_live, 0444);
MODULE_PARM_DESC(pins_live, "pinned chunks of user memory (guest RAM)");

void *rhax_glue_alloc_pages(size_t count, u64 *phys)
{
	unsigned int order, i;
	struct page *page;

	if (count == 0 || count > (1UL << (MAX_ORDER - 1)))
		return NULL;
	order = get_order(count << PAGE_SHIFT);
	page = alloc_pages(rhax_gfp() | __GFP_ZERO | __GFP_NOWARN, order);
	if (!page)
		return NULL;
	/* Each page gets its own reference count: a page mapped into a process (tunnel, IO
	 * buffer) stays allocated until that mapping goes, whatever the shell frees. */
	split_page(page, order);
	for (i = count; i < (1U << order); i++)
		__free_page(page + i);
	atomic_long_add(count, &rhax_pages_live);
	*phys = page_to_phys(page);
	return page_address(page);
}

void rhax_glue_free_pages(void *virt, size_t count)
{
	struct page *page = virt_to_page(virt);
	size_t i;

	for (i = 0; i < count; i++)
		__free_page(page + i);
	atomic_long_sub(count, &rhax_pages_live);
}

struct rhax_pin {
	unsigned long npages;
	struct page *pages[];
};

int rhax_glue_pin(u64 uaddr, size_t len, void **handle)
{
	unsigned long npages = DIV_ROUND_UP(len, PAGE_SIZE);
	struct rhax_pin *pin;
	long got;

	if (!len || (uaddr & ~PAGE_MASK) || npages > (1UL << 20) ||
	    uaddr + ((u64)npages << PAGE_SHIFT) < uaddr || !access_ok((void __user *)uaddr, len))
		return -EFAULT;
	pin = kvmalloc(struct_size(pin, pages, npages), GFP_KERNEL);
	if (!pin)
		return -ENOMEM;
	/* Long-term pins of guest RAM (Documentation/core-api/pin_user_pages.rst, case 2). */
	got = pin_user_pages_fast(uaddr, npages, FOLL_WRITE | FOLL_LONGTERM, pin->pages);
	if (got != (long)npages) {
		if (got > 0)
			unpin_user_pages(pin->pages, got);
		kvfree(pin);
		return got < 0 ? (int)got : -EFAULT;
	}
	pin->npages = npages;
	atomic_long_inc(&rhax_pins_live);
	*handle = pin;
	return 0;
}

u64 rhax_glue_pinned_page(void *handle, size_t index)
{
	struct rhax_pin *pin = handle;

	if (!pin || index >= pin->npages)
		return 0;
	return page_to_phys(pin->pages[index]);
}

void rhax_glue_unpin(void *handle)
{
	struct rhax_pin *pin = handle;

	if (!pin)
		return;
	unpin_user_pages_dirty_lock(pin->pages, pin->npages, true);
	kvfree(pin);
	atomic_long_dec(&rhax_pins_live);
}

void *rhax_glue_phys_to_virt(u64 phys)
{
	unsigned long pfn = phys >> PAGE_SHIFT;

	if (!pfn_valid(pfn))
		return NULL;
	return (u8 *)page_address(pfn_to_page(pfn)) + (phys & ~PAGE_MASK);
}

/* ---- CPUs ---- */
static void rhax_percpu_tramp(void *ctx)
{
	rhax_a16_rhax_percpu_call(ctx);
}

void rhax_glue_on_each_cpu(void *ctx)
{
	on_each_cpu(rhax_percpu_tramp, ctx, 1);
}

int rhax_glue_on_cpu(u32 cpu, void *ctx)
{
	if (cpu >= nr_cpu_ids || !cpu_online(cpu))
		return -ENODEV;
	return smp_call_function_single(cpu, rhax_percpu_tramp, ctx, 1);
}

u32 rhax_glue_current_cpu(void)
{
	return raw_smp_processor_id();
}

u32 rhax_glue_cpu_ids(void)
{
	return nr_cpu_ids;
}

bool rhax_glue_cpu_online(u32 cpu)
{
	return cpu < nr_cpu_ids && cpu_online(cpu);
}

u64 rhax_glue_tsc_khz(void)
{
	return tsc_khz;
}

static void rhax_nothing(void *ctx)
{
}

void rhax_glue_kick(u32 cpu)
{
	/* The interrupt itself forces a guest on that CPU out (external-interrupt exiting). */
	if (cpu < nr_cpu_ids && cpu_online(cpu) && !irqs_disabled())
		smp_call_function_single(cpu, rhax_nothing, NULL, 0);
}

bool rhax_glue_user_return_pending(void)
{
	return signal_pending(current) || need_resched();
}

void rhax_glue_cr4_vmxe(bool on)
{
	/* Through the kernel's per-CPU CR4 shadow, as KVM's kvm_cpu_vmxon/cpu_vmxoff. */
	if (on)
		cr4_set_bits(X86_CR4_VMXE);
	else
		cr4_clear_bits(X86_CR4_VMXE);
}

/*
 * The lend: the VMX root of this CPU, with preemption and interrupts off, for the closure
 * behind ctx. A VM exit loads host state from the VMCS and clobbers what the VMCS cannot
 * hold (SDM Vol. 3C 28.5): GDTR/IDTR limits become 0xFFFF, LDTR null, the TR limit 0x67,
 * DR7 0x400, IA32_DEBUGCTL 0, DS/ES the host selector fields. Restored here as KVM does
 * (vmx_prepare_switch_to_host, vmx_vcpu_run): load_fixmap_gdt, invalidate_tss_limit (the
 * I/O bitmap beyond 0x67 is reloaded lazily), the IDT, the LDT, DS/ES, DEBUGCTL and
 * hw_breakpoint_restore for DR7.
 */
u32 rhax_glue_lend(void *ctx)
{
	unsigned long flags, debugctl;
	struct desc_ptr idt;
	u16 ldt, ds, es;
	u32 cpu;

	preempt_disable();
	local_irq_save(flags);
	cpu = raw_smp_processor_id();
	store_idt(&idt);
	asm volatile("sldt %0" : "=r"(ldt));
	savesegment(ds, ds);
	savesegment(es, es);
	rdmsrl(MSR_IA32_DEBUGCTLMSR, debugctl);

	rhax_a16_rhax_lend_call(ctx);

	load_fixmap_gdt(cpu);
	asm volatile("lidt %0" : : "m"(idt));
	if (ldt)
		asm volatile("lldt %0" : : "r"(ldt));
	invalidate_tss_limit();
	loadsegment(ds, ds);
	loadsegment(es, es);
	if (debugctl)
		wrmsrl(MSR_IA32_DEBUGCTLMSR, debugctl);
	if (hw_breakpoint_active())
		hw_breakpoint_restore();
	local_irq_restore(flags);
	preempt_enable();
	return cpu;
}

static DEFINE_MUTEX(rhax_state_mutex);

void rhax_glue_state_lock(void)
{
	mutex_lock(&rhax_state_mutex);
}

void rhax_glue_state_unlock(void)
{
	mutex_unlock(&rhax_state_mutex);
}

/* ---- user copies ---- */
size_t rhax_glue_copy_from_user(void *dst, u64 uaddr, size_t len)
{
	return copy_from_user(dst, (const void __user *)uaddr, len);
}

size_t rhax_glue_copy_to_user(u64 uaddr, const void *src, size_t len)
{
	return copy_to_user((void __user *)uaddr, src, len);
}

/*
 * ---- user mappings (tunnel, IO buffer) ----
 * HAXM's Linux port maps them into the process calling VCPU_CREATE. Here: an anon-inode file
 * per mapping whose mmap inserts the pages (vm_insert_page: each page referenced by the
 * mapping, so freeing them in the shell while the process still maps them is safe), mapped
 * with vm_mmap in the current process. The file pins the module (fops owner) until the
 * mapping goes; VM_DONTCOPY keeps it out of fork children.
 */
struct rhax_map {
	struct page *first;
	unsigned long count;
};

static int rhax_map_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct rhax_map *m = file->private_data;
	unsigned long i;
	int err;

	if (vma->vm_pgoff != 0 || vma_pages(vma) != m->count)
		return -EINVAL;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags |= VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP;
#endif
	for (i = 0; i < m->count; i++) {
		err = vm_insert_page(vma, vma->vm_start + (i << PAGE_SHIFT), m->first + i);
		if (err)
			return err;
	}
	return 0;
}

static int rhax_map_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static const struct file_operations rhax_map_fops = {
	.owner = THIS_MODULE,
	.mmap = rhax_map_mmap,
	.release = rhax_map_release,
};

int rhax_glue_map_user(void *virt, size_t count, u64 *uaddr)
{
	struct rhax_map *m;
	struct file *file;
	unsigned long addr;

	if (!current->mm || !count)
		return -EINVAL;
	m = kmalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	m->first = virt_to_page(virt);
	m->count = count;
	file = anon_inode_getfile("[rhax-tunnel]", &rhax_map_fops, m, O_RDWR);
	if (IS_ERR(file)) {
		kfree(m);
		return PTR_ERR(file);
	}
	addr = vm_mmap(file, 0, count << PAGE_SHIFT, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
	fput(file); /* the mapping holds its own reference */
	if (IS_ERR_VALUE(addr))
		return (int)addr;
	*uaddr = addr;
	return 0;
}

void rhax_glue_unmap_user(u64 uaddr, void *virt, size_t count)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	bool ours = false;

	/* At process exit the mm is gone before the files are closed: nothing left to undo. */
	if (!mm)
		return;
	mmap_read_lock(mm);
	vma = find_vma(mm, uaddr);
	if (vma && vma->vm_start == uaddr && vma->vm_file &&
	    vma->vm_file->f_op == &rhax_map_fops && vma_pages(vma) == count) {
		struct rhax_map *m = vma->vm_file->private_data;

		ours = m->first == virt_to_page(virt);
	}
	mmap_read_unlock(mm);
	if (ours)
		vm_munmap(uaddr, count << PAGE_SHIFT);
}

/* ---- device nodes ---- */
struct rhax_node {
	struct miscdevice misc;
	u32 kind, vm, vcpu;
	char name[24];
};

static int rhax_fop_open(struct inode *inode, struct file *file)
{
	/* misc_open set private_data to our miscdevice (and holds misc_mtx). */
	struct rhax_node *n = container_of(file->private_data, struct rhax_node, misc);
	void *h = NULL;
	int err = rhax_a16_rhax_open(n->kind, n->vm, n->vcpu, &h);

	if (err)
		return err;
	file->private_data = h;
	return 0;
}

static int rhax_fop_release(struct inode *inode, struct file *file)
{
	rhax_a16_rhax_release(file->private_data);
	return 0;
}

static long rhax_fop_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	return rhax_a16_rhax_ioctl(file->private_data, cmd, arg);
}

static const struct file_operations rhax_fops = {
	.owner = THIS_MODULE,
	.open = rhax_fop_open,
	.release = rhax_fop_release,
	.unlocked_ioctl = rhax_fop_ioctl,
	/* No compat_ioctl: a 32-bit caller's codes (pointer-sized SET/GET_CPUID) and pointers
	 * differ, and the dispatcher serves the 64-bit Linux encoding only: ENOTTY for them. */
	.llseek = noop_llseek,
};

static struct rhax_node rhax_control = {
	.misc = {
		.minor = MISC_DYNAMIC_MINOR,
		.name = "HAX",
		.fops = &rhax_fops,
		.mode = 0600,
	},
	.kind = 0,
};

static DEFINE_MUTEX(rhax_nodes_mutex);
static struct rhax_node *rhax_vm_nodes[RHAX_MAX_VMS];
static struct rhax_node *rhax_vcpu_nodes[RHAX_MAX_VMS][RHAX_MAX_VCPUS];

/*
 * HAXM's Linux port gives a new VM or vCPU node to the process that created the object (its
 * fsuid/fsgid), so a QEMU that is not root can open it at once, without waiting for udev.
 * devtmpfs has created the node synchronously in misc_register (devtmpfs_create_node waits);
 * it is looked up in the caller's /dev. Without devtmpfs there, nothing happens.
 */
static void rhax_node_chown(const char *name)
{
	char path[40];
	struct path p;
	struct inode *inode;

	snprintf(path, sizeof(path), "/dev/%s", name);
	if (kern_path(path, LOOKUP_FOLLOW, &p))
		return;
	inode = d_inode(p.dentry);
	if (inode && S_ISCHR(inode->i_mode)) {
		inode_lock(inode);
		inode->i_uid = current_fsuid();
		inode->i_gid = current_fsgid();
		mark_inode_dirty(inode);
		inode_unlock(inode);
	}
	path_put(&p);
}

static struct rhax_node *rhax_node_new(u32 kind, u32 vm, u32 vcpu)
{
	struct rhax_node *n = kzalloc(sizeof(*n), GFP_KERNEL);

	if (!n)
		return NULL;
	n->kind = kind;
	n->vm = vm;
	n->vcpu = vcpu;
	if (kind == 1)
		snprintf(n->name, sizeof(n->name), "hax_vm/vm%02u", vm);
	else
		snprintf(n->name, sizeof(n->name), "hax_vm%02u/vcpu%02u", vm, vcpu);
	n->misc.minor = MISC_DYNAMIC_MINOR;
	n->misc.name = n->name;
	n->misc.fops = &rhax_fops;
	n->misc.mode = 0600;
	if (misc_register(&n->misc)) {
		pr_err("rhax: cannot register /dev/%s\n", n->name);
		kfree(n);
		return NULL;
	}
	rhax_node_chown(n->name);
	return n;
}

static void rhax_node_del(struct rhax_node **slot)
{
	if (!*slot)
		return;
	/* After misc_deregister no open of it is in progress (misc_mtx); open files keep only
	 * the handle from rhax_open, not the node. */
	misc_deregister(&(*slot)->misc);
	kfree(*slot);
	*slot = NULL;
}

void rhax_glue_nodes_sync(u64 vms, const u16 *vcpus)
{
	/* The live set of the last complete sync: rhax_ioctl asks after every system and VM
	 * IOCTL, and walking the 64x16 node table cost ~14,400 emulated instructions per call
	 * (exit-bench: VERSION 17187, 2803 with this check). Nodes change only when the set
	 * does; a sync where a node could not be created is not recorded, so the next one
	 * retries it. */
	static u64 synced_vms;
	static u16 synced_vcpus[RHAX_MAX_VMS];
	bool complete = true;
	u32 vm, vcpu;

	mutex_lock(&rhax_nodes_mutex);
	if (vms == synced_vms && !memcmp(vcpus, synced_vcpus, sizeof(synced_vcpus))) {
		mutex_unlock(&rhax_nodes_mutex);
		return;
	}
	for (vm = 0; vm < RHAX_MAX_VMS; vm++) {
		bool want = vms & (1ULL << vm);

		if (want && !rhax_vm_nodes[vm])
			rhax_vm_nodes[vm] = rhax_node_new(1, vm, 0);
		else if (!want)
			rhax_node_del(&rhax_vm_nodes[vm]);
		for (vcpu = 0; vcpu < RHAX_MAX_VCPUS; vcpu++) {
			bool w = vcpus[vm] & (1U << vcpu);

			if (w && !rhax_vcpu_nodes[vm][vcpu])
				rhax_vcpu_nodes[vm][vcpu] = rhax_node_new(2, vm, vcpu);
			else if (!w)
				rhax_node_del(&rhax_vcpu_nodes[vm][vcpu]);
			if (w && !rhax_vcpu_nodes[vm][vcpu])
				complete = false;
		}
		if (want && !rhax_vm_nodes[vm])
			complete = false;
	}
	if (complete) {
		synced_vms = vms;
		memcpy(synced_vcpus, vcpus, sizeof(synced_vcpus));
	}
	mutex_unlock(&rhax_nodes_mutex);
}

static void rhax_nodes_del_all(void)
{
	u32 vm, vcpu;

	mutex_lock(&rhax_nodes_mutex);
	for (vm = 0; vm < RHAX_MAX_VMS; vm++) {
		rhax_node_del(&rhax_vm_nodes[vm]);
		for (vcpu = 0; vcpu < RHAX_MAX_VCPUS; vcpu++)
			rhax_node_del(&rhax_vcpu_nodes[vm][vcpu]);
	}
	mutex_unlock(&rhax_nodes_mutex);
}

static int __init rhax_module_init(void)
{
	int err = rhax_a16_rhax_init();

	if (err)
		return err;
	err = misc_register(&rhax_control.misc);
	if (err) {
		pr_err("rhax: cannot register /dev/HAX: %d\n", err);
		rhax_a16_rhax_exit();
		return err;
	}
	pr_info("rhax: /dev/HAX ready\n");
	return 0;
}

static void __exit rhax_module_exit(void)
{
	misc_deregister(&rhax_control.misc);
	rhax_nodes_del_all();
	rhax_a16_rhax_exit();
	pr_info("rhax: pages still allocated %ld, pins %ld\n",
		atomic_long_read(&rhax_pages_live), atomic_long_read(&rhax_pins_live));
}

module_init(rhax_module_init);
module_exit(rhax_module_exit);
