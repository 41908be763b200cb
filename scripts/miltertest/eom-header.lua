-- End of message, header changes: the check worker (for addheader@example.org) asks for
-- "X-Cluegetter-Test: added" to be added and every X-Strip-Me header to be removed; the
-- gateway sends SMFIR_ADDHEADER and SMFIR_CHGHEADER (empty value = delete), then continues.
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
mail("addheader@example.org")
rcpt("rcpt@mailbox.test")
expect_reply("rcpt", "continue")
data()
headers({{"From", "addheader@example.org"}, {"Subject", "headers"}, {"X-Strip-Me", "yes"}})
body("Hello.\r\n")
eom()
expect_reply("eom", "continue")
if not mt.eom_check(conn, MT_HDRADD, "X-Cluegetter-Test", "added") then
  fail("eom: no SMFIR_ADDHEADER X-Cluegetter-Test: added")
end
if not mt.eom_check(conn, MT_HDRDELETE, "X-Strip-Me") then
  fail("eom: no SMFIR_CHGHEADER deleting X-Strip-Me")
end
done()
