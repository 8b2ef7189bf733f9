"""The embedded runtime's trace sink: a spool of JSON lines that a separate process exports.

The server appends each finished trace to the open segment of ``<state_dir>/trace-spool``
with one ``write`` (about ten microseconds: the page cache, not the disk) and never waits
for MLflow. Segments close every ``rotate_seconds`` (``*.open`` -> ``*.jsonl``); the
exporter process (:mod:`workers.tracing.exporter`, started with the first trace, at idle
priority) writes closed segments into MLflow in batches and deletes them. A ``kill -9`` of the
server loses nothing written: the orphaned exporter, or the next one, exports the dead
server's open segment too.

Bounded: when the spool holds more than ``max_bytes`` (the tracking store is down, or the
exporter cannot keep up), new traces are dropped and counted with a warning, and replies
go on.

Erasing a conversation leaves a tombstone the exporter honours (:mod:`.tombstones`): its
spooled traces are never exported, and those already in MLflow are deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from workers.statedir import private_dir
from workers.tracing.tombstones import Tombstones

log = logging.getLogger(__name__)

OPEN, CLOSED = ".open", ".jsonl"
SEGMENT_RECORDS = 2000
FORGET_WAIT = 2.0
"""Seconds an erasure waits for the exporter to delete the conversation's traces from
MLflow before it answers that their deletion is pending (never while the store is down)."""
WARN_EVERY = 1000


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=str)


def encode(record: dict[str, Any]) -> bytes:
    return (
        json.dumps(record, default=_jsonable, ensure_ascii=False, separators=(",", ":")) + "\n"
    ).encode()


def spool_bytes(directory: Path) -> int:
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith((OPEN, CLOSED)):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_size
    except FileNotFoundError:
        return 0
    return total


def segments(directory: Path, suffix: str) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))
    except FileNotFoundError:
        return []


def stop_file(directory: Path, server_pid: int) -> Path:
    """Left by a server that stops: its exporter finishes the spool and exits."""
    return directory / f"stop-{server_pid}"


TRACKING_URI_ENV = "AGENTWORKER_EXPORTER_TRACKING_URI"
"""How the exporter process is given the tracking URI (its environment, not its argv)."""


def store_down_file(directory: Path) -> Path:
    """Present while the exporter finds the tracking store unreachable."""
    return directory / "store-down"


def tombstones(directory: Path) -> Tombstones:
    """The tombstones of the spool at ``directory``."""
    return Tombstones(directory / "forget")


@dataclass(frozen=True)
class ExporterCommand:
    """How to start the exporter process for a spool."""

    spool: Path
    tracking_uri: str
    experiment: str
    artifact_dir: Path | None = None
    redaction: bool = True
    """The redaction hook, applied by the exporter to what it writes into MLflow."""
    redact_patterns: tuple[str, ...] = ()

    def argv(self, parent: int) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "workers.tracing.exporter",
            "--spool",
            str(self.spool),
            "--experiment",
            self.experiment,
            "--parent",
            str(parent),
        ]
        if self.artifact_dir is not None:
            argv += ["--artifacts", str(self.artifact_dir)]
        if not self.redaction:
            argv.append("--no-redaction")
        for pattern in self.redact_patterns:
            argv += ["--redact-pattern", pattern]
        return argv

    def start(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "MLFLOW_MODEL_CATALOG_URI": os.environ.get("MLFLOW_MODEL_CATALOG_URI", ""),
            # not in argv, which every local user can read (``ps``): it may hold a password
            TRACKING_URI_ENV: self.tracking_uri,
        }
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # Its own session: a Ctrl-C meant for the server does not cut the export short;
        # the server tells it to finish (SIGTERM) when it stops.
        return subprocess.Popen(
            self.argv(os.getpid()), stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


class SpoolSink:
    """Appends trace records to the spool; starts, flushes and stops the exporter."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        exporter: ExporterCommand | None,
        rotate_seconds: float = 0.5,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.exporter = exporter
        self.rotate_seconds = rotate_seconds
        self.written = 0
        self.dropped = 0
        """Records dropped because the spool was full."""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._records = 0
        self._full = False
        self._process: subprocess.Popen[bytes] | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # the turn's side ---------------------------------------------------------------------

    def put(self, record: dict[str, Any]) -> None:
        line = encode(record)
        with self._lock:
            if self._full:
                self._drop()
                return
            if self._fd is None:
                self._open()
            assert self._fd is not None
            os.write(self._fd, line)
            self.written += 1
            self._records += 1
            if self._records >= SEGMENT_RECORDS:
                self._rotate()

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped % WARN_EVERY == 1:
            log.warning(
                "trace spool %s is over %d MB (is the tracking store down?): %d trace(s)"
                " dropped so far; replies go on",
                self.directory,
                self.max_bytes // 2**20,
                self.dropped,
            )

    def _open(self) -> None:
        if self._ticker is None:
            self._start()
        name = f"{time.time_ns():020d}-{os.getpid()}"
        self._path = self.directory / (name + OPEN)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._opened = time.monotonic()
        self._records = 0

    def _rotate(self) -> None:
        if self._fd is None or self._path is None:
            return
        os.close(self._fd)
        self._path.rename(self._path.with_suffix(CLOSED))
        self._fd, self._path = None, None

    # background --------------------------------------------------------------------------

    def _start(self) -> None:
        private_dir(self.directory)
        stop_file(self.directory, os.getpid()).unlink(missing_ok=True)  # an earlier pid's
        self._start_exporter()
        self._ticker = threading.Thread(target=self._tick, name="trace-spool", daemon=True)
        self._ticker.start()

    def _start_exporter(self) -> None:
        running = self._process is not None and self._process.poll() is None
        if self.exporter is not None and not running:
            self._process = self.exporter.start()

    def _tick(self) -> None:
        """Close the open segment when it is old enough; watch the spool's size."""
        while not self._stopping.wait(self.rotate_seconds / 2):
            with self._lock:
                if self._fd is not None and time.monotonic() - self._opened >= self.rotate_seconds:
                    self._rotate()
            full = spool_bytes(self.directory) > self.max_bytes
            if full != self._full:
                if not full:
                    log.info("trace spool below its bound again: recording traces")
                self._full = full
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                log.warning("the trace exporter exited (%s); restarting it", code)
                self._start_exporter()

    # erasure -----------------------------------------------------------------------------

    def forget(self, conversation_id: str, before: int, *, wait: float = FORGET_WAIT) -> int | None:
        """Leave a tombstone for the conversation's traces that started before ``before``
        (ns), closing the open segment first so that the exporter may scrub it; then wait
        up to ``wait`` seconds for the exporter to delete them from MLflow: how many it
        deleted, or ``None`` when that is still pending (at once when the exporter finds
        the tracking store down). The tombstone stays until it is done."""
        with self._lock:
            self._rotate()
            stone = tombstones(self.directory).add(conversation_id, before)
            if self._ticker is None:
                self._start()
            else:
                self._start_exporter()
        deadline = time.monotonic() + wait
        while True:
            deleted = tombstones(self.directory).result(stone)
            if deleted is not None:
                return deleted
            if time.monotonic() >= deadline or store_down_file(self.directory).exists():
                return None
            time.sleep(0.02)

    def resume(self) -> None:
        """Start the exporter now if an earlier process left work for it (segments not
        exported, tombstones not applied), rather than at the first trace."""
        with self._lock:
            if self._ticker is None and (self.pending() or tombstones(self.directory).pending()):
                self._start()

    # lifecycle ---------------------------------------------------------------------------

    def pending(self) -> int:
        """Segments not exported yet."""
        return len(segments(self.directory, CLOSED)) + len(segments(self.directory, OPEN))

    def flush(self, timeout: float | None = None) -> bool:
        """Close the open segment and wait until the exporter has exported everything up
        to it (True), or ``timeout`` seconds (False)."""
        with self._lock:
            last = self._path.with_suffix(CLOSED).name if self._path else None
            self._rotate()
        if last is None:
            closed = segments(self.directory, CLOSED)
            if not closed:
                return True
            last = closed[-1].name
        if self.exporter is not None and self._ticker is not None:
            self._start_exporter()
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(p.name <= last for p in segments(self.directory, CLOSED)):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 120.0) -> None:
        """Close the last segment and let the exporter finish: it exports what is left and
        exits (progress is logged while it works)."""
        self._stopping.set()
        with self._lock:
            self._rotate()
        process = self._process
        if process is None or process.poll() is not None:
            if self.pending():
                log.warning(
                    "%d trace segment(s) not exported yet: the next start exports them",
                    self.pending(),
                )
            return
        # A file, not a signal: an exporter still starting has no handler for one yet.
        stop_file(self.directory, os.getpid()).touch(mode=0o600)
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 2.0
        while process.poll() is None:
            now = time.monotonic()
            if now > deadline:
                log.warning(
                    "the trace exporter is still working after %.0fs; it goes on alone", timeout
                )
                return
            if now > next_note:
                left = self.pending()
                if left:
                    log.info("exporting traces to MLflow: %d segment(s) left", left)
                next_note = now + 5.0
            time.sleep(0.05)
