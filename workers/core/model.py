"""Plain records the core passes to and from its ports."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from events.identity import identity_key
from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import (
    AcceptedView,
    ApprovalRequest,
    InterruptRequest,
    OutboxPayload,
    TokenUsage,
)
from workers.costs import Cost

PendingRequest = ApprovalRequest | InterruptRequest
"""What a conversation in status ``awaiting_approval`` waits for: a tool approval or the
answer to an ``interrupt()`` (the status name predates generic interrupts)."""

ConversationStatus = Literal["idle", "running", "awaiting_approval"]
InboxStatus = Literal["pending", "consumed", "rejected", "failed", "redriven"]
"""``pending`` until a turn takes it; then ``consumed``, or ``failed`` when its turn failed
for good (retries spent, a permanent error: the sender got an error notice). ``rejected``:
refused at accept time by the double-texting policy. ``redriven``: a failed message accepted
again as a new one (``agentworker dlq redrive``, embedded runtime)."""


@dataclass(frozen=True)
class AcceptResult:
    """Outcome of appending a message to a conversation's inbox."""

    message_id: str
    seq: int
    duplicate: bool
    rejected: bool = False
    lease: Lease | None = None
    """The lease, when the same write took it (asked for, and no run held one): the caller
    starts a run with its token."""

    def view(self, conversation_id: str) -> AcceptedView:
        """The answer every transport gives (HTTP 202, WebSocket ``accepted`` frame)."""
        return AcceptedView(
            conversation_id=conversation_id,
            message_id=self.message_id,
            seq=self.seq,
            duplicate=self.duplicate,
            rejected=self.rejected,
        )


@dataclass(frozen=True)
class Access:
    """What a conversation must belong to for a caller to use it: ``tenant``, and one of
    ``owners``. Built by :func:`~workers.core.policies.access_for` and
    :func:`~workers.core.policies.append_access`; a store applies it in the write that
    appends a message (``NotFound`` otherwise, nothing written)."""

    tenant: str | None
    """``None``: conversations a trusted backend created without naming a tenant."""
    owners: frozenset[str] | None
    """``None``: any owner in the tenant (a principal with a tenant-wide role)."""
    create: bool = True
    """Whether the append may create the conversation (``False``: an id in a namespace the
    caller may not create in; a missing conversation is then ``NotFound``)."""

    def admits(self, tenant: str | None, owner: str | None) -> bool:
        return tenant == self.tenant and (self.owners is None or owner in self.owners)


def admitted(access: Access, owned: tuple[str | None, str | None] | None) -> bool:
    """Whether an append under ``access`` may go to a conversation owned by ``owned``
    (its tenant and owner; ``None``: it does not exist, and the append would create it).
    Every store decides with this, in its append's write."""
    if owned is None:
        return access.create
    return access.admits(*owned)


@dataclass(frozen=True)
class Lease:
    conversation_id: str
    token: int
    expires_at: float
    execution_id: str | None = None


@dataclass(frozen=True)
class InboxEntry:
    seq: int
    message: InboundMessage
    status: InboxStatus = "pending"
    error: str | None = None
    """Why its turn failed (status ``failed``, and ``redriven`` after it)."""


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    payload: OutboxPayload
    delivered: bool = False
    sinks_done: frozenset[str] = frozenset()
    """The sinks that already took it (a retry after a partial delivery skips them)."""


@dataclass(frozen=True)
class LogEntry:
    """One message of the conversation's append-only log (opaque to the core)."""

    message_id: str
    role: str
    data: bytes


