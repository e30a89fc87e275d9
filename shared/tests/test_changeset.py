"""conveyor.changeset on a real file system: deterministic archives, and applying, rolling back,
pruning and recovering releases of a package in a release root.

The helpers at the top (``Exe``, ``Link``, ``write_files``, ``disk_tree``, ``snapshot``) are
shared with ``test_changeset_hostile.py`` and ``test_changeset_crash.py``. ``disk_tree``
reads a directory with ``os`` alone, so a release is compared with what the source package
held on disk, not with what pkgvcs says about either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.changeset import (
    CHANGELOG_NAME,
    Built,
    ChangesetArchive,
    ChangesetError,
    NoRelease,
    ParentMismatch,
    ReleaseRoot,
    build_changeset,
)
from conveyor.pkgvcs import LockHeld, Package
from conveyor.pkgvcs.manifest import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SYMLINK,
    FileEntry,
    Tree,
    parse_changelog,
)

# -- helpers shared by the changeset tests ----------------------------------------------------


@dataclass(frozen=True)
class Exe:
    """An executable file's content."""

    data: bytes


@dataclass(frozen=True)
class Link:
    """A symlink's target."""

    target: str


Spec = Mapping[str, bytes | Exe | Link | None]  # None: remove the path (file, link or directory)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_files(root: Path, files: Spec) -> None:
    """Create, replace or (for None) remove the given paths below ``root``."""
    made: set[str] = set()
    for name, node in files.items():
        path = os.path.join(root, name)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(found.st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        if node is None:
            continue
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if isinstance(node, Link):
            os.symlink(node.target, path)
            continue
        data, mode = (node.data, 0o755) if isinstance(node, Exe) else (node, 0o644)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)  # whatever the umask


def disk_tree(root: Path) -> Tree:
    """Every file and symlink below ``root`` (minus the top ``.conveyor/``) as pkgvcs would list it."""
    tree: Tree = {}
    base = os.fsencode(root)
    for directory, dirs, files in os.walk(base):
        if directory == base and b".conveyor" in dirs:
            dirs.remove(b".conveyor")
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            full = os.path.join(directory, name)
            info = os.lstat(full)
            rel = os.path.relpath(full, base)
            if stat.S_ISLNK(info.st_mode):
                data = os.readlink(full)
                tree[rel] = FileEntry(MODE_SYMLINK, len(data), sha256(data))
            else:
                assert stat.S_ISREG(info.st_mode), full
                with open(full, "rb") as handle:
                    data = handle.read()
                mode = MODE_EXECUTABLE if info.st_mode & 0o100 else MODE_FILE
                tree[rel] = FileEntry(mode, len(data), sha256(data))
    return tree


def release_files_are_exact(release: Path) -> None:
    """Regular files of a release are exactly 0644 or 0755 (the umask of the writer does not leak)."""
    for path, entry in disk_tree(release).items():
        if entry.mode != MODE_SYMLINK:
            want = 0o755 if entry.mode == MODE_EXECUTABLE else 0o644
            assert stat.S_IMODE(os.lstat(os.fsencode(release) + b"/" + path).st_mode) == want, path


Snapshot = dict[str, tuple[object, ...]]


def snapshot(top: Path, *, volatile: tuple[Path, ...] = ()) -> Snapshot:
    """Every path below ``top`` with its type, permissions, size, mtime, inode, link count and
    content (a digest, or a link's target). Directories listed in ``volatile`` are compared by
    their entries only (their own mtime changes when a lock file comes and goes)."""
    skip_mtime = {os.fsencode(p) for p in volatile}
    found: Snapshot = {}
    base = os.fsencode(top)
    for directory, dirs, files in os.walk(base):
        for name in dirs + files:
            full = os.path.join(directory, name)
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                content: object = os.readlink(full)
            elif stat.S_ISREG(info.st_mode):
                with open(full, "rb") as handle:
                    content = sha256(handle.read())
            else:
                content = None
            mtime = None if full in skip_mtime else info.st_mtime_ns
            found[os.fsdecode(os.path.relpath(full, base))] = (
                stat.S_IFMT(info.st_mode),
                stat.S_IMODE(info.st_mode),
                info.st_size if not stat.S_ISDIR(info.st_mode) else None,
                mtime,
                info.st_ino,
                info.st_nlink if not stat.S_ISDIR(info.st_mode) else None,
                content,
            )
    return found


