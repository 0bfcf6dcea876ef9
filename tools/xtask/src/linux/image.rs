//! The bootable image of `cargo xtask linux`: Debian's kernel, an initramfs built here (busybox,
//! `tests/linux/init` + `checks.sh`, KVM's modules for the VT-x probe, and the optional rhax.ko
//! and QEMU tree) and a FAT disk with syslinux that the Bochs BIOS boots.
//!
//! Debian packages are fetched with `apt-get download` (no installation) and unpacked with
//! `dpkg-deb -x` into `<target>/linux/debs/<package>/`, once: delete that folder to refresh.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::Archive;

/// Where the image's parts and the run's outputs live.
pub fn linux_dir() -> PathBuf {
    crate::target_dir().join("linux")
}

/// Runs `cmd`, failing with its stderr when it fails.
pub fn run_tool(cmd: &mut Command) -> crate::Result<Vec<u8>> {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A program on PATH or in the sbin folders (`mkfs.vfat` lives in /usr/sbin, which a normal
/// user's PATH may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    crate::apt::which(name).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// The host tools the image builder runs, installed from Debian when missing.
pub fn ensure_tools() -> crate::Result {
    let needed = ["mkfs.vfat", "syslinux", "mcopy", "dpkg-deb", "xz"];
    if needed.iter().all(|n| find_program(n).is_some()) {
        return Ok(());
    }
    crate::apt::install(&[
        "dosfstools",
        "syslinux",
        "syslinux-common",
        "mtools",
        "xz-utils",
    ])?;
    match needed.iter().find(|n| find_program(n).is_none()) {
        None => Ok(()),
        Some(n) => Err(format!("{n} still missing after installing its package")),
    }
}

/// Downloads Debian package `name` (without installing it) and unpacks it into
/// `<target>/linux/debs/<name>/`, unless that was done before. Returns the unpacked root.
pub fn debian_package(name: &str) -> crate::Result<PathBuf> {
    let base = linux_dir().join("debs");
    let root = base.join(name);
    let stamp = base.join(format!("{name}.done"));
    if stamp.is_file() {
        return Ok(root);
    }
    let dl = base.join("download");
    std::fs::create_dir_all(&dl).map_err(|e| format!("{}: {e}", dl.display()))?;
    eprintln!("xtask: linux: apt-get download {name}");
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", name])
            .current_dir(&dl),
    )?;
    let prefix = format!("{name}_");
    let deb = std::fs::read_dir(&dl)
        .map_err(|e| format!("{}: {e}", dl.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .max()
        .ok_or_else(|| format!("apt-get download {name} left no .deb in {}", dl.display()))?;
    let _ = std::fs::remove_dir_all(&root);
    run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(&stamp, deb.display().to_string()).map_err(|e| format!("{e}"))?;
    Ok(root)
}

/// The kernel package `linux-image-amd64` depends on (e.g. `linux-image-6.1.0-57-amd64`),
/// read from the local package lists (`apt-cache depends`, no network).
pub fn kernel_package() -> crate::Result<String> {
    let out = run_tool(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| "apt-cache depends linux-image-amd64: no linux-image-*-amd64".into())
}

/// The unpacked kernel: `vmlinuz`, its release string and its modules folder.
pub struct Kernel {
    /// `/boot/vmlinuz-RELEASE`.
    pub vmlinuz: PathBuf,
    /// `6.1.0-57-amd64`.
    pub release: String,
    /// `/lib/modules/RELEASE`.
    pub modules: PathBuf,
}

/// Fetches and unpacks Debian's current 6.1 kernel.
pub fn kernel() -> crate::Result<Kernel> {
    let pkg = kernel_package()?;
    let release = pkg.strip_prefix("linux-image-").unwrap_or(&pkg).to_string();
    let root = debian_package(&pkg)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let modules = root.join("lib/modules").join(&release);
    if !vmlinuz.is_file() || !modules.is_dir() {
        return Err(format!("{pkg}: no {} or no modules", vmlinuz.display()));
    }
    Ok(Kernel {
        vmlinuz,
        release,
        modules,
    })
}

/// What goes into the initramfs besides busybox and the scripts.
pub struct Extras<'a> {
    /// rhax.ko (`--module`), put at `/rhax/rhax.ko`.
    pub module: Option<&'a Path>,
    /// A QEMU install tree (`--qemu`: `bin/qemu-system-x86_64`, `share/qemu/...`), put at
    /// `/qemu` with the shared libraries of every program in `bin/` and SeaBIOS.
    pub qemu: Option<&'a Path>,
    /// A static `rhax-client` (`--bench`, `--client`), put at `/rhax/rhax-client` for the
    /// `exit-bench` check.
    pub client: Option<&'a Path>,
}

fn read(p: &Path) -> crate::Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// KVM's modules, in load order: kvm_intel loading is the proof that VT-x works in the booted
/// kernel (checks.sh `kvm-intel`).
const KVM_MODULES: [(&str, &str); 3] = [
    ("kernel/virt/lib/irqbypass.ko", "irqbypass.ko"),
    ("kernel/arch/x86/kvm/kvm.ko", "kvm.ko"),
    ("kernel/arch/x86/kvm/kvm-intel.ko", "kvm-intel.ko"),
];

/// Builds the newc initramfs and returns its bytes. Uncompressed: syslinux loads it through
/// the Bochs BIOS in well under a second, while the kernel's gunzip runs at Bochs speed (one
/// comparison run each: kernel start to /init 41 s wall uncompressed, 47 s with gzip -9).
pub fn initramfs(kernel: &Kernel, extras: &Extras) -> crate::Result<Vec<u8>> {
    let busybox_root = debian_package("busybox-static")?;
    let tests = crate::workspace_root().join("tests/linux");
    let mut a = Archive::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib/modules",
    ] {
        a.dir(d);
    }
    for d in ["dev", "proc", "sys", "tmp", "run"] {
        a.dir(d);
    }
    // The kernel opens /dev/console before devtmpfs is mounted (init/main.c
    // console_on_rootfs): without this node the init's early output is lost.
    a.char_dev("dev/console", 5, 1);
    a.file(
        "bin/busybox",
        0o755,
        read(&busybox_root.join("bin/busybox"))?,
    );
    a.symlink("bin/sh", "busybox");
    a.file("init", 0o755, read(&tests.join("init"))?);
    a.file("checks.sh", 0o755, read(&tests.join("checks.sh"))?);
    for (src, dst) in KVM_MODULES {
        a.file(
            &format!("lib/modules/{dst}"),
            0o644,
            read(&kernel.modules.join(src))?,
        );
    }
    if let Some(m) = extras.module {
        a.dir("rhax");
        a.file("rhax/rhax.ko", 0o644, read(m)?);
    }
    if let Some(c) = extras.client {
        a.parents("rhax/rhax-client");
        a.file("rhax/rhax-client", 0o755, read(c)?);
    }
    if let Some(q) = extras.qemu {
        add_qemu(&mut a, q)?;
        // The guest kernel of the `-kernel` check: Debian's own bzImage (8 MiB), the same
        // kernel as the host's. Its initramfs is packed inside the image at run time
        // (checks.sh, busybox cpio), so nothing else is needed here.
        a.dir("guest");
        a.file("guest/vmlinuz", 0o644, read(&kernel.vmlinuz)?);
        // The guest's test program (issue 10 item 3c) and msr.ko, which gives it
        // /dev/cpu/N/msr: checks.sh copies both into the guest's initramfs.
        a.file(
            "guest/rhax-guest-test",
            0o755,
            read(&guest_test_program()?)?,
        );
        a.file(
            "guest/msr.ko",
            0o644,
            read(&kernel.modules.join(MSR_MODULE))?,
        );
        // The same kernel without its XZ decompressor (linux/pvh.rs, the host's fast kernel):
        // QEMU loads it as a bzImage and its setup code enters the stub, which jumps to the
        // PVH entry. The guest's decompression took most of QEMU's 63 emulated s.
        a.file(
            "guest/vmlinuz-pvh",
            0o644,
            read(&guest_fast_kernel(kernel)?)?,
        );
    }
    Ok(a.finish())
}

/// The fast kernel for the QEMU guest (`<target>/linux/guest-vmlinuz-pvh`), built by
/// [`super::pvh::build`] unless it is newer than Debian's bzImage.
fn guest_fast_kernel(kernel: &Kernel) -> crate::Result<PathBuf> {
    let out = linux_dir().join("guest-vmlinuz-pvh");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!(
        (modified(&out), modified(&kernel.vmlinuz)),
        (Some(o), Some(k)) if o >= k
    );
    if !fresh {
        std::fs::create_dir_all(linux_dir()).map_err(|e| format!("{}: {e}", out.display()))?;
        // Built beside and renamed, so that an interrupted build leaves no file that looks
        // fresh.
        let tmp = out.with_extension("tmp");
        super::pvh::build(&kernel.vmlinuz, &tmp)?;
        std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(out)
}

/// msr.ko in the kernel's module tree: the guest runs the same kernel, so the host image's
/// copy loads there.
const MSR_MODULE: &str = "kernel/arch/x86/kernel/msr.ko";

/// Compiles the C files of `tests/linux/guest/` (the guest test program) with the host's
/// gcc, statically (glibc's libc.a), so that the guest's busybox initramfs needs no
/// libraries. Returns the program's path (`<target>/linux/rhax-guest-test`). Built every time:
/// it takes under a second.
fn guest_test_program() -> crate::Result<PathBuf> {
    let dir = crate::workspace_root().join("tests/linux/guest");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(format!("no C files in {}", dir.display()));
    }
    let out = linux_dir().join("rhax-guest-test");
    let gcc = find_program("gcc").ok_or("gcc missing: it builds the guest test program")?;
    std::fs::create_dir_all(linux_dir()).map_err(|e| format!("{}: {e}", out.display()))?;
    run_tool(
        Command::new(gcc)
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&out)
            .args(&sources),
    )?;
    Ok(out)
}

