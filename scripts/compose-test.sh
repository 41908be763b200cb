#!/usr/bin/env bash
# compose-test.sh — docker-compose really starts the cluster and mail goes through it.
#
#   scripts/compose-test.sh          (as root; KEEP=1 leaves the daemon, the cluster and the files
#                                     up, also on failure)
#
# 1. starts a Docker daemon of its own (Debian's docker.io: a private data root, exec root,
#    pidfile and socket under $COMPOSE_TEST_DIR, default /work/docker-compose-test; vfs storage,
#    no bridge, no iptables). No other Docker daemon is ever talked to.
# 2. builds every image with scripts/compose-images.sh (mmdebstrap base, Debian's RabbitMQ 3.10,
#    MariaDB 10.11 and rspamd 3.4, cluegetter with binaries built on the host).
# 3. docker-compose -f docker-compose.yml -f docker-compose.offline.yml --profile rspamd
#    up -d --scale check-workers=3, host networking, every port moved off the host's own
#    RabbitMQ (5672, its epmd, node name and distribution port), MariaDB (3306) and rspamd;
#    waits until the migration has run and every container is healthy.
# 4. a throwaway Postfix on the host (scripts/postfix-instance.sh) with the containerized
#    gateway as its milter: a plain message is delivered, GTUBE is rejected (the rspamd
#    container); the rows are in the containerized MariaDB; each check worker serves /metrics
#    on a port of its own.
# 5. kills the auditor container, sends a message, starts the auditor again: its row arrives,
#    nothing is lost or stored twice.
# 6. docker-compose down -v, stops the daemon, removes its directory (also on failure: trap).
#
# Every step says what it does; a failing step says which one failed. Each phase's duration is
# printed at the end (base image, service images, build, up, mail). Needs: docker.io,
# docker-compose, mmdebstrap, postfix, swaks (installed when missing).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DIR=${COMPOSE_TEST_DIR:-/work/docker-compose-test}
PROJECT=cgcomposetest
# the engine and client are Debian's (docker.io), whatever else is on PATH
DOCKER=/usr/bin/docker
export DOCKER
export DOCKER_HOST=unix://$DIR/docker.sock
# ports well away from the host's services and their usual ports
# (below the ephemeral range and outside cluster.sh's 20000-32000)
RABBITMQ_PORT=5682 RABBITMQ_DIST_PORT=15682 RABBITMQ_EPMD_PORT=4379
MARIADB_PORT=3316 MILTER_PORT=10053 BOUNCE_PORT=10054 GATEWAY_METRICS_PORT=9153
AUDITOR_METRICS_PORT=9155 BOUNCE_METRICS_PORT=9156 AUDITOR_WEB_PORT=1957
RSPAMD_PORT=11353 RSPAMD_PROXY_PORT=11352 RSPAMD_CONTROLLER_PORT=11354
SMTP_PORT=2553
ALL_PORTS="$RABBITMQ_PORT $RABBITMQ_DIST_PORT $RABBITMQ_EPMD_PORT $MARIADB_PORT $MILTER_PORT
    $BOUNCE_PORT $GATEWAY_METRICS_PORT $AUDITOR_METRICS_PORT $BOUNCE_METRICS_PORT $AUDITOR_WEB_PORT
    $RSPAMD_PORT $RSPAMD_PROXY_PORT $RSPAMD_CONTROLLER_PORT $SMTP_PORT"

step_name=""
phases=()
t_start=$(date +%s)
say() { echo "compose-test: $*"; }
step() { step_name=$1; say "== $1"; }
fail() {
    echo "compose-test: FAILED at step '$step_name': $*" >&2
    exit 1
}
now() { date +%s; }
record() { phases+=("$1 $(( $(now) - $2 ))s"); say "phase $1: $(( $(now) - $2 )) s"; }
listening() { awk -v p="$(printf ':%04X' "$1")" '$4=="0A" && substr($2, length($2)-4)==p {f=1} END{exit !f}' /proc/net/tcp /proc/net/tcp6; }
compose() {
    docker-compose -p "$PROJECT" -f "$REPO/docker-compose.yml" -f "$REPO/docker-compose.offline.yml" \
        --env-file "$DIR/compose.env" --profile rspamd "$@"
}
wait_for() {  # SECONDS WHAT COMMAND...
    local until=$(( $(now) + $1 )) what=$2; shift 2
    until "$@"; do
        [ "$(now)" -lt "$until" ] || return 1
        sleep 2
    done
}

