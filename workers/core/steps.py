"""The five steps of the turn contract, shared by the embedded and the AWS runtime.

``accept_message`` -> ``claim_inbox`` (the first one binds the run) -> ``advance_turn``
(commit, then deliver what it wrote) -> ``finish_turn`` (release the lease when nothing is
left, or loop). ``run_step`` is one step of the workflow's loop; ``drive_run`` runs a whole
run in one process, for the embedded runtime.

Store round trips of a one-message turn: the accept (and its lease) is one write; the run
renews the lease (binding it), reads the pending inbox with the checkpoint and the log
window, commits, and releases the lease with the delivery marks: four.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal, TypeVar, cast

from pydantic import JsonValue

from events.identity import ApprovalPolicy, Principal, identity_key
from events.inbound import (
    MAX_RUN_VALUES_BYTES,
    MAX_RUN_VALUES_KEYS,
    DoubleTextingPolicy,
    InboundMessage,
    json_bytes,
    new_id,
)
from events.outbound import (
    MAX_UPDATE_BYTES,
    ApprovalRequest,
    CustomChunk,
    GraphStateView,
    InterruptRequest,
    Notice,
    OutboxPayload,
    Reply,
    ReplyChunk,
    StatusChunk,
    UpdateChunk,
)
from events.workflow import FinishResult, RunRef, StepResult, TurnOutcome
from workers.core import figures
from workers.core.figures import as_tag_attributes, turn_figures, usage_attribute
from workers.core.guard import (
    BLOCKED,
    GuardPolicy,
    StreamGuard,
    Verdict,
    guard_input,
    guard_output,
    notice_text,
    pii_values,
)
from workers.core.model import (
    AcceptResult,
    CallerValues,
    ConversationState,
    ConversationStatus,
    ConversationSummary,
    CustomData,
    History,
    MessageStarts,
    NodeUpdate,
    OutboxEntry,
    PendingInterrupt,
    PendingRequest,
    PendingWork,
    ResumeRecord,
    StreamPart,
    ToolsStarting,
    TurnCommit,
    TurnInput,
    TurnOutput,
    TurnRequest,
)
from workers.core.policies import (
    TurnPlan,
    append_access,
    as_sent_by,
    authorize_answer,
    backoff_delay,
    classify_error,
    may_access,
    plan_turn,
)
from workers.core.ports import (
    REDELIVERY,
    Cancellations,
    Clock,
    ConversationStore,
    ConversationWebhooks,
    MemoryEraser,
    NullTracer,
    PerSinkDelivery,
    ReplySink,
    Scheduler,
    SpanHandle,
    Tracer,
    TurnAgent,
    WorkflowStarter,
)
from workers.errors import (
    BadInput,
    LeaseLost,
    ModelThrottled,
    NotFound,
    NotRunning,
    NotWaiting,
    PartialDelivery,
    PermanentError,
    RetryableError,
    Throttled,
    TurnCancelled,
    TurnSuperseded,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_REPLY_NOTICE = "The agent finished without a reply."
"""Told the sender of a turn whose graph ended without a new AI message with text."""


@dataclass(frozen=True)
class TurnSettings:
    lease_ttl: float = 60.0
    context_window: int = 20
    default_policy: DoubleTextingPolicy = "enqueue"
    max_turns_per_run: int = 50
    max_run_seconds: float | None = None
    approval_wait_seconds: float = 86_400 + 300
    """How long a Standard run holds the lease waiting for an approval (the ASL's
    ``WaitForApproval`` times out after 24 h; the margin covers its last steps)."""
    """Hand over to a fresh run after this long (Express workflows stop at 5 minutes)."""
    retry_attempts: int = 3
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    mark_attempts: int = 4
    """Tries of a delivery mark's write after the send went out (a store throttled for a
    moment must not fail the step: its retry would send the reply again)."""
    mark_base_delay: float = 0.05
    stream: bool = True
    tenant_roles: frozenset[str] = frozenset()
    """Roles whose holders may use every conversation of their tenant (supervisors,
    approvers); others only their own and their groups'."""
    quota_messages_per_minute: int | None = None
    quota_text_bytes_per_day: int | None = None
    retention_seconds: float | None = None
    """Erase conversations idle this long (``None``: keep them)."""
    retention_memories: bool = False
    """With the retention: erase the owner's memories too when it erases a conversation."""
    approval_policies: Mapping[str, ApprovalPolicy] = field(default_factory=dict)
    """Who may decide each tool's approvals (tools not named: anyone in the conversation)."""
    guard: GuardPolicy | None = None
    """The input and output guard of every turn (``None``: off)."""
    trace_tags: Mapping[str, str] = field(default_factory=dict)
    """Tags on every turn's trace from this process, e.g. the served prompt's
    ``prompt_name`` and ``prompt_version`` (the turn's own tags win on a clash)."""
    context_from_callers: frozenset[str] = frozenset()
    """Runtime context fields a caller may set with a message (others: ``BadInput``)."""
    configurable_from_callers: frozenset[str] = frozenset()
    """``configurable`` keys a caller may set with a message."""
    schedules_per_conversation: int = 20
    """Most schedules a conversation keeps (its owner's and its agent's together)."""
    webhook_private_urls: bool = False
    """Let a conversation's webhooks post to loopback, private and link-local addresses and
    over plain http (development only: a caller's URL must not reach inside)."""


@dataclass
class Deps:
    """Everything the steps need, built once per process by the composition root."""

    store: ConversationStore
    agent: TurnAgent
    sink: ReplySink
    starter: WorkflowStarter
    clock: Clock
    tracer: Tracer = field(default_factory=NullTracer)
    settings: TurnSettings = field(default_factory=TurnSettings)
    memories: MemoryEraser | None = None
    """The graphs' long-term memory, to erase a customer's (``None``: this process keeps
    none, and an erasure asked to include them is refused)."""
    cancellations: Cancellations | None = None
    """Tells a cancelled run of this process to stop at its next streamed piece."""
    scheduler: Scheduler | None = None
    """The conversations' schedules (``None``: this process keeps none)."""
    webhooks: ConversationWebhooks | None = None
    """The conversations' own webhook subscriptions (``None``: this runtime has none)."""


# 1. accept ----------------------------------------------------------------------------------


def accept_message(
    deps: Deps, msg: InboundMessage, principal: Principal, *, owner: str | None = None
) -> AcceptResult:
    """Append ``msg`` from ``principal`` to its inbox (deduplicated) and start a run if none
    holds the lease.

    The sender is the principal; a conversation the message creates belongs to the
    principal's tenant and to ``owner`` (default: the principal). A conversation the
    principal may not use is ``NotFound``, as if it did not exist, and nothing is written
    (the store applies the check in the same write). An answer (an approval or a resume
    value) is accepted only while the conversation waits for exactly that interrupt:
    ``NotFound`` for an unknown conversation, ``NotWaiting`` otherwise."""
    msg = as_sent_by(msg, principal, owner=owner)
    access = append_access(principal, msg, deps.settings.tenant_roles)
    check_caller_values(deps.settings, msg.context, msg.configurable)
    check_quotas(deps, principal, msg)
    waiting: ConversationState | None = None
    if msg.answers is not None:
        waiting = visible(deps, deps.store.get_conversation(msg.conversation_id), principal)
        request = check_waiting(waiting, msg)
        authorize_answer(deps.settings.approval_policies, request, msg)
    try:
        result = deps.store.append_inbox(
            msg,
            now=deps.clock.now(),
            default_policy=deps.settings.default_policy,
            lease_ttl=deps.settings.lease_ttl,
            access=access,
        )
    except NotFound:
        if not principal.service:
            raise
        # A trusted backend may know why (users may not: ids must not leak to them).
        raise NotFound(
            f"conversation_id: {msg.conversation_id!r} belongs to another tenant or owner than"
            f" the message names (tenant {msg.tenant!r}, owner {msg.owner!r}): a backend"
            " speaks in a conversation only for its owner",
            field="conversation_id",
        ) from None
    if result.rejected:
        return result
    if result.lease is not None and not result.duplicate:
        deps.starter.start(RunRef(conversation_id=msg.conversation_id, token=result.lease.token))
    elif msg.answers is not None:
        # A Standard run may be waiting inside its execution for exactly this decision; the
        # state the check read already says so, unless the run began to wait meanwhile. A
        # resent answer (the first one's caller died between its append and this resume)
        # resumes too: waking a run that already woke is a no-op, a run never woken would
        # hold the conversation until its wait timed out.
        state = waiting
        if state is None or not state.approval_task_token:
            state = deps.store.get_conversation(msg.conversation_id)
        if state is not None and state.approval_task_token:
            deps.starter.resume(state.approval_task_token)
    return result