/// Copies the QEMU tree to `/qemu`, every shared library its programs load (the `ldd`
/// closure, at the same absolute paths as on this machine) and Debian's SeaBIOS to
/// `/qemu/share/seabios/bios.bin`.
fn add_qemu(a: &mut Archive, tree: &Path) -> crate::Result {
    let bin = tree.join("bin/qemu-system-x86_64");
    if !bin.is_file() {
        return Err(format!("--qemu: no {}", bin.display()));
    }
    a.dir("qemu");
    let mut programs = Vec::new();
    a.tree(tree, "qemu", &mut |p| {
        if p.parent().is_some_and(|d| d.ends_with("bin")) {
            programs.push(p.to_path_buf());
        }
    })?;
    let mut libs = std::collections::BTreeSet::new();
    for p in &programs {
        for lib in ldd(p)? {
            libs.insert(lib);
        }
    }
    for lib in libs {
        let data = read(&lib)?; // follows the soname symlink to the real file
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        a.parents(&rel);
        a.file(&rel, 0o755, data);
    }
    let seabios = debian_package("seabios")?.join("usr/share/seabios/bios.bin");
    a.dir("qemu/share");
    a.dir("qemu/share/seabios");
    a.file("qemu/share/seabios/bios.bin", 0o644, read(&seabios)?);
    Ok(())
}

