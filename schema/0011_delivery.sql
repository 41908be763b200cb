-- Delivery status (issue 20): what became of each recipient after Postfix accepted the message,
-- read from Postfix's log by `bounce-ingest maillog` (one row per delivery line: one recipient,
-- one attempt: sent, deferred with the reason, bounced, expired). Written by the auditor only,
-- from delivery events.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- Conventions:
-- * Idempotent on the line: (`mta_hostname`, `queue_id`, `recipient`, `status`, `log_time`) is
--   unique, and a repeated event (bounce-ingest publishes at least once) changes nothing.
-- * No foreign key to `message`: a delivery line may be read before its message's audit event
--   is stored (or for a message that never passed the milter). The join is made when it is read:
--   `message.queue_id = queue_id` and `message.mta_hostname` equal to `mta_hostname`, or
--   beginning with it and a dot (Postfix's maillog_file writes myhostname's first label; the
--   gateway records the whole {j}). Retention prunes the rows of an instance logged before
--   the message cut-off (`archive-retention-message`), by `log_time`.
-- * `recipient`, `orig_to` as Postfix logged them (without angle brackets); `reason` the text in
--   parentheses after the status; `delay` seconds (NULL when not logged); times UTC.

CREATE TABLE message_delivery (
    id                  BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    cluegetter_instance BIGINT UNSIGNED NOT NULL,
    mta_hostname        VARCHAR(127) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    queue_id            VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    recipient           VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status              ENUM('sent', 'deferred', 'bounced', 'expired') NOT NULL,
    log_time            DATETIME(6) NOT NULL,
    orig_to             VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    dsn                 VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    relay               VARCHAR(255) NOT NULL DEFAULT '',
    delay               DOUBLE NULL,
    reason              TEXT NOT NULL,
    service             VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    -- when the auditor stored it
    stored              DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY message_delivery_line (mta_hostname, queue_id, recipient, status, log_time),
    -- the join to a message (by queue id, then the host), in log order
    KEY message_delivery_queue_id (queue_id, log_time),
    -- "where is the mail to X?"
    KEY message_delivery_recipient (recipient, log_time),
    KEY message_delivery_status_time (status, log_time),
    -- retention, per instance
    KEY message_delivery_instance_time (cluegetter_instance, log_time),
    CONSTRAINT message_delivery_instance_fk FOREIGN KEY (cluegetter_instance) REFERENCES instance (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
