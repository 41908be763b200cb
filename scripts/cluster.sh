#!/usr/bin/env bash
# cluster.sh — a three-node RabbitMQ cluster and a three-node MariaDB Galera cluster on one
# machine, loopback only, for tests and for trying cluegetter out. As root.
#
#   cluster.sh start   DIR                     start both clusters (always fresh), wait until all six
#                                              nodes are up and clustered, write DIR/cluster.env and
#                                              print the [broker] and [database] url lists
#   cluster.sh stop    DIR                     stop every node, heal isolations; no process is left
#   cluster.sh status  DIR                     nodes, cluster membership, isolation, total RSS
#   cluster.sh kill9   DIR rabbit|galera N     kill -9 node N (1, 2 or 3)
#   cluster.sh restart DIR rabbit|galera N     start node N again; waits until it is back in its cluster
#   cluster.sh isolate DIR N [rabbit|galera]   iptables: cut node N off from the other nodes and from
#                                              clients, both directions (default: both kinds of node N)
#   cluster.sh heal    DIR [N]                 remove the isolation of node N (default: every node)
#   cluster.sh rabbitmqctl DIR N ARGS...       rabbitmqctl against rabbit node N
#   cluster.sh mariadb     DIR N ARGS...       mariadb client on galera node N (its socket, as root)
#
# Argument order: COMMAND, then DIR (absolute; created; empty or made by this script), then the
# rest. Node N (1..3) of either cluster lives on its own loopback address 127.0.0.(N+1):
#
#   rabbit N   node cgN@127.0.0.(N+1) (long names), AMQP and distribution bound to that address
#              (inet_dist_use_interface, inet_dist_connect_options), its own epmd on a free port
#              (ERL_EPMD_PORT), so it never mixes with the system broker on 127.0.0.1:5672;
#              +S 1:1, unbound schedulers, net_ticktime 8 s, pause_minority, join_cluster.
#              User cluegetter/cluegetter (administrator, full permissions on vhost "/").
#              Management API on 127.0.0.(N+1):RABBIT_MGMT_PORTS (CLUSTER_MANAGEMENT=0: none).
#   galera N   mariadbd as user mysql on 127.0.0.(N+1), gcomm:// list of the three, rsync SST,
#              innodb_flush_log_at_trx_commit=1, small buffers; root with no password from
#              127.0.0.%; database "cluegetter" created.
#
# DIR/cluster.env (sh syntax, lists space-separated in node order 1 2 3) holds RABBIT_HOSTS,
# RABBIT_PORTS, RABBIT_PIDS, RABBIT_NODES, RABBIT_DIST_PORTS, RABBIT_MGMT_PORTS, RABBIT_EPMD_PORT,
# GALERA_HOSTS, GALERA_PORTS, GALERA_PIDS, GALERA_SOCKETS, GALERA_GCOMM_PORTS, BROKER_URLS and
# DATABASE_URLS; kill9 and restart keep the pids current. Logs: DIR/rabbitN/log/, DIR/galeraN/error.log.
#
# isolate: a chain of its own per node (cgc-<hash of DIR>-nN) jumped to from INPUT and OUTPUT,
# dropping TCP from or to 127.0.0.(N+1) on the cluster's ports of that kind, so other services on
# the same address (start-peers.sh's dnsmasq on 127.0.0.2:53) keep working. heal deletes exactly
# that chain and its jumps. The isolated rabbit node pauses (pause_minority: its AMQP port closes),
# an isolated galera node goes non-Primary; the other two carry on.
#
# Processes: every node runs under one small per-cluster reaper (perl, PR_SET_CHILD_SUBREAPER) that
# collects its exited processes, because PID 1 does not reap here (see PEERS.md). After stop the
# reaper itself is the one defunct entry left behind (its parent is PID 1).
#
# Environment: CLUSTER_START_TIMEOUT=180 (seconds per wait), CLUSTER_MANAGEMENT=1,
# CLUSTER_PORT_MIN=20000 CLUSTER_PORT_MAX=32000 (free ports are picked in there, below the
# ephemeral range). Needs rabbitmq-server, mariadb-server (galera-4, rsync), iptables, perl:
# scripts/start-peers.sh cluster installs them.

set -uo pipefail
export LC_ALL=C
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

CLUSTER_START_TIMEOUT=${CLUSTER_START_TIMEOUT:-180}
CLUSTER_MANAGEMENT=${CLUSTER_MANAGEMENT:-1}
CLUSTER_PORT_MIN=${CLUSTER_PORT_MIN:-20000}
CLUSTER_PORT_MAX=${CLUSTER_PORT_MAX:-32000}
NODES="1 2 3"
REGISTRY=/run/cluegetter-cluster      # one file per running cluster: its DIR (ports are kept apart)
RABBIT_USER=cluegetter
RABBIT_PASSWORD=cluegetter
DATABASE=cluegetter
MARKER=.cluster-sh                     # DIR/$MARKER: this script made DIR's contents

