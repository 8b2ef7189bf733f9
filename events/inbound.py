"""Inbound messages and the per-source envelopes that carry them.

Every source (HTTP API, WebSocket, SQS, EventBridge, Slack, ticket events) is parsed into one
:class:`InboundMessage`; the envelopes know how to find it in their source's outer structure.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from events.identity import Principal
from events.json_input import check_value, parse_json
from workers.errors import BadInput

MAX_MESSAGE_BYTES = 256 * 1024
"""Largest accepted message text, in UTF-8 bytes (the Step Functions/SQS payload cap)."""

CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._@\-]{0,255}$"

Channel = Literal["api", "websocket", "cli", "sqs", "eventbridge", "slack", "ticket", "schedule"]
DoubleTextingPolicy = Literal["enqueue", "merge", "interrupt", "reject"]
ConversationId = Annotated[
    str,
    Field(
        pattern=CONVERSATION_ID_PATTERN,
        description="e.g. 'slack:T1:C1:1700000000.0001', 'ticket:4711', 'ws:alice:chat1'",
    ),
]


def new_id() -> str:
    """A fresh random identifier (hex UUID4)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_text_size(text: str) -> str:
    """Refuse texts over :data:`MAX_MESSAGE_BYTES` with a message naming the limit."""
    size = len(text.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise PydanticCustomError(
            "too_large",
            "text is {size} bytes, over the {limit} byte limit",
            {"size": size, "limit": MAX_MESSAGE_BYTES},
        )
    return text


def require_text(text: str) -> str:
    """Refuse an empty or blank text (error type ``missing``, located at the field)."""
    if not text.strip():
        raise PydanticCustomError("missing", "a user message needs a non-empty text")
    return text


MessageText = Annotated[
    str,
    AfterValidator(check_text_size),
    Field(description="Message text, at most 256 KB of UTF-8."),
]


MAX_METADATA_BYTES = 16 * 1024
"""Largest ``metadata`` of a message: its keys and values, in UTF-8 bytes."""
MAX_METADATA_KEYS = 64


def check_metadata_size(metadata: dict[str, str]) -> dict[str, str]:
    """Refuse metadata over :data:`MAX_METADATA_BYTES` (it is stored with the message and
    handed to the graph: without a bound, a message could carry megabytes past the text's)."""
    size = sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        for k, v in metadata.items()
    )
    _within(size, MAX_METADATA_BYTES, "metadata is {size} bytes, over the {limit} byte limit")
    return metadata


def _within(size: int, limit: int, message: str) -> None:
    """``too_large`` (``message`` with ``size`` and ``limit``) past ``limit`` bytes."""
    if size > limit:
        raise PydanticCustomError("too_large", message, {"size": size, "limit": limit})


def json_bytes(value: object) -> int:
    """The size of ``value`` as compact JSON, in UTF-8 bytes (lone surrogates counted)."""
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8", "surrogatepass"))


Metadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=256)], str],
    AfterValidator(check_metadata_size),
    Field(
        max_length=MAX_METADATA_KEYS,
        description="String keys and values, at most 64 keys and 16 KB in all.",
    ),
]


