# Conveyor version-db: the record of every version, deployment and audit event; the artifact store.
#
#   docker build -f containers/version-db.Dockerfile -t conveyor/version-db .      # from the repository root
#
# The image holds one virtualenv with conveyor-version-db, the conveyor library and their locked
# third-party dependencies -- no other Conveyor service. Runs as uid 10001, never root.
# Configuration: CONVEYOR_VERSION_DB_* (services/version-db/README.md); containers/README.md for volumes.
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
RUN uv sync --frozen --no-dev --no-install-workspace --package conveyor-version-db
# Then the service and the library, built as wheels (--no-editable: nothing points back into /src);
# --locked: the build fails if uv.lock no longer matches the packages' pyproject.toml.
COPY shared/ shared/
COPY services/version-db/ services/version-db/
RUN uv sync --locked --no-dev --no-editable --package conveyor-version-db \
 && /opt/conveyor/venv/bin/python -c "import conveyor_version_db.__main__" \
 && /opt/conveyor/venv/bin/python -c "import importlib.util as u, sys; found = [m for m in ('conveyor_version_db', 'conveyor_deployer', 'conveyor_notifier', 'conveyor_changelog_listener', 'conveyor_firewall_agent') if u.find_spec(m)]; sys.exit(0 if found == ['conveyor_version_db'] else f'Conveyor services in the image: {found}, expected only conveyor_version_db')"

# -- runtime: Python and the virtualenv only ---------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="conveyor-version-db" \
      org.opencontainers.image.description="Conveyor's record of package versions, deployments and audit events, and the changeset artifact store" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The Conveyor developers" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The service has no STATE_DIR and its defaults are relative to the working directory (the embedded
# SQLite database, ARTIFACTS_DIR): both are pinned below to one volume. With MySQL/MariaDB
# (DATABASE_URL=mysql+asyncmy://...) the volume holds the artifacts only.
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /var/lib/conveyor --no-create-home \
        --shell /usr/sbin/nologin conveyor \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/conveyor/version-db /var/lib/conveyor/version-db/artifacts
COPY --from=builder /opt/conveyor/venv /opt/conveyor/venv
ENV PATH=/opt/conveyor/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_VERSION_DB_HTTP_HOST=0.0.0.0 \
    CONVEYOR_VERSION_DB_DATABASE_URL=sqlite+aiosqlite:////var/lib/conveyor/version-db/version-db.sqlite3 \
    CONVEYOR_VERSION_DB_ARTIFACTS_DIR=/var/lib/conveyor/version-db/artifacts
USER 10001:10001
WORKDIR /var/lib/conveyor/version-db
VOLUME ["/var/lib/conveyor/version-db"]
EXPOSE 8101
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVEYOR_VERSION_DB_HTTP_PORT', '8101') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor-version-db"]
