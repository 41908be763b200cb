-- End of message, envelope sender change (SMFIR_CHGFROM, e.g. SRS): the check worker (for
-- chgfrom@example.org) asks for a new sender; the gateway sends it, then continues.
-- miltertest records SMFIR_CHGFROM but has no eom_check for it, so this script checks the
-- final reply only; the integration test checks the CHGFROM packet itself on the wire.
dofile(dir .. "/common.lua")
open()
client("client.example.org", "192.0.2.10")
helo("client.example.org")
message("chgfrom@example.org", {"rcpt@mailbox.test"})
eom()
expect_reply("eom", "continue")
done()