def check_caller_values(
    settings: TurnSettings,
    context: Mapping[str, object] | None,
    configurable: Mapping[str, object] | None,
) -> None:
    """``BadInput`` (``not_allowed_field``, naming it) for a ``context`` field or a
    ``configurable`` key the app does not let callers set (a message's, or a
    conversation's own): what its graph runs with is the app's to decide."""
    for what, given, allowed in (
        ("context", context, settings.context_from_callers),
        ("configurable", configurable, settings.configurable_from_callers),
    ):
        refused = sorted(set(given or ()) - allowed)
        if refused:
            may = ", ".join(sorted(allowed)) or "none"
            raise BadInput(
                "not_allowed_field",
                f"{what}.{refused[0]}: the app does not let callers set it (they may set: {may})",
                field=f"{what}.{refused[0]}",
            )


def check_quotas(deps: Deps, principal: Principal, msg: InboundMessage) -> None:
    """``Throttled`` (with the seconds to wait) when the message would take its sender past
    a configured quota: messages per minute, bytes per day (everything of the message a
    user chose: its text, metadata, answer). Trusted backends have none."""
    spend_quotas(deps, principal, messages=1, size=message_bytes(msg))


def message_bytes(msg: InboundMessage) -> int:
    """What a message costs the daily bytes quota: the UTF-8 bytes of its text, its
    metadata's keys and values, an answer's value (as JSON) and reason."""

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass"))

    total = size(msg.text) + sum(size(k) + size(v) for k, v in msg.metadata.items())
    if msg.resume is not None:
        total += size(json.dumps(msg.resume.value, separators=(",", ":")))
    if msg.approval is not None:
        total += size(msg.approval.reason)
    return total


def spend_quotas(deps: Deps, principal: Principal, *, messages: int, size: int) -> None:
    """Spend ``messages`` of the principal's messages per minute and ``size`` bytes of its
    bytes per day (every write a user makes: messages, answers, feedback); ``Throttled``
    when that would go past a configured quota (the quota that refuses spends nothing).
    Trusted backends have none."""
    if principal.service:
        return
    who = identity_key(principal.tenant, principal.id)
    now = deps.clock.now()
    settings = deps.settings
    quotas = (
        ("messages", settings.quota_messages_per_minute, messages, 60.0, "messages per minute"),
        ("text_bytes", settings.quota_text_bytes_per_day, size, 86_400.0, "bytes per day"),
    )
    for name, limit, amount, window, unit in quotas:
        if limit is None or amount == 0:
            continue
        wait = deps.store.spend_quota(
            f"{name}:{who}", amount, limit=limit, window_seconds=window, now=now
        )
        if wait is not None:
            raise Throttled(
                f"quota: {principal.id} may send {limit} {unit}; try again in {wait:.0f} s",
                retry_after=wait,
                field="text" if name == "text_bytes" else None,
            )


def visible(
    deps: Deps, state: ConversationState | None, principal: Principal
) -> ConversationState | None:
    """``state`` if ``principal`` may use the conversation, else ``None`` (it does not exist
    for them: a 404 like an unknown id, so ids do not leak)."""
    if state is None or not may_access(principal, state, deps.settings.tenant_roles):
        return None
    return state


def usable(deps: Deps, conversation_id: str, principal: Principal) -> ConversationState:
    """The conversation's state if ``principal`` may use it; ``NotFound`` otherwise, as for
    an id that does not exist."""
    state = visible(deps, deps.store.get_conversation(conversation_id), principal)
    if state is None:
        raise NotFound.conversation(conversation_id)
    return state


def history(deps: Deps, conversation_id: str, principal: Principal) -> History | None:
    """The conversation's inbox and outbox, or ``None`` if ``principal`` may not see it."""
    found = deps.store.history(conversation_id)
    if found is None or visible(deps, found.state, principal) is None:
        return None
    return found


def set_conversation_values(
    deps: Deps, conversation_id: str, principal: Principal, change: CallerValues
) -> CallerValues:
    """Change the conversation's own context, configurable values and metadata (each key
    of ``change`` set, a ``None`` one removed), which every later turn runs with under its
    messages' own; the values it has now. ``NotFound`` for a conversation that does not
    exist or is not ``principal``'s; ``BadInput`` for a field the app does not let callers
    set. A turn running meanwhile keeps the values it started with; of two changes at
    once, the later write keeps its whole result."""
    check_caller_values(deps.settings, change.context, change.configurable)
    state = usable(deps, conversation_id, principal)
    values = state.values.changed(change)
    check_values_size(values)
    if not deps.store.set_values(conversation_id, values, now=deps.clock.now()):
        raise NotFound.conversation(conversation_id)  # erased meanwhile
    return values


CANCELLED_NOTICE = "Stopped: this answer was cancelled."
"""What the sender of a cancelled turn's messages is told."""


def cancel_turn(deps: Deps, conversation_id: str, principal: Principal) -> RunRef | None:
    """Stop the conversation's running turn: take its run's lease (the run can commit
    nothing any more, and stops at its next streamed piece where this process runs it, else
    at its next write), mark the messages that turn was handed ``failed`` ("cancelled"), tell
    their senders (:data:`CANCELLED_NOTICE`), and go on with any message that came after
    them in a run of its own. The conversation's graph state stays as before the turn.
    ``NotFound`` for a conversation that does not exist or is not ``principal``'s;
    ``NotRunning`` when no turn is running (idle, waiting for an answer, or just done).
    Returns the run that goes on with later messages, for the caller to start (``None``:
    none came, the lease is released)."""
    state = usable(deps, conversation_id, principal)
    now = deps.clock.now()
    token = state.lease_token
    if token is None or not state.lease_live(now) or state.claimed_seq is None:
        raise NotRunning(f"conversation {conversation_id!r} has no turn running")
    try:
        lease = deps.store.handover_lease(
            conversation_id, token, now=now, ttl=deps.settings.lease_ttl
        )
    except LeaseLost:
        raise NotRunning(f"conversation {conversation_id!r} has no turn running") from None
    if deps.cancellations is not None:
        deps.cancellations.cancel(conversation_id, token)
    run = RunRef(conversation_id=conversation_id, token=lease.token)
    log.info("turn of %s cancelled by %s (run %d)", conversation_id, principal.id, token)
    step = fail_pending_turn(deps, run, CANCELLED_NOTICE, error=f"cancelled by {principal.id}")
    return None if step.outcome == "released" else step.run


