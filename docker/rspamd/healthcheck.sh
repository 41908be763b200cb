#!/bin/bash
# Healthy when the normal worker (RSPAMD_LISTEN) answers /ping with "pong".
addr=${RSPAMD_LISTEN%:*}; port=${RSPAMD_LISTEN##*:}
[ "$addr" = 0.0.0.0 ] || [ "$addr" = "*" ] && addr=127.0.0.1
exec 3<>"/dev/tcp/$addr/$port" || exit 1
printf 'GET /ping HTTP/1.0\r\n\r\n' >&3
grep -q pong <&3
