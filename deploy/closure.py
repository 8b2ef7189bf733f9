"""The installed distributions a requirement needs, and their sizes: what a Lambda bundle
of this package holds (``bench/bundle_size.py`` and ``deploy/layers.py`` use it)."""

from __future__ import annotations

import importlib.metadata as md
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@dataclass
class DistSize:
    name: str
    version: str
    files: int = 0
    size: int = 0
    pyc_size: int = 0
    required_by: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "files": self.files,
            "bytes": self.size,
            "pyc_bytes": self.pyc_size,
            "required_by": sorted(self.required_by),
        }


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    marker: Marker = req.marker
    if not extras:
        return bool(marker.evaluate({"extra": ""}))
    return any(marker.evaluate({"extra": e}) for e in extras)


def closure(root: str = "agentworker", extras: frozenset[str] = frozenset()) -> dict[str, DistSize]:
    """Installed distributions needed by ``root[extras]``, keyed by canonical name."""
    found: dict[str, DistSize] = {}
    missing: list[str] = []
    todo: list[tuple[str, frozenset[str], str]] = [(root, extras, "")]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted, parent = todo.pop()
        key = canonicalize_name(name)
        if (key, wanted) in seen:
            if key in found and parent:
                found[key].required_by.add(parent)
            continue
        seen.add((key, wanted))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        entry = found.setdefault(key, DistSize(key, dist.version))
        if parent:
            entry.required_by.add(parent)
        for text in dist.requires or []:
            req = Requirement(text)
            if _applies(req, wanted):
                todo.append((req.name, frozenset(req.extras), key))
    if missing:
        print(f"not installed (skipped): {', '.join(sorted(set(missing)))}", file=sys.stderr)
    return found


def measure(entry: DistSize) -> None:
    """Add up the files ``entry``'s distribution installed (its ``RECORD``)."""
    dist = md.distribution(entry.name)
    for file in dist.files or []:
        if file.parts and file.parts[0] == "..":
            continue  # console scripts in bin/, not part of a Lambda bundle
        path = Path(str(file.locate()))
        if not path.is_file():
            continue
        size = path.stat().st_size
        entry.files += 1
        entry.size += size
        if path.suffix == ".pyc":
            entry.pyc_size += size
