//! Postfix log lines on arbitrary bytes: no panic; a delivery line found is well formed and,
//! written back, reads the same (see `bounce_ingest::maillog::fuzz_line`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bounce_ingest::maillog::fuzz_line(data));
