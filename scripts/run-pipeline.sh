#!/usr/bin/env bash
# scripts/run-pipeline.sh — starts the whole pipeline in the foreground with working defaults:
# installs and starts RabbitMQ and MariaDB if they are missing, builds the four binaries,
# creates the database and applies the migrations (`auditor migrate`), then runs
# milter-gateway (milter on 127.0.0.1:10033), check-workers, auditor and bounce-ingest, their
# logs prefixed with their names. Ctrl-C (or SIGTERM) stops all four cleanly: each gets exactly
# one SIGTERM and may finish its work for RUN_PIPELINE_GRACE seconds (default 60); whatever
# still runs then, or when Ctrl-C comes a second time, is killed (SIGKILL).
#
#   scripts/run-pipeline.sh [--config FILE]
# With rspamd:  CLUEGETTER_RSPAMD__ENABLED=true scripts/run-pipeline.sh   (starts rspamd too)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

config_args=()
if [ "${1:-}" = "--config" ] && [ -n "${2:-}" ]; then config_args=(--config "$2"); fi

peers=(rabbitmq mariadb)
[ "${CLUEGETTER_RSPAMD__ENABLED:-false}" = true ] && peers+=(rspamd)
scripts/start-peers.sh "${peers[@]}"

cargo build --release --bins
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/auditor" "${config_args[@]}" migrate

grace=${RUN_PIPELINE_GRACE:-60}
names=(milter-gateway check-workers auditor bounce-ingest)
pids=()
# Signals to this script are only counted here; the loops below act on them. (Ctrl-C reaches
# the script alone: the four run in sessions of their own, so the terminal does not signal them
# too. A second signal makes check-workers and the auditor drop their work at once, which is
# why each gets exactly one, from this script.)
signals=0
received=
trap 'signals=$((signals + 1)); received=INT' INT
trap 'signals=$((signals + 1)); received=TERM' TERM
for process in "${names[@]}"; do
    # setsid execs the binary (a background child is no process group leader, so it does not
    # fork): $! is the process itself. The log filter ignores INT and TERM so that it passes on
    # the last lines; it ends when the process closes its output.
    setsid "$bin/$process" "${config_args[@]}" \
        > >(trap '' INT TERM; exec sed -u "s/^/[$process] /") 2>&1 &
    pids+=($!)
done
echo "run-pipeline: running (milter on 127.0.0.1:10033); Ctrl-C stops all four" >&2

# From here on every exit status is looked at, not fatal.
set +e
# The exit status of each process by its index, once it ended.
declare -A status_of=()
running() {
    local n
    for n in "${!pids[@]}"; do
        if [ -z "${status_of[$n]:-}" ]; then echo "$n"; fi
    done
}
# Waits until a process ends (and notes its status), a signal comes, or one of the extra
# pids given ends.
reap_one() {
    local pid= code n waited=()
    for n in $(running); do waited+=("${pids[$n]}"); done
    wait -n -p pid "${waited[@]}" "$@" 2>/dev/null
    code=$?
    for n in "${!pids[@]}"; do
        if [ -n "${pid:-}" ] && [ "${pids[$n]}" = "$pid" ]; then
            status_of[$n]=$code
            echo "run-pipeline: ${names[$n]} exited with status $code" >&2
        elif [ -z "${pid:-}" ] && [ "$code" -eq 127 ] && [ -z "${status_of[$n]:-}" ]; then
            status_of[$n]=unknown # not a child any more: nothing left to wait for
        fi
    done
}

# Until a signal comes or a process ends by itself: a half-running pipeline is worse than none.
while [ "$signals" -eq 0 ] && [ ${#status_of[@]} -eq 0 ]; do
    reap_one
done
if [ "$signals" -gt 0 ]; then
    why="SIG$received"
    code=$((128 + $(kill -l "$received")))
else
    why="a process exited"
    code=1
fi

seen=$signals
left=$(running)
echo "run-pipeline: $why: SIGTERM to each process, then up to ${grace}s to finish (Ctrl-C again kills them)" >&2
for n in $left; do kill -TERM "${pids[$n]}" 2>/dev/null; done
deadline=$((SECONDS + grace))
while [ -n "$(running)" ]; do
    if [ "$signals" -gt "$seen" ]; then
        echo "run-pipeline: SIG$received again: killing what still runs" >&2
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "run-pipeline: still running after ${grace}s: killing them" >&2
        break
    fi
    # the sleep bounds the wait, so that the deadline is seen in time
    sleep 0.5 &
    reap_one $!
done
for n in $(running); do
    kill -KILL "${pids[$n]}" 2>/dev/null
done
while [ -n "$(running)" ]; do reap_one; done
exit "$code"
