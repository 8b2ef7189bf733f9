"""``SqliteDatabase``: one SQLite file (WAL) and its connections, shared by the stores kept in
it (the conversation store and the ticket store of the embedded runtime).

One connection per thread, opened on the thread's first use. Every write that must be atomic
runs in :meth:`SqliteDatabase.transaction` (``BEGIN IMMEDIATE``): it takes the file's write
lock before its first read, so what the transaction read cannot change before it commits, and
the stores' conditional writes (dedupe, lease, fencing, idempotency) are single transactions
like their DynamoDB counterparts (``TransactWriteItems`` with conditions).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workers.statedir import private_dir, private_file

log = logging.getLogger(__name__)


class SqliteDatabase:
    """The connections to one SQLite file (created with its folder if missing); each store
    on it creates its own tables. Safe to share between threads: each thread gets its own
    connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        private_dir(path.parent, tighten=False)
        private_file(path)  # before SQLite creates it (0644), and its -wal and -shm alike

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode: a read outside a transaction sees
        what was last committed."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            # What a delete or an update frees is zeroed, not left in the file's free space:
            # an erased conversation's text must not be readable from the file afterwards.
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside ``BEGIN IMMEDIATE``: committed when the block
        ends, rolled back when it raises. Transactions do not nest."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and empty it (what was deleted is
        then gone from both files); ``False`` when a reader kept it from finishing (the
        next checkpoint, SQLite's own or the next call's, finishes it)."""
        busy, _, _ = self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("%s: the write-ahead log is in use; checkpointed later", self.path)
        return not busy

    def close(self) -> None:
        """Close every thread's connection (for every store on this file); a later use
        opens a new one."""
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
