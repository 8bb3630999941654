# syntax=docker/dockerfile:1
# The Custos gateway image (docs/deployment.md).
#
# Two stages: `build` installs the package and its pinned dependencies into a virtualenv;
# `runtime` copies only that virtualenv onto a slim base, so no compiler, pip cache or source
# tree ships. The runtime runs as an unprivileged user (uid/gid 10001) and never writes outside
# /var/lib/custos (the SQLite store, its key files and the audit spool, when the config keeps
# them there) and /tmp, so it runs with a read-only root filesystem: mount a volume on
# /var/lib/custos and a tmpfs on /tmp. Bytecode is compiled at build time for the same reason.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/custos
WORKDIR /src
COPY pyproject.toml README.md ./
COPY custos ./custos
RUN /opt/custos/bin/pip install . \
 && /opt/custos/bin/python -m compileall -q /opt/custos/lib

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/custos/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUSTOS_HEALTHCHECK_URL=http://127.0.0.1:8787/healthz
RUN groupadd --system --gid 10001 custos \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/custos \
      --shell /usr/sbin/nologin custos \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/custos \
 && install -d -o root -g 10001 -m 0750 /etc/custos
COPY --from=build /opt/custos /opt/custos
WORKDIR /var/lib/custos
USER 10001:10001
VOLUME ["/var/lib/custos"]
EXPOSE 8787
# Liveness of the process, as Kubernetes' livenessProbe checks it; python, not curl: the slim
# base has no curl. Set CUSTOS_HEALTHCHECK_URL when serving on another port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['CUSTOS_HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["custos"]
# Mount the config at /etc/custos/custos.yaml. --host: a container's port is reached from
# outside its network namespace, so the gateway listens on every interface there.
CMD ["serve", "--config", "/etc/custos/custos.yaml", "--host", "0.0.0.0", "--port", "8787"]
