# The agent runtime's image: by default the NATS bridge with the agent_runtime function served in
# the same process, as the seed's container ran (docs/on-prem.md, "Containers", has every command).
#   docker build -t daarion/agent-runtime .
#   podman build --format docker -t daarion/agent-runtime .   (reads this file as Containerfile; the
#                                                              docker format keeps the HEALTHCHECK)
# Configuration comes from the environment and an optional mounted config.yaml (AGENT_RUNTIME_CONFIG);
# secrets from the environment or files (<NAME>_FILE). Nothing secret is baked in.
ARG BASE_IMAGE=python:3.12-slim

# Dependencies are installed here, into a venv the final stage copies: no pip, cache or build
# tooling reaches the image.
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="agent-runtime" \
      org.opencontainers.image.description="DAARION agent runtime: the NATS bridge and the agent_runtime function"
# HOST: the function (7006) and the runner's /health and /metrics (9106) reachable from outside.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGENT_RUNTIME__RUNNER__HOST=0.0.0.0
RUN groupadd --system --gid 10001 agent-runtime \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin agent-runtime
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# .dockerignore lets in only what runs: no tests, benchmarks or docs.
COPY . /app
# compiled now, as root: the service's user cannot write here, and need not compile at each start;
# the blueprint files too (a bad one fails the build)
RUN python -m compileall -q /app && python -m shared.blueprints
USER 10001:10001
EXPOSE 7006 9106
# The runner's health (NATS connected); HEALTHCHECK_URL points it elsewhere, e.g. the function's
# http://127.0.0.1:7006/health when the container serves only the function.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:%s/health' % os.environ.get('AGENT_RUNTIME__RUNNER__PORT', '9106'), timeout=4)"]
# Exec form: python is PID 1 and receives SIGTERM itself; the runner drains, then exits 0.
CMD ["python", "local_runner.py"]