daemon_pid() { [ -s "$DIR/docker.pid" ] && kill -0 "$(cat "$DIR/docker.pid")" 2>/dev/null && cat "$DIR/docker.pid"; }
stop_daemon() {
    local pid
    pid=$(daemon_pid) || return 0
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    # what a stopped daemon may leave mounted under its roots
    findmnt -rn -o TARGET | grep "^$DIR/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
    return 0
}

up_started=""
cleanup() {
    local rc=$?
    trap - EXIT
    if [ -n "${KEEP:-}" ]; then
        say "KEEP=1: leaving the daemon ($DOCKER_HOST), the cluster ($PROJECT) and $DIR"
        exit "$rc"
    fi
    if [ -n "$up_started" ] && daemon_pid >/dev/null; then
        if [ "$rc" -ne 0 ]; then
            say "state at the failure:"; compose ps 2>&1 | sed 's/^/    /'
            compose logs --tail=30 2>&1 | tail -n 150 | sed 's/^/    /'
        fi
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
    [ -d "$DIR/postfix" ] && scripts/postfix-instance.sh destroy "$DIR/postfix" >/dev/null 2>&1
    local t0; t0=$(now)
    stop_daemon
    rm -rf -- "$DIR"
    say "phase cleanup (stop the daemon, remove $DIR): $(( $(now) - t0 )) s"
    say "df -h /work after:"; df -h /work | sed 's/^/    /'
    exit "$rc"
}

# ----------------------------------------------------------------------------------------------
step "prerequisites"
[ "$(id -u)" = 0 ] || fail "must run as root (dockerd, mmdebstrap, postfix)"
missing=()
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
fi
if ! command -v swaks >/dev/null || ! command -v postfix >/dev/null; then
    scripts/start-peers.sh postfix tools || fail "start-peers.sh postfix tools failed"
