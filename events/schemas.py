"""JSON Schemas of the boundary models (``agentworker schema``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from events.inbound import (
    EventBridgeEvent,
    FeedbackRequest,
    InboundMessage,
    MessageRequest,
    SlackEventEnvelope,
    SqsEvent,
    TicketEvent,
    WsFrame,
)
from events.outbound import (
    AcceptedView,
    ApprovalRequest,
    ConversationView,
    ErrorView,
    FeedbackView,
    Notice,
    Reply,
    ReplyChunk,
)
from events.workflow import FinishResult, RunRef, TurnResult

SCHEMA_MODELS: dict[str, Any] = {
    "InboundMessage": InboundMessage,
    "MessageRequest": MessageRequest,
    "FeedbackRequest": FeedbackRequest,
    "WebSocketFrame": WsFrame,
    "SqsEvent": SqsEvent,
    "EventBridgeEvent": EventBridgeEvent,
    "SlackEventEnvelope": SlackEventEnvelope,
    "TicketEvent": TicketEvent,
    "RunRef": RunRef,
    "TurnResult": TurnResult,
    "FinishResult": FinishResult,
    "Reply": Reply,
    "ReplyChunk": ReplyChunk,
    "ApprovalRequest": ApprovalRequest,
    "Notice": Notice,
    "AcceptedView": AcceptedView,
    "ConversationView": ConversationView,
    "ErrorView": ErrorView,
    "FeedbackView": FeedbackView,
}


def schema_of(name: str) -> dict[str, Any]:
    model = SCHEMA_MODELS[name]
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema()
    return TypeAdapter(model).json_schema()
