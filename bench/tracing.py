"""What tracing costs a user, measured on the real server over real WebSockets.

Side by side in one run, the same load (``conversations`` sockets, each sending
``messages`` messages one after another, the next once the reply frame arrived; the
offline model with no latency) against ``agentworker serve`` with tracing off and with the
defaults (tracing on: spooled, exported by the exporter process):

- turns/s and message -> reply latency (p50/p90) per variant, and on/off as a ratio;
- after a clean shutdown, traces recorded in MLflow against turns run (and how long the
  shutdown waited for the exporter);
- after ``kill -9`` right after the last reply, traces recorded against turns answered:
  the traces lost;
- Lambda: the time ``flush`` takes before the handler returns, a real turn's trace sent to
  a real ``mlflow server`` on loopback, p50 over ``lambda_turns`` turns.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import progress, summary_ms
from tests.functional.server_process import ServerProcess, mlflow_server_process


@dataclass(frozen=True)
class TracingConfig:
    conversations: int = 50
    messages: int = 10
    kill_conversations: int = 20
    kill_messages: int = 5
    lambda_turns: int = 20
    single_messages: int = 50
    """Messages of one socket alone (the latency a user sees on an idle server)."""
    rounds: int = 3
    """Loads per variant, alternated between the two servers."""
    timeout_s: float = 60.0


async def _socket(srv: ServerProcess, cid: str, messages: int, latencies: list[float]) -> int:
    from websockets.asyncio.client import connect

    answered = 0
    async with connect(srv.ws_url, additional_headers=srv.auth, max_size=None) as ws:
        for m in range(messages):
            started = time.perf_counter()
            frame = {"action": "send", "conversation_id": cid, "text": f"message {m} on my order"}
            await ws.send(json.dumps(frame))
            while True:
                kind = json.loads(await ws.recv()).get("type")
                if kind in ("reply", "notice", "error"):
                    break
            latencies.append(time.perf_counter() - started)
            answered += kind == "reply"
    return answered


async def _load(srv: ServerProcess, prefix: str, conversations: int, messages: int) -> Any:
    """All sockets at once, after the server's spool is empty (its exporter, if any, is
    up and idle): turns answered, seconds, latencies."""
    latencies: list[float] = []
    await asyncio.to_thread(_spool_empty, srv.state_dir, 60.0)
    started = time.perf_counter()
    answered = await asyncio.gather(
        *(_socket(srv, f"ws:bench:{prefix}-{i}", messages, latencies) for i in range(conversations))
    )
    return sum(answered), time.perf_counter() - started, latencies


def count_traces(state: Path) -> int:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("agentworker")
    if experiment is None:
        return 0
    return len(
        mlflow.search_traces(
            locations=[experiment.experiment_id], return_type="list", include_spans=False
        )
    )


def _spool_empty(state: Path, timeout: float) -> float:
    """Seconds until the spool holds no trace (at once without tracing)."""
    spool = state / "trace-spool"
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not any(p.suffix in (".open", ".jsonl") for p in spool.glob("*")):
            break
        time.sleep(0.05)
    return time.monotonic() - started


def _variants(tmp: Path, cfg: TracingConfig) -> list[dict[str, Any]]:
    """Both servers up at once, their loads alternated over ``rounds`` (off, on, off, on...):
    a noisy machine slows both alike, and each variant's turns/s is its median round."""
    servers = {
        tracing: ServerProcess(
            tmp / f"tracing-{'on' if tracing else 'off'}",
            env={"AGENTWORKER_TRACING": str(tracing).lower()},
        ).start()
        for tracing in (False, True)
    }
    rounds: dict[bool, list[tuple[int, float, list[float]]]] = {False: [], True: []}
    single: dict[bool, list[float]] = {False: [], True: []}
    sent = dict.fromkeys(servers, 0)
    shutdown: dict[bool, float] = {}
    try:
        for tracing, srv in servers.items():  # the first traces start the exporter
            sent[tracing] += asyncio.run(_socket(srv, "ws:bench:warmup", 2, []))
        for r in range(cfg.rounds):
            for tracing, srv in servers.items():
                name = "on" if tracing else "off"
                progress(
                    f"tracing ({name}, round {r + 1}/{cfg.rounds}): {cfg.conversations} sockets"
                    f" x {cfg.messages} messages"
                )
                for other in servers.values():  # no exporter at work during any load
                    _spool_empty(other.state_dir, 60.0)
                done = asyncio.run(_load(srv, f"{name}{r}", cfg.conversations, cfg.messages))
                rounds[tracing].append(done)
                sent[tracing] += done[0]
        for tracing, srv in servers.items():
            progress(f"tracing: one socket x {cfg.single_messages} messages")
            asyncio.run(asyncio.to_thread(_spool_empty, srv.state_dir, 60.0))
            sent[tracing] += asyncio.run(
                _socket(srv, "ws:bench:one", cfg.single_messages, single[tracing])
            )
    finally:
        for tracing, srv in servers.items():
            stopping = time.perf_counter()
            srv.stop()
            shutdown[tracing] = time.perf_counter() - stopping
    results = []
    for tracing, srv in servers.items():
        rates = sorted(n / elapsed for n, elapsed, _ in rounds[tracing])
        result: dict[str, Any] = {
            "variant": "tracing_on" if tracing else "tracing_off",
            "tracing": tracing,
            "turns": sum(n for n, _, _ in rounds[tracing]),
            "rounds_turns_per_s": rates,
            "turns_per_s": statistics.median(rates),
            "latency_ms": summary_ms([x for _, _, lat in rounds[tracing] for x in lat]),
            "single_latency_ms": summary_ms(single[tracing]),
            "shutdown_s": shutdown[tracing],
        }
        if tracing:
            result["traces_recorded"] = count_traces(srv.state_dir)
            result["turns_total"] = sent[tracing]
        results.append(result)
    return results


