"""Conveyor's central package index: a private index (pypiserver) on the deployment server.

    python scripts/repo.py serve   [--port 8180] [--dir .repo/packages]   # `make repo`
    python scripts/repo.py publish [--url http://127.0.0.1:8180]          # `make publish`

``serve`` runs pypiserver with upload authentication: uploads need the user and password of
``CONVEYOR_REPO_USER`` / ``CONVEYOR_REPO_PASSWORD`` (kept as a bcrypt htpasswd next to the packages);
downloads are open to the nodes. ``publish`` builds every package of the repository (wheel and sdist,
one version for all), uploads them, and with ``--with-dependencies`` (the default) also the wheels of
everything they need from PyPI, so a node installs from this index alone, with no other index
reachable. A file the index already has is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "conveyor",
    "conveyor-version-db",
    "conveyor-deployer",
    "conveyor-notifier",
    "conveyor-changelog-listener",
    "conveyor-firewall-agent",
)

__all__ = [
    "PACKAGES",
    "build",
    "dependency_wheels",
    "htpasswd",
    "publish",
    "running",
    "serve_command",
    "upload",
]


class RepoError(RuntimeError):
    pass


def _credentials() -> tuple[str, str]:
    user, password = os.environ.get("CONVEYOR_REPO_USER"), os.environ.get("CONVEYOR_REPO_PASSWORD")
    if not user or not password:
        raise RepoError("set CONVEYOR_REPO_USER and CONVEYOR_REPO_PASSWORD (who may upload)")
    return user, password


def htpasswd(path: Path, user: str, password: str) -> None:
    """``path`` holding ``user`` with a bcrypt hash of ``password`` (mode 0600)."""
    from passlib.apache import HtpasswdFile  # type: ignore[import-untyped]  # noqa: PLC0415 - the index's own

    path.parent.mkdir(parents=True, exist_ok=True)
    store = HtpasswdFile(str(path), new=not path.exists(), default_scheme="bcrypt")
    store.set_password(user, password)
    store.save()
    path.chmod(0o600)


def serve_command(directory: Path, port: int, host: str, passwords: Path) -> list[str]:
    """pypiserver on ``host:port`` serving ``directory``; uploads only with a password from
    ``passwords``, downloads for everyone."""
    return [
        str(Path(sys.executable).parent / "pypi-server"),
        "run",
        "--host",
        host,
        "--port",
        str(port),
        "--passwords",
        str(passwords),
        "--authenticate",
        "update",
        "--disable-fallback",
        str(directory),
    ]


@contextlib.contextmanager
def running(
    directory: Path, user: str, password: str, *, port: int, host: str = "127.0.0.1"
) -> Iterator[str]:
    """The index serving ``directory/packages`` (uploads as ``user``), until the block ends: its URL.
    ``RepoError`` with the index's log when it does not answer within 30 s."""
    import httpx  # noqa: PLC0415

    (directory / "packages").mkdir(parents=True, exist_ok=True)
    passwords = directory / "htpasswd"
    htpasswd(passwords, user, password)
    log_path = directory / "index.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(directory / "packages", port, host, passwords), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/simple/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RepoError(f"the index at {url} did not come up: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def build(out: Path) -> list[Path]:
    """Wheels and sdists of every package, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["uv", "build", "--all-packages", "--quiet", "-o", str(out)], cwd=ROOT, check=True)
    return sorted(p for p in out.iterdir() if p.suffix in (".whl", ".gz"))


def dependency_wheels(out: Path, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """The wheels of every third-party package ``packages`` need (from the lock file), for this
    platform and Python, downloaded from PyPI into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    requirements = out / "requirements.txt"
    args = ["uv", "export", "--frozen", "--no-dev", "--no-emit-workspace", "--no-hashes", "--no-header"]
    for package in packages:
        args += ["--package", package]
    requirements.write_text(subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:"]
    subprocess.run([*pip, "-d", str(out), "-r", str(requirements)], check=True)
    return sorted(out.glob("*.whl"))


def upload(files: list[Path], url: str, user: str, password: str) -> None:
    """Upload ``files`` to the index at ``url``; files it already has are skipped."""
    if not files:
        return
    base = url.rstrip("/")
    done = subprocess.run(
        [
            *("uv", "publish", "--publish-url", f"{base}/", "--check-url", f"{base}/simple/"),
            *("--username", user, "--password", password),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RepoError(f"upload to {url} failed: {done.stderr.strip()[-2000:]}")


def publish(url: str, *, with_dependencies: bool = True) -> int:
    user, password = _credentials()
    with tempfile.TemporaryDirectory(prefix="conveyor-publish-") as scratch:
        own = build(Path(scratch) / "dist")
        upload(own, url, user, password)
        count = len(own)
        if with_dependencies:
            wheels = dependency_wheels(Path(scratch) / "deps")
            upload(wheels, url, user, password)
            count += len(wheels)
    return count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the index")
    serve.add_argument("--port", type=int, default=8180)
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the nodes")
    serve.add_argument("--dir", type=Path, default=ROOT / ".repo" / "packages")
    push = commands.add_parser("publish", help="build and upload every package")
    push.add_argument("--url", default=os.environ.get("CONVEYOR_REPO_URL", "http://127.0.0.1:8180"))
    push.add_argument("--no-dependencies", action="store_true", help="only Conveyor's own packages")
    args = parser.parse_args()
    try:
        if args.command == "serve":
            args.dir.mkdir(parents=True, exist_ok=True)
            passwords = args.dir.parent / "htpasswd"
            htpasswd(passwords, *_credentials())
            print(f"serving {args.dir} at http://{args.host}:{args.port}/simple/ (uploads need a password)")
            command = serve_command(args.dir, args.port, args.host, passwords)
            os.execv(command[0], command)
        count = publish(args.url, with_dependencies=not args.no_dependencies)
        print(f"{args.url}: {count} file(s) published (already there: skipped)")
    except (RepoError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
