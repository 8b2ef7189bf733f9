"""``agentworker serve`` beside LangGraph's ``langgraph dev``: the same graph, the same client.

Both servers serve ``approval`` of one ``langgraph.json``
(``tests/langgraph_apps/approval_agent.py``: a plain LangGraph app whose deterministic model
answers "hello ..." with one streamed reply, no tool), on loopback, and are driven by the
same sync ``langgraph-sdk`` client. ``langgraph dev`` runs from its own venv
(``.venv-langgraph``, pinned in ``bench/langgraph-dev-requirements.txt``), offline, with
``--n-jobs-per-worker`` set to agentworker's ``--workers`` so both run as many runs at once
(``langgraph dev`` runs one unless told). agentworker runs with its defaults (tracing on:
every run's trace spooled and exported to MLflow) and with tracing off. For each server:

- ``runs.wait`` latency, one run at a time, each on a thread of its own (made beforehand);
- ``runs.stream`` (``values`` and ``messages-tuple``): time to the first event, to the first
  piece of the reply, and to the end;
- throughput: ``threads`` threads at once, each ``runs_per_thread`` runs one after
  another (``runs.wait``; a client per thread), wall time and runs/s;

then each agentworker variant over ``langgraph dev`` as a ratio (below 1: agentworker takes
less time; for runs/s above 1: agentworker does more).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import fmt, percentile, progress, render_table, summary_ms
from tests.functional.agent_servers import (
    LANGGRAPH_DEV,
    LangGraphDevProcess,
    agentworker_serving,
    write_project,
)
from tests.functional.server_process import DEV_TOKEN

GRAPH = "approval"


@dataclass(frozen=True)
class LangGraphDevConfig:
    wait_runs: int = 50
    stream_runs: int = 20
    threads: int = 50
    runs_per_thread: int = 10
    workers: int = 4
    """Runs at once on every server: agentworker's ``--workers`` (its default, 4) and
    ``langgraph dev``'s ``--n-jobs-per-worker``."""
    warmup: int = 3


@dataclass(frozen=True)
class _Server:
    label: str
    url: str
    api_key: str | None

    def client(self) -> Any:
        from langgraph_sdk import get_sync_client

        return get_sync_client(url=self.url, api_key=self.api_key)


def _user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _checked(values: dict[str, Any], text: str) -> None:
    reply = values["messages"][-1]
    if reply.get("content") != f"You said: {text}":
        raise RuntimeError(f"unexpected answer: {values}")


def _wait_latencies(server: _Server, runs: int) -> list[float]:
    sdk = server.client()
    threads = [sdk.threads.create()["thread_id"] for _ in range(runs)]
    took = []
    for i, tid in enumerate(threads):
        text = f"hello number {i}"
        started = time.perf_counter()
        values = sdk.runs.wait(tid, GRAPH, input=_user(text))
        took.append(time.perf_counter() - started)
        _checked(values, text)
    return took


def _stream_times(server: _Server, runs: int) -> dict[str, list[float]]:
    sdk = server.client()
    threads = [sdk.threads.create()["thread_id"] for _ in range(runs)]
    times: dict[str, list[float]] = {"first_event": [], "first_piece": [], "total": []}
    for i, tid in enumerate(threads):
        text = f"hello streamer {i}"
        first_event = first_piece = None
        last: dict[str, Any] = {}
        started = time.perf_counter()
        for part in sdk.runs.stream(
            tid, GRAPH, input=_user(text), stream_mode=["values", "messages-tuple"]
        ):
            now = time.perf_counter() - started
            first_event = now if first_event is None else first_event
            if part.event == "messages" and first_piece is None:
                first_piece = now
            if part.event == "values":
                last = part.data
        total = time.perf_counter() - started
        _checked(last, text)
        if first_event is None or first_piece is None:
            raise RuntimeError(f"{server.label}: a stream without a reply piece")
        times["first_event"].append(first_event)
        times["first_piece"].append(first_piece)
        times["total"].append(total)
    return times


def _throughput(server: _Server, threads: int, runs: int) -> dict[str, Any]:
    def one_thread(n: int) -> list[float]:
        sdk = server.client()
        tid = sdk.threads.create()["thread_id"]
        took = []
        for m in range(runs):
            text = f"hello from thread {n}, run {m}"
            started = time.perf_counter()
            values = sdk.runs.wait(tid, GRAPH, input=_user(text))
            took.append(time.perf_counter() - started)
            _checked(values, text)
        return took

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        latencies = [t for took in pool.map(one_thread, range(threads)) for t in took]
    wall = time.perf_counter() - started
    return {
        "runs": len(latencies),
        "wall_s": wall,
        "runs_per_s": len(latencies) / wall,
        "latency_ms": _ms(latencies),
    }


