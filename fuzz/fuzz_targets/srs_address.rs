//! SRS addresses on arbitrary bytes: the parser and reversal return, a parsed address is made of
//! its parts, and forwarding then reversing gives the sender back (see
//! `check_workers::modules::srs::scheme::fuzz_address`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_workers::modules::srs::scheme::fuzz_address(data)
});