def settle(releases: ReleaseRoot) -> None:
    """Let the current release's stat cache learn every file now (status writes it when it learns),
    so later reads of the release write nothing."""
    time.sleep(0.02)  # past the racy window of the files just written
    assert releases.drift() is None
    assert releases.drift() is None


def leftovers(root: Path) -> list[str]:
    """What an apply must never leave behind: a lock, staging or trash directories, temporary links."""
    found = [p.name for p in root.iterdir() if p.name.startswith(".")]
    if (root / "releases").is_dir():
        found += [f"releases/{p.name}" for p in (root / "releases").iterdir() if p.name.startswith(".")]
    return sorted(found)


def current_target(root: Path) -> str:
    assert (root / "current").is_symlink()
    return os.readlink(root / "current")


# -- a package with three versions ------------------------------------------------------------

V1: dict[str, bytes | Exe | Link | None] = {
    "app.py": b"print('v1')\n",
    "conf/app.ini": b"[a]\nb = 1\n",
    "static/logo.svg": b"<svg/>",
    "static/css/site.css": b"body {}\n",
    "bin/run.sh": Exe(b"#!/bin/sh\necho run\n"),
    "bin/tool": b"#!/bin/sh\necho tool\n",
    "README": b"readme\n",
    "docs/guide": Link("../README"),
    "lnk": Link("static"),
    "old/a.txt": b"a\n",
    "old/sub/b.txt": b"b\n",
    "old/sub/deeper/c.txt": b"c\n",
    "node": b"a file that becomes a directory\n",
    "tree/x": b"a directory that becomes a file\n",
    "tree/y/z": b"z\n",
    "big.bin": bytes(range(256)) * 400,
    "space name.txt": b"spaces\n",
}
V2: dict[str, bytes | Exe | Link | None] = {
    "app.py": b"print('v2')\n",  # modified
    "bin/run.sh": b"#!/bin/sh\necho run\n",  # loses its executable bit, same content
    "bin/tool": Exe(b"#!/bin/sh\necho tool\n"),  # gains it
    "lnk": Link("conf"),  # symlink retargeted
    "docs/guide": b"now a file\n",  # symlink -> file
    "README": Link("app.py"),  # file -> symlink
    "old": None,  # every file of a directory tree deleted
    "node": None,
    "node/inner": b"inner\n",  # file -> directory of the same name
    "tree": b"tree is a file now\n",  # directory -> file of the same name
    "new/deep/file.txt": b"added\n",
}
V3: dict[str, bytes | Exe | Link | None] = {
    "conf/app.ini": b"[a]\nb = 3\n",
    "v3.txt": b"three\n",
}


@dataclass
class History:
    package: Package
    out: Path
    ids: list[str]  # v1, v2, v3
    trees: dict[str, Tree]  # version -> the source's files on disk when it was committed
    first: Built  # None -> v1
    second: Built  # v1 -> v2
    third: Built  # v2 -> v3
    skip: Built  # v1 -> v3