MAX_RESUME_BYTES = 64 * 1024
"""Largest answer to an ``interrupt()``, as compact JSON."""
MAX_RESUME_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in an answer to an ``interrupt()``."""


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counting no further than ``limit + 1``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_resume_value(value: JsonValue) -> JsonValue:
    """Refuse an answer nested deeper than :data:`MAX_RESUME_DEPTH`, larger than
    :data:`MAX_RESUME_BYTES`, or holding what :func:`~events.json_input.check_value` refuses
    (it is stored and handed to the graph as is)."""
    if _depth(value, MAX_RESUME_DEPTH) > MAX_RESUME_DEPTH:
        raise PydanticCustomError(
            "too_deep", "nested deeper than {limit} levels", {"limit": MAX_RESUME_DEPTH}
        )
    try:
        # A value parsed elsewhere (an event the Lambda runtime decoded) has not been
        # through parse_json: a number past 64 bits would fail the turn that keeps it.
        check_value(value, what="value")
    except BadInput as exc:
        raise PydanticCustomError(exc.code, str(exc).partition(": ")[2]) from None
    _within(
        json_bytes(value),
        MAX_RESUME_BYTES,
        "value is {size} bytes of JSON, over the {limit} byte limit",
    )
    return value


ResumeValue = Annotated[
    JsonValue,
    AfterValidator(check_resume_value),
    Field(description="Any JSON value, at most 64 KB and 32 levels deep."),
]


MAX_RUN_VALUES_BYTES = 16 * 1024
MAX_RUN_VALUES_KEYS = 64
"""Largest ``context`` or ``configurable`` a caller sends with a message, as JSON."""


def check_run_values(values: dict[str, JsonValue]) -> dict[str, JsonValue]:
    _within(
        json_bytes(values),
        MAX_RUN_VALUES_BYTES,
        "{size} bytes of JSON, over the {limit} byte limit",
    )
    return values


RunValues = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=128)], ResumeValue],
    AfterValidator(check_run_values),
    Field(
        max_length=MAX_RUN_VALUES_KEYS,
        description="Values for the graph by name, at most 64 and 16 KB of JSON; only the "
        "names the app allows callers to set (its context_from_callers or "
        "configurable_from_callers).",
    ),
]


class ResumeAnswer(BaseModel):
    """A human's answer to an :class:`~events.outbound.InterruptRequest`: the value the
    graph's ``interrupt()`` call returns when the turn resumes."""

    model_config = ConfigDict(extra="forbid")

    interrupt_id: str = Field(min_length=1, max_length=200)
    value: ResumeValue


class ApprovalDecision(BaseModel):
    """A human's answer to an :class:`~events.outbound.ApprovalRequest`."""

    model_config = ConfigDict(extra="forbid")

    interrupt_id: str = Field(min_length=1, max_length=200)
    approved: bool
    reason: str = Field(default="", max_length=2000)


