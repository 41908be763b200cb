//! bounce-ingest's Prometheus metrics: names, descriptions, and the helpers that record them.
//!
//! Recorded through the `metrics` facade; `main` installs the exporter for `run`. The short-lived
//! `submit` process has no exporter: its reports are counted where they are stored (the
//! auditor's `cluegetter_auditor_bounces_*`).

use wire::BounceSource;
use wire::contract::ParseStatus;

/// Reports read to their end, by `source` (`tcp`, `submit`).
pub const RECEIVED: &str = "cluegetter_bounce_ingest_reports_received_total";
/// Reports with a delivery status read (`status` = `parsed` or `partial`), by `source`.
pub const PARSED: &str = "cluegetter_bounce_ingest_reports_parsed_total";
/// Reports without a readable delivery status (kept raw, with the reason), by `source`.
pub const UNPARSEABLE: &str = "cluegetter_bounce_ingest_reports_unparseable_total";
/// Connections or reports refused, by `reason` (`not-allowed`, `spool`, `empty`, `read-error`).
pub const REFUSED: &str = "cluegetter_bounce_ingest_reports_refused_total";
/// Bounce events RabbitMQ confirmed.
pub const PUBLISHED: &str = "cluegetter_bounce_ingest_events_published_total";
/// Publish attempts that failed and are retried.
pub const PUBLISH_RETRIES: &str = "cluegetter_bounce_ingest_publish_retries_total";
/// Bytes and events in the spool (waiting for RabbitMQ's confirm).
pub const SPOOL_BYTES: &str = "cluegetter_bounce_ingest_spool_bytes";
pub const SPOOL_EVENTS: &str = "cluegetter_bounce_ingest_spool_events";
/// Spool files that could not be read back, set aside as `*.corrupt`.
pub const SPOOL_CORRUPT: &str = "cluegetter_bounce_ingest_spool_corrupt_total";

/// `maillog`: log lines read, and the delivery lines among them.
pub const MAILLOG_LINES: &str = "cluegetter_bounce_ingest_maillog_lines_total";
/// `maillog`: delivery events RabbitMQ confirmed, by `status`.
pub const DELIVERIES: &str = "cluegetter_bounce_ingest_deliveries_published_total";
/// `maillog`: rotations of the followed file seen, by `how` (`renamed`, `truncated`).
pub const ROTATIONS: &str = "cluegetter_bounce_ingest_maillog_rotations_total";

const REFUSED_REASONS: [&str; 4] = ["not-allowed", "spool", "empty", "read-error"];

/// Registers the descriptions and makes the counters visible at 0 (idempotent).
pub fn describe() {
    metrics::describe_counter!(RECEIVED, "Delivery reports read to their end, by source");
    metrics::describe_counter!(
        PARSED,
        "Delivery reports whose delivery status was read (fully or partly), by source"
    );
    metrics::describe_counter!(
        UNPARSEABLE,
        "Delivery reports without a readable delivery status (stored raw with the reason)"
    );
    metrics::describe_counter!(REFUSED, "Connections or reports refused, by reason");
    metrics::describe_counter!(PUBLISHED, "Bounce events confirmed by RabbitMQ");
    metrics::describe_counter!(PUBLISH_RETRIES, "Failed publish attempts (retried)");
    metrics::describe_gauge!(SPOOL_BYTES, "Bytes in the bounce spool");
    metrics::describe_gauge!(SPOOL_EVENTS, "Bounce events in the spool");
    metrics::describe_counter!(SPOOL_CORRUPT, "Unreadable spool files set aside");
    for source in ["tcp", "submit"] {
        for name in [RECEIVED, PARSED, UNPARSEABLE] {
            metrics::counter!(name, "source" => source).increment(0);
        }
    }
    for reason in REFUSED_REASONS {
        metrics::counter!(REFUSED, "reason" => reason).increment(0);
    }
    metrics::describe_counter!(MAILLOG_LINES, "maillog: log lines read, by kind");
    metrics::describe_counter!(DELIVERIES, "maillog: delivery events confirmed, by status");
    metrics::describe_counter!(ROTATIONS, "maillog: rotations of the followed file, by how");
    for kind in ["delivery", "other"] {
        metrics::counter!(MAILLOG_LINES, "kind" => kind).increment(0);
    }
    for status in wire::DeliveryStatus::ALL {
        metrics::counter!(DELIVERIES, "status" => status.as_str()).increment(0);
    }
    for how in ["renamed", "truncated"] {
        metrics::counter!(ROTATIONS, "how" => how).increment(0);
    }
    for name in [PUBLISHED, PUBLISH_RETRIES, SPOOL_CORRUPT] {
        metrics::counter!(name).increment(0);
    }
}

/// A report read to its end and parsed.
pub fn parsed(source: BounceSource, status: ParseStatus) {
    let source = source.as_str();
    metrics::counter!(RECEIVED, "source" => source).increment(1);
    let name = match status {
        ParseStatus::Parsed | ParseStatus::Partial => PARSED,
        ParseStatus::Unparseable => UNPARSEABLE,
    };
    metrics::counter!(name, "source" => source).increment(1);
}

pub fn refused(reason: &'static str) {
    metrics::counter!(REFUSED, "reason" => reason).increment(1);
}