def commit_versions(src: Path, name: str, steps: list[Spec]) -> tuple[Package, list[str], dict[str, Tree]]:
    src.mkdir(parents=True)
    package = Package.init(src, name)
    ids: list[str] = []
    trees: dict[str, Tree] = {}
    for number, step in enumerate(steps, start=1):
        write_files(src, step)
        version = package.commit(f"version {number}", author="tester").id
        ids.append(version)
        trees[version] = disk_tree(src)
    return package, ids, trees


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    base = tmp_path_factory.mktemp("history")
    package, ids, trees = commit_versions(base / "src", "web", [V1, V2, V3])
    v1, v2, v3 = ids
    out = base / "out"
    return History(
        package=package,
        out=out,
        ids=ids,
        trees=trees,
        first=build_changeset(package, parent=None, version=v1, directory=out),
        second=build_changeset(package, parent=v1, version=v2, directory=out),
        third=build_changeset(package, parent=v2, version=v3, directory=out),
        skip=build_changeset(package, parent=v1, version=v3, directory=out),
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "node"


# -- building ---------------------------------------------------------------------------------


def test_the_same_change_always_gives_the_same_bytes(tmp_path: Path) -> None:
    package, (v1, v2), _ = commit_versions(tmp_path / "a", "web", [V1, V2])
    one = build_changeset(package, parent=v1, version=v2, directory=tmp_path / "one")
    two = build_changeset(package, parent=v1, version=v2, directory=tmp_path / "two")
    assert one.path != two.path
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.id == two.id == sha256(one.path.read_bytes())
    assert one.path.name == f"{one.id}.zip"
    assert one.size == one.path.stat().st_size

    # A copy of the package elsewhere (new inodes, new mtimes) builds the same archive.
    clone = shutil.copytree(tmp_path / "a", tmp_path / "clone", symlinks=True, copy_function=shutil.copy)
    three = build_changeset(Package(clone), parent=v1, version=v2, directory=tmp_path / "three")
    assert three.path.read_bytes() == one.path.read_bytes()

    # Touching every file (working tree and object store) changes nothing either.
    later = time.time() + 3600
    for directory, _, files in os.walk(tmp_path / "a"):
        for name in files:
            os.utime(os.path.join(directory, name), (later, later), follow_symlinks=False)
    four = build_changeset(package, parent=v1, version=v2, directory=tmp_path / "four")
    assert four.path.read_bytes() == one.path.read_bytes()
    assert list((tmp_path / "four").iterdir()) == [four.path]  # no temporary file left

    # The changelog is part of the archive: the same files under another package name give
    # the same version ids but another changeset.
    other, (w1, w2), _ = commit_versions(tmp_path / "b", "api", [V1, V2])
    assert (w1, w2) == (v1, v2)
    foreign = build_changeset(other, parent=w1, version=w2, directory=tmp_path / "five")
    assert foreign.id != one.id


def test_archive_entries_have_fixed_dates_and_unix_modes(history: History) -> None:
    with zipfile.ZipFile(history.second.path) as archive:
        infos = archive.infolist()
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in infos)
        assert all(info.create_system == 3 for info in infos)
        modes = {info.filename: info.external_attr >> 16 for info in infos}
        kinds = {info.filename: info.compress_type for info in infos}
    assert modes["files/app.py"] == 0o100644
    assert modes["files/bin/tool"] == 0o100755
    assert modes["files/lnk"] == 0o120777
    assert modes[CHANGELOG_NAME] == 0o100644
    assert kinds["files/lnk"] == zipfile.ZIP_STORED
    assert kinds["files/app.py"] == zipfile.ZIP_DEFLATED

    listing = subprocess.run(
        ["unzip", "-Z", str(history.second.path)], capture_output=True, text=True, check=True
    ).stdout
    rows = [line for line in listing.splitlines() if line.endswith((CHANGELOG_NAME, ".py", "tool", "lnk"))]
    assert len(rows) == 4, listing
    assert all(" 80-Jan-01 00:00 " in row for row in rows), listing
    tool = next(row for row in rows if row.endswith("files/bin/tool"))
    assert tool.startswith("-rwxr-xr-x"), tool
    link = next(row for row in rows if row.endswith("files/lnk"))
    assert link.startswith("lrwxrwxrwx"), link


