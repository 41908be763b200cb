-- Stage CONNECT, reply reject: a client the gateway refuses outright.
-- -D expect=replycode (550 5.7.1; a gateway with [stage-checks] connect; the module refuses this client
-- name) or continue (no connect checks: SMFIP_NR_CONN is negotiated, so the reply is implied).
-- -D client_addr=<address> (default 192.0.2.66).
dofile(dir .. "/common.lua")
open()
client("blocked.example.net", client_addr or "192.0.2.66")
expect_reply("connect", expect or "replycode")
done()
