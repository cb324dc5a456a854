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
USER 10001:10001
VOLUME ["/data"]
# 8080: HTTP ingest. 8081: admin API (health, metrics; /admin/* needs the admin token).
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8081 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q 200 <&3"]
ENTRYPOINT ["edge-gateway"]
CMD ["run", "--data-dir", "/data", "--http-listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:8081"]