def _kill9(tmp: Path, cfg: TracingConfig) -> dict[str, Any]:
    state = tmp / "tracing-kill9"
    srv = ServerProcess(state, env={"AGENTWORKER_TRACING": "true"}).start()
    try:
        progress(f"tracing (kill -9): {cfg.kill_conversations} x {cfg.kill_messages}, then SIGKILL")
        answered, _, _ = asyncio.run(_load(srv, "k9", cfg.kill_conversations, cfg.kill_messages))
    finally:
        srv.kill()
    drained_s = _spool_empty(state, cfg.timeout_s)
    turns = answered
    traces = count_traces(state)
    return {
        "turns": turns,
        "traces_recorded": traces,
        "traces_lost": turns - traces,
        "orphan_exporter_drain_s": drained_s,
    }


def _lambda_flush(tmp: Path, cfg: TracingConfig) -> dict[str, Any]:
    """A real turn per iteration (the offline model through the support graph), traced with
    Lambda's sink and flushed to an ``mlflow server``, as the ``turn`` handler does."""
    import tempfile

    from workers.adapters.clock import SystemClock
    from workers.adapters.local.sqlite_database import SqliteDatabase
    from workers.adapters.local.sqlite_tickets import SqliteTicketStore
    from workers.agent.offline import OfflineChatModel
    from workers.bootstrap import build_agent
    from workers.config import load_settings
    from workers.core.model import TurnInput, TurnRequest
    from workers.core.redaction import Redactor
    from workers.tracing.direct import DirectSink
    from workers.tracing.mlflow_export import MlflowExport
    from workers.tracing.recorder import SpanRecorder

    state = tmp / "tracing-lambda"
    state.mkdir()
    progress(f"tracing (Lambda flush): starting an mlflow server, then {cfg.lambda_turns} turns")
    with mlflow_server_process(state) as url:
        db = SqliteDatabase(Path(tempfile.mkdtemp(dir=state)) / "tickets.db")
        agent = build_agent(
            load_settings(tracing=False), SqliteTicketStore(db), SystemClock(), OfflineChatModel()
        )
        redactor = Redactor()  # as on Lambda: redacted at the flush
        tracer = SpanRecorder(
            DirectSink(lambda: MlflowExport(url, "agentworker", redactor=redactor))
        )
        flushes: list[float] = []
        turns: list[float] = []
        for i in range(cfg.lambda_turns + 1):
            cid, turn = f"sqs:bench-{i}", f"t-{i}"
            tags = {"conversation_id": cid, "run_id": f"r-{i}", "turn_id": turn}
            started = time.perf_counter()
            with tracer.turn("turn", tags=tags, inputs={"texts": ["open a ticket"]}):
                request = TurnRequest(
                    cid, turn, "sqs", [TurnInput("m1", "open a ticket about the printer")],
                    None, None, [], ["m1"],
                )  # fmt: skip
                agent.run_turn(request, on_chunk=None, tracer=tracer)
            turn_s = time.perf_counter() - started
            flushing = time.perf_counter()
            ok = tracer.flush()
            flush_s = time.perf_counter() - flushing
            if i == 0:
                continue  # the first flush connects (the experiment, the client)
            if not ok:
                raise RuntimeError("the Lambda sink could not reach the mlflow server")
            turns.append(turn_s)
            flushes.append(flush_s)
    return {
        "turns": len(flushes),
        "turn_ms": summary_ms(turns),
        "flush_ms": summary_ms(flushes),
        "first_flush_note": "the first turn's flush (connection, experiment) is not counted",
    }


