# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin edge-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin edge \
 && mkdir -p /data && chown edge:edge /data
COPY --from=build /src/target/release/edge-gateway /usr/local/bin/edge-gateway
COPY config/examples/container.toml /etc/edge-gateway/container.toml
USER 10001:10001
VOLUME ["/data"]
# 8080: HTTP ingest. 8081: admin API (health, metrics; /admin/* needs the admin token).
EXPOSE 8080 8081
# The admin API is TLS by default: the health check only asks whether it accepts connections.
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8081"]
ENTRYPOINT ["edge-gateway"]
# TLS on every interface: mount /data/tls/server.pem and server.key. A cleartext trial needs
# the one flag `--insecure-listen`:
#   docker run -p 8080:8080 -p 8081:8081 -v edge-data:/data edge-gateway \
#     run --data-dir /data --http-listen 0.0.0.0:8080 --admin-listen 0.0.0.0:8081 --insecure-listen
CMD ["run", "--config", "/etc/edge-gateway/container.toml"]