@dataclass(frozen=True)
class CallerValues:
    """What callers ask of the graph's runs: runtime ``context`` fields and ``configurable``
    keys the app lets callers set, and ``metadata`` (the run's ``config["metadata"]``).
    A conversation keeps its own (``PATCH /v1/conversations/{id}``, a thread's metadata);
    a turn's messages add theirs on top, a later message's value winning."""

    context: Mapping[str, object] = field(default_factory=dict)
    configurable: Mapping[str, object] = field(default_factory=dict)
    metadata: Mapping[str, object] = field(default_factory=dict)

    def over(self, base: CallerValues) -> CallerValues:
        """These values on top of ``base``'s (a key here wins)."""
        return CallerValues(
            {**base.context, **self.context},
            {**base.configurable, **self.configurable},
            {**base.metadata, **self.metadata},
        )

    def changed(self, change: CallerValues) -> CallerValues:
        """These values with ``change``'s keys set, and those it sets to ``None`` removed."""

        def apply(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, object]:
            merged = {**old, **new}
            return {k: v for k, v in merged.items() if v is not None}

        return CallerValues(
            apply(self.context, change.context),
            apply(self.configurable, change.configurable),
            apply(self.metadata, change.metadata),
        )

    def to_json(self) -> str | None:
        """As stored with the conversation (``None`` when empty)."""
        if not (self.context or self.configurable or self.metadata):
            return None
        return json.dumps(
            {
                "context": dict(self.context),
                "configurable": dict(self.configurable),
                "metadata": dict(self.metadata),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> CallerValues:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data["context"], data["configurable"], data["metadata"])


@dataclass(frozen=True)
class ConversationSummary:
    """A conversation as a list of them shows it (``GET /v1/conversations``)."""

    conversation_id: str
    status: ConversationStatus
    created_at: float
    updated_at: float
    """Its last activity: a message accepted, a turn committed, its values changed."""
    values: CallerValues = field(default_factory=CallerValues)


@dataclass(frozen=True)
class ConversationState:
    conversation_id: str
    policy: DoubleTextingPolicy
    status: ConversationStatus
    inbox_seq: int
    last_token: int
    lease_token: int | None
    lease_expires_at: float | None
    lease_execution_id: str | None
    pending_approval: PendingRequest | None
    created_at: float
    updated_at: float
    approval_task_token: str | None = None
    """Set while a Standard run waits inside its execution for this conversation's approval."""
    pending_count: int | None = None
    """Pending inbox entries, where the store keeps the count with the state (``None``: it
    does not). A claim that sees 0 skips reading the inbox."""
    undelivered_count: int | None = None
    """Outbox entries not delivered yet, where the store keeps the count (``None``: it does
    not). A turn that sees 0 sends what it wrote without reading the outbox back."""
    claimed_seq: int | None = None
    """The inbox sequence the last claim saw, until a commit or a release follows it: while
    set, the messages up to it were handed to a turn that did not finish (a failure notice
    may name them); unset, the last claimed turn committed."""
    tenant: str | None = None
    """The tenant the conversation belongs to, recorded at creation (``None``: created by a
    backend that named none; only trusted backends reach it)."""
    owner: str | None = None
    """Its owner within the tenant: the creating principal, or the group it acted for (a
    Slack channel)."""
    values: CallerValues = field(default_factory=CallerValues)
    """The conversation's own context, configurable values and metadata, under those of
    each turn's messages."""

    @property
    def customer(self) -> str:
        """Who the conversation serves, for what its tools keep (tickets): its tenant and
        owner, or the conversation itself when a backend created it without them (an empty
        tenant part, which no principal has). One :func:`~events.identity.identity_key`, so
        no two of them read alike."""
        if self.tenant is None:
            return identity_key("", self.conversation_id)
        return identity_key(self.tenant, self.owner or "")

    def lease_live(self, now: float) -> bool:
        return self.lease_token is not None and (self.lease_expires_at or 0.0) > now


@dataclass(frozen=True)
class PendingWork:
    """What a claim reads: the pending inbox (oldest first) and what a turn starts from, the
    checkpoint and the last log entries (oldest first)."""

    inbox: list[InboxEntry]
    checkpoint: bytes | None = None
    history: list[LogEntry] = field(default_factory=list)


@dataclass(frozen=True)
class TurnCommit:
    """Everything one turn writes, applied atomically only while ``token`` holds the lease."""

    token: int
    consumed: list[int]
    status: ConversationStatus
    checkpoint: bytes | None = None
    log: Sequence[LogEntry] = field(default_factory=list)
    outbox: Sequence[OutboxPayload] = field(default_factory=list)
    pending_approval: PendingRequest | None = None
    expect_inbox_seq: int | None = None
    """If set, refuse the commit (``TurnSuperseded``) when the inbox moved past it."""
    lease_until: float | None = None
    """If set, the lease is extended to this time in the same write: the run that just
    committed delivers and marks within its lease, and the sweeper cannot take the
    conversation over between its commit and its marks (which would send it twice)."""
    failed: str | None = None
    """Set when the turn failed for good: the error its ``consumed`` entries are kept with,
    marked ``failed`` instead of ``consumed``."""


@dataclass(frozen=True)
class History:
    state: ConversationState
    inbox: list[InboxEntry]
    outbox: list[OutboxEntry]


@dataclass(frozen=True)
class Ticket:
    ticket_id: int
    conversation_id: str
    subject: str
    body: str
    status: str
    priority: str
    created_at: float
    updated_at: float
    comments: list[str] = field(default_factory=list)
    customer: str = ""
    """Whose ticket it is (:attr:`ConversationState.customer` of the conversation that opened
    it): the ticket tools see only the current conversation's customer's tickets."""

    def of(self, customer: str) -> Ticket | None:
        """This ticket if it is ``customer``'s, else ``None`` (told as "does not exist")."""
        return self if self.customer == customer else None


@dataclass(frozen=True)
class TurnInput:
    """One user message a turn consumes (it becomes a ``HumanMessage`` with the same id)."""

    message_id: str
    text: str
    sender: str = "anonymous"


@dataclass(frozen=True)
class CustomData:
    """What a graph's node wrote to its custom stream (``get_stream_writer()``), as JSON:
    streamed to the clients that stream (a ``custom`` frame), not part of the reply."""

    data: object


@dataclass(frozen=True)
class ToolsStarting:
    """The graph is about to run these tools (a model asked for them): what a client shows
    while the turn works ("running lookup_ticket")."""

    tools: tuple[str, ...]


@dataclass(frozen=True)
class MessageStarts:
    """The reply's text that streams next is the AI message ``message_id``'s (``None``:
    the separator between two messages)."""

    message_id: str | None
    node: str | None = None
    """The graph's node that wrote the message (LangGraph's ``langgraph_node``)."""


@dataclass(frozen=True)
class NodeUpdate:
    """What one node of the graph returned (LangGraph's ``updates`` stream mode), as JSON:
    streamed to the clients that ask for it (the Agent Server API's ``updates``)."""

    node: str
    data: object


StreamPart = str | CustomData | ToolsStarting | MessageStarts | NodeUpdate
"""What a turn streams: a piece of the reply's text, the app's custom data, the tools it
is about to run, or what a node returned."""


@dataclass(frozen=True)
class ResumeRecord:
    """The answer a turn resumes an ``interrupt()`` with: for a tool approval the value is
    ``{"approved": bool, "reason": str}``, for any other interrupt the human's JSON value."""

    interrupt_id: str
    value: object


@dataclass(frozen=True)
class TurnRequest:
    """What the agent needs to run one turn; built by the core from the store."""

    conversation_id: str
    turn_id: str
    channel: str
    inputs: list[TurnInput]
    resume: ResumeRecord | None
    checkpoint: bytes | None
    history: list[LogEntry]
    message_ids: list[str] = field(default_factory=list)
    """The inbox messages this turn consumes (part of the tools' idempotency keys)."""
    customer: str = ""
    """Who the conversation serves (:attr:`ConversationState.customer`): tools scope what
    they read and write to it."""
    caller: CallerValues = field(default_factory=CallerValues)

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.inputs]


