//! The gateway against real peers, in one test binary (STYLE.md): the gateway runs in-process
//! on port 0 with the `rspamd` module enabled, and the test itself plays the check worker on a
//! RabbitMQ vhost of its own ([`helpers::Worker`]), answering by the envelope sender's local
//! part (`reject@…`, `tempfail@…`, `slow@…`, …).
//!
//! - [`protocol`]: the MTA side spoken directly with `MtaCodec`; exact packets.
//! - [`miltertest`]: the scripts in `scripts/miltertest/`, one per stage and reply.
//! - [`failover`]: the broker link cut and restored while messages wait (a `TcpProxy`
//!   in front of RabbitMQ).
//! - [`pipe`]: one connection over `tokio::io::duplex`, no listener and no peer (the broker
//!   away, the spool full; `fail-action` tempfail and accept).
//! - [`postfix`]: a throwaway Postfix instance and swaks; what the client, the mailbox, the
//!   hold queue and Postfix's log show.
//!
//! Needs RabbitMQ (with the management API), Postfix, swaks and miltertest:
//! `scripts/start-peers.sh rabbitmq postfix tools`.
//!
//! Features the gateway gained while these tests were written sit behind the flags in
//! [`helpers`] (`EOM_CHANGES_APPLIED`, `QUARANTINE_VERDICT`: on). Off, a flag's tests assert
//! the behaviour without the feature. Checks before end of message (`[stage-checks]`) are
//! exercised with [`helpers::staged_config`]: the worker then answers by client name, HELO
//! name and recipient as well.

#![allow(clippy::unwrap_used)]

mod audit_body;
mod drain;
mod failover;
mod helpers;
mod late;
mod miltertest;
mod pipe;
mod postfix;
mod protocol;
