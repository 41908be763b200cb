//! spamd's reply parser on arbitrary bytes: a reply or a clean error, finite scores, rule names
//! only, and CRLF read as LF (see `check_workers::modules::spamassassin::spamd::fuzz_reply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check_workers::modules::spamassassin::spamd::fuzz_reply(data)
});
