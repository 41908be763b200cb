# One image for the four processes; docker-compose.yml picks the binary per service.
#
#   docker build -t cluegetter .                         build the binaries in the image (users)
#   docker build --build-arg BINARIES=prebuilt \
#       --build-arg BASE_IMAGE=cluegetter-offline/base:bookworm -t cluegetter:offline .
#                                                         copy binaries built on the host from
#                                                         docker-bin/ (scripts/compose-images.sh)
#
# BuildKit (the default builder) builds only the stages the chosen binaries need. The runtime
# stage is the same either way; scripts/compose-test.sh builds and runs it (with prebuilt
# binaries: there is no registry for rust:* on the test machines).
ARG BINARIES=build
ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

# --- binaries built in the image: release code, stripped (Cargo.toml's [profile.dist])
FROM ${RUST_IMAGE} AS binaries-build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked \
        --bin milter-gateway --bin check-workers --bin auditor --bin bounce-ingest \
 && mkdir /out \
 && cp target/dist/milter-gateway target/dist/check-workers target/dist/auditor \
       target/dist/bounce-ingest /out/

# --- binaries built on the host (cargo build --profile dist), staged in docker-bin/
FROM scratch AS binaries-prebuilt
COPY docker-bin/milter-gateway docker-bin/check-workers docker-bin/auditor docker-bin/bounce-ingest /out/

FROM binaries-${BINARIES} AS binaries

# --- the runtime image
FROM ${BASE_IMAGE}
RUN if ! dpkg -s ca-certificates >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends ca-certificates \
        && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
 && groupadd --system --gid 10033 cluegetter \
 && useradd --system --uid 10033 --gid cluegetter --home-dir /var/spool/cluegetter \
        --no-create-home --shell /usr/sbin/nologin cluegetter \
 && mkdir -p /etc/cluegetter /var/spool/cluegetter /var/spool/cluegetter-bounce \
 && chown cluegetter:cluegetter /var/spool/cluegetter /var/spool/cluegetter-bounce
COPY --from=binaries /out/ /usr/local/bin/
COPY docker/cluegetter-healthcheck /usr/local/bin/cluegetter-healthcheck
COPY cluegetter.example.toml /etc/cluegetter/cluegetter.example.toml
ENV CLUEGETTER_LOG_LEVEL=info
USER cluegetter
WORKDIR /var/spool/cluegetter
# every process serves /metrics; the gateway and bounce-ingest also listen for Postfix
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=3 CMD ["cluegetter-healthcheck"]
CMD ["milter-gateway"]
