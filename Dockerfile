# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild Pingora.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
 && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && for b in rewrite fleet load; do echo 'fn main() {}' > benches/$b.rs; done \
 && echo '' > tests/it/main.rs \
 && cargo build --release --locked --bin llmedge \
 && rm -rf src benches tests
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin llmedge

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home llmedge \
 && mkdir -p /var/lib/llmedge \
 && chown llmedge:llmedge /var/lib/llmedge
COPY --from=build /src/target/release/llmedge /usr/local/bin/llmedge
COPY conf/llmedge.yaml /etc/llmedge/llmedge.yaml
USER llmedge
# spend and limit windows (llmedge-state.json) and the control-plane store (llmedge.db, SQLite)
# live here; mount a volume to keep them
WORKDIR /var/lib/llmedge
VOLUME /var/lib/llmedge
EXPOSE 8080 9090
# the API listener's /healthz, with bash's /dev/tcp (the slim image has no curl)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.1\\r\\nHost: l\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
# docker stop sends SIGTERM: open streams get server.grace_period_secs (run with
# --stop-timeout 75 or longer); docker kill -s HUP reloads the config
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/llmedge"]
CMD ["--config", "/etc/llmedge/llmedge.yaml"]