def test_archive_holds_only_added_and_modified_files(history: History) -> None:
    v1, v2, _ = history.ids
    before, after = history.trees[v1], history.trees[v2]
    shipped = {p for p, e in after.items() if before.get(p) != e}
    deleted = before.keys() - after.keys()
    assert b"conf/app.ini" not in shipped
    assert b"big.bin" not in shipped
    assert {b"bin/run.sh", b"bin/tool", b"lnk", b"README", b"docs/guide", b"tree"} <= shipped
    assert {b"old/a.txt", b"old/sub/b.txt", b"old/sub/deeper/c.txt", b"node", b"tree/x"} <= deleted

    with zipfile.ZipFile(history.second.path) as archive:
        names = archive.namelist()
        assert names == [CHANGELOG_NAME, *(f"files/{os.fsdecode(p)}" for p in sorted(shipped))]
        for path in shipped:
            data = archive.read(f"files/{os.fsdecode(path)}")
            assert sha256(data) == after[path].sha256
        assert archive.read("files/lnk") == b"conf"  # a symlink's content is its target
        info, changes = parse_changelog(archive.read(CHANGELOG_NAME).decode("ascii"), CHANGELOG_NAME)

    assert info.id == v2
    assert info.parent == v1
    assert info.package == "web"
    assert changes.deleted == {p: before[p] for p in deleted}
    assert changes.added.keys() | changes.modified.keys() == shipped
    assert changes.modified.keys() == shipped & before.keys()
    assert info.counts == {"files": 0, **changes.counts()}  # the changelog does not carry the total
    assert {k: history.second.info.counts[k] for k in ("added", "modified", "deleted")} == changes.counts()
    assert history.second.changes.counts() == changes.counts()

    with ChangesetArchive.open(history.second.path) as opened:
        assert opened.info.id == v2
        assert opened.id == history.second.id
        opened.verify()


def test_first_changeset_contains_every_file(history: History, tmp_path: Path) -> None:
    v1 = history.ids[0]
    with zipfile.ZipFile(history.first.path) as archive:
        names = set(archive.namelist())
        info, changes = parse_changelog(archive.read(CHANGELOG_NAME).decode("ascii"), CHANGELOG_NAME)
    assert names == {CHANGELOG_NAME} | {f"files/{os.fsdecode(p)}" for p in history.trees[v1]}
    assert info.parent is None
    assert changes.added == history.trees[v1]
    assert not changes.modified
    assert not changes.deleted

    (tmp_path / "out").mkdir()
    with ChangesetArchive.open(history.first.path) as opened:
        opened.extract(tmp_path / "out")
    assert disk_tree(tmp_path / "out") == history.trees[v1]


def test_a_name_that_is_not_utf8_cannot_be_shipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine.txt").write_bytes(b"fine\n")
    with open(os.fsencode(src) + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"latin-1 name\n")
    package = Package.init(src, "web")
    version = package.commit("one", author="tester").id
    with pytest.raises(ChangesetError, match=r"caf\\351\.txt.*UTF-8"):
        build_changeset(package, parent=None, version=version, directory=tmp_path / "out")
    assert list((tmp_path / "out").glob("*")) == []  # no partial archive (nor its temporary file)

    with pytest.raises(ChangesetError, match="same version"):
        build_changeset(package, parent=version, version=version, directory=tmp_path / "out")


# -- applying ---------------------------------------------------------------------------------


