"""conveyor.pkgvcs on a real file system: commits, checkout, refs, ignore, locks and bad input."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.pkgvcs import (
    CorruptFile,
    LockHeld,
    NothingToCommit,
    Package,
    UncommittedChanges,
    UnknownVersion,
    checkout,
    diff,
    fsck,
)
from conveyor.pkgvcs.manifest import (
    MODE_FILE,
    MODE_SYMLINK,
    FileEntry,
    VersionInfo,
    render_manifest,
    version_id,
)
from conveyor.pkgvcs.paths import check_relative, ini_quote, porcelain_quote, unquote
from conveyor.pkgvcs.storage import package_lock

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


def make(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.fixture
def package(tmp_path: Path) -> Package:
    make(tmp_path, {"app.py": "print('hi')\n", "conf/app.ini": "[a]\nb = 1\n", "static/logo.svg": "<svg/>"})
    return Package.init(tmp_path, "web")


def vcs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONVEYOR, "vcs", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"plain",
        b"a b",
        b" lead",
        b"trail ",
        b'q"x',
        b"back\\s",
        b"tab\tx",
        b"nl\nx",
        b"\xc3\xa9t\xc3\xa9",
        b"bad\xff\xfe",
        b"eq=:;#[x]",
        b"\x01ctl",
    ],
)
def test_quoting_round_trips_every_byte_name(name: bytes) -> None:
    assert unquote(ini_quote(name)) == name
    quoted = ini_quote(name)
    assert quoted.isascii()
    assert "=" not in quoted
    assert ":" not in quoted
    porcelain = porcelain_quote(name)
    assert unquote(porcelain) == name if porcelain.startswith('"') else porcelain.encode() == name


@pytest.mark.parametrize(
    "bad", [b"../x", b"/etc/passwd", b"a/../../x", b"a//b", b"./a", b".conveyor/HEAD", b""]
)
def test_paths_that_could_escape_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError, match=r"path|absolute|empty"):
        check_relative(bad)


# -- the main flow ------------------------------------------------------------------------


def test_status_commit_and_history(package: Package) -> None:
    root = package.root
    assert [(c, p) for c, p in package.status().entries()] == [
        ("A", b"app.py"),
        ("A", b"conf/app.ini"),
        ("A", b"static/logo.svg"),
    ]
    first = package.commit("first", author="ada")
    assert first.parent is None
    assert first.counts == {"files": 3, "added": 3, "modified": 0, "deleted": 0}
    assert not package.status()
    with pytest.raises(NothingToCommit):
        package.commit("again")

    (root / "app.py").write_text("print('hello')\n")
    (root / "static/logo.svg").unlink()
    (root / "empty-dir").mkdir()  # empty directories are not tracked
    make(root, {"new/file.txt": "x"})
    os.chmod(root / "conf/app.ini", 0o755)
    assert package.status().entries() == [
        ("M", b"app.py"),
        ("M", b"conf/app.ini"),
        ("A", b"new/file.txt"),
        ("D", b"static/logo.svg"),
    ]
    second = package.commit("second", author="bob")
    assert second.parent == first.id
    assert [v.id for v in package.history()] == [second.id, first.id]
    info, changes = package.changelog(second.id)
    assert (info.author, info.message) == ("bob", "second")
    assert set(changes.modified) == {b"app.py", b"conf/app.ini"}
    assert set(changes.added) == {b"new/file.txt"}
    assert set(changes.deleted) == {b"static/logo.svg"}


def test_same_tree_same_id_across_packages(tmp_path: Path) -> None:
    ids = []
    for name in ("one", "two"):
        make(tmp_path / name, {"a": "1", "d/b": "2"})
        ids.append(Package.init(tmp_path / name, name).commit("x").id)
    assert ids[0] == ids[1]


def test_checkout_restores_and_refuses_to_lose_work(package: Package) -> None:
    root = package.root
    first = package.commit("first")
    (root / "app.py").write_text("changed\n")
    os.symlink("app.py", root / "link")
    (root / "conf/app.ini").unlink()
    second = package.commit("second")

    (root / "app.py").write_text("uncommitted\n")
    with pytest.raises(UncommittedChanges, match=r"0 added, 1 modified"):
        checkout(package, first.id)
    assert (root / "app.py").read_text() == "uncommitted\n"  # nothing touched

    assert checkout(package, first.id[:8], force=True) == first.id
    assert (root / "app.py").read_text() == "print('hi')\n"
    assert (root / "conf/app.ini").exists()
    assert not (root / "link").is_symlink()
    assert package.head() == first.id
    assert not package.status()
    checkout(package, second.id)
    assert os.readlink(root / "link") == "app.py"
    assert not (root / "conf").exists()  # emptied directories go, as in git


def test_refs_tags_and_prefixes(package: Package) -> None:
    first = package.commit("first")
    package.tag("release-1")
    assert package.resolve("release-1") == first.id == package.resolve(first.id[:6])
    assert package.tags() == {"release-1": first.id}
    with pytest.raises(UnknownVersion, match="no version, tag or id prefix 'nope'"):
        package.resolve("nope")
    with pytest.raises(ValueError, match="tag name"):
        package.tag("../evil")


def test_ignore_file_uses_gitignore_rules_and_never_hides_tracked_files(package: Package) -> None:
    root = package.root
    make(root, {"build/out.o": "x", "logs/a.log": "x", "keep.log": "x"})
    package.commit("with keep.log")
    (root / ".conveyorignore").write_text("build/\n*.log\n!important.log\n")
    make(root, {"more.log": "x", "important.log": "x", "build/again.o": "x"})
    (root / "keep.log").write_text("changed")
    codes = {p: c for c, p in package.status().entries()}
    assert codes == {b".conveyorignore": "A", b"important.log": "A", b"keep.log": "M"}


def test_diff_text_binary_and_selection(package: Package) -> None:
    root = package.root
    make(root, {"blob.bin": b"\x00\x01"})
    package.commit("first")
    (root / "app.py").write_text("print('hello')\n")
    (root / "blob.bin").write_bytes(b"\x00\x02")
    text = "".join(diff(package))
    assert "--- a/app.py\n+++ b/app.py\n" in text
    assert "-print('hi')\n+print('hello')\n" in text
    assert "Binary files a/blob.bin and b/blob.bin differ" in text
    only = "".join(diff(package, "HEAD", [b"blob.bin"]))
    assert "app.py" not in only
    assert "blob.bin" in only


# -- bad input ----------------------------------------------------------------------------


def test_corrupted_object_is_named_by_fsck_and_stops_checkout(package: Package) -> None:
    first = package.commit("first")
    (package.root / "app.py").write_text("v2\n")
    package.commit("second")
    _, tree = package.version(first.id)
    victim = package.objects.path(tree[b"app.py"].sha256)
    victim.write_bytes(b"garbage")
    count, problems = fsck(package)
    assert count == 2
    assert len(problems) == 1
    assert tree[b"app.py"].sha256 in problems[0]
    assert "corrupt" in problems[0]
    with pytest.raises(CorruptFile, match="corrupt"):
        checkout(package, first.id)


def test_truncated_manifest_is_an_error_naming_the_file(package: Package) -> None:
    first = package.commit("first")
    manifest = package.meta / "versions" / f"{first.id}.ini"
    manifest.write_text(manifest.read_text()[:200])
    with pytest.raises(CorruptFile, match=rf"{first.id}\.ini"):
        package.version(first.id)
    assert fsck(package)[1]


@pytest.mark.parametrize(
    ("replace", "says"),
    [
        ('"app.py"', r'bad path "\.\./escape"'),
        ('"app.py"', r"bad path \"/etc/cron\.d/x\""),
        ("100644", "bad mode"),
    ],
)
def test_hand_edited_manifest_is_refused_with_its_line(package: Package, replace: str, says: str) -> None:
    first = package.commit("first")
    manifest = package.meta / "versions" / f"{first.id}.ini"
    text = manifest.read_text()
    target = {r'bad path "\.\./escape"': '"../escape"', r"bad path \"/etc/cron\.d/x\"": '"/etc/cron.d/x"'}
    new = target.get(says, "100645")
    lines = text.splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith('"app.py"'))
    manifest.write_text(text.replace(replace, new, 1))
    with pytest.raises(CorruptFile, match=rf"\.ini:{number}: {says}"):
        package.version(first.id)


def test_manifest_with_a_file_below_a_symlink_never_writes_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pkg_root = tmp_path / "pkg"
    make(pkg_root, {"a": "1"})
    package = Package.init(pkg_root, "p")
    first = package.commit("first")
    # A forged version: "link" is a symlink to ../outside and "link/x" a file inside it.

    target = os.fsencode(outside)

    link_sha, data_sha = hashlib.sha256(target).hexdigest(), hashlib.sha256(b"pwned").hexdigest()
    package.objects.put(link_sha, target)
    package.objects.put(data_sha, b"pwned")
    tree = {
        b"link": FileEntry(MODE_SYMLINK, len(target), link_sha),
        b"link/x": FileEntry(MODE_FILE, 5, data_sha),
    }
    forged = version_id(tree)
    info = VersionInfo(
        forged,
        "p",
        first.id,
        "eve",
        "2026-01-01T00:00:00Z",
        "forged",
        {"files": 2, "added": 2, "modified": 0, "deleted": 1},
    )
    (package.meta / "versions" / f"{forged}.ini").write_text(render_manifest(info, tree))
    with pytest.raises(CorruptFile, match=r'"link/x" lies below the file "link"'):
        checkout(package, forged, force=True)
    assert list(outside.iterdir()) == []


# -- concurrency -------------------------------------------------------------------------


def test_a_live_lock_stops_a_second_writer_and_a_dead_ones_does_not(package: Package) -> None:
    with package_lock(package.lock_path), pytest.raises(LockHeld, match=r"index\.lock is held by"):
        package.commit("blocked")
    # A pid that cannot be running: the highest possible, past pid_max.
    package.lock_path.write_text(f"{socket.gethostname()}:{2**22 + 7}\n")
    assert package.commit("after a crash").id == package.head()
    assert not package.lock_path.exists()


# -- the command line --------------------------------------------------------------------


def test_cli_status_formats_and_exit_codes(package: Package) -> None:
    root = package.root
    porcelain = vcs("status", "--porcelain", cwd=root)
    assert porcelain.returncode == 0
    assert porcelain.stdout == "A app.py\nA conf/app.ini\nA static/logo.svg\n"
    assert vcs("status", "--exit-code", cwd=root).returncode == 1
    assert vcs("commit", "-m", "first", cwd=root).returncode == 0
    assert vcs("status", "--exit-code", cwd=root).returncode == 0
    human = vcs("status", cwd=root / "conf")  # found from a subdirectory
    assert "nothing to commit, working tree clean" in human.stdout
    lost = vcs("status", cwd=root.parent)
    assert lost.returncode == 1
    assert "is not inside a package" in lost.stderr
    assert "Traceback" not in lost.stderr


def test_cli_diff_takes_paths_after_a_double_dash(package: Package) -> None:
    root = package.root
    first = package.commit("first")
    (root / "app.py").write_text("print('hello')\n")
    (root / "conf/app.ini").write_text("[a]\nb = 2\n")
    only = vcs("diff", "--", "app.py", cwd=root)
    assert only.returncode == 0, only.stderr
    assert "b/app.py" in only.stdout
    assert "app.ini" not in only.stdout
    versioned = vcs("diff", first.id[:8], "--", "conf", cwd=root)
    assert "+b = 2" in versioned.stdout
    assert "app.py" not in versioned.stdout
    everything = vcs("diff", cwd=root)
    assert "app.py" in everything.stdout
    assert "app.ini" in everything.stdout


def test_a_commit_stores_many_files_of_the_same_content_at_once(tmp_path: Path) -> None:
    # Enough new files to be hashed by several threads, all with one content: they must not
    # trip over each other's temporary object file.
    for i in range(300):
        (tmp_path / f"__init__{i}.py").write_bytes(b"")
    package = Package.init(tmp_path, "same")
    info = package.commit("many empty files", author="t")
    assert info.counts["files"] == 300
    assert not package.status()
