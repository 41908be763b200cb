#!/usr/bin/env bash
# scripts/test.sh — the one command that runs all of cluegetter's tests.
#
# Installs (from Debian's packages) and starts the real services the tests talk to, if they
# are missing or down — RabbitMQ, MariaDB, Postfix, spamd, rspamd, clamd, PostSRSd (installed
# only), the test tools (swaks, miltertest, dnsmasq), Chromium with chromedriver (the
# auditor's browser test) and the cluster packages (galera-4, rsync, iptables: the cluster
# fault test runs scripts/cluster.sh) —
# then runs every test of the workspace. No test is skipped for a missing service: a service
# that cannot be started fails this script.
#
#   scripts/test.sh [extra arguments for the test runner]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # postfix, postconf, postqueue

scripts/start-peers.sh rabbitmq mariadb postfix spamd rspamd clamd postsrsd tools chromium cluster
cargo build --bins   # test-support/tests/faults and tests/cluster run the real milter-gateway and auditor

if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    exec cargo test --workspace --no-fail-fast "$@"
fi
