//! Picks a small seed corpus for the `dispatch` target: a greedy cover of the request
//! outcomes (IOCTL code and result kind, RUN exit status) that a corpus reaches, a few dozen
//! inputs where libFuzzer's minimization keeps hundreds.
//! `cargo run --release --example dispatch_seeds -- fuzz/corpus-work/dispatch fuzz/corpus/dispatch`
use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Unstructured};

/// An outcome without its payload ("VcpuIdOutOfRange { vcpu: 200 }" → "VcpuIdOutOfRange").
fn class(key: &str) -> String {
    for collapsed in ["UnknownIoctl", "InvalidHandle", "InputSize", "OutputSize"] {
        if key.contains(collapsed) {
            return collapsed.into();
        }
    }
    key.split([' ', '(', '{'])
        .take_while(|w| !w.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let from = std::env::args().nth(1).expect("source folder");
    let to = std::env::args().nth(2).expect("destination folder");
    let mut inputs: Vec<(std::path::PathBuf, BTreeSet<String>, usize)> = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&from)
        .expect("source")
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    for p in paths {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        let Ok(input) = rhax_fuzz::dispatch::Input::arbitrary_take_rest(Unstructured::new(&data))
        else {
            continue;
        };
        rhax_fuzz::dispatch::tally_start();
        rhax_fuzz::dispatch::run(&input);
        let keys = rhax_fuzz::dispatch::tally_take()
            .keys()
            .map(|k| class(k))
            .collect();
        inputs.push((p, keys, data.len()));
    }
    let mut covered = BTreeSet::new();
    let mut picked = 0;
    loop {
        // The input adding the most new outcomes; the shorter one on a tie.
        let best = inputs
            .iter()
            .enumerate()
            .map(|(i, (_, k, len))| (k.difference(&covered).count(), std::cmp::Reverse(*len), i))
            .max();
        let Some((gain, _, i)) = best else { break };
        if gain == 0 {
            break;
        }
        let (p, keys, _) = &inputs[i];
        covered.extend(keys.iter().cloned());
        std::fs::copy(
            p,
            std::path::Path::new(&to).join(p.file_name().expect("file")),
        )
        .expect("copy");
        picked += 1;
    }
    println!("{picked} seeds cover {} outcome classes", covered.len());
}
