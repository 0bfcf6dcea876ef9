//! The full MMIO emulator (decode and execute) on arbitrary input (`rhax_fuzz::emulator`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rhax_fuzz::emulator::run(data);
});
