//! The auditor's Prometheus metrics: names, descriptions and the few helpers that record them.
//!
//! Recorded through the `metrics` facade; `main` installs the exporter. Without one (in tests)
//! recording does nothing.

use std::time::Duration;

/// Events whose rows were committed.
pub const EVENTS_COMMITTED: &str = "cluegetter_auditor_events_committed_total";
/// Events skipped because their message UUID was stored already (redelivery, spool replay).
pub const DUPLICATES_SKIPPED: &str = "cluegetter_auditor_duplicates_skipped_total";
/// Events sent to the dead-letter queue, by `reason` ([`DEAD_LETTER_REASONS`]).
pub const DEAD_LETTERED: &str = "cluegetter_auditor_dead_lettered_total";
/// Deliveries per batch.
pub const BATCH_SIZE: &str = "cluegetter_auditor_batch_size";
/// Seconds from end of message at the gateway to the commit of its rows.
pub const INGEST_LAG: &str = "cluegetter_auditor_ingest_lag_seconds";
/// Batches that could not be written (database down or failing); they are retried.
pub const BATCH_FAILURES: &str = "cluegetter_auditor_batch_failures_total";
/// Broker connections lost or refused after the first.
pub const BROKER_RECONNECTS: &str = "cluegetter_auditor_broker_reconnects_total";

/// Open connections of the web interface (at most `web-max-connections`).
pub const WEB_CONNECTIONS: &str = "cluegetter_auditor_web_connections";
/// Web requests answered 503 because they took longer than `web-request-timeout`.
pub const WEB_REQUEST_TIMEOUTS: &str = "cluegetter_auditor_web_request_timeouts_total";
/// Message rows written by CSV exports of the search.
pub const WEB_CSV_ROWS: &str = "cluegetter_auditor_web_csv_rows_total";

/// Archive rows deleted by pruning, by `table` ([`PRUNED_TABLES`]).
pub const PRUNED_ROWS: &str = "cluegetter_auditor_pruned_rows_total";
/// Prune runs that stopped at an SQL error (the next run starts over).
pub const PRUNE_FAILURES: &str = "cluegetter_auditor_prune_failures_total";

/// The `table` labels of [`PRUNED_ROWS`], in the order a run prunes them.
pub const PRUNED_TABLES: [&str; 9] = [
    "message_body",
    "message_header",
    "message_result",
    "quota_message",
    "message_recipient",
    "message",
    "session",
    "recipient",
    "message_delivery",
];

/// The `reason` labels of [`DEAD_LETTERED`].
pub const DEAD_LETTER_REASONS: [&str; 3] = ["undecodable", "version", "refused"];

/// Registers the descriptions and makes every counter visible at 0, so rates and alerts work
/// before the first event (idempotent).
pub fn describe() {
    metrics::describe_counter!(EVENTS_COMMITTED, "Audit events whose rows were committed");
    metrics::describe_counter!(
        DUPLICATES_SKIPPED,
        "Audit events skipped because their message UUID was already stored"
    );
    metrics::describe_counter!(
        DEAD_LETTERED,
        "Audit events sent to the dead-letter queue, by reason"
    );
    metrics::describe_histogram!(BATCH_SIZE, "Deliveries written per transaction");
    metrics::describe_histogram!(
        INGEST_LAG,
        metrics::Unit::Seconds,
        "Time from end of message at the gateway to the commit of its audit rows"
    );
    metrics::describe_counter!(
        BATCH_FAILURES,
        "Batches that could not be written and are retried (nothing of them acked)"
    );
    metrics::describe_counter!(
        BROKER_RECONNECTS,
        "Broker connections lost and re-established"
    );
    metrics::describe_gauge!(
        WEB_CONNECTIONS,
        "Open connections of the web interface (at most web-max-connections)"
    );
    metrics::describe_counter!(
        WEB_REQUEST_TIMEOUTS,
        "Web requests answered 503 because they took longer than web-request-timeout"
    );
    metrics::describe_counter!(
        WEB_CSV_ROWS,
        "Message rows written by CSV exports of the search"
    );
    for counter in [
        EVENTS_COMMITTED,
        DUPLICATES_SKIPPED,
        BATCH_FAILURES,
        BROKER_RECONNECTS,
        WEB_REQUEST_TIMEOUTS,
        WEB_CSV_ROWS,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for reason in DEAD_LETTER_REASONS {
        metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(0);
    }
}

/// Describes the pruning metrics and makes them visible at 0 (only when pruning is on).
pub fn describe_pruning() {
    metrics::describe_counter!(PRUNED_ROWS, "Archive rows deleted by pruning, by table");
    metrics::describe_counter!(
        PRUNE_FAILURES,
        "Prune runs that stopped at a database error"
    );
    metrics::counter!(PRUNE_FAILURES).increment(0);
    for table in PRUNED_TABLES {
        metrics::counter!(PRUNED_ROWS, "table" => table).increment(0);
    }
}

pub fn ingest_lag(lag: Duration) {
    metrics::histogram!(INGEST_LAG).record(lag.as_secs_f64());
}
