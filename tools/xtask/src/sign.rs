//! `cargo xtask sign`: test-signs `rhax.sys` (release and debug) with a self-made
//! code-signing certificate and verifies the result.
//!
//! 64-bit Windows loads only signed kernel drivers; with test signing on (`bcdedit /set
//! testsigning on`, Secure Boot off) a driver signed by any certificate the machine trusts
//! loads. This makes that signature on Linux: `openssl req -x509` makes a self-signed RSA
//! certificate with extendedKeyUsage codeSigning (cached under `target/windows/testsign/`, made
//! again when it expires within a day), `osslsigncode sign -h sha256` signs (Authenticode,
//! PKCS#7 in the certificate table), then `osslsigncode verify -CAfile` checks the signature
//! chain and the image digest, and the PE reader checks that the checksum of the signed file
//! is valid (the loader checks it) and that the certificate table ends the file.
//!
//! Outputs, next to each `rhax.sys`: `rhax-testsigned.sys` and `rhax-test.cer` (DER, to import
//! into the test machine's Trusted Root and Trusted Publishers stores: inf/README.md).
//!
//! Not verified here: that Windows accepts the signature (nothing has run on real Windows),
//! and nothing about production signing (attestation signing through Microsoft's Partner
//! Center with an EV certificate, the only way to load with Secure Boot on). No timestamp is
//! added (no network in CI): the test signature is valid while the certificate is (10 years).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pe::{self, Pe};
use crate::sys::{self, Profile};

/// The signed image's file name.
pub const SIGNED_NAME: &str = "rhax-testsigned.sys";
/// The certificate to import on the test machine (DER).
pub const CER_NAME: &str = "rhax-test.cer";
/// Debian packages of the tools (`apt-get install -y` as root when missing).
pub const APT_PACKAGES: [&str; 2] = ["osslsigncode", "openssl"];

/// The test certificate's files.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// Private key (PEM, unencrypted: a throw-away test key).
    pub key: PathBuf,
    /// Certificate (PEM).
    pub crt: PathBuf,
    /// Certificate (DER), for Windows' certificate import.
    pub cer: PathBuf,
}

/// Makes sure `openssl` and `osslsigncode` exist: installs them when missing.
pub fn ensure_tools() -> crate::Result {
    crate::apt::ensure(&["osslsigncode", "openssl"], &APT_PACKAGES)
}

/// Runs `cmd`, named by its command line in messages ([`crate::run_captured`]).
fn run(cmd: &mut Command) -> crate::Result<String> {
    let what = format!("{cmd:?}");
    crate::run_captured(cmd, &what)
}

/// The cached test certificate, made when missing or expiring within a day.
pub fn test_certificate() -> crate::Result<TestCert> {
    ensure_tools()?;
    let dir = sys::driver_target_dir().join("testsign");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = TestCert {
        key: dir.join("rhax-test.key"),
        crt: dir.join("rhax-test.crt"),
        cer: dir.join(CER_NAME),
    };
    let fresh = cert.key.exists()
        && cert.cer.exists()
        && Command::new("openssl")
            .args(["x509", "-noout", "-checkend", "86400", "-in"])
            .arg(&cert.crt)
            .output()
            .is_ok_and(|o| o.status.success());
    if fresh {
        return Ok(cert);
    }
    eprintln!(
        "xtask: making the test-signing certificate in {}",
        dir.display()
    );
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:3072", "-sha256", "-nodes"])
        .args([
            "-days",
            "3650",
            "-subj",
            "/CN=rhax test signing (untrusted test certificate)",
        ])
        .args(["-addext", "extendedKeyUsage=codeSigning"])
        .args(["-addext", "keyUsage=critical,digitalSignature"])
        .arg("-keyout")
        .arg(&cert.key)
        .arg("-out")
        .arg(&cert.crt))?;
    run(Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&cert.crt)
        .arg("-out")
        .arg(&cert.cer))?;
    Ok(cert)
}

/// Checks a signed image with the PE reader: valid checksum, a certificate table that ends the
/// file (Authenticode: "the attribute certificate table ... at the end of the image"), and
/// the rest of the headers as in the unsigned image. Returns the evidence line.
pub fn check_signed(unsigned: &[u8], signed: &[u8]) -> crate::Result<String> {
    let a = Pe::parse(unsigned)?;
    let b = Pe::parse(signed)?;
    let (off, size) = b.directory(pe::DIR_SECURITY);
    if off == 0 || size == 0 {
        return Err("the signed image has no certificate table".into());
    }
    if off as usize + size as usize != signed.len() || off % 8 != 0 {
        return Err(format!(
            "certificate table at {off:#x}+{size:#x} does not end the {}-byte file 8-aligned",
            signed.len()
        ));
    }
    let computed = b.computed_checksum();
    if b.header.checksum != computed {
        return Err(format!(
            "signed image checksum {:#010x}, computed {computed:#010x}",
            b.header.checksum
        ));
    }
    let mut same = a.header.clone();
    same.checksum = b.header.checksum;
    same.directories[pe::DIR_SECURITY] = (off, size);
    if same != b.header || a.sections != b.sections {
        return Err("signing changed headers other than the checksum and certificate table".into());
    }
    Ok(format!(
        "{} bytes, certificate table {size} B at {off:#x}, checksum {:#010x} valid",
        signed.len(),
        b.header.checksum
    ))
}

