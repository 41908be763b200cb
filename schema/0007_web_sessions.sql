-- Web sessions of the auditor's web interface (auditor/src/web/auth.rs), in the database so that
-- a restart of the auditor logs nobody out and several auditors behind one load balancer share
-- them.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- * `id` is the SHA-256 of the session id (the cookie's value), never the id itself: a copy of
--   this table opens no session. The logout form's CSRF token is derived from the session id
--   too, so it is not stored either.
-- * `created` and `expires` are the database's clock (UTC), so auditors on hosts with skewed
--   clocks agree. A row is valid while `expires` is in the future; expired rows are deleted
--   when met at a lookup and periodically by every auditor serving the web interface
--   (`web_session_expires`).

CREATE TABLE web_session (
    id      BINARY(32) NOT NULL,
    -- the `[[auditor.web-users]] name` that logged in
    user    VARCHAR(255) NOT NULL,
    created DATETIME(6) NOT NULL,
    expires DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY web_session_expires (expires)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
