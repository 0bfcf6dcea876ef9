//! Prints the ABI layout table computed from the Rust definitions, in the format of
//! `tests/abi/haxm-layouts.tsv`.

fn main() {
    let mut out = String::new();
    rhax_api::conformance::layout_rows(&mut out).expect("writing to a String cannot fail");
    print!("{out}");
}
