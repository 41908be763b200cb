//! The milter codec on arbitrary bytes: packets or a clean error, the same at any cut, within
//! the buffer bound, and each packet re-encodes to its bytes (see `milter::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| milter_gateway::milter::fuzz::fuzz_codec(data));
