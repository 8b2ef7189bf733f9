"""Unzipped size of the ``turn`` function's dependencies.

The closure of the package's base ``[project] dependencies`` (no ``local``/``dev`` extras),
resolved recursively from the installed distributions' metadata (``importlib.metadata``,
markers evaluated for this interpreter, extras followed where a requirement names them),
and the size of every file each distribution installed (its ``RECORD``: ``dist.files``;
console scripts outside ``site-packages`` excluded), plus our own ``workers/`` and
``events/`` sources. Reported with and without ``boto3``/``botocore``/``s3transfer``, which
the Lambda Python runtime provides (bundling your own pins the version; not bundling takes
the runtime's). Sizes are this machine's wheels (its platform and Python); the arm64 Lambda
wheels differ slightly.

Next to it, the trimmed ``turn`` bundle: the same closure and the same measured files without
the distributions ``workers.packaging.EXCLUDED["turn"]`` leaves out (each with its reason).
Excluded names missing from the closure (a stale entry) and kept distributions that only
excluded ones require (an incomplete entry) are reported too.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.common import progress
from workers.packaging import excluded

ROOT = "agentworker"
FUNCTION = "turn"
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
GOAL_MB = 150.0
LIMIT_MB = 250.0
MUST_HAVE = "mlflow-tracing"
MUST_NOT_HAVE = "mlflow"
OWN_SOURCES = ("workers", "events")
REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


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


def closure(root: str = ROOT, extras: frozenset[str] = frozenset()) -> dict[str, DistSize]:
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
        progress(f"bundle-size: not installed (skipped): {', '.join(sorted(set(missing)))}")
    return found


def _measure(entry: DistSize) -> None:
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


def _own_sources() -> tuple[int, int]:
    files = size = 0
    for top in OWN_SOURCES:
        for path in (REPO / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files += 1
                size += path.stat().st_size
    return files, size


def _trimmed(dists: dict[str, DistSize], own_size: int) -> dict[str, Any]:
    """``FUNCTION``'s bundle: the closure without what ``workers.packaging`` excludes."""
    spec = excluded(FUNCTION)
    kept = {n: d for n, d in dists.items() if n not in spec}
    total = sum(d.size for d in kept.values()) + own_size
    provided = sum(d.size for n, d in kept.items() if n in RUNTIME_PROVIDED)
    dropped = sorted((d for n, d in dists.items() if n in spec), key=lambda d: -d.size)
    without = total - provided
    return {
        "function": FUNCTION,
        "distributions": len(kept),
        "excluded": [{**d.to_dict(), "reason": spec[d.name]} for d in dropped],
        "excluded_bytes": sum(d.size for d in dropped),
        "not_in_closure": sorted(set(spec) - set(dists)),
        "only_required_by_excluded": sorted(
            n for n, d in kept.items() if d.required_by and d.required_by <= set(spec)
        ),
        "total_bytes": total,
        "total_without_runtime_provided_bytes": without,
        "met_goal": total / MB < GOAL_MB,
        "met_goal_without_runtime_provided": without / MB < GOAL_MB,
        "within_limit": total / MB < LIMIT_MB,
    }


def run() -> dict[str, Any]:
    progress("bundle-size: resolving the base dependencies' closure")
    dists = closure()
    own = dists.pop(canonicalize_name(ROOT), None)
    for entry in dists.values():
        _measure(entry)
    own_files, own_size = _own_sources()
    total = sum(d.size for d in dists.values()) + own_size
    provided = sum(d.size for n, d in dists.items() if n in RUNTIME_PROVIDED)
    pyc = sum(d.pyc_size for d in dists.values())
    ranked = sorted(dists.values(), key=lambda d: d.size, reverse=True)
    without = total - provided
    return {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "root": ROOT,
        "root_version": None if own is None else own.version,
        "distributions": len(dists),
        "own_sources": {"dirs": list(OWN_SOURCES), "files": own_files, "bytes": own_size},
        "total_bytes": total,
        "runtime_provided": list(RUNTIME_PROVIDED),
        "runtime_provided_bytes": provided,
        "total_without_runtime_provided_bytes": without,
        "pyc_bytes": pyc,
        "top": [d.to_dict() for d in ranked[:10]],
        "all": [d.to_dict() for d in ranked],
        "has_mlflow_tracing": canonicalize_name(MUST_HAVE) in dists,
        "has_full_mlflow": canonicalize_name(MUST_NOT_HAVE) in dists,
        "goal_mb": GOAL_MB,
        "limit_mb": LIMIT_MB,
        "met_goal": total / MB < GOAL_MB,
        "met_goal_without_runtime_provided": without / MB < GOAL_MB,
        "within_limit": total / MB < LIMIT_MB,
        "trimmed": _trimmed(dists, own_size),
    }
