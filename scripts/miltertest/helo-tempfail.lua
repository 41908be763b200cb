-- Stage HELO, reply tempfail: a HELO name the gateway defers.
-- -D expect=replycode (451 4.7.1; a gateway with [stage-checks] helo; the module defers this name) or
-- continue (no HELO checks: SMFIP_NR_HELO is negotiated).
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo(helo_name or "tempfail.invalid")
expect_reply("helo", expect or "replycode")
done()
