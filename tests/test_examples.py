"""The example applications (examples/), end to end as their users run them: Conveyor's packages
published on a private index with the wheels they need, each example built and installed into a
fresh virtual environment from that index alone, then run against the real broker.

- release-board (FastAPI) puts its own ``release_board.announced`` on Conveyor's bus and shows
  Conveyor's ``deployment.succeeded`` and ``changeset.applied`` on ``GET /board``;
- dir-watcher embeds the changelog listener's watcher and prints each change set of a directory.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any, TypeVar

import httpx
import pytest

from conveyor.bus import Bus, QueueSpec
from conveyor.contracts import Envelope
from conveyor.contracts.examples import EXAMPLES
from conveyor.testing.services import RabbitEndpoint, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import repo

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.rabbitmq

UPLOADER = ("publisher", "s3cret-upload")

T = TypeVar("T")


def _isolated(home: Path) -> dict[str, str]:
    """An environment that knows no index but the one given on the command line."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
    }


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An index on loopback (as tests/test_package_index.py starts it): uploads need a password."""
    with repo.running(tmp_path_factory.mktemp("index"), *UPLOADER, port=free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def installed(index: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Conveyor published with its dependencies; each example's console script, installed from its
    wheel into its own virtual environment with every dependency from the index."""
    scratch = tmp_path_factory.mktemp("examples")
    repo.upload(repo.build(scratch / "dist"), index, *UPLOADER)
    wheels = repo.dependency_wheels(scratch / "deps", ("conveyor", "conveyor-changelog-listener"))
    repo.upload(wheels, index, *UPLOADER)

    installs: dict[str, subprocess.Popen[str]] = {}
    for name in ("release-board", "dir-watcher"):
        out = scratch / "wheels" / name
        subprocess.run(
            ["uv", "build", "--wheel", "--quiet", "-o", str(out)], cwd=EXAMPLES_DIR / name, check=True
        )
        [wheel] = out.glob("*.whl")
        environment = scratch / f"{name}-venv"
        venv.create(environment, with_pip=True)
        installs[name] = subprocess.Popen(  # both at once: each resolves ~40 wheels
            [
                *(str(environment / "bin" / "pip"), "install", "--isolated", "--quiet"),
                *("--index-url", f"{index}/simple/", str(wheel)),
            ],
            env=_isolated(scratch),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {name: install.communicate(timeout=600)[0] for name, install in installs.items()}
    for name, install in installs.items():
        assert install.returncode == 0, f"installing {name}: {outputs[name][-3000:]}"
    return {name: scratch / f"{name}-venv" / "bin" / name for name in installs}


@pytest.fixture(scope="module")
def board_contracts() -> ModuleType:
    """The release board's contracts module, from its source (it needs nothing but ``conveyor``)."""
    path = EXAMPLES_DIR / "release-board" / "src" / "release_board" / "contracts.py"
    spec = importlib.util.spec_from_file_location("release_board_contracts", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


async def _eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.1)


async def test_release_board_puts_its_own_events_on_the_bus_and_shows_conveyors(
    installed: dict[str, Path], rabbit: RabbitEndpoint, board_contracts: ModuleType, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "release-board.log"
    with rabbit.private_vhost("examples") as vhost:
        url = rabbit.url_for(vhost)
        bus = Bus(env="qa", url=url, service="examples-test", registry=board_contracts.REGISTRY)
        await bus.connect()
        try:
            heard: asyncio.Queue[Envelope[Any]] = asyncio.Queue()
            listener = bus.consumer(
                QueueSpec(name="examples-test.announcements", binding_keys=("release_board.#",))
            )
            listener.on(board_contracts.ReleaseAnnounced, heard.put)
            await listener.start()
            env = _isolated(tmp_path) | {
                "RELEASE_BOARD_AMQP_URL": url,
                "RELEASE_BOARD_ENV": "qa",
                "RELEASE_BOARD_HTTP_PORT": str(port),
            }
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    installed["release-board"], env=env, stdout=log, stderr=log
                )
            try:
                await _use_the_release_board(f"http://127.0.0.1:{port}", process, log_path, bus, heard)
            finally:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        finally:
            await bus.close()
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert '"release_board_stopped"' in log_path.read_text()


async def _use_the_release_board(
    base_url: str,
    process: asyncio.subprocess.Process,
    log_path: Path,
    bus: Bus,
    heard: asyncio.Queue[Envelope[Any]],
) -> None:
    """Announce through its API and hear it on the bus; publish Conveyor's events, see the board."""
    announced = bus.registry.model_for("release_board.announced", 1)  # the board's own, in its registry
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:

        async def ready() -> bool | None:
            if process.returncode is not None:
                log = await asyncio.to_thread(log_path.read_text)
                raise AssertionError(f"release-board exited ({process.returncode}): {log[-3000:]}")
            try:
                return (await http.get("/healthz")).status_code == 200 or None
            except httpx.HTTPError:
                return None

        await _eventually(ready, timeout=60, what="release-board ready")

        announcement = {
            "package": "web",
            "version": "v42",
            "summary": "Uploads up to 50 MB",
            "announced_by": "ada",
        }
        response = await http.post("/announcements", json=announcement)
        assert response.status_code == 202, response.text
        assert response.json()["routing_key"] == "release_board.announced"

        message = await asyncio.wait_for(heard.get(), 30)
        assert message.payload == announced.model_validate(announcement)
        assert (message.env, message.source, message.actor) == ("qa", "release-board", "ada")
        assert str(message.id) == response.json()["message_id"]

        deployed = bus.wrap(EXAMPLES["deployment.succeeded"])
        applied = bus.wrap(EXAMPLES["changeset.applied"])
        await bus.publish(deployed)
        await bus.publish(applied)

        async def board_shows_all_three() -> list[dict[str, Any]] | None:
            entries: list[dict[str, Any]] = (await http.get("/board")).json()
            return entries if len(entries) >= 3 else None

        entries = await _eventually(board_shows_all_three, timeout=30, what="three entries on /board")
        by_kind = {entry["kind"]: entry for entry in entries}
        assert len(entries) == 3
        assert by_kind.keys() == {"announced", "deployed", "applied"}
        assert by_kind["announced"]["message_id"] == str(message.id)
        assert by_kind["announced"]["detail"] == "Uploads up to 50 MB"
        assert by_kind["deployed"]["message_id"] == str(deployed.id)
        assert by_kind["deployed"]["detail"] == "2 node(s) in 31.5 s"
        assert by_kind["applied"]["message_id"] == str(applied.id)
        assert {(e["package"], e["version"], e["env"]) for e in entries} == {("web", "v42", "qa")}

        refused = await http.post("/announcements", json={"package": "web"})
        assert refused.status_code == 422


class JsonLines:
    """A process's stdout, one JSON object per line, read by a thread so waits can have deadlines."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def drain(self, timeout: float) -> None:
        """Once the process has exited: wait until its output is read to the end (and closed)."""
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "the output did not end"

    def next(self, *, deadline: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line while waiting for {what}") from None
        assert line is not None, f"the output ended while waiting for {what}"
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def next_event(self, event: str, *, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (line := self.next(deadline=deadline, what=event))["event"] != event:
            pass
        return line


def test_dir_watcher_prints_each_change_set_of_its_directory(
    installed: dict[str, Path], tmp_path: Path
) -> None:
    watched = tmp_path / "site"
    watched.mkdir()
    (watched / "index.html").write_text("<h1>hello</h1>\n")
    (watched / "old.txt").write_text("to go\n")
    state = tmp_path / "state"
    command = [
        str(installed["dir-watcher"]),
        str(watched),
        "--state-dir",
        str(state),
        "--quiet-period",
        "0.2",
    ]
    with (tmp_path / "dir-watcher.log").open("w") as log:
        process = subprocess.Popen(
            command, env=_isolated(tmp_path), stdout=subprocess.PIPE, stderr=log, text=True
        )
    assert process.stdout is not None
    lines = JsonLines(process.stdout)
    try:
        assert lines.next_event("watching", timeout=30)["directory"] == str(watched)
        first = lines.next_event("changeset", timeout=30)  # what was there at start: every file
        assert (first["added"], first["modified"], first["deleted"]) == (["index.html", "old.txt"], [], [])
        assert first["parent_version"] is None
        assert Path(first["archive"]).is_file()

        # Once the first change set is out, the watch is in place.
        (watched / "about.html").write_text("<p>about</p>\n")
        (watched / "index.html").write_text("<h1>hello again</h1>\n")
        (watched / "old.txt").unlink()
        seen: dict[str, set[str]] = {"added": set(), "modified": set(), "deleted": set()}
        parent = first["version"]
        deadline = time.monotonic() + 30
        while seen != {"added": {"about.html"}, "modified": {"index.html"}, "deleted": {"old.txt"}}:
            changeset = lines.next(deadline=deadline, what=f"the rest of the changes (so far {seen})")
            assert changeset["event"] == "changeset", changeset
            assert changeset["parent_version"] == parent  # one after the other, none lost
            assert Path(changeset["archive"]).is_file()
            parent = changeset["version"]
            for kind, names in seen.items():
                names.update(changeset[kind])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        lines.drain(timeout=10)
    assert process.returncode == 0, (tmp_path / "dir-watcher.log").read_text()[-3000:]
    assert lines.next_event("stopped", timeout=5)["directory"] == str(watched)