def run(tmp: Path, cfg: TracingConfig) -> dict[str, Any]:
    off, on = _variants(tmp, cfg)
    return {
        "config": {
            "conversations": cfg.conversations,
            "messages": cfg.messages,
            "kill_conversations": cfg.kill_conversations,
            "kill_messages": cfg.kill_messages,
            "lambda_turns": cfg.lambda_turns,
            "rounds": cfg.rounds,
        },
        "variants": [off, on],
        "throughput_ratio_on_off": on["turns_per_s"] / off["turns_per_s"],
        "kill9": _kill9(tmp, cfg),
        "lambda": _lambda_flush(tmp, cfg),
    }


def render(section: dict[str, Any]) -> str:
    from bench.common import fmt, render_table

    cfg = section["config"]
    rows = []
    for v in section["variants"]:
        traces = f"{v['traces_recorded']} of {v['turns_total']}" if "traces_recorded" in v else "-"
        rows.append(
            [
                "tracing on (default)" if v["tracing"] else "tracing off",
                fmt(int(v["turns"])),
                fmt(v["turns_per_s"], 1),
                " / ".join(fmt(x, 0) for x in v["rounds_turns_per_s"]),
                f"{fmt(v['latency_ms']['p50'])} ms",
                f"{fmt(v['latency_ms']['p90'])} ms",
                f"{fmt(v['single_latency_ms']['p50'])} ms",
                f"{fmt(v['shutdown_s'])} s",
                traces,
            ]
        )
    table = render_table(
        f"3. Tracing over the WebSocket of `agentworker serve`: {cfg['conversations']} sockets x "
        f"{cfg['messages']} messages, offline model (no latency), next message after the reply;"
        f" {cfg['rounds']} rounds per variant, alternated, turns/s their median",
        [
            "variant",
            "turns",
            "turns/s",
            "rounds",
            "reply p50",
            "reply p90",
            "alone p50",
            "shutdown",
            "traces/turns",
        ],
        rows,
    )
    kill, lam = section["kill9"], section["lambda"]
    ratio = section["throughput_ratio_on_off"]
    on = section["variants"][1]
    notes = [
        f"  throughput with tracing on = {ratio * 100:.0f} % of off (goal >= 90 %: "
        f"{'met' if ratio >= 0.9 else 'NOT met'}); message -> reply p50 of one socket alone "
        f"with tracing on {fmt(on['single_latency_ms']['p50'])} ms (goal <= 10 ms: "
        f"{'met' if on['single_latency_ms']['p50'] <= 10 else 'NOT met'}); under load "
        f"(all sockets at once) the reply waits its turn: p50 {fmt(on['latency_ms']['p50'])} ms",
        f"  kill -9 right after the last reply ({cfg['kill_conversations']} x "
        f"{cfg['kill_messages']}): {kill['traces_recorded']} traces of {kill['turns']} turns, "
        f"{kill['traces_lost']} lost (the orphaned exporter drained the spool in "
        f"{fmt(kill['orphan_exporter_drain_s'])} s)",
        f"  Lambda: flush before the handler returns, a real turn's trace to an mlflow server "
        f"on loopback: p50 {fmt(lam['flush_ms']['p50'])} ms, p90 {fmt(lam['flush_ms']['p90'])} "
        f"ms over {lam['turns']} turns (the turn itself p50 {fmt(lam['turn_ms']['p50'])} ms)",
        "  shutdown = SIGTERM -> exit, including the exporter finishing the spool",
    ]
    return "\n".join([table, *notes])
