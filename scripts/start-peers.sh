#!/usr/bin/env bash
# start-peers.sh — install (if missing) and start (if not running) the peer
# services cluegetter's tests talk to, on 127.0.0.1 only, without systemd.
#
#   start-peers.sh [--stop] SERVICE...
#   SERVICE: rabbitmq mariadb postfix spamd rspamd clamd postsrsd tools chromium cluster | all
#
#   rabbitmq  127.0.0.1:5672 guest/guest, vhosts $PEERS_RABBITMQ_VHOSTS, management API 127.0.0.1:15672
#   mariadb   127.0.0.1:3306 root / empty password, databases $PEERS_MARIADB_DATABASES
#   postfix   127.0.0.1:$PEERS_POSTFIX_PORT, smtpd_milters=$PEERS_MILTER, log /var/log/postfix.log
#   spamd     127.0.0.1:783
#   rspamd    127.0.0.1:11333 (normal), 11332 (proxy, milter mode), 11334 (controller)
#   clamd     127.0.0.1:3310, test-only signature DB with EICAR (no freshclam)
#   postsrsd  postsrsd 1.x (install only; the SRS compatibility test runs its own instance on free
#             loopback ports with its own secret; the package's own service is never started)
#   tools     swaks miltertest python3-pika amqp-tools mmdb-bin libmaxmind-db-writer-perl curl docker-compose dnsmasq-base (install only)
#   chromium  chromium chromium-driver (install only; the auditor's browser test runs chromedriver itself)
#   cluster   rabbitmq-server mariadb-server mariadb-client galera-4 rsync iptables (install only;
#             scripts/cluster.sh runs the three-node RabbitMQ and Galera clusters with them)
#
# Idempotent: a service that already answers on its port is left alone (and
# not installed); a second run changes nothing.  Never kills a process it did
# not start: --stop only signals pids from pid files of daemons this script
# started (marker files in /run/cluegetter-peers/).  Exit status 1 if any
# requested service could not be made ready.
#
# Environment knobs (defaults):
#   PEERS_RABBITMQ_VHOSTS="cluegetter-test"   PEERS_RABBITMQ_MANAGEMENT=1
#   PEERS_MARIADB_DATABASES="cluegetter"
#   PEERS_POSTFIX_PORT=2525  PEERS_MILTER="inet:127.0.0.1:10033"  PEERS_MILTER_DEFAULT_ACTION=tempfail
#   PEERS_SPAMD_LOCAL_ONLY=1 (spamd --local: no DNS/network tests)
#   PEERS_START_TIMEOUT=180 (seconds to wait for each service)

set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

PEERS_RABBITMQ_VHOSTS=${PEERS_RABBITMQ_VHOSTS-cluegetter-test}
PEERS_RABBITMQ_MANAGEMENT=${PEERS_RABBITMQ_MANAGEMENT:-1}
PEERS_MARIADB_DATABASES=${PEERS_MARIADB_DATABASES-cluegetter}
PEERS_POSTFIX_PORT=${PEERS_POSTFIX_PORT:-2525}
PEERS_MILTER=${PEERS_MILTER:-inet:127.0.0.1:10033}
PEERS_MILTER_DEFAULT_ACTION=${PEERS_MILTER_DEFAULT_ACTION:-tempfail}
PEERS_SPAMD_LOCAL_ONLY=${PEERS_SPAMD_LOCAL_ONLY:-1}
PEERS_START_TIMEOUT=${PEERS_START_TIMEOUT:-180}

STATE_DIR=/run/cluegetter-peers
ALL_SERVICES="rabbitmq mariadb postfix spamd rspamd clamd"