@contextmanager
def _servers(tmp: Path, cfg: LangGraphDevConfig) -> Iterator[list[_Server]]:
    """``langgraph dev``, agentworker with its defaults, agentworker with tracing off: all
    up at once, serving the same ``langgraph.json``."""
    if not LANGGRAPH_DEV.exists():
        raise RuntimeError(f"{LANGGRAPH_DEV} is missing: `make bench` builds its venv")
    project = write_project(tmp / "langgraph-dev-project")
    workers = ["--workers", str(cfg.workers)]
    with ExitStack() as stack:
        dev = stack.enter_context(LangGraphDevProcess(project, jobs=cfg.workers))
        servers = [_Server("langgraph dev", dev.url, None)]
        for label, tracing in (
            ("agentworker, tracing on (default)", "true"),
            ("agentworker, tracing off", "false"),
        ):
            aw = agentworker_serving(
                tmp / f"langgraph-dev-aw-tracing-{tracing}",
                project,
                GRAPH,
                env={"AGENTWORKER_TRACING": tracing},
            )
            aw.args += workers
            stack.enter_context(aw)
            servers.append(_Server(label, aw.url, DEV_TOKEN))
        yield servers


def _phase(servers: list[_Server], name: str, measure: Callable[[_Server], Any]) -> dict[str, Any]:
    """``measure`` on each server in turn (one load at a time on the machine)."""
    out = {}
    for server in servers:
        progress(f"langgraph-dev: {name} on {server.label}")
        out[server.label] = measure(server)
    return out


def run(tmp: Path, cfg: LangGraphDevConfig) -> dict[str, Any]:
    with _servers(tmp, cfg) as servers:
        _phase(servers, f"{cfg.warmup} warm-up runs", lambda s: _wait_latencies(s, cfg.warmup))
        waits = _phase(servers, "runs.wait", lambda s: _wait_latencies(s, cfg.wait_runs))
        streams = _phase(servers, "runs.stream", lambda s: _stream_times(s, cfg.stream_runs))
        loads = _phase(
            servers,
            f"{cfg.threads} threads x {cfg.runs_per_thread} runs",
            lambda s: _throughput(s, cfg.threads, cfg.runs_per_thread),
        )
    variants = []
    for server in servers:
        variants.append(
            {
                "label": server.label,
                "wait_ms": _ms(waits[server.label]),
                "stream_first_event_ms": _ms(streams[server.label]["first_event"]),
                "stream_first_piece_ms": _ms(streams[server.label]["first_piece"]),
                "stream_total_ms": _ms(streams[server.label]["total"]),
                "throughput": loads[server.label],
            }
        )
    base = variants[0]
    ratios = {v["label"]: _ratios(v, base) for v in variants[1:]}
    return {
        "config": {
            "graph": f"{GRAPH} (tests/langgraph_apps/approval_agent.py)",
            "wait_runs": cfg.wait_runs,
            "stream_runs": cfg.stream_runs,
            "threads": cfg.threads,
            "runs_per_thread": cfg.runs_per_thread,
            "workers": cfg.workers,
        },
        "variants": variants,
        "ratios_over_langgraph_dev": ratios,
    }


def _ms(seconds: list[float]) -> dict[str, float]:
    """:func:`summary_ms` with the 95th percentile too."""
    return {**summary_ms(seconds), "p95": percentile([x * 1000.0 for x in seconds], 95)}


RATIOS = {
    "wait_p50": ("wait_ms", "p50"),
    "wait_p95": ("wait_ms", "p95"),
    "stream_first_event_p50": ("stream_first_event_ms", "p50"),
    "stream_first_piece_p50": ("stream_first_piece_ms", "p50"),
    "stream_total_p50": ("stream_total_ms", "p50"),
}
"""The latencies compared, as (figure, statistic)."""


def _ratios(variant: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """``variant``'s figures over ``base``'s."""
    ratios = {
        name: float(variant[figure][stat]) / float(base[figure][stat])
        for name, (figure, stat) in RATIOS.items()
    }
    ratios["runs_per_s"] = variant["throughput"]["runs_per_s"] / base["throughput"]["runs_per_s"]
    return ratios


def render(section: dict[str, Any]) -> str:
    cfg = section["config"]
    rows = []
    for v in section["variants"]:
        tp = v["throughput"]
        rows.append(
            [
                v["label"],
                f"{fmt(v['wait_ms']['p50'])} / {fmt(v['wait_ms']['p95'])}",
                fmt(v["stream_first_event_ms"]["p50"]),
                fmt(v["stream_first_piece_ms"]["p50"]),
                fmt(v["stream_total_ms"]["p50"]),
                fmt(tp["wall_s"]),
                fmt(tp["runs_per_s"], 1),
                f"{fmt(tp['latency_ms']['p50'])} / {fmt(tp['latency_ms']['p95'])}",
            ]
        )
    table = render_table(
        f"langgraph dev vs agentworker serve: graph {cfg['graph']}, the same sync "
        f"langgraph-sdk client; runs.wait x {cfg['wait_runs']} and runs.stream x "
        f"{cfg['stream_runs']} one at a time; throughput {cfg['threads']} threads at once x "
        f"{cfg['runs_per_thread']} runs.wait each; {cfg['workers']} runs at once on every "
        "server (agentworker --workers, langgraph dev --n-jobs-per-worker); times in ms",
        [
            "server",
            "wait p50/p95",
            "stream 1st event",
            "1st piece",
            "stream end",
            "load wall s",
            "runs/s",
            "load wait p50/p95",
        ],
        rows,
    )
    lines = [table, "  agentworker / langgraph dev (times: below 1 is faster; runs/s: above 1):"]
    for label, ratios in section["ratios_over_langgraph_dev"].items():
        cells = ", ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items())
        lines.append(f"  {label}: {cells}")
    return "\n".join(lines)
