"""Store records -> API views (shared by the HTTP API, the WebSocket and the CLI)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from events.outbound import (
    ConversationSummaryView,
    ConversationValuesView,
    ConversationView,
    MessageView,
    OutboxView,
)
from workers.core.model import CallerValues, ConversationSummary, History


def summary_view(summary: ConversationSummary) -> ConversationSummaryView:
    metadata: Any = dict(summary.values.metadata)
    return ConversationSummaryView(
        conversation_id=summary.conversation_id,
        status=summary.status,
        created_at=datetime.fromtimestamp(summary.created_at, UTC),
        updated_at=datetime.fromtimestamp(summary.updated_at, UTC),
        metadata=metadata,
    )


def values_view(conversation_id: str, values: CallerValues) -> ConversationValuesView:
    data: Any = {
        "context": dict(values.context),
        "configurable": dict(values.configurable),
        "metadata": dict(values.metadata),
    }
    return ConversationValuesView(conversation_id=conversation_id, **data)


def conversation_view(history: History) -> ConversationView:
    state = history.state
    return ConversationView(
        conversation_id=state.conversation_id,
        status=state.status,
        policy=state.policy,
        pending_approval=state.pending_approval if state.status == "awaiting_approval" else None,
        messages=[
            MessageView(
                seq=e.seq,
                message_id=e.message.message_id,
                kind=e.message.kind,
                text=e.message.text,
                sender=e.message.sender,
                channel=e.message.channel,
                status=e.status,
                received_at=e.message.received_at,
                approved=e.message.approval.approved if e.message.approval else None,
                reason=(e.message.approval.reason or None) if e.message.approval else None,
                value=e.message.resume.value if e.message.resume else None,
                error=e.error,
            )
            for e in history.inbox
        ],
        replies=[
            OutboxView(seq=e.seq, delivered=e.delivered, payload=e.payload) for e in history.outbox
        ],
        values=values_view(state.conversation_id, state.values),
    )
