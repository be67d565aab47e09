# syntax=docker/dockerfile:1
# One image for the injected sidecar (`otlp-sidecar run`) and the injection webhook
# (`otlp-sidecar webhook serve`). Stage 1 compiles the Cython accelerators; stage 2 holds
# only the installed virtualenv and runs as a non-root user (uid 65532).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ./ext
COPY sidecar ./sidecar
RUN python -m venv /opt/otlp-sidecar \
 && /opt/otlp-sidecar/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/otlp-sidecar/bin/pip install --no-cache-dir . \
 && cd / \
 && /opt/otlp-sidecar/bin/python -c "import importlib, pathlib; [importlib.import_module('sidecar._ext.' + p.stem) for p in pathlib.Path('/src/ext').glob('*.pyx')]; print('C extensions built')" \
 && /opt/otlp-sidecar/bin/otlp-sidecar --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otlp-sidecar" \
      org.opencontainers.image.description="Per-pod OTLP policy sidecar and its injection webhook"
COPY --from=build /opt/otlp-sidecar /opt/otlp-sidecar
ENV PATH=/opt/otlp-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# numeric, so `runAsNonRoot` can verify it without a passwd entry
USER 65532:65532
WORKDIR /tmp
# OTLP/gRPC, OTLP/HTTP, admin (sidecar); HTTPS (webhook)
EXPOSE 4317 4318 13133 8443
CMD ["otlp-sidecar", "run"]
