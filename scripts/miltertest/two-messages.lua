-- Two whole messages on one connection, judged apart: the first passes, the second is deferred.
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
message("permit@example.org", {"a@mailbox.test", "b@mailbox.test"}, "4jZBFIRSTqid111")
eom("4jZBFIRSTqid111")
expect_reply("eom 1", "continue")
message("tempfail@example.org", {"c@mailbox.test"}, "4jZBSECONDqid22")
eom("4jZBSECONDqid22")
expect_reply("eom 2", "replycode")
local text = (tempfail_reason or "Deferred by the test worker") .. " (4jZBSECONDqid22)"
if not mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", text) then
  fail("eom 2: the reply is not 451 4.7.1 " .. text)
end
done()
