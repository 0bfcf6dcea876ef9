//! Prints the VMCS component table as TSV: name, encoding, width, type, access, cache policy.

use rhax_core::vmcs::VmcsField;

fn main() {
    println!("name\tencoding\twidth\ttype\taccess\tpolicy");
    for &f in VmcsField::ALL {
        // 0x%04x for every encoding of the current SDM; 0x%08x if one ever exceeds 16 bits.
        let enc = if f.encoding() <= 0xffff {
            format!("0x{:04x}", f.encoding())
        } else {
            format!("0x{:08x}", f.encoding())
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            f.name(),
            enc,
            f.width().name(),
            f.kind().name(),
            f.access().name(),
            f.policy().name()
        );
    }
}