/// The image digest in the signature and the one osslsigncode computed over the file must
/// be there and equal (`Current message digest` / `Calculated message digest`); returns it.
pub fn image_digests(verify: &str) -> crate::Result<String> {
    let find = |label: &str| {
        verify
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("osslsigncode verify printed no {label}"))
    };
    let (current, calculated) = (
        find("Current message digest")?,
        find("Calculated message digest")?,
    );
    if current == calculated {
        Ok(format!(
            "{} (SHA-256, as signed = as computed)",
            &current[..current.len().min(16)]
        ))
    } else {
        Err(format!(
            "the signed digest {current} differs from the file's {calculated}"
        ))
    }
}

/// Signs `sys` into `rhax-testsigned.sys` next to it, copies the `.cer` there, and verifies.
pub fn sign_and_verify(sys: &Path) -> crate::Result<PathBuf> {
    let cert = test_certificate()?;
    let dir = sys.parent().ok_or("rhax.sys has no directory")?;
    let signed = dir.join(SIGNED_NAME);
    // osslsigncode will not overwrite its output.
    let _ = std::fs::remove_file(&signed);
    run(Command::new("osslsigncode")
        .args(["sign", "-h", "sha256", "-n", "rhax (test signed)"])
        .arg("-certs")
        .arg(&cert.crt)
        .arg("-key")
        .arg(&cert.key)
        .arg("-in")
        .arg(sys)
        .arg("-out")
        .arg(&signed))?;
    let verify = run(Command::new("osslsigncode")
        .arg("verify")
        .arg("-CAfile")
        .arg(&cert.crt)
        .arg("-in")
        .arg(&signed))?;
    if !verify.contains("Signature verification: ok") {
        return Err(format!(
            "osslsigncode verify {}: no \"Signature verification: ok\":\n{verify}",
            signed.display()
        ));
    }
    let digests = image_digests(&verify).map_err(|e| format!("{}: {e}", signed.display()))?;
    let unsigned = std::fs::read(sys).map_err(|e| format!("{}: {e}", sys.display()))?;
    let signed_bytes = std::fs::read(&signed).map_err(|e| format!("{}: {e}", signed.display()))?;
    let line =
        check_signed(&unsigned, &signed_bytes).map_err(|e| format!("{}: {e}", signed.display()))?;
    std::fs::copy(&cert.cer, dir.join(CER_NAME))
        .map_err(|e| format!("{}: {e}", dir.join(CER_NAME).display()))?;
    println!(
        "sign: {}: {line}; osslsigncode verify -CAfile: signature ok, image digest {digests}",
        signed.display()
    );
    Ok(signed)
}

/// `cargo xtask sign`: builds both profiles and signs each.
pub fn main(_args: &[String]) -> crate::Result {
    for profile in [Profile::Release, Profile::Debug] {
        let sys = sys::build(profile)?;
        sign_and_verify(&sys)?;
    }
    let cert = test_certificate()?;
    println!(
        "sign: test certificate {} (import it into Trusted Root and Trusted Publishers on the \
         test machine: inf/README.md)",
        cert.cer.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_signed;
    use crate::pe::synthetic::{image, Spec};

    /// What osslsigncode does to the file: an 8-aligned certificate table appended, the
    /// directory entry set, the checksum recomputed.
    fn fake_sign(d: &[u8], fix_checksum: bool) -> Vec<u8> {
        let mut s = d.to_vec();
        let off = s.len() as u32;
        s.extend_from_slice(&[0x5a; 0x40]);
        let opt = 0x58;
        s[opt + 112 + 4 * 8..opt + 116 + 4 * 8].copy_from_slice(&off.to_le_bytes());
        s[opt + 116 + 4 * 8..opt + 120 + 4 * 8].copy_from_slice(&0x40u32.to_le_bytes());
        if fix_checksum {
            let sum = crate::pe::checksum(&s, opt + 64);
            s[opt + 64..opt + 68].copy_from_slice(&sum.to_le_bytes());
        }
        s
    }

    #[test]
    fn compares_the_digests_osslsigncode_prints() {
        let ok = "Current message digest    : 96D75B30B741E022 \nCalculated message digest : 96D75B30B741E022 \n";
        assert!(super::image_digests(ok).is_ok());
        let bad = ok.replace(
            "Calculated message digest : 96D7",
            "Calculated message digest : 06D7",
        );
        assert!(super::image_digests(&bad).unwrap_err().contains("differs"));
        assert!(super::image_digests("Signature verification: ok").is_err());
    }

    #[test]
    fn a_signed_image_keeps_a_valid_checksum_and_its_headers() {
        let d = image(&Spec::default());
        assert!(check_signed(&d, &fake_sign(&d, true)).is_ok());
        let e = check_signed(&d, &fake_sign(&d, false)).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        assert!(check_signed(&d, &d)
            .unwrap_err()
            .contains("no certificate table"));
        let mut other = fake_sign(&d, true);
        other[0x58 + 70] ^= 0x80;
        let sum = crate::pe::checksum(&other, 0x58 + 64);
        other[0x58 + 64..0x58 + 68].copy_from_slice(&sum.to_le_bytes());
        assert!(check_signed(&d, &other)
            .unwrap_err()
            .contains("changed headers"));
    }
}
