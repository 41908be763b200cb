//! The audit spool's segment scanner on arbitrary bytes: records or reported damage, never a
//! panic; every record found encodes back to its bytes (see `spool::format::fuzz_scan`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| milter_gateway::spool::format::fuzz_scan(data));
