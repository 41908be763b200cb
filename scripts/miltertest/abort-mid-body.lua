-- ABORT in the middle of the body, then a second message on the same connection: the first
-- is forgotten (never judged), the second is judged on its own (reject@example.org → 550
-- with the second queue id).
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
mail("aborted@example.org")
rcpt("rcpt@mailbox.test")
expect_reply("rcpt", "continue")
data("4jZBABORTEDqid1")
headers({{"From", "aborted@example.org"}, {"Subject", "never finished"}})
body("The first half of a body")
check("abort", mt.abort(conn))
-- the second message
message("reject@example.org", {"other@mailbox.test"}, "4jZBSECONDqid22")
eom("4jZBSECONDqid22")
expect_reply("eom", "replycode")
local text = (reason or "Rejected by the test worker") .. " (4jZBSECONDqid22)"
if not mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", text) then
  fail("eom: the reply is not 550 5.7.1 " .. text)
end
done()