class Watcher:
    """Reads ``current`` in a loop from another thread while the test works."""

    def __init__(self, root: Path) -> None:
        self.link = root / "current"
        self.seen: set[str] = set()
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                target = os.readlink(self.link)
                if not (self.link / ".conveyor" / "HEAD").is_file():
                    self.problems.append(f"current -> {target} is not a complete release")
                self.seen.add(target)
            except OSError as exc:
                self.problems.append(f"current: {exc}")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_apply_first_and_next_changesets_onto_an_empty_root(history: History, root: Path) -> None:
    v1, v2, _ = history.ids
    releases = ReleaseRoot(root)
    assert releases.current() is None
    assert releases.available() == []
    assert releases.history() == []

    first = releases.apply(history.first.path)
    assert (first.version, first.previous, first.changeset) == (v1, None, history.first.id)
    assert not first.already_current
    assert not first.forced
    assert current_target(root) == f"releases/{v1}"
    assert disk_tree(root / "current") == history.trees[v1]
    release_files_are_exact(root / "current")

    with Watcher(root) as watcher:
        second = releases.apply(history.second.path)
    assert watcher.problems == []
    assert watcher.seen <= {f"releases/{v1}", f"releases/{v2}"}

    assert (second.version, second.previous) == (v2, v1)
    assert second.files == {"total": len(history.trees[v2]), **history.second.changes.counts()}
    assert current_target(root) == f"releases/{v2}"
    assert releases.current() == v2
    assert disk_tree(root / "current") == history.trees[v2]
    assert disk_tree(root / "current") == history.package.version(v2)[1]
    release_files_are_exact(root / "current")
    assert os.readlink(root / "current" / "lnk") == "conf"
    assert os.readlink(root / "current" / "README") == "app.py"
    assert not (root / "current" / "old").exists()  # a directory whose files all went is gone
    assert (root / "current" / "node").is_dir()
    assert (root / "current" / "tree").is_file()

    # Unchanged files are hard links of the previous release; changed ones are new files.
    old, new = history.trees[v1], history.trees[v2]
    unchanged = [p for p in new if old.get(p) == new[p]]
    changed = [p for p in new if p in old and old[p] != new[p]]
    assert len(unchanged) >= 5
    assert len(changed) >= 5
    for path in unchanged:
        a = os.lstat(os.fsencode(releases.release_dir(v1)) + b"/" + path)
        b = os.lstat(os.fsencode(releases.release_dir(v2)) + b"/" + path)
        assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev), path
    for path in changed:
        a = os.lstat(os.fsencode(releases.release_dir(v1)) + b"/" + path)
        b = os.lstat(os.fsencode(releases.release_dir(v2)) + b"/" + path)
        assert a.st_ino != b.st_ino, path
    assert disk_tree(releases.release_dir(v1)) == history.trees[v1]  # the old release is intact

    # Each release is a package whose HEAD is the version it holds, with nothing to report.
    assert Package(releases.release_dir(v2)).head() == v2
    assert Package(releases.release_dir(v1)).head() == v1
    assert releases.drift() is None
    assert releases.available() == [v1, v2]
    assert [(e["version"], e["changeset"], e["state"]) for e in releases.history()] == [
        (v1, history.first.id, "good"),
        (v2, history.second.id, "good"),
    ]
    assert releases.previous_good() == v1
    assert leftovers(root) == []


def test_applying_the_same_archive_twice_changes_nothing(history: History, root: Path) -> None:
    releases = ReleaseRoot(root)
    releases.apply(history.first.path)
    releases.apply(history.second.path)
    settle(releases)
    before = snapshot(root, volatile=(root,))
    again = releases.apply(history.second.path)
    assert again.already_current
    assert again.version == again.previous == history.ids[1]
    assert snapshot(root, volatile=(root,)) == before
    assert leftovers(root) == []


def test_a_changeset_for_another_parent_is_refused(history: History, root: Path) -> None:
    v1, _v2, v3 = history.ids
    releases = ReleaseRoot(root)
    with pytest.raises(ParentMismatch) as empty:
        releases.apply(history.second.path)  # needs v1; the root has nothing
    assert empty.value.running is None
    assert releases.current() is None

    releases.apply(history.first.path)
    settle(releases)
    before = snapshot(root, volatile=(root,))
    with pytest.raises(ParentMismatch, match=r"runs \w{12}, but the changeset's parent is") as caught:
        releases.apply(history.third.path)  # v2 -> v3 onto v1
    assert caught.value.running == v1
    assert caught.value.differing == []
    assert snapshot(root, volatile=(root,)) == before
    assert releases.current() == v1

    # Skipping a version is fine when the changeset was built from the running one.
    assert releases.apply(history.skip.path).version == v3
    assert disk_tree(root / "current") == history.trees[v3]


