# Conveyor firewall agent: opens a node's firewall for a signed, time-limited lease and restores it.
#
#   docker build -f containers/firewall-agent.Dockerfile -t conveyor/firewall-agent .   # repo root
#
# The image holds one virtualenv with conveyor-firewall-agent, the conveyor library and their locked
# third-party dependencies -- no other Conveyor service.
#
# It changes the firewall of the network namespace it runs in, so on a node it needs:
#   docker run --network host --cap-add NET_ADMIN --cap-add NET_RAW ...
#     --network host  the host's network namespace, i.e. the host's firewall (without it the agent
#                     would only change the container's own, empty ruleset);
#     NET_ADMIN       to read and write nftables/iptables rules;
#     NET_RAW         iptables-legacy needs it (most runtimes grant it by default; ask for it anyway).
# It runs as ROOT inside the container: nft and iptables need CAP_NET_ADMIN in their effective set,
# and the runtime gives the added capabilities to root's processes only (no ambient capabilities for
# other users). Nothing else runs in the image.
# Firewall tools in the image: nft (nftables), iptables-nft / iptables-legacy and their -save/-restore
# and ip6tables variants (iptables), ip (iproute2, for NETNS). ufw and firewalld are NOT included:
# on such hosts the agent drives the host's own daemon, which needs the host's /etc/ufw and
# /etc/default/ufw, or firewalld's system bus, mounted in -- see services/firewall-agent/README.md.
# HTTP_HOST stays on loopback (the service's default): with --network host that is the host's loopback.
# Configuration: CONVEYOR_FIREWALL_AGENT_* (services/firewall-agent/README.md).
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
RUN uv sync --frozen --no-dev --no-install-workspace --package conveyor-firewall-agent
# Then the service and the library, built as wheels (--no-editable: nothing points back into /src);
# --locked: the build fails if uv.lock no longer matches the packages' pyproject.toml.
COPY shared/ shared/
COPY services/firewall-agent/ services/firewall-agent/
RUN uv sync --locked --no-dev --no-editable --package conveyor-firewall-agent \
 && /opt/conveyor/venv/bin/python -c "import conveyor_firewall_agent.__main__" \
 && /opt/conveyor/venv/bin/python -c "import importlib.util as u, sys; found = [m for m in ('conveyor_version_db', 'conveyor_deployer', 'conveyor_notifier', 'conveyor_changelog_listener', 'conveyor_firewall_agent') if u.find_spec(m)]; sys.exit(0 if found == ['conveyor_firewall_agent'] else f'Conveyor services in the image: {found}, expected only conveyor_firewall_agent')"

# -- runtime: Python and the virtualenv only ---------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="conveyor-firewall-agent" \
      org.opencontainers.image.description="Conveyor's firewall agent: opens a node's firewall for a signed, time-limited lease and restores it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The Conveyor developers" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# The firewall tools the backends run (nftables, iptables-nft, iptables-legacy; ip for NETNS), as the
# base image's Debian release has them (pinning versions would tie the file to one release).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
# STATE_DIR (the lease, the saved firewall, the audit log, outbox, journal) is a volume, 0700.
# /etc/conveyor/trust: see containers/changelog-listener.Dockerfile (uid 10001 is the deployer's).
RUN install -d -m 0700 /var/lib/conveyor/firewall-agent \
 && install -d -o 10001 -g 10001 -m 0755 /etc/conveyor/trust
COPY --from=builder /opt/conveyor/venv /opt/conveyor/venv
ENV PATH=/opt/conveyor/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# root, deliberately: see the top of this file.
# hadolint ignore=DL3002,DL3066
USER root
WORKDIR /var/lib/conveyor/firewall-agent
VOLUME ["/var/lib/conveyor/firewall-agent"]
EXPOSE 8104
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVEYOR_FIREWALL_AGENT_HTTP_PORT', '8104') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor-firewall-agent"]
