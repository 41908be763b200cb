#!/bin/sh
# The workers' addresses from the environment; DNS: RSPAMD_NAMESERVER ("host:port") when set,
# else the container's resolv.conf, with a short timeout either way so that a machine without
# DNS scans in seconds, not minutes. Runs rspamd in the foreground, logging to stderr.
set -eu
echo "bind_socket = \"$RSPAMD_LISTEN\";" > /etc/rspamd/override.d/worker-normal.inc
echo "bind_socket = \"$RSPAMD_PROXY_LISTEN\";" > /etc/rspamd/override.d/worker-proxy.inc
echo "bind_socket = \"$RSPAMD_CONTROLLER_LISTEN\";" > /etc/rspamd/override.d/worker-controller.inc
if [ -n "$RSPAMD_NAMESERVER" ]; then
    echo "dns { nameserver = [\"$RSPAMD_NAMESERVER\"]; timeout = 1s; retransmits = 1; }" > /etc/rspamd/local.d/options.inc
else
    echo "dns { timeout = 1s; retransmits = 1; }" > /etc/rspamd/local.d/options.inc
fi
echo 'type = "console"; level = "notice";' > /etc/rspamd/override.d/logging.inc
exec rspamd -f -c /etc/rspamd/rspamd.conf