def check_values_size(values: CallerValues) -> None:
    """``BadInput`` (``too_large``) for conversation values past the bounds of a message's
    (64 keys, 16 KB of JSON each)."""
    for what, kept in (
        ("context", values.context),
        ("configurable", values.configurable),
        ("metadata", values.metadata),
    ):
        size = json_bytes(kept)
        if len(kept) > MAX_RUN_VALUES_KEYS or size > MAX_RUN_VALUES_BYTES:
            raise BadInput(
                "too_large",
                f"{what}: the conversation would keep {len(kept)} keys, {size} bytes of JSON;"
                f" at most {MAX_RUN_VALUES_KEYS} and {MAX_RUN_VALUES_BYTES} (remove some"
                " with null)",
                field=what,
            )


def create_conversation(
    deps: Deps, conversation_id: str, principal: Principal, metadata: Mapping[str, object]
) -> bool:
    """Create ``principal``'s conversation before its first message (a thread created
    before its first run), with its ``metadata``; ``False`` if one exists under the id."""
    values = CallerValues(metadata=dict(metadata))
    check_values_size(values)
    return deps.store.create_conversation(
        conversation_id,
        tenant=principal.tenant,
        owner=principal.id,
        policy=deps.settings.default_policy,
        values=values,
        now=deps.clock.now(),
    )


def conversation_summary(
    deps: Deps, conversation_id: str, principal: Principal
) -> ConversationSummary | None:
    """The conversation as a list shows it, if it is ``principal``'s."""
    state = visible(deps, deps.store.get_conversation(conversation_id), principal)
    if state is None:
        return None
    return ConversationSummary(
        state.conversation_id, state.status, state.created_at, state.updated_at, state.values
    )


MAX_LIST_SCAN = 1000
"""Most conversations one list reads to find those its filters match."""


def list_conversations(
    deps: Deps,
    principal: Principal,
    *,
    limit: int,
    offset: int = 0,
    status: ConversationStatus | None = None,
    metadata: Mapping[str, object] | None = None,
) -> list[ConversationSummary]:
    """``principal``'s conversations (those it owns in its tenant), the most recently
    active first, with ``status`` and every key of ``metadata`` as given: ``limit`` of them
    from ``offset``. Filtered ones are found among the first :data:`MAX_LIST_SCAN`."""
    wanted = dict(metadata or {})

    def matches(c: ConversationSummary) -> bool:
        if status is not None and c.status != status:
            return False
        return all(c.values.metadata.get(k, _MISSING) == v for k, v in wanted.items())

    if status is None and not wanted:
        return deps.store.list_conversations(
            principal.tenant, principal.id, limit=limit, offset=offset
        )
    found: list[ConversationSummary] = []
    read = 0
    while len(found) < offset + limit and read < MAX_LIST_SCAN:
        batch = deps.store.list_conversations(
            principal.tenant, principal.id, limit=min(100, MAX_LIST_SCAN - read), offset=read
        )
        read += len(batch)
        found.extend(c for c in batch if matches(c))
        if len(batch) < 100:
            break
    return found[offset : offset + limit]


_MISSING = object()


@dataclass(frozen=True)
class Erasure:
    """What erasing a conversation removed, by kind (rows, objects, traces), and what it
    could not remove yet (``pending``: ``traces`` while the tracking store is down; they
    are removed later, see :meth:`~workers.core.ports.Tracer.forget`)."""

    removed: dict[str, int]
    pending: tuple[str, ...] = ()


def forget_conversation(
    deps: Deps, conversation_id: str, principal: Principal, *, memories: bool = False
) -> Erasure:
    """Erase the conversation from the store (its objects too) and its traces, for a
    principal who may use it (``NotFound`` otherwise); with ``memories``, also everything
    its owner keeps in the graphs' long-term memory (``removed["memories"]``), which their
    other conversations share (``BadInput`` when this process has no memory store).

    The rows go first, in one write: a run still going finds its lease gone at its next
    write (``LeaseLost``: its turn commits nothing), and the trace of that turn, which
    started before the erasure, is dropped when it ends. Then the memories (a memory that a
    turn of the owner writes after this may survive it: the store is outside the fenced
    commit), then the traces: deleted, or ``pending`` when the tracking store cannot be
    reached (never a failure once the rows are gone)."""
    state = usable(deps, conversation_id, principal)
    if memories and deps.memories is None:
        raise BadInput(
            "no_memory_store",
            "memories: this runtime keeps no long-term memory to erase",
            field="memories",
        )
    erasure = _erase(deps, conversation_id, customer=state.customer if memories else None)
    if erasure is None:  # forgotten meanwhile
        raise NotFound.conversation(conversation_id)
    return erasure


def _erase(
    deps: Deps,
    conversation_id: str,
    *,
    idle_before: float | None = None,
    customer: str | None = None,
) -> Erasure | None:
    removed = deps.store.forget(conversation_id, idle_before=idle_before)
    if removed is None:
        return None
    if deps.scheduler is not None:
        removed["schedules"] = deps.scheduler.forget(conversation_id)
    if deps.webhooks is not None:
        removed["webhooks"] = deps.webhooks.forget_webhooks(conversation_id)
    if customer is not None and deps.memories is not None:
        removed["memories"] = deps.memories.forget_customer(customer)
    # After the rows: every turn of the erased conversation started before this call.
    traces = deps.tracer.forget(conversation_id)
    pending: tuple[str, ...] = ()
    if traces is None:
        pending = ("traces",)
    else:
        removed["traces"] = traces
    log.info("forgot conversation %s: %s (pending: %s)", conversation_id, removed, pending or "-")
    return Erasure(removed, pending)


def check_follow(deps: Deps, conversation_id: str, principal: Principal) -> bool:
    """Whether ``principal`` may follow the conversation's replies now: ``True`` if it exists
    and is theirs. ``False`` alike for one that does not exist yet (a first message of
    theirs will create it for them) and for someone else's (it does not exist for them):
    the answer to a subscription must not tell the two apart."""
    return visible(deps, deps.store.get_conversation(conversation_id), principal) is not None


def check_waiting(state: ConversationState | None, msg: InboundMessage) -> PendingRequest:
    """The request ``msg`` answers; refuse an answer that its conversation does not wait for
    (``NotFound``, ``NotWaiting``). A race with a turn that ends the wait meanwhile is still
    safe: the planned turn then skips the answer with a notice."""
    cid = msg.conversation_id
    if state is None:
        raise NotFound.conversation(cid)
    waiting = state.pending_approval if state.status == "awaiting_approval" else None
    if waiting is None:
        raise NotWaiting(f"conversation {cid!r} is not waiting for an answer", field="interrupt_id")
    if waiting.interrupt_id != msg.answers:
        raise NotWaiting(
            f"conversation {cid!r} waits for interrupt {waiting.interrupt_id!r},"
            f" not {msg.answers!r}",
            field="interrupt_id",
        )
    return waiting


def hold_for_approval(deps: Deps, run: RunRef, task_token: str) -> None:
    """A Standard run waits for the approval inside its execution: keep the lease for the
    approval window and record the token that ``accept_message`` resumes it with."""
    deps.store.hold_for_approval(
        run.conversation_id,
        run.token,
        task_token,
        now=deps.clock.now(),
        ttl=deps.settings.approval_wait_seconds,
    )


