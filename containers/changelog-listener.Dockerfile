# Conveyor changelog listener: the agent on every node -- watches source packages, applies signed
# changesets to target release roots, reports drift and heartbeats.
#
#   docker build -f containers/changelog-listener.Dockerfile -t conveyor/changelog-listener .   # repo root
#
# The image holds one virtualenv with conveyor-changelog-listener, the conveyor library and their
# locked third-party dependencies -- no other Conveyor service. Runs as uid 10001, never root.
# Configuration: CONVEYOR_CHANGELOG_LISTENER_* (services/changelog-listener/README.md).
# In a container it restarts no units: the image has no systemctl, supervisorctl, sudo or runuser, and
# no way to the host's service manager; use SERVICE_MANAGER=none. HTTP_HOST stays on loopback (the
# service's default): with --network host, /healthz and /metrics are not opened to the network.
# Written for the classic builder as well as BuildKit (no RUN --mount, no COPY --chmod).

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# -- builder: resolve from uv.lock, install into /opt/conveyor/venv -----------------------------------
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/opt/conveyor/venv \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# uv reads the whole workspace (every member's pyproject.toml) to use the lock file; only the
# members this service needs are installed, and only their sources are copied further down.
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/
COPY services/version-db/pyproject.toml services/version-db/
COPY services/deployer/pyproject.toml services/deployer/
COPY services/notifier/pyproject.toml services/notifier/
COPY services/changelog-listener/pyproject.toml services/changelog-listener/
COPY services/firewall-agent/pyproject.toml services/firewall-agent/
# Third-party dependencies first: this layer is rebuilt only when the lock file changes.
RUN uv sync --frozen --no-dev --no-install-workspace --package conveyor-changelog-listener
# Then the service and the library, built as wheels (--no-editable: nothing points back into /src);
# --locked: the build fails if uv.lock no longer matches the packages' pyproject.toml.
COPY shared/ shared/
COPY services/changelog-listener/ services/changelog-listener/
RUN uv sync --locked --no-dev --no-editable --package conveyor-changelog-listener \
 && /opt/conveyor/venv/bin/python -c "import conveyor_changelog_listener.__main__" \
 && /opt/conveyor/venv/bin/python -c "import importlib.util as u, sys; found = [m for m in ('conveyor_version_db', 'conveyor_deployer', 'conveyor_notifier', 'conveyor_changelog_listener', 'conveyor_firewall_agent') if u.find_spec(m)]; sys.exit(0 if found == ['conveyor_changelog_listener'] else f'Conveyor services in the image: {found}, expected only conveyor_changelog_listener')"

# -- runtime: Python and the virtualenv only ---------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="conveyor-changelog-listener" \
      org.opencontainers.image.description="Conveyor's node agent: watches source packages, applies signed changesets atomically, detects drift" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The Conveyor developers" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# STATE_DIR (outbox, command journal, marks, downloads, built changesets) is a volume, 0700.
# /srv/conveyor is a writable parent for package roots (mount a volume or the host's directory
# there, owned by uid 10001); /etc/conveyor/trust takes a trusted-keys file shared read-only with
# the deployer (owned by 10001 so that a fresh named volume seeded from this image stays writable
# for the deployer, whichever container mounts it first).
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /var/lib/conveyor --no-create-home \
        --shell /usr/sbin/nologin conveyor \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/conveyor/changelog-listener \
 && install -d -o 10001 -g 10001 -m 0755 /srv/conveyor /etc/conveyor/trust
COPY --from=builder /opt/conveyor/venv /opt/conveyor/venv
ENV PATH=/opt/conveyor/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/conveyor/changelog-listener
VOLUME ["/var/lib/conveyor/changelog-listener"]
EXPOSE 8103
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVEYOR_CHANGELOG_LISTENER_HTTP_PORT', '8103') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor-changelog-listener"]
