-- Bounces (spec/modules.md §10, spec/schema.md §1): delivery reports (bounces, delay warnings)
-- received by bounce-ingest, with ClueGetter's `bounce` and `bounce_report` names and columns, and
-- what we add: the link to the reported message's archive row, the raw report, how far it could
-- be parsed and why not, the fields ClueGetter did not store (Action, Arrival-Date,
-- Last-Attempt-Date, Will-Retry-Until), and indexes for the UI. Written by the auditor only, from
-- bounce events.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- Conventions:
-- * ClueGetter's columns keep its meaning: `mta`, `sender`, `orig_rcpt`, `final_rcpt`,
--   `remote_mta` and `diag_code` are the DSN fields as `type; value` (`dns; mx.example.net`,
--   `rfc822; user@example.net`), unfolded; '' when the report had none. Free text from the report
--   is cut to its column by the auditor. `messageId` is '' when the report returned none
--   (ClueGetter made up `<unixtime.queueid.cluegetter@>`, spec gap D.22).
-- * A bounce is keyed for idempotence by `bounce_id`, the UUID v7 bounce-ingest gives a report on
--   receipt: a redelivered or replayed event changes nothing.
-- * A report that could not be parsed is stored all the same: `parse_status` = 'unparseable',
--   `parse_reason` the problems (one per line), `raw` the report as received (cut at
--   bounce-ingest's `max-size`; `raw_size` says how long it was).
-- * `message` links to `message.id` of the reported message, by the first that matches of:
--   Postfix's queue id with the reporting MTA's host name (`queueId`, `mta_hostname` against
--   `message.queue_id`, `message.mta_hostname`), the gateway's id header (`cluegetter_id`), the
--   returned Message-ID (`messageId`); `link` says which. NULL when no message matched yet: the
--   auditor matches the bounces of the last days again, so a bounce stored before its message's
--   audit event is linked once that arrives, and a link by a weaker key (a Message-ID, which
--   several messages may share) gives way to a stronger one that appears later. Deleting a
--   message (retention) unlinks its bounces.
-- * Times are UTC, DATETIME(6). `bounce.date` is the report's Date: header, or when it was
--   received if it had none; `bounce_report.date` is a copy, so "reports for this recipient /
--   with this status in this period" is one index range.
-- * `bounce_report.recipient` is the Final-Recipient's address (else Original-Recipient's),
--   lower-cased, without angle brackets; `recipient_domain` its domain ('' without `@`). A search
--   lower-cases its input and compares with `=` or `LIKE 'prefix%'`.

CREATE TABLE bounce (
    id                  BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    cluegetter_instance BIGINT UNSIGNED NOT NULL,
    date                DATETIME(6) NOT NULL,
    mta                 VARCHAR(128) NOT NULL DEFAULT '',
    queueId             VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    messageId           VARCHAR(998) NOT NULL DEFAULT '',
    sender              VARCHAR(255) NOT NULL DEFAULT '',
    -- added: identity and provenance
    bounce_id           BINARY(16) NOT NULL,
    received            DATETIME(6) NOT NULL,
    source              ENUM('submit', 'tcp') NOT NULL,
    -- the TCP client ('' for submit)
    peer                VARCHAR(45) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    -- what the parser made of it
    kind                ENUM('delivery-status', 'global-delivery-status', 'other') NOT NULL,
    parse_status        ENUM('parsed', 'partial', 'unparseable') NOT NULL,
    parse_reason        TEXT NULL,
    -- the report's own Subject, and per-message fields ClueGetter did not keep
    subject             VARCHAR(998) NOT NULL DEFAULT '',
    received_from_mta   VARCHAR(128) NOT NULL DEFAULT '',
    arrival_date        DATETIME(6) NULL,
    -- the returned message's headers
    orig_from           VARCHAR(998) NOT NULL DEFAULT '',
    orig_to             VARCHAR(998) NOT NULL DEFAULT '',
    orig_subject        VARCHAR(998) NOT NULL DEFAULT '',
    cluegetter_id       BINARY(16) NULL,
    -- Reporting-MTA's host name, lower-case ASCII ('' when it is not one): the queue id's scope
    mta_hostname        VARCHAR(127) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL DEFAULT '',
    -- the link to the reported message
    message             BINARY(16) NULL,
    link                ENUM('queue_id', 'cluegetter_id', 'message_id') NULL,
    -- the report as received (at most bounce-ingest's max-size) and its full length
    raw                 MEDIUMBLOB NOT NULL,
    raw_size            BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    UNIQUE KEY bounce_bounce_id (bounce_id),
    KEY bounce_instance_date (cluegetter_instance, date),
    KEY bounce_date (date),
    KEY bounce_queue_id (queueId, mta_hostname),
    KEY bounce_messageid (messageId(64)),
    KEY bounce_cluegetter_id (cluegetter_id),
    -- a message's bounces
    KEY bounce_message_received (message, received),
    -- the unlinked (link IS NULL) and weakly linked bounces by age, for relinking
    KEY bounce_link_received (link, received),
    KEY bounce_parse_status_date (parse_status, date),
    CONSTRAINT bounce_instance_fk FOREIGN KEY (cluegetter_instance) REFERENCES instance (id),
    CONSTRAINT bounce_message_fk FOREIGN KEY (message) REFERENCES message (id) ON DELETE SET NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per recipient block of a report, in report order (`sequence` from 0).
CREATE TABLE bounce_report (
    id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    bounce            BIGINT UNSIGNED NOT NULL,
    status            VARCHAR(16) NOT NULL DEFAULT '',
    orig_rcpt         VARCHAR(255) NOT NULL DEFAULT '',
    final_rcpt        VARCHAR(255) NOT NULL DEFAULT '',
    remote_mta        VARCHAR(128) NOT NULL DEFAULT '',
    diag_code         TEXT NULL,
    -- added
    sequence          INT UNSIGNED NOT NULL,
    action            ENUM('failed', 'delayed', 'delivered', 'relayed', 'expanded', 'unknown') NULL,
    recipient         VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    recipient_domain  VARCHAR(253) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    last_attempt_date DATETIME(6) NULL,
    will_retry_until  DATETIME(6) NULL,
    date              DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY bounce_report_sequence (bounce, sequence),
    KEY bounce_report_recipient_date (recipient, date),
    KEY bounce_report_domain_date (recipient_domain, date),
    KEY bounce_report_status_date (status, date),
    KEY bounce_report_action_date (action, date),
    KEY bounce_report_date (date),
    CONSTRAINT bounce_report_bounce_fk FOREIGN KEY (bounce) REFERENCES bounce (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
