"""What agentworker sends back: replies, streamed chunks, approval requests, notices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from events.inbound import new_id, utcnow


class TokenUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_tokens: int = 0
    """All input tokens, prompt-cache reads and writes included (as LangChain counts them)."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    """Input tokens read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return max(0, self.input_tokens - self.cache_read_tokens - self.cache_write_tokens)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )


class Reply(BaseModel):
    """The agent's answer to one turn."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["reply"] = "reply"
    reply_id: str = Field(default_factory=new_id)
    conversation_id: str
    turn_id: str
    in_reply_to: list[str] = Field(default_factory=list, description="inbox message ids")
    text: str
    usage: TokenUsage = Field(default_factory=TokenUsage)
    created_at: datetime = Field(default_factory=utcnow)
    status: str | None = Field(
        default=None,
        description="What the agent said of the matter with this reply (the SDK's"
        " set_status), e.g. 'solved': a ticket's write-back reports it.",
    )


class ReplyChunk(BaseModel):
    """A streamed piece of a reply in progress; the final :class:`Reply` supersedes them."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["chunk"] = "chunk"
    conversation_id: str
    turn_id: str
    index: int = Field(ge=0)
    delta: str
    message_id: str | None = Field(
        default=None, description="The AI message the text is of (None: between two)"
    )
    node: str | None = Field(default=None, description="The graph's node that wrote it")


class CustomChunk(BaseModel):
    """What the graph wrote to its custom stream (``get_stream_writer()``) during a turn: a
    progress note, a partial result, anything JSON. Streamed to WebSocket clients in order
    with the reply's chunks (one ``index`` sequence), never part of the reply."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["custom"] = "custom"
    conversation_id: str
    turn_id: str
    index: int = Field(ge=0)
    data: JsonValue


class StatusChunk(BaseModel):
    """What the turn is doing, for a client to show while it waits: ``thinking`` when it
    starts, ``tool`` when the graph is about to run tools (their names). Not kept: the
    reply or notice that ends the turn ends its status."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["status"] = "status"
    conversation_id: str
    turn_id: str
    index: int = Field(ge=0)
    state: Literal["thinking", "tool"]
    tools: list[str] = Field(default_factory=list)
    in_reply_to: list[str] = Field(
        default_factory=list, description="The messages the turn answers (when it starts)"
    )
    requested_by: list[str] = Field(
        default_factory=list,
        description="Who asked for the turn (when it starts): whom a Slack channel's"
        " streamed reply is addressed to",
    )
    text: str = Field(description="In plain words: 'thinking', 'running lookup_ticket'")


class UpdateChunk(BaseModel):
    """What one node of the graph returned (LangGraph's ``updates``), for the Agent Server
    API's run streams; our own WebSocket and event stream leave it out. Its ``index`` is of
    the turn's updates (a sequence of its own). An update larger than
    :data:`MAX_UPDATE_BYTES` as JSON is sent without its data (``truncated``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["update"] = "update"
    conversation_id: str
    turn_id: str
    index: int = Field(ge=0)
    node: str
    data: JsonValue
    truncated: bool = False


MAX_UPDATE_BYTES = 256_000
"""Largest node update streamed whole (as JSON)."""

StreamChunk = ReplyChunk | CustomChunk | StatusChunk | UpdateChunk

STREAM_FRAME_TYPES = frozenset({"chunk", "custom", "status", "update"})
"""The ``type`` of every streamed piece of a turn (kept by no store): what is not a payload."""
"""What a sink streams while a turn runs."""


class ApprovalRequest(BaseModel):
    """A tool call waiting for a human's approve/deny before it runs."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["approval_request"] = "approval_request"
    reply_id: str = Field(default_factory=new_id)
    conversation_id: str
    turn_id: str
    in_reply_to: list[str] = Field(default_factory=list, description="inbox message ids")
    interrupt_id: str
    tool: str
    args: dict[str, Any]
    text: str = Field(description="Human-readable question, e.g. 'Close ticket 3?'")
    requested_by: list[str] = Field(
        default_factory=list,
        description="Who asked for what led to the call (the senders of the turn's messages)",
    )
    created_at: datetime = Field(default_factory=utcnow)


class InterruptRequest(BaseModel):
    """The graph called ``interrupt(value)``: the turn waits for a human's answer, any JSON
    value (``resume``), which the ``interrupt()`` call then returns."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["interrupt"] = "interrupt"
    reply_id: str = Field(default_factory=new_id)
    conversation_id: str
    turn_id: str
    in_reply_to: list[str] = Field(default_factory=list, description="inbox message ids")
    interrupt_id: str
    value: JsonValue = Field(description="What the graph passed to interrupt()")
    text: str = Field(description="The value as text, for channels that show only text")
    requested_by: list[str] = Field(
        default_factory=list,
        description="Who asked for what led to the interrupt (the senders of the turn's messages)",
    )
    created_at: datetime = Field(default_factory=utcnow)


PendingRequest = Annotated[ApprovalRequest | InterruptRequest, Field(discriminator="type")]
"""What a conversation waits for: a tool approval or the answer to an ``interrupt()``."""
_PENDING = TypeAdapter[ApprovalRequest | InterruptRequest](PendingRequest)


def parse_pending_request(raw: str | bytes) -> ApprovalRequest | InterruptRequest:
    """A stored pending request (its JSON, as the stores keep it)."""
    return _PENDING.validate_json(raw)


class Notice(BaseModel):
    """A system message to the user: a rejected double-text, a permanent error."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["notice"] = "notice"
    reply_id: str = Field(default_factory=new_id)
    conversation_id: str
    level: Literal["info", "error"] = "info"
    in_reply_to: list[str] = Field(default_factory=list)
    text: str
    created_at: datetime = Field(default_factory=utcnow)


