"""conveyor.pkgvcs against real git: the same trees and edits, the same ``status --porcelain``.

Random trees (nested directories, empty and executable files, symlinks, names with every kind
of awkward byte, including ones that are not UTF-8) are built twice, once as a git repository
and once as a conveyor package, committed, edited the same way, and the two statuses compared
line for line: git's ``??``/`` M``/`` D``/`` T`` become ``A``/``M``/``D``/``M`` and, since git
lists tracked changes before untracked ones, both are ordered by raw path bytes. The quoted
path text must be git's exactly (core.quotePath=true).

Also here: the racy-timestamp rule of the stat cache, and names surviving commit → manifest →
checkout.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.pkgvcs import NothingToCommit, Package, checkout, porcelain_quote

from .pkgvcs_trees import (
    CONVEYOR,
    GIT,
    Edit,
    File,
    Link,
    Node,
    apply_edit,
    git,
    git_commit_all,
    git_init,
    git_porcelain,
    materialize,
    snapshot,
    snapshot_dirs,
)

pytestmark = pytest.mark.skipif(GIT is None, reason="git is not installed")

# -- names, trees and edits ---------------------------------------------------------------------

# Pieces names are made of: every character class that quoting, INI keys or git treat specially.
_PIECES = (
    b"a",
    b"b",
    b"Z",
    b"0",
    b" ",
    b"=",
    b":",
    b"#",
    b";",
    b"[",
    b"]",
    b"'",
    b'"',
    b"\\",
    b"\t",
    b"\n",
    b"\r",
    b"\x01",
    b"\x1b",
    b"\x7f",
    b"-",
    b".",
    b"~",
    b"*",
    b"?",
    b"!",
    b"%",
    b"{",
    "é".encode(),
    "日本".encode(),
    "😀".encode(),
    b"\xff",  # never valid in UTF-8
    b"\x80",  # a lone continuation byte
    b"\xc3",  # a truncated sequence
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xc0\xaf",  # an overlong '/'
)
_PLAIN = (b"README", b"main.py", b"conf.ini", b"data", b"x")


def _allowed(name: bytes) -> bool:
    """Names git refuses or treats specially, and conveyor's own, are left out."""
    lower = name.lower()
    return (
        name not in (b".", b"..", b".conveyor", b".conveyorignore")
        and not lower.startswith((b".git", b"git~"))
        and not name.endswith(b".conveyor-tmp")  # see test_checkout_keeps_a_file_named_like_its_temp_file
    )


NAMES = st.one_of(
    st.sampled_from(_PLAIN), st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4).map(b"".join)
).filter(_allowed)
CONTENTS = st.one_of(st.sampled_from([b"", b"same\n", b"x"]), st.binary(max_size=48))
MODES = st.sampled_from([0o755, 0o644, 0o700, 0o600, 0o655, 0o744, 0o711])


def targets(existing: list[bytes]) -> st.SearchStrategy[bytes]:
    """Symlink targets: names in the tree (some resolve, some not), dangling and odd ones."""
    choices = [
        NAMES,
        NAMES.map(lambda name: b"../" + name),
        st.sampled_from([b"/nonexistent/dangling", b".", b"..", b"a/b/c"]),
    ]
    if existing:
        choices.append(st.sampled_from(existing))
    return st.one_of(*choices)


@st.composite
def trees(draw: st.DrawFn, max_depth: int = 3) -> dict[bytes, Node]:
    """A tree of files and symlinks, directories nested up to ``max_depth`` deep, none empty."""
    tree: dict[bytes, Node] = {}
    links: list[bytes] = []
    dirs: list[bytes] = []

    def fill(prefix: bytes, depth: int) -> None:
        names = draw(st.lists(NAMES, min_size=1, max_size=5 if depth == 0 else 3, unique=True))
        kinds = ["file", "file", "exec", "link"] + (["dir"] if depth < max_depth else [])
        for name in names:
            path = prefix + name
            kind = draw(st.sampled_from(kinds))
            if kind == "dir":
                dirs.append(path)
                fill(path + b"/", depth + 1)
            elif kind == "link":
                links.append(path)
            else:
                tree[path] = File(draw(CONTENTS), executable=kind == "exec")

    fill(b"", 0)
    existing = sorted(tree) + dirs
    for path in links:
        tree[path] = Link(draw(targets(existing)))
    return tree


