-- Stage RCPT, reply reject for one recipient only: the first recipient is accepted, the second
-- refused, and the message still goes on for the first.
-- -D expect=replycode (550 5.7.1; a gateway with [stage-checks] rcpt; the module refuses reject-me@) or
-- continue (no RCPT checks: every recipient continues).
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
mail("permit@example.org")
rcpt("ok@mailbox.test")
expect_reply("rcpt ok@mailbox.test", "continue")
rcpt("reject-me@mailbox.test")
expect_reply("rcpt reject-me@mailbox.test", expect or "replycode")
data()
headers({{"From", "permit@example.org"}, {"Subject", "one recipient refused"}})
body("Hello.\r\n")
eom()
expect_reply("eom", "continue")
done()
