-- The archived body may be only the first part of the message's body: the gateway puts at most
-- `[gateway] audit-body-max-size` bytes of it in the audit event. `body_truncated` says so
-- (message_body then holds that prefix; `body_size` and `body_hash` are the whole body's).
-- 0 as well for a message whose body was not archived at all.
ALTER TABLE message
    ADD COLUMN body_truncated TINYINT(1) NOT NULL DEFAULT 0 AFTER body_hash;
