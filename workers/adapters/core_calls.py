"""The core's read and write steps as awaitables, for the APIs that both runtimes serve
(the embedded server's, and the AWS ``api`` function's): each runs on a worker thread, as
the steps do blocking store I/O."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from events.identity import LOCAL_USER, Principal
from events.outbound import GraphStateView
from events.schedules import ScheduleRequest
from events.webhooks import WebhookRequest
from workers.core.model import (
    CallerValues,
    ConversationState,
    ConversationStatus,
    ConversationSummary,
    ConversationWebhook,
    History,
    Schedule,
)
from workers.core.schedules import create_schedule, delete_schedule, list_schedules
from workers.core.steps import (
    Deps,
    conversation_summary,
    graph_state,
    history,
    list_conversations,
    set_conversation_values,
    visible,
)
from workers.core.webhooks import create_webhook, delete_webhook, list_webhooks

log = logging.getLogger(__name__)


class CoreCalls:
    """The steps a caller's request runs against ``deps`` (the runtime's dependencies)."""

    deps: Deps

    def served_graph(self) -> Any:
        """The app's compiled graph (``None`` when the runtime has none to show)."""
        return getattr(self.deps.agent, "graph", None)

    async def history(
        self, conversation_id: str, principal: Principal = LOCAL_USER
    ) -> History | None:
        return await asyncio.to_thread(history, self.deps, conversation_id, principal)

    async def graph_state(
        self,
        conversation_id: str,
        principal: Principal = LOCAL_USER,
        *,
        with_messages: bool = False,
    ) -> GraphStateView | None:
        return await asyncio.to_thread(
            partial(graph_state, with_messages=with_messages), self.deps, conversation_id, principal
        )

    async def list_conversations(
        self,
        principal: Principal,
        *,
        limit: int,
        offset: int = 0,
        status: ConversationStatus | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> list[ConversationSummary]:
        """``principal``'s conversations (see :func:`~workers.core.steps.list_conversations`)."""
        return await asyncio.to_thread(
            partial(
                list_conversations,
                self.deps,
                principal,
                limit=limit,
                offset=offset,
                status=status,
                metadata=metadata,
            )
        )

    async def summary(
        self, conversation_id: str, principal: Principal
    ) -> ConversationSummary | None:
        """The conversation as a list shows it, if it is ``principal``'s."""
        return await asyncio.to_thread(conversation_summary, self.deps, conversation_id, principal)

    async def conversation_state(
        self, conversation_id: str, principal: Principal
    ) -> ConversationState | None:
        """The conversation's state, if it is ``principal``'s."""

        def read() -> ConversationState | None:
            return visible(self.deps, self.deps.store.get_conversation(conversation_id), principal)

        return await asyncio.to_thread(read)

    async def set_values(
        self, conversation_id: str, principal: Principal, change: CallerValues
    ) -> CallerValues:
        """Change the conversation's own values (see
        :func:`~workers.core.steps.set_conversation_values`)."""
        return await asyncio.to_thread(
            set_conversation_values, self.deps, conversation_id, principal, change
        )

    async def create_schedule(
        self, conversation_id: str, principal: Principal, request: ScheduleRequest
    ) -> Schedule:
        """See :func:`~workers.core.schedules.create_schedule`."""
        return await asyncio.to_thread(
            create_schedule, self.deps, conversation_id, principal, request
        )

    async def list_schedules(self, conversation_id: str, principal: Principal) -> list[Schedule]:
        """See :func:`~workers.core.schedules.list_schedules`."""
        return await asyncio.to_thread(list_schedules, self.deps, conversation_id, principal)

    async def delete_schedule(
        self, conversation_id: str, schedule_id: str, principal: Principal
    ) -> None:
        """See :func:`~workers.core.schedules.delete_schedule`."""
        await asyncio.to_thread(delete_schedule, self.deps, conversation_id, schedule_id, principal)

    async def create_webhook(
        self, conversation_id: str, principal: Principal, request: WebhookRequest
    ) -> ConversationWebhook:
        """See :func:`~workers.core.webhooks.create_webhook`."""
        return await asyncio.to_thread(
            create_webhook, self.deps, conversation_id, principal, request
        )

    async def list_webhooks(
        self, conversation_id: str, principal: Principal
    ) -> list[ConversationWebhook]:
        return await asyncio.to_thread(list_webhooks, self.deps, conversation_id, principal)

    async def delete_webhook(
        self, conversation_id: str, webhook_id: str, principal: Principal
    ) -> None:
        await asyncio.to_thread(delete_webhook, self.deps, conversation_id, webhook_id, principal)

    def graph_drawing(self) -> dict[str, object]:
        """The served graph's nodes and edges, as LangGraph draws it (JSON)."""
        graph = self.served_graph()
        if graph is None:
            return {"nodes": [], "edges": []}
        drawn: dict[str, object] = graph.get_graph().to_json()
        return drawn

    def graph_schemas(self) -> dict[str, object]:
        """The served graph's input, output, state, config and context JSON schemas (``None``
        for one LangGraph cannot give)."""
        graph = self.served_graph()
        schemas: dict[str, object] = {}
        for key, read in (
            ("input_schema", "get_input_jsonschema"),
            ("output_schema", "get_output_jsonschema"),
            ("state_schema", "get_output_jsonschema"),
            ("config_schema", "get_config_jsonschema"),
            ("context_schema", "get_context_jsonschema"),
        ):
            try:
                schemas[key] = getattr(graph, read)() if graph is not None else None
            except Exception:  # a schema LangGraph cannot build: say none, serve the rest
                log.debug("no %s for the graph", key, exc_info=True)
                schemas[key] = None
        return schemas