class InboundMessage(BaseModel):
    """One message for a conversation, whatever transport brought it."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: ConversationId
    message_id: str = Field(default_factory=new_id, min_length=1, max_length=200)
    dedupe_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Source message id; a repeat with the same key is dropped. "
        "Defaults to message_id.",
    )
    kind: Literal["user", "approval", "resume"] = "user"
    text: MessageText = Field(default="", validate_default=True)
    approval: ApprovalDecision | None = Field(default=None, validate_default=True)
    resume: ResumeAnswer | None = Field(default=None, validate_default=True)
    channel: Channel = "api"
    sender: str = Field(default="anonymous", min_length=1, max_length=256)
    sender_roles: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=64,
        description="The sender's roles when the message was accepted (set from the "
        "principal; a trusted backend names them): an answer is authorized against them "
        "when its turn is planned.",
    )
    vouched_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The trusted backend that spoke for the sender (set by the core, never "
        "by a client): approval policies take the roles it vouches for.",
    )
    tenant: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The tenant a conversation this message creates belongs to (set from the "
        "sender's principal; a trusted backend may name it).",
    )
    owner: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The owner a conversation this message creates gets (the sender, or the "
        "group it speaks in, such as a Slack channel).",
    )
    policy: DoubleTextingPolicy | None = Field(
        default=None, description="Sets the conversation's double-texting policy."
    )
    metadata: Metadata = Field(default_factory=dict)
    context: RunValues | None = Field(
        default=None, description="Runtime context fields for this message's turn."
    )
    configurable: RunValues | None = Field(
        default=None, description="config['configurable'] values for this message's turn."
    )
    received_at: datetime = Field(default_factory=utcnow)

    @field_validator("text", mode="after")
    @classmethod
    def _user_needs_text(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("kind", "user") == "user":
            require_text(value)
        return value

    @field_validator("approval", mode="after")
    @classmethod
    def _approval_needs_decision(
        cls, value: ApprovalDecision | None, info: ValidationInfo
    ) -> ApprovalDecision | None:
        if info.data.get("kind") == "approval" and value is None:
            raise PydanticCustomError("missing", "an approval message needs 'approval'")
        return value

    @field_validator("resume", mode="after")
    @classmethod
    def _resume_needs_answer(
        cls, value: ResumeAnswer | None, info: ValidationInfo
    ) -> ResumeAnswer | None:
        if info.data.get("kind") == "resume" and value is None:
            raise PydanticCustomError("missing", "a resume message needs 'resume'")
        return value

    @property
    def answers(self) -> str | None:
        """The interrupt id this message answers (an approval or a resume), else ``None``."""
        if self.approval is not None:
            return self.approval.interrupt_id
        if self.resume is not None:
            return self.resume.interrupt_id
        return None

    @property
    def effective_dedupe_key(self) -> str:
        """The given key; for a decision or an answer ``decision:<interrupt id>`` (the first
        answer to an interrupt wins, whatever transport repeats it); else the message id."""
        if self.dedupe_key:
            return self.dedupe_key
        if self.answers is not None:
            return f"decision:{self.answers}"
        return self.message_id


class ConversationValuesRequest(BaseModel):
    """``PATCH /v1/conversations/{id}``: change the conversation's own values, which every
    later turn runs with under its messages' own. Each key given is set; a key set to
    ``null`` is removed; keys not given stay."""

    model_config = ConfigDict(extra="forbid")

    context: RunValues = Field(
        default_factory=dict,
        description="Runtime context fields (only those the app lets callers set).",
    )
    configurable: RunValues = Field(
        default_factory=dict,
        description="config['configurable'] keys (only those the app lets callers set).",
    )
    metadata: RunValues = Field(
        default_factory=dict,
        description="The conversation's metadata (any JSON): config['metadata'] of its runs.",
    )


class MessageRequest(BaseModel):
    """Body of ``POST /v1/conversations/{id}/messages``."""

    model_config = ConfigDict(extra="forbid")

    approval: ApprovalDecision | None = None
    resume: ResumeAnswer | None = None
    text: MessageText = Field(default="", validate_default=True)
    dedupe_key: str | None = Field(default=None, min_length=1, max_length=512)
    policy: DoubleTextingPolicy | None = None
    metadata: Metadata = Field(default_factory=dict)
    context: RunValues | None = None
    configurable: RunValues | None = None

    @field_validator("text", mode="after")
    @classmethod
    def _text_unless_answer(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("approval") is None and info.data.get("resume") is None:
            require_text(value)
        return value

    @field_validator("resume", mode="after")
    @classmethod
    def _one_kind(cls, value: ResumeAnswer | None, info: ValidationInfo) -> ResumeAnswer | None:
        if value is not None and info.data.get("approval") is not None:
            raise PydanticCustomError("conflict", "give either 'approval' or 'resume', not both")
        return value

    @property
    def kind(self) -> Literal["user", "approval", "resume"]:
        if self.approval is not None:
            return "approval"
        return "resume" if self.resume is not None else "user"

    def to_inbound(self, conversation_id: str, channel: Channel = "api") -> InboundMessage:
        return InboundMessage(
            conversation_id=conversation_id,
            dedupe_key=self.dedupe_key,
            kind=self.kind,
            text=self.text,
            approval=self.approval,
            resume=self.resume,
            channel=channel,
            policy=self.policy,
            metadata=self.metadata,
            context=self.context,
            configurable=self.configurable,
        )


def _check_score(score: int) -> int:
    if score not in (1, -1):
        raise PydanticCustomError("literal_error", "Input should be 1 or -1")
    return score


FeedbackScore = Annotated[
    StrictInt,
    AfterValidator(_check_score),
    Field(description="1: thumbs up, -1: thumbs down (an integer, not a bool or a string)"),
]
MAX_FEEDBACK_COMMENT = 2000
"""Longest feedback comment, in characters."""
ReplyId = Annotated[str, Field(min_length=1, max_length=200, description="the rated reply")]
FeedbackComment = Annotated[str, Field(max_length=MAX_FEEDBACK_COMMENT)]


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/conversations/{id}/feedback``: a rating of one reply."""

    model_config = ConfigDict(extra="forbid")

    reply_id: ReplyId
    score: FeedbackScore
    comment: FeedbackComment | None = None


class SlackRating(BaseModel):
    """A Slack member's thumb on one of the app's replies, or its withdrawal (the reaction
    removed): what the AWS ``slack`` function hands the ``feedback`` function, in an
    asynchronous invocation ``{"slack_rating": ...}`` only the slack function's role may
    make. Recorded as ``POST .../feedback`` records a rating."""

    model_config = ConfigDict(extra="forbid")

    principal: Principal
    conversation_id: ConversationId
    reply_id: ReplyId
    score: FeedbackScore
    withdrawn: bool = False


