#!/usr/bin/env bash
# scripts/bench-gateway.sh — the milter gateway's benchmark (issue 3's targets), run several
# times on a noisy machine, with the medians at the end.
#
# Each run is `milter-bench` (release build) with the gateway in process, no modules, 50
# connections at 3,000 messages/s, 4 KiB bodies, its audit spool on disk (under target/, the
# disk the gateway would use) and its audit events going to the local RabbitMQ (vhost
# `bench`, created here; its archive queue is purged before every run so that it never grows
# into RabbitMQ's paging). Then one run with 500 idle connections for the RSS figure.
#
#   scripts/bench-gateway.sh [runs (default 5)] [extra milter-bench arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
runs="${1:-5}"
shift || true

scripts/start-peers.sh rabbitmq >/dev/null
rabbitmqctl -q add_vhost bench 2>/dev/null || true
rabbitmqctl -q set_permissions -p bench guest '.*' '.*' '.*'
cargo build --release -q -p milter-gateway --bin milter-bench
bench=target/release/milter-bench
spool=target/bench-spool
url="amqp://guest:guest@127.0.0.1:5672/bench"

p50s=() p99s=() rates=()
for i in $(seq 1 "$runs"); do
    rabbitmqctl -q purge_queue -p bench cluegetter.audit.archive >/dev/null 2>&1 || true
    rm -rf "$spool"
    sleep 1
    out=$("$bench" --broker-url "$url" --spool-dir "$spool" --rate 3000 "$@")
    rate=$(sed -n 's/.*=> \([0-9.]*\) messages\/s.*/\1/p' <<<"$out")
    p50=$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' <<<"$out")
    p99=$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<<"$out")
    echo "run $i: $rate messages/s, EOM-to-reply p50 $p50 ms, p99 $p99 ms"
    rates+=("$rate") p50s+=("$p50") p99s+=("$p99")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "median of $runs runs: $(median "${rates[@]}") messages/s, p50 $(median "${p50s[@]}") ms, p99 $(median "${p99s[@]}") ms (target: >= 3000 messages/s, p99 <= 5 ms)"

rm -rf "$spool"
"$bench" --broker-url "$url" --spool-dir "$spool" --idle 500 --seconds 1 | grep -i "rss\|idle"
rm -rf "$spool"
