//! IOCTL sequences through rhax-core's dispatcher with a scripted guest CPU
//! (`rhax_fuzz::dispatch`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: rhax_fuzz::dispatch::Input| {
    rhax_fuzz::dispatch::run(&input);
});
