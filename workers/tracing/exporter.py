"""The trace exporter process: ``python -m workers.tracing.exporter --spool DIR ...``.

Started by the embedded server (:class:`workers.tracing.spool.SpoolSink`), in Linux's idle
scheduling class, in its own session. While the server is busy it holds back (for
``MAX_LAG`` seconds at most): exporting alongside the turns took a core from the server's
threads and a quarter of its throughput on two cores. It exports the spool's closed
segments into MLflow in batches, oldest first, and deletes each once it is in. It exits
when told to (the stop file its server leaves, or SIGTERM) or when the server is gone
(``kill -9``), after exporting everything left, including the open segment of a server
that died. One exporter per spool at a time (a lock file): a new server's exporter waits
for an orphan still at work.

A tracking store that is down: the segments stay and the exporter tries again with
backoff (the server bounds the spool's size and drops new traces past it).

Erased conversations (:mod:`.tombstones`): their traces are scrubbed from the segments at
once, store or no store, never exported, and deleted from MLflow once it answers. The
exporter creates its files for its owner alone (``umask 077``): MLflow's SQLite database,
its journal, the artifacts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from workers.statedir import private_dir, private_file
from workers.tracing.spool import (
    CLOSED,
    OPEN,
    TRACKING_URI_ENV,
    encode,
    segments,
    stop_file,
    store_down_file,
    tombstones,
)
from workers.tracing.tombstones import erased_record

log = logging.getLogger("agentworker.exporter")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = 0.3
"""Seconds without a new trace that make the server idle enough to export."""
MAX_LAG = 10.0
"""Seconds a trace waits at most for the server to be idle; then it is exported anyway."""
ERASED = {"kind": "erased"}
"""What a scrubbed record becomes: its line stays, so a segment's line numbers do not move
under an export that resumes in the middle of it."""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return -1


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of a segment as records, and how many lines were unreadable
    (a torn last line of a writer that died mid-write is not one of them: it is skipped)."""
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    bad = 0
    end = data.rfind(b"\n")
    for number, line in enumerate(data[: end + 1].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            log.warning("%s line %d: not a trace record, skipped", path.name, number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


class Exporter:
    """Drains a spool into MLflow."""

    def __init__(
        self,
        spool: Path,
        export: Any,
        *,
        parent: int,
        connect: Callable[[], Any] | None = None,
        tracking_db: Path | None = None,
    ) -> None:
        """``export``: the store (or ``None`` and ``connect``, which opens it when first
        needed: a store that is down does not hold up the scrubbing of erased traces).
        ``tracking_db``: MLflow's SQLite file, checkpointed after deletions."""
        self.spool = spool
        self.export = export
        self.connect = connect
        self.parent = parent
        self.tracking_db = tracking_db
        self.told = False
        """SIGTERM received."""
        self.exported = 0
        self.feedback = 0
        self.skipped = 0
        self.erased = 0
        """Records of erased conversations, scrubbed or dropped."""
        self.tombstones = tombstones(spool)
        self._erased: dict[str, int] = {}
        self._version = 0
        self._scrubbed: dict[str, dict[str, int]] = {}
        """Per segment, the erasures it was last scrubbed for."""
        self._done: dict[str, int] = {}
        """Per segment, the records already exported (a retry starts after them)."""

    @property
    def stopping(self) -> bool:
        """Told to finish: SIGTERM, or the stop file its server leaves (no signal can
        arrive before the handler is in place)."""
        return self.told or stop_file(self.spool, self.parent).exists()

    def ready(self) -> list[Path]:
        """Closed segments, and open ones whose writer is gone, oldest first."""
        found = segments(self.spool, CLOSED)
        found += [p for p in segments(self.spool, OPEN) if not _alive(_writer_pid(p))]
        return sorted(found, key=lambda p: p.name)

    def scrub(self) -> None:
        """Replace, in every segment ready for export, the records of conversations erased
        after they started (see :mod:`.tombstones`): their text leaves the disk now, not
        when the tracking store answers again."""
        version = self.tombstones.version()
        if version != self._version:
            self._version, self._erased = version, self.tombstones.erased()
        if not self._erased:
            return
        for path in self.ready():
            if self._scrubbed.get(path.name) != self._erased:
                self._scrub_one(path)
                self._scrubbed[path.name] = self._erased

    def _scrub_one(self, path: Path) -> None:
        try:
            lines = path.read_bytes().splitlines(keepends=True)
        except FileNotFoundError:
            return
        changed = False
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line, or garbage: read_records skips it
            if isinstance(record, dict) and erased_record(record, self._erased):
                lines[number] = encode(ERASED)
                changed = True
                self.erased += 1
        if changed:  # rewritten whole, then renamed over: a reader sees one or the other
            partial = path.with_name(path.name + ".scrub")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(b"".join(lines))
            partial.replace(path)

    def apply_tombstones(self) -> None:
        """Delete from MLflow the traces of the conversations erased since the last call
        (``StoreUnavailable``: they stay pending), then drop the old done tombstones."""
        pending = self.tombstones.pending()
        for stone in pending:
            deleted = self.store().forget(stone.conversation_id, stone.before)
            self.tombstones.done(stone, deleted)
            log.debug("erased %d trace(s) of an erased conversation", deleted)
        if pending:
            self._checkpoint()
            self.tombstones.prune()

    def _checkpoint(self) -> None:
        """Move MLflow's SQLite journal into the database file and empty it: the deleted
        spans leave the disk (the database zeroes what it frees, ``secure_delete``)."""
        if self.tracking_db is None or not self.tracking_db.exists():
            return
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.tracking_db, timeout=30)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def store(self) -> Any:
        """The tracking store, opened at the first use (``StoreUnavailable`` if it is down)."""
        if self.export is None:
            if self.connect is None:
                raise RuntimeError("an exporter needs an export or a way to open one")
            self.export = self.connect()
        return self.export

    def drain_one(self, path: Path) -> None:
        """Export one segment and delete it (``StoreUnavailable`` leaves it, and what of it
        is exported already is remembered, for a retry)."""
        records, bad = read_records(path)
        if path.name not in self._done:
            self.skipped += bad
        start = self._done.get(path.name, 0)
        traces: list[dict[str, Any]] = []
        for index in range(start, len(records)):
            record = records[index]
            if record.get("kind") == "erased" or erased_record(record, self._erased):
                continue  # counted when scrubbed
            if record.get("kind") == "trace":
                traces.append(record)
                continue
            self._traces(path, traces, index)
            traces = []
            if record.get("kind") == "feedback":
                self.store().feedback(record)
                self.feedback += 1
            else:
                self.skipped += 1
            self._done[path.name] = index + 1
        self._traces(path, traces, len(records))
        path.unlink(missing_ok=True)
        self._done.pop(path.name, None)
        self._scrubbed.pop(path.name, None)

    def _traces(self, path: Path, traces: list[dict[str, Any]], upto: int) -> None:
        if traces:
            self.exported += self.store().traces(traces)
        self._done[path.name] = upto

    def run(self) -> int:
        from workers.tracing.mlflow_export import StoreUnavailable

        backoff = 0.5
        while True:
            self.scrub()
            ready = self.ready()
            erasing = bool(self.tombstones.pending())
            if not ready and not erasing:
                if self.stopping or not _alive(self.parent):
                    return 0
                time.sleep(0.1)
                continue
            if ready and not erasing and self.busy(ready):
                time.sleep(0.1)
                continue
            try:
                for path in ready:
                    self.drain_one(path)
                self.apply_tombstones()  # never held back: an erasure waits for it
                store_down_file(self.spool).unlink(missing_ok=True)
                backoff = 0.5
            except StoreUnavailable as exc:
                private_file(store_down_file(self.spool))  # erasures need not wait for it
                if self.give_up():
                    log.warning(
                        "tracking store unavailable (%s); %d segment(s) and %d erasure(s) left"
                        " for the next start",
                        exc,
                        len(self.ready()),
                        len(self.tombstones.pending()),
                    )
                    return 1
                log.warning("tracking store unavailable (%s); trying again in %.1fs", exc, backoff)
                self.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def busy(self, ready: list[Path]) -> bool:
        """Whether to let the server have the machine for now: it wrote a trace in the last
        ``QUIET`` seconds and the oldest waiting trace is younger than ``MAX_LAG`` (on a
        busy server the export runs in the gaps, at most ``MAX_LAG`` behind). Never once
        the server stopped or died."""
        if self.stopping or not _alive(self.parent):
            return False
        now = time.time()
        try:
            oldest = min(p.stat().st_mtime for p in ready)
            newest = max((p.stat().st_mtime for p in segments(self.spool, OPEN)), default=oldest)
        except FileNotFoundError:
            return False
        return now - max(newest, oldest) < QUIET and now - oldest < MAX_LAG

    def wait(self, seconds: float) -> None:
        """Sleep, but wake up when told to stop or when a conversation is erased."""
        deadline = time.monotonic() + seconds
        version = self.tombstones.version()
        while not self.stopping and time.monotonic() < deadline:
            if self.tombstones.version() != version:
                return
            time.sleep(0.05)

    def give_up(self) -> bool:
        """While the store is down: stop trying once the server stopped or died (what is
        left stays in the spool for the next start), never while it runs."""
        return self.stopping or not _alive(self.parent)


def _yield_cpu() -> None:
    """Run only on CPU time nobody else wants (Linux's idle class; elsewhere the lowest
    priority): under load the turns get the cores and the export catches up after."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError):
        os.nice(19)


def _light_sqlite() -> None:
    """MLflow's SQLite store in WAL with ``synchronous=NORMAL`` in this process (as the
    conversation store is): its default rollback journal fsyncs several times a transaction,
    and those fsyncs made the server's own commits wait on the disk."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def pragmas(connection: Any, record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA secure_delete=ON")  # a deleted trace's text is zeroed
            cursor.close()

    event.listen(Engine, "connect", pragmas)


