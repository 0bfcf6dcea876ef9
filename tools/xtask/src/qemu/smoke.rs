//! QEMU's start-up on a fake `/dev/HAX` (`tests/linux/qemu/fakehax.c`, preloaded): capability,
//! version, VM, vCPUs, RAM, tunnel, register sync, up to the first RUN, which the fake answers
//! with "the guest shut down". No guest code runs; what this proves is the build: the machine
//! and its default devices start, SeaBIOS and the `-kernel` option ROMs are found, `-smp 2`
//! creates two vCPUs. The logs (`target/qemu/fakehax-*.log`) are the exact ioctl sequence the
//! Linux module has to serve.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;

/// A minimal bzImage: a boot-protocol 2.15 setup header (Documentation/arch/x86/boot.rst,
/// "THE REAL-MODE KERNEL HEADER") and a protected-mode body of `hlt; jmp $-1`. Enough for
/// QEMU's x86_load_linux() to load it with linuxboot_dma.bin; never executed here.
pub fn tiny_bzimage() -> Vec<u8> {
    const SETUP_SECTS: u8 = 4;
    let mut img = vec![0u8; (SETUP_SECTS as usize + 1) * 512];
    let put16 = |img: &mut Vec<u8>, off: usize, v: u16| {
        img[off..off + 2].copy_from_slice(&v.to_le_bytes());
    };
    let put32 = |img: &mut Vec<u8>, off: usize, v: u32| {
        img[off..off + 4].copy_from_slice(&v.to_le_bytes());
    };
    img[0x1f1] = SETUP_SECTS; // setup_sects
    put16(&mut img, 0x1fe, 0xaa55); // boot_flag
    img[0x202..0x206].copy_from_slice(b"HdrS"); // header
    put16(&mut img, 0x206, 0x020f); // version 2.15
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    put32(&mut img, 0x214, 0x10_0000); // code32_start
    put32(&mut img, 0x22c, 0x7fff_ffff); // initrd_addr_max
    put32(&mut img, 0x230, 0x20_0000); // kernel_alignment
    img[0x234] = 1; // relocatable_kernel
    put16(&mut img, 0x236, 0x1); // xloadflags: XLF_KERNEL_64
    put32(&mut img, 0x238, 2048); // cmdline_size
    put32(&mut img, 0x260, 0x10_0000); // init_size
    img.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp $-1
    img.resize(img.len() + 4093, 0);
    img
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    vcpus: usize,
}

/// Builds the fake and runs QEMU on it three ways; fails on any unexpected outcome.
pub fn check(qemu: &Path, top: &Path, fake_c: &Path) -> Result {
    let so = top.join("fakehax.so");
    let status = Command::new("gcc")
        .args([
            "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O1", "-o",
        ])
        .arg(&so)
        .arg(fake_c)
        .arg("-ldl")
        .status()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed ({status})", fake_c.display()));
    }
    let kernel = top.join("tiny-bzimage");
    let initrd = top.join("tiny-initrd");
    fs::write(&kernel, tiny_bzimage()).map_err(|e| format!("{}: {e}", kernel.display()))?;
    fs::write(&initrd, [0u8; 512]).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let base = ["-accel", "hax", "-nographic", "-nic", "none", "-m", "64"];
    let path = |p: &PathBuf| p.display().to_string();
    let cases = [
        Case {
            name: "seabios",
            args: vec![],
            vcpus: 1,
        },
        Case {
            name: "kernel",
            args: vec![
                "-kernel".into(),
                path(&kernel),
                "-initrd".into(),
                path(&initrd),
                "-append".into(),
                "console=ttyS0".into(),
            ],
            vcpus: 1,
        },
        Case {
            name: "smp2",
            args: vec!["-smp".into(), "2".into(), "-m".into(), "512".into()],
            vcpus: 2,
        },
    ];
    for case in &cases {
        let log = top.join(format!("fakehax-{}.log", case.name));
        let mut c = Command::new(qemu);
        c.args(base).args(&case.args).env("LD_PRELOAD", &so);
        let (status, text) = super::run_limited(&mut c, &log, Duration::from_secs(30))?;
        let fail = |why: &str| {
            Err(format!(
                "fake-HAX run {}: {why}; {}",
                case.name,
                log.display()
            ))
        };
        match status {
            None => return fail("QEMU hung"),
            Some(s) if !s.success() => return fail(&format!("QEMU failed ({s})")),
            Some(_) => {}
        }
        for want in [
            "HAX is working and emulator runs in fast virt mode.",
            "VCPU shutdown request",
        ] {
            if !text.contains(want) {
                return fail(&format!("no {want:?}"));
            }
        }
        let created = text.matches("fakehax: vm VCPU_CREATE").count();
        if created != case.vcpus {
            return fail(&format!("{created} vCPUs created, expected {}", case.vcpus));
        }
        for bad in [
            "Could not open option rom",
            "failed to find romfile",
            "could not load",
            "UNKNOWN",
        ] {
            if text.contains(bad) {
                return fail(&format!("{bad:?} in the output"));
            }
        }
        let ioctls = text.lines().filter(|l| l.starts_with("fakehax: ")).count();
        eprintln!(
            "xtask: qemu: check: fake /dev/HAX, {}: QEMU started, {} vCPU(s), {ioctls} HAX calls, shut down",
            case.name, case.vcpus
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiny_kernel_has_a_boot_protocol_header() {
        let k = tiny_bzimage();
        assert_eq!(&k[0x202..0x206], b"HdrS");
        assert_eq!(u16::from_le_bytes([k[0x206], k[0x207]]), 0x020f);
        assert_eq!(u16::from_le_bytes([k[0x1fe], k[0x1ff]]), 0xaa55);
        // The setup is (setup_sects + 1) sectors; the body follows it.
        let setup = (k[0x1f1] as usize + 1) * 512;
        assert_eq!(&k[setup..setup + 3], &[0xf4, 0xeb, 0xfd]);
    }
}
