//! Delivery reports on arbitrary bytes, as a whole report and as the body of a delivery-status
//! part: no panic, values within their bounds, status consistent with what was found, and the
//! result survives JSON (see `bounce_ingest::dsn::fuzz_dsn`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bounce_ingest::dsn::fuzz_dsn(data));
