# Devices of the QEMU built by `cargo xtask qemu` (copied into the source tree as
# configs/devices/x86_64-softmmu/rhax.mak and chosen with --with-devices-x86_64=rhax, together
# with --without-default-devices: only these boards and what they `select` are built).
#
# The `pc` machine (i440FX + PIIX3): SeaBIOS, `-kernel`/`-initrd` direct boot (fw_cfg DMA),
# the ISA serial port for `-nographic`, ACPI power-off (PIIX4 PM), the PIT, the PIC, the IOAPIC.
CONFIG_I440FX=y
# The `pc` machine's default display is std VGA: without it QEMU refuses to start unless
# given `-vga none`.
CONFIG_VGA_PCI=y
# Without `-nodefaults` the `pc` machine adds a parallel port (`-parallel vc:80Cx24C`): QEMU
# aborts ("unknown type 'isa-parallel'") unless it is built (or `-parallel none` is given).
CONFIG_PARALLEL=y
# No NIC is built: the `pc` machine's default NIC (e1000) would need iPXE option ROMs and slow
# SeaBIOS down with a network boot; run QEMU with `-nic none` (or `-nodefaults`), otherwise it
# exits with "Unsupported NIC model: e1000".
# An MMIO timer for guest tests (Linux uses it when present).
CONFIG_HPET=y
# isa-debug-exit: a test guest can end QEMU with an exit status.
CONFIG_ISA_DEBUG=y
