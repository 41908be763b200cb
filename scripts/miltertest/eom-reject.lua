-- End of message, reply reject with a reply code: "550 5.7.1 <reason> (<queue id>)".
-- The check worker rejects mail from reject@example.org with -D reason=<text>.
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
message("reject@example.org", {"rcpt@mailbox.test"})
eom()
expect_reply("eom", "replycode")
local text = (reason or "Rejected by the test worker") .. " (" .. qid .. ")"
if not mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", text) then
  fail("eom: the reply is not 550 5.7.1 " .. text)
end
done()