say()  { printf '[start-peers] %s\n' "$*"; }
warn() { printf '[start-peers] WARNING: %s\n' "$*" >&2; }
err()  { printf '[start-peers] ERROR: %s\n' "$*" >&2; }
now()  { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || { err "must run as root"; exit 2; }

# ---------------------------------------------------------------- probes ----
# true if something LISTENs on TCP port $1 (any address, v4 or v6)
port_listening() {
    local hex; hex=$(printf ':%04X' "$1")
    awk -v p="$hex" '$4=="0A" && substr($2, length($2)-4)==p {f=1} END{exit !f}' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
# print listeners on port $1 that are NOT loopback (empty = fine); /proc/net/tcp* hold
# little-endian hex: 127.x.y.z = "zzyyxx7F", ::1 = 0..01000000, ::ffff:127.x.y.z = 0..FFFF0000zzyyxx7F
non_loopback_listeners() {
    local hex; hex=$(printf ':%04X' "$1")
    awk -v p="$hex" '$4=="0A" && substr($2, length($2)-4)==p {
        a=substr($2, 1, length($2)-5); lo=0
        if (length(a)==8 && substr(a,7,2)=="7F") lo=1
        if (a=="00000000000000000000000001000000") lo=1
        if (substr(a,1,24)=="0000000000000000FFFF0000" && substr(a,31,2)=="7F") lo=1
        if (!lo) print $2 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
# send $2 (printf format) to 127.0.0.1:$1, print up to $3 bytes of the answer (hex)
tcp_hex() {
    ( exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      [ -n "$2" ] && printf "$2" >&3
      timeout 3 head -c "$3" <&3 ) 2>/dev/null | od -An -tx1 | tr -d ' \n'
}
tcp_text() {
    ( exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      [ -n "$2" ] && printf "$2" >&3
      timeout 3 head -c "$3" <&3 ) 2>/dev/null | tr -d '\0'
}
amqp_up()    { [[ $(tcp_hex 5672 'AMQP\0\0\x09\x01' 11) == 01000000*000a000a ]]; }   # connection.start
# MariaDB sends its greeting (protocol 10 = 0x0a) on connect, or an error packet (0xff,
# e.g. "Host '127.0.0.1' is not allowed") when no account matches the client host yet
mariadb_up() { local h; h=$(tcp_hex 3306 '' 5); [[ $h == ??????000a || $h == ??????00ff ]]; }
smtp_banner() { tcp_text "$PEERS_POSTFIX_PORT" '' 4 | grep -q '^220'; }
postfix_up() { port_listening "$PEERS_POSTFIX_PORT" && postfix status >/dev/null 2>&1; }   # no SMTP connection: no milter noise
spamd_up()   { tcp_text 783 'PING SPAMC/1.5\r\n\r\n' 40 | grep -q 'PONG'; }
rspamd_up()  { tcp_text 11333 'GET /ping HTTP/1.0\r\n\r\n' 300 | grep -q 'pong'; }
clamd_up()   { [ "$(tcp_text 3310 'zPING\0' 4)" = PONG ]; }

wait_until() {  # wait_until SECONDS DESCRIPTION CMD...
    local limit=$1 what=$2; shift 2
    local end=$(( $(date +%s) + limit ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$end" ]; then err "$what not ready after ${limit}s"; return 1; fi
        sleep 0.3
    done
}

# ------------------------------------------------------------ apt helpers ---
APT_UPDATED=0
POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=/usr/sbin/policy-rc.d.start-peers-backup
POLICY_MARK="# start-peers.sh temporary policy: no service auto-start during apt-get install"

restore_policy() {
    if [ -f "$POLICY" ] && grep -qF "$POLICY_MARK" "$POLICY"; then
        rm -f "$POLICY"
        [ -e "$POLICY_BACKUP" ] && mv -f "$POLICY_BACKUP" "$POLICY"
    fi
}
trap restore_policy EXIT
trap 'restore_policy; exit 130' INT TERM

# Packages' postinst scripts would start daemons with their default (not
# loopback-only) configuration; deny that for the duration of apt-get.
deny_autostart() {
    if [ -e "$POLICY" ] && ! grep -qF "$POLICY_MARK" "$POLICY"; then
        if [ -x "$POLICY" ]; then
            "$POLICY" start-peers-probe start >/dev/null 2>&1
            [ $? -eq 101 ] && return 0                 # existing policy already denies
        fi
        mv -f "$POLICY" "$POLICY_BACKUP"
    fi
    printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" > "$POLICY"
    chmod 755 "$POLICY"
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# install_pkgs SERVICE PKG... : installs missing packages, records seconds in INSTALL_SECS
install_pkgs() {
    local svc=$1; shift
    local missing=() p t0
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    INSTALL_SECS=0
    [ ${#missing[@]} -eq 0 ] && return 0
    t0=$(now)
    say "$svc: installing ${missing[*]}"
    if [ "$APT_UPDATED" = 0 ]; then
        # an earlier run that was killed mid-install leaves dpkg half-configured, and every
        # apt-get install after it fails until this is run
        dpkg --configure -a >/tmp/start-peers-dpkg-configure.log 2>&1 || true
        apt-get update -qq >/tmp/start-peers-apt-update.log 2>&1 \
            || { err "apt-get update failed, see /tmp/start-peers-apt-update.log"; return 1; }
        APT_UPDATED=1
    fi
    deny_autostart
    if ! apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >"/tmp/start-peers-apt-$svc.log" 2>&1; then
        restore_policy
        err "$svc: apt-get install ${missing[*]} failed; last lines of /tmp/start-peers-apt-$svc.log:"
        tail -n 15 "/tmp/start-peers-apt-$svc.log" >&2
        return 1
    fi
    restore_policy
    INSTALL_SECS=$(secs "$t0" "$(now)")
    say "$svc: installed in ${INSTALL_SECS}s"
}

# write_file PATH MODE CONTENT : returns 0 if the file changed
write_file() {
    local path=$1 mode=$2 content=$3
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then return 1; fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$content" > "$path.tmp.$$" && chmod "$mode" "$path.tmp.$$" && mv -f "$path.tmp.$$" "$path"
    return 0
}

mark_started() { mkdir -p "$STATE_DIR"; echo "$2" > "$STATE_DIR/$1.started"; }

check_loopback() {  # check_loopback SERVICE PORT...
    local svc=$1 p bad; shift
    for p in "$@"; do
        bad=$(non_loopback_listeners "$p")
        [ -n "$bad" ] && warn "$svc: port $p also listens on a non-loopback address ($bad) — not started by this script?"
    done
}

# ================================================================ rabbitmq ==
rabbitmq_vhosts() {
    [ -n "$PEERS_RABBITMQ_VHOSTS" ] || return 0
    local v
    if command -v rabbitmqctl >/dev/null && rabbitmqctl -q list_vhosts >/dev/null 2>&1; then
        for v in $PEERS_RABBITMQ_VHOSTS; do
            rabbitmqctl -q add_vhost "$v" >/dev/null 2>&1
            rabbitmqctl -q set_permissions -p "$v" guest '.*' '.*' '.*' >/dev/null 2>&1 \
                || { err "rabbitmq: cannot set permissions on vhost $v"; return 1; }
        done
        say "rabbitmq: vhosts present: / $PEERS_RABBITMQ_VHOSTS"
    elif command -v curl >/dev/null && curl -sf -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1; then
        for v in $PEERS_RABBITMQ_VHOSTS; do
            curl -sf -u guest:guest -X PUT "http://127.0.0.1:15672/api/vhosts/$v" >/dev/null &&
            curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
                 -d '{"configure":".*","write":".*","read":".*"}' \
                 "http://127.0.0.1:15672/api/permissions/$v/guest" >/dev/null \
                || { err "rabbitmq: cannot create vhost $v via management API"; return 1; }
        done
        say "rabbitmq: vhosts present (via management API): / $PEERS_RABBITMQ_VHOSTS"
    else
        warn "rabbitmq: broker not managed here (no rabbitmqctl access, no management API); vhosts $PEERS_RABBITMQ_VHOSTS not created"
    fi
}

management_up() { tcp_text 15672 'GET /api/overview HTTP/1.0\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n' 12 | grep -q '^HTTP/1.. 200'; }

# The tests create a vhost each through the management API. A broker that was started by
# someone else (the machine image) may run without the plugin: enable it on the running node,
# bound to loopback, and keep it so across restarts.
rabbitmq_management() {
    [ "$PEERS_RABBITMQ_MANAGEMENT" = 1 ] || return 0
    management_up && return 0
    command -v rabbitmqctl >/dev/null || { err "rabbitmq: management API down and no rabbitmqctl to enable it"; return 1; }
    say "rabbitmq: enabling the management API on 127.0.0.1:15672"
    if ! grep -qs '^management.tcp.ip' /etc/rabbitmq/rabbitmq.conf; then
        printf '%s\n' 'management.tcp.ip = 127.0.0.1' 'management.tcp.port = 15672' >> /etc/rabbitmq/rabbitmq.conf
    fi
    rabbitmqctl -q eval 'application:set_env(rabbitmq_management, tcp_config, [{ip, "127.0.0.1"}, {port, 15672}]).' >/dev/null 2>&1
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 \
        || { err "rabbitmq: rabbitmq-plugins enable rabbitmq_management failed"; return 1; }
    wait_until 60 "rabbitmq management API" management_up
}

start_rabbitmq() {
    if amqp_up; then
        say "rabbitmq: already running on 127.0.0.1:5672"
        rabbitmq_management || return 1
        rabbitmq_vhosts; return
    fi
    if port_listening 5672; then err "rabbitmq: port 5672 is in use but does not speak AMQP"; return 1; fi
    install_pkgs rabbitmq rabbitmq-server || return 1
    # the node is rabbit@localhost: Erlang must resolve "localhost" (crash "epmd_error localhost nxdomain" otherwise)
    if ! getent hosts localhost >/dev/null; then
        warn "rabbitmq: 'localhost' does not resolve; adding '127.0.0.1 localhost' to /etc/hosts"
        echo '127.0.0.1 localhost' >> /etc/hosts
    fi
    write_file /etc/rabbitmq/rabbitmq-env.conf 644 \
'# written by start-peers.sh: loopback-only broker with a stable node name
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=5672
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"'
    write_file /etc/rabbitmq/rabbitmq.conf 644 \
'# written by start-peers.sh
listeners.tcp.default = 127.0.0.1:5672
loopback_users.guest = true
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672'
    if [ "$PEERS_RABBITMQ_MANAGEMENT" = 1 ]; then
        write_file /etc/rabbitmq/enabled_plugins 644 '[rabbitmq_management].'
    else
        write_file /etc/rabbitmq/enabled_plugins 644 '[].'
    fi
    chown rabbitmq:rabbitmq /etc/rabbitmq/enabled_plugins 2>/dev/null
    mkdir -p /run/rabbitmq /var/log/rabbitmq && chown rabbitmq:rabbitmq /run/rabbitmq /var/log/rabbitmq
    local t0; t0=$(now)
    say "rabbitmq: starting (node rabbit@localhost, log /var/log/rabbitmq/rabbit@localhost.log)"
    ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_PID_FILE=/run/rabbitmq/pid rabbitmq-server -detached \
        || { err "rabbitmq: rabbitmq-server -detached failed"; return 1; }
    if ! rabbitmqctl -q wait --timeout "$PEERS_START_TIMEOUT" /run/rabbitmq/pid >/dev/null 2>&1 \
       || ! wait_until 30 "rabbitmq AMQP port" amqp_up; then
        err "rabbitmq: did not start; last log lines:"
        tail -n 20 /var/log/rabbitmq/rabbit@localhost.log /var/log/rabbitmq/startup_err 2>/dev/null >&2
        [ /var/lib/rabbitmq/erl_crash.dump -nt /etc/rabbitmq/rabbitmq.conf ] && \
            grep -a -m1 '^Slogan' /var/lib/rabbitmq/erl_crash.dump | cut -c1-400 >&2
        return 1
    fi
    mark_started rabbitmq "$(cat /run/rabbitmq/pid)"
    say "rabbitmq: ready in $(secs "$t0" "$(now)")s (pid $(cat /run/rabbitmq/pid))"
    rabbitmq_management || return 1
    rabbitmq_vhosts
}

# (not "rabbitmqctl stop PIDFILE": it waits for the OS pid, and a zombie never goes away where PID 1 does not reap)
stop_rabbitmq() {
    rabbitmqctl -q stop || return 1
    # the epmd that rabbitmq-server spawned: ask it to exit once no Erlang node is registered any more
    local i; for i in $(seq 1 20); do
        epmd -names 2>/dev/null | grep -q '^name ' || { epmd -kill >/dev/null 2>&1; return 0; }
        sleep 0.5
    done
}

# ================================================================= mariadb ==
mysql_root_tcp() { mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u root "$@"; }

mariadb_setup() {
    command -v mariadb >/dev/null || install_pkgs mariadb mariadb-client || return 1
    if ! mysql_root_tcp -e 'SELECT 1' >/dev/null 2>&1; then
        # our own server: root@localhost authenticates by unix_socket; open root@127.0.0.1 (empty password)
        mariadb --protocol=socket -u root -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;" 2>/dev/null \
          || { err "mariadb: root@127.0.0.1 with empty password does not work and cannot be set up via the local socket"; return 1; }
        mysql_root_tcp -e 'SELECT 1' >/dev/null 2>&1 || { err "mariadb: root@127.0.0.1 still refused"; return 1; }
    fi
    local db
    for db in $PEERS_MARIADB_DATABASES; do
        mysql_root_tcp -e "CREATE DATABASE IF NOT EXISTS \`$db\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" \
            || { err "mariadb: cannot create database $db"; return 1; }
    done
    say "mariadb: root@127.0.0.1:3306 (empty password) ok; databases: $PEERS_MARIADB_DATABASES"
}

start_mariadb() {
    if mariadb_up; then
        say "mariadb: already running on 127.0.0.1:3306"
        mariadb_setup; return
    fi
    if port_listening 3306; then err "mariadb: port 3306 is in use but does not answer like MariaDB/MySQL"; return 1; fi
    install_pkgs mariadb mariadb-server mariadb-client || return 1
    write_file /etc/mysql/mariadb.conf.d/99-cluegetter-peers.cnf 644 \
'# written by start-peers.sh: loopback only, no DNS lookups, log to a file (no syslog here)
[mysqld]
bind-address      = 127.0.0.1
port              = 3306
skip-name-resolve
log-error         = /var/log/mysql/error.log

[mysqld_safe]
skip-syslog
log-error         = /var/log/mysql/error.log'
    mkdir -p /run/mysqld /var/log/mysql && chown mysql:mysql /run/mysqld /var/log/mysql
    if [ ! -d /var/lib/mysql/mysql ]; then
        say "mariadb: initialising data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/start-peers-mariadb-install-db.log 2>&1 \
            || { err "mariadb: mariadb-install-db failed, see /tmp/start-peers-mariadb-install-db.log"; return 1; }
    fi
    local t0; t0=$(now)
    say "mariadb: starting (log /var/log/mysql/error.log)"
    mysqld_safe --nowatch --user=mysql >/dev/null 2>&1 || { err "mariadb: mysqld_safe failed"; return 1; }
    if ! wait_until "$PEERS_START_TIMEOUT" "mariadb" mariadb_up; then
        tail -n 20 /var/log/mysql/error.log >&2; return 1
    fi
    mark_started mariadb "$(cat /run/mysqld/mysqld.pid 2>/dev/null)"
    say "mariadb: ready in $(secs "$t0" "$(now)")s (pid $(cat /run/mysqld/mysqld.pid 2>/dev/null))"
    mariadb_setup
}

stop_mariadb() { mariadb-admin --protocol=socket -u root shutdown; }

# ================================================================= postfix ==
# Postfix pitfall: any postconf *read* right after a "postconf -e" blocks until main.cf
# is ~2 s old (load_file(): "read the file again if it is hot").  So: read everything
# first, write all changes at once, then backdate the files.
postfix_configure() {
    mkdir -p /var/mail/cluegetter && chown 65534:65534 /var/mail/cluegetter && chmod 700 /var/mail/cluegetter
    touch /var/log/postfix.log
    local settings=(
        'myhostname = mx.cluegetter.test'
        'inet_interfaces = 127.0.0.1' 'inet_protocols = ipv4'
        'mydestination =' 'mynetworks = 127.0.0.0/8' 'relayhost ='
        'smtpd_tls_security_level = none' 'smtp_tls_security_level = none'
        'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination'
        'default_transport = discard:sink' 'relay_transport = discard:sink'
        'virtual_mailbox_domains = mailbox.test' 'virtual_mailbox_base = /var/mail/cluegetter'
        'virtual_mailbox_maps = static:mbox' 'virtual_uid_maps = static:65534' 'virtual_gid_maps = static:65534'
        "smtpd_milters = $PEERS_MILTER" 'non_smtpd_milters ='
        "milter_default_action = $PEERS_MILTER_DEFAULT_ACTION"
        'enable_long_queue_ids = yes' 'maillog_file = /var/log/postfix.log'
    )
    local names=() kv cur=() changes=() i want
    for kv in "${settings[@]}"; do names+=("${kv%% =*}"); done
    mapfile -t cur < <(postconf -h "${names[@]}")
    for i in "${!settings[@]}"; do
        kv=${settings[$i]}; want=${kv#*= }; [ "$want" = "$kv" ] && want=""
        [ "${cur[$i]-}" = "$want" ] || changes+=("$kv")
    done
    # master.cf: no port 25; one smtpd on 127.0.0.1:$PORT; nothing chrooted (the chroot
    # needs copies of /etc files that only Debian's init script/systemd unit makes).
    # "postconf -F" rewrites (and reorders) master.cf every time, so only when needed.
    local smtp25 ours others chroot_y want_m="127.0.0.1:$PEERS_POSTFIX_PORT inet n - n - - smtpd"
    smtp25=$(postconf -M smtp/inet 2>/dev/null)
    ours=$(postconf -M "127.0.0.1:$PEERS_POSTFIX_PORT/inet" 2>/dev/null | tr -s ' ')
    others=$(postconf -M | awk -v me="127.0.0.1:$PEERS_POSTFIX_PORT" '$2=="inet" && $1 ~ /^127\.0\.0\.1:[0-9]+$/ && $1 != me {print $1}')
    chroot_y=$(postconf -F '*/*/chroot' | grep -v '= n$')
    # --- writes
    [ ${#changes[@]} -eq 0 ] || postconf -e "${changes[@]}" || return 1
    [ -z "$smtp25" ] || postconf -M# smtp/inet || return 1
    for i in $others; do postconf -MX "$i/inet" || return 1; done
    [ "$ours" = "$want_m" ] || postconf -M "127.0.0.1:$PEERS_POSTFIX_PORT/inet = $want_m" || return 1
    [ -z "$chroot_y" ] || postconf -F '*/*/chroot = n' || return 1
    # Postfix re-reads a "hot" config file (mtime within the last second) in a 300 ms
    # sleep loop; backdating saves ~2 s in each of the postfix commands that follow
    touch -d '-2 seconds' /etc/postfix/main.cf /etc/postfix/master.cf
    postfix check >/dev/null || { err "postfix: 'postfix check' failed"; postfix check; return 1; }
}

start_postfix() {
    local before after
    if command -v postfix >/dev/null && postfix status >/dev/null 2>&1; then
        before=$(cat /etc/postfix/main.cf /etc/postfix/master.cf | md5sum)
        postfix_configure || return 1
        after=$(cat /etc/postfix/main.cf /etc/postfix/master.cf | md5sum)
        if [ "$before" != "$after" ]; then
            say "postfix: configuration changed, reloading"; postfix reload >/dev/null 2>&1
            sleep 1
        fi
        wait_until 20 "postfix smtpd on 127.0.0.1:$PEERS_POSTFIX_PORT" postfix_up || return 1
        say "postfix: already running (127.0.0.1:$PEERS_POSTFIX_PORT, smtpd_milters=$PEERS_MILTER, milter_default_action=$PEERS_MILTER_DEFAULT_ACTION)"
        return 0
    fi
    if port_listening "$PEERS_POSTFIX_PORT"; then err "postfix: port $PEERS_POSTFIX_PORT is in use by something else"; return 1; fi
    if ! pkg_installed postfix; then
        printf '%s\n' 'postfix postfix/main_mailer_type select Local only' \
                      'postfix postfix/mailname string cluegetter.test' | debconf-set-selections
    fi
    install_pkgs postfix postfix swaks || return 1
    postfix_configure || return 1
    local t0; t0=$(now)
    say "postfix: starting (log /var/log/postfix.log)"
    postfix start >/dev/null 2>&1 || { err "postfix: 'postfix start' failed:"; tail -n 10 /var/log/postfix.log >&2; return 1; }
    wait_until 30 "postfix smtpd on 127.0.0.1:$PEERS_POSTFIX_PORT" postfix_up || { tail -n 10 /var/log/postfix.log >&2; return 1; }
    smtp_banner || { err "postfix: no 220 banner on 127.0.0.1:$PEERS_POSTFIX_PORT"; tail -n 10 /var/log/postfix.log >&2; return 1; }
    mark_started postfix "$(cat /var/spool/postfix/pid/master.pid 2>/dev/null | tr -d ' ')"
    say "postfix: ready in $(secs "$t0" "$(now)")s (127.0.0.1:$PEERS_POSTFIX_PORT, smtpd_milters=$PEERS_MILTER, milter_default_action=$PEERS_MILTER_DEFAULT_ACTION)"
}

stop_postfix() { postfix stop; }

# =================================================================== spamd ==
start_spamd() {
    if spamd_up; then say "spamd: already running on 127.0.0.1:783"; return 0; fi
    if port_listening 783; then err "spamd: port 783 is in use but does not answer PING"; return 1; fi
    install_pkgs spamd spamd spamc || return 1
    local t0 local_opt=""; t0=$(now)
    [ "$PEERS_SPAMD_LOCAL_ONLY" = 1 ] && local_opt=--local
    say "spamd: starting (log /var/log/spamd.log)"
    spamd --daemonize --listen=127.0.0.1:783 --allowed-ips=127.0.0.1/32 $local_opt --nouser-config \
          --max-children=4 --username=debian-spamd --groupname=debian-spamd \
          --helper-home-dir=/var/lib/spamassassin --pidfile=/run/spamd.pid --syslog=/var/log/spamd.log \
        || { err "spamd: failed to start"; tail -n 20 /var/log/spamd.log >&2; return 1; }
    wait_until "$PEERS_START_TIMEOUT" "spamd" spamd_up || { tail -n 20 /var/log/spamd.log >&2; return 1; }
    mark_started spamd "$(cat /run/spamd.pid)"
    say "spamd: ready in $(secs "$t0" "$(now)")s (pid $(cat /run/spamd.pid))"
}

stop_spamd() { kill "$(cat /run/spamd.pid)"; }

# ================================================================== rspamd ==
start_rspamd() {
    if rspamd_up; then say "rspamd: already running on 127.0.0.1:11333"; return 0; fi
    if port_listening 11333; then err "rspamd: port 11333 is in use but does not answer /ping"; return 1; fi
    install_pkgs rspamd rspamd || return 1
    write_file /etc/rspamd/override.d/worker-normal.inc 644 'bind_socket = "127.0.0.1:11333";'
    write_file /etc/rspamd/override.d/worker-proxy.inc 644 'bind_socket = "127.0.0.1:11332";'
    write_file /etc/rspamd/override.d/worker-controller.inc 644 'bind_socket = "127.0.0.1:11334";'
    # No network here: lookups against the system resolver time out (about 1 s a message). A local
    # dnsmasq on 127.0.0.2:53 answers NXDOMAIN at once, so rspamd scans in tens of milliseconds.
    start_local_dns || return 1
    write_file /etc/rspamd/local.d/options.inc 644 'dns { nameserver = ["127.0.0.2:53"]; timeout = 1s; retransmits = 1; }'
    rspamadm configtest >/dev/null 2>&1 || { err "rspamd: configtest failed:"; rspamadm configtest >&2; return 1; }
    mkdir -p /run/rspamd && chown _rspamd:_rspamd /run/rspamd
    local t0; t0=$(now)
    say "rspamd: starting (log /var/log/rspamd/rspamd.log; the very first start compiles hyperscan caches, ~20 s)"
    rspamd -c /etc/rspamd/rspamd.conf -u _rspamd -g _rspamd >/dev/null 2>&1 \
        || { err "rspamd: failed to start"; tail -n 20 /var/log/rspamd/rspamd.log >&2; return 1; }
    wait_until "$PEERS_START_TIMEOUT" "rspamd" rspamd_up || { tail -n 20 /var/log/rspamd/rspamd.log >&2; return 1; }
    wait_until 30 "rspamd proxy on 11332" port_listening 11332 || return 1
    mark_started rspamd "$(cat /run/rspamd/rspamd.pid)"
    say "rspamd: ready in $(secs "$t0" "$(now)")s (pid $(cat /run/rspamd/rspamd.pid))"
}

dns_up() {
    python3 - <<'PY' 2>/dev/null
import socket, struct
q = struct.pack('>HHHHHH', 7, 0x0100, 1, 0, 0, 0) + b'\x04test\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, ('127.0.0.2', 53)); s.recv(512)
PY
}
start_local_dns() {
    dns_up && return 0
    install_pkgs dns dnsmasq-base || return 1
    dnsmasq --no-resolv --no-hosts --listen-address=127.0.0.2 --bind-interfaces --port=53 \
            --pid-file=/run/dnsmasq-peers.pid --address=/#/ --user=root \
        || { err "dns: dnsmasq failed to start on 127.0.0.2:53"; return 1; }
    wait_until 10 "dns on 127.0.0.2:53" dns_up || return 1
}

stop_rspamd() { kill "$(cat /run/rspamd/rspamd.pid)"; }

# =================================================================== clamd ==
start_clamd() {
    if clamd_up; then say "clamd: already running on 127.0.0.1:3310"; return 0; fi
    if port_listening 3310; then err "clamd: port 3310 is in use but does not answer PING"; return 1; fi
    install_pkgs clamd clamav-daemon clamdscan || return 1
    local db=/var/lib/clamav-peers e1 e2 hex
    # EICAR test string, assembled from two halves so that this script is not itself "infected"
    e1='X5O!P%@AP[4\PZX54(P^)7CC)7}$'; e2='EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
    hex=$(printf '%s%s' "$e1" "$e2" | od -An -tx1 | tr -d ' \n')
    mkdir -p "$db" /run/clamav /var/log/clamav
    write_file "$db/peers-eicar.ndb" 644 "Peers.Test.EICAR-NDB:0:*:$hex"
    write_file "$db/peers-eicar.hdb" 644 "$(printf '%s%s' "$e1" "$e2" | md5sum | cut -d' ' -f1):68:Peers.Test.EICAR-HDB"
    chown -R clamav:clamav "$db" /run/clamav /var/log/clamav
    write_file /etc/clamav/clamd-peers.conf 644 \
'# written by start-peers.sh: clamd on 127.0.0.1:3310 with a local test-only signature DB
DatabaseDirectory /var/lib/clamav-peers
TCPSocket 3310
TCPAddr 127.0.0.1
User clamav
Foreground false
PidFile /run/clamav/clamd-peers.pid
LogFile /var/log/clamav/clamd-peers.log
LogTime true
LogClean false
ScanMail true
ScanArchive true
StreamMaxLength 25M
MaxThreads 4
SelfCheck 0
ExtendedDetectionInfo true'
    local t0; t0=$(now)
    say "clamd: starting (log /var/log/clamav/clamd-peers.log)"
    clamd -c /etc/clamav/clamd-peers.conf \
        || { err "clamd: failed to start"; tail -n 20 /var/log/clamav/clamd-peers.log >&2; return 1; }
    wait_until "$PEERS_START_TIMEOUT" "clamd" clamd_up || { tail -n 20 /var/log/clamav/clamd-peers.log >&2; return 1; }
    mark_started clamd "$(cat /run/clamav/clamd-peers.pid)"
    say "clamd: ready in $(secs "$t0" "$(now)")s (pid $(cat /run/clamav/clamd-peers.pid))"
}

stop_clamd() { kill "$(cat /run/clamav/clamd-peers.pid)"; }

# =================================================================== tools ==
start_tools() {
    install_pkgs tools swaks miltertest python3-pika amqp-tools mmdb-bin libmaxmind-db-writer-perl curl docker-compose dnsmasq-base || return 1
    say "tools: swaks miltertest python3-pika amqp-tools mmdb-bin libmaxmind-db-writer-perl curl docker-compose dnsmasq-base installed"
}

# ================================================================ postsrsd ==
# Debian's PostSRSd (1.10 on bookworm): check-workers' SRS tests compare our addresses with its.
# Install only, with the service's auto-start denied (deny_autostart): each test starts
# `postsrsd -f PORT -r PORT -l 127.0.0.1 -s FILE -d DOMAIN` itself.
start_postsrsd() {
    install_pkgs postsrsd postsrsd || return 1
    [ -x /usr/sbin/postsrsd ] || { err "postsrsd: /usr/sbin/postsrsd missing after install"; return 1; }
    local version; version=$(/usr/sbin/postsrsd -v 2>/dev/null)
    case $version in
        1.*) say "postsrsd: $version installed (not started; tests run their own)" ;;
        *) err "postsrsd: version '$version', the tests expect 1.x"; return 1 ;;
    esac
}

# ================================================================ chromium ==
start_chromium() {
    install_pkgs chromium chromium chromium-driver || return 1
    command -v chromedriver >/dev/null || { err "chromium: chromedriver not on PATH after install"; return 1; }
    say "chromium: $(chromium --version 2>/dev/null | head -n 1), chromedriver installed"
}

# ================================================================= cluster ==
# What scripts/cluster.sh needs: the brokers and servers (their packages only: the system
# services stay as they are), Galera's provider, rsync for its state transfers and iptables
# for its partitions.
start_cluster() {
    install_pkgs cluster rabbitmq-server mariadb-server mariadb-client galera-4 rsync iptables || return 1
    local lib
    lib=$(dpkg -L galera-4 2>/dev/null | grep -m1 '/libgalera_smm\.so$')
    [ -n "$lib" ] && [ -f "$lib" ] || { err "cluster: libgalera_smm.so not found in package galera-4"; return 1; }
    say "cluster: rabbitmq-server, mariadb-server, galera-4 ($lib), rsync, iptables installed"
}

# ==================================================================== main ==
ports_of() {
    case $1 in
        rabbitmq) echo 5672 4369 25672 15672 ;; mariadb) echo 3306 ;; postfix) echo "$PEERS_POSTFIX_PORT" ;;
        spamd) echo 783 ;; rspamd) echo 11332 11333 11334 ;; clamd) echo 3310 ;; *) ;;
    esac
}
up_of() {
    case $1 in
        rabbitmq) amqp_up ;; mariadb) mariadb_up ;; postfix) port_listening "$PEERS_POSTFIX_PORT" ;;
        spamd) spamd_up ;; rspamd) rspamd_up ;; clamd) clamd_up ;; *) return 1 ;;
    esac
}

