# syntax=docker/dockerfile:1
# The Nimbus image the Helm chart runs by default (chart/values.yaml image.*): one image for
# every role, `nimbus mta` | `nimbus tsa` | `nimbus sink` (the chart sets command and args).
#
#   docker build -t ghcr.io/nimbus-mta/nimbus:0.1.0 .
#   docker run --rm -p 2525:2525 -p 8000:8000 ghcr.io/nimbus-mta/nimbus:0.1.0 mta
#
# Without a registry: .ci/image.sh builds a Debian bookworm base with mmdebstrap from the
# machine's own apt sources, passes it as PYTHON_IMAGE, builds this file with podman and
# smoke-tests the image (README "The container image"). Any base with python3 and its venv
# module works: the official python image, or Debian with python3-venv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: install the project and its dependencies into a virtualenv ----------------------
FROM ${PYTHON_IMAGE} AS builder
# A CA bundle for pip where TLS is intercepted (.ci/image.sh mounts the host's); unset: none.
ARG PIP_CERT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/nimbus

WORKDIR /src
# Only what the package build needs (pyproject's packages + package-data and the readme);
# .dockerignore keeps tests, bench, chart and local data out of the context.
COPY pyproject.toml README.md ./
COPY .ci/image-constraints.txt ./constraints.txt
COPY engine ./engine
COPY policy ./policy
COPY tsa ./tsa
COPY sink ./sink

# A regular (non-editable) install: the bundled policy lands in site-packages/policy, where
# engine.config.settings.BUNDLED_POLICY_DIR finds it. Every dependency at the version pinned in
# .ci/image-constraints.txt (reproducible images). Bytecode is compiled here, once, because the
# runtime filesystem is read-only.
RUN /opt/nimbus/bin/pip install --no-compile -c constraints.txt ".[fast]" \
 && /opt/nimbus/bin/python -m compileall -q /opt/nimbus/lib \
 && /opt/nimbus/bin/nimbus --version

# --- runtime: the virtualenv on the same base, as a non-root user -----------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="nimbus" \
      org.opencontainers.image.description="Nimbus: a KumoMTA-compatible MTA programmable in Python" \
      org.opencontainers.image.licenses="Apache-2.0"

# uid/gid 10001 match the chart's podSecurityContext (runAsUser/runAsGroup/fsGroup).
RUN groupadd --system --gid 10001 nimbus \
 && useradd --system --uid 10001 --gid nimbus --no-create-home \
        --home-dir /var/lib/nimbus --shell /usr/sbin/nologin nimbus \
 && mkdir -p /var/lib/nimbus /var/spool/nimbus /var/log/nimbus /etc/nimbus \
 && chown nimbus:nimbus /var/lib/nimbus /var/spool/nimbus /var/log/nimbus

COPY --from=builder /opt/nimbus /opt/nimbus

ENV PATH=/opt/nimbus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NIMBUS_SPOOL_DIR=/var/spool/nimbus \
    NIMBUS_LOG_DIR=/var/log/nimbus

WORKDIR /var/lib/nimbus
USER 10001:10001

# SMTP, HTTP (inject/liveness/metrics), TSA, sink SMTP, sink HTTP.
EXPOSE 2525 8000 8008 2526 8001

ENTRYPOINT ["nimbus"]
CMD ["mta"]
