#!/usr/bin/env bash
# compose-images.sh — every image docker-compose.offline.yml runs, built without an image
# registry: only Debian's package mirror and this repository are needed.
#
#   compose-images.sh [base|services|cluegetter|all]...     (default: all)
#
#   base        a Debian bookworm root filesystem made by mmdebstrap from Debian's packages,
#               loaded with `docker import` as cluegetter-offline/base:bookworm
#   services    FROM that base, with Debian's packages: cluegetter-offline/rabbitmq:3.10,
#               cluegetter-offline/mariadb:10.11, cluegetter-offline/rspamd:3.4 (docker/*/)
#   cluegetter  the Dockerfile's runtime image FROM that base with the binaries built here
#               (BINARIES=prebuilt): cluegetter:offline. The binaries are built first
#               (cargo build --profile dist in $CARGO_TARGET_DIR, default ./target; a heavy
#               compile the first time, CARGO_BUILD_JOBS as set).
#
# Talks to the Docker daemon that DOCKER_HOST names (scripts/compose-test.sh starts a private
# one); never to another one unless DOCKER_HOST is unset. Needs root (mmdebstrap), mmdebstrap,
# docker.io. DEBIAN_MIRROR (default http://deb.debian.org/debian) and DEBIAN_SECURITY_MIRROR
# choose where packages come from. REBUILD_BASE=1 makes the base again even if it exists.
# Prints how long each phase took ("phase NAME: N s") for the test's report.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_IMAGE=cluegetter-offline/base:bookworm
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BINARIES="milter-gateway check-workers auditor bounce-ingest"
# BuildKit builds only the stages the chosen one needs (the Rust stage pulls rust:* from a
# registry, which the offline build never reaches); dockerd 20.10 has it built in.
export DOCKER_BUILDKIT=1

say() { echo "compose-images: $*"; }
die() { echo "compose-images: ERROR: $*" >&2; exit 1; }
now() { date +%s; }
phase() { say "phase $1: $(( $(now) - $2 )) s"; }

build_base() {
    local t0; t0=$(now)
    if [ -z "${REBUILD_BASE:-}" ] && $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "$BASE_IMAGE exists (REBUILD_BASE=1 makes it again)"; return 0
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
    say "making $BASE_IMAGE with mmdebstrap from $MIRROR"
    # minbase plus certificates; no documentation, manuals or translations, here or in any
    # image built FROM it (the dpkg options stay in the root filesystem)
    mmdebstrap --variant=minbase --include=ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Retries "3"' \
        --aptopt='Acquire::Languages "none"' \
        bookworm - \
        "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main" \
        | $DOCKER import \
            --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
            --message "Debian bookworm minbase (mmdebstrap, $MIRROR)" - "$BASE_IMAGE" >/dev/null
    phase base "$t0"
}

build_services() {
    local t0; t0=$(now)
    $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "$BASE_IMAGE is missing (compose-images.sh base)"
    local name tag
    for spec in rabbitmq:3.10 mariadb:10.11 rspamd:3.4; do
        name=${spec%%:*}; tag=${spec#*:}
        say "building cluegetter-offline/$name:$tag (docker/$name/)"
        # --network host: apt reaches the mirror without a bridge (the daemon runs with none)
        $DOCKER build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
            -t "cluegetter-offline/$name:$tag" "docker/$name" \
            || die "building cluegetter-offline/$name:$tag failed"
    done
    phase service-images "$t0"
}

build_cluegetter() {
    local t0 bin args=() stage; t0=$(now)
    # cargo decides what is stale (a no-op when the binaries are up to date)
    say "the release binaries: cargo build --profile dist (CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-all cores})"
    for bin in $BINARIES; do args+=(--bin "$bin"); done
    CARGO_TARGET_DIR=$TARGET_DIR cargo build --profile dist --locked "${args[@]}" \
        || die "cargo build --profile dist failed"
    phase binaries "$t0"; t0=$(now)
    # the build context is the repository with .dockerignore leaving target/ out; the binaries
    # are staged inside it, in docker-bin/ (ignored by git)
    stage=docker-bin
    rm -rf "$stage"; mkdir -p "$stage"
    for bin in $BINARIES; do cp "$TARGET_DIR/dist/$bin" "$stage/"; done
    ls -l "$stage" | awk 'NR>1 {printf "compose-images: binary %s %.1f MB\n", $9, $5/1048576}'
    $DOCKER build --network host --build-arg BINARIES=prebuilt --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -t cluegetter:offline . || { rm -rf "$stage"; die "building cluegetter:offline failed"; }
    rm -rf "$stage"
    say "cluegetter:offline is $($DOCKER image inspect -f '{{.Size}}' cluegetter:offline | awk '{printf "%.1f MB", $1/1048576}')"
    phase cluegetter-image "$t0"
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
    case $what in
        base) build_base ;;
        services) build_services ;;
        cluegetter) build_cluegetter ;;
        all) build_base; build_services; build_cluegetter ;;
        *) die "unknown part '$what' (base, services, cluegetter, all)" ;;
    esac
done