@dataclass(frozen=True)
class ToolApproval:
    """A tool call waiting for approve/deny (the form ``request_approval`` interrupts with)."""

    tool: str
    args: dict[str, object]
    text: str


@dataclass(frozen=True)
class PendingInterrupt:
    """The ``interrupt()`` a turn stopped at: a tool approval, or any JSON ``value``."""

    interrupt_id: str
    value: object
    text: str
    approval: ToolApproval | None = None


@dataclass(frozen=True)
class ModelGuardrail:
    """A model provider's own guardrail intervened on one model call of a turn (Bedrock
    Guardrails: ``stopReason`` ``guardrail_intervened``); the reply is its canned text."""

    provider: str
    stage: Literal["input", "output"]
    """What it assessed: the request (the model was not called) or the model's output."""
    policies: tuple[str, ...] = ()
    """The policies that acted (``topicPolicy``, ``wordPolicy``...), when traced."""


@dataclass(frozen=True)
class TurnOutput:
    """What one agent turn produced; persisted by the core in one fenced commit."""

    checkpoint: bytes
    log: list[LogEntry]
    reply_text: str | None
    interrupt: PendingInterrupt | None
    usage: TokenUsage
    model_calls: int = 0
    tool_calls: list[str] = field(default_factory=list)
    guardrails: tuple[ModelGuardrail, ...] = ()
    """The model provider's guardrail interventions during the turn."""
    cost: Cost | None = None
    """What the turn's model calls cost (``None``: a model without a price was called)."""
    time_to_first_token_ms: float | None = None
    """From the start of the turn to its first streamed token (``None``: nothing streamed)."""
    model_throttles: int = 0
    """Model calls the provider throttled (each one failed the call)."""
    status: str | None = None
    """What the graph said of the matter (``set_status``), carried by the turn's reply."""


