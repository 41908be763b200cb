-- Greylisting (spec/modules.md §2): the client whitelist, with ClueGetter v0.6.0's table and
-- columns (spec/schema.md §2 `greylist_whitelist`), and the triplets, which ClueGetter kept in
-- Redis. Written and read by the greylisting module of check-workers, shared by all its workers.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- Conventions:
-- * Times are the database's own UTC_TIMESTAMP(6), never a worker's clock: workers on several
--   hosts compare ages against one clock. DATETIME(6), UTC.
-- * Client addresses are text as in `session.ip` (IPv4-mapped IPv6 as IPv4); networks are
--   `address/prefix` with the host bits cleared (`198.51.100.0/24`, `2001:db8:1:2::/64`). The
--   longest IPv6 network text is 43 characters.
-- * Addresses are stored lower-cased and cut to 255 characters in utf8mb4_bin columns, so the
--   unique key is exact; the null sender is ''.
-- * A triplet is (instance, client network, sender, one recipient): a message with three
--   recipients has three. The message passes when each of its triplets passed before or was
--   first seen `initial-period` ago; `first_seen` restarts when an unpassed triplet is older
--   than `retry-window`. Concurrent workers upsert on `greylist_triplet_key`, so they share one
--   `first_seen`.
-- * Stale rows (not seen for `whitelist-period`, or unpassed past `retry-window`) are deleted
--   by the workers now and then; the `last_seen` keys serve that.

CREATE TABLE greylist_whitelist (
    id                  BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    cluegetter_instance BIGINT UNSIGNED NOT NULL,
    -- a client address, or (with auto-whitelist-after) a client network
    ip                  VARCHAR(45) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- when the client last passed greylisting, passed the SPF whitelist or was let through by
    -- this entry; it is whitelisted until `whitelist-period` after this
    last_seen           DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY greylist_whitelist_ip (cluegetter_instance, ip),
    KEY greylist_whitelist_last_seen (cluegetter_instance, last_seen),
    CONSTRAINT greylist_whitelist_instance_fk FOREIGN KEY (cluegetter_instance) REFERENCES instance (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE greylist_triplet (
    id                  BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    cluegetter_instance BIGINT UNSIGNED NOT NULL,
    network             VARCHAR(45) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    sender              VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
    recipient           VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    -- the first attempt (of this round, when an unpassed triplet started over)
    first_seen          DATETIME(6) NOT NULL,
    -- the latest attempt
    last_seen           DATETIME(6) NOT NULL,
    -- when the triplet first passed; NULL while it is greylisted
    passed_at           DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY greylist_triplet_key (cluegetter_instance, network, sender, recipient),
    KEY greylist_triplet_last_seen (cluegetter_instance, last_seen),
    CONSTRAINT greylist_triplet_instance_fk FOREIGN KEY (cluegetter_instance) REFERENCES instance (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