def test_hand_edited_files_stop_an_apply_unless_forced(history: History, root: Path) -> None:
    _v1, v2, v3 = history.ids
    releases = ReleaseRoot(root)
    releases.apply(history.first.path)
    releases.apply(history.second.path)
    edited = root / "current" / "static" / "logo.svg"  # not touched by v2 -> v3
    edited.unlink()  # (a new file: the old one is a hard link shared with the v1 release)
    edited.write_bytes(b"<svg>edited on the node</svg>")
    (root / "current" / "stray.txt").write_bytes(b"stray\n")

    status = releases.drift()
    assert status is not None
    assert status.modified == [b"static/logo.svg"]
    assert status.added == [b"stray.txt"]
    assert status.deleted == []

    with pytest.raises(ParentMismatch, match="were changed on the node") as caught:
        releases.apply(history.third.path)
    assert caught.value.running == v2
    assert caught.value.differing == ["M static/logo.svg", "A stray.txt"]
    assert "M static/logo.svg" in str(caught.value)
    assert releases.current() == v2

    forced = releases.apply(history.third.path, force=True)
    assert forced.forced
    assert forced.version not in (v2, v3)  # v3's changes over the edited files: a version of its own
    assert releases.current() == forced.version
    want = dict(history.trees[v3])
    want[b"static/logo.svg"] = disk_tree(releases.release_dir(v2))[b"static/logo.svg"]
    want[b"stray.txt"] = FileEntry(MODE_FILE, 6, sha256(b"stray\n"))
    assert disk_tree(root / "current") == want
    assert releases.head() == forced.version
    assert releases.drift() is None


def test_a_changeset_of_another_package_is_refused(history: History, root: Path, tmp_path: Path) -> None:
    other, (w1,), _ = commit_versions(tmp_path / "other", "api", [{"x": b"x\n"}])
    releases = ReleaseRoot(root)
    releases.apply(history.first.path)
    foreign = build_changeset(other, parent=None, version=w1, directory=tmp_path / "out")
    with pytest.raises(ChangesetError, match="holds package 'web'; the changeset is for 'api'"):
        releases.apply(foreign.path)
    assert releases.current() == history.ids[0]


def test_a_forced_apply_that_yields_the_running_version_keeps_its_directory(tmp_path: Path) -> None:
    # c1 = {a, b}; c2 = {a, z}; c3 = {a, z, b}. The c2 -> c3 changeset adds b, which c1 has:
    # forced onto c1 it gives c1 again, the version `current` points at.
    package, (c1, c2, c3), _ = commit_versions(
        tmp_path / "src", "web", [{"a": b"a", "b": b"b"}, {"b": None, "z": b"z"}, {"b": b"b"}]
    )
    first = build_changeset(package, parent=None, version=c1, directory=tmp_path / "out")
    noop = build_changeset(package, parent=c2, version=c3, directory=tmp_path / "out")
    releases = ReleaseRoot(tmp_path / "node")
    releases.apply(first.path)
    running = os.open(releases.current_link, os.O_RDONLY | os.O_DIRECTORY)  # a service's cwd
    try:
        result = releases.apply(noop.path, force=True)
        assert result.version == c1
        assert result.already_current
        assert os.fstat(running).st_nlink > 0, "the running release's directory was deleted"
        assert os.path.samestat(os.fstat(running), os.stat(releases.current_link))
    finally:
        os.close(running)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_file_modes_do_not_depend_on_the_umask(history: History, root: Path) -> None:
    releases = ReleaseRoot(root)
    with umask(0o077):
        releases.apply(history.first.path)
        releases.apply(history.second.path)
    release_files_are_exact(releases.release_dir(history.ids[0]))
    release_files_are_exact(releases.release_dir(history.ids[1]))


