"""Checking every manifest, changelog, reference and stored object of a package."""

from __future__ import annotations

from conveyor.pkgvcs.errors import VcsError
from conveyor.pkgvcs.package import Package

__all__ = ["fsck"]


def fsck(package: Package) -> tuple[int, list[str]]:
    """(versions checked, problems found); each problem names the file at fault."""
    problems: list[str] = []
    checked_objects: set[str] = set()
    versions = sorted(p.stem for p in (package.meta / "versions").glob("*.ini"))
    for version in versions:
        try:
            info, tree = package.version(version)
            package.changelog(version)
        except VcsError as exc:
            problems.append(str(exc))
            continue
        if info.parent is not None and info.parent not in versions:
            problems.append(f"version {version}: its parent {info.parent} has no manifest")
        for entry in tree.values():
            if entry.sha256 in checked_objects:
                continue
            checked_objects.add(entry.sha256)
            try:
                data = package.objects.get(entry.sha256)
            except VcsError as exc:
                problems.append(f"version {version}: {exc}")
                continue
            if len(data) != entry.size:
                problems.append(
                    f"version {version}: object {entry.sha256} has {len(data)} bytes, not {entry.size}"
                )
    refs = {"HEAD": package.head(), **package.tags()}
    for name, target in refs.items():
        if target is not None and target not in versions:
            problems.append(f"{name} points to {target}, which has no manifest")
    return len(versions), problems
