//! The MMIO instruction decoder against iced-x86 (`rhax_fuzz::decoder`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rhax_fuzz::decoder::run(data);
});
