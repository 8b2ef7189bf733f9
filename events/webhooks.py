"""Webhooks at the boundary: the events a receiver may take, and a conversation's own
subscription as a caller asks for it (``POST /v1/conversations/{id}/webhooks``) and is shown
it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl
from pydantic_core import PydanticCustomError

WebhookEvent = Literal[
    "reply", "approval_request", "interrupt", "notice", "ticket.reply", "ticket.status"
]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = (
    "reply",
    "approval_request",
    "interrupt",
    "notice",
    "ticket.reply",
    "ticket.status",
)


def unique_events(events: list[WebhookEvent]) -> list[WebhookEvent]:
    if len(set(events)) != len(events):
        raise PydanticCustomError("repeated", "an event is named twice")
    return events


class WebhookRequest(BaseModel):
    """A subscription of one conversation's events, for a caller who may use it: where to
    post them (``https``), which (default: all), and its secret (``whsec_`` + base64; default:
    one made for it, shown once in the answer)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[HttpUrl, Field(description="The receiver's https URL.")]
    events: Annotated[
        list[WebhookEvent],
        Field(min_length=1, max_length=len(WEBHOOK_EVENTS)),
        AfterValidator(unique_events),
    ] = Field(default_factory=lambda: list(WEBHOOK_EVENTS))
    secret: str | None = Field(
        default=None, pattern=r"^whsec_[A-Za-z0-9+/]{32,}={0,2}$", max_length=200
    )


class WebhookView(BaseModel):
    type: Literal["webhook"] = "webhook"
    webhook_id: str
    conversation_id: str
    url: str
    events: list[str]
    created_by: str
    created_at: datetime
    secret: str | None = None
    """Only in the answer that made it (or when the caller gave it)."""


class WebhookListView(BaseModel):
    conversation_id: str
    webhooks: list[WebhookView]