def _free_path(root: bytes, parent: bytes, names: list[bytes]) -> bytes | None:
    """``parent/names…`` if it can be created as a new file (no file in the way), else None."""
    path = parent
    for name in names:
        path = path + b"/" + name if path else name
        full = root + b"/" + path
        if os.path.lexists(full) and (name is names[-1] or not os.path.isdir(full)):
            return None
        if os.path.islink(full):
            return None
    return path


_EDIT_KINDS = [
    "write",
    "write",
    "touch",
    "delete",
    "chmod",
    "to_link",
    "to_file",
    "retarget",
    "add",
    "add",
    "rmtree",
    "to_dir",
]


def _edit_file(data: st.DataObject, kind: str, path: bytes, old: File, files: list[bytes]) -> Edit:
    if kind == "write":
        if old.content and data.draw(st.booleans()):  # same size, every byte different
            content = bytes((byte + 1) % 256 for byte in old.content)
        else:
            content = data.draw(CONTENTS)
        return Edit("write", path, content=content, keep_mtime=data.draw(st.booleans()))
    if kind == "chmod":
        return Edit("chmod", path, mode=data.draw(MODES))
    if kind == "to_link":
        return Edit("to_link", path, target=data.draw(targets(files)))
    return Edit("touch", path)


def _edit_link(data: st.DataObject, kind: str, path: bytes, files: list[bytes]) -> Edit:
    if kind == "to_file":
        return Edit("to_file", path, content=data.draw(CONTENTS))
    return Edit("retarget", path, target=data.draw(targets(files)), keep_mtime=data.draw(st.booleans()))


def _edit_add(data: st.DataObject, root: bytes, dirs: list[bytes]) -> Edit | None:
    parent = data.draw(st.sampled_from([b"", *dirs]))
    path = _free_path(root, parent, data.draw(st.lists(NAMES, min_size=1, max_size=3)))
    if path is None:
        return None
    return Edit("add", path, content=data.draw(CONTENTS), mode=data.draw(MODES))


def draw_edit(data: st.DataObject, root: bytes) -> Edit | None:
    """One edit that fits the tree at ``root`` as it is now (None: the chosen kind does not apply)."""
    files = snapshot(root)
    paths = sorted(files)
    regular = [p for p in paths if isinstance(files[p], File)]
    links = [p for p in paths if isinstance(files[p], Link)]
    dirs = sorted(snapshot_dirs(root))
    kind = data.draw(st.sampled_from(_EDIT_KINDS))
    if kind in ("write", "touch", "chmod", "to_link") and regular:
        path = data.draw(st.sampled_from(regular))
        old = files[path]
        assert isinstance(old, File)
        return _edit_file(data, kind, path, old, paths)
    if kind in ("to_file", "retarget") and links:
        return _edit_link(data, kind, data.draw(st.sampled_from(links)), paths)
    if kind == "delete" and paths:
        return Edit("delete", data.draw(st.sampled_from(paths)))
    if kind == "rmtree" and dirs:
        return Edit("rmtree", data.draw(st.sampled_from(dirs)))
    if kind == "to_dir" and paths:
        path = data.draw(st.sampled_from(paths))
        return Edit("to_dir", path, child=data.draw(NAMES), content=data.draw(CONTENTS))
    if kind == "add":
        return _edit_add(data, root, dirs)
    return None


