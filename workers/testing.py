"""``LocalApp``: run an app on the embedded runtime from a plain (synchronous) test.

    from agentworker.testing import LocalApp

    with LocalApp(config="agentworker.toml") as app:
        reply = app.send("chat:1", "hello")
        assert reply.type == "reply"

Every message goes through the turn contract as in production (the inbox, the lease, one
fenced commit per turn, the outbox): SQLite in a temporary directory, the offline model
unless ``model`` says otherwise, no tracing unless asked.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from events.inbound import InboundMessage, ResumeAnswer
from events.outbound import GraphStateView, OutboxPayload
from workers.config import load_settings
from workers.errors import AgentWorkerError

T = TypeVar("T")

__all__ = ["LocalApp", "NoAnswer"]


class NoAnswer(AgentWorkerError):
    """A message got no answer within the timeout."""


class LocalApp:
    """The app named by ``config`` (an ``agentworker.toml``) or ``graph``, served by the
    embedded runtime on an event loop of its own while the ``with`` block lasts."""

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        graph: str | None = None,
        model: str = "offline",
        state_dir: str | Path | None = None,
        tracing: bool = False,
        timeout: float = 30.0,
        **settings: Any,
    ) -> None:
        self._settings = load_settings(
            config=config,
            graph=graph,
            model=model,
            state_dir=Path(state_dir or tempfile.mkdtemp(prefix="agentworker-test-")),
            tracing=tracing,
            **settings,
        )
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runtime: Any = None

    def __enter__(self) -> Self:
        from workers.bootstrap import build_embedded

        self._thread.start()

        async def start() -> Any:
            runtime = build_embedded(self._settings)
            await runtime.start()
            return runtime

        self._runtime = self._call(start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runtime is not None:
            self._call(self._runtime.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def state_dir(self) -> Path:
        return self._settings.state_dir

    def send(self, conversation_id: str, text: str) -> OutboxPayload:
        """Send a user message; the reply, notice or request that answers it."""
        return self._ask(InboundMessage(conversation_id=conversation_id, text=text))

    def resume(self, conversation_id: str, value: Any) -> OutboxPayload:
        """Answer the interrupt the conversation waits for with ``value`` (any JSON)."""
        pending = self.pending(conversation_id)
        if pending is None:
            raise NoAnswer(f"{conversation_id!r} waits for no answer")
        answer = ResumeAnswer(interrupt_id=pending.interrupt_id, value=value)
        return self._ask(
            InboundMessage(conversation_id=conversation_id, kind="resume", resume=answer)
        )

    def replies(self, conversation_id: str) -> list[OutboxPayload]:
        """Everything sent to the conversation so far (replies, notices, requests), in order."""
        history = self._call(self._runtime.history(conversation_id))
        return [entry.payload for entry in history.outbox] if history is not None else []

    def pending(self, conversation_id: str) -> Any:
        """The approval request or interrupt the conversation waits for, if any."""
        history = self._call(self._runtime.history(conversation_id))
        if history is None or history.state.status != "awaiting_approval":
            return None
        return history.state.pending_approval

    def state(self, conversation_id: str) -> GraphStateView | None:
        """The conversation's graph state (its channels)."""
        state: GraphStateView | None = self._call(self._runtime.graph_state(conversation_id))
        return state

    def _ask(self, msg: InboundMessage) -> OutboxPayload:
        async def ask() -> OutboxPayload | None:
            await self._runtime.accept(msg)
            await self._runtime.wait_idle(self.timeout)
            history = await self._runtime.history(msg.conversation_id)
            for entry in history.outbox if history else []:
                if msg.message_id in entry.payload.in_reply_to:
                    payload: OutboxPayload = entry.payload
                    return payload
            return None

        answer = self._call(ask())
        if answer is None:
            raise NoAnswer(f"no answer to {msg.text or msg.kind!r} in {msg.conversation_id!r}")
        return answer

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=self.timeout + 30)