stop_service() {
    local svc=$1 marker="$STATE_DIR/$1.started" p
    if [ ! -f "$marker" ]; then say "$svc: not started by this script; leaving it alone"; return 0; fi
    say "$svc: stopping (started by this script, pid $(cat "$marker"))"
    "stop_$svc" >/dev/null 2>&1 || { err "$svc: stop command failed"; return 1; }
    local end=$(( $(date +%s) + 60 ))
    while up_of "$svc"; do
        [ "$(date +%s)" -ge "$end" ] && { err "$svc: still answering 60 s after stop"; return 1; }
        sleep 0.3
    done
    rm -f "$marker"
    say "$svc: stopped"
}

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

MODE=start
[ $# -gt 0 ] && [ "$1" = "--stop" ] && { MODE=stop; shift; }
[ $# -gt 0 ] || usage
SERVICES=()
for a in "$@"; do
    case $a in
        all) SERVICES+=($ALL_SERVICES) ;;
        rabbitmq|mariadb|postfix|spamd|rspamd|clamd|postsrsd|tools|chromium|cluster) SERVICES+=("$a") ;;
        -h|--help) usage ;;
        *) err "unknown service '$a' (known: $ALL_SERVICES postsrsd tools chromium cluster all)"; exit 2 ;;
    esac
done

FAILED=()
for svc in "${SERVICES[@]}"; do
    if [ "$MODE" = stop ]; then
        case $svc in tools|chromium|cluster|postsrsd) continue ;; esac
        stop_service "$svc" || FAILED+=("$svc")
        continue
    fi
    t0=$(now)
    if "start_$svc"; then
        check_loopback "$svc" $(ports_of "$svc")
        say "$svc: OK ($(secs "$t0" "$(now)")s total)"
    else
        err "$svc: FAILED to install/start (see messages above)"
        FAILED+=("$svc")
    fi
done

if [ ${#FAILED[@]} -gt 0 ]; then
    err "failed: ${FAILED[*]}"
    exit 1
fi
say "all requested services are $([ "$MODE" = stop ] && echo stopped || echo ready): ${SERVICES[*]}"