def edit_both(data: st.DataObject, git_root: bytes, package_root: bytes, *, most: int = 8) -> list[Edit]:
    """Draw up to ``most`` edits against the git tree, applying each there and then to the package."""
    edits: list[Edit] = []
    for _ in range(data.draw(st.integers(1, most), label="edits")):
        edit = draw_edit(data, git_root)
        if edit is not None:
            apply_edit(git_root, edit)
            edits.append(edit)
    for edit in edits:
        apply_edit(package_root, edit)
    data.draw(st.just(edits), label="applied")
    return edits


# -- the two sides --------------------------------------------------------------------------------


def expected_porcelain(git_root: bytes) -> str:
    """git's status as conveyor's porcelain should print it: mapped codes, git's quoting, byte order."""
    return "".join(f"{code} {quoted}\n" for code, _, quoted in git_porcelain(git_root))


def library_porcelain(package: Package) -> str:
    return "".join(f"{code} {porcelain_quote(path)}\n" for code, path in package.status().entries())


def cli(*args: str | bytes, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"], "COLUMNS": "200", "CONVEYOR_AUTHOR": "test"}
    result = subprocess.run([CONVEYOR, "vcs", *args], env=env, capture_output=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"conveyor vcs {args!r} exited {result.returncode}: {result.stderr!r}")
    return result


def cli_porcelain(root: bytes) -> str:
    return cli("status", "--porcelain", root).stdout.decode("ascii")


def assert_tree_matches_git(git_root: bytes, package: Package) -> None:
    """The committed version lists the same paths, modes and sizes as git's HEAD tree."""
    listed: dict[bytes, tuple[str, int]] = {}
    for record in git(git_root, "ls-tree", "-r", "-l", "-z", "HEAD").split(b"\0")[:-1]:
        meta, path = record.split(b"\t", 1)
        mode, _type, _object, size = meta.split()
        listed[path] = (mode.decode(), int(size))
    head = package.head()
    assert head is not None
    _, tree = package.version(head)
    assert {path: (f"{entry.mode:o}", entry.size) for path, entry in tree.items()} == listed


def commit_both(git_root: bytes, package: Package, message: str) -> None:
    git_commit_all(git_root, message)
    try:
        package.commit(message, author="test")
    except NothingToCommit:
        assert git(git_root, "diff", "--name-only", "HEAD~1", "HEAD") == b""


@contextmanager
def twin_trees(tree: dict[bytes, Node]) -> Iterator[tuple[bytes, Package]]:
    """``tree`` as a committed git repository and a committed conveyor package, in a temporary dir."""
    with tempfile.TemporaryDirectory(prefix="pkgvcs-git-") as tmp:
        git_root, package_root = os.fsencode(tmp) + b"/git", os.fsencode(tmp) + b"/pkg"
        for root in (git_root, package_root):
            os.mkdir(root)
            materialize(root, tree)
        git_init(git_root)
        git_commit_all(git_root, "first")
        package = Package.init(Path(os.fsdecode(package_root)), "twin")
        package.commit("first", author="test")
        assert git_porcelain(git_root) == []
        assert library_porcelain(package) == ""
        assert_tree_matches_git(git_root, package)
        yield git_root, package


# -- status: conveyor vs git --------------------------------------------------------------------


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), data=st.data())
def test_status_matches_git(tree: dict[bytes, Node], data: st.DataObject) -> None:
    """Two rounds of edit → compare (twice, cold and warm stat cache) → commit both."""
    with twin_trees(tree) as (git_root, package):
        package_root = os.fsencode(package.root)
        for round_ in range(2):
            edit_both(data, git_root, package_root)
            expected = expected_porcelain(git_root)
            assert library_porcelain(package) == expected
            assert library_porcelain(package) == expected  # from the refreshed index
            assert library_porcelain(Package(package.root)) == expected
            commit_both(git_root, package, f"round {round_}")
            assert_tree_matches_git(git_root, package)
            assert library_porcelain(package) == ""


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), data=st.data())
def test_cli_status_and_commit_match_git(tree: dict[bytes, Node], data: st.DataObject) -> None:
    """The same through the ``conveyor vcs`` command: its porcelain text is the contract."""
    with twin_trees(tree) as (git_root, package):
        package_root = os.fsencode(package.root)
        edit_both(data, git_root, package_root)
        assert cli_porcelain(package_root) == expected_porcelain(git_root)
        changed = bool(git_porcelain(git_root))
        git_commit_all(git_root, "second")
        result = cli("commit", "-m", "second", "-C", package_root, check=False)
        assert result.returncode == (0 if changed else 1), result
        assert cli_porcelain(package_root) == ""
        assert_tree_matches_git(git_root, package)