/// The absolute paths of the shared libraries `program` loads, the dynamic loader included.
fn ldd(program: &Path) -> crate::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static program ("not a dynamic executable") needs nothing.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic") || err.contains("not a dynamic") {
            return Ok(Vec::new());
        }
        return Err(format!("ldd {}: {}", program.display(), err.trim()));
    }
    if let Some(l) = text.lines().find(|l| l.contains("not found")) {
        return Err(format!("{}: {}", program.display(), l.trim()));
    }
    Ok(parse_ldd(&text))
}

/// Parses `ldd` output: `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; vDSO lines have no path.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, r)| r);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Disk size: a multiple of 16 heads x 63 sectors x 512 bytes, so that Bochs derives the
/// CHS geometry of the flat image by itself.
const CYLINDER: u64 = 16 * 63 * 512;

/// Writes the boot disk: an unpartitioned FAT volume ("superfloppy") whose boot sector is
/// syslinux's, holding `vmlinuz`, `initrd.img` and `syslinux.cfg`.
pub fn disk(path: &Path, vmlinuz: &Path, initrd: &Path, append: &str) -> crate::Result {
    let payload = std::fs::metadata(vmlinuz)
        .and_then(|k| std::fs::metadata(initrd).map(|i| k.len() + i.len()))
        .map_err(|e| format!("boot files: {e}"))?;
    // Room for the FAT, syslinux's ldlinux.sys/.c32 (~150 KiB) and slack.
    let size = (payload + (4 << 20)).div_ceil(CYLINDER) * CYLINDER;
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(size)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(f);
    let mkfs = find_program("mkfs.vfat").ok_or("mkfs.vfat missing")?;
    run_tool(Command::new(mkfs).args(["-n", "RHAX"]).arg(path))?;
    run_tool(Command::new("syslinux").arg("--install").arg(path))?;
    let template_path = crate::workspace_root().join("tests/linux/syslinux.cfg");
    let cfg = std::fs::read_to_string(&template_path)
        .map_err(|e| format!("{}: {e}", template_path.display()))?
        .replace("$LX_APPEND", append);
    let cfg_path = path.with_extension("cfg");
    std::fs::write(&cfg_path, cfg).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    for (src, name) in [
        (vmlinuz, "::vmlinuz"),
        (initrd, "::initrd.img"),
        (cfg_path.as_path(), "::syslinux.cfg"),
    ] {
        run_tool(
            Command::new("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(path)
                .arg(src)
                .arg(name),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
