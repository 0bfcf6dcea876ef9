//! The guest page walker against a reference walker (`rhax_fuzz::pagewalk`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: rhax_fuzz::pagewalk::Input| {
    rhax_fuzz::pagewalk::run(&input);
});
