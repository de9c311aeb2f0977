# syntax=docker/dockerfile:1
# The model runtime (Korean sentence embeddings over gRPC):
#   docker build -f docker/model-runtime.Dockerfile -t moa-model-runtime .                 # model mounted at /models
#   docker build -f docker/model-runtime.Dockerfile --target baked -t moa-model-runtime:baked .  # model inside
# The default image expects the model directory (model.onnx, tokenizer.json, moa.json, as
# scripts/fetch-model.sh writes it) mounted at /models/multilingual-e5-small: from a volume, or an
# init container that copies it from object storage. `baked` builds it in (about 470 MB more).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY host host
COPY model-runtime model-runtime
COPY proto proto
COPY wit wit
COPY sdk sdk
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p moa-model-runtime --bin moa-model-runtime \
    && install -m 0755 target/release/moa-model-runtime /usr/local/bin/moa-model-runtime

# ONNX Runtime's shared library (ort loads it at run time), from the PyPI wheel moa is tested with.
FROM python:3.12-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir onnxruntime==1.32.0 \
    && cp "$(python -c 'import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))')/capi/libonnxruntime.so.1.32.0" /libonnxruntime.so

# The default model, exported as scripts/fetch-model.sh does (only for the `baked` target).
FROM python:3.12-slim-bookworm AS model
COPY scripts/model /src/scripts/model
COPY scripts/fetch-model.sh scripts/lib.sh /src/scripts/
RUN MOA_CACHE_HOME=/cache bash /src/scripts/fetch-model.sh \
    && mkdir -p /models && cp -rL /cache/models/multilingual-e5-small /models/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home moa
COPY --from=build /usr/local/bin/moa-model-runtime /usr/local/bin/moa-model-runtime
COPY --from=onnxruntime /libonnxruntime.so /opt/onnxruntime/libonnxruntime.so
USER 10001:10001
ENV MOA_ORT_LIB=/opt/onnxruntime/libonnxruntime.so \
    MOA_MODEL_DIR=/models/multilingual-e5-small \
    MOA_MODEL_LISTEN=0.0.0.0:50051 \
    MOA_MODEL_ADMIN_LISTEN=0.0.0.0:9091
EXPOSE 50051 9091
# /readyz on the admin port: 200 once the model is loaded (the gRPC port also answers grpc.health.v1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9091 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/moa-model-runtime"]
CMD ["serve"]

FROM runtime AS baked
COPY --from=model --chown=10001:10001 /models /models

# The default target: the model comes from a mount.
FROM runtime
