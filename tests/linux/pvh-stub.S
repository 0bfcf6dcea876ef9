/*
 * The protected-mode part of the fast boot image (tools/xtask/src/linux/pvh.rs): Debian's own
 * real-mode setup code (the first sectors of its bzImage) runs under syslinux, queries the
 * BIOS E820 map, switches to 32-bit protected mode and jumps here (code32_start = 0x100000)
 * with %esi = boot_params (Documentation/arch/x86/boot.rst, "32-bit boot protocol"). Instead
 * of the XZ decompressor (about 2 minutes at Bochs speed) this stub moves the already
 * uncompressed kernel image, loaded right behind it, to its physical link address and enters
 * the kernel at its PVH entry (ELF note XEN_ELFNOTE_PHYS32_ENTRY, arch/x86/platform/pvh/head.S)
 * with %ebx = a struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h) built from
 * boot_params: the command line, the initrd as module 0, the E820 map as the memory map.
 *
 * xtask assembles this with --defsym IMAGE_SIZE=, KERNEL_PHYS=, PVH_ENTRY= and links it at
 * 0x100000; the image starts at 0x100000 + STUB_SIZE.
 */
	.code32
	.set	STUB_SIZE, 0x2000
	.set	BP_E820_ENTRIES, 0x1e8	/* u8 */
	.set	BP_RAMDISK_IMAGE, 0x218
	.set	BP_RAMDISK_SIZE, 0x21c
	.set	BP_CMD_LINE_PTR, 0x228
	.set	BP_E820_TABLE, 0x2d0	/* 20-byte entries: u64 addr, u64 size, u32 type */
	.set	E820_MAX, 128

	.text
	.globl	_start
_start:
	cli
	mov	%esi, %ebp
	/*
	 * Move the image up: the destination is above the source and they overlap, so copy
	 * backwards (DF=1), one dword at a time from the last one.
	 */
	mov	$(_start + STUB_SIZE + IMAGE_SIZE - 4), %esi
	mov	$(KERNEL_PHYS + IMAGE_SIZE - 4), %edi
	mov	$(IMAGE_SIZE / 4), %ecx
	std
	rep movsl
	cld

	movl	$0x336ec578, start_info		/* XEN_HVM_START_MAGIC_VALUE */
	movl	$1, start_info + 4		/* version 1: memmap_* valid */
	movl	$modlist, start_info + 16
	mov	BP_CMD_LINE_PTR(%ebp), %eax
	mov	%eax, start_info + 24
	mov	BP_RAMDISK_SIZE(%ebp), %eax
	test	%eax, %eax
	jz	1f
	mov	%eax, modlist + 8		/* size */
	mov	BP_RAMDISK_IMAGE(%ebp), %eax
	mov	%eax, modlist			/* paddr */
	movl	$1, start_info + 12		/* nr_modules */
1:
	movl	$memmap, start_info + 40
	movzbl	BP_E820_ENTRIES(%ebp), %ecx
	cmp	$E820_MAX, %ecx
	jbe	2f
	mov	$E820_MAX, %ecx
2:
	mov	%ecx, start_info + 48
	lea	BP_E820_TABLE(%ebp), %esi
	mov	$memmap, %edi
3:
	test	%ecx, %ecx
	jz	4f
	movsl				/* addr */
	movsl
	movsl				/* size */
	movsl
	movsl				/* type */
	xor	%eax, %eax
	stosl				/* reserved */
	dec	%ecx
	jmp	3b
4:
	mov	$start_info, %ebx
	mov	$PVH_ENTRY, %eax
	jmp	*%eax

	.balign	8
start_info:	.fill	56, 1, 0
modlist:	.fill	32, 1, 0
memmap:		.fill	E820_MAX * 24, 1, 0
	.org	STUB_SIZE
