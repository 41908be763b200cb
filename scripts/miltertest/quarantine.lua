-- End of message, quarantine: the check worker (for quarantine@example.org) says quarantine;
-- the gateway sends SMFIR_QUARANTINE with the reason (Postfix: hold queue), then continues.
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
message("quarantine@example.org", {"rcpt@mailbox.test"})
eom()
expect_reply("eom", "continue")
if not mt.eom_check(conn, MT_QUARANTINE) then
  fail("eom: no SMFIR_QUARANTINE")
end
done()
