#!/bin/sh
# First start (empty data directory): create the system tables, the database and its user,
# and set root's password, on a server that listens on its socket only; then run mariadbd in
# the foreground on MARIADB_BIND_ADDRESS:MARIADB_PORT.
set -eu
datadir=/var/lib/mysql
socket=/run/mysqld/mysqld.sock
if [ ! -d "$datadir/mysql" ]; then
    echo "mariadb-entrypoint: initialising $datadir"
    mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db --auth-root-authentication-method=socket >/dev/null 2>&1
    mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket="$socket" &
    pid=$!
    for _ in $(seq 1 60); do mariadb-admin --socket="$socket" -umysql ping >/dev/null 2>&1 && break; sleep 1; done
    healthcheck_pw=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
    printf '[client]\nuser=healthcheck\npassword=%s\n' "$healthcheck_pw" > "$datadir/.my-healthcheck.cnf"
    chmod 600 "$datadir/.my-healthcheck.cnf"
    quote() { printf '%s' "$1" | sed "s/'/''/g; s/\\\\/\\\\\\\\/g"; }
    {
        if [ -n "${MARIADB_ROOT_PASSWORD:-}" ]; then
            echo "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('$(quote "$MARIADB_ROOT_PASSWORD")');"
        fi
        if [ -n "${MARIADB_DATABASE:-}" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
        fi
        # the healthcheck's own login (no privileges), so that it never logs "Access denied"
        echo "CREATE USER 'healthcheck'@'localhost' IDENTIFIED BY '$healthcheck_pw';"
        echo "CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY '$healthcheck_pw';"
        if [ -n "${MARIADB_USER:-}" ]; then
            echo "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$(quote "${MARIADB_PASSWORD:-}")';"
            [ -n "${MARIADB_DATABASE:-}" ] && echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
        fi
    } | mariadb --socket="$socket" -umysql || { echo "mariadb-entrypoint: initialisation failed" >&2; kill "$pid"; exit 1; }
    mariadb-admin --socket="$socket" -umysql shutdown
    wait "$pid" || true
    echo "mariadb-entrypoint: initialised"
fi
exec mariadbd --user=mysql --datadir="$datadir" --socket="$socket" \
    --bind-address="$MARIADB_BIND_ADDRESS" --port="$MARIADB_PORT" "$@"
