# One image for all four processes; docker-compose.yml picks the binary per service.
# Not built on our CI machines (no Docker engine there); docker-compose.yml is validated instead.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/milter-gateway /src/target/release/check-workers \
                  /src/target/release/auditor /src/target/release/bounce-ingest /usr/local/bin/
COPY cluegetter.example.toml /etc/cluegetter/cluegetter.example.toml
RUN mkdir -p /var/spool/cluegetter
ENV CLUEGETTER_LOG_LEVEL=info
