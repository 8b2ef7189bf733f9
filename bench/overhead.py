"""Embedded worker overhead per turn, the model's own time excluded.

Each turn is ``accept_message`` followed by ``drive_run`` for the run the starter received,
with the real ``SqliteConversationStore`` and the real LangGraph agent on a timed
``OfflineChatModel``. Overhead = wall time of the two calls minus the time spent inside the
model's ``_stream``/``_generate``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    CallCounter,
    DiscardSink,
    RecordingStarter,
    StatementCounter,
    TimedOfflineChatModel,
    progress,
    summary_ms,
)
from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from workers.adapters.clock import SystemClock
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.bootstrap import build_agent, turn_settings
from workers.config import load_settings
from workers.core.ports import NullTracer, Tracer
from workers.core.steps import Deps, accept_message, drive_run


@dataclass(frozen=True)
class OverheadConfig:
    turns: int = 300
    warmup: int = 30
    conversations: int = 10
    count_turns: int = 20
    """Turns of the separate (untimed) pass that counts store calls and SQL statements."""
    profile: bool = False


@dataclass
class _Bench:
    deps: Deps
    store: SqliteConversationStore
    model: TimedOfflineChatModel
    starter: RecordingStarter
    sink: DiscardSink
    prefix: str
    sent: int = 0

    def turn(self, conversations: int) -> tuple[float, float]:
        """One user message answered: accept + drive_run. Returns (wall, model) seconds."""
        i = self.sent
        self.sent += 1
        msg = InboundMessage(
            conversation_id=f"{self.prefix}-{i % conversations}",
            text=f"message {i} about my order",
        )
        model_before = self.model.elapsed
        calls_before = self.model.calls
        start = time.perf_counter()
        accept_message(self.deps, msg, LOCAL_USER)
        summary = drive_run(self.deps, self.starter.take())
        wall = time.perf_counter() - start
        model_s = self.model.elapsed - model_before
        if summary.turns != 1 or summary.outcomes != ["replied"]:
            raise RuntimeError(f"unexpected run summary: {summary}")
        if self.model.calls - calls_before != 1:
            raise RuntimeError("expected exactly one model call per turn (no tool calls)")
        return wall, model_s


def _build(tmp: Path, name: str, tracer: Tracer) -> _Bench:
    settings = load_settings(state_dir=tmp, tracing=False)
    store = SqliteConversationStore(tmp / f"overhead-{name}.db")
    clock = SystemClock()
    model = TimedOfflineChatModel()
    agent = build_agent(
        settings, tickets=SqliteTicketStore(store.database), clock=clock, model=model
    )
    starter = RecordingStarter()
    sink = DiscardSink()
    deps = Deps(store, agent, sink, starter, clock, tracer, settings=turn_settings(settings))
    return _Bench(deps, store, model, starter, sink, prefix=f"overhead-{name}")


def _count_round_trips(bench: _Bench, cfg: OverheadConfig) -> dict[str, Any]:
    calls = CallCounter(bench.store)
    # The store keeps one connection per thread; this pass runs on this thread.
    statements = StatementCounter(bench.store._conn())
    calls.install()
    statements.install()
    try:
        for _ in range(cfg.count_turns):
            bench.turn(cfg.conversations)
    finally:
        calls.remove()
        statements.remove()
    n = cfg.count_turns
    return {
        "turns": n,
        "store_calls_per_turn": sum(calls.counts.values()) / n,
        "store_calls_by_method": {k: v / n for k, v in sorted(calls.counts.items())},
        "sql_statements_per_turn": sum(statements.counts.values()) / n,
        "sql_statements_by_verb": {k: v / n for k, v in sorted(statements.counts.items())},
        "write_transactions_per_turn": statements.counts.get("BEGIN", 0) / n,
    }


def _profile(bench: _Bench, cfg: OverheadConfig, label: str) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(min(cfg.turns, 100)):
        bench.turn(cfg.conversations)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(30)
    progress(f"overhead ({label}): cProfile of {min(cfg.turns, 100)} turns done")
    return out.getvalue()


def run_variant(
    tmp: Path,
    name: str,
    label: str,
    cfg: OverheadConfig,
    make_tracer: Callable[[Path], Tracer],
) -> dict[str, Any]:
    setup_start = time.perf_counter()
    tracer = make_tracer(tmp)
    setup_s = time.perf_counter() - setup_start
    bench = _build(tmp, name, tracer)
    progress(f"overhead ({label}): warm-up {cfg.warmup} turns")
    for _ in range(cfg.warmup):
        bench.turn(cfg.conversations)
    tracer.flush()  # the warm-up's traces are not part of the final flush
    walls: list[float] = []
    models: list[float] = []
    overheads: list[float] = []
    loop_start = time.perf_counter()
    step = max(1, cfg.turns // 4)
    for i in range(cfg.turns):
        wall, model_s = bench.turn(cfg.conversations)
        walls.append(wall)
        models.append(model_s)
        overheads.append(wall - model_s)
        if (i + 1) % step == 0 and i + 1 < cfg.turns:
            progress(f"overhead ({label}): {i + 1}/{cfg.turns} turns")
    loop_s = time.perf_counter() - loop_start
    flush_start = time.perf_counter()
    tracer.flush()
    flush_s = time.perf_counter() - flush_start
    result: dict[str, Any] = {
        "variant": name,
        "label": label,
        "turns": cfg.turns,
        "warmup_turns": cfg.warmup,
        "conversations": cfg.conversations,
        "tracer_setup_s": setup_s,
        "measured_loop_s": loop_s,
        "flush_s": flush_s,
        "wall_ms": summary_ms(walls),
        "model_ms": summary_ms(models),
        "overhead_ms": summary_ms(overheads),
        # Export runs in the exporter process: the loop's wall time plus the wait for the
        # exporter to catch up, minus the model's time, per turn (the cost if a turn had to
        # wait for its trace, which none does).
        "overhead_incl_flush_mean_ms": (loop_s + flush_s - sum(models)) / cfg.turns * 1000.0,
        "samples_overhead_ms": [round(s * 1000.0, 4) for s in overheads],
        "samples_model_ms": [round(s * 1000.0, 4) for s in models],
        "chunks_streamed": bench.sink.chunks,
        "payloads_delivered": bench.sink.sent,
    }
    progress(f"overhead ({label}): counting store calls over {cfg.count_turns} turns")
    result["round_trips"] = _count_round_trips(bench, cfg)
    if cfg.profile:
        result["profile"] = _profile(bench, cfg, label)
    tracer.close()
    if not isinstance(tracer, NullTracer):
        result["traces_recorded"] = _count_traces(tmp / "state", bench.sent)
        result["turns_total"] = bench.sent
    bench.store.close()
    return result


def _count_traces(state_dir: Path, expected: int) -> int | None:
    """Traces in the experiment (a sanity check that tracing really recorded the turns)."""
    try:
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{state_dir / 'mlflow.db'}")
        experiment = mlflow.get_experiment_by_name("bench")
        if experiment is None:
            return 0
        found = mlflow.search_traces(
            locations=[experiment.experiment_id],
            max_results=expected + 100,
            return_type="list",
            include_spans=False,
        )
        return len(found)
    except Exception as exc:
        progress(f"overhead: could not count traces: {exc}")
        return None


def null_tracer(tmp: Path) -> Tracer:
    return NullTracer()


def mlflow_tracer(tmp: Path) -> Tracer:
    """What a user gets by default: spans recorded through the redaction hook, spooled, and
    exported into MLflow (SQLite) by the exporter process."""
    from workers.bootstrap import build_tracer, redaction

    settings = load_settings(state_dir=tmp / "state", tracing=True, mlflow_experiment="bench")
    return redaction(settings, build_tracer(settings), spans=False)  # as serve builds it


def run(tmp: Path, cfg: OverheadConfig) -> dict[str, Any]:
    off_dir = tmp / "overhead-off"
    on_dir = tmp / "overhead-on"
    off_dir.mkdir()
    on_dir.mkdir()
    return {
        "config": {
            "turns": cfg.turns,
            "warmup": cfg.warmup,
            "conversations": cfg.conversations,
            "count_turns": cfg.count_turns,
        },
        "variants": [
            run_variant(off_dir, "tracing_off", "tracing off (NullTracer)", cfg, null_tracer),
            run_variant(
                on_dir,
                "tracing_on",
                "tracing on (default: spooled, exporter process)",
                cfg,
                mlflow_tracer,
            ),
        ],
    }