# 2. claim -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The next turn (``plan``, ``None`` when idle) of ``run``, planned from ``state`` (what
    the lease renewal returned; its inbox sequence is the condition for releasing the lease)
    and ``work`` (the pending inbox, the checkpoint and the log window)."""

    run: RunRef
    plan: TurnPlan | None
    state: ConversationState
    work: PendingWork
    read_ms: float = 0.0
    """Time spent renewing the lease and reading the work (recorded on the turn's trace)."""

    @property
    def inbox_seq(self) -> int:
        return self.state.inbox_seq

    @property
    def status(self) -> ConversationStatus:
        return self.state.status

    @property
    def drains_inbox(self) -> bool:
        """The plan takes every message pending when it was claimed (the store counts them)."""
        consumed = 0 if self.plan is None else len(self.plan.consumed)
        return self.state.pending_count is not None and self.state.pending_count <= consumed


def claim_inbox(
    deps: Deps, run: RunRef, *, execution_id: str | None = None, mark: bool = True
) -> Claim:
    """Renew the lease (the lease check; it returns the conversation's state) and plan the
    next turn from the pending inbox. Given the run's ``execution_id`` for the first time,
    the renewal also binds the lease to it (a duplicate start of the token gets
    ``LeaseLost``) and the run's deadline is set."""
    started = time.perf_counter()
    now = deps.clock.now()
    bind = execution_id if execution_id not in (None, run.execution_id) else None
    state = deps.store.renew_lease(
        run.conversation_id,
        run.token,
        now=now,
        ttl=deps.settings.lease_ttl,
        bind=bind,
        claim=mark,
    )
    if bind is not None:
        limit = deps.settings.max_run_seconds
        deadline = None if limit is None else now + limit
        run = run.model_copy(update={"execution_id": bind, "deadline": deadline})
    # A message arriving after the renewal moves the inbox sequence: the release then fails.
    work = (
        _NOTHING_PENDING
        if state.pending_count == 0
        else deps.store.load_pending(state, window=deps.settings.context_window)
    )
    read_ms = (time.perf_counter() - started) * 1000.0
    plan = plan_turn(state, work.inbox, deps.settings.approval_policies)
    return Claim(run, plan, state, work, read_ms)


_NOTHING_PENDING = PendingWork([])


# 3. advance ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """What ``advance_turn`` did: the outcome, the status it left, and its outbox entries,
    ``delivered`` (sequences sent) or not (``undelivered``: the sink failed, retry later)."""

    run: RunRef
    outcome: TurnOutcome
    status: ConversationStatus
    turn_id: str
    consumed: list[str]
    delivered: list[int] = field(default_factory=list)
    undelivered: int = 0
    guardrail_interventions: int = 0


def advance_turn(deps: Deps, claim: Claim, *, deliver_now: bool = True) -> Turn:
    """Run the agent for the claim's plan and commit its checkpoint, log and outbox, fenced
    by the run's token (a stale run gets ``LeaseLost`` and has written nothing). Then, with
    ``deliver_now``, send what the commit wrote, inside the turn's trace, without reading it
    back; the marks are written by ``finish_turn``."""
    run, plan = claim.run, claim.plan
    if plan is None:
        raise ValueError("advance_turn needs a claim with a plan")
    cid = run.conversation_id
    turn_id = new_id()
    tags = {
        **deps.settings.trace_tags,
        "conversation_id": cid,
        "run_id": run.run_id,
        "turn_id": turn_id,
        "message_ids": ",".join(plan.message_ids),
        "channel": _channel(plan),
    }
    with deps.tracer.turn("turn", tags=tags, inputs=_trace_inputs(plan)) as span:
        # The claim's reads happened before the turn was known: their time, not a span.
        span.set_attributes({"store.claim_ms": round(claim.read_ms, 3)})
        outcome, status, entries, interventions = _advance(deps, claim, plan, turn_id, span)
        if interventions:
            tag = as_tag_attributes({figures.GUARDRAIL_INTERVENTIONS: str(interventions)})
            span.set_attributes({"guardrail.interventions": interventions, **tag})
        turn = _delivered(
            deps,
            claim,
            entries,
            outcome=outcome,
            status=status,
            turn_id=turn_id,
            deliver=deliver_now,
        )
        return replace(turn, guardrail_interventions=interventions)


def _trace_inputs(plan: TurnPlan) -> dict[str, object]:
    """What the turn's trace shows as its input: the texts, or the answer it resumes with."""
    if plan.resume is not None:
        return {
            "resume": plan.resume.value,
            "interrupt_id": plan.resume.interrupt_id,
            "answered_by": plan.answered_by,
        }
    return {"texts": plan.texts}


def _delivered(
    deps: Deps,
    claim: Claim,
    entries: list[OutboxEntry],
    *,
    outcome: TurnOutcome,
    status: ConversationStatus,
    turn_id: str,
    deliver: bool = True,
) -> Turn:
    """The record of the claim's turn once what it wrote is delivered (or left undelivered
    without ``deliver``)."""
    sent, undelivered = _deliver_turn(deps, claim, entries) if deliver else ([], 1)
    consumed = [] if claim.plan is None else claim.plan.message_ids
    return Turn(claim.run.after_turn(), outcome, status, turn_id, consumed, sent, undelivered)


def _deliver_turn(deps: Deps, claim: Claim, entries: list[OutboxEntry]) -> tuple[list[int], int]:
    """Deliver after a commit: the sequences sent and not marked yet, and how many entries
    are left undelivered. When the claim saw nothing else undelivered, what the commit
    wrote is sent as is; otherwise (a notice written at accept time, the reply of a run
    that died) the whole outbox goes in order, marked entry by entry."""
    if claim.state.undelivered_count == 0:
        sent = _send(deps, entries)
        return sent, len(entries) - len(sent)
    try:
        deliver(deps, claim.run.conversation_id)
    except RetryableError as exc:
        log.warning("delivery to %s deferred: %s", claim.run.conversation_id, exc)
        return [], 1
    return [], 0


def _channel(plan: TurnPlan) -> str:
    return plan.consumed[0].message.channel if plan.consumed else "api"


def _advance(
    deps: Deps, claim: Claim, plan: TurnPlan, turn_id: str, span: SpanHandle
) -> tuple[TurnOutcome, ConversationStatus, list[OutboxEntry], int]:
    """Run and commit the plan's turn: the outcome, the status it left, the outbox entries
    it wrote and the number of guardrail interventions."""
    run = claim.run
    cid = run.conversation_id
    if plan.kind == "skip":
        notice = Notice(conversation_id=cid, in_reply_to=plan.message_ids, text=plan.notice or "")
        return "skipped", plan.status_if_unchanged, _commit_unchanged(deps, run, plan, notice), 0
    guard = deps.settings.guard
    inputs, resume = plan.inputs, plan.resume
    before: list[Notice] = []
    interventions = 0
    texts = _guarded_texts(plan)
    if guard is not None and texts:
        verdict = guard_input(texts, guard)
        if verdict.intervened:
            interventions += 1
            notice = _guardrail_notice(deps, plan, verdict)
            if verdict.action == "block":  # the graph does not run; a pending interrupt stays
                entries = _commit_unchanged(deps, run, plan, notice)
                return "replied", plan.status_if_unchanged, entries, interventions
            inputs, resume = _masked(plan, verdict.texts)
            before.append(notice)
    request = TurnRequest(
        conversation_id=cid,
        turn_id=turn_id,
        channel=_channel(plan),
        inputs=inputs,
        resume=resume,
        checkpoint=claim.work.checkpoint,
        history=claim.work.history,
        message_ids=plan.message_ids,
        customer=claim.state.customer,
        caller=plan.caller_values.over(claim.state.values),
    )
    guards_pii = guard is not None and guard.output_pii != "allow"
    allowed = pii_values(texts) if guards_pii else frozenset()
    streamer = _chunk_streamer(deps, run, turn_id, guard, allowed)
    if streamer is not None:
        streamer.status("thinking", in_reply_to=plan.message_ids, requested_by=plan.requesters)
    try:
        output = deps.agent.run_turn(
            request, on_chunk=streamer.on_chunk if streamer else None, tracer=deps.tracer
        )
    except ModelThrottled:
        # The turn fails and is retried; its trace still counts the throttle.
        span.set_attributes(
            {"model.throttles": 1, **as_tag_attributes({figures.MODEL_THROTTLES: "1"})}
        )
        raise
    except PermanentError as exc:
        # The cause goes to the trace, the log and the failed messages; the user is told
        # in plain words (a provider's error names classes and codes, not what to do).
        cause = describe_error(exc)
        span.set_attributes({"error": cause})
        log.warning("turn %s of %s failed for good: %s", turn_id, cid, cause)
        entries = fail_turn(deps, run, plan, PERMANENT_FAILURE_NOTICE, error=cause)
        return "replied", plan.status_if_unchanged, entries, interventions
    output, after = _guard_output(
        deps, plan, output, guard=guard, allowed=allowed, streamer=streamer
    )
    interventions += len(after)
    commit = replace(
        _turn_commit(run, plan, turn_id, output, before=before, after=after),
        lease_until=_lease_until(deps),
    )
    with deps.tracer.span("store.commit", kind="UNKNOWN"):
        try:
            entries = deps.store.commit_turn(cid, commit)
        except TurnSuperseded:
            span.set_attributes({"superseded": True})
            return "interrupted", claim.status, [], interventions
    span.set_attributes(_turn_attributes(output))
    span.set_outputs({"reply": output.reply_text, "interrupt": _interrupt_of(output)})
    outcome: TurnOutcome = "awaiting_approval" if output.interrupt else "replied"
    return outcome, commit.status, entries, interventions


def _guarded_texts(plan: TurnPlan) -> list[str]:
    """The user text a turn hands the graph: its messages, or a plain message that answers
    an ``interrupt()`` (an approval's decision is not free text)."""
    if plan.inputs:
        return plan.texts
    if plan.resume is not None and isinstance(plan.resume.value, str):
        return [plan.resume.value]
    return []


def _masked(plan: TurnPlan, texts: Sequence[str]) -> tuple[list[TurnInput], ResumeRecord | None]:
    """The plan's inputs (or resume answer) with the masked ``texts`` in place."""
    if plan.inputs:
        return [replace(i, text=t) for i, t in zip(plan.inputs, texts, strict=True)], plan.resume
    assert plan.resume is not None  # _guarded_texts found text in it
    return [], replace(plan.resume, value=texts[0])


def _guard_output(
    deps: Deps,
    plan: TurnPlan,
    output: TurnOutput,
    *,
    guard: GuardPolicy | None,
    allowed: frozenset[str],
    streamer: _Streamer | None,
) -> tuple[TurnOutput, list[Notice]]:
    """The output guard on the turn's reply (masked or replaced), and the notices of every
    output intervention: the guard's and the model provider's own guardrail's (whose canned
    text is already the reply)."""
    notices: list[Notice] = []
    for hit in output.guardrails:
        rules = list(hit.policies) or [hit.provider]
        provider = Verdict(hit.stage, "block", (), category="model_guardrail")
        attributes = {**provider.attributes(), "guardrail.rules": rules}
        attributes["guardrail.provider"] = hit.provider
        _trace_guardrail(deps, "guardrail.model", attributes)
        text = notice_text(hit.stage, "block", "model_guardrail", rules)
        cid = plan.state.conversation_id
        notices.append(Notice(conversation_id=cid, in_reply_to=plan.message_ids, text=text))
    verdict: Verdict | None = None
    if guard is not None and output.reply_text is not None:
        verdict = guard_output(output.reply_text, guard, allowed=allowed)
        if verdict.intervened:
            output = replace(output, reply_text=verdict.texts[0])
            notices.append(_guardrail_notice(deps, plan, verdict))
    if streamer is not None and (verdict is None or verdict.action != "block"):
        streamer.flush()
    return output, notices


def _guardrail_notice(deps: Deps, plan: TurnPlan, verdict: Verdict) -> Notice:
    """Trace an intervention of the guard (a GUARDRAIL span naming what fired, never what
    matched) and the notice that tells the user."""
    _trace_guardrail(deps, f"guardrail.{verdict.stage}", verdict.attributes())
    return Notice(
        conversation_id=plan.state.conversation_id,
        in_reply_to=plan.message_ids,
        text=verdict.notice(),
    )


def _trace_guardrail(deps: Deps, name: str, attributes: dict[str, object]) -> None:
    inputs = {"stage": attributes.get("guardrail.stage")}
    with deps.tracer.span(name, kind="GUARDRAIL", inputs=inputs) as guard_span:
        guard_span.set_attributes(attributes)
        guard_span.set_outputs({"action": attributes.get("guardrail.action")})


def _turn_attributes(output: TurnOutput) -> dict[str, object]:
    """The root span's figures of a turn: MLflow's token usage and cost (the sums of its
    model calls'), the time to its first streamed token, and the figures ``stats`` reads as
    trace tags."""
    attributes: dict[str, object] = {
        "mlflow.chat.tokenUsage": usage_attribute(output.usage),
        "tool_calls": output.tool_calls,
        "model.calls": output.model_calls,
        "model.throttles": output.model_throttles,
        **as_tag_attributes(turn_figures(output)),
    }
    if output.cost is not None:
        attributes["mlflow.llm.cost"] = output.cost.as_attribute()
    if output.time_to_first_token_ms is not None:
        attributes["time_to_first_token_ms"] = output.time_to_first_token_ms
    return attributes


def _interrupt_of(output: TurnOutput) -> object:
    pending = output.interrupt
    if pending is None:
        return None
    return {"tool": pending.approval.tool} if pending.approval else {"value": pending.value}


def fail_turn(
    deps: Deps, run: RunRef, plan: TurnPlan, text: str, *, error: str | None = None
) -> list[OutboxEntry]:
    """Tell the user a turn failed for good (``text``) and mark its messages ``failed``
    with ``error`` (default: ``text``), fenced; ``agentworker dlq`` lists them. A failed
    resume leaves the approval pending, so the user can answer it again."""
    notice = Notice(
        conversation_id=run.conversation_id, level="error", in_reply_to=plan.message_ids, text=text
    )
    return _commit_unchanged(deps, run, plan, notice, failed=error or text)


def _lease_until(deps: Deps) -> float:
    """When a lease renewed now expires (a commit renews it in the same write)."""
    return deps.clock.now() + deps.settings.lease_ttl


def describe_error(exc: BaseException) -> str:
    """What a failed message keeps of the error that failed it."""
    return f"{type(exc).__name__}: {exc}"


def _commit_unchanged(
    deps: Deps, run: RunRef, plan: TurnPlan, notice: Notice, *, failed: str | None = None
) -> list[OutboxEntry]:
    """Consume the plan's messages (marked ``failed`` with ``failed`` when set) and send
    ``notice``; the graph and any pending approval stay as they were."""
    commit = TurnCommit(
        run.token,
        plan.seqs,
        plan.status_if_unchanged,
        outbox=[notice],
        pending_approval=plan.waiting,
        failed=failed,
        lease_until=_lease_until(deps),
    )
    return deps.store.commit_turn(run.conversation_id, commit)


def _turn_commit(
    run: RunRef,
    plan: TurnPlan,
    turn_id: str,
    output: TurnOutput,
    *,
    before: Sequence[Notice] = (),
    after: Sequence[Notice] = (),
) -> TurnCommit:
    """The turn's commit; its outbox holds the notices ``before`` the reply, the reply, the
    notices ``after`` it, then what the turn waits for."""
    cid = run.conversation_id
    outbox: list[OutboxPayload] = list(before)
    request: PendingRequest | None = None
    if output.reply_text is not None:
        outbox.append(
            Reply(
                conversation_id=cid,
                turn_id=turn_id,
                in_reply_to=plan.message_ids,
                text=output.reply_text,
                usage=output.usage,
                status=output.status,
            )
        )
    outbox.extend(after)
    if output.interrupt is not None:
        request = _pending_request(cid, turn_id, plan, output.interrupt)
        outbox.append(request)
    elif output.reply_text is None:
        # The graph ended without an AI message: the sender still hears the turn is over.
        notice = Notice(conversation_id=cid, in_reply_to=plan.message_ids, text=NO_REPLY_NOTICE)
        outbox.append(notice)
    return TurnCommit(
        token=run.token,
        consumed=plan.seqs,
        status="awaiting_approval" if request else "idle",
        checkpoint=output.checkpoint,
        log=output.log,
        outbox=outbox,
        pending_approval=request,
        expect_inbox_seq=plan.inbox_seq if plan.state.policy == "interrupt" else None,
    )


def _pending_request(
    cid: str, turn_id: str, plan: TurnPlan, pending: PendingInterrupt
) -> PendingRequest:
    """The outbox payload of the interrupt a turn stopped at: approve/deny buttons for a
    tool approval, else the interrupt's JSON value."""
    if pending.approval is not None:
        return ApprovalRequest(
            conversation_id=cid,
            turn_id=turn_id,
            in_reply_to=plan.message_ids,
            interrupt_id=pending.interrupt_id,
            tool=pending.approval.tool,
            args=dict(pending.approval.args),
            text=pending.approval.text,
            requested_by=plan.requesters,
        )
    return InterruptRequest(
        conversation_id=cid,
        turn_id=turn_id,
        in_reply_to=plan.message_ids,
        interrupt_id=pending.interrupt_id,
        value=pending.value,  # JSON: checked by the agent
        text=pending.text,
        requested_by=plan.requesters,
    )


@dataclass
class _Streamer:
    """Sends a reply's chunks as the model writes them, through the output guard's
    :class:`StreamGuard` when replies are guarded (held back until safe, masked, stopped on a
    blocked topic)."""

    deps: Deps
    conversation_id: str
    turn_id: str
    guard: StreamGuard | None = None
    token: int | None = None
    """The run's lease: a cancel of it stops the turn at its next piece."""
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _updates: itertools.count[int] = field(default_factory=itertools.count)
    """Node updates' own index sequence (our own streams leave them out: theirs stays whole)."""
    _message_id: str | None = None
    """The AI message whose text streams now."""
    _node: str | None = None
    """The node that wrote it."""

    def on_chunk(self, part: StreamPart) -> None:
        cancels = self.deps.cancellations
        if cancels and self.token and cancels.cancelled(self.conversation_id, self.token):
            raise TurnCancelled(f"turn {self.turn_id} of {self.conversation_id} was cancelled")
        if isinstance(part, CustomData):
            self._custom(part.data)
        elif isinstance(part, ToolsStarting):
            self.status("tool", part.tools)
        elif isinstance(part, MessageStarts):
            self._message_id, self._node = part.message_id, part.node
        elif isinstance(part, NodeUpdate):
            self._update(part)
        else:
            self._send(part if self.guard is None else self.guard.feed(part))

    def status(
        self,
        state: Literal["thinking", "tool"],
        tools: Sequence[str] = (),
        in_reply_to: Sequence[str] = (),
        requested_by: Sequence[str] = (),
    ) -> None:
        """Tell the clients what the turn is doing (a ``status`` frame)."""
        text = f"running {', '.join(tools)}" if tools else "thinking"
        self.deps.sink.send_chunk(
            StatusChunk(
                conversation_id=self.conversation_id,
                turn_id=self.turn_id,
                index=next(self._counter),
                state=state,
                tools=list(tools),
                in_reply_to=list(in_reply_to),
                requested_by=list(requested_by),
                text=text,
            )
        )

    def flush(self) -> None:
        if self.guard is not None:
            self._send(self.guard.flush())

    def _send(self, delta: str) -> None:
        if delta:
            chunk = ReplyChunk(
                conversation_id=self.conversation_id,
                turn_id=self.turn_id,
                index=next(self._counter),
                delta=delta,
                message_id=self._message_id,
                node=self._node,
            )
            self.deps.sink.send_chunk(chunk)

    def _update(self, part: NodeUpdate) -> None:
        """A node's update, masked as custom data is; without its data when it is larger
        than :data:`MAX_UPDATE_BYTES` as JSON."""
        data = part.data if self.guard is None else self.guard.mask_value(part.data)
        if data is BLOCKED:
            return
        truncated = len(json.dumps(data, default=str)) > MAX_UPDATE_BYTES
        self.deps.sink.send_chunk(
            UpdateChunk(
                conversation_id=self.conversation_id,
                turn_id=self.turn_id,
                index=next(self._updates),
                node=part.node,
                data=None if truncated else cast(JsonValue, data),
                truncated=truncated,
            )
        )

    def _custom(self, data: object) -> None:
        """The app's custom data, through the output guard's masking when replies are
        guarded (each string in it, as a reply would be); dropped whole where a reply would
        be blocked, or once the reply's stream was stopped."""
        if self.guard is not None:
            data = self.guard.mask_value(data)
            if data is BLOCKED:
                return
        self.deps.sink.send_chunk(
            CustomChunk(
                conversation_id=self.conversation_id,
                turn_id=self.turn_id,
                index=next(self._counter),
                data=cast(JsonValue, data),
            )
        )


def _chunk_streamer(
    deps: Deps,
    run: RunRef,
    turn_id: str,
    guard: GuardPolicy | None,
    allowed: frozenset[str],
) -> _Streamer | None:
    if not deps.settings.stream:
        return None
    stream_guard = (
        StreamGuard(guard, allowed) if guard is not None and guard.guards_output else None
    )
    return _Streamer(deps, run.conversation_id, turn_id, stream_guard, run.token)


# 4. deliver ---------------------------------------------------------------------------------


def deliver(deps: Deps, conversation_id: str) -> int:
    """Send undelivered outbox entries in order and mark each delivered; returns the count.
    Re-delivering an already-delivered entry never happens: marks are checked first."""
    sent = 0
    again = REDELIVERY.set(True)
    try:
        for entry in deps.store.pending_outbox(conversation_id):
            with deps.tracer.span("deliver", kind="UNKNOWN", inputs={"type": entry.payload.type}):
                try:
                    _send_entry(deps, entry)
                except PermanentError as exc:
                    _undeliverable(entry, exc)
                now = deps.clock.now()
                mark = partial(deps.store.mark_delivered, conversation_id, [entry.seq], now=now)
                _mark(deps, mark)
            sent += 1
    finally:
        REDELIVERY.reset(again)
    return sent


def deliver_run(deps: Deps, run: RunRef) -> int:
    """The workflow's ``Deliver`` step: what ``run``'s turn could not send, sent only while
    the run still holds the lease (renewed first). A run taken over (its lease expired
    while a channel was down) sends nothing: ``LeaseLost``, and the run that took over
    delivers, so no two runs send the same entry at once."""
    deps.store.renew_lease(
        run.conversation_id,
        run.token,
        now=deps.clock.now(),
        ttl=deps.settings.lease_ttl,
        claim=False,
    )
    return deliver(deps, run.conversation_id)


def _mark(deps: Deps, write: Callable[[], T]) -> T:
    """A delivery mark's write, once the payload went out: retried in place with backoff on
    ``RetryableError`` (``mark_attempts``), since failing the step would make its retry send
    the payload again. Other errors, and the last attempt's, propagate."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return write()
        except RetryableError as exc:
            if attempt >= deps.settings.mark_attempts:
                raise
            _back_off(deps, "delivery mark", attempt, exc, base=deps.settings.mark_base_delay)


def _undeliverable(entry: OutboxEntry, exc: PermanentError) -> None:
    """A channel refused an entry for good (e.g. Slack's ``channel_not_found``): it is done,
    logged as an error, never retried (a retry would fail the same way, forever)."""
    log.error(
        "outbox entry %d of %s refused for good, not retried: %s",
        entry.seq,
        entry.payload.conversation_id,
        exc,
    )


def _send(deps: Deps, entries: list[OutboxEntry]) -> list[int]:
    """Send ``entries`` in order (no marks); the sequences sent. A sink that fails
    (``RetryableError``) stops the sending: the rest stays in the outbox for ``deliver``
    (which sends it only to the sinks that have not taken it)."""
    sent: list[int] = []
    for entry in entries:
        with deps.tracer.span("deliver", kind="UNKNOWN", inputs={"type": entry.payload.type}):
            try:
                _send_entry(deps, entry)
            except RetryableError as exc:
                log.warning("delivery of outbox entry %d deferred: %s", entry.seq, exc)
                break
            except PermanentError as exc:
                _undeliverable(entry, exc)
        sent.append(entry.seq)
    return sent


def _send_entry(deps: Deps, entry: OutboxEntry) -> None:
    """Send one outbox entry to every sink that has not taken it yet; after a partial
    delivery, record the sinks that did (then raise: the entry waits for ``deliver``)."""
    sink = deps.sink
    if not isinstance(sink, PerSinkDelivery):
        sink.send(entry.payload)
        return
    try:
        sink.send_missing(entry.payload, entry.sinks_done)
    except PartialDelivery as partial:
        new = partial.delivered - entry.sinks_done
        if new:
            cid = entry.payload.conversation_id
            _mark(deps, lambda: deps.store.mark_sinks(cid, entry.seq, new))
        raise


# 5. finish ----------------------------------------------------------------------------------


def finish_turn(
    deps: Deps, claim: Claim, turn: Turn, *, hold_approvals: bool = False
) -> StepResult:
    """After a turn: write its delivery marks, and release the lease in the same write when
    the turn took every message pending at its claim (the release is conditional on the
    inbox sequence the claim saw, so a message that arrived meanwhile keeps the run going).
    With ``hold_approvals`` (Standard workflows) a turn awaiting approval keeps the lease:
    the execution waits for the decision. A turn whose delivery failed is left to the
    ``deliver`` step (outcome ``deliver``)."""
    run, cid = turn.run, turn.run.conversation_id
    now = deps.clock.now()
    hold = hold_approvals and turn.outcome == "awaiting_approval"
    final = (
        claim.drains_inbox and turn.outcome != "interrupted" and not turn.undelivered and not hold
    )
    try:
        released = final and _mark(
            deps,
            lambda: deps.store.release_lease(
                cid, run.token, seen_inbox_seq=claim.inbox_seq, now=now, delivered=turn.delivered
            ),
        )
    except LeaseLost:
        # Taken over after the turn went out: what it sent is sent all the same, and the
        # run that took over must not send it again (a mark is a fact, not fenced).
        if turn.delivered:
            _mark(deps, lambda: deps.store.mark_delivered(cid, turn.delivered, now=now))
        raise
    guarded = turn.guardrail_interventions
    if released:
        return StepResult(
            run=run,
            outcome="released",
            turn=turn.outcome,
            status=turn.status,
            guardrail_interventions=guarded,
        )
    if not final and turn.delivered:
        _mark(deps, lambda: deps.store.mark_delivered(cid, turn.delivered, now=now))
    outcome: Literal["turn", "deliver"] = "deliver" if turn.undelivered else "turn"
    return StepResult(run=run, outcome=outcome, turn=turn.outcome, guardrail_interventions=guarded)


def finish_run(deps: Deps, claim: Claim) -> FinishResult:
    """End the run after an idle ``claim``: with work still planned (the turn budget is
    spent) hand over to a fresh run; otherwise release the lease, conditional on the inbox
    sequence the claim saw. A message that arrived meanwhile makes the release fail and the
    run loop."""
    run = claim.run
    cid = run.conversation_id
    if claim.plan is not None:
        lease = deps.store.handover_lease(
            cid, run.token, now=deps.clock.now(), ttl=deps.settings.lease_ttl
        )
        deps.starter.start(RunRef(conversation_id=cid, token=lease.token))
        return FinishResult(run=run, released=True, status="handover")
    released = deps.store.release_lease(
        cid, run.token, seen_inbox_seq=claim.inbox_seq, now=deps.clock.now()
    )
    if not released:
        return FinishResult(run=run, released=False, status="more_pending")
    status: Literal["idle", "awaiting_approval"] = (
        "awaiting_approval" if claim.status == "awaiting_approval" else "idle"
    )
    return FinishResult(run=run, released=True, status=status)


# reads ---------------------------------------------------------------------------------------


def graph_state(
    deps: Deps, conversation_id: str, principal: Principal, *, with_messages: bool = False
) -> GraphStateView | None:
    """The graph state the conversation's next turn starts from (with its messages as
    JSON, ``with_messages``); ``None`` if unknown or not ``principal``'s to see."""
    if visible(deps, deps.store.get_conversation(conversation_id), principal) is None:
        return None
    checkpoint = deps.store.load_checkpoint(conversation_id)
    log_window = deps.store.load_log(conversation_id, limit=deps.settings.context_window)
    return deps.agent.inspect(conversation_id, checkpoint, log_window, with_messages=with_messages)


# the sweeper --------------------------------------------------------------------------------


def sweep(deps: Deps, *, now: float | None = None) -> list[RunRef]:
    """Start runs for conversations with pending messages and no live lease (a crashed run
    never strands a message). ``now`` may be pushed forward to take over leases early."""
    at = deps.clock.now() if now is None else now
    started: list[RunRef] = []
    for cid in deps.store.conversations_to_sweep(now=at):
        try:
            lease = deps.store.try_acquire_lease(cid, now=at, ttl=deps.settings.lease_ttl)
        except RetryableError as exc:  # the next sweep tries it again; the others go on
            log.warning("sweep: %s left for the next sweep: %s", cid, exc)
            continue
        if lease is None:
            continue
        run = RunRef(conversation_id=cid, token=lease.token)
        deps.starter.start(run)
        started.append(run)
    return started


# one workflow step, and a whole run in one process ------------------------------------------


def expire(deps: Deps, *, now: float | None = None, limit: int = 100) -> list[str]:
    """Erase the conversations idle past the retention (store and traces, and with
    ``retention_memories`` their owners' memories): the ones the store lists as expired
    (stores with native expiry, DynamoDB's TTL, list none). One that a message woke up since
    the listing is kept (the store checks again as it erases). Returns the ones erased."""
    if deps.settings.retention_seconds is None:
        return []
    cutoff = (deps.clock.now() if now is None else now) - deps.settings.retention_seconds
    expired = deps.store.expired_conversations(before=cutoff, limit=limit)
    erased = [
        cid
        for cid in expired
        if _erase(deps, cid, idle_before=cutoff, customer=_owner(deps, cid)) is not None
    ]
    if erased:
        log.info("retention: erased %d idle conversation(s)", len(erased))
    return erased


def _owner(deps: Deps, conversation_id: str) -> str | None:
    """The customer whose memories the retention erases with ``conversation_id``, if asked."""
    if not deps.settings.retention_memories or deps.memories is None:
        return None
    state = deps.store.get_conversation(conversation_id)
    return None if state is None else state.customer


def run_step(
    deps: Deps,
    run: RunRef,
    *,
    execution_id: str | None = None,
    deliver_now: bool = True,
    hold_approvals: bool = False,
) -> StepResult:
    """One step of a run, the body of the workflow's loop: claim (binding the run to
    ``execution_id`` on its first step), then either advance one turn, deliver it and
    release the lease if that drained the inbox, or, when the inbox is drained or the run's
    budget is spent, finish the run."""
    claim = claim_inbox(deps, run, execution_id=execution_id)
    run = claim.run
    if claim.plan is not None and not _budget_spent(deps, run):
        turn = advance_turn(deps, claim, deliver_now=deliver_now)
        if not deliver_now:
            return StepResult(
                run=turn.run,
                outcome="deliver",
                turn=turn.outcome,
                guardrail_interventions=turn.guardrail_interventions,
            )
        return finish_turn(deps, claim, turn, hold_approvals=hold_approvals)
    return _idle_step(deps, claim)


def _idle_step(deps: Deps, claim: Claim) -> StepResult:
    """A step with no turn to take (the inbox is drained, or the run's budget is spent):
    send what is left (e.g. notices of messages rejected meanwhile), then finish the run.

    A channel failing for now does not fail the step (its retry would fail alike, and the
    workflow went Step -> TellUser -> Step for as long as the channel was down): the outcome
    is ``deliver``, whose bounded retries end the run with the entries undelivered and the
    lease left to lapse, for the sweeper's next run."""
    run = claim.run
    try:
        deliver(deps, run.conversation_id)
    except RetryableError as exc:
        log.warning("delivery to %s deferred: %s", run.conversation_id, exc)
        return StepResult(run=run, outcome="deliver")
    finish = finish_run(deps, claim)
    if not finish.released:
        return StepResult(run=run, outcome="more_pending")
    if finish.status == "handover":
        return StepResult(run=run, outcome="handover")
    ended: Literal["idle", "awaiting_approval"] = (
        "awaiting_approval" if finish.status == "awaiting_approval" else "idle"
    )
    return StepResult(run=run, outcome="released", status=ended)


def _budget_spent(deps: Deps, run: RunRef) -> bool:
    if run.turns >= deps.settings.max_turns_per_run:
        return True
    return run.deadline is not None and deps.clock.now() >= run.deadline


def fail_pending_turn(
    deps: Deps,
    run: RunRef,
    text: str,
    *,
    hold_approvals: bool = False,
    error: str | None = None,
) -> StepResult:
    """Tell the user the turn that failed for good (retries spent, a permanent error that
    escaped it) failed (``text``), and mark its messages ``failed`` with ``error`` (default:
    ``text``), so the run can go on; the notice is delivered and the lease released as after
    any turn.

    Only the messages that turn was handed are failed: the ones up to the inbox sequence
    its claim marked. When the last claim committed (the worker died after its commit: a
    timeout, out of memory), nothing failed: ``more_pending``, and the run goes on from the
    committed state, never failing a message it did not attempt. With nothing pending at
    all, the step that failed was an idle one (or died after its last commit): this one
    does that idle step itself rather than hand it back to ``Step`` (a step failing the same
    way each time made the run loop Step -> TellUser -> Step without end)."""
    claim = claim_inbox(deps, run, mark=False)
    attempted = claim.state.claimed_seq
    if claim.plan is None:
        return _idle_step(deps, claim)
    if attempted is None:
        return StepResult(run=run, outcome="more_pending")
    tried = [e for e in claim.work.inbox if e.seq <= attempted]
    plan = plan_turn(claim.state, tried, deps.settings.approval_policies) if tried else None
    if plan is None:
        return StepResult(run=run, outcome="more_pending")
    claim = replace(claim, plan=plan)
    entries = fail_turn(deps, claim.run, plan, text, error=error)
    turn = _delivered(
        deps, claim, entries, outcome="replied", status=plan.status_if_unchanged, turn_id=""
    )
    return finish_turn(deps, claim, turn, hold_approvals=hold_approvals)


@dataclass
class RunSummary:
    run: RunRef
    turns: int = 0
    outcomes: list[str] = field(default_factory=list)
    ended: str = "idle"


def drive_run(deps: Deps, run: RunRef, execution_id: str | None = None) -> RunSummary:
    """Run the workflow loop in-process: bind, then ``run_step`` until the run ends.

    Retryable errors are retried with backoff and jitter like the workflow's ``Retry``; when
    the attempts are spent the user is told and the message consumed. ``LeaseLost`` ends the
    run quietly.
    """
    summary = RunSummary(run=run)
    bind: str | None = execution_id or f"{run.run_id}-{new_id()[:8]}"
    try:
        while True:
            step = _step_with_retry(deps, run, bind)
            run, bind = step.run, None
            if step.turn is not None:
                summary.turns += 1
                summary.outcomes.append(step.turn)
            if step.outcome in ("released", "handover"):
                summary.ended = step.status or step.outcome
                break
            if step.outcome == "deliver" and not _deliver_with_retry(deps, run):
                summary.ended = "undelivered"
                break
    except LeaseLost as exc:
        log.info("run %s stopped: %s", run.run_id, exc)
        summary.ended = "lease_lost"
    summary.run = run
    return summary


def _deliver_with_retry(deps: Deps, run: RunRef) -> bool:
    """The workflow's ``Deliver`` in-process: ``deliver_run`` retried with backoff on
    ``RetryableError``; ``False`` when the attempts are spent (the channel is still down:
    the entries stay undelivered and the run ends, its lease left to lapse for the
    sweeper's next run, like the workflow's ``Undelivered``)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            deliver_run(deps, run)
        except RetryableError as exc:
            if attempt >= deps.settings.retry_attempts:
                log.warning("delivery to %s still failing; left undelivered: %s", run.run_id, exc)
                return False
            _back_off(deps, "delivery", attempt, exc)
        else:
            return True


def _step_with_retry(deps: Deps, run: RunRef, execution_id: str | None) -> StepResult:
    attempt = 0
    while True:
        attempt += 1
        try:
            return run_step(deps, run, execution_id=execution_id)
        except (LeaseLost, PermanentError):
            raise
        except Exception as exc:  # retry classification decides, nothing is swallowed
            if classify_error(exc) != "retry":
                raise
            if attempt >= deps.settings.retry_attempts:
                tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                error = f"{describe_error(exc)} (after {tries})"
                log.warning(
                    "turn of %s failed: %s",
                    run.conversation_id,
                    error,
                    exc_info=not isinstance(exc, RetryableError),  # a bug: keep the traceback
                )
                step = fail_pending_turn(deps, run, retry_exhausted_text(exc), error=error)
                if step.outcome == "more_pending":  # no turn failed: the run's own step did
                    raise
                return step
            _back_off(deps, "turn", attempt, exc)


def _back_off(
    deps: Deps, what: str, attempt: int, exc: BaseException, *, base: float | None = None
) -> None:
    """Wait before retrying ``what`` after its ``attempt``-th failure (1-based): exponential
    backoff with jitter from ``base`` (default: the turn's), as the workflow's ``Retry``."""
    delay = backoff_delay(
        attempt,
        base=deps.settings.retry_base_delay if base is None else base,
        cap=deps.settings.retry_max_delay,
        jitter=random.random(),
    )
    log.info("%s attempt %d failed (%s); retrying in %.2fs", what, attempt, exc, delay)
    deps.clock.sleep(delay)


PERMANENT_FAILURE_NOTICE = "Sorry, I could not answer that message."
"""What the user is told when a turn fails for good (the cause is in the log and trace)."""


def retry_exhausted_text(exc: BaseException) -> str:
    """What the user is told when a turn's retries are spent: plain words, never the
    error itself (class names, provider messages), which the log, the trace and the failed
    message's ``error`` keep."""
    if isinstance(exc, ModelThrottled):
        return "Sorry, the assistant is busy right now. Please try again in a moment."
    if isinstance(exc, RetryableError):
        return "Sorry, the assistant is unavailable right now. Please try again in a moment."
    return "Sorry, something went wrong while answering; the team has been notified."
