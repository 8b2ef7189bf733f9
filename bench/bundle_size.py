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

import platform
import sys
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from bench.common import progress
from deploy.closure import DistSize, closure, measure
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
        measure(entry)
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
