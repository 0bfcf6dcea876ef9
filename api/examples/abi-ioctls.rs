//! Prints the IOCTL code table computed from the Rust definitions, in the format of the first
//! three columns of `tests/abi/haxm-ioctls.tsv`.

fn main() {
    let mut out = String::new();
    rhax_api::conformance::ioctl_rows(&mut out).expect("writing to a String cannot fail");
    print!("{out}");
}
