-- Reputation (issue 18): per factor value and UTC day, how the archived messages were judged;
-- written by the auditor in the transaction that archives each message (a message the archive
-- had already adds nothing), read by the reputation module of check-workers, summed over its
-- `[reputation] window`.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- `reputation_count`:
-- * `factor` is `client_address`, `client_network` (`198.51.100.0/24`, `2001:db8::/64`),
--   `sender_domain` (lower-cased; only messages with a SASL login or whose sender domain passed
--   SPF) or `sasl_username` (lower-cased); `value` is cut to 255 characters.
-- * `day` is the UTC day the message was received (not archived), so a late event counts on
--   its own day.
-- * `messages` counts every message; `rejected`, `tempfailed` and `permitted` only those that
--   say something about the sender (platform/src/reputation.rs, `counted`): a refusal decided
--   only by greylisting, quotas or reputation, the error rule and failures count in
--   `messages` alone. `reject_score` sums the verdict's reject score, without reputation's own
--   points, of the messages counted in the other three.
-- * The auditor deletes days older than the window.
CREATE TABLE reputation_count (
    factor       VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    value        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    day          DATE NOT NULL,
    messages     BIGINT UNSIGNED NOT NULL DEFAULT 0,
    rejected     BIGINT UNSIGNED NOT NULL DEFAULT 0,
    tempfailed   BIGINT UNSIGNED NOT NULL DEFAULT 0,
    permitted    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    reject_score DOUBLE NOT NULL DEFAULT 0,
    PRIMARY KEY (factor, value, day),
    KEY reputation_count_day (day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Whether the module's result decided the message's verdict (wire/src/decision.rs,
-- `decided_by`: the verdict would have been different without it, or, when no single module
-- was, it contributed points toward the verdict's action; the error rule's errors). NULL for
-- results archived before this migration. ADD COLUMN at the end is instant in MariaDB ≥ 10.3.
ALTER TABLE message_result ADD COLUMN decisive TINYINT(1) NULL;
