"""The embedded runtime's long-term memory: LangGraph's own ``SqliteStore`` on a file of the
state directory (``memory.sqlite``), which graphs see scoped per customer
(:class:`~workers.agent.store.TurnScopedStore`).

One connection, opened with ``check_same_thread=False`` and used under the store's own lock
(every ``SqliteStore`` operation holds it), so the worker threads share it safely; its
migrations run once, when it is opened. The file is created 0600 before SQLite opens it
(``workers.statedir``), which covers its ``-wal`` and ``-shm`` files too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from langchain_core.runnables.config import run_in_executor
from langgraph.store.base import Op, Result, SearchOp
from langgraph.store.sqlite import SqliteStore
from langgraph.store.sqlite.base import SqliteIndexConfig

from workers.agent.store import warn_unranked_once
from workers.config import Settings
from workers.errors import ConfigError
from workers.statedir import private_dir, private_file

__all__ = [
    "MEMORY_FILE",
    "SqliteMemoryStore",
    "open_local_store",
    "store_index",
    "vector_search_available",
]

MEMORY_FILE = "memory.sqlite"
"""The store's file in the state directory."""

_BUSY_TIMEOUT_MS = 5_000


class SqliteMemoryStore(SqliteStore):
    """``SqliteStore`` with two differences: ``abatch`` runs the batch in a worker thread
    (``SqliteStore`` has no async path, and a graph driven with ``astream`` calls it), and a
    search by ``query`` without a vector index is answered as LangGraph's stores answer it
    (a listing, unranked), with one warning in the log naming the settings that rank it."""

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        if not self.index_config and any(isinstance(o, SearchOp) and o.query for o in ops):
            warn_unranked_once()
        return super().batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await run_in_executor(None, self.batch, list(ops))


def vector_search_available() -> bool:
    """Whether this Python's ``sqlite3`` can load extensions (sqlite-vec): some builds
    leave ``enable_load_extension`` out."""
    return hasattr(sqlite3.Connection, "enable_load_extension")


def store_index(settings: Settings) -> SqliteIndexConfig | None:
    """The vector index the settings configure (``store_index_dims`` and
    ``store_index_embed``, both or neither: ``ConfigError`` otherwise), else ``None``."""
    dims, embed = settings.store_index_dims, settings.store_index_embed
    if dims is None and embed is None:
        return None
    if dims is None or embed is None:
        missing = "store_index_dims" if dims is None else "store_index_embed"
        raise ConfigError(f"{missing}: not set; vector search needs both store_index_* settings")
    return SqliteIndexConfig(dims=dims, embed=embed)


def open_local_store(state_dir: Path, index: SqliteIndexConfig | None = None) -> SqliteMemoryStore:
    """The store on ``state_dir``/``memory.sqlite`` (created owner-only, migrated), with
    vector search when ``index`` is given (its embeddings are loaded now: a bad model name
    fails at start). Close it with ``store.conn.close()`` when the process is done with it."""
    if index is not None and not vector_search_available():
        raise ConfigError(
            "store_index_dims/store_index_embed: vector search needs SQLite extensions"
            " (sqlite-vec), and this Python's sqlite3 cannot load them; unset both settings"
            " or run a Python built with loadable SQLite extensions"
        )
    path = private_file(private_dir(state_dir) / MEMORY_FILE)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        store = SqliteMemoryStore(conn, index=index)
        store.setup()
    except BaseException:
        conn.close()
        raise
    return store
