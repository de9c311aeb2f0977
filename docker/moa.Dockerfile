# syntax=docker/dockerfile:1
# The moa host: `docker build -f docker/moa.Dockerfile -t moa .` from the repository root.
# It runs apps from an OCI registry (`moa up --from REGISTRY/APP@sha256:...`, see docs/operations.md),
# so the image carries no app: one image serves every app version.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# cmake is not needed: librdkafka builds with its own configure; usearch needs only g++.
COPY Cargo.toml Cargo.lock ./
COPY host host
COPY model-runtime model-runtime
COPY proto proto
COPY wit wit
COPY sdk sdk
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p moa --bin moa \
    && install -m 0755 target/release/moa /usr/local/bin/moa

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/moa --create-home moa
COPY --from=build /usr/local/bin/moa /usr/local/bin/moa
USER 10001:10001
WORKDIR /var/lib/moa
# State of embedded backends and the registry/compile caches live under /var/lib/moa (an emptyDir or
# a volume); production backends (Kafka, Redis, MongoDB) come from the runtime config.
ENV MOA_STATE_DIR=/var/lib/moa/state \
    MOA_REGISTRY_CACHE=/var/lib/moa/registry \
    MOA_CACHE_DIR=/var/lib/moa/components \
    MOA_LISTEN=0.0.0.0:3000 \
    MOA_ADMIN_LISTEN=0.0.0.0:9090 \
    MOA_LOG_FORMAT=json
EXPOSE 3000 9090
# /readyz on the admin port: 200 once every trigger serves (Kubernetes uses the chart's probes).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/moa"]
CMD ["up"]
