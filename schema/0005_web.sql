-- Indexes for the auditor's web interface and JSON API (auditor/src/web/): every search filter
-- and statistics query reads an index range, bounded by date, instead of scanning the archive.
--
-- A landed migration is never edited: a change is a new file `NNNN_name.sql`.
--
-- What 0001 and 0004 already serve: date (message_date), sender (message_sender_date,
-- message_senderdomain_date), queue id, Message-ID and subject prefixes, verdict
-- (message_verdict_date), recipient address and domain (message_recipient_*), client address
-- and network (session_ip_bin: `LENGTH(ip_bin) = 4 AND ip_bin BETWEEN ? AND ?`), SASL user,
-- and the bounce reports by recipient, status and date.

-- "Which messages did module X reject": result rows by module and suggested action.
ALTER TABLE message_result
    ADD KEY message_result_module_verdict (module, verdict, message);

-- Client network and SASL user searches join session to message; the date next to the
-- searched column lets a range on the session side stop at the searched period.
ALTER TABLE session
    ADD KEY session_ip_bin_date (ip_bin, date_connect),
    ADD KEY session_sasl_username_date (sasl_username, date_connect),
    ADD KEY session_instance_id (cluegetter_instance, id);

-- Statistics: messages per hour by verdict and the top rejected senders read these indexes
-- only (covering), whatever the number of messages in the period.
-- message_session_date gives a SASL user's or client's messages with their dates from the
-- index alone (the search finds a page's ids before it reads any full row).
ALTER TABLE message
    ADD KEY message_session_date (session, date),
    ADD KEY message_date_verdict (date, verdict),
    ADD KEY message_verdict_date_sender (verdict, date, sender_domain, sender_local);

-- The bounce list: unlinked reports by date.
ALTER TABLE bounce
    ADD KEY bounce_message_date (message, date);