say()  { printf '[cluster] %s\n' "$*"; }
warn() { printf '[cluster] WARNING: %s\n' "$*" >&2; }
err()  { printf '[cluster] ERROR: %s\n' "$*" >&2; }
die()  { err "$*"; exit 1; }
now()  { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

addr_of()     { echo "127.0.0.$(( $1 + 1 ))"; }
rabbit_name() { echo "cg$1@$(addr_of "$1")"; }
# shellcheck disable=SC2048,SC2086 # the list is split on purpose
nth()         { local i=$1; shift; set -- $*; eval "echo \${$i}"; }   # nth 2 "a b c" -> b

# ------------------------------------------------------------------ processes ----
# A process is alive if it exists and is no zombie (kill -0 succeeds on zombies).
alive() {
    local st
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
# Live descendants of pid $1 (not $1 itself).
descendants() {
    awk '{ pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " "); print pid, f[1], f[2] }' \
        /proc/[0-9]*/stat 2>/dev/null \
    | awk -v root="$1" '{ ppid[$1] = $3; st[$1] = $2 }
        END { for (p in ppid) { q = p; while ((q in ppid) && q != root && q > 1) q = ppid[q]
                                if (q == root && p != root && st[p] != "Z") print p } }'
}
not_alive() { ! alive "$1"; }
# Live processes that work in DIR or name it (all of the cluster's: the nodes run in DIR/<node>,
# the reaper in DIR, epmd names its port), as "pid command" lines.
dir_processes() {
    local p cwd args
    for p in /proc/[0-9]*; do
        p=${p#/proc/}; [ "$p" = $$ ] && continue
        alive "$p" || continue
        cwd=$(readlink "/proc/$p/cwd" 2>/dev/null)
        args=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)
        case "$cwd/" in "$DIR"/*) ;; *)
            case "$args" in *"$DIR"/*|*"epmd -port ${RABBIT_EPMD_PORT:-none} "*) ;; *) continue ;; esac ;;
        esac
        echo "$p ${args:0:100}"
    done
}
# true once nothing but epmd runs under the reaper $1
only_epmd_left() { local p; for p in $(descendants "$1"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = epmd ] || return 1; done; }
rss_kb() { local t=0 p r; for p in "$@"; do r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null); t=$(( t + ${r:-0} )); done; echo "$t"; }

# ----------------------------------------------------------------------- ports ----
# Local ports of every TCP/UDP socket (any state, any address).
used_ports() {
    local h
    for h in $(awk 'FNR > 1 { n = split($2, a, ":"); print a[n] }' /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null | sort -u); do
        echo $(( 16#$h ))
    done
}
# Ports recorded by the other running clusters (a killed node's ports are not listening).
registered_ports() {
    local f d
    for f in "$REGISTRY"/*; do
        [ -f "$f" ] || continue
        d=$(cat "$f"); [ "$d" = "$DIR" ] && continue
        [ -f "$d/cluster.env" ] && (. "$d/cluster.env"; echo "$ALL_PORTS") | tr ' ' '\n'
    done
}
# pick_ports COUNT: COUNT distinct free ports; 25672 (the system node's distribution port) never.
pick_ports() {
    local count=$1 span=$(( CLUSTER_PORT_MAX - CLUSTER_PORT_MIN )) p i out=()
    declare -A taken=([25672]=1)
    for p in $(used_ports) $(registered_ports); do taken[$p]=1; done
    p=$(( CLUSTER_PORT_MIN + RANDOM % span ))
    for (( i = 0; i < span && ${#out[@]} < count; i++ )); do
        p=$(( p + 1 )); [ "$p" -gt "$CLUSTER_PORT_MAX" ] && p=$CLUSTER_PORT_MIN
        [ -n "${taken[$p]:-}" ] && continue
        taken[$p]=1; out+=("$p")
    done
    [ ${#out[@]} -eq "$count" ] || die "not enough free ports in $CLUSTER_PORT_MIN..$CLUSTER_PORT_MAX"
    echo "${out[*]}"
}
# listening ADDR PORT: a TCP socket LISTENs on exactly ADDR:PORT (from /proc, so iptables cannot hide it)
listening() {
    local hex a b c d
    IFS=. read -r a b c d <<< "$1"
    hex=$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$2")
    awk -v h="$hex" '$4 == "0A" && $2 == h { f = 1 } END { exit !f }' /proc/net/tcp
}
amqp_up() {   # answers with connection.start
    local h
    h=$( ( exec 3<>"/dev/tcp/$1/$2" || exit 1; printf 'AMQP\0\0\x09\x01' >&3; timeout 3 head -c 11 <&3 ) 2>/dev/null | od -An -tx1 | tr -d ' \n')
    [[ $h == 01000000*000a000a ]]
}

wait_until() {  # wait_until SECONDS DESCRIPTION CMD...
    local limit=$1 what=$2; shift 2
    local end=$(( $(date +%s) + limit ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$end" ]; then err "$what: not ready after ${limit}s"; return 1; fi
        sleep 0.3
    done
}

# ---------------------------------------------------------------------- reaper ----
# Sets PR_SET_CHILD_SUBREAPER, so every orphan of the nodes it starts becomes its child and is
# reaped; runs each line written to DIR/reaper.fifo as "sh -c LINE" in a session of its own;
# exits after the line "quit" once it has no children left.
REAPER_PL='
use strict; use warnings; use POSIX qw(setsid WNOHANG); use IO::Select;
my ($fifo) = @ARGV; $0 = "cluster.sh-reaper $fifo";
my $nr = eval { require "syscall.ph"; &SYS_prctl() }            # syscall.ph is not in perl-base
    // { x86_64 => 157, aarch64 => 167 }->{(POSIX::uname())[4]} // die "prctl: unknown syscall number\n";
syscall($nr, 36, 1, 0, 0, 0) == 0 or die "prctl(PR_SET_CHILD_SUBREAPER): $!\n";
open(my $in, "+<", $fifo) or die "open $fifo: $!\n";
my $sel = IO::Select->new($in); my $buf = ""; my $quit = 0;
$SIG{TERM} = sub { $quit = 1 }; $SIG{INT} = "IGNORE"; $SIG{HUP} = "IGNORE";
while (1) {
    if ($sel->can_read(0.3)) {
        sysread($in, $buf, 4096, length $buf);
        while ($buf =~ s/^([^\n]*)\n//) {
            my $line = $1;
            if ($line eq "quit") { $quit = 1; next; }
            my $pid = fork();
            if (defined $pid && $pid == 0) { setsid(); exec("/bin/sh", "-c", $line) or POSIX::_exit(127); }
        }
    }
    1 while waitpid(-1, WNOHANG) > 0;
    last if $quit && waitpid(-1, WNOHANG) == -1;
}
'
reaper_pid() { local p; p=$(cat "$DIR/reaper.pid" 2>/dev/null) && alive "$p" && echo "$p"; }
start_reaper() {
    rm -f "$DIR/reaper.fifo"; mkfifo -m 600 "$DIR/reaper.fifo" || die "mkfifo $DIR/reaper.fifo"
    (cd "$DIR" && exec setsid perl -e "$REAPER_PL" "$DIR/reaper.fifo" </dev/null >>"$DIR/reaper.log" 2>&1) &
    echo $! > "$DIR/reaper.pid"
    sleep 0.2
    reaper_pid >/dev/null || die "the reaper did not start; see $DIR/reaper.log"
}
spawn() {   # spawn COMMAND-LINE: run it under the reaper
    reaper_pid >/dev/null || die "the cluster's reaper is not running (cluster stopped?)"
    timeout 5 sh -c 'printf "%s\n" "$1" > "$2"' sh "$*" "$DIR/reaper.fifo" || die "cannot talk to the reaper"
}

# -------------------------------------------------------------------- rabbitmq ----
rabbit_env_file() { echo "$DIR/rabbit$1/node.env"; }
# rctl N CMD ARGS...: a RabbitMQ CLI tool against node N (clean environment plus the node's)
rctl() {
    local n=$1 tool=$2; shift 2
    env -i PATH="$PATH" LC_ALL=C.UTF-8 LANG=C.UTF-8 sh -c 'set -a; . "$1"; set +a; shift; exec "$@"' sh \
        "$(rabbit_env_file "$n")" "/usr/lib/rabbitmq/bin/$tool" "$@"
}
rabbit_pid() { local p; p=$(cat "$DIR/rabbit$1/pid" 2>/dev/null) && alive "$p" && echo "$p"; }
# number of running nodes in the cluster as node N sees it (empty if it cannot say)
rabbit_running_count() {
    local json
    json=$(rctl "$1" rabbitmqctl -q -t "${2:-10}" cluster_status --formatter json 2>/dev/null) || return 0
    printf '%s' "$json" | grep -o '"running_nodes":\[[^]]*\]' | grep -o '@' | wc -l
}

write_rabbit_node() {
    local n=$1 a; a=$(addr_of "$n")
    local d=$DIR/rabbit$n amqp dist mgmt ip
    amqp=$(nth "$n" "$RABBIT_PORTS"); dist=$(nth "$n" "$RABBIT_DIST_PORTS"); mgmt=$(nth "$n" "$RABBIT_MGMT_PORTS")
    ip="{${a//./,}}"
    mkdir -p "$d/mnesia" "$d/log"
    cat > "$d/node.env" <<EOF
# written by cluster.sh: rabbit node $n (sourced by run.sh and by the CLI wrapper)
HOME=$DIR/rabbit-home
ERL_EPMD_PORT=$RABBIT_EPMD_PORT
RABBITMQ_NODENAME=$(rabbit_name "$n")
RABBITMQ_USE_LONGNAME=true
RABBITMQ_NODE_IP_ADDRESS=$a
RABBITMQ_NODE_PORT=$amqp
RABBITMQ_DIST_PORT=$dist
RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
RABBITMQ_MNESIA_BASE=$d/mnesia
RABBITMQ_LOG_BASE=$d/log
RABBITMQ_PID_FILE=$d/pid
RABBITMQ_SCHEDULER_BIND_TYPE=u
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 1:1 +SDcpu 1:1 +SDio 4 -kernel inet_dist_use_interface $ip -kernel inet_dist_connect_options [{ip,$ip}] -kernel net_ticktime 8"
RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    echo '# written by cluster.sh: everything is in node.env' > "$d/rabbitmq-env.conf"
    {
        echo "# written by cluster.sh: rabbit node $n"
        echo "listeners.tcp.default = $a:$amqp"
        echo "cluster_partition_handling = pause_minority"
        echo "loopback_users.guest = true"
        echo "disk_free_limit.absolute = 50MB"
        echo "log.console = false"
        echo "log.file.level = info"
        # node 1 creates the user at boot (no CLI calls); 2 and 3 get it when they join
        [ "$n" = 1 ] && echo "load_definitions = $d/definitions.json"
        if [ "$CLUSTER_MANAGEMENT" = 1 ]; then
            echo "management.tcp.ip = $a"
            echo "management.tcp.port = $mgmt"
        fi
    } > "$d/rabbitmq.conf"
    cat > "$d/definitions.json" <<EOF
{"users": [{"name": "$RABBIT_USER", "password": "$RABBIT_PASSWORD", "tags": "administrator"},
           {"name": "guest", "password": "guest", "tags": "administrator"}],
 "vhosts": [{"name": "/"}],
 "permissions": [{"user": "$RABBIT_USER", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
                 {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]}
EOF
    if [ "$CLUSTER_MANAGEMENT" = 1 ]; then echo '[rabbitmq_management].' > "$d/enabled_plugins"; else echo '[].' > "$d/enabled_plugins"; fi
    cat > "$d/run.sh" <<EOF
#!/bin/sh
# written by cluster.sh: rabbit node $n in the foreground, as user rabbitmq (run by the reaper)
cd "$d" || exit 1
exec env -i PATH="$PATH" LC_ALL=C.UTF-8 LANG=C.UTF-8 sh -c 'set -a; . "$d/node.env"; set +a; exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server' >>"$d/log/stdout.log" 2>&1
EOF
    chmod 755 "$d/run.sh"
    chown -R rabbitmq:rabbitmq "$d"
}

start_rabbit_node() { rm -f "$DIR/rabbit$1/pid"; spawn "$DIR/rabbit$1/run.sh"; }

wait_rabbit_up() {
    local n=$1 a p; a=$(addr_of "$n"); p=$(nth "$n" "$RABBIT_PORTS")
    if ! wait_until "$CLUSTER_START_TIMEOUT" "rabbit node $n ($a:$p)" amqp_up "$a" "$p"; then
        tail -n 20 "$DIR/rabbit$n/log/"*.log >&2; return 1
    fi
}

rabbit_join() {   # (start_app logs harmless errors about tables on nodes still joining: shown on failure only)
    local n=$1 out
    out=$( { rctl "$n" rabbitmqctl -q stop_app &&
             rctl "$n" rabbitmqctl -q join_cluster "$(rabbit_name 1)" &&
             rctl "$n" rabbitmqctl -q start_app; } 2>&1 ) \
        || { printf '%s\n' "$out" >&2; err "rabbit node $n: join_cluster $(rabbit_name 1) failed"; return 1; }
}

rabbit_has_count() { [ "$(rabbit_running_count "$1")" = "$2" ]; }

# ---------------------------------------------------------------------- galera ----
galera_lib() {
    local f
    for f in /usr/lib/galera/libgalera_smm.so /usr/lib/libgalera_smm.so $(dpkg -L galera-4 2>/dev/null | grep '/libgalera_smm\.so$'); do
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}
gsql() {   # gsql N ARGS...: the mariadb client on node N's socket, as root (unix_socket)
    local n=$1; shift
    mariadb --no-defaults --socket="$DIR/galera$n/mysqld.sock" -u root "$@"
}
galera_pid() { local p; p=$(cat "$DIR/galera$1/mysqld.pid" 2>/dev/null) && alive "$p" && echo "$p"; }
# "size state status" of node N, e.g. "3 Synced Primary"
galera_state() {
    gsql "$1" --connect-timeout=3 -N -B -e "SHOW GLOBAL STATUS WHERE Variable_name IN
        ('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_cluster_status')" 2>/dev/null \
      | awk '{ v[$1] = $2 } END { if (length(v)) print v["wsrep_cluster_size"], v["wsrep_local_state_comment"], v["wsrep_cluster_status"] }'
}
galera_synced() { local s; s=$(galera_state "$1"); [[ $s == "$2 Synced Primary" ]]; }

write_galera_node() {
    local n=$1 a d port gcomm ist sst addrs="" i
    d=$DIR/galera$n    a=$(addr_of "$n")
    port=$(nth "$n" "$GALERA_PORTS"); gcomm=$(nth "$n" "$GALERA_GCOMM_PORTS")
    ist=$(nth "$n" "$GALERA_IST_PORTS"); sst=$(nth "$n" "$GALERA_SST_PORTS")
    for i in $NODES; do addrs="$addrs${addrs:+,}$(addr_of "$i"):$(nth "$i" "$GALERA_GCOMM_PORTS")"; done
    mkdir -p "$d/data"
    cat > "$d/my.cnf" <<EOF
# written by cluster.sh: galera node $n (mariadbd --defaults-file: nothing from /etc/mysql is read)
[mysqld]
user                    = mysql
datadir                 = $d/data
socket                  = $d/mysqld.sock
pid-file                = $d/mysqld.pid
log-error               = $d/error.log
bind-address            = $a
port                    = $port
skip-name-resolve
performance_schema      = OFF
max_connections         = 200
default_storage_engine  = InnoDB
binlog_format           = ROW
innodb_autoinc_lock_mode = 2
innodb_flush_log_at_trx_commit = 1
innodb_buffer_pool_size = 32M
innodb_log_file_size    = 16M
innodb_log_buffer_size  = 4M
key_buffer_size         = 1M
aria_pagecache_buffer_size = 8M
query_cache_size        = 0
wsrep_on                = ON
wsrep_provider          = $GALERA_LIB
wsrep_cluster_name      = cluegetter-$(dir_hash)
wsrep_cluster_address   = gcomm://$addrs
wsrep_node_name         = galera$n
wsrep_node_address      = $a:$gcomm
wsrep_node_incoming_address = $a:$port
wsrep_sst_method        = rsync
wsrep_sst_receive_address = $a:$sst
wsrep_slave_threads     = 1
wsrep_provider_options  = "gmcast.listen_addr=tcp://$a:$gcomm;ist.recv_addr=$a:$ist;gcache.size=32M"
EOF
    cat > "$d/run.sh" <<EOF
#!/bin/sh
# written by cluster.sh: galera node $n in the foreground (mariadbd switches to user mysql); run by the reaper
cd "$d" || exit 1
exec env -i PATH="$PATH" LC_ALL=C.UTF-8 /usr/sbin/mariadbd --defaults-file="$d/my.cnf" "\$@" >>"$d/stdout.log" 2>&1
EOF
    chmod 755 "$d/run.sh"
    chown -R mysql:mysql "$d"
}

start_galera_node() { rm -f "$DIR/galera$1/mysqld.pid"; spawn "$DIR/galera$1/run.sh" "${@:2}"; }

wait_galera() {   # wait_galera N SIZE
    if ! wait_until "$CLUSTER_START_TIMEOUT" "galera node $1 (synced, cluster size $2)" galera_synced "$1" "$2"; then
        tail -n 20 "$DIR/galera$1/error.log" >&2; return 1
    fi
}

# ------------------------------------------------------------------- iptables ----
dir_hash() { printf '%s' "$DIR" | md5sum | cut -c1-8; }
chain_of() { echo "cgc-$(dir_hash)-n$1"; }
isolated() { iptables -n -L "$(chain_of "$1")" >/dev/null 2>&1; }
# isolated_kind N KIND: node N is isolated for that kind of node
isolated_kind() { iptables -S "$(chain_of "$1")" 2>/dev/null | grep -q -- "--ports $(ports_of_kind "$2") "; }
# ports_of_kind rabbit|galera: every listening port of that kind, comma-separated
ports_of_kind() {
    case $1 in
        rabbit) echo "$RABBIT_PORTS $RABBIT_DIST_PORTS $RABBIT_MGMT_PORTS" ;;
        galera) echo "$GALERA_PORTS $GALERA_GCOMM_PORTS $GALERA_IST_PORTS $GALERA_SST_PORTS" ;;
    esac | tr -s ' ' '\n' | grep -v '^$' | paste -sd, -
}
isolate_node() {
    local n=$1 kinds=${2:-rabbit galera} c a k
    c=$(chain_of "$n"); a=$(addr_of "$n")
    command -v iptables >/dev/null || die "iptables is not installed (scripts/start-peers.sh cluster)"
    isolated "$n" && heal_node "$n"
    iptables -N "$c" || die "iptables -N $c failed"
    for k in $kinds; do
        iptables -A "$c" -s "$a" -p tcp -m multiport --ports "$(ports_of_kind "$k")" -j DROP &&
        iptables -A "$c" -d "$a" -p tcp -m multiport --ports "$(ports_of_kind "$k")" -j DROP || die "iptables rules for $c failed"
    done
    iptables -I INPUT 1 -j "$c" && iptables -I OUTPUT 1 -j "$c" || die "iptables jumps to $c failed"
    say "isolated node $n ($a, $kinds) with chain $c"
}
heal_node() {
    local n=$1 c; c=$(chain_of "$n")
    isolated "$n" || return 0
    while iptables -D INPUT -j "$c" 2>/dev/null; do :; done
    while iptables -D OUTPUT -j "$c" 2>/dev/null; do :; done
    iptables -F "$c" && iptables -X "$c" || { err "cannot delete chain $c"; return 1; }
    say "healed node $n ($(addr_of "$n")): chain $c removed"
}

# ------------------------------------------------------------------ cluster.env ----
load_env() {
    [ -f "$DIR/cluster.env" ] || die "$DIR/cluster.env not found (start the cluster first)"
    . "$DIR/cluster.env"
}
write_env() {
    local n rp="" gp="" p
    for n in $NODES; do
        p=$(rabbit_pid "$n"); rp="$rp${rp:+ }${p:--}"
        p=$(galera_pid "$n"); gp="$gp${gp:+ }${p:--}"
    done
    RABBIT_PIDS=$rp; GALERA_PIDS=$gp
    cat > "$DIR/cluster.env.tmp" <<EOF
# written by cluster.sh (sh syntax); lists are in node order 1 2 3; a pid "-" is a node that is down
CLUSTER_DIR="$DIR"
RABBIT_HOSTS="$RABBIT_HOSTS"
RABBIT_PORTS="$RABBIT_PORTS"
RABBIT_PIDS="$RABBIT_PIDS"
RABBIT_NODES="$RABBIT_NODES"
RABBIT_DIST_PORTS="$RABBIT_DIST_PORTS"
RABBIT_MGMT_PORTS="$RABBIT_MGMT_PORTS"
RABBIT_EPMD_PORT="$RABBIT_EPMD_PORT"
RABBIT_USER="$RABBIT_USER"
RABBIT_PASSWORD="$RABBIT_PASSWORD"
GALERA_HOSTS="$GALERA_HOSTS"
GALERA_PORTS="$GALERA_PORTS"
GALERA_PIDS="$GALERA_PIDS"
GALERA_SOCKETS="$GALERA_SOCKETS"
GALERA_GCOMM_PORTS="$GALERA_GCOMM_PORTS"
GALERA_IST_PORTS="$GALERA_IST_PORTS"
GALERA_SST_PORTS="$GALERA_SST_PORTS"
BROKER_URLS="$BROKER_URLS"
DATABASE_URLS="$DATABASE_URLS"
ALL_PORTS="$ALL_PORTS"
EOF
    mv -f "$DIR/cluster.env.tmp" "$DIR/cluster.env"
}
print_lists() {
    local u out
    echo "[broker]"
    out=""; for u in $BROKER_URLS; do out="$out${out:+, }\"$u\""; done; echo "url = [$out]"
    echo
    echo "[database]"
    out=""; for u in $DATABASE_URLS; do out="$out${out:+, }\"$u\""; done; echo "url = [$out]"
}

# ------------------------------------------------------------------- commands ----
cmd_start() {
    local t0 n p ports i
    t0=$(now)
    if [ -n "$(reaper_pid)" ]; then
        load_env; say "already running in $DIR"; print_lists; return 0
    fi
    for n in $NODES; do
        [ -z "$(rabbit_pid "$n")$(galera_pid "$n")" ] || die "nodes of an earlier cluster still run in $DIR: cluster.sh stop $DIR first"
    done
    local missing=""
    for p in /usr/lib/rabbitmq/bin/rabbitmq-server /usr/sbin/mariadbd /usr/bin/mariadb-install-db /usr/bin/rsync /usr/bin/perl /usr/bin/setpriv; do
        [ -x "$p" ] || missing="$missing $p"
    done
    GALERA_LIB=$(galera_lib) || missing="$missing libgalera_smm.so"
    [ -z "$missing" ] || die "missing:$missing (run scripts/start-peers.sh cluster)"
    if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -f "$DIR/$MARKER" ]; then
        die "$DIR is not empty and was not made by cluster.sh; give an empty or new directory"
    fi
    mkdir -p "$DIR" && chmod 755 "$DIR" && touch "$DIR/$MARKER" || die "cannot create $DIR"
    # a fresh cluster every time: remove only what an earlier run of this script made
    rm -rf "$DIR"/rabbit[123] "$DIR"/galera[123] "$DIR/rabbit-home" "$DIR"/cluster.env* "$DIR"/reaper.*
    for n in $NODES; do heal_node "$n" >/dev/null 2>&1; done

    mkdir -p "$REGISTRY"; echo "$DIR" > "$REGISTRY/$(dir_hash)"
    read -ra ports <<< "$(pick_ports 22)"; [ ${#ports[@]} -eq 22 ] || exit 1
    ALL_PORTS="${ports[*]}"
    RABBIT_EPMD_PORT=${ports[0]}
    RABBIT_PORTS="${ports[*]:1:3}"; RABBIT_DIST_PORTS="${ports[*]:4:3}"; RABBIT_MGMT_PORTS="${ports[*]:7:3}"
    GALERA_PORTS="${ports[*]:10:3}"; GALERA_GCOMM_PORTS="${ports[*]:13:3}"
    GALERA_IST_PORTS="${ports[*]:16:3}"; GALERA_SST_PORTS="${ports[*]:19:3}"
    RABBIT_HOSTS=""; GALERA_HOSTS=""; RABBIT_NODES=""; GALERA_SOCKETS=""; BROKER_URLS=""; DATABASE_URLS=""
    for n in $NODES; do
        RABBIT_HOSTS="$RABBIT_HOSTS${RABBIT_HOSTS:+ }$(addr_of "$n")"
        GALERA_HOSTS="$GALERA_HOSTS${GALERA_HOSTS:+ }$(addr_of "$n")"
        RABBIT_NODES="$RABBIT_NODES${RABBIT_NODES:+ }$(rabbit_name "$n")"
        GALERA_SOCKETS="$GALERA_SOCKETS${GALERA_SOCKETS:+ }$DIR/galera$n/mysqld.sock"
        BROKER_URLS="$BROKER_URLS${BROKER_URLS:+ }amqp://$RABBIT_USER:$RABBIT_PASSWORD@$(addr_of "$n"):$(nth "$n" "$RABBIT_PORTS")/%2f"
        DATABASE_URLS="$DATABASE_URLS${DATABASE_URLS:+ }mysql://root@$(addr_of "$n"):$(nth "$n" "$GALERA_PORTS")/$DATABASE"
    done
    RABBIT_PIDS="- - -"; GALERA_PIDS="- - -"
    write_env

    # shared Erlang cookie
    mkdir -p "$DIR/rabbit-home"
    tr -dc 'A-Z' < /dev/urandom | head -c 32 > "$DIR/rabbit-home/.erlang.cookie"
    chmod 400 "$DIR/rabbit-home/.erlang.cookie"
    chown -R rabbitmq:rabbitmq "$DIR/rabbit-home"; chmod 700 "$DIR/rabbit-home"
    for n in $NODES; do write_rabbit_node "$n"; write_galera_node "$n"; done

    start_reaper
    say "starting in $DIR (reaper pid $(reaper_pid), ports ${RABBIT_EPMD_PORT} epmd, $RABBIT_PORTS amqp, $GALERA_PORTS mariadb)"
    # epmd of our own, on the nodes' addresses (127.0.0.1 is always added): the system one is not used
    spawn "exec env -i PATH=$PATH setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups epmd -port $RABBIT_EPMD_PORT -address $(echo "$RABBIT_HOSTS" | tr ' ' ,) >>$DIR/epmd.log 2>&1"
    wait_until 10 "epmd on 127.0.0.1:$RABBIT_EPMD_PORT" listening 127.0.0.1 "$RABBIT_EPMD_PORT" || exit 1
    for n in $NODES; do start_rabbit_node "$n"; done

    # galera: node 1 bootstraps the cluster from a fresh data directory, 2 and 3 join by rsync SST
    mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/galera1/data" --skip-test-db \
        >"$DIR/galera1/install-db.log" 2>&1 || { cat "$DIR/galera1/install-db.log" >&2; die "mariadb-install-db failed"; }
    say "+$(secs "$t0" "$(now)")s rabbit nodes starting, galera node 1 initialised"
    start_galera_node 1 --wsrep-new-cluster
    wait_galera 1 1 || exit 1
    say "+$(secs "$t0" "$(now)")s galera node 1 has bootstrapped the cluster"
    gsql 1 -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.%' IDENTIFIED BY '';
               GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.%' WITH GRANT OPTION;
               CREATE DATABASE IF NOT EXISTS \`$DATABASE\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;" \
        || die "galera node 1: cannot create root@127.0.0.% / database $DATABASE"
    for n in 2 3; do start_galera_node "$n"; done

    for n in $NODES; do wait_rabbit_up "$n" || exit 1; done
    say "+$(secs "$t0" "$(now)")s rabbit nodes up"
    for n in 2 3; do rabbit_join "$n" || exit 1; done
    say "+$(secs "$t0" "$(now)")s rabbit nodes 2 and 3 joined"
    wait_until "$CLUSTER_START_TIMEOUT" "rabbit cluster of 3 running nodes" rabbit_has_count 1 3 || exit 1
    say "+$(secs "$t0" "$(now)")s rabbit cluster of 3 running nodes"
    for n in 2 3; do wait_galera "$n" 3 || exit 1; done
    wait_galera 1 3 || exit 1
    write_env
    say "ready in $(secs "$t0" "$(now)")s: rabbit $RABBIT_NODES (pids $RABBIT_PIDS), galera $GALERA_HOSTS (pids $GALERA_PIDS)"
    say "environment: $DIR/cluster.env; paste into a config:"
    echo
    print_lists
}

cmd_stop() {
    local rp n pids=() p t0 left
    t0=$(now)
    [ -f "$DIR/cluster.env" ] && . "$DIR/cluster.env"
    for n in $NODES; do heal_node "$n"; done
    rp=$(reaper_pid)
    if [ -z "$rp" ] && [ ! -f "$DIR/cluster.env" ]; then say "nothing to stop in $DIR"; return 0; fi
    for n in $NODES; do
        if [ -n "$(rabbit_pid "$n")" ]; then rctl "$n" rabbitmqctl -t 60 stop >/dev/null 2>&1 & pids+=($!); fi
        if [ -n "$(galera_pid "$n")" ]; then
            mariadb-admin --no-defaults --socket="$DIR/galera$n/mysqld.sock" -u root shutdown >/dev/null 2>&1 & pids+=($!)
        fi
    done
    for p in "${pids[@]}"; do wait "$p"; done
    if [ -n "$rp" ]; then
        # what is left of the nodes (their helpers), then epmd
        wait_until 60 "the nodes to exit" only_epmd_left "$rp"
        epmd -port "${RABBIT_EPMD_PORT:-0}" -kill >/dev/null 2>&1
        left=$(descendants "$rp")
        if [ -n "$left" ]; then
            sleep 2; left=$(descendants "$rp")
            if [ -n "$left" ]; then
                warn "still running after the graceful stop, killed: $(ps -o pid=,args= -p "$(echo $left | tr ' ' ,)" | cut -c1-100 | tr '\n' ';')"
                kill -9 $left 2>/dev/null
            fi
        fi
        spawn quit 2>/dev/null
        wait_until 10 "the reaper to exit" not_alive "$rp"
    else
        # no reaper (it was killed): the pids of cluster.env
        for p in ${RABBIT_PIDS:-} ${GALERA_PIDS:-}; do alive "$p" && kill -9 "$p"; done
        [ -n "${RABBIT_EPMD_PORT:-}" ] && epmd -port "$RABBIT_EPMD_PORT" -kill >/dev/null 2>&1
    fi
    rm -f "$DIR/reaper.pid" "$DIR/reaper.fifo" "$REGISTRY/$(dir_hash)"
    left=$(dir_processes)
    [ -z "$left" ] || warn "processes still in $DIR (not stopped): $(echo "$left" | tr '\n' ';')"
    say "stopped in $(secs "$t0" "$(now)")s (data and logs stay in $DIR; start makes a fresh cluster)"
}

cmd_status() {
    local rp n a st p count procs
    rp=$(reaper_pid)
    if [ -z "$rp" ]; then
        local any=""
        for n in $NODES; do any="$any$(rabbit_pid "$n")$(galera_pid "$n")"; done
        [ -n "$any" ] || { say "not running ($DIR)"; return 1; }
        warn "the reaper is gone but nodes still run: cluster.sh stop $DIR"
    fi
    load_env
    echo "rabbit (epmd 127.0.0.1:$RABBIT_EPMD_PORT):"
    for n in $NODES; do
        a=$(addr_of "$n"); p=$(rabbit_pid "$n")
        st="down"
        if [ -n "$p" ]; then
            if listening "$a" "$(nth "$n" "$RABBIT_PORTS")"; then st="running"; else st="paused or booting (AMQP port closed)"; fi
            isolated_kind "$n" rabbit && st="$st, ISOLATED" || { count=$(rabbit_running_count "$n" 5); st="$st, sees ${count:-?} running nodes"; }
        fi
        printf '  %-16s amqp %s:%s  pid %-7s %s\n' "$(rabbit_name "$n")" "$a" "$(nth "$n" "$RABBIT_PORTS")" "${p:--}" "$st"
    done
    echo "galera:"
    for n in $NODES; do
        a=$(addr_of "$n"); p=$(galera_pid "$n")
        st="down"
        if [ -n "$p" ]; then
            st=$(galera_state "$n"); st="size/state/status: ${st:-?}"
            isolated_kind "$n" galera && st="$st, ISOLATED"
        fi
        printf '  %-16s mysql %s:%s  pid %-7s %s\n' "galera$n" "$a" "$(nth "$n" "$GALERA_PORTS")" "${p:--}" "$st"
    done
    if [ -n "$rp" ]; then
        procs=$(descendants "$rp")
        echo "processes: $(echo $procs | wc -w) under reaper $rp, RSS $(( $(rss_kb $procs $rp) / 1024 )) MiB in total"
    fi
    echo
    print_lists
}

node_args() {   # node_args KIND N
    case ${1:-} in rabbit|galera) ;; *) die "KIND must be rabbit or galera" ;; esac
    case ${2:-} in 1|2|3) ;; *) die "N must be 1, 2 or 3" ;; esac
}

cmd_kill9() {
    node_args "$@"; load_env
    local kind=$1 n=$2 p
    if [ "$kind" = rabbit ]; then p=$(rabbit_pid "$n"); else p=$(galera_pid "$n"); fi
    [ -n "$p" ] || die "$kind node $n is not running"
    kill -9 "$p"
    wait_until 10 "$kind node $n to die" not_alive "$p"
    write_env
    say "$kind node $n ($(addr_of "$n")) killed with SIGKILL (pid $p)"
}

cmd_restart() {
    node_args "$@"; load_env
    local kind=$1 n=$2 t0 i others=0
    t0=$(now)
    if [ "$kind" = rabbit ]; then
        [ -z "$(rabbit_pid "$n")" ] || die "rabbit node $n is running (kill9 it first)"
        for i in $NODES; do [ "$i" != "$n" ] && [ -n "$(rabbit_pid "$i")" ] && others=$((others + 1)); done
        start_rabbit_node "$n"
        wait_rabbit_up "$n" || exit 1
        wait_until "$CLUSTER_START_TIMEOUT" "rabbit node $n back among $((others + 1)) running nodes" \
            rabbit_has_count "$n" $((others + 1)) || exit 1
    else
        [ -z "$(galera_pid "$n")" ] || die "galera node $n is running (kill9 it first)"
        for i in $NODES; do [ "$i" != "$n" ] && [ -n "$(galera_pid "$i")" ] && others=$((others + 1)); done
        [ "$others" -gt 0 ] || die "no other galera node runs: nothing to join (stop and start the cluster)"
        # What mysqld_safe does after a crash: recover the last committed position from InnoDB, so
        # that the node asks for the missing write sets only (IST) instead of a full SST. (Without
        # it the position is unknown and rsync SST copies the schema directories but not the node's
        # own ddl_recovery.log, whose replay can then drop a table created just before the kill.)
        local pos
        # gvwstate.dat would make it first try to restore the old primary view (pc.recovery,
        # meant for a whole-cluster outage), which costs ~15 s while the others run anyway
        rm -f "$DIR/galera$n/recover.log" "$DIR/galera$n/data/gvwstate.dat"
        /usr/sbin/mariadbd --defaults-file="$DIR/galera$n/my.cnf" --wsrep-recover \
            --log-error="$DIR/galera$n/recover.log" >/dev/null 2>&1
        pos=$(sed -n 's/.*WSREP: Recovered position: *\([0-9a-f-]*:-\{0,1\}[0-9]*\).*/\1/p' "$DIR/galera$n/recover.log" | tail -n 1)
        cat "$DIR/galera$n/recover.log" >> "$DIR/galera$n/error.log"
        if [ -n "$pos" ]; then
            say "galera node $n: recovered position $pos"
            start_galera_node "$n" "--wsrep_start_position=$pos"
        else
            warn "galera node $n: no position recovered (see $DIR/galera$n/error.log): full SST"
            start_galera_node "$n"
        fi
        wait_galera "$n" $((others + 1)) || exit 1
    fi
    write_env
    say "$kind node $n back in $(secs "$t0" "$(now)")s"
}

cmd_isolate() {
    load_env
    case ${1:-} in 1|2|3) ;; *) die "N must be 1, 2 or 3" ;; esac
    case ${2:-} in ""|rabbit|galera) ;; *) die "KIND must be rabbit or galera" ;; esac
    isolate_node "$1" "${2:-}"
}

