"""``agentworker stub openai``: the OpenAI-compatible stub as a process of its own, so an app
can be served against ``openai:<model>`` with no key and no network."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TextIO

from workers.sandbox.openai_stub import OpenAIStubServer


def serve_openai_stub(port: int, out: TextIO) -> int:
    """Serve an unscripted ``OpenAIStubServer`` (it answers like the offline model) on
    127.0.0.1:``port`` (0: a free one) until SIGINT or SIGTERM; print what a client sets;
    return 0. A port already taken raises ``OSError`` before anything is printed."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with OpenAIStubServer(port=port) as stub:
            print(f"agentworker: OpenAI-compatible stub on {stub.base_url}", file=out)
            print(f"  export OPENAI_BASE_URL={stub.base_url} OPENAI_API_KEY=stub", file=out)
            print("Ctrl-C stops it.", file=out, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