def test_directory_modes_do_not_depend_on_the_umask(history: History, root: Path) -> None:
    releases = ReleaseRoot(root)
    with umask(0o077):
        releases.apply(history.first.path)
        releases.apply(history.second.path)
    release = releases.release_dir(history.ids[1])
    modes = {
        os.path.relpath(os.path.join(directory, name), release): stat.S_IMODE(
            os.lstat(os.path.join(directory, name)).st_mode
        )
        for directory, dirs, _ in os.walk(release)
        for name in dirs
        if not os.path.islink(os.path.join(directory, name)) and ".conveyor" not in directory + name
    }
    assert len(modes) >= 5
    assert {stat.S_IMODE(release.stat().st_mode), *modes.values()} == {0o755}, modes


def test_an_edit_in_place_shows_in_every_release_sharing_the_file(history: History, root: Path) -> None:
    # Documented (docs/formats.md, the release root): unchanged files are hard links.
    v1, v2, _ = history.ids
    releases = ReleaseRoot(root)
    releases.apply(history.first.path)
    releases.apply(history.second.path)
    with open(root / "current" / "conf" / "app.ini", "ab") as handle:  # through the existing inode
        handle.write(b"c = 1\n")
    replaced = root / "current" / "static" / "logo.svg"
    replaced.unlink()  # replaced rather than written through: the older release keeps its file
    replaced.write_bytes(b"<svg>new</svg>")
    assert (releases.release_dir(v1) / "conf" / "app.ini").read_bytes() == b"[a]\nb = 1\nc = 1\n"
    assert (releases.release_dir(v1) / "static" / "logo.svg").read_bytes() == b"<svg/>"
    status = releases.drift()
    assert status is not None
    assert status.modified == [b"conf/app.ini", b"static/logo.svg"]
    assert releases.rollback() == (v2, v1)
    status = releases.drift()  # the rollback brought the in-place edit along, and says so
    assert status is not None
    assert status.modified == [b"conf/app.ini"]


def test_a_second_writer_is_refused_while_the_lock_is_held(history: History, root: Path) -> None:
    releases = ReleaseRoot(root)
    releases.apply(history.first.path)
    with releases.locked():
        assert (root / ".lock").read_text().strip().endswith(f":{os.getpid()}")
        with pytest.raises(LockHeld, match=r"\.lock is held by"):
            ReleaseRoot(root).apply(history.second.path)
        with pytest.raises(LockHeld):
            ReleaseRoot(root).rollback()
    assert releases.current() == history.ids[0]
    assert leftovers(root) == []
    assert releases.apply(history.second.path).version == history.ids[1]


# -- rolling back, states, pruning --------------------------------------------------------------


def test_rollback_goes_to_the_previous_good_release(history: History, root: Path) -> None:
    v1, v2, v3 = history.ids
    releases = ReleaseRoot(root)
    with pytest.raises(NoRelease):
        releases.rollback()
    releases.apply(history.first.path)
    with pytest.raises(NoRelease, match="no earlier good release"):
        releases.rollback()  # only one release
    releases.apply(history.second.path, good=False)
    assert releases.state() == "pending"
    releases.mark(v2, "bad")
    releases.apply(history.third.path)
    assert releases.state(v2) == "bad"
    assert releases.state() == "good"
    assert releases.previous_good() == v1  # v2 is bad: skipped

    assert releases.rollback() == (v3, v1)
    assert current_target(root) == f"releases/{v1}"
    assert disk_tree(root / "current") == history.trees[v1]
    assert releases.state(v3) == "bad"
    assert releases.state() == "good"
    assert releases.previous_good() is None
    with pytest.raises(NoRelease):
        releases.rollback()  # v2 and v3 are both bad
    assert releases.current() == v1

    # A bad release can still be switched to by hand, and a pruned one cannot.
    releases.switch_to(v3)
    assert releases.current() == v3
    assert releases.state() == "good"
    with pytest.raises(NoRelease, match="not on this node"):
        releases.switch_to("0" * 64)
    assert releases.rollback() == (v3, v1)


