# syntax=docker/dockerfile:1
#
# chat: one image for every role (gateway, consumer, migrate).
#
#   docker build -t chat:local .            (BuildKit, the default builder since Docker 23)
#   docker run --rm chat:local --help
#   docker run --rm chat:local config --list     (every flag and environment variable)
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e REDIS_URL=... \
#       -e KAFKA_BROKERS=... -e JWT_SECRET=... chat:local serve --role gateway
#
# The build needs only a C compiler besides Rust (diesel's `postgres_backend` talks to
# PostgreSQL through tokio-postgres, no libpq; the embedded mode's SQLite is bundled C source),
# so the binary links just libc and the runtime image needs no database client libraries.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

########################################################################################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# Cache mounts: the crates.io registry and the target directory survive between builds
# (BuildKit keeps them on the builder). The target directory is a cache mount, so the
# binary is copied out of it to /out inside the same RUN.

# 1. Dependencies only. This layer and the compiled dependencies are reused as long as
#    Cargo.toml and Cargo.lock do not change.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,id=chat-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=chat-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=chat-target,target=/build/target,sharing=locked \
    mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The real sources. migrations/ and static/ are compiled into the binary
#    (embed_migrations!, the built-in browser client), so they belong to the build context.
COPY diesel.toml ./
COPY migrations ./migrations
COPY static ./static
COPY src ./src
# COPY keeps the files' own mtimes, which can be older than the dummy build above: touch
# the crate root so cargo always rebuilds the crate itself (dependencies stay cached).
RUN --mount=type=cache,id=chat-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=chat-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=chat-target,target=/build/target,sharing=locked \
    touch src/main.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/chat /out/chat

########################################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: TLS to managed PostgreSQL / Redis / Kafka. tini: PID 1 that forwards
# SIGTERM to chat (which then drains) and reaps zombies.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chat \
 && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chat \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/chat

COPY --from=builder /out/chat /usr/local/bin/chat

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# Without DATABASE_URL/REDIS_URL/KAFKA_BROKERS the container runs the embedded mode
# (`docker run -p 8080:8080 -v chat-data:/var/lib/chat IMAGE`): SQLite and the generated
# token secret in DATA_DIR. With them (compose.yaml, deploy/k8s) DATA_DIR is unused.
ENV LISTEN_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    DATA_DIR=/var/lib/chat
VOLUME ["/var/lib/chat"]
EXPOSE 8080

# SIGTERM starts the graceful drain (gateways tell clients to reconnect and finish in-flight
# sends; consumers commit and release their partition leases). Give it ~30 s before SIGKILL
# (compose: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# No HEALTHCHECK: the image has no curl/wget and chat has no probe subcommand. Orchestrators
# probe HTTP directly: GET /healthz (liveness) and GET /readyz (readiness: 503 while draining
# or while PostgreSQL/Redis/Kafka is unreachable) on LISTEN_ADDR, as deploy/k8s does.

ENTRYPOINT ["/usr/bin/tini", "--", "chat"]
CMD ["serve"]
