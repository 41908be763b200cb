//! MaxMind database files on arbitrary bytes, read as the geoip module reads a new file (read,
//! verify, then lookups): no panic (see `check_workers::modules::geoip::lookup::fuzz_database`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_workers::modules::geoip::lookup::fuzz_database(data)
});
