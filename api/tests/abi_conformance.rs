//! ABI conformance: the layouts and IOCTL codes computed from the Rust definitions must equal
//! the reference tables measured from HAXM 7.8.0's own headers, byte for byte.
//!
//! The references are copies kept in the repository (`tests/abi/`), so this test needs nothing
//! outside it. The examples `abi-layout` and `abi-ioctls` print exactly the strings checked
//! here (they only call the same `rhax_api::conformance` functions).

use rhax_api::conformance::{ioctl_rows, layout_rows};
use rhax_api::ioctl::IOCTLS;
use rhax_api::Platform;

const LAYOUTS: &str = include_str!("../../tests/abi/haxm-layouts.tsv");
const IOCTLS_TSV: &str = include_str!("../../tests/abi/haxm-ioctls.tsv");

/// Panics with a line-by-line report of every difference.
fn assert_same_table(what: &str, actual: &str, expected: &str) {
    if actual == expected {
        return;
    }
    let a: Vec<&str> = actual.lines().collect();
    let e: Vec<&str> = expected.lines().collect();
    let mut report = String::new();
    let mut shown = 0;
    for i in 0..a.len().max(e.len()) {
        let (al, el) = (a.get(i), e.get(i));
        if al != el {
            shown += 1;
            if shown <= 40 {
                report.push_str(&format!(
                    "line {}:\n  expected: {}\n  actual:   {}\n",
                    i + 1,
                    el.map_or("<missing>", |s| s),
                    al.map_or("<missing>", |s| s)
                ));
            }
        }
    }
    if shown == 0 {
        report.push_str("lines equal; line endings or the final newline differ\n");
    }
    panic!(
        "{what}: computed table differs from the reference in {shown} line(s) \
         ({} computed, {} expected):\n{report}",
        a.len(),
        e.len()
    );
}

fn parse_code(field: &str) -> Option<u32> {
    let hex = field.split_whitespace().next()?.strip_prefix("0x")?;
    u32::from_str_radix(hex, 16).ok()
}

#[test]
fn layouts_equal_the_reference() {
    let mut out = String::new();
    layout_rows(&mut out).unwrap();
    assert_same_table("haxm-layouts.tsv", &out, LAYOUTS);
}

#[test]
fn ioctl_codes_equal_the_reference() {
    let mut out = String::new();
    ioctl_rows(&mut out).unwrap();
    let expected: String = IOCTLS_TSV
        .lines()
        .map(|l| l.split('\t').take(3).collect::<Vec<_>>().join("\t") + "\n")
        .collect();
    assert_same_table("haxm-ioctls.tsv columns 1-3", &out, &expected);
}

/// The columns the examples do not print: BSD, i386 user space, and scope.
#[test]
fn other_ioctl_columns_equal_the_reference() {
    let mut lines = IOCTLS_TSV.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (bsd, linux32, darwin32, scope) = (
        col("darwin_netbsd_code_hex"),
        col("linux_i386_user_code_hex"),
        col("darwin_i386_user_code_hex"),
        col("scope"),
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), IOCTLS.len());
    for (def, r) in IOCTLS.iter().zip(&rows) {
        assert_eq!(def.name, r[0]);
        assert_eq!(def.scope.name(), r[scope], "{} scope", def.name);
        let darwin = parse_code(r[bsd]);
        // "0x800800cb (NetBSD: -)": Darwin has it, NetBSD does not.
        let netbsd = if r[bsd].contains("NetBSD: -") {
            None
        } else {
            darwin
        };
        assert_eq!(def.code(Platform::Darwin), darwin, "{} darwin", def.name);
        assert_eq!(def.code(Platform::NetBsd), netbsd, "{} netbsd", def.name);
        assert_eq!(
            def.code(Platform::LinuxI386),
            parse_code(r[linux32]),
            "{} linux i386",
            def.name
        );
        assert_eq!(
            def.code(Platform::DarwinI386),
            parse_code(r[darwin32]),
            "{} darwin i386",
            def.name
        );
    }
}

#[test]
fn the_diff_reports_differences() {
    // The checker itself must fail on a one-field drift, and say where.
    let mut out = String::new();
    layout_rows(&mut out).unwrap();
    let drifted = out.replacen("vmx_msr\tvalue\t8\t8", "vmx_msr\tvalue\t8\t4", 1);
    assert_ne!(drifted, out);
    let err = std::panic::catch_unwind(|| assert_same_table("t", &drifted, LAYOUTS)).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("line 3:") && msg.contains("1 line(s)"),
        "{msg}"
    );
}
