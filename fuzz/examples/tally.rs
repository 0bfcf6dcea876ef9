//! Replays a `dispatch` corpus and counts request outcomes and RUN exit statuses: which deep
//! states the corpus reaches. `cargo run --release --example tally -- fuzz/corpus/dispatch
//! [PATTERN]`; with a pattern, also lists the inputs with an outcome containing it.
use arbitrary::{Arbitrary, Unstructured};

fn main() {
    let dir = std::env::args().nth(1).expect("corpus folder");
    let pattern = std::env::args().nth(2);
    let mut total = std::collections::BTreeMap::<String, u64>::new();
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("folder").flatten() {
        let Ok(data) = std::fs::read(e.path()) else {
            continue;
        };
        let u = Unstructured::new(&data);
        if let Ok(input) = rhax_fuzz::dispatch::Input::arbitrary_take_rest(u) {
            rhax_fuzz::dispatch::tally_start();
            rhax_fuzz::dispatch::run(&input);
            let t = rhax_fuzz::dispatch::tally_take();
            if let Some(p) = &pattern {
                if t.keys().any(|k| k.contains(p.as_str())) {
                    println!("{}: {input:?}", e.path().display());
                }
            }
            for (k, v) in t {
                *total.entry(k).or_default() += v;
            }
            n += 1;
        }
    }
    println!("{n} inputs");
    for (k, v) in total {
        println!("{v:>8}  {k}");
    }
}