# --- WebSocket frames (embedded server and API Gateway WebSocket `$default`) ---------------


class WsSubscribe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["subscribe"]
    conversation_id: ConversationId


class WsSend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["send"]
    conversation_id: ConversationId
    text: Annotated[MessageText, AfterValidator(require_text)]
    dedupe_key: str | None = Field(default=None, min_length=1, max_length=512)
    policy: DoubleTextingPolicy | None = None
    metadata: Metadata = Field(default_factory=dict)
    context: RunValues | None = None
    configurable: RunValues | None = None

    def to_inbound(self) -> InboundMessage:
        return InboundMessage(
            conversation_id=self.conversation_id,
            dedupe_key=self.dedupe_key,
            text=self.text,
            channel="websocket",
            policy=self.policy,
            metadata=self.metadata,
            context=self.context,
            configurable=self.configurable,
        )


class WsDecide(BaseModel):
    """``approve`` or ``deny`` a pending tool call."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["approve", "deny"]
    conversation_id: ConversationId
    interrupt_id: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)

    def to_inbound(self) -> InboundMessage:
        return InboundMessage(
            conversation_id=self.conversation_id,
            kind="approval",
            approval=ApprovalDecision(
                interrupt_id=self.interrupt_id,
                approved=self.action == "approve",
                reason=self.reason,
            ),
            channel="websocket",
        )


class WsResume(BaseModel):
    """Answer a pending ``interrupt()`` with a JSON value."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["resume"]
    conversation_id: ConversationId
    interrupt_id: str = Field(min_length=1, max_length=200)
    value: ResumeValue

    def to_inbound(self) -> InboundMessage:
        return InboundMessage(
            conversation_id=self.conversation_id,
            kind="resume",
            resume=ResumeAnswer(interrupt_id=self.interrupt_id, value=self.value),
            channel="websocket",
        )


class WsFeedback(BaseModel):
    """Rate a reply (thumbs up or down), as ``POST /v1/conversations/{id}/feedback`` does."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["feedback"]
    conversation_id: ConversationId
    reply_id: ReplyId
    score: FeedbackScore
    comment: FeedbackComment | None = None


class WsPing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["ping"]


class WsCancel(BaseModel):
    """Stop the conversation's running turn (``POST /v1/conversations/{id}/cancel``)."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["cancel"]
    conversation_id: ConversationId


WsFrame = Annotated[
    WsSubscribe | WsSend | WsDecide | WsResume | WsFeedback | WsPing | WsCancel,
    Field(discriminator="action"),
]
WS_ACTIONS = ("subscribe", "send", "approve", "deny", "resume", "feedback", "ping", "cancel")


# --- Queue and bus envelopes --------------------------------------------------------------


def _with_defaults(data: dict[str, Any], **defaults: str) -> dict[str, Any]:
    """``data`` with ``defaults`` for the fields it leaves out or sets to null."""
    return {**data, **{k: v for k, v in defaults.items() if data.get(k) is None}}


def sqs_dedupe_key(sqs_message_id: str) -> str:
    """The dedupe key of a queued message whose body names none: its SQS message id (SQS
    redelivers it with the same id; a dead letter keeps it)."""
    return f"sqs:{sqs_message_id}"


