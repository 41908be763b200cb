//! The SQL of delivery events: one `message_delivery` row per event, idempotent on (MTA host,
//! queue id, recipient, status, log time) (schema/0011_delivery.sql). No link is written: the
//! join to the message is made when it is read ([`super::read::delivery`]).
//!
//! This module knows nothing of the broker.

use chrono::Utc;
use platform::database::Database;
use wire::DeliveryEvent;

use super::bounce::instance_id;
use super::is_refusal;
use super::values::{TEXT_BYTES, datetime, truncate_chars, truncate_utf8_bytes};

/// Characters kept of an address or relay (the columns' width).
const ADDRESS_CHARS: usize = 255;

/// What became of one delivery event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Committed.
    Stored,
    /// The same line was stored already; nothing was written.
    Duplicate,
    /// The database refused one of its values; nothing was written. The text says why.
    Refused(String),
}

/// Writes delivery events; owns its pool.
pub struct DeliveryStore {
    pool: Database,
}

impl DeliveryStore {
    pub fn new(pool: impl Into<Database>) -> Self {
        Self { pool: pool.into() }
    }

    pub fn pool(&self) -> &Database {
        &self.pool
    }

    /// Stores the event (one transaction: the instance row if new, the delivery row).
    ///
    /// # Errors
    /// Anything but a refusal of the event's values: nothing is stored; trying again later is
    /// safe.
    pub async fn write(&self, event: &DeliveryEvent) -> Result<DeliveryOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let written = async {
            let instance = instance_id(&mut tx, &event.instance).await?;
            sqlx::query(
                "INSERT INTO message_delivery (cluegetter_instance, mta_hostname, queue_id, \
                   recipient, status, log_time, orig_to, dsn, relay, delay, reason, service, \
                   stored) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE id = id",
            )
            .bind(instance)
            .bind(event.mta_hostname.to_ascii_lowercase())
            .bind(&event.queue_id)
            .bind(truncate_chars(&event.recipient, ADDRESS_CHARS))
            .bind(event.status.as_str())
            .bind(datetime(event.log_time))
            .bind(truncate_chars(&event.orig_to, ADDRESS_CHARS))
            .bind(truncate_chars(&event.dsn, 16))
            .bind(truncate_chars(&event.relay, ADDRESS_CHARS))
            .bind(event.delay.filter(|d| d.is_finite()))
            .bind(truncate_utf8_bytes(&event.reason, TEXT_BYTES))
            .bind(truncate_chars(&event.service, 32))
            .bind(datetime(Utc::now()))
            .execute(&mut *tx)
            .await
            .map(|done| done.rows_affected())
        }
        .await;
        match written {
            Ok(rows) => {
                tx.commit().await?;
                Ok(if rows == 1 {
                    DeliveryOutcome::Stored
                } else {
                    DeliveryOutcome::Duplicate
                })
            }
            Err(error) if is_refusal(&error) => {
                let _ = tx.rollback().await;
                Ok(DeliveryOutcome::Refused(format!(
                    "refused by the database: {error}"
                )))
            }
            Err(error) => Err(error),
        }
    }
}