cmd_heal() {
    load_env
    local n
    case ${1:-} in
        "") for n in $NODES; do heal_node "$n"; done ;;
        1|2|3) isolated "$1" || say "node $1 is not isolated"; heal_node "$1" ;;
        *) die "N must be 1, 2 or 3" ;;
    esac
}

# ------------------------------------------------------------------------ main ----
[ $# -ge 2 ] || usage
CMD=$1; DIR=$2; shift 2
[ "$(id -u)" = 0 ] || die "must run as root"
case $DIR in /*) ;; *) die "DIR must be an absolute path" ;; esac
[[ $DIR =~ ^/[A-Za-z0-9._/-]*$ ]] || die "DIR may hold only letters, digits and . _ - /"
DIR=${DIR%/}

case $CMD in
    start)   cmd_start ;;
    stop)    cmd_stop ;;
    status)  cmd_status ;;
    kill9)   cmd_kill9 "$@" ;;
    restart) cmd_restart "$@" ;;
    isolate) cmd_isolate "$@" ;;
    heal)    cmd_heal "$@" ;;
    rabbitmqctl) load_env; case ${1:-} in 1|2|3) ;; *) die "N must be 1, 2 or 3" ;; esac
             n=$1; shift; rctl "$n" rabbitmqctl "$@" ;;
    mariadb) load_env; case ${1:-} in 1|2|3) ;; *) die "N must be 1, 2 or 3" ;; esac
             n=$1; shift; gsql "$n" "$@" ;;
    -h|--help|help) usage ;;
    *) err "unknown command $CMD"; usage ;;
esac
