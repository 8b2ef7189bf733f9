"""Tombstones: the conversations whose traces were erased, kept where the exporter reads them.

The server erases a conversation's rows at once, but its traces may be anywhere on their way
to MLflow: in MLflow already, in the spool, or still being recorded by a turn that runs on.
So the erasure leaves a tombstone (``<spool>/forget/<time>-<hash>.pending``: the
conversation id and the time of the erasure), and the exporter process honours it:

- a trace of that conversation that started before the tombstone is never exported, and
  is scrubbed from the spool's segments even while the tracking store is down;
- once the store can be reached, the traces in MLflow that started before the tombstone are
  deleted, and the tombstone is marked done (``.done``, with how many were deleted).

A conversation created again under the same id after the erasure keeps its new traces (they
start after the tombstone). Done tombstones are kept for a day, for the traces of turns that
ran on past the erasure, then removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.statedir import private_dir, write_private

PENDING, DONE = ".pending", ".done"
KEEP_DONE = 86_400.0
"""Seconds a done tombstone is kept: traces of turns still running at the erasure (they end
after it) are dropped meanwhile."""


@dataclass(frozen=True)
class Tombstone:
    """One erasure: the conversation, and the time (ns since the epoch) before which its
    traces started."""

    path: Path
    conversation_id: str
    before: int


class Tombstones:
    """The tombstones of one spool (``<spool>/forget``): the server adds them, the exporter
    applies them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, conversation_id: str, before: int) -> Path:
        """Record the erasure of ``conversation_id`` at ``before`` (durably: a file)."""
        digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:16]
        path = private_dir(self.directory) / f"{before:020d}-{digest}{PENDING}"
        write_private(path, json.dumps({"conversation_id": conversation_id, "before": before}))
        return path

    def _read(self, suffix: str) -> list[Tombstone]:
        found = []
        try:
            paths = sorted(p for p in self.directory.iterdir() if p.name.endswith(suffix))
        except FileNotFoundError:
            return []
        for path in paths:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                data = json.loads(path.read_text())
                found.append(Tombstone(path, str(data["conversation_id"]), int(data["before"])))
        return found

    def version(self) -> int:
        """Changes when a tombstone is added or done (the directory's mtime; 0 if none)."""
        try:
            return self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def pending(self) -> list[Tombstone]:
        """The tombstones not applied in MLflow yet, oldest first."""
        return self._read(PENDING)

    def erased(self) -> dict[str, int]:
        """Conversation id -> the latest erasure's time, over every tombstone kept."""
        out: dict[str, int] = {}
        for stone in self._read(DONE) + self._read(PENDING):
            out[stone.conversation_id] = max(out.get(stone.conversation_id, 0), stone.before)
        return out

    def done(self, stone: Tombstone, deleted: int) -> None:
        """Mark ``stone`` applied: ``deleted`` traces were deleted from MLflow."""
        data = {"conversation_id": stone.conversation_id, "before": stone.before}
        write_private(stone.path.with_suffix(DONE), json.dumps(data | {"deleted": deleted}))
        stone.path.unlink(missing_ok=True)

    def result(self, pending: Path) -> int | None:
        """How many traces the tombstone ``pending`` (as :meth:`add` returned it) deleted,
        once it is done; ``None`` before."""
        try:
            data: dict[str, Any] = json.loads(pending.with_suffix(DONE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return int(data.get("deleted", 0))

    def prune(self, *, keep: float = KEEP_DONE) -> None:
        """Remove the done tombstones older than ``keep`` seconds."""
        limit = time.time() - keep
        for stone in self._read(DONE):
            with contextlib.suppress(FileNotFoundError):
                if stone.path.stat().st_mtime < limit:
                    stone.path.unlink()


def erased_record(record: dict[str, Any], erased: dict[str, int]) -> bool:
    """Whether ``record`` (a trace or feedback) belongs to a conversation erased after it
    started (its root span's start, the feedback's time)."""
    if not erased:
        return False
    conversation_id = record.get("conversation_id") or (record.get("tags") or {}).get(
        "conversation_id"
    )
    before = erased.get(conversation_id) if isinstance(conversation_id, str) else None
    if before is None:
        return False
    return record_time(record) <= before


def record_time(record: dict[str, Any]) -> int:
    """When ``record`` began (ns): its root span's start, or the feedback's time; 0 if it
    says nothing (an old record: erased with its conversation)."""
    if record.get("kind") == "trace":
        starts = [s.get("start") for s in record.get("spans") or () if s.get("parent") is None]
        return int(starts[0]) if starts and isinstance(starts[0], int) else 0
    value = record.get("time")
    return value if isinstance(value, int) else 0