ScheduleSource = Literal["api", "agent"]
DONE_KEPT_SECONDS = 7 * 86_400
"""How long a one-off that fired is kept (not listed, not armed): the request that made it,
sent again with its dedupe key, finds it and makes no second one."""


@dataclass(frozen=True)
class Schedule:
    """A message to post into a conversation later: once (``cron`` is ``None``) or on a cron
    expression in ``timezone``. It belongs to the conversation (its owner): whoever may use
    the conversation may list and delete it; erasing the conversation erases it."""

    schedule_id: str
    conversation_id: str
    text: str
    next_fire: float | None
    """When it fires next (epoch seconds); ``None``: a one-off that fired."""
    created_at: float
    created_by: str
    """The principal who made it (the sender of what it posts; the agent's: ``agent``)."""
    creator_tenant: str
    tenant: str | None = None
    owner: str | None = None
    """The conversation's tenant and owner when it was made: it fires only into that
    conversation (one erased and made again by someone else under the id is not it)."""
    creator_roles: tuple[str, ...] = ()
    creator_service: bool = False
    """Made by a trusted backend or by the agent: no user's quota is spent when it fires."""
    cron: str | None = None
    timezone: str = "UTC"
    source: ScheduleSource = "api"
    metadata: Mapping[str, str] = field(default_factory=dict)
    fired: int = 0
    last_fired_at: float | None = None
    last_outcome: str | None = None
    """What its last firing did: ``accepted``, ``duplicate`` (fired before, e.g. by a process
    that crashed before recording it), ``throttled: ...``, ``refused: ...``."""

    def after_firing(self, next_fire: float | None, outcome: str, now: float) -> Schedule:
        """This schedule once it fired: due next at ``next_fire`` (``None``: done)."""
        return replace(
            self,
            next_fire=next_fire,
            fired=self.fired + 1,
            last_fired_at=now,
            last_outcome=outcome[:500],
        )

    def to_json(self) -> str:
        """The schedule as JSON (how both runtimes store it)."""
        fields = dict(vars(self))
        fields["creator_roles"] = list(self.creator_roles)
        fields["metadata"] = dict(self.metadata)
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        fields = json.loads(text)
        fields["creator_roles"] = tuple(fields.get("creator_roles") or ())
        return cls(**fields)

    def dedupe_key(self, occurrence: float) -> str:
        """The inbox dedupe key of its firing at ``occurrence``: a firing repeated (a crash
        before it was recorded, a redelivered EventBridge Scheduler invocation) is dropped."""
        return f"schedule:{self.schedule_id}:{int(occurrence)}"


@dataclass(frozen=True)
class ConversationWebhook:
    """A receiver of one conversation's events, made by a caller who may use it: erased
    with the conversation. Its URL is the caller's, so it is only ever posted to a public
    address (unless the runtime is told otherwise, for development)."""

    webhook_id: str
    conversation_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_by: str
    created_at: float
    tenant: str | None = None
    owner: str | None = None
    """The conversation's tenant and owner when it was made: its deliveries go only while
    the conversation is still theirs (not one expired and made again by someone else under
    the id, which the AWS runtime's TTL could leave it beside)."""

    def to_json(self) -> str:
        """The subscription as JSON (how the AWS runtime stores it)."""
        fields = dict(vars(self))
        fields["events"] = list(self.events)
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ConversationWebhook:
        fields = json.loads(text)
        fields["events"] = tuple(fields.get("events") or ())
        return cls(**fields)
