"""Helpers shared by the benchmarks: statistics, tables, progress, fakes for the ports."""

from __future__ import annotations

import math
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AnyMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from pydantic import PrivateAttr

from events.outbound import OutboxPayload, StreamChunk
from events.workflow import RunRef
from workers.agent.offline import OfflineChatModel
from workers.core.ports import ConversationStore

# statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of durations given in seconds, reported in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": float(len(ms)),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "mean": mean(ms),
        "min": min(ms) if ms else math.nan,
        "max": max(ms) if ms else math.nan,
    }


# output -------------------------------------------------------------------------------------


def progress(text: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def render_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(header))
    out = [title, rule, line(header), rule, *(line(r) for r in rows), rule]
    return "\n".join(out)


# fakes for the core's ports -----------------------------------------------------------------


class RecordingStarter:
    """``WorkflowStarter`` that records the runs it is asked to start."""

    def __init__(self) -> None:
        self.runs: list[RunRef] = []

    def start(self, run: RunRef) -> None:
        self.runs.append(run)

    def resume(self, task_token: str) -> None:
        raise RuntimeError("benchmarks run no Standard workflow: no task token to resume")

    def take(self) -> RunRef:
        if len(self.runs) != 1:
            raise RuntimeError(f"expected exactly one started run, got {len(self.runs)}")
        return self.runs.pop()


class DiscardSink:
    """``ReplySink`` that drops everything (counts what it was given)."""

    def __init__(self) -> None:
        self.sent = 0
        self.chunks = 0

    def send(self, payload: OutboxPayload) -> None:
        self.sent += 1

    def send_chunk(self, chunk: StreamChunk) -> None:
        self.chunks += 1


class TimedOfflineChatModel(OfflineChatModel):
    """``OfflineChatModel`` that accumulates the time spent inside its own ``_generate`` and
    ``_stream`` (the latter per produced chunk, so time the consumer spends between chunks is
    not counted as model time)."""

    _elapsed: float = PrivateAttr(default=0.0)
    _calls: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def elapsed(self) -> float:
        return self._elapsed

    @property
    def calls(self) -> int:
        return self._calls

    def _add(self, seconds: float, call: bool) -> None:
        with self._lock:
            self._elapsed += seconds
            self._calls += int(call)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        start = time.perf_counter()
        try:
            return super()._generate(messages, stop, run_manager, **kwargs)
        finally:
            self._add(time.perf_counter() - start, call=True)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        start = time.perf_counter()
        inner = super()._stream(messages, stop, run_manager, **kwargs)
        self._add(time.perf_counter() - start, call=True)
        while True:
            start = time.perf_counter()
            try:
                chunk = next(inner)
            except StopIteration:
                self._add(time.perf_counter() - start, call=False)
                return
            self._add(time.perf_counter() - start, call=False)
            yield chunk


def store_method_names() -> list[str]:
    """The public methods of the ``ConversationStore`` port."""
    return sorted(
        name
        for name in dir(ConversationStore)
        if not name.startswith("_") and callable(getattr(ConversationStore, name))
    )


class CallCounter:
    """Counts calls of the port's methods on one store instance by wrapping them in place
    (instance attributes shadow the class's methods; :meth:`remove` restores them)."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.counts: Counter[str] = Counter()
        self._names = [n for n in store_method_names() if hasattr(store, n)]

    def install(self) -> None:
        for name in self._names:
            setattr(self._store, name, self._wrap(name, getattr(self._store, name)))

    def remove(self) -> None:
        for name in self._names:
            if name in vars(self._store):
                delattr(self._store, name)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        counts = self.counts

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return counted


class StatementCounter:
    """Counts SQL statements run on one ``sqlite3`` connection (its trace callback)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.counts: Counter[str] = Counter()

    def _trace(self, sql: str) -> None:
        head = sql.lstrip().split(None, 1)
        self.counts[head[0].upper() if head else "?"] += 1

    def install(self) -> None:
        self._conn.set_trace_callback(self._trace)

    def remove(self) -> None:
        self._conn.set_trace_callback(None)


# SQLite file measurements -------------------------------------------------------------------


class SqliteMeter:
    """Measures one SQLite database in WAL mode from its own connection.

    ``checkpoint()`` counts the frames in the WAL (``PRAGMA wal_checkpoint(PASSIVE)``), then
    truncates it (``TRUNCATE``): after a previous ``checkpoint()``, the frame count is exactly
    the pages the writers appended since, so ``frames * page_size`` is the bytes they wrote.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wal_path = Path(f"{path}-wal")
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.busy = 0

    def page_size(self) -> int:
        return int(self.conn.execute("PRAGMA page_size").fetchone()[0])

    def wal_file_bytes(self) -> int:
        return self.wal_path.stat().st_size if self.wal_path.exists() else 0

    def checkpoint(self) -> int:
        """Frames found in the WAL; the WAL is empty afterwards."""
        busy, frames, _ = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        truncate_busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy or truncate_busy:
            self.busy += 1
        return max(int(frames), 0)

    def used_bytes(self) -> int:
        """Pages in use (page_count - freelist_count) times the page size."""
        size = self.page_size()
        pages = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * size

    def logical_bytes(self) -> int:
        """Sum of ``length()`` of every column of every row of every table."""
        total = 0
        tables = [
            str(r[0])
            for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            columns = [str(r[1]) for r in self.conn.execute(f'PRAGMA table_info("{table}")')]
            expr = " + ".join(f'coalesce(length("{c}"), 0)' for c in columns) or "0"
            row = self.conn.execute(f'SELECT coalesce(sum({expr}), 0) FROM "{table}"').fetchone()
            total += int(row[0])
        return total

    def file_bytes(self) -> int:
        """Size on disk of the database file plus its WAL (the ``-shm`` index excluded)."""
        main = self.path.stat().st_size if self.path.exists() else 0
        return main + self.wal_file_bytes()

    def close(self) -> None:
        self.conn.close()


class PlainState(TypedDict):
    """The usual LangGraph chat state: the whole history in one ``messages`` channel."""

    messages: Annotated[list[AnyMessage], add_messages]


def plain_chat_graph(checkpointer: Any) -> Any:
    """The baseline agents are compared with: a plain one-node LangGraph chat graph on
    ``checkpointer``, calling the same offline model."""
    model = OfflineChatModel()

    def call_model(state: PlainState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(PlainState)
    builder.add_node("model", call_model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=checkpointer)


def text_of_turn(turn: int) -> str:
    """The same plain user text for both sides of a comparison (no tool calls)."""
    return f"message {turn} about my order"


def human_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"