def test_keep_prunes_old_releases_but_never_the_current_or_previous_good(tmp_path: Path) -> None:
    steps: list[Spec] = [{"n": b"%d\n" % i, f"f{i}": b"x\n"} for i in range(6)]
    package, ids, trees = commit_versions(tmp_path / "src", "web", steps)
    out = tmp_path / "out"
    chain = [build_changeset(package, parent=None, version=ids[0], directory=out)] + [
        build_changeset(package, parent=ids[i - 1], version=ids[i], directory=out) for i in range(1, 6)
    ]
    with pytest.raises(ValueError, match="keep at least 2"):
        ReleaseRoot(tmp_path / "node", keep=1)
    releases = ReleaseRoot(tmp_path / "node", keep=2)

    releases.apply(chain[0].path)
    releases.apply(chain[1].path)
    releases.apply(chain[2].path)
    assert releases.available() == [ids[1], ids[2]]  # the oldest went
    assert not releases.release_dir(ids[0]).exists()

    # ids[3] turns out bad, ids[4] is pending: the previous good one is ids[2], older than
    # ids[3]; keeping two means ids[3] goes, not ids[2].
    releases.apply(chain[3].path, good=False)
    releases.mark(ids[3], "bad")
    releases.apply(chain[4].path, good=False)
    assert releases.previous_good() == ids[2]
    assert releases.available() == [ids[2], ids[4]]
    assert releases.rollback() == (ids[4], ids[2])
    assert disk_tree(tmp_path / "node" / "current") == trees[ids[2]]
    assert leftovers(tmp_path / "node") == []


def test_drift_names_edited_files(history: History, root: Path) -> None:
    releases = ReleaseRoot(root)
    assert releases.drift() is None  # nothing applied yet
    releases.apply(history.first.path)
    assert releases.drift() is None
    conf = root / "current" / "conf" / "app.ini"
    conf.unlink()
    conf.write_bytes(b"[a]\nb = 2\n")
    (root / "current" / "README").unlink()
    status = releases.drift()
    assert status is not None
    assert status.head == history.ids[0]
    assert [(code, path) for code, path in status.entries()] == [("D", b"README"), ("M", b"conf/app.ini")]


def test_recover_removes_what_an_interrupted_apply_left(history: History, root: Path) -> None:
    v1, v2, _ = history.ids
    releases = ReleaseRoot(root)
    releases.apply(history.first.path)
    releases.apply(history.second.path)
    settle(releases)
    kept = snapshot(root, volatile=(root, root / "releases"))
    (root / "releases" / ".staging-0123456789ab" / "half" / "done").mkdir(parents=True)
    (root / "releases" / ".staging-0123456789ab" / "half" / "done" / "f").write_bytes(b"x")
    (root / "releases" / ".trash-ba9876543210").mkdir()
    (root / ".current.feedfacecafe.tmp").symlink_to(f"releases/{v1}")
    (root / ".current.deadbeef0000.tmp").symlink_to("releases/missing")  # dangling

    removed = releases.recover()
    assert sorted(removed) == [
        ".current.deadbeef0000.tmp",
        ".current.feedfacecafe.tmp",
        ".staging-0123456789ab",
        ".trash-ba9876543210",
    ]
    assert leftovers(root) == []
    assert snapshot(root, volatile=(root, root / "releases")) == kept
    assert current_target(root) == f"releases/{v2}"
    assert releases.recover() == []

    # ``current`` switched but the history not written (killed in between): the link is the truth.
    (root / "current").unlink()
    (root / "current").symlink_to(f"releases/{v1}")
    assert releases.recover() == []
    assert (releases.history()[-1]["version"], releases.history()[-1]["state"]) == (v1, "pending")
    assert releases.previous_good() == v2


def test_recover_on_a_root_that_never_had_a_release(tmp_path: Path) -> None:
    releases = ReleaseRoot(tmp_path / "fresh")
    assert releases.recover() == []
    assert releases.history() == []
    assert leftovers(tmp_path / "fresh") == []
