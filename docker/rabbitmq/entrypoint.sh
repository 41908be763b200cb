#!/bin/sh
# Writes rabbitmq.conf from the environment (login, listener address and port) and runs the
# node in the foreground. epmd is started by the node on ERL_EPMD_PORT, bound to the node's
# address.
set -eu
cat > /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.1 = ${RABBITMQ_NODE_IP_ADDRESS}:${RABBITMQ_NODE_PORT}
default_user = ${RABBITMQ_DEFAULT_USER}
default_pass = ${RABBITMQ_DEFAULT_PASS}
loopback_users = none
log.console = true
log.console.level = info
log.file = false
CONF
# the distribution listener on the node's address and its own port
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-} -kernel inet_dist_use_interface {$(echo "$RABBITMQ_NODE_IP_ADDRESS" | tr . ,)}"
export ERL_EPMD_ADDRESS="$RABBITMQ_NODE_IP_ADDRESS"
# the server itself: Debian's rabbitmq-server wrapper would send the log to a file
exec /usr/lib/rabbitmq/bin/rabbitmq-server
