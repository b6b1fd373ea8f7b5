# syntax=docker/dockerfile:1
# Production image: CUDA runtime, the package and its dependencies, `serve run` of the
# production config. Model weights are not baked in: they download to (or are mounted at)
# the Hugging Face cache volume.
#
#   docker build -t asr-service .
#   docker run --gpus all -p 8000:8000 -v hf-cache:/home/app/.cache/huggingface asr-service

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY serve_app ./serve_app
# Every dependency at the version the project was tested with; torch's default wheel on
# Linux is the CUDA build.
RUN pip install --upgrade pip==25.3 && pip install -c requirements.lock .

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# wget: KubeRay injects readiness and liveness probes that run
# `bash -c "wget ... http://localhost:52365/api/local_raylet_healthz | grep success"` (and, on
# RayService workers, `:8000/-/healthz`); without it no pod ever turns Ready.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libsndfile1 curl wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app
COPY --from=build /opt/venv /opt/venv
# HAProxy (bundled with ray[serve]) takes the HTTP port and forwards to the ingress
# replicas' own servers. The proxy guard caps request bodies where Ray first sees them and
# turns Ray's own plain-text errors into the API's JSON shape; every node needs both.
# Keep ASR_MAX_UPLOAD_BYTES = limits.max_upload_bytes + 64 KiB of multipart framing.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/app/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_hooks:proxy_middlewares \
    ASR_MAX_UPLOAD_BYTES=104923136
WORKDIR /app
COPY configs ./configs
# var/: the embedded job store (jobs.sqlite_path, SQLite) when no Redis URL is set; a volume,
# so queued and running jobs outlive the container.
RUN mkdir -p /app/var && chown app /app/var
USER app
VOLUME ["/home/app/.cache/huggingface", "/app/var"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["serve", "run", "configs/prod.yaml"]
