-- Stage CONNECT, reply reject: a client the gateway refuses outright.
-- -D expect=reject (the goal) or continue (today: the gateway negotiates SMFIP_NR_CONN and has
-- no connect-time check yet). -D client_addr=<address> (default 192.0.2.66).
dofile(dir .. "/common.lua")
open()
client("blocked.example.net", client_addr or "192.0.2.66")
expect_reply("connect", expect or "reject")
done()