class SqsRecord(BaseModel):
    """One record of an SQS event; its ``body`` is an :class:`InboundMessage` as JSON."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    message_id: str = Field(alias="messageId")
    body: str
    attributes: dict[str, Any] = Field(default_factory=dict)
    event_source_arn: str = Field(default="", alias="eventSourceARN")

    def to_inbound(self) -> InboundMessage:
        data = parse_json(self.body, what="SQS body")
        if not isinstance(data, dict):
            raise ValueError("SQS body must be a JSON object")
        # The queue's own message id is a dedupe key of last resort (SQS redelivers it).
        return InboundMessage.model_validate(
            _with_defaults(data, channel="sqs", dedupe_key=sqs_dedupe_key(self.message_id))
        )


class SqsEvent(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    records: list[SqsRecord] = Field(alias="Records")


MESSAGE_DETAIL_TYPE = "agentworker.message"
"""EventBridge detail type of a message for the agent (detail: an InboundMessage)."""
TICKET_DETAIL_TYPE_PREFIX = "ticket."
"""EventBridge detail types of support-ticket events: ``ticket.created`` and the others of
:class:`TicketEvent` (detail: the ticket event without ``event``, which is the type)."""


class EventBridgeEvent(BaseModel):
    """An EventBridge event: a message for the agent (detail-type ``agentworker.message``) or
    a support-ticket event (``ticket.*``)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    detail_type: str = Field(alias="detail-type")
    source: str
    detail: dict[str, Any]

    def to_inbound(self) -> InboundMessage:
        """The message this event carries; ``ValueError`` for a detail type of neither kind
        (a ``ValidationError`` for a malformed detail)."""
        if self.detail_type.startswith(TICKET_DETAIL_TYPE_PREFIX):
            ticket = {"event_id": self.id, **self.detail, "event": self.detail_type}
            return TicketEvent.model_validate(ticket).to_inbound()
        if self.detail_type != MESSAGE_DETAIL_TYPE:
            raise ValueError(f"unexpected detail-type {self.detail_type!r}")
        defaults = {"channel": "eventbridge", "dedupe_key": f"eventbridge:{self.id}"}
        return InboundMessage.model_validate(_with_defaults(self.detail, **defaults))


class TicketEvent(BaseModel):
    """A support-ticket system event (``ticket.created`` / ``ticket.updated``)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["ticket.created", "ticket.updated", "ticket.commented"]
    ticket_id: str = Field(min_length=1, max_length=100)
    event_id: str = Field(min_length=1, max_length=200)
    author: str = Field(default="customer", min_length=1, max_length=200)
    subject: str = Field(default="", max_length=1000)
    body: MessageText

    def to_inbound(self) -> InboundMessage:
        text = f"{self.subject}\n\n{self.body}".strip() if self.subject else self.body
        return InboundMessage(
            conversation_id=f"ticket:{self.ticket_id}",
            dedupe_key=f"ticket:{self.event_id}",
            text=text,
            channel="ticket",
            sender=self.author,
            metadata={"ticket_event": self.event},
        )


# --- Slack ---------------------------------------------------------------------------------


class SlackMessageEvent(BaseModel):
    """The ``event`` of an Events API ``event_callback`` (``message`` / ``app_mention``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    channel: str
    ts: str
    text: str = ""
    user: str | None = None
    bot_id: str | None = None
    subtype: str | None = None
    thread_ts: str | None = None


class SlackEventEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["event_callback"]
    team_id: str
    event_id: str
    event: SlackMessageEvent

    def is_from_bot(self) -> bool:
        return self.event.bot_id is not None or self.event.subtype == "bot_message"

    def principal(self) -> Principal:
        """The sender, as the signed request proves them: a member of its channel
        (``ValueError`` for a message without a user: nobody to act as)."""
        if not self.event.user:
            raise ValueError("event.user: a message from a person names them")
        return slack_principal(self.team_id, self.event.user, self.event.channel)

    def to_inbound(self) -> InboundMessage:
        ev = self.event
        root_ts = ev.thread_ts or ev.ts
        return InboundMessage(
            conversation_id=f"slack:{self.team_id}:{ev.channel}:{root_ts}",
            # channel+ts, not event_id: Slack retries a delivery with a new event id.
            dedupe_key=f"slack:{ev.channel}:{ev.ts}",
            text=_without_leading_mentions(ev.text),
            channel="slack",
            metadata={"slack_channel": ev.channel, "slack_thread_ts": root_ts},
        )


_LEADING_MENTIONS = re.compile(r"^(?:\s*<@[A-Z0-9]+(?:\|[^>]*)?>)+\s*")


def _without_leading_mentions(text: str) -> str:
    """``<@U111> hey`` -> ``hey``: the mention that addressed the bot is not the question (a
    bare mention stays as it is)."""
    return _LEADING_MENTIONS.sub("", text) or text


def slack_principal(team: str, user: str, channel: str) -> Principal:
    """``slack:<team>:<user>`` of tenant ``slack:<team>``, acting in the channel it wrote
    from: the conversations of that channel are theirs (owner ``slack:<team>:<channel>``)."""
    return Principal(
        id=f"slack:{team}:{user}",
        tenant=slack_tenant(team),
        groups=frozenset({slack_channel_owner(team, channel)}),
    )


def slack_tenant(team: str) -> str:
    """The tenant of a Slack workspace's members and conversations."""
    return f"slack:{team}"


def slack_channel_owner(team: str, channel: str) -> str:
    """The owner of a Slack conversation: its channel (everyone there shares it)."""
    return f"slack:{team}:{channel}"


def is_slack_conversation(conversation_id: str) -> bool:
    """Whether ``conversation_id`` is a Slack thread (``slack:<team>:<channel>:<thread ts>``)."""
    return conversation_id.startswith("slack:") and conversation_id.count(":") == 3


def slack_thread_of(conversation_id: str) -> tuple[str, str, str]:
    """``(team, channel, thread_ts)`` of a Slack conversation id; ``ValueError`` otherwise."""
    if not is_slack_conversation(conversation_id):
        raise ValueError(f"not a Slack conversation: {conversation_id!r}")
    _, team, channel, thread_ts = conversation_id.split(":")
    return team, channel, thread_ts


# Approval buttons. The Slack sink renders an ApprovalRequest with two buttons whose
# ``action_id`` is the decision and whose ``value`` is ``<conversation_id>|<interrupt_id>``:
# a conversation id never contains ``|`` (see CONVERSATION_ID_PATTERN), so the first ``|``
# splits them, and Slack hands the value back unchanged in the signed ``block_actions``
# request. The conversation's channel must match the channel the click came from.
SLACK_APPROVE_ACTION = "approve"
SLACK_DENY_ACTION = "deny"
SLACK_BUTTON_VALUE_MAX = 2000
"""Slack's limit on a button's ``value``."""


def slack_button_value(conversation_id: str, interrupt_id: str) -> str:
    """The ``value`` of the approve/deny buttons of an approval request."""
    value = f"{conversation_id}|{interrupt_id}"
    if len(value) > SLACK_BUTTON_VALUE_MAX:
        raise ValueError(f"button value is {len(value)} characters, over Slack's 2000")
    return value


class SlackUserRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200)


class SlackChannelRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200)


class SlackTeamRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200)


class SlackAction(BaseModel):
    """One element of ``block_actions.actions`` (a button click)."""

    model_config = ConfigDict(extra="allow")

    action_id: str
    type: str = ""
    value: str = ""


class SlackBlockActions(BaseModel):
    """An interactivity ``block_actions`` payload (the JSON of the form field ``payload``)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["block_actions"]
    user: SlackUserRef
    team: SlackTeamRef
    channel: SlackChannelRef | None = None
    actions: list[SlackAction]

    def principal(self) -> Principal:
        """Who clicked, in the channel they clicked in (``ValueError`` without a channel:
        a click outside a channel answers no conversation of ours)."""
        if self.channel is None:
            raise ValueError("channel: a click on an approval button comes from a channel")
        return slack_principal(self.team.id, self.user.id, self.channel.id)

    def decision(self) -> InboundMessage | None:
        """The approval InboundMessage of an approve/deny click on one of our buttons;
        ``None`` for any other action. ``ValueError`` for a malformed value, or a click
        from another workspace or channel than the conversation's (the core checks the
        clicker's access again)."""
        action = next(
            (a for a in self.actions if a.action_id in (SLACK_APPROVE_ACTION, SLACK_DENY_ACTION)),
            None,
        )
        if action is None:
            return None
        conversation_id, sep, interrupt_id = action.value.partition("|")
        if not sep or not interrupt_id:
            raise ValueError("actions.value: expected '<conversation_id>|<interrupt_id>'")
        team, channel, _ = slack_thread_of(conversation_id)
        clicked_in = self.principal().groups
        if slack_channel_owner(team, channel) not in clicked_in:
            raise ValueError(
                f"actions.value: conversation of {team}/{channel},"
                f" clicked in {self.team.id}/{self.channel.id if self.channel else None}"
            )
        return InboundMessage(
            conversation_id=conversation_id,
            kind="approval",
            approval=ApprovalDecision(
                interrupt_id=interrupt_id, approved=action.action_id == SLACK_APPROVE_ACTION
            ),
            channel="slack",
        )


class SlackUrlVerification(BaseModel):
    """The Events API handshake: answer with ``challenge``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["url_verification"]
    challenge: str = Field(min_length=1, max_length=1000)