OutboxPayload = Reply | ApprovalRequest | InterruptRequest | Notice


class MessageView(BaseModel):
    """An inbox message as shown by ``GET /v1/conversations/{id}``."""

    seq: int
    message_id: str
    kind: Literal["user", "approval", "resume"]
    text: str
    sender: str
    channel: str
    status: Literal["pending", "consumed", "rejected", "failed", "redriven"]
    """``failed``: its turn failed for good (``error`` says why); ``redriven``: failed, then
    accepted again as a new message (``agentworker dlq redrive``)."""
    received_at: datetime
    approved: bool | None = None
    reason: str | None = None
    """The reason given with an approval's decision (``None``: none given)."""
    value: JsonValue = None
    """The answer of a ``resume`` message."""
    error: str | None = None
    """Why its turn failed (``failed``, ``redriven``)."""


class OutboxView(BaseModel):
    seq: int
    delivered: bool
    payload: OutboxPayload


class ConversationView(BaseModel):
    """A conversation's messages, replies, status and pending approval."""

    conversation_id: str
    status: Literal["idle", "running", "awaiting_approval"]
    policy: Literal["enqueue", "merge", "interrupt", "reject"]
    pending_approval: PendingRequest | None
    """What the conversation waits for (status ``awaiting_approval``): a tool approval or
    the answer to an ``interrupt()``."""
    messages: list[MessageView]
    replies: list[OutboxView]
    values: ConversationValuesView
    """The conversation's own context, configurable values and metadata."""


class ConversationSummaryView(BaseModel):
    conversation_id: str
    status: Literal["idle", "running", "awaiting_approval"]
    created_at: datetime
    updated_at: datetime
    """The last activity: a message accepted, a turn committed, its values changed."""
    metadata: dict[str, JsonValue]


class ConversationListView(BaseModel):
    """``GET /v1/conversations``: the caller's conversations, most recently active first."""

    conversations: list[ConversationSummaryView]
    limit: int
    offset: int
    next_offset: int | None
    """Where the next page starts (``None``: this is the last one)."""


class ConversationValuesView(BaseModel):
    """What a conversation's turns run with of their caller's choosing, under what each
    message adds (``PATCH /v1/conversations/{id}`` changes it)."""

    conversation_id: str
    context: dict[str, JsonValue]
    configurable: dict[str, JsonValue]
    metadata: dict[str, JsonValue]


class PendingInterruptView(BaseModel):
    interrupt_id: str
    value: JsonValue


class GraphStateView(BaseModel):
    """A conversation's graph state (``GET /v1/conversations/{id}/state``): what its next
    turn starts from. ``values`` holds every channel but ``messages`` as JSON (other objects
    as text); ``messages`` counts the messages the next turn sees."""

    conversation_id: str
    checkpoint_id: str | None
    values: dict[str, JsonValue]
    messages: int
    next: list[str] = Field(description="Nodes the graph runs next (while interrupted)")
    interrupts: list[PendingInterruptView]
    message_list: list[dict[str, JsonValue]] | None = Field(default=None, exclude=True)
    """The messages themselves, as LangChain dumps them, when asked for (the Agent Server
    API's thread state); never in this view's JSON."""


class AcceptedView(BaseModel):
    """Response to an accepted message (HTTP 202, WebSocket ``accepted`` frame)."""

    type: Literal["accepted"] = "accepted"
    conversation_id: str
    message_id: str
    seq: int
    duplicate: bool
    rejected: bool


class FeedbackView(BaseModel):
    """Response to a rating (HTTP 202, WebSocket ``feedback`` frame): handed to tracing,
    which attaches it to the reply's turn trace (after the answer, off the request's path)."""

    type: Literal["feedback"] = "feedback"
    conversation_id: str
    reply_id: str
    score: int
    recorded: bool = True


class AppView(BaseModel):
    """The app a server serves (``GET /v1/app``): what a chat page shows in its header and
    offers in an empty conversation. Nothing secret: the model is its id, never a key."""

    name: str
    """The app's name, from its graph's package (``support_agent`` -> ``Support agent``)."""
    model: str
    """The model setting (``offline``, ``<provider>:<model>``)."""
    suggested_prompts: list[str]
    """Prompts to offer (the ``suggested_prompts`` setting); empty: none."""


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    reason: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """For ``unauthenticated`` (absent otherwise): why the token was refused (``expired``,
    ``bad_signature``, ``wrong_audience``, ``alg_not_allowed``...)."""


def validation_problem(exc: ValidationError, *, tagged: bool = False) -> ErrorBody:
    """The first problem of ``exc`` as an error body naming the field (a dotted path without
    list indexes; with ``tagged``, without the tag pydantic puts first for a tagged union).
    Text over the size limit is ``too_large``, anything else ``validation_error``."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    if tagged and len(loc) > 1:
        loc = loc[1:]
    field = ".".join(loc) or None
    code = "too_large" if err["type"] == "too_large" else "validation_error"
    return ErrorBody(code=code, message=f"{field or 'body'}: {err['msg']}", field=field)


class ErrorView(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorBody


def cancelled_frame(conversation_id: str) -> dict[str, str]:
    """The answer to a cancel (HTTP and WebSocket): the running turn was stopped; its
    sender gets a notice, like every follower of the conversation."""
    return {"type": "cancelled", "conversation_id": conversation_id}
