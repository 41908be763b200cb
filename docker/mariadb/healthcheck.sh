#!/bin/sh
# Healthy once the server answers on its TCP port (during first-start initialisation it
# listens on its socket only), logging in as the user the first start made for it. Takes and
# ignores the official image's options (--connect --innodb_initialized).
host=$MARIADB_BIND_ADDRESS
[ "$host" = 0.0.0.0 ] && host=127.0.0.1
exec mariadb-admin --defaults-extra-file=/var/lib/mysql/.my-healthcheck.cnf --protocol=tcp -h "$host" -P "$MARIADB_PORT" --connect-timeout=3 ping >/dev/null 2>&1