def test_quoting_matches_git_for_every_byte(tmp_path: Path) -> None:
    """One untracked file per byte value 1..255 (but '/'), each name wrapped in letters."""
    git_root, package_root = os.fsencode(tmp_path / "git"), os.fsencode(tmp_path / "pkg")
    tree: dict[bytes, Node] = {
        b"n" + bytes([byte]) + b"x": File(b"") for byte in range(1, 256) if byte != ord("/")
    }
    for root in (git_root, package_root):
        os.mkdir(root)
    git_init(git_root)
    package = Package.init(Path(os.fsdecode(package_root)), "bytes")
    for root in (git_root, package_root):
        materialize(root, tree)
    expected = expected_porcelain(git_root)
    assert len(expected.splitlines()) == len(tree)
    assert library_porcelain(package) == expected
    assert cli_porcelain(package_root) == expected


# -- the racy-timestamp rule of the stat cache ----------------------------------------------------


def _stat_key(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns


@contextmanager
def counting_hashes(monkeypatch: pytest.MonkeyPatch, watched: set[bytes]) -> Iterator[list[bytes]]:
    """Every content among ``watched`` that is sha256-hashed while inside (in this process)."""
    real = hashlib.sha256
    seen: list[bytes] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], bytes) and args[0] in watched:
            seen.append(args[0])
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(hashlib, "sha256", counted)
        yield seen


