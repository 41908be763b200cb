-- GeoIP (issue 17): the countries each SASL login (or, with `also-senders`, envelope sender)
-- sent from, written and read by the geoip module of check-workers and shared by all its
-- workers; and the country and autonomous system of every session's client, written by the
-- auditor from the geoip module's result.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- `geoip_login_country`:
-- * One row per (login, country) used within `[geoip] window`. `login` is lower-cased and cut
--   to 255 characters; `country` is the ISO 3166-1 alpha-2 code, `unknown` (with
--   `unknown-country = "count"`), or '' for the login's own lock row: every check of a login
--   first upserts that row, which row-locks it, so two workers judging the same login at once
--   take turns and agree on the count (READ COMMITTED takes no gap locks to do it for us).
-- * Times are the database's UTC_TIMESTAMP(6), never a worker's clock. A row whose `last_seen`
--   is older than `window` no longer counts; the workers delete such rows now and then.
-- * A country that was refused is not written: the real user is never locked out by an
--   attacker's attempts.
CREATE TABLE geoip_login_country (
    login      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    country    VARCHAR(7) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    first_seen DATETIME(6) NOT NULL,
    last_seen  DATETIME(6) NOT NULL,
    -- messages permitted from this country since `first_seen`
    messages   BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (login, country),
    KEY geoip_login_country_last_seen (last_seen)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The session's client as the geoip module's database saw it (NULL: not looked up, private or
-- unknown); searchable on the message search (`country=`).
ALTER TABLE session
    ADD COLUMN country CHAR(2) CHARACTER SET ascii COLLATE ascii_general_ci NULL AFTER tls_version,
    ADD COLUMN asn INT UNSIGNED NULL AFTER country,
    ADD KEY session_country (country);