def _lock(spool: Path) -> IO[str]:
    private_dir(spool)
    handle = private_file(spool / "exporter.lock").open("a+")
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tracing.exporter")
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get(TRACKING_URI_ENV),
        help=f"default: ${TRACKING_URI_ENV} (how the server passes it: not in argv)",
    )
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--parent", type=int, default=os.getppid())
    parser.add_argument("--no-redaction", action="store_true", help="write spans as recorded")
    parser.add_argument("--redact-pattern", action="append", default=[], help="one more mask")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error(f"--tracking-uri or ${TRACKING_URI_ENV} is required")
    os.umask(0o077)  # what MLflow creates here (its database, journal, artifacts): ours alone
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    _yield_cpu()
    stop: list[Exporter] = []

    def on_signal(signum: int, frame: object) -> None:
        for exporter in stop:
            exporter.told = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lock = _lock(args.spool)
    store_down_file(args.spool).unlink(missing_ok=True)  # an earlier exporter's finding
    from workers.core.redaction import Redactor
    from workers.tracing.mlflow_export import MlflowExport

    redactor = None if args.no_redaction else Redactor(args.redact_pattern)
    tracking_db = None
    if args.tracking_uri.startswith("sqlite:///"):
        _light_sqlite()
        tracking_db = Path(args.tracking_uri.removeprefix("sqlite:///"))
        if tracking_db.exists():
            private_file(tracking_db)  # an earlier version left it readable by others
    from workers.observability import install_redaction

    install_redaction(redactor)  # its own log lines too (MLflow's errors may quote a value)

    def connect() -> MlflowExport:
        return MlflowExport(
            args.tracking_uri, args.experiment, artifact_dir=args.artifacts, redactor=redactor
        )

    exporter = Exporter(
        args.spool, None, parent=args.parent, connect=connect, tracking_db=tracking_db
    )
    stop.append(exporter)
    try:
        return exporter.run()
    finally:
        stop_file(args.spool, args.parent).unlink(missing_ok=True)
        done = (exporter.exported, exporter.feedback, exporter.erased)
        log.debug("trace export done: %d trace(s), %d feedback, %d erased", *done)
        dropped = exporter.export.dropped if exporter.export is not None else 0
        if exporter.skipped or dropped:
            log.warning(
                "trace export: %d record(s) unreadable, %d refused by MLflow",
                exporter.skipped,
                dropped,
            )
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
