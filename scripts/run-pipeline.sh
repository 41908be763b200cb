#!/usr/bin/env bash
# scripts/run-pipeline.sh — starts the whole pipeline in the foreground with working defaults:
# installs and starts RabbitMQ and MariaDB if they are missing, builds the four binaries,
# creates the database and applies the migrations (`auditor migrate`), then runs
# milter-gateway (milter on 127.0.0.1:10033), check-workers, auditor and bounce-ingest, their
# logs prefixed with their names. Ctrl-C (or SIGTERM) stops all four.
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

pids=()
# Ctrl-C reaches the four processes from the terminal already (same process group): then only
# wait for them, since a second signal makes them exit at once rather than finish their work.
stop() {
    trap - INT TERM
    if [ "${1:-}" != interrupted ]; then
        echo "run-pipeline: stopping ${pids[*]}" >&2
        kill -TERM "${pids[@]}" 2>/dev/null || true
    fi
    wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop interrupted; exit 130' INT
trap 'stop; exit 143' TERM
for process in milter-gateway check-workers auditor bounce-ingest; do
    # $! is the process itself (not a subshell), so stop() reaches it
    "$bin/$process" "${config_args[@]}" > >(sed -u "s/^/[$process] /") 2>&1 &
    pids+=($!)
done
echo "run-pipeline: running (milter on 127.0.0.1:10033); Ctrl-C stops all four" >&2
# If any process exits, stop the others: a half-running pipeline is worse than none.
wait -n "${pids[@]}" || true
stop
exit 1
