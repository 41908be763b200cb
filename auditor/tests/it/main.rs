//! The auditor against the real RabbitMQ and MariaDB (PEERS.md): each test has its own vhost
//! (`TestBroker`) and database (`TestDb`), runs `auditor::run` in-process and waits on rows and
//! queues, never on time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archive;
mod bounces;
mod broker_loss;
mod browser;
mod database_down;
mod dead_letters;
mod idempotence;
mod migrations;
mod poison;
mod prune;
mod reputation;
mod support;
mod web;
mod web_auth;
mod web_dates;
mod web_fixes;
mod web_flood;
