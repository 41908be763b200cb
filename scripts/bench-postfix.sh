#!/usr/bin/env bash
# scripts/bench-postfix.sh — what cluegetter costs beside Postfix's own work (issue 16),
# measured through a real Postfix with smtp-source, variants interleaved round by round:
#
#   alone               Postfix with no milter and no policy service
#   none                Postfix + cluegetter (gateway, check-workers, auditor), no module
#   quotas-greylisting  + the quotas and greylisting modules (every message: a reservation, a
#                       greylisting update, a settle)
#   quotas              + the quotas module alone
#   postfwd             Postfix + Debian's postfwd as a policy service with one rate rule
#   rspamd              + cluegetter with the rspamd module
#   rspamd-milter       Postfix + rspamd's own milter (its proxy worker on 127.0.0.1:11332)
#
# Each variant gets a fresh throwaway Postfix instance (scripts/postfix-instance.sh) and, for
# cluegetter, its own vhost and database and release binaries. smtp-source sends SESSIONS
# sessions × MESSAGES messages of 4 KiB to a discarding domain; the figure is messages
# accepted per second (smtp-source's wall time). CPU per message comes from /proc (utime +
# stime, children of Postfix's master included) for Postfix, RabbitMQ, MariaDB, rspamd,
# postfwd and each cluegetter process. Prints every round, then the medians and the ratios the
# issue sets targets for. Not run by CI: it wants a quiet machine.
#
#   scripts/bench-postfix.sh [rounds (3)] [sessions (20)] [messages per session (2000)]
#   BENCH_VARIANTS="alone none quotas" scripts/bench-postfix.sh 1 10 200   (a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
rounds=${1:-3}
sessions=${2:-20}
per_session=${3:-2000}
messages=$((sessions * per_session))
variants=${BENCH_VARIANTS:-alone none quotas-greylisting quotas postfwd rspamd rspamd-milter}

