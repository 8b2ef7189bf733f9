"""Throughput of the real ``EmbeddedRuntime`` (asyncio worker pool + SQLite store).

``conversations`` simulated users each send ``messages`` messages one after another: a user
sends the next message only once the previous one was answered (the ``reply`` frame reached
its hub subscription, as a WebSocket client would see it). Measured: turns/s from the first
accept to the pool being idle, and each message's latency (accept -> reply frame).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import progress, summary_ms
from events.inbound import InboundMessage
from workers.adapters.local.runtime import EmbeddedRuntime
from workers.agent.offline import OfflineChatModel
from workers.bootstrap import build_embedded
from workers.config import load_settings
from workers.core.ports import NullTracer

Frame = dict[str, Any]


@dataclass(frozen=True)
class ThroughputConfig:
    conversations: int = 50
    messages: int = 10
    latencies_ms: tuple[float, ...] = (0.0, 50.0)
    workers: tuple[int, ...] = (1, 10, 50)
    reply_timeout_s: float = 60.0


def ideal_turns_per_s(latency_s: float, workers: int, conversations: int) -> float:
    """Model-bound ceiling: ``min(W, conversations)`` turns in flight, each taking L."""
    if latency_s <= 0:
        return math.nan
    return min(workers, conversations) / latency_s


async def _client(
    rt: EmbeddedRuntime,
    cid: str,
    *,
    messages: int,
    timeout: float,
    latencies: list[float],
    notices: list[str],
) -> None:
    queue: asyncio.Queue[Frame] = asyncio.Queue()
    rt.hub.subscribe(cid, queue)
    try:
        for m in range(messages):
            start = time.perf_counter()
            await rt.accept(InboundMessage(conversation_id=cid, text=f"message {m} about my order"))
            async with asyncio.timeout(timeout):
                while True:
                    frame = await queue.get()
                    kind = frame.get("type")
                    if kind == "reply":
                        break
                    if kind == "notice":
                        notices.append(str(frame.get("text")))
                        break
            latencies.append(time.perf_counter() - start)
    finally:
        rt.hub.unsubscribe(queue)


async def run_config(
    tmp: Path, latency_ms: float, workers: int, cfg: ThroughputConfig
) -> dict[str, Any]:
    state_dir = tmp / f"throughput-L{latency_ms:g}-W{workers}"
    settings = load_settings(state_dir=state_dir, tracing=False, workers=workers)
    rt: EmbeddedRuntime = build_embedded(
        settings, model=OfflineChatModel(latency_s=latency_ms / 1000.0), tracer=NullTracer()
    )
    await rt.start()
    latencies: list[float] = []
    notices: list[str] = []
    try:
        # One untimed turn first: lazy imports and first-call costs stay out of the numbers.
        await _client(
            rt, "tp-warmup", messages=1, timeout=cfg.reply_timeout_s, latencies=[], notices=[]
        )
        await rt.wait_idle(cfg.reply_timeout_s)
        warmup_runs = len(rt.completed)
        start = time.perf_counter()
        await asyncio.gather(
            *(
                _client(
                    rt,
                    f"tp-{i}",
                    messages=cfg.messages,
                    timeout=cfg.reply_timeout_s,
                    latencies=latencies,
                    notices=notices,
                )
                for i in range(cfg.conversations)
            )
        )
        await rt.wait_idle(cfg.reply_timeout_s)
        elapsed = time.perf_counter() - start
        turns = sum(s.turns for s in list(rt.completed)[warmup_runs:])
        runs = len(rt.completed) - warmup_runs
    finally:
        await rt.stop()
    expected = cfg.conversations * cfg.messages
    if turns != expected or notices:
        progress(f"throughput: expected {expected} turns, got {turns}; notices: {notices[:3]}")
    latency_s = latency_ms / 1000.0
    ideal = ideal_turns_per_s(latency_s, workers, cfg.conversations)
    measured = turns / elapsed
    return {
        "model_latency_ms": latency_ms,
        "workers": workers,
        "conversations": cfg.conversations,
        "messages_per_conversation": cfg.messages,
        "mode": "sequential per conversation (next message after the reply)",
        "turns": turns,
        "runs": runs,
        "notices": len(notices),
        "elapsed_s": elapsed,
        "turns_per_s": measured,
        "ideal_turns_per_s": None if math.isnan(ideal) else ideal,
        "efficiency": None if math.isnan(ideal) else measured / ideal,
        "latency_ms": summary_ms(latencies),
    }


async def _run_all(tmp: Path, cfg: ThroughputConfig) -> list[dict[str, Any]]:
    results = []
    for latency_ms in cfg.latencies_ms:
        for workers in cfg.workers:
            progress(
                f"throughput: L={latency_ms:g} ms, W={workers}, "
                f"{cfg.conversations} conversations x {cfg.messages} messages"
            )
            result = await run_config(tmp, latency_ms, workers, cfg)
            progress(
                f"throughput: L={latency_ms:g} ms, W={workers}: "
                f"{result['turns_per_s']:.1f} turns/s in {result['elapsed_s']:.1f} s"
            )
            results.append(result)
    return results


def run(tmp: Path, cfg: ThroughputConfig) -> dict[str, Any]:
    return {
        "config": {
            "conversations": cfg.conversations,
            "messages": cfg.messages,
            "latencies_ms": list(cfg.latencies_ms),
            "workers": list(cfg.workers),
        },
        "runs": asyncio.run(_run_all(tmp, cfg)),
    }
