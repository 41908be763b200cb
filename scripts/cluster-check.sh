#!/usr/bin/env bash
# cluster-check.sh — runs scripts/cluster.sh through its paces for real and says how long each
# step took: start, a confirmed publish through node 1 then kill -9 of node 1 and the message
# consumed through node 2, restart; a Galera write on node 1 read on node 3, kill -9 and
# restart of a Galera node with writes meanwhile; isolate/heal a RabbitMQ node (it pauses, the
# others carry on); stop, and no process left. As root; needs python3-pika
# (scripts/start-peers.sh cluster tools).
#
#   scripts/cluster-check.sh [DIR]      (default /tmp/cluster-check; removed at the end if all passed)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DIR=${1:-/tmp/cluster-check}
C=scripts/cluster.sh
fail() { echo "cluster-check: FAILED: $*" >&2; $C stop "$DIR" >/dev/null 2>&1; exit 1; }
step() { T0=$(date +%s.%N); echo "== $*"; }
took() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "   (%.1f s)\n", b-a}'; }
export PYTHONPATH=  # the system python3 with Debian's pika
amqp() {  # amqp NODE pub|get QUEUE: through node NODE, as cluegetter, a quorum queue
    local n=$1 port; port=$(set -- $RABBIT_PORTS; eval "echo \${$n}")
    /usr/bin/python3 - "127.0.0.$((n + 1))" "$port" "$2" "$3" <<'EOF'
import sys, pika
host, port, mode, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port, virtual_host='/',
    credentials=pika.PlainCredentials('cluegetter', 'cluegetter'), connection_attempts=1, socket_timeout=5))
ch = conn.channel()
ch.queue_declare(queue, durable=True, arguments={'x-queue-type': 'quorum'})
if mode == 'pub':
    ch.confirm_delivery()
    ch.basic_publish('', queue, ('via ' + host).encode(), pika.BasicProperties(delivery_mode=2), mandatory=True)
    print('   published (confirmed) to', queue, 'via', host)
else:
    m = ch.basic_get(queue, auto_ack=True)
    if not m[0]:
        sys.exit('empty')
    print('   got', m[2].decode(), 'from', queue, 'via', host)
conn.close()
EOF
}
sql() { local n=$1; shift; mariadb --no-defaults -h "127.0.0.$((n + 1))" -P "$(set -- $GALERA_PORTS; eval "echo \${$n}")" -u root -N -B cluegetter -e "$*"; }
# retry SECONDS CMD...: until CMD succeeds (the last try shows its errors)
retry() { local end=$(( $(date +%s) + $1 )); shift
          while [ "$(date +%s)" -lt "$end" ]; do "$@" 2>/dev/null && return 0; sleep 0.5; done; "$@"; }

step "start"; $C start "$DIR" || fail start; took
. "$DIR/cluster.env"
$C status "$DIR" | grep -E '^ |processes' || fail status

step "publish through node 1, kill -9 node 1, consume through node 2"
amqp 1 pub cc-q1 || fail publish
$C kill9 "$DIR" rabbit 1 || fail kill9
retry 20 amqp 2 get cc-q1 || fail "message lost"; took
amqp 2 pub cc-q2 && amqp 2 get cc-q2 || fail "publish/consume through node 2 while node 1 is down"
step "restart rabbit node 1"; $C restart "$DIR" rabbit 1 || fail restart; took

step "galera: write on node 1, read on node 3"
sql 1 "CREATE TABLE cc (id INT PRIMARY KEY, v VARCHAR(40)); INSERT INTO cc VALUES (1, 'written on node 1')" || fail write
[ "$(sql 3 "SET SESSION wsrep_sync_wait = 1; SELECT v FROM cc WHERE id = 1")" = "written on node 1" ] || fail "read on node 3"; took
step "galera: kill -9 node 2, write on node 1 meanwhile, restart node 2, read there"
$C kill9 "$DIR" galera 2 || fail kill9
sql 1 "INSERT INTO cc VALUES (2, 'while node 2 was down')" || fail "write with node 2 down"; took
$C restart "$DIR" galera 2 || fail restart
[ "$(sql 2 "SELECT COUNT(*) FROM cc")" = 2 ] || fail "node 2 misses rows"; took

step "isolate rabbit node 2: it pauses, 1 and 3 carry on"
. "$DIR/cluster.env"
amqp 2 pub cc-q3 || fail publish
$C isolate "$DIR" 2 rabbit || fail isolate
port2=$(set -- $RABBIT_PORTS; echo "$2")
paused() { ! awk -v h="$(printf '0300007F:%04X' "$port2")" '$4 == "0A" && $2 == h { f = 1 } END { exit !f }' /proc/net/tcp; }
retry 30 paused || fail "node 2 did not pause"; took
retry 20 amqp 3 get cc-q3 || fail "message lost"
amqp 1 pub cc-q4 && amqp 3 get cc-q4 || fail "nodes 1 and 3 do not carry on"
step "heal"; $C heal "$DIR" || fail heal
# (seconds, or ~35 s when Erlang's global hangs after the partition: RabbitMQ's workaround waits 20 s)
retry 90 amqp 2 pub cc-q5 || fail "node 2 did not come back"; took
amqp 2 get cc-q5 || fail get
$C status "$DIR" | grep -E '^ |processes'

step "stop"; $C stop "$DIR" || fail stop; took
# no live process works in DIR or names it (the reaper is left as one zombie: PID 1 does not reap)
left=$(for p in /proc/[0-9]*; do p=${p#/proc/}; [ "$p" = $$ ] && continue
         [ "$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$p/stat" 2>/dev/null)" = Z ] && continue
         case "$(readlink "/proc/$p/cwd" 2>/dev/null)/ $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" in
             "$DIR"/*|*" $DIR"/*|*"epmd -port $RABBIT_EPMD_PORT "*) echo "$p $(tr '\0' ' ' < "/proc/$p/cmdline")" ;; esac; done)
[ -z "$left" ] || fail "still running: $left"
echo "   no process left (ps: $(ps -eo stat=,comm= | awk '$1 ~ /^Z/ && $2 ~ /cluster.sh-reap/' | wc -l) defunct reaper entries, PID 1 reaps late or never)"
rm -rf -- "$DIR"
echo "cluster-check: all passed"