say() { echo "bench-postfix: $*" >&2; }
die() { say "ERROR: $*"; stop_all; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (Postfix instances need it)"

peers=(rabbitmq mariadb postfix)
[[ " $variants " == *" rspamd"* ]] && peers+=(rspamd)
scripts/start-peers.sh "${peers[@]}" >/dev/null
if [[ " $variants " == *" postfwd "* ]] && ! command -v postfwd >/dev/null; then
    say "installing postfwd"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfwd >/dev/null
    # Debian starts it as a service; the bench runs its own
    systemctl disable --now postfwd >/dev/null 2>&1 || service postfwd stop >/dev/null 2>&1 || true
fi
# BENCH_PROFILE=debug: the debug binaries, to try the script out (the figures mean nothing)
profile=${BENCH_PROFILE:-release}
if [ "$profile" = release ]; then cargo build --release -q --bins; else cargo build -q --bins; fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
work=$(mktemp -d /tmp/cg-bench-postfix-XXXXXX)
chmod 755 "$work"   # Postfix (the user) must traverse it
cluegetter_pids=()
pfx=""
postfwd_pid=""
vhost=""
db=""

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { awk -v p="$(printf ':%04X' "$1")" '$4=="0A" && substr($2, length($2)-4)==p {f=1} END{exit !f}' /proc/net/tcp; }
wait_port() { for _ in $(seq 1 300); do listening "$1" && return 0; sleep 0.1; done; die "nothing listens on $1"; }

# CPU ticks (utime + stime, and the reaped children's) of a pid; 0 if it is gone
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# ticks of a pid and its live children
tree_ticks() {
    local total; total=$(ticks "$1")
    for child in $(pgrep -P "$1" 2>/dev/null); do total=$((total + $(ticks "$child"))); done
    echo "$total"
}
hz=$(getconf CLK_TCK)

stop_all() {
    for pid in "${cluegetter_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${cluegetter_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    cluegetter_pids=()
    [ -n "$postfwd_pid" ] && { kill "$postfwd_pid" 2>/dev/null || true; postfwd_pid=""; }
    pkill -f "postfwd.*$work" 2>/dev/null || true
    [ -n "$pfx" ] && { scripts/postfix-instance.sh destroy "$pfx" >/dev/null 2>&1 || true; pfx=""; }
    [ -n "$vhost" ] && { rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true; vhost=""; }
    [ -n "$db" ] && { mariadb -e "DROP DATABASE IF EXISTS \`$db\`" >/dev/null 2>&1 || true; db=""; }
    return 0
}
trap 'stop_all; rm -rf "$work"' EXIT

# cluegetter with the modules in $1 ("" = none); sets milter_port
start_cluegetter() {
    local name=$1 modules=$2 dir="$work/$name-$round"
    mkdir -p "$dir"
    vhost="cgbench-$name-$round-$$" db="cgbench_${name//-/_}_${round}_$$"
    rabbitmqctl -q add_vhost "$vhost" >/dev/null
    rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
    milter_port=$(free_port)
    {
        echo "instance = \"bench\""
        echo "[broker]"; echo "url = \"amqp://guest:guest@127.0.0.1:5672/$vhost\""
        echo "[database]"; echo "url = \"mysql://root@127.0.0.1:3306/$db\""
        echo "[gateway]"; echo "listen = \"127.0.0.1:$milter_port\""
        echo "metrics-listen = \"127.0.0.1:0\""; echo "spool-dir = \"$dir/spool\""
        echo "[auditor]"; echo "metrics-listen = \"127.0.0.1:0\""; echo "web-listen = \"127.0.0.1:0\""
        echo "[check-workers]"; echo "metrics-listen = \"127.0.0.1:0\""
        for module in $modules; do echo "[$module]"; echo "enabled = true"; done
    } > "$dir/cluegetter.toml"
    "$bin/auditor" --config "$dir/cluegetter.toml" migrate > "$dir/migrate.log" 2>&1 \
        || die "auditor migrate failed: $(tail -3 "$dir/migrate.log")"
    # the gateway first (its milter port must not go to another process's outgoing connection)
    for process in milter-gateway check-workers auditor; do
        "$bin/$process" --config "$dir/cluegetter.toml" > "$dir/$process.log" 2>&1 &
        cluegetter_pids+=($!)
        [ "$process" = milter-gateway ] && wait_port "$milter_port"
    done
    # the gateway answers with the fail action until its broker link is up: give them a moment
    sleep 3
}

start_postfwd() {
    local port; port=$(free_port)
    cat > "$work/postfwd.cf" <<EOF
id=RATE01; action=rate(client_address/100000000/3600/450 4.7.1 over the rate)
EOF
    postfwd --file "$work/postfwd.cf" --interface 127.0.0.1 --port "$port" \
        --pidfile "$work/postfwd.pid" --daemon --user nobody --group nogroup >/dev/null 2>&1 \
        || die "postfwd did not start"
    wait_port "$port"
    postfwd_pid=$(cat "$work/postfwd.pid")
    policy_port=$port
}

# measure NAME: one variant's run; prints "NAME rate ms-per-message-by-process…"
measure() {
    local name=$1 milter="" extra=""
    case $name in
        alone) ;;
        none) start_cluegetter "$name" ""; milter="inet:127.0.0.1:$milter_port" ;;
        quotas-greylisting) start_cluegetter "$name" "quotas greylisting"; milter="inet:127.0.0.1:$milter_port" ;;
        quotas) start_cluegetter "$name" "quotas"; milter="inet:127.0.0.1:$milter_port" ;;
        rspamd) start_cluegetter "$name" "rspamd"; milter="inet:127.0.0.1:$milter_port" ;;
        rspamd-milter) milter="inet:127.0.0.1:11332" ;;
        postfwd) start_postfwd
                 extra="smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:$policy_port, permit_mynetworks, reject_unauth_destination" ;;
        *) die "unknown variant $name" ;;
    esac
    pfx="$work/pfx-$name-$round"
    local smtp_port; smtp_port=$(free_port)
    PFX_MAIN_CF_EXTRA="$extra" scripts/postfix-instance.sh start "$pfx" "$smtp_port" "$milter" tempfail >/dev/null \
        || die "postfix instance for $name did not start"
    wait_port "$smtp_port"
    # the processes whose CPU counts, by label
    local -A pids=()
    pids[postfix]=$(tr -d ' ' < "$pfx/spool/pid/master.pid")
    pids[rabbitmq]=$(pgrep -f 'beam.smp.*rabbit' | head -1 || true)
    pids[mariadb]=$(pgrep -x mariadbd | head -1 || pgrep -x mysqld | head -1 || true)
    case $name in rspamd|rspamd-milter) pids[rspamd]=$(pgrep -o -x rspamd || true) ;; esac
    [ -n "$postfwd_pid" ] && pids[postfwd]=$postfwd_pid
    local i=0
    for process in milter-gateway check-workers auditor; do
        [ ${#cluegetter_pids[@]} -gt $i ] && pids[$process]=${cluegetter_pids[$i]}
        i=$((i + 1))
    done
    local -A before=()
    for label in "${!pids[@]}"; do before[$label]=$(tree_ticks "${pids[$label]}"); done
    local start end
    start=$(date +%s.%N)
    smtp-source -s "$sessions" -m "$messages" -l 4096 -f bench@sender.test -t rcpt@sink.test \
        "127.0.0.1:$smtp_port" > "$work/smtp-source.log" 2>&1 || say "smtp-source: $(tail -2 "$work/smtp-source.log")"
    end=$(date +%s.%N)
    # the queue drains (deliveries to the sink) before the CPU is read: Postfix's whole cost
    for _ in $(seq 1 600); do
        postqueue -c "$pfx/etc" -p 2>/dev/null | grep -q "Mail queue is empty" && break
        sleep 0.2
    done
    local line rate
    rate=$(awk -v m="$messages" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", m / (e - s) }')
    line="$name $rate"
    for label in postfix rabbitmq mariadb rspamd postfwd milter-gateway check-workers auditor; do
        if [ -n "${pids[$label]:-}" ]; then
            local after; after=$(tree_ticks "${pids[$label]}")
            line="$line $label=$(awk -v d="$((after - before[$label]))" -v hz="$hz" -v m="$messages" 'BEGIN { printf "%.2f", d * 1000 / hz / m }')"
        fi
    done
    local refused; refused=$(grep -c "reject\|defer" "$pfx/postfix.log" 2>/dev/null || true)
    echo "$line refused-or-deferred-log-lines=${refused:-0}"
    stop_all
}

results="$work/results"
: > "$results"
for round in $(seq 1 "$rounds"); do
    for variant in $variants; do
        out=$(measure "$variant")
        echo "$out" >> "$results"
        rate=$(awk '{print $2}' <<<"$out")
        cpu=$(cut -d' ' -f3- <<<"$out")
        printf 'round %s %-20s %6s msg/s   CPU ms/message: %s\n' "$round" "$variant" "$rate" "$cpu"
    done
done

median_of() { awk -v v="$1" '$1 == v {print $2}' "$results" | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "medians of $rounds rounds, $sessions sessions × $per_session messages of 4 KiB:"
declare -A med=()
for variant in $variants; do
    med[$variant]=$(median_of "$variant")
    printf '  %-20s %6s msg/s\n' "$variant" "${med[$variant]}"
done
ratio() { [ -n "${med[$1]:-}" ] && [ -n "${med[$2]:-}" ] && awk -v a="${med[$1]}" -v b="${med[$2]}" 'BEGIN { printf "%.2f", a / b }'; }
echo "ratios (targets in issue 16):"
[ -n "${med[none]:-}" ] && echo "  no module / alone                 $(ratio none alone)   (target >= 0.65)"
[ -n "${med[quotas-greylisting]:-}" ] && echo "  quotas+greylisting / alone        $(ratio quotas-greylisting alone)   (target >= 0.5)"
[ -n "${med[rspamd]:-}" ] && [ -n "${med[rspamd-milter]:-}" ] && echo "  rspamd module / rspamd's milter   $(ratio rspamd rspamd-milter)   (target >= 0.85)"
[ -n "${med[quotas]:-}" ] && [ -n "${med[postfwd]:-}" ] && echo "  quotas / postfwd                  $(ratio quotas postfwd)   (target >= 0.9)"
true
