-- Quotas (spec/modules.md §1, spec/schema.md §1): ClueGetter's four definition tables with its
-- names and columns, so that an existing user's rows load unchanged, plus the tally that makes
-- counting exact across any number of check workers (DESIGN.md, durability invariant 3).
-- Written by the quotas module of check-workers and by `check-workers quota import`; read by
-- `check-workers quota show`.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- Conventions:
-- * Definitions (`quota_class`, `quota_profile`, `quota_profile_period`, `quota`) are ClueGetter's.
--   Columns ClueGetter's README leaves out of its example rows have defaults, so those rows load
--   as written: `quota.is_regex` 0, `quota.instigator` NULL, `quota.date_added` the time of the
--   insert. ClueGetter's seed rows are not inserted: its regex row `^.*$` on client_address would
--   limit every client as soon as the module is enabled, and its ids would collide with imported
--   ones.
-- * `quota.value` compares case-insensitively (utf8mb4_unicode_ci, as ClueGetter's ascii table
--   did; it also folds accents). The module looks values up lower-cased and writes the rows it
--   creates lower-cased. A regex row keeps its pattern in `value`.
-- * `quota_message` is the tally: one row per (quota, message UUID) with the units the message
--   costs that quota and the database's UTC time of the check. A check that fits every period
--   inserts its rows as `reserved` in the same transaction that locked the quota rows and counted
--   (so two workers serialise on the row lock and never both take the last unit); the verdict
--   settles them `kept` or `released`. A window counts `kept` rows and `reserved` rows younger than
--   the module's `reservation-ttl`; released rows are kept for the record and count for nothing.
--   (ClueGetter ≤0.5.4 had a `quota_message (quota, message)` link table; this is its successor,
--   keyed by the message UUID instead of the queue id.)
-- * `quota_settlement` remembers a verdict that arrived before the message's reservation was
--   committed (a check that finished after the gateway stopped waiting for it), so the late
--   reservation is settled at once instead of lingering until it expires. Rows older than an
--   hour are pruned (such a reservation commits within seconds of the verdict, or never).

CREATE TABLE quota_class (
    id                  BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    -- quotas apply only to messages of the instance that owns the class
    cluegetter_instance BIGINT UNSIGNED NOT NULL,
    name                VARCHAR(32) NOT NULL,
    PRIMARY KEY (id),
    KEY quota_class_instance (cluegetter_instance),
    CONSTRAINT quota_class_instance_fk FOREIGN KEY (cluegetter_instance) REFERENCES instance (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE quota_profile (
    id    BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    class BIGINT UNSIGNED NOT NULL,
    name  VARCHAR(32) NOT NULL,
    PRIMARY KEY (id),
    KEY quota_profile_class (class),
    CONSTRAINT quota_profile_class_fk FOREIGN KEY (class) REFERENCES quota_class (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- At most `curb` units in any trailing window of `period` seconds.
CREATE TABLE quota_profile_period (
    id      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    profile BIGINT UNSIGNED NOT NULL,
    period  INT UNSIGNED NOT NULL,
    curb    INT UNSIGNED NOT NULL,
    PRIMARY KEY (id),
    KEY quota_profile_period_profile (profile),
    CONSTRAINT profile_id FOREIGN KEY (profile) REFERENCES quota_profile (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- A factor value (or, with is_regex = 1, every value matching the pattern that has no exact row)
-- and its profile. `sender_sld` and `recipient_sld` are accepted so ClueGetter's rows load; this
-- build does not count them.
CREATE TABLE quota (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    selector   ENUM('sender', 'recipient', 'client_address', 'sasl_username', 'sender_domain',
                    'recipient_domain', 'sender_sld', 'recipient_sld') NOT NULL,
    value      VARCHAR(255) NULL,
    is_regex   TINYINT(1) NOT NULL DEFAULT 0,
    profile    BIGINT UNSIGNED NOT NULL,
    -- the regex row whose match created this row; NULL for rows made by hand
    instigator BIGINT UNSIGNED NULL,
    date_added DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (id),
    UNIQUE KEY selector (selector, value, profile),
    KEY selector_value (selector, value),
    KEY quota_profile (profile),
    CONSTRAINT quota_profile_fk FOREIGN KEY (profile) REFERENCES quota_profile (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE quota_message (
    quota   BIGINT UNSIGNED NOT NULL,
    message BINARY(16) NOT NULL,
    -- what the message costs this quota (recipients for the sender-side factors, see the module)
    units   INT UNSIGNED NOT NULL,
    -- the check, by the database's clock (UTC), so workers on hosts with skewed clocks agree
    date    DATETIME(6) NOT NULL,
    status  ENUM('reserved', 'kept', 'released') NOT NULL DEFAULT 'reserved',
    -- when the verdict settled it
    settled DATETIME(6) NULL,
    PRIMARY KEY (quota, message),
    -- the window sum reads this index only (the primary key columns are part of it)
    KEY quota_message_window (quota, date, status, units),
    KEY quota_message_message (message),
    CONSTRAINT quota_message_quota_fk FOREIGN KEY (quota) REFERENCES quota (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE quota_settlement (
    message BINARY(16) NOT NULL,
    -- 1: the verdict is in `tally-status` (kept); 0: released
    counted TINYINT(1) NOT NULL,
    date    DATETIME(6) NOT NULL,
    PRIMARY KEY (message),
    KEY quota_settlement_date (date)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
