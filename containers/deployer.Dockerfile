# Conveyor deployer: promotions Dev -> QA -> Prod, signed node commands, SSH, firewall requests.
#
#   docker build -f containers/deployer.Dockerfile -t conveyor/deployer .      # from the repository root
#
# The image holds one virtualenv with conveyor-deployer, the conveyor library and their locked
# third-party dependencies -- no other Conveyor service. Runs as uid 10001, never root.
# Configuration: CONVEYOR_DEPLOYER_* (services/deployer/README.md); containers/README.md for volumes.
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
RUN uv sync --frozen --no-dev --no-install-workspace --package conveyor-deployer
# Then the service and the library, built as wheels (--no-editable: nothing points back into /src);
# --locked: the build fails if uv.lock no longer matches the packages' pyproject.toml.
COPY shared/ shared/
COPY services/deployer/ services/deployer/
RUN uv sync --locked --no-dev --no-editable --package conveyor-deployer \
 && /opt/conveyor/venv/bin/python -c "import conveyor_deployer.__main__" \
 && /opt/conveyor/venv/bin/python -c "import importlib.util as u, sys; found = [m for m in ('conveyor_version_db', 'conveyor_deployer', 'conveyor_notifier', 'conveyor_changelog_listener', 'conveyor_firewall_agent') if u.find_spec(m)]; sys.exit(0 if found == ['conveyor_deployer'] else f'Conveyor services in the image: {found}, expected only conveyor_deployer')"

# -- runtime: Python and the virtualenv only ---------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="conveyor-deployer" \
      org.opencontainers.image.description="Conveyor's deployment server: inventory, SSH, promotions with waves and rollbacks, signed commands, firewall requests" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The Conveyor developers" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# STATE_DIR (promotions, node versions, known_hosts, the package mirror, bootstrap wheels) is a
# volume; /etc/conveyor/keys takes the signing and SSH keys, /etc/conveyor/trust the nodes'
# trusted-keys file when the deployer writes it into a volume shared with containerised nodes.
RUN groupadd --system --gid 10001 conveyor \
 && useradd --system --uid 10001 --gid conveyor --home-dir /var/lib/conveyor --no-create-home \
        --shell /usr/sbin/nologin conveyor \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/conveyor/deployer /etc/conveyor/keys \
 && install -d -o 10001 -g 10001 -m 0755 /etc/conveyor/trust
COPY --from=builder /opt/conveyor/venv /opt/conveyor/venv
ENV PATH=/opt/conveyor/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_DEPLOYER_HTTP_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/conveyor/deployer
VOLUME ["/var/lib/conveyor/deployer"]
EXPOSE 8100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVEYOR_DEPLOYER_HTTP_PORT', '8100') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor-deployer"]
