//! A decoded command stream driving the session: no panic, and replies only where the
//! protocol allows them (see `session::fuzz_session`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| milter_gateway::session::fuzz_session(data));
