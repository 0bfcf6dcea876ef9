//! Picks a small seed corpus for the `decoder` target: one input per (mode, outcome class)
//! of rhax's decoder. libFuzzer's own minimization keeps hundreds of inputs, one per path
//! through iced-x86 (the oracle), which CI does not need to replay.
//! `cargo run --release --example decoder_seeds -- fuzz/corpus-work/decoder fuzz/corpus/decoder`
use rhax_core::emulate::{decode, CpuMode, Operation};

fn main() {
    let from = std::env::args().nth(1).expect("source folder");
    let to = std::env::args().nth(2).expect("destination folder");
    let mut seen = std::collections::BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(&from)
        .expect("source")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for p in files {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        if data.len() < 18 {
            continue;
        }
        let mode = [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64][usize::from(data[0]) % 3];
        let bytes = &data[18..];
        let seen_bytes = &bytes[..usize::from(data[1]).min(bytes.len())];
        let class = match decode(seen_bytes, mode) {
            Ok(i) => {
                let op = match i.operation {
                    Operation::Load { extend, .. } => format!("load {extend:?}"),
                    Operation::StoreRegister { src } => format!("store high={}", src.high_byte),
                    Operation::StoreImmediate { .. } => "store imm".to_string(),
                };
                format!("{op} size {} len>8 {}", i.size, i.length > 8)
            }
            Err(e) => format!("{e:?}").split(' ').next().unwrap_or("").to_string(),
        };
        if seen.insert(format!("{mode:?} {class}")) {
            let name = p.file_name().expect("file");
            std::fs::copy(&p, std::path::Path::new(&to).join(name)).expect("copy");
        }
    }
    println!("{} seeds", seen.len());
}
