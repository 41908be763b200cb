-- Stage HELO, reply tempfail: a HELO name the gateway defers.
-- -D expect=tempfail (the goal) or continue (today: SMFIP_NR_HELO, no HELO-time check yet).
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo(helo_name or "tempfail.invalid")
expect_reply("helo", expect or "tempfail")
done()