def test_same_size_edits_with_the_old_mtime_are_seen(tmp_path: Path) -> None:
    """Content changed, size kept and mtime set back (to the old one, or to the index's own)."""
    f = tmp_path / "f.txt"
    f.write_bytes(b"aaaa\n")
    package = Package.init(tmp_path, "racy")
    first = package.commit("a", author="test").id
    index_mtime = os.stat(package.index_path).st_mtime_ns

    f.write_bytes(b"bbbb\n")
    os.utime(f, ns=(index_mtime, index_mtime))  # the racy case: mtime == the index file's mtime
    assert package.status().entries() == [("M", b"f.txt")]
    assert package.status().entries() == [("M", b"f.txt")]
    assert cli_porcelain(os.fsencode(tmp_path)) == "M f.txt\n"
    second = package.commit("b", author="test").id
    assert second != first
    assert package.status().entries() == []

    recorded = os.stat(f)
    f.write_bytes(b"cccc\n")  # in place: same inode, same size, and now the same mtime too
    os.utime(f, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
    assert package.status().entries() == [("M", b"f.txt")]
    assert package.commit("c", author="test").id not in (first, second)

    f.write_bytes(b"bbbb\n")  # the second version's content again, still the same stat but ctime
    os.utime(f, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
    assert package.status().entries() == [("M", b"f.txt")]  # against the third version
    assert checkout(package, second, force=True) == second
    assert package.status().entries() == []
    assert f.read_bytes() == b"bbbb\n"


def test_unchanged_files_older_than_the_index_are_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trusted: same stat and mtime older than the index file. Status neither hashes such a file
    nor rewrites the index (it saves only what it learned)."""
    hour_ago = time.time_ns() - 3600 * 10**9
    contents = {f"f{i}": b"content %d\n" % i for i in range(20)}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        os.utime(tmp_path / name, ns=(hour_ago, hour_ago))
    package = Package.init(tmp_path, "cache")
    package.commit("files", author="test")
    before = _stat_key(package.index_path)

    with counting_hashes(monkeypatch, set(contents.values())) as hashed:
        assert package.status().entries() == []
        assert Package(tmp_path).status().entries() == []
    assert hashed == []
    assert _stat_key(package.index_path) == before  # nothing learned, nothing rewritten
    assert cli_porcelain(os.fsencode(tmp_path)) == ""
    assert _stat_key(package.index_path) == before


def _ctime_ns(path: Path) -> int:
    return os.lstat(path).st_ctime_ns


def _next_ctime_tick(directory: Path, after: int) -> None:
    """Touch a probe file until the kernel's (coarse) ctime clock has moved past ``after``."""
    probe = directory / ".probe"
    deadline = time.monotonic() + 5
    while True:
        probe.write_bytes(b"")
        if _ctime_ns(probe) > after:
            probe.unlink()
            return
        assert time.monotonic() < deadline, "the ctime clock did not move"


def test_an_entry_as_new_as_the_index_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The racy rule at its boundary, moving only the index file's mtime: an entry whose mtime or
    ctime is not older than it is hashed again (and the index rewritten); older ones are trusted."""
    hour_ago = time.time_ns() - 3600 * 10**9
    contents = {f"f{i}": b"content %d\n" % i for i in range(5)}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        os.utime(tmp_path / name, ns=(hour_ago, hour_ago))
    _next_ctime_tick(tmp_path, max(_ctime_ns(tmp_path / name) for name in contents))
    os.utime(tmp_path / "f3", ns=(hour_ago, hour_ago))  # f3 alone now has the newest ctime
    racy = _ctime_ns(tmp_path / "f3")
    package = Package.init(tmp_path, "racy")
    package.commit("files", author="test")
    assert package.status().entries() == []

    os.utime(package.index_path, ns=(racy + 1, racy + 1))  # every entry older: all trusted
    with counting_hashes(monkeypatch, set(contents.values())) as hashed:
        assert package.status().entries() == []
    assert hashed == []
    assert _stat_key(package.index_path)[1] == racy + 1  # not rewritten

    os.utime(package.index_path, ns=(racy, racy))  # f3's ctime == the index's: racy
    with counting_hashes(monkeypatch, set(contents.values())) as hashed:
        assert package.status().entries() == []
    assert hashed == [b"content 3\n"]
    assert _stat_key(package.index_path)[1] > racy  # rewritten: f3 is now older than the index

    with counting_hashes(monkeypatch, set(contents.values())) as hashed:
        assert package.status().entries() == []
    assert hashed == []


def test_racy_file_changed_after_hashing_in_the_same_tick_is_seen(tmp_path: Path) -> None:
    """Content changed after status hashed it, size kept, and mtime pinned to the index's own
    mtime (as a change in the same clock tick would leave it): the next status sees it."""
    f = tmp_path / "f.txt"
    f.write_bytes(b"aaaa\n")
    package = Package.init(tmp_path, "racy")
    package.commit("a", author="test")
    for content in (b"bbbb\n", b"cccc\n", b"aaaa\n"):
        f.write_bytes(content)
        assert len(package.status().entries()) == (0 if content == b"aaaa\n" else 1)
        index_mtime = os.stat(package.index_path).st_mtime_ns
        f.write_bytes(content.upper())
        os.utime(f, ns=(index_mtime, index_mtime))
        assert package.status().entries() == [("M", b"f.txt")]
        assert cli_porcelain(os.fsencode(tmp_path)) == "M f.txt\n"


# -- names through commit → manifest → checkout ------------------------------------------------

NAME_KINDS: dict[str, bytes] = {
    "space": b"with space",
    "leading space": b" lead",
    "trailing space": b"trail ",
    "only spaces": b"   ",
    "equals": b"a=b",
    "colon": b"c:d",
    "hash": b"#hash",
    "semicolon": b";semi",
    "brackets": b"[section]",
    "double quote": b'q"uote',
    "quoted": b'"quoted"',
    "single quote": b"it's",
    "backslash": b"back\\slash",
    "octal-looking": b"\\303\\251",
    "tab": b"tab\there",
    "newline": b"new\nline",
    "trailing newline": b"nl\n",
    "carriage return": b"cr\rx",
    "controls": b"ctl\x01\x1b",
    "delete": b"del\x7f",
    "utf-8": "café-日本-😀".encode(),
    "invalid utf-8": b"bad\xff\xfe",
    "lone continuation": b"\x80cont",
    "truncated sequence": b"trunc\xc3",
    "surrogate": b"sur\xed\xa0\x80",
    "overlong": b"over\xc0\xaf",
    "leading dash": b"-dash",
    "glob": b"*?[!]",
    "percent": b"%s%n",
    "dots": b"...",
    "ini-like": b"; k = v :",
    "dot start": b".hidden",
    "tilde": b"~backup~",
}


def every_name_tree() -> dict[bytes, Node]:
    """Each kind of name as a file, as a directory holding it, and as symlinks (to it, dangling)."""
    tree: dict[bytes, Node] = {}
    for i, name in enumerate(NAME_KINDS.values()):
        tree[name] = File(b"file " + name + b"\n", executable=i % 3 == 0)
        tree[b"dir " + name + b"/" + name] = File(b"" if i % 4 == 0 else b"nested " + name)
        tree[b"dir " + name + b"/sub/" + name] = File(b"deeper\n", executable=i % 2 == 0)
        tree[b"link " + name] = Link(name)
        tree[b"dangling " + name] = Link(b"../" + name + b"/nowhere\n")
    return tree


def test_every_name_kind_round_trips_through_checkout(tmp_path: Path) -> None:
    tree = every_name_tree()
    git_root, root = os.fsencode(tmp_path / "git"), os.fsencode(tmp_path / "pkg")
    for base in (git_root, root):
        os.mkdir(base)
        materialize(base, tree)
    git_init(git_root)
    git_commit_all(git_root, "first")
    package = Package.init(Path(os.fsdecode(root)), "names")
    cli("commit", "-m", "every name", "-C", root)
    first = package.head()
    assert first is not None
    assert_tree_matches_git(git_root, package)
    original, original_dirs = snapshot(root), snapshot_dirs(root)
    assert original == tree

    # Change everything: every file edited, re-moded, deleted or made a link; every link
    # retargeted or made a file; some directories removed whole; new files in new directories.
    edits: list[Edit] = []
    for i, (path, node) in enumerate(sorted(tree.items())):
        if path.startswith(b"dir ") and i % 5 == 0:
            continue  # removed with its directory below
        if isinstance(node, Link):
            edits.append(
                Edit("retarget", path, target=b"elsewhere " + path) if i % 2 else Edit("to_file", path)
            )
        elif i % 4 == 0:
            edits.append(
                Edit("write", path, content=bytes((b + 1) % 256 for b in node.content), keep_mtime=True)
            )
        elif i % 4 == 1:
            edits.append(Edit("chmod", path, mode=0o644 if node.executable else 0o755))
        elif i % 4 == 2:
            edits.append(Edit("delete", path))
        else:
            edits.append(Edit("to_link", path, target=path))
    edits += [
        Edit("rmtree", path.split(b"/")[0])
        for i, path in enumerate(sorted(tree))
        if path.startswith(b"dir ") and i % 5 == 0 and os.path.isdir(root + b"/" + path.split(b"/")[0])
    ]
    edits += [Edit("add", b"new " + name + b"/" + name, content=name) for name in NAME_KINDS.values()]
    done: set[bytes] = set()
    for edit in edits:
        if edit.kind == "rmtree" and edit.path in done:
            continue
        done.add(edit.path)
        for base in (git_root, root):
            apply_edit(base, edit)
    assert cli_porcelain(root) == expected_porcelain(git_root)
    cli("commit", "-m", "everything changed", "-C", root)
    second = package.head()
    assert second not in (None, first)
    edited = snapshot(root)

    (tmp_path / "pkg" / "untracked file").write_bytes(b"goes away with --force")
    assert cli("checkout", first, "-C", root, check=False).returncode == 1  # not without --force
    cli("checkout", first, "--force", "-C", root)
    assert snapshot(root) == original
    assert snapshot_dirs(root) == original_dirs
    assert cli_porcelain(root) == ""

    cli("checkout", second, "--force", "-C", root)  # (second is not None: asserted above)
    assert snapshot(root) == edited
    assert cli_porcelain(root) == ""
    assert cli("fsck", "-C", root).returncode == 0


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), data=st.data())
def test_checkout_force_restores_random_trees(tree: dict[bytes, Node], data: st.DataObject) -> None:
    """Commit, edit (and maybe commit the edits), ``checkout --force`` the first version: the
    tree on disk is the first one again, names, content, exec bits and link targets."""
    with twin_trees(tree) as (git_root, package):
        first = package.head()
        assert first is not None
        root = os.fsencode(package.root)
        original, original_dirs = snapshot(root), snapshot_dirs(root)
        edit_both(data, git_root, root)
        second = None
        if data.draw(st.booleans(), label="commit the edits") and package.status():
            second = package.commit("edits", author="test").id
            edit_both(data, git_root, root, most=3)
        dirs_before = snapshot_dirs(root)
        assert checkout(package, first, force=True) == first
        assert snapshot(root) == original
        # Like git, checkout leaves empty untracked directories alone, but creates no others.
        dirs_after = snapshot_dirs(root)
        assert original_dirs <= dirs_after
        assert dirs_after - original_dirs <= dirs_before
        assert package.status().entries() == []
        if second is not None:
            assert checkout(package, second, force=True) == second
            assert package.status().entries() == []
            _, tree_two = package.version(second)
            assert set(snapshot(root)) == set(tree_two)


def test_checkout_keeps_a_file_named_like_its_temp_file(tmp_path: Path) -> None:
    """checkout writes ``x`` through ``x.conveyor-tmp``: a tracked file of that name must survive."""
    (tmp_path / "x").write_bytes(b"one\n")
    (tmp_path / "x.conveyor-tmp").write_bytes(b"a tracked file\n")
    package = Package.init(tmp_path, "temp")
    first = package.commit("both", author="test").id
    (tmp_path / "x").write_bytes(b"changed\n")
    assert checkout(package, first, force=True) == first
    assert (tmp_path / "x").read_bytes() == b"one\n"
    assert package.status().entries() == []
    assert (tmp_path / "x.conveyor-tmp").read_bytes() == b"a tracked file\n"


def test_checkout_force_replaces_a_directory_of_empty_directories(tmp_path: Path) -> None:
    """Deleting the only file of ``a/b/`` leaves empty directories where the first version has the
    file ``a``; ``checkout --force`` (like ``git checkout -f``) must still restore it."""
    (tmp_path / "a").write_bytes(b"one\n")
    (tmp_path / "z").write_bytes(b"last\n")
    package = Package.init(tmp_path, "dirs")
    first = package.commit("a file", author="test").id
    (tmp_path / "a").unlink()
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_bytes(b"x\n")
    (tmp_path / "z").write_bytes(b"changed\n")
    package.commit("a directory", author="test")
    (tmp_path / "a" / "b" / "c").unlink()  # leaves a/ and a/b/, both without files
    assert checkout(package, first, force=True) == first
    assert (tmp_path / "a").read_bytes() == b"one\n"
    assert (tmp_path / "z").read_bytes() == b"last\n"
    assert package.status().entries() == []
