-- Progress while waiting: the check worker takes longer (for slow@example.org) than
-- miltertest waits for any one packet (mt.set_timeout, -D wait=<seconds>, default 1), so the
-- conversation only survives if the gateway sends SMFIR_PROGRESS meanwhile (miltertest reads
-- those and keeps waiting for the real answer).
dofile(dir .. "/common.lua")
mt.set_timeout(tonumber(wait or "1"))
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
message("slow@example.org", {"rcpt@mailbox.test"})
eom()
expect_reply("eom", "continue")
done()
