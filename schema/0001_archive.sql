-- The audit archive: ClueGetter v0.6.0's MySQL archive tables (spec/schema.md §2) adapted as
-- DESIGN.md "The database" says. Written by the auditor only; read by the web UI.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`, and an auditor
-- refuses to start against a database that has a migration it does not know.
--
-- Conventions that readers rely on:
-- * InnoDB, utf8mb4. Every time is UTC, DATETIME(6): the auditor's connections run with
--   time_zone '+00:00' and write the event's own times (never NOW()).
-- * The archive is keyed by the message UUID v7 (`message.id`, BINARY(16), time-ordered) and the
--   session UUID (`session.id`); the Postfix queue id is an indexed column beside the MTA host name,
--   since queue ids exist only from DATA on and differ per MTA.
-- * Addresses compare case-insensitively by LOWER-CASING AT WRITE: `message.sender_local`,
--   `message.sender_domain`, `recipient.local`, `recipient.domain` and `message_recipient.domain`
--   are stored lower-case in utf8mb4_bin columns, so their unique keys are exact (utf8mb4_unicode_ci
--   would also fold accents and merge `josé` with `jose`). A search lower-cases its input and
--   compares with `=` or a `LIKE 'prefix%'`. An address without `@` has domain ''; the null sender
--   `<>` is local '' and domain ''.
-- * Client addresses: `session.ip` is the text form, `session.ip_bin` the INET6_ATON() form (4
--   bytes for IPv4, 16 for IPv6; IPv4-mapped IPv6 is stored as IPv4). A network is searched as
--   `LENGTH(ip_bin) = 4 AND ip_bin BETWEEN INET6_ATON('192.0.2.0') AND INET6_ATON('192.0.2.255')`
--   (the length test keeps IPv4 values out of IPv6 ranges and back).
-- * Free text from the SMTP peer (HELO, subject, Message-ID, header values, ...) is cut to its
--   column by the auditor; identifiers from our own processes (instance, queue id, MTA host name,
--   module) are not: a value that does not fit makes the event a poison event (dead-lettered).
-- * Actions (verdicts) are the wire's closed set, in ClueGetter's numeric order (PERMIT 0, TEMPFAIL 1,
--   REJECT 2, ERROR 3, DISCARD 4), plus quarantine.
-- * Children of `message` cascade on delete, so pruning may delete messages directly; pruning per
--   kind (bodies, headers, results earlier than messages) deletes child rows by date itself.

CREATE TABLE instance (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    -- the configuration's `instance`; a name the auditor meets for the first time is added
    name        VARCHAR(20) NOT NULL,
    description VARCHAR(255) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY instance_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO instance (id, name, description) VALUES (1, 'default', 'The Default Instance');

-- One row per (MTA host name `j`, Postfix service `{daemon_name}`) seen.
CREATE TABLE cluegetter_client (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    hostname    VARCHAR(127) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    daemon_name VARCHAR(127) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY client (hostname, daemon_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per SMTP connection that sent at least one message to end of data. Written by the first
-- event of the session; later events only fill in what was still empty (HELO, SASL, TLS), so the
-- order in which events arrive does not matter. There is no disconnect event yet: `date_disconnect`
-- stays NULL.
CREATE TABLE session (
    id                  BINARY(16) NOT NULL,
    cluegetter_instance BIGINT UNSIGNED NOT NULL,
    cluegetter_client   BIGINT UNSIGNED NOT NULL,
    date_connect        DATETIME(6) NOT NULL,
    date_disconnect     DATETIME(6) NULL,
    -- '' and NULL for a client that is not on TCP/IP (Unix socket, unknown family)
    ip                  VARCHAR(45) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    ip_bin              VARBINARY(16) NULL,
    port                SMALLINT UNSIGNED NULL,
    -- Postfix's client name at CONNECT (`unknown` when the client has none)
    reverse_dns         VARCHAR(255) NOT NULL DEFAULT '',
    helo                VARCHAR(255) NOT NULL DEFAULT '',
    sasl_username       VARCHAR(255) NOT NULL DEFAULT '',
    sasl_method         VARCHAR(32) NOT NULL DEFAULT '',
    sasl_sender         VARCHAR(255) NOT NULL DEFAULT '',
    cert_issuer         VARCHAR(255) NOT NULL DEFAULT '',
    cert_subject        VARCHAR(255) NOT NULL DEFAULT '',
    cipher_bits         SMALLINT UNSIGNED NULL,
    cipher              VARCHAR(255) NOT NULL DEFAULT '',
    tls_version         VARCHAR(31) NOT NULL DEFAULT '',
    PRIMARY KEY (id),
    KEY session_date (cluegetter_instance, date_connect),
    KEY session_client (cluegetter_client),
    KEY session_ip_bin (ip_bin),
    KEY session_sasl_username (sasl_username),
    CONSTRAINT session_instance_fk FOREIGN KEY (cluegetter_instance) REFERENCES instance (id),
    CONSTRAINT session_client_fk FOREIGN KEY (cluegetter_client) REFERENCES cluegetter_client (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per message that reached end of data, exactly one per message UUID.
CREATE TABLE message (
    id                     BINARY(16) NOT NULL,
    session                BINARY(16) NOT NULL,
    queue_id               VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    mta_hostname           VARCHAR(127) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL DEFAULT '',
    -- end of message, when the verdict was made (not when the row was written; spec gap A.8)
    date                   DATETIME(6) NOT NULL,
    body_size              BIGINT UNSIGNED NOT NULL DEFAULT 0,
    -- MD5 of the body, lower-case hex
    body_hash              VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    -- the Message-ID header (the one the gateway inserted, if it had to)
    messageId              VARCHAR(998) NOT NULL DEFAULT '',
    subject                VARCHAR(998) NOT NULL DEFAULT '',
    sender_local           VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    sender_domain          VARCHAR(253) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    -- accepted envelope recipients, duplicates counted
    rcpt_count             INT UNSIGNED NOT NULL DEFAULT 1,
    -- what the rules gave; under noop the verdict that would have been given
    verdict                ENUM('permit', 'tempfail', 'reject', 'error', 'discard', 'quarantine') NOT NULL,
    -- what Postfix was told (permit under noop or whitelist)
    applied                ENUM('permit', 'tempfail', 'reject', 'error', 'discard', 'quarantine') NOT NULL,
    verdict_msg            TEXT NOT NULL,
    rejectScore            DOUBLE NOT NULL DEFAULT 0,
    rejectScoreThreshold   DOUBLE NOT NULL DEFAULT 0,
    tempfailScore          DOUBLE NOT NULL DEFAULT 0,
    tempfailScoreThreshold DOUBLE NOT NULL DEFAULT 0,
    noop                   TINYINT(1) NOT NULL DEFAULT 0,
    whitelisted            TINYINT(1) NOT NULL DEFAULT 0,
    -- why the fail action was applied when no module verdict could be had (broker down, deadline)
    failure                TEXT NULL,
    -- 0 for an event replayed from the spool of a gateway that died before answering Postfix
    answered               TINYINT(1) NOT NULL DEFAULT 1,
    -- the gateway stopped keeping headers at its bounds, or the auditor cut a header to fit
    headers_truncated      TINYINT(1) NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    KEY message_session (session),
    KEY message_date (date),
    KEY message_queue_id (queue_id, mta_hostname),
    KEY message_sender_date (sender_domain, sender_local, date),
    KEY message_senderdomain_date (sender_domain, date),
    KEY message_messageid (messageId(64)),
    KEY message_subject (subject(64)),
    KEY message_verdict_date (verdict, date),
    CONSTRAINT message_session_fk FOREIGN KEY (session) REFERENCES session (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Normalised recipient addresses (lower-case, see the top of this file).
CREATE TABLE recipient (
    id     BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    local  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    domain VARCHAR(253) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    PRIMARY KEY (id),
    UNIQUE KEY recipient_address (domain, local)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The envelope recipients of a message: those accepted, and those Postfix itself rejected at RCPT
-- (status 'rejected', with its reason). `domain` and `date` are copies of recipient.domain and
-- message.date, so "mail to this domain / address in this period" is one index range.
CREATE TABLE message_recipient (
    message   BINARY(16) NOT NULL,
    recipient BIGINT UNSIGNED NOT NULL,
    status    ENUM('accepted', 'rejected') NOT NULL DEFAULT 'accepted',
    -- how often the address appeared in this envelope with this status
    count     INT UNSIGNED NOT NULL DEFAULT 1,
    -- Postfix's reply for a rejected recipient; NULL when accepted
    reason    TEXT NULL,
    domain    VARCHAR(253) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    date      DATETIME(6) NOT NULL,
    PRIMARY KEY (message, recipient, status),
    KEY message_recipient_recipient_date (recipient, date),
    KEY message_recipient_domain_date (domain, date),
    CONSTRAINT message_recipient_message_fk FOREIGN KEY (message) REFERENCES message (id) ON DELETE CASCADE,
    CONSTRAINT message_recipient_recipient_fk FOREIGN KEY (recipient) REFERENCES recipient (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The headers as received, in order (`sequence` from 0). Binary, so any charset survives.
CREATE TABLE message_header (
    id       BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message  BINARY(16) NOT NULL,
    sequence INT UNSIGNED NOT NULL,
    name     VARBINARY(255) NOT NULL,
    body     BLOB NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY message_header_sequence (message, sequence),
    CONSTRAINT message_header_message_fk FOREIGN KEY (message) REFERENCES message (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The body as the gateway kept it (only when body storage is on), in chunks of 65 535 bytes
-- numbered from 0: concatenated in `sequence` order they are the body.
CREATE TABLE message_body (
    message  BINARY(16) NOT NULL,
    sequence INT UNSIGNED NOT NULL,
    body     MEDIUMBLOB NOT NULL,
    PRIMARY KEY (message, sequence),
    CONSTRAINT message_body_message_fk FOREIGN KEY (message) REFERENCES message (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per module result, including those that arrived after the verdict (`late`).
CREATE TABLE message_result (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message        BINARY(16) NOT NULL,
    module         VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- the action the module suggested
    verdict        ENUM('permit', 'tempfail', 'reject', 'error', 'discard', 'quarantine') NOT NULL,
    score          DOUBLE NOT NULL DEFAULT 0,
    -- after module-group weighting
    weighted_score DOUBLE NOT NULL DEFAULT 0,
    -- seconds the module spent
    duration       DOUBLE NOT NULL DEFAULT 0,
    -- the module's own explanation (the wire's `message`)
    verdict_msg    TEXT NOT NULL,
    -- JSON: why, as the module explains it (render as text, never as HTML)
    determinants   LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    late           TINYINT(1) NOT NULL DEFAULT 0,
    PRIMARY KEY (id),
    UNIQUE KEY message_result_module (message, module),
    CONSTRAINT message_result_determinants_json CHECK (JSON_VALID(determinants)),
    CONSTRAINT message_result_message_fk FOREIGN KEY (message) REFERENCES message (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