fi
busy=()
for p in $ALL_PORTS; do listening "$p" && busy+=("$p"); done
[ ${#busy[@]} -eq 0 ] || fail "ports in use on this host: ${busy[*]}"
say "df -h /work before:"; df -h /work | sed 's/^/    /'

# ----------------------------------------------------------------------------------------------
step "start the private Docker daemon"
# what an earlier run left (KEEP=1, or killed): its Postfix, its daemon (by its own pidfile)
[ -d "$DIR/postfix" ] && scripts/postfix-instance.sh destroy "$DIR/postfix" >/dev/null 2>&1
stop_daemon
rm -rf -- "$DIR"
mkdir -p "$DIR"
trap cleanup EXIT
t0=$(now)
/usr/sbin/dockerd --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$DIR/docker.pid" \
    -H "unix://$DIR/docker.sock" --storage-driver vfs --bridge=none --iptables=false \
    --ip6tables=false >"$DIR/dockerd.log" 2>&1 &
wait_for 60 "dockerd" $DOCKER info >/dev/null 2>&1 \
    || { tail -n 20 "$DIR/dockerd.log" >&2; fail "dockerd did not answer on $DOCKER_HOST"; }
say "dockerd $(daemon_pid) on $DOCKER_HOST, data root $DIR/data"
record daemon "$t0"

# ----------------------------------------------------------------------------------------------
step "build the images (scripts/compose-images.sh)"
scripts/compose-images.sh all 2>&1 | tee "$DIR/images.log" | grep --line-buffered '^compose-images:'
[ "${PIPESTATUS[0]}" -eq 0 ] || { tail -n 30 "$DIR/images.log" >&2; fail "compose-images.sh failed (log above)"; }
while read -r _ _ name secs _; do phases+=("${name%:} ${secs}s"); done \
    < <(grep '^compose-images: phase ' "$DIR/images.log")
$DOCKER images --format '    {{.Repository}}:{{.Tag}} {{.Size}}'

# ----------------------------------------------------------------------------------------------
step "docker-compose up -d --scale check-workers=3"
pw() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24; }
cat > "$DIR/compose.env" <<EOF
RABBITMQ_USER=cluegetter
RABBITMQ_PASSWORD=$(pw)
MARIADB_USER=cluegetter
MARIADB_PASSWORD=$(pw)
MARIADB_ROOT_PASSWORD=$(pw)
MARIADB_DATABASE=cluegetter
RABBITMQ_PORT=$RABBITMQ_PORT
RABBITMQ_DIST_PORT=$RABBITMQ_DIST_PORT
RABBITMQ_EPMD_PORT=$RABBITMQ_EPMD_PORT
RABBITMQ_NODENAME=cgcomposetest@localhost
MARIADB_PORT=$MARIADB_PORT
MILTER_PORT=$MILTER_PORT
BOUNCE_PORT=$BOUNCE_PORT
GATEWAY_METRICS_PORT=$GATEWAY_METRICS_PORT
AUDITOR_METRICS_PORT=$AUDITOR_METRICS_PORT
BOUNCE_METRICS_PORT=$BOUNCE_METRICS_PORT
AUDITOR_WEB_PORT=$AUDITOR_WEB_PORT
RSPAMD_PORT=$RSPAMD_PORT
RSPAMD_PROXY_PORT=$RSPAMD_PROXY_PORT
RSPAMD_CONTROLLER_PORT=$RSPAMD_CONTROLLER_PORT
EOF
# rspamd's DNS: start-peers.sh's dnsmasq (NXDOMAIN at once) when there is one
if awk '$2 == "0200007F:0035" {f=1} END {exit !f}' /proc/net/udp; then
    echo "RSPAMD_NAMESERVER=127.0.0.2:53" >> "$DIR/compose.env"
fi
set -a; . "$DIR/compose.env"; set +a
compose config -q || fail "docker-compose config rejects the files"
t0=$(now)
up_started=1
compose up -d --scale check-workers=3 2>&1 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "docker-compose up failed"

containers() { $DOCKER ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}'; }
all_healthy() {
    local lines; lines=$(containers)
    # migrate: exited 0; all others: up and healthy; 3 check workers
    echo "$lines" | grep -q '_migrate_1 Exited (0)' || return 1
    [ "$(echo "$lines" | grep -c '_check-workers_[0-9]* Up .*(healthy)')" -eq 3 ] || return 1
    for svc in rabbitmq mariadb milter-gateway auditor bounce-ingest rspamd; do
        echo "$lines" | grep -q "_${svc}_1 Up .*(healthy)" || return 1
    done
}
wait_for 600 "healthy" all_healthy || { containers | sed 's/^/    /'; fail "not every service became healthy within 600 s"; }
containers | sed 's/^/    /'
record up "$t0"
say "the daemon's data root holds $(du -sh "$DIR/data" 2>/dev/null | cut -f1) (vfs: a full copy per layer and container)"

step "host networking only: no network of the project, no container address"
networks=$($DOCKER network ls --format '{{.Name}}' | grep -vx -e host -e none)
[ -z "$networks" ] || fail "networks other than host and none exist: $networks"
for c in $($DOCKER ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
    mode=$($DOCKER inspect -f '{{.HostConfig.NetworkMode}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")
    [ "$mode" = "host " ] || fail "container $c: network mode and address '$mode', not host networking"
done

# ----------------------------------------------------------------------------------------------
step "scaled check workers: three /metrics ports"
ports=()
for c in $($DOCKER ps --filter "label=com.docker.compose.service=check-workers" --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
    p=$($DOCKER logs "$c" 2>&1 | sed -n 's/.*serving \/metrics.*metrics_listen=127\.0\.0\.1:\([0-9]*\).*/\1/p' | tail -n 1)
    [ -n "$p" ] || fail "$c did not log its /metrics port"
    curl -fsS "http://127.0.0.1:$p/metrics" >/dev/null || fail "$c: /metrics on 127.0.0.1:$p does not answer"
    ports+=("$p")
done
[ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq 3 ] || fail "expected 3 distinct metrics ports, got: ${ports[*]}"
say "check workers' /metrics on 127.0.0.1:${ports[*]}"
curl -fsS "http://127.0.0.1:$GATEWAY_METRICS_PORT/metrics" >/dev/null || fail "the gateway's /metrics does not answer"

# ----------------------------------------------------------------------------------------------
step "mail through a throwaway Postfix whose milter is the containerized gateway"
t0=$(now)
scripts/postfix-instance.sh start "$DIR/postfix" "$SMTP_PORT" "inet:127.0.0.1:$MILTER_PORT" tempfail >/dev/null \
    || fail "postfix-instance.sh start failed"
swaks_to() {  # SUBJECT [extra swaks args...]
    local subject=$1; shift
    swaks --server 127.0.0.1 --port "$SMTP_PORT" --from sender@example.org --to someone@mailbox.test \
        --header "Subject: $subject" --timeout 60 "$@" 2>&1
}
db() {
    $DOCKER exec "${PROJECT}_mariadb_1" mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" -N -B cluegetter -e "$1"
}
delivered() { grep -qs "^Subject: $1" "$DIR/postfix/mail/mbox"; }
stored() {  # SUBJECT VERDICT
    [ "$(db "SELECT COUNT(*) FROM message WHERE subject = '$1' AND verdict = '$2'" 2>/dev/null)" = 1 ]
}

out=$(swaks_to "compose plain")
echo "$out" | grep -q '^<- *250 .*queued as' || { echo "$out" | tail -n 15 >&2; fail "the plain message was not accepted"; }
wait_for 60 "delivery" delivered "compose plain" || fail "the plain message was accepted but not delivered"
say "plain message accepted and delivered"

gtube='XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'
out=$(swaks_to "compose gtube" --body "$gtube")
echo "$out" | grep -q '^<\*\* *5[0-9][0-9] ' || { echo "$out" | tail -n 15 >&2; fail "GTUBE was not rejected"; }
say "GTUBE rejected: $(echo "$out" | grep '^<\*\* *5' | head -n 1)"

wait_for 60 "rows" stored "compose plain" permit || fail "no permit row for the plain message in MariaDB"
wait_for 60 "rows" stored "compose gtube" reject || fail "no reject row for GTUBE in MariaDB"
rspamd_row=$(db "SELECT r.verdict FROM message_result r JOIN message m ON m.id = r.message
                 WHERE m.subject = 'compose gtube' AND r.module = 'rspamd'")
[ "$rspamd_row" = reject ] || fail "GTUBE's rspamd result is '$rspamd_row', not reject"
quota_rows=$(db "SELECT COUNT(*) FROM message_result r JOIN message m ON m.id = r.message
                 WHERE m.subject = 'compose plain' AND r.module = 'quotas'")
[ "$quota_rows" = 1 ] || fail "the plain message has $quota_rows quota results, not 1"
say "rows: plain message permit (rspamd and quotas results), GTUBE reject by rspamd"

# ----------------------------------------------------------------------------------------------
step "kill the auditor, send mail, start the auditor again: nothing lost"
compose kill auditor >/dev/null 2>&1 || fail "docker-compose kill auditor failed"
$DOCKER ps --filter "name=${PROJECT}_auditor_1" --format '{{.Status}}' | grep -q '^Up' \
    && fail "the auditor is still running after kill"
out=$(swaks_to "compose while the auditor is down")
echo "$out" | grep -q '^<- *250 .*queued as' || { echo "$out" | tail -n 15 >&2; fail "the message sent while the auditor was down was not accepted"; }
wait_for 60 "delivery" delivered "compose while the auditor is down" || fail "that message was not delivered"
sleep 2
[ "$(db "SELECT COUNT(*) FROM message WHERE subject = 'compose while the auditor is down'")" = 0 ] \
    || fail "a row was stored while the auditor was down"
compose start auditor >/dev/null 2>&1 || fail "docker-compose start auditor failed"
wait_for 60 "rows" stored "compose while the auditor is down" permit \
    || fail "the message sent while the auditor was down never reached MariaDB"
total=$(db "SELECT COUNT(*) FROM message")
[ "$total" = 3 ] || fail "MariaDB holds $total messages, not 3"
wait_for 120 "auditor healthy" bash -c "$DOCKER ps --filter name=${PROJECT}_auditor_1 --format '{{.Status}}' | grep -q '(healthy)'" \
    || fail "the restarted auditor did not become healthy"
say "the auditor stored the message sent while it was down; 3 messages, none twice"
record mail "$t0"

# ----------------------------------------------------------------------------------------------
if [ -n "${KEEP:-}" ]; then
    say "PASSED; KEEP=1: the cluster stays up ($PROJECT on $DOCKER_HOST); phases: ${phases[*]}"
    exit 0
fi
step "docker-compose down -v"
t0=$(now)
compose down -v --remove-orphans 2>&1 | sed 's/^/    /'
[ -z "$(containers)" ] || fail "containers left after down: $(containers)"
$DOCKER volume ls -q | grep -q "^${PROJECT}_" && fail "volumes left after down -v"
up_started=""
record down "$t0"

step "stop the daemon"
stop_daemon
daemon_pid >/dev/null && fail "dockerd still running"

say "PASSED in $(( $(now) - t_start )) s; phases: ${phases[*]}"
