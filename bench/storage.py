"""Bytes written to SQLite per turn as a conversation grows: ours vs plain ``SqliteSaver``.

Both sides run the same plain-text turns ("message 17 about my order": no tool calls) on
the same ``OfflineChatModel``, each on its own SQLite file in WAL mode with
``synchronous=NORMAL``:

* ours: one conversation driven through the core (``accept_message`` + ``drive_run``) with
  the real ``SqliteConversationStore`` and agent (streaming off, tracing off);
* baseline: a standard ``StateGraph`` (``messages: Annotated[list, add_messages]``, one model
  node) compiled with ``langgraph.checkpoint.sqlite.SqliteSaver``, invoked with the same
  ``thread_id`` and the new ``HumanMessage`` each turn.

Around each sample point (the ``window`` turns ending at it) the WAL is truncated by a
checkpoint before the turn and checkpointed again after it, and two metrics are taken from
a separate connection, identically for both sides:

* WAL bytes: frames appended to the WAL by the turn x page size (what the turn wrote);
* logical growth: growth of the sum of ``length()`` of every column of every row;
* used-size growth: ``(page_count - freelist_count) * page_size`` after minus before (what
  the database retains, at page granularity).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver

from bench.common import (
    DiscardSink,
    RecordingStarter,
    SqliteMeter,
    mean,
    plain_chat_graph,
    progress,
    text_of_turn,
)
from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from workers.adapters.clock import SystemClock
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.agent.offline import OfflineChatModel
from workers.bootstrap import build_agent, turn_settings
from workers.config import load_settings
from workers.core.ports import NullTracer
from workers.core.steps import Deps, accept_message, drive_run


@dataclass(frozen=True)
class StorageConfig:
    points: tuple[int, ...] = (10, 100, 1000)
    window: int = 10
    baseline_budget_s: float = 180.0
    """The baseline stops early (and says so) once it has run this long."""


@dataclass
class Side:
    name: str
    label: str
    path: Path
    do_turn: Callable[[int], None]
    close: Callable[[], None]
    last_checkpoint_bytes: Callable[[], int | None]


def _ours(tmp: Path) -> Side:
    settings = load_settings(state_dir=tmp, tracing=False)
    path = tmp / "ours.db"
    store = SqliteConversationStore(path)
    clock = SystemClock()
    agent = build_agent(
        settings, tickets=SqliteTicketStore(store.database), clock=clock, model=OfflineChatModel()
    )
    starter = RecordingStarter()
    deps = Deps(
        store,
        agent,
        DiscardSink(),
        starter,
        clock,
        NullTracer(),
        settings=dataclasses.replace(turn_settings(settings), stream=False),
    )
    cid = "storage-ours"

    def do_turn(turn: int) -> None:
        accept_message(
            deps, InboundMessage(conversation_id=cid, text=text_of_turn(turn)), LOCAL_USER
        )
        summary = drive_run(deps, starter.take())
        if summary.outcomes != ["replied"]:
            raise RuntimeError(f"unexpected run summary: {summary}")

    def last_checkpoint() -> int | None:
        blob = store.load_checkpoint(cid)
        return None if blob is None else len(blob)

    return Side(
        "ours",
        "ours: core + SqliteConversationStore",
        path,
        do_turn,
        store.close,
        last_checkpoint,
    )


def _baseline(tmp: Path) -> Side:
    path = tmp / "plain-sqlitesaver.db"
    conn = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()  # sets journal_mode=WAL
    conn.execute("PRAGMA synchronous=NORMAL")  # as the store's connections
    graph = plain_chat_graph(saver)
    config: Any = {"configurable": {"thread_id": "storage-plain"}}

    def do_turn(turn: int) -> None:
        graph.invoke({"messages": [HumanMessage(text_of_turn(turn))]}, config)

    def last_checkpoint() -> int | None:
        row = conn.execute(
            "SELECT length(checkpoint) FROM checkpoints ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        return None if row is None else int(row[0])

    return Side(
        "plain",
        "plain LangGraph SqliteSaver",
        path,
        do_turn,
        conn.close,
        last_checkpoint,
    )


def run_side(
    side: Side, cfg: StorageConfig, budget_s: float | None, *, section: str = "storage"
) -> dict[str, Any]:
    last = max(cfg.points)
    sampled = {t: p for p in cfg.points for t in range(max(1, p - cfg.window + 1), p + 1)}
    meter = SqliteMeter(side.path)
    page_size = meter.page_size()
    latencies: list[float] = []
    samples: list[dict[str, Any]] = []
    stopped_at: int | None = None
    start = time.perf_counter()
    step = max(1, last // 10)
    for turn in range(1, last + 1):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            stopped_at = turn - 1
            progress(
                f"{section} ({side.name}): time budget {budget_s:.0f} s spent at turn "
                f"{stopped_at}; stopping"
            )
            break
        point = sampled.get(turn)
        if point is None:
            t0 = time.perf_counter()
            side.do_turn(turn)
            latencies.append(time.perf_counter() - t0)
        else:
            meter.checkpoint()
            used_before = meter.used_bytes()
            logical_before = meter.logical_bytes()
            t0 = time.perf_counter()
            side.do_turn(turn)
            elapsed = time.perf_counter() - t0
            latencies.append(elapsed)
            wal_file = meter.wal_file_bytes()
            frames = meter.checkpoint()
            samples.append(
                {
                    "turn": turn,
                    "point": point,
                    "latency_ms": elapsed * 1000.0,
                    "wal_frames": frames,
                    "wal_bytes": frames * page_size,
                    "wal_file_bytes": wal_file,
                    "used_growth_bytes": meter.used_bytes() - used_before,
                    "logical_growth_bytes": meter.logical_bytes() - logical_before,
                }
            )
        if turn % step == 0 and turn < last:
            progress(
                f"{section} ({side.name}): {turn}/{last} turns"
                f" ({time.perf_counter() - start:.1f} s)"
            )
    total_s = time.perf_counter() - start
    turns_done = stopped_at if stopped_at is not None else last
    meter.checkpoint()
    result: dict[str, Any] = {
        "side": side.name,
        "label": side.label,
        "turns": turns_done,
        "stopped_early": stopped_at is not None,
        "total_s": total_s,
        "page_size": page_size,
        "final_used_bytes": meter.used_bytes(),
        "final_logical_bytes": meter.logical_bytes(),
        "final_file_bytes": meter.file_bytes(),
        "last_checkpoint_blob_bytes": side.last_checkpoint_bytes(),
        "checkpoint_busy": meter.busy,
        "points": _by_point(samples, cfg, latencies),
        "samples": samples,
        "latency_ms_per_turn": [round(s * 1000.0, 4) for s in latencies],
    }
    meter.close()
    side.close()
    return result


def _by_point(
    samples: list[dict[str, Any]], cfg: StorageConfig, latencies: list[float]
) -> list[dict[str, Any]]:
    """Per sample point: the bytes of its measured turns, and the median latency of the
    ``max(window, point // 10)`` turns ending at it (unmeasured turns included: the
    checkpoints around a measured turn perturb its latency a little)."""
    out: list[dict[str, Any]] = []
    for p in cfg.points:
        rows = [s for s in samples if s["point"] == p]
        if not rows:
            out.append({"point": p, "measured_turns": 0})
            continue
        span = max(cfg.window, p // 10)
        window_ms = [t * 1000.0 for t in latencies[max(0, p - span) : p]]
        out.append(
            {
                "point": p,
                "measured_turns": len(rows),
                "turns": [rows[0]["turn"], rows[-1]["turn"]],
                "wal_bytes_per_turn": mean([float(r["wal_bytes"]) for r in rows]),
                "used_growth_bytes_per_turn": mean([float(r["used_growth_bytes"]) for r in rows]),
                "logical_growth_bytes_per_turn": mean(
                    [float(r["logical_growth_bytes"]) for r in rows]
                ),
                "latency_turns": [max(1, p - span + 1), p],
                "latency_ms_p50": statistics.median(window_ms),
                "latency_ms_mean": mean(window_ms),
                "measured_turns_latency_ms_p50": statistics.median(r["latency_ms"] for r in rows),
            }
        )
    return out


def run(tmp: Path, cfg: StorageConfig) -> dict[str, Any]:
    ours_dir = tmp / "storage-ours"
    plain_dir = tmp / "storage-plain"
    ours_dir.mkdir()
    plain_dir.mkdir()
    progress(f"storage (ours): {max(cfg.points)} turns, sampling {list(cfg.points)}")
    ours = run_side(_ours(ours_dir), cfg, None)
    progress(f"storage (ours): done in {ours['total_s']:.1f} s")
    progress(
        f"storage (plain): {max(cfg.points)} turns, sampling {list(cfg.points)}, "
        f"budget {cfg.baseline_budget_s:.0f} s"
    )
    plain = run_side(_baseline(plain_dir), cfg, cfg.baseline_budget_s)
    progress(f"storage (plain): done in {plain['total_s']:.1f} s")
    return {
        "config": {
            "points": list(cfg.points),
            "window": cfg.window,
            "baseline_budget_s": cfg.baseline_budget_s,
            "metrics": {
                "wal_bytes": "WAL frames appended by the turn x page size (WAL truncated "
                "by a checkpoint before the turn)",
                "logical_growth_bytes": "growth of sum(length(column)) over every column of "
                "every row of every table",
                "used_growth_bytes": "(page_count - freelist_count) * page_size after the "
                "turn minus before (both after a TRUNCATE checkpoint)",
            },
        },
        "sides": [ours, plain],
    }
