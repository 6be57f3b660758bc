# hlgate container image.
#
#   docker build -t hlgate .
#   docker run -d --name hlgate -p 8080:8080 -v hlgate-data:/data \
#     -e HLGATE_AMQP_URL='amqp://user:password@rabbitmq:5672/%2f' hlgate
#
# Settings are the HLGATE_* variables of the README; this image changes three defaults:
# the public listener is on all interfaces (HLGATE_LISTEN=0.0.0.0:8080), the data directory is
# the volume /data, and logs stay JSON. Set HLGATE_AMQP_URL: inside a container 127.0.0.1 is the
# container itself.
#
# The admin listener (health, readiness, metrics, tokens, replay) stays on loopback inside the
# container, as hlgate's default: the HEALTHCHECK runs inside the container, so it reaches it.
# To scrape metrics or call the admin API from outside, listen on all interfaces and set a
# token (hlgate refuses a non-loopback admin listener without one):
#
#   docker run ... -p 9090:9090 -e HLGATE_ADMIN_LISTEN=0.0.0.0:9090 \
#     -e HLGATE_ADMIN_TOKEN="$(openssl rand -hex 32)" hlgate
#
# Keep port 9090 off the public network even then; only /healthz and the console's page (which
# holds no data: it asks the API with the token) answer without the token.

FROM rust:1-slim-bookworm AS builder
# jemalloc (the allocator) is built from source with make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The JSON Schemas in schemas/ (build.rs) and the console's files in console/ are compiled into
# the binary: the runtime stage needs no source files.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --bin hlgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hlgate \
    && useradd --system --uid 10001 --gid hlgate --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin hlgate \
    && mkdir -p /data \
    && chown hlgate:hlgate /data \
    && chmod 0700 /data
COPY --from=builder /src/target/release/hlgate /usr/local/bin/hlgate

ENV HLGATE_LISTEN=0.0.0.0:8080 \
    HLGATE_ADMIN_LISTEN=127.0.0.1:9090 \
    HLGATE_DATA_DIR=/data \
    HLGATE_LOG_FORMAT=json

USER hlgate:hlgate
WORKDIR /data
# The sled outbox, the dedup keys, the archive and the generated token key: keep it on a volume,
# or a restart loses accepted events that were not published yet.
VOLUME /data
EXPOSE 8080 9090

# `hlgate healthcheck` asks the admin listener's /healthz (HLGATE_ADMIN_LISTEN) and exits 0 on 200.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["hlgate", "healthcheck"]

# SIGTERM drains in order within HLGATE_SHUTDOWN_GRACE (default 10s); docker stop waits 10s by
# default, so give it more when raising the grace (docker stop -t / stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["hlgate"]
CMD ["serve"]
