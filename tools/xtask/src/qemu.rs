//! `cargo xtask qemu [--rebuild] [--jobs N]`: QEMU 7.2 from Debian 12's own source package,
//! built with `--enable-hax` for `x86_64-softmmu` only and as little else as possible (no TCG,
//! no KVM, no tools, no UI, no network back-ends), installed with the firmware `-kernel` and
//! SeaBIOS need. The result is the real HAX client rhax's Linux shell is tested with.
//!
//! Layout under `target/qemu/`:
//! - `src/`: the `.dsc`, the tarballs and the unpacked tree (Debian's patches applied);
//! - `build/`: the meson/ninja build; `build.log`: ninja's output;
//! - `debs/`: `qemu-system-data` and `seabios`, downloaded and unpacked;
//! - `install/`: a root-relative tree to copy into a Linux image as it is:
//!   `usr/bin/qemu-system-x86_64` (stripped), `usr/share/qemu/` (firmware; QEMU finds it
//!   relative to its binary, so the tree works wherever it is copied), `rhax-qemu-libs.txt`
//!   (the binary's shared-library closure, one absolute path a line, from `ldd`) and
//!   `rhax-qemu.stamp` (the cache key).
//!
//! The cache key is Debian's version of the source (the candidate version of the arch-all
//! `qemu-system-data`, built from the same source with the same version, which apt knows
//! without `deb-src` entries), SeaBIOS's version, the configure arguments and the device list
//! (`tests/linux/qemu/rhax-devices.mak`). A run whose key matches the stamp prints "cached"
//! and only re-runs the checks.
//!
//! The dfsg tarball lacks the firmware blobs (edk2 and the rest) that `pc-bios/meson.build`
//! links into the build: Debian's own patch `skip-meson-pc-bios.diff`, applied by
//! `dpkg-source -x`, removes `subdir('pc-bios')` from the build, so nothing needs stubbing;
//! the firmware comes from Debian's binary packages instead (`tests/linux/qemu/README.md`).
//! One change to the source is ours: `qemu/sipi.rs` (HAX with more than one vCPU, broken by
//! the 7.2.22 stable update).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

mod abi;
mod debsrc;
mod sipi;
mod smoke;

/// Debian packages the configuration needs (found by trying: see `tests/linux/qemu/README.md`).
const BUILD_DEPS: &[&str] = &[
    "dpkg-dev",        // dpkg-source (unpacking and patching the source package)
    "xz-utils",        // the .tar.xz tarballs
    "gcc",             // the compiler
    "libc6-dev",       // its headers
    "python3",         // configure and meson's code generators
    "meson",           // Debian 12's 1.0.1 (QEMU 7.2 needs >= 0.61.3)
    "ninja-build",     // the build
    "pkgconf",         // pkg-config for the libraries below
    "libglib2.0-dev",  // required by QEMU
    "libpixman-1-dev", // required by softmmu targets
    "libfdt-dev",      // x86_64-softmmu has TARGET_NEED_FDT=y (for microvm)
];

/// The configure arguments (after `--prefix`): one target, HAX, nothing else that can be left
/// out. `--without-default-features` turns every `auto` feature off; `--without-default-devices`
/// with our device list builds the `pc` machine and only what it selects.
const CONFIGURE: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--without-default-devices",
    "--with-devices-x86_64=rhax",
    "--enable-hax",
    "--disable-tcg",
    "--disable-kvm",
    "--enable-fdt=system",
    "--disable-docs",
    "--disable-tools",
    "--disable-guest-agent",
    "--disable-user",
    "--audio-drv-list=",
    "--disable-install-blobs",
    "--disable-debug-info",
    "--with-git-submodules=ignore",
];

/// The device list, copied to `configs/devices/x86_64-softmmu/rhax.mak`.
const DEVICES: &str = include_str!("../../../tests/linux/qemu/rhax-devices.mak");

