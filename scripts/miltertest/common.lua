-- Helpers shared by the scripts in this directory; each script loads them with
--   dofile(dir .. "/common.lua")
-- so run every script as:
--   miltertest -s scripts/miltertest/<script>.lua -D dir=scripts/miltertest -D port=<milter port>
-- Globals from the command line (-D): dir and port (required), host (default 127.0.0.1),
-- qid (the queue id sent in the `i` macro, default 4jZB211qk4z6XPl).
--
-- miltertest pitfalls handled here (PEERS.md §5):
-- * a Lua error() exits 1 without printing the message, so fail() echoes it first;
-- * the implicit negotiation does not record the protocol flags the milter asked for, so a
--   milter that negotiated SMFIP_NR_* (the gateway does, for CONNECT/HELO/MAIL/DATA/headers/
--   EOH/body) would be waited on for replies it never sends: open() negotiates explicitly.
-- * miltertest's Lua has no SMFIC_DATA/EOH/BODYEOB constants: macros for those stages are
--   sent with the command letter itself.

if port == nil then error("run with -D port=<milter port>") end
host = host or "127.0.0.1"
qid = qid or "4jZB211qk4z6XPl"

local names = {
  [SMFIR_CONTINUE] = "continue", [SMFIR_ACCEPT] = "accept", [SMFIR_REJECT] = "reject",
  [SMFIR_TEMPFAIL] = "tempfail", [SMFIR_DISCARD] = "discard", [SMFIR_REPLYCODE] = "replycode",
  [SMFIR_SKIP] = "skip",
}
REPLIES = {}
for code, name in pairs(names) do REPLIES[name] = code end

function reply_name(code)
  return names[code] or ("'" .. string.char(code) .. "' (" .. tostring(code) .. ")")
end

function fail(msg)
  mt.echo("FAIL: " .. msg)
  error(msg)
end

-- A miltertest call returns nil on success and an error text otherwise.
function check(what, rc)
  if rc ~= nil then fail(what .. " failed: " .. tostring(rc)) end
end

-- The last reply must be `want` (a name from REPLIES).
function expect_reply(what, want)
  local got = mt.getreply(conn)
  if REPLIES[want] == nil then fail("unknown reply name " .. tostring(want)) end
  if got ~= REPLIES[want] then
    fail(what .. ": got " .. reply_name(got) .. ", wanted " .. want)
  end
  mt.echo(what .. ": " .. want)
end

function open()
  local sock = "inet:" .. port .. "@" .. host
  conn = mt.connect(sock, 5, 1)
  if conn == nil then fail("mt.connect(" .. sock .. ")") end
  check("negotiate", mt.negotiate(conn, nil, nil, nil))
  return conn
end

function client(name, addr)
  mt.macro(conn, SMFIC_CONNECT, "j", "mx.cluegetter.test", "{daemon_name}", "mx",
           "{client_addr}", addr, "_", name .. " [" .. addr .. "]")
  check("conninfo", mt.conninfo(conn, name, addr))
end

function helo(name)
  check("helo", mt.helo(conn, name))
end

function mail(sender)
  mt.macro(conn, SMFIC_MAIL, "{mail_addr}", sender)
  check("mailfrom", mt.mailfrom(conn, "<" .. sender .. ">"))
end

function rcpt(recipient)
  mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", recipient, "{rcpt_mailer}", "virtual")
  check("rcptto " .. recipient, mt.rcptto(conn, "<" .. recipient .. ">"))
end

function data(queue_id)
  mt.macro(conn, string.byte("T"), "i", queue_id or qid)
  check("data", mt.data(conn))
end

function headers(list)
  for _, h in ipairs(list) do
    check("header " .. h[1], mt.header(conn, h[1], h[2]))
  end
  check("eoh", mt.eoh(conn))
end

function body(text)
  check("body", mt.bodystring(conn, text))
end

function eom(queue_id)
  mt.macro(conn, string.byte("E"), "i", queue_id or qid)
  check("eom", mt.eom(conn))
end

-- A whole message up to (not including) the end of message.
function message(sender, recipients, queue_id)
  mail(sender)
  for _, r in ipairs(recipients) do
    rcpt(r)
    expect_reply("rcpt " .. r, "continue")
  end
  data(queue_id)
  headers({{"From", sender}, {"To", recipients[1]}, {"Subject", "miltertest " .. sender},
           {"Message-ID", "<" .. (queue_id or qid) .. "@example.org>"}})
  body("Hello from miltertest.\r\n")
end

function done()
  mt.disconnect(conn)
  mt.echo("OK")
end
