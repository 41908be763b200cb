-- End of message, reply tempfail with a reply code: "451 4.7.1 <reason> (<queue id>)".
-- The check worker defers mail from tempfail@example.org with -D reason=<text>.
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
message("tempfail@example.org", {"rcpt@mailbox.test"})
eom()
expect_reply("eom", "replycode")
local text = (reason or "Deferred by the test worker") .. " (" .. qid .. ")"
if not mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", text) then
  fail("eom: the reply is not 451 4.7.1 " .. text)
end
done()