/// Firmware installed into `usr/share/qemu`: (file, Debian package, path in the package).
const FIRMWARE: &[(&str, &str, &str)] = &[
    // SeaBIOS, the `pc` machine's BIOS, and the std VGA's option ROM.
    (
        "bios-256k.bin",
        "seabios",
        "usr/share/seabios/bios-256k.bin",
    ),
    (
        "vgabios-stdvga.bin",
        "seabios",
        "usr/share/seabios/vgabios-stdvga.bin",
    ),
    // `-kernel`/`-initrd` (fw_cfg DMA and legacy), multiboot and PVH kernels: built from
    // pc-bios/optionrom with an i386 compiler, which this build does not assume.
    (
        "linuxboot_dma.bin",
        "qemu-system-data",
        "usr/share/qemu/linuxboot_dma.bin",
    ),
    (
        "linuxboot.bin",
        "qemu-system-data",
        "usr/share/qemu/linuxboot.bin",
    ),
    (
        "multiboot_dma.bin",
        "qemu-system-data",
        "usr/share/qemu/multiboot_dma.bin",
    ),
    ("pvh.bin", "qemu-system-data", "usr/share/qemu/pvh.bin"),
    // The TPR-patching option ROM the `apic` device loads (hw/i386/kvmvapic.c).
    (
        "kvmvapic.bin",
        "qemu-system-data",
        "usr/share/qemu/kvmvapic.bin",
    ),
];

const BINARY: &str = "qemu-system-x86_64";
const STAMP: &str = "rhax-qemu.stamp";
const LIBS: &str = "rhax-qemu-libs.txt";

/// The installed QEMU.
pub struct Installed {
    /// Debian's source version (`1:7.2+dfsg-7+deb12u18`).
    pub version: String,
    /// The install tree (`target/qemu/install`): copy its `usr/` into an image.
    pub root: PathBuf,
    /// `root/usr/bin/qemu-system-x86_64`.
    pub binary: PathBuf,
    /// The binary's shared libraries (absolute host paths), the dynamic loader included.
    pub libs: Vec<PathBuf>,
}

struct Paths {
    top: PathBuf,
    src: PathBuf,
    build: PathBuf,
    debs: PathBuf,
    install: PathBuf,
}

impl Paths {
    fn new() -> Self {
        let top = crate::target_dir().join("qemu");
        Self {
            src: top.join("src"),
            build: top.join("build"),
            debs: top.join("debs"),
            install: top.join("install"),
            top,
        }
    }
    fn binary(&self) -> PathBuf {
        self.install.join("usr/bin").join(BINARY)
    }
    fn datadir(&self) -> PathBuf {
        self.install.join("usr/share/qemu")
    }
}

/// `cargo xtask qemu`.
pub fn main(args: &[String]) -> Result {
    let mut rebuild = false;
    let mut jobs = 2;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rebuild" => rebuild = true,
            "--jobs" => {
                jobs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--jobs needs a positive number")?;
            }
            other => return Err(format!("qemu: unknown argument {other:?}")),
        }
    }
    let q = ensure(rebuild, jobs)?;
    println!("qemu: {} {}", BINARY, q.version);
    println!("qemu: binary {}", q.binary.display());
    for l in &q.libs {
        println!("qemu: lib {}", l.display());
    }
    println!("qemu: install tree {}", q.root.display());
    Ok(())
}

/// Builds QEMU unless the cached build matches (`rebuild` forces it), checks it, and
/// returns where it is. `jobs`: ninja's parallelism (the build runs under `nice -n 10`).
pub fn ensure(rebuild: bool, jobs: u32) -> Result<Installed> {
    let start = Instant::now();
    let p = Paths::new();
    let version = candidate("qemu-system-data")?;
    // QEMU 8.2 removed the HAX accelerator; Debian 12 (bookworm) has 7.2.
    if !version.starts_with("1:7.2") {
        return Err(format!(
            "apt offers QEMU {version}; this needs Debian 12's QEMU 7.2 (HAX was removed in 8.2)"
        ));
    }
    let seabios = candidate("seabios")?;
    let key = cache_key(&version, &seabios);
    let cached = !rebuild
        && p.binary().is_file()
        && fs::read_to_string(p.install.join(STAMP)).is_ok_and(|s| s == key);
    if cached {
        eprintln!(
            "xtask: qemu: cached: QEMU {version} (SeaBIOS {seabios}) in {}",
            p.install.display()
        );
    } else {
        build(&p, &version, &seabios, jobs)?;
        fs::write(p.install.join(STAMP), &key).map_err(|e| format!("stamp: {e}"))?;
    }
    let libs = check(&p)?;
    eprintln!(
        "xtask: qemu: {} in {:.1} s",
        if cached { "cached run" } else { "built" },
        start.elapsed().as_secs_f64()
    );
    Ok(Installed {
        version,
        root: p.install.clone(),
        binary: p.binary(),
        libs,
    })
}

