"""The AWS runtime as the Agent Server API sees it (the ``api`` function): the same core steps
as the embedded runtime's, against DynamoDB, the workflow and the AWS sinks.

There is no hub: a turn runs in another function (the workflow's ``turn``), so a request
that waits for a run (``runs.wait``, ``join``, a run stream) reads the conversation's
outbox every :attr:`AwsApiRuntime.poll_seconds`, up to :attr:`wait_limit_seconds` (under
API Gateway's 30-second integration limit). A run stream is sent when the function returns
(API Gateway's HTTP API does not stream a function's response): its events are the run's
start, its end and what it ended with; the turn's pieces stream live over the WebSocket API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from typing import Any

from events.identity import Principal
from events.inbound import InboundMessage
from workers.adapters.core_calls import CoreCalls
from workers.core.model import AcceptResult
from workers.core.steps import (
    Deps,
    Erasure,
    accept_message,
    cancel_turn,
    create_conversation,
    forget_conversation,
    visible,
)

API_WAIT_LIMIT_SECONDS = 25.0
"""The longest a request of the ``api`` function waits for a run: API Gateway ends an HTTP
API integration at 30 seconds."""


class NoPieces:
    """No live pieces on AWS (the WebSocket API streams them): a request reads the store."""

    def subscribe(self, conversation_id: str, queue: Any) -> None:
        return None

    def unsubscribe(self, queue: Any) -> None:
        return None

    def turn_pieces(self, conversation_id: str) -> list[dict[str, Any]]:
        return []


class AwsApiRuntime(CoreCalls):
    """The AWS runtime's steps for one Lambda process's requests (``deps`` with the agent:
    a thread's state is read through the app's graph)."""

    poll_seconds = 0.5
    wait_limit_seconds = API_WAIT_LIMIT_SECONDS

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._hub = NoPieces()

    @property
    def hub(self) -> NoPieces:
        return self._hub

    async def accept(self, msg: InboundMessage, principal: Principal) -> AcceptResult:
        return await asyncio.to_thread(accept_message, self.deps, msg, principal)

    async def create_thread(
        self, conversation_id: str, principal: Principal, metadata: Mapping[str, object]
    ) -> bool:
        return await asyncio.to_thread(
            create_conversation, self.deps, conversation_id, principal, metadata
        )

    async def cancel(self, conversation_id: str, principal: Principal) -> None:
        """Stop the running turn: its run's lease is taken (the ``turn`` function running it
        commits nothing), its Standard execution is stopped (an Express one, which Step
        Functions cannot stop, ends at its next step); later messages go on in a run of
        their own."""

        def cancel() -> None:
            state = visible(self.deps, self.deps.store.get_conversation(conversation_id), principal)
            execution = state.lease_execution_id if state is not None else None
            run = cancel_turn(self.deps, conversation_id, principal)
            stop = getattr(self.deps.starter, "stop", None)
            if execution and stop is not None:
                stop(execution, f"run cancelled by {principal.id}")
            if run is not None:
                self.deps.starter.start(run)

        await asyncio.to_thread(cancel)

    async def forget(
        self, conversation_id: str, principal: Principal, *, memories: bool = False
    ) -> Erasure:
        return await asyncio.to_thread(
            partial(forget_conversation, memories=memories), self.deps, conversation_id, principal
        )
