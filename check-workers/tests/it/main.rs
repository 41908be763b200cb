//! Integration tests against the real RabbitMQ and the real rspamd (PEERS.md §1, §7;
//! `scripts/start-peers.sh rabbitmq rspamd`). Each test has its own vhost ([`TestBroker`]),
//! runs the workers in-process and plays the gateway: it declares an exclusive reply queue,
//! publishes `CheckRequest`s to `cluegetter.check` and awaits the replies.
//!
//! - [`rspamd`]: the rspamd module end to end (GTUBE, plain mail, rspamd down or silent, two
//!   requests in flight, scan latency).
//! - [`quotas`]: the quotas module with MariaDB: ClueGetter's README scenarios, settling,
//!   expiry, the operator commands, and four worker processes competing for the last units.
//! - [`spamassassin`]: the spamd client against the real spamd (GTUBE, plain mail, max-size,
//!   spamd stopped, hanging or silent, a peer that is not spamd, scan latency).
//! - [`clamav`]: INSTREAM against the real clamd with the EICAR signatures (EICAR and clean
//!   attachments, clamd's size limit, max-size, clamd down at start and back, scan latency).
//! - [`greylisting`]: greylisting with MariaDB (ClueGetter's flow, spec gap A.6, SPF whitelist
//!   served by the test's own dnsmasq, retry window, auto-whitelist, two workers on one
//!   triplet, MariaDB down, check latency).
//! - [`geoip`]: the geoip module with MariaDB and test-made MaxMind files (countries refused
//!   and not recorded, the window, what is not judged, the operator commands, two workers on
//!   one login, a database file missing, damaged and replaced).
//! - [`reputation`]: the reputation module reading counters in MariaDB (scores, factors,
//!   the window, the sender domain's SPF served by the test's own dnsmasq, the operator
//!   command, MariaDB down).
//! - [`srs`]: the SRS scheme against the real PostSRSd 1.x, both ways (its own `postsrsd`
//!   per test; `scripts/start-peers.sh postsrsd`).
//! - [`srs_module`]: the srs module through the worker loop (forward, reverse, refusals at
//!   RCPT with 5.1.1, senders left alone, the secrets file missing or empty).
//! - [`worker`]: the loop itself with stand-in modules (bad input, errors, timeouts, panics,
//!   concurrency, shutdown, reconnecting).
//!
//! [`TestBroker`]: test_support::TestBroker

#![allow(clippy::unwrap_used)]

mod clamav;
mod geoip;
mod greylisting;
mod harness;
mod quotas;
mod reputation;
mod rspamd;
mod spamassassin;
mod srs;
mod srs_module;
mod worker;