fn cache_key(version: &str, seabios: &str) -> String {
    format!(
        "qemu {version}\nseabios {seabios}\n{}\nconfigure {}\nfirmware {}\ndevices\n{DEVICES}",
        sipi::KEY,
        CONFIGURE.join(" "),
        FIRMWARE.iter().map(|f| f.0).collect::<Vec<_>>().join(" ")
    )
}

/// apt's candidate version of a binary package (`apt-cache policy`), after `apt-get update`
/// when apt knows none (a fresh machine's lists may be empty).
fn candidate(package: &str) -> Result<String> {
    let ask = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["policy", package])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:").map(str::trim))
            .filter(|v| !v.is_empty() && *v != "(none)")
            .map(str::to_string)
    };
    if let Some(v) = ask() {
        return Ok(v);
    }
    apt_get(&["update", "-qq"], None)?;
    ask().ok_or_else(|| format!("apt knows no version of {package} (is this Debian 12?)"))
}

/// Runs `apt-get` (through `sudo -n` when not root) in `cwd`.
fn apt_get(args: &[&str], cwd: Option<&Path>) -> Result {
    let mut c = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    };
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let status = c.status().map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(c: &mut Command, what: &str) -> Result {
    let status = c.status().map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// The build from scratch: dependencies, source, configure, ninja, install, firmware.
fn build(p: &Paths, version: &str, seabios: &str, jobs: u32) -> Result {
    let timed = |what: &str, t: Instant| {
        eprintln!(
            "xtask: qemu: {what} took {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };
    eprintln!("xtask: qemu: building QEMU {version} (not cached)");
    let t = Instant::now();
    install_missing(BUILD_DEPS)?;
    timed("build dependencies", t);

    let t = Instant::now();
    enable_deb_src(version)?;
    timed("deb-src entries", t);

    // Source: exactly the version the key names.
    let t = Instant::now();
    let _ = fs::remove_dir_all(&p.src);
    fs::create_dir_all(&p.src).map_err(|e| format!("{}: {e}", p.src.display()))?;
    apt_get(
        &[
            "source",
            "-q",
            "--download-only",
            &format!("qemu={version}"),
        ],
        Some(&p.src),
    )?;
    timed("download (apt-get source)", t);
    let t = Instant::now();
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    let tree = p.src.join("qemu");
    run(
        Command::new("dpkg-source")
            .args(["-q", "-x", &format!("qemu_{no_epoch}.dsc")])
            .arg(&tree)
            .current_dir(&p.src),
        "dpkg-source -x",
    )?;
    let devices = tree.join("configs/devices/x86_64-softmmu/rhax.mak");
    fs::write(&devices, DEVICES).map_err(|e| format!("{}: {e}", devices.display()))?;
    let read = |rel: &str| fs::read_to_string(tree.join(rel)).map_err(|e| format!("{rel}: {e}"));
    let hax_all = "target/i386/hax/hax-all.c";
    if let Some(fixed) = sipi::fix(&read(hax_all)?, &read("hw/intc/apic.c")?)? {
        fs::write(tree.join(hax_all), fixed).map_err(|e| format!("{hax_all}: {e}"))?;
        eprintln!("xtask: qemu: {hax_all}: HAX's SIPI block resets the SIPI bit (qemu/sipi.rs)");
    }
    timed("unpack and patch (dpkg-source -x)", t);

    let t = Instant::now();
    let _ = fs::remove_dir_all(&p.build);
    fs::create_dir_all(&p.build).map_err(|e| format!("{}: {e}", p.build.display()))?;
    let log = p.top.join("configure.log");
    let status = Command::new("nice")
        .args(["-n", "10"])
        .arg(tree.join("configure"))
        .arg("--prefix=/usr")
        .args(CONFIGURE)
        .current_dir(&p.build)
        .stdout(file(&log)?)
        .stderr(file(&log)?)
        .status()
        .map_err(|e| format!("cannot run configure: {e}"))?;
    if !status.success() {
        return Err(format!("configure failed ({status}):\n{}", tail(&log, 40)));
    }
    timed("configure", t);

    let t = Instant::now();
    ninja(p, jobs)?;
    timed(&format!("build (ninja -j{jobs}, nice -n 10)"), t);

    let t = Instant::now();
    let _ = fs::remove_dir_all(&p.install);
    let bin = p.binary();
    fs::create_dir_all(bin.parent().unwrap_or(&p.install))
        .map_err(|e| format!("{}: {e}", p.install.display()))?;
    // Only the binary: `meson install` would build every default target (qtest, ...) first.
    fs::copy(p.build.join(BINARY), &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    run(Command::new("strip").arg(&bin), "strip")?;
    firmware(p, version, seabios)?;
    timed("install (binary and firmware)", t);
    Ok(())
}

fn file(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The last `n` lines of a log.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `nice -n 10 ninja -jN qemu-system-x86_64`, output to `build.log`, a progress line a minute.
fn ninja(p: &Paths, jobs: u32) -> Result {
    let log = p.top.join("build.log");
    let _ = fs::remove_file(&log);
    let mut child = Command::new("nice")
        .args(["-n", "10", "ninja", &format!("-j{jobs}"), BINARY])
        .current_dir(&p.build)
        .stdin(Stdio::null())
        .stdout(file(&log)?)
        .stderr(file(&log)?)
        .spawn()
        .map_err(|e| format!("cannot run ninja: {e}"))?;
    let start = Instant::now();
    let mut next = Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {
                if start.elapsed() >= next {
                    next += Duration::from_secs(60);
                    let last = tail(&log, 1);
                    let progress = last.split(']').next().unwrap_or("").trim_start_matches('[');
                    eprintln!(
                        "xtask: qemu: building, {:.0} s, step {progress}",
                        start.elapsed().as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(format!("waiting for ninja: {e}")),
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "ninja failed ({status}); {}:\n{}",
            log.display(),
            tail(&log, 40)
        ))
    }
}

/// Installs the packages of `pkgs` dpkg does not list as installed.
fn install_missing(pkgs: &[&str]) -> Result {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\\n"])
        .args(pkgs)
        .output()
        .map_err(|e| format!("cannot run dpkg-query: {e}"))?;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !listed.lines().any(|l| {
                let mut w = l.split_whitespace();
                // `libfoo:amd64 ii`: the name may carry the architecture.
                w.next().is_some_and(|n| n.split(':').next() == Some(p))
                    && w.next().is_some_and(|s| s.starts_with("ii"))
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::apt::install(&missing)
}

/// Makes `apt-get source qemu={version}` possible: our `deb-src` file (see `debsrc.rs`) and
/// `apt-get update` when apt does not know that source version yet.
fn enable_deb_src(version: &str) -> Result {
    let knows = || {
        Command::new("apt-cache")
            .args(["showsrc", "--only-source", "qemu"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == format!("Version: {version}"))
            })
    };
    if knows() {
        return Ok(());
    }
    let mut files = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        files.push(("sources.list".to_string(), t));
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path() == Path::new(debsrc::OUR_FILE) {
                continue;
            }
            if let Ok(t) = fs::read_to_string(e.path()) {
                files.push((name, t));
            }
        }
    }
    files.sort();
    let text = debsrc::deb_src_file(&files)
        .ok_or("no Debian `deb` entry in /etc/apt/sources.list{,.d/} to mirror as `deb-src`")?;
    if fs::read_to_string(debsrc::OUR_FILE).ok().as_deref() != Some(text.as_str()) {
        eprintln!("xtask: qemu: writing {}", debsrc::OUR_FILE);
        fs::write(debsrc::OUR_FILE, &text).map_err(|e| {
            format!(
                "cannot write {} ({e}); as root, write:\n{text}",
                debsrc::OUR_FILE
            )
        })?;
    }
    apt_get(&["update", "-qq"], None)?;
    if knows() {
        Ok(())
    } else {
        Err(format!(
            "apt has no source package qemu {version} after enabling deb-src ({})",
            debsrc::OUR_FILE
        ))
    }
}

/// Firmware from Debian's binary packages: `qemu-system-data` of QEMU's version and `seabios`.
fn firmware(p: &Paths, version: &str, seabios: &str) -> Result {
    let _ = fs::remove_dir_all(&p.debs);
    fs::create_dir_all(&p.debs).map_err(|e| format!("{}: {e}", p.debs.display()))?;
    let pkgs = [("qemu-system-data", version), ("seabios", seabios)];
    let specs: Vec<String> = pkgs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let mut args = vec!["download", "-q"];
    args.extend(specs.iter().map(String::as_str));
    apt_get(&args, Some(&p.debs))?;
    for (name, _) in pkgs {
        let deb = fs::read_dir(&p.debs)
            .map_err(|e| format!("{}: {e}", p.debs.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| format!("apt-get download left no {name} .deb"))?;
        run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(p.debs.join(name)),
            "dpkg-deb -x",
        )?;
    }
    let data = p.datadir();
    fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    for (file, pkg, path) in FIRMWARE {
        let from = p.debs.join(pkg).join(path);
        // The listed paths are regular files in Debian 12's packages (fs::copy would follow
        // an absolute symbolic link to the host's file, not the package's).
        fs::copy(&from, data.join(file)).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    Ok(())
}

/// What can be checked without `/dev/HAX`: the accelerators, HAX's own failure message, the
/// firmware, the ABI; returns the shared-library closure (also written to `rhax-qemu-libs.txt`).
fn check(p: &Paths) -> Result<Vec<PathBuf>> {
    let bin = p.binary();
    let accel = Command::new(&bin)
        .args(["-accel", "help"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let accels: Vec<String> = String::from_utf8_lossy(&accel.stdout)
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect();
    if accels != ["hax"] {
        return Err(format!(
            "`-accel help` lists {accels:?}; expected exactly [\"hax\"] (no tcg, no kvm)"
        ));
    }
    eprintln!("xtask: qemu: check: -accel help lists only hax");

    for (file, _, _) in FIRMWARE {
        if !p.datadir().join(file).is_file() {
            return Err(format!(
                "firmware {file} missing in {}",
                p.datadir().display()
            ));
        }
    }

    if Path::new("/dev/HAX").exists() {
        eprintln!("xtask: qemu: check: /dev/HAX exists here; the no-HAX message is not checked");
    } else {
        let out = qemu_no_hax(p)?;
        // QEMU 7.2's hax_mod_open() prints its message, then passes the -1 from open() to
        // qemu_set_cloexec(), which asserts (util/oslib-posix.c): QEMU aborts before its
        // "No accelerator found." (hax-all.c) can be printed. Either ending is accepted.
        let ends = [
            "qemu_set_cloexec: Assertion `f != -1' failed.",
            "No accelerator found.",
        ];
        if !out.contains("Failed to open the hax module") || !ends.iter().any(|e| out.contains(e)) {
            return Err(format!(
                "QEMU without /dev/HAX did not fail with HAX's messages:\n{out}"
            ));
        }
        eprintln!("xtask: qemu: check: without /dev/HAX QEMU says:");
        for l in out.lines() {
            eprintln!("xtask: qemu:   | {l}");
        }
    }

    let tree = p.src.join("qemu");
    if tree.is_dir() {
        let probe = crate::workspace_root().join("tests/linux/qemu/hax-abi-probe.c");
        let (rows, out) = abi::check(&tree, &probe, &p.top)?;
        let same = rows.iter().filter(|r| r.api == Some(r.qemu)).count();
        eprintln!(
            "xtask: qemu: check: {same} of {} HAX ioctls of QEMU's POSIX backend have rhax-api's Linux code",
            rows.len()
        );
        for r in rows.iter().filter(|r| r.accepted.is_some()) {
            eprintln!(
                "xtask: qemu:   {} differs ({:#010x} vs {:#010x}): {}",
                r.name,
                r.qemu,
                r.api.unwrap_or(0),
                r.accepted.unwrap_or("")
            );
        }
        let sizes: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("size "))
            .collect();
        eprintln!("xtask: qemu:   struct sizes: {}", sizes.join(", "));
    } else {
        eprintln!("xtask: qemu: check: no source tree; ABI probe skipped");
    }

    let fake = crate::workspace_root().join("tests/linux/qemu/fakehax.c");
    smoke::check(&bin, &p.top, &fake)?;

    let libs = closure(&bin)?;
    let list: String = libs.iter().map(|l| format!("{}\n", l.display())).collect();
    fs::write(p.install.join(LIBS), list).map_err(|e| format!("{LIBS}: {e}"))?;
    let size = fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let lib_bytes: u64 = libs
        .iter()
        .filter_map(|l| fs::metadata(l).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "xtask: qemu: {} {:.1} MiB stripped, {} shared libraries {:.1} MiB",
        BINARY,
        size as f64 / (1 << 20) as f64,
        libs.len(),
        lib_bytes as f64 / (1 << 20) as f64
    );
    Ok(libs)
}

/// QEMU asked for HAX where there is none: its output (stdout and stderr). It must fail fast.
fn qemu_no_hax(p: &Paths) -> Result<String> {
    let mut c = Command::new(p.binary());
    c.args([
        "-accel",
        "hax",
        "-machine",
        "pc",
        "-m",
        "64",
        "-nographic",
        "-nodefaults",
    ]);
    let (status, text) = run_limited(&mut c, &p.top.join("no-hax.log"), Duration::from_secs(20))?;
    match status {
        None => Err(format!("QEMU -accel hax hung without /dev/HAX:\n{text}")),
        Some(s) if s.success() => Err(format!(
            "QEMU -accel hax succeeded without /dev/HAX:\n{text}"
        )),
        Some(_) => Ok(text),
    }
}

/// Runs `c` (stdin closed, stdout and stderr into `log`) for at most `limit`; returns its
/// status (`None`: killed at the limit) and its output. A death by signal is a status too.
fn run_limited(
    c: &mut Command,
    log: &Path,
    limit: Duration,
) -> Result<(Option<std::process::ExitStatus>, String)> {
    let _ = fs::remove_file(log);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(file(log)?)
        .stderr(file(log)?)
        .spawn()
        .map_err(|e| format!("cannot run {c:?}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {c:?}: {e}")),
        }
    };
    Ok((status, fs::read_to_string(log).unwrap_or_default()))
}

/// The binary's shared libraries from `ldd` (`name => /path (addr)` and the loader's
/// `/path (addr)`), with symbolic links as `ldd` names them (the image needs those names).
fn closure(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let libs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if libs.is_empty() {
        return Err(format!(
            "ldd found no library for {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_changes_with_every_input() {
        let base = cache_key("1:7.2+dfsg-7+deb12u18", "1.16.2-1");
        assert_ne!(base, cache_key("1:7.2+dfsg-7+deb12u19", "1.16.2-1"));
        assert_ne!(base, cache_key("1:7.2+dfsg-7+deb12u18", "1.16.3-1"));
        assert!(base.contains("--enable-hax") && base.contains("--disable-tcg"));
        assert!(
            base.contains("CONFIG_I440FX=y"),
            "the device list is part of the key"
        );
    }

    #[test]
    fn the_device_list_names_the_pc_machine() {
        let enabled: Vec<&str> = DEVICES
            .lines()
            .filter(|l| !l.starts_with('#') && l.ends_with("=y"))
            .collect();
        assert!(enabled.contains(&"CONFIG_I440FX=y"), "{enabled:?}");
    }
}
