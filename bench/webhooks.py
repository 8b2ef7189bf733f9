"""What outbound webhooks cost a turn: the same turns (``accept_message`` + ``drive_run``, the
real SQLite store, the offline model) with no webhook, with a receiver that always fails
(HTTP 500, retried every few milliseconds until dead), and with one that never answers in
time. The sender runs meanwhile, in its own event loop, as it does in the server; a turn only
writes each delivery to the queue (``webhooks.db``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import fmt, progress, render_table, summary_ms
from bench.overhead import _build
from workers.adapters.fanout import FanOutReplySink
from workers.adapters.local.webhooks import WebhookQueue, WebhookSender, WebhookSink
from workers.adapters.webhooks import WebhookSubscription
from workers.core.ports import NullTracer

SECRET_ENV = "AGENTWORKER_BENCH_WEBHOOK_SECRET"


@dataclass(frozen=True)
class WebhooksConfig:
    turns: int = 200
    warmup: int = 20
    conversations: int = 10


def _receiver(delay: float, status: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", "0")))
            time.sleep(delay)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _variant(tmp: Path, name: str, cfg: WebhooksConfig, receiver: Any) -> dict[str, Any]:
    bench = _build(tmp, f"webhooks-{name}", NullTracer())
    sender: WebhookSender | None = None
    stop = threading.Event()
    thread: threading.Thread | None = None
    queue: WebhookQueue | None = None
    if receiver is not None:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/"
        sub = WebhookSubscription(name=name, url=url, secret_env=SECRET_ENV)
        queue = WebhookQueue(tmp / f"webhooks-{name}.db")
        sender = WebhookSender(queue, [sub], attempts=5, base_delay=0.005, timeout=0.5)
        bench.deps.sink = FanOutReplySink(
            {"local": bench.sink, "webhooks": WebhookSink(queue, [sub], wake=sender.wake)}
        )

        def send() -> None:
            async def main() -> None:
                task = asyncio.create_task(sender.run())
                while not stop.is_set():
                    await asyncio.sleep(0.05)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

            asyncio.run(main())

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
    for _ in range(cfg.warmup):
        bench.turn(cfg.conversations)
    walls = [bench.turn(cfg.conversations)[0] for _ in range(cfg.turns)]
    dead = 0
    if queue is not None:
        time.sleep(1.0)  # the sender meanwhile: attempts go on after the turns
        dead = len(queue.dead())
    stop.set()
    if thread is not None:
        thread.join(timeout=10)
    if queue is not None:
        queue.close()
    bench.store.close()
    return {"variant": name, "turn_ms": summary_ms(walls), "dead_after_1s": dead}


def run(tmp: Path, cfg: WebhooksConfig) -> dict[str, Any]:
    os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(b"bench secret 0123").decode())
    failing, hanging = _receiver(0.0, 500), _receiver(5.0, 204)
    try:
        variants = []
        for name, receiver in (("none", None), ("failing", failing), ("hanging", hanging)):
            progress(f"webhooks: {cfg.turns} turns, receiver {name}")
            variants.append(_variant(tmp, name, cfg, receiver))
    finally:
        for server in (failing, hanging):
            server.shutdown()
            server.server_close()
    return {"config": cfg.__dict__, "variants": variants}


def table(result: dict[str, Any]) -> str:
    labels = {
        "none": "no webhook",
        "failing": "a receiver answering 500 (retried until dead)",
        "hanging": "a receiver that never answers in time",
    }
    rows = [
        [
            labels[v["variant"]],
            fmt(v["turn_ms"]["p50"]),
            fmt(v["turn_ms"]["p90"]),
            str(v["dead_after_1s"]),
        ]
        for v in result["variants"]
    ]
    header = ["webhook receiver", "turn p50 ms", "turn p90 ms", "dead after 1 s"]
    return render_table("Webhooks: what a turn pays", header, rows)
