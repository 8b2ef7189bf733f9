"""The ports of the core: small Protocols implemented by the adapters.

Every store backend (SQLite, DynamoDB) implements :class:`ConversationStore` and, as a
separate class, :class:`TicketStore`; each passes the same contract suite in
``tests/contract``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from events.identity import Principal
from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import GraphStateView, OutboxPayload, StreamChunk
from events.workflow import RunRef
from workers.core.model import (
    AcceptResult,
    Access,
    CallerValues,
    ConversationState,
    ConversationSummary,
    ConversationWebhook,
    History,
    InboxEntry,
    Lease,
    LogEntry,
    OutboxEntry,
    PendingWork,
    Schedule,
    StreamPart,
    Ticket,
    TurnCommit,
    TurnOutput,
    TurnRequest,
)


class Cancellations(Protocol):
    """Where a cancel tells the run it cancelled to stop at once (in the process that runs
    it); without one, the run stops at its next write (its lease is gone)."""

    def cancel(self, conversation_id: str, token: int) -> None:
        """The run of ``conversation_id`` holding ``token`` was cancelled."""

    def cancelled(self, conversation_id: str, token: int) -> bool:
        """Whether the run of ``conversation_id`` holding ``token`` was cancelled."""


class ConversationStore(Protocol):
    """Inbox, lease, checkpoint, message log and outbox of every conversation."""

    def append_inbox(
        self,
        msg: InboundMessage,
        *,
        now: float,
        default_policy: DoubleTextingPolicy,
        lease_ttl: float | None = None,
        access: Access | None = None,
    ) -> AcceptResult:
        """Append ``msg`` unless its dedupe key was seen; bump the inbox sequence atomically.

        A new conversation records ``msg.tenant`` and ``msg.owner``. With ``access``, an
        existing conversation that it does not admit is ``NotFound`` and nothing is written
        (checked before the dedupe key, so a foreign duplicate learns nothing either).

        A duplicate returns the first message's id with ``duplicate=True``. A new message
        is recorded as :func:`~workers.core.policies.accept_decision` decides, on the
        effective policy and the lease as this write sees them, in the same transaction:
        under ``reject`` a message arriving while a live lease exists is stored as
        rejected, with the decision's notice in the outbox; with ``lease_ttl`` and no live
        lease, the message also takes the lease (``AcceptResult.lease``), as
        ``try_acquire_lease`` would.
        """

    def try_acquire_lease(self, conversation_id: str, *, now: float, ttl: float) -> Lease | None:
        """Take the lease with the next fencing token if none is live; else ``None``."""

    def renew_lease(
        self,
        conversation_id: str,
        token: int,
        *,
        now: float,
        ttl: float,
        bind: str | None = None,
        claim: bool = True,
    ) -> ConversationState:
        """Extend the lease and return the conversation's state (one round trip serves as
        the run's lease check and its read); ``LeaseLost`` if ``token`` no longer holds it.
        With ``claim`` (a turn is about to be planned) the same write records the inbox
        sequence as ``claimed_seq``, which the next commit or release clears; without it,
        the state says whether the last claim ended without a commit.

        With ``bind`` (a run's first step) the lease is also bound to that execution and the
        conversation marked running; ``LeaseLost`` if it is bound to another execution (a
        duplicate start of the same token).
        """

    def handover_lease(self, conversation_id: str, token: int, *, now: float, ttl: float) -> Lease:
        """Swap the lease held by ``token`` for a fresh one (next token), for a new run."""

    def release_lease(
        self,
        conversation_id: str,
        token: int,
        *,
        seen_inbox_seq: int,
        now: float,
        delivered: Sequence[int] = (),
    ) -> bool:
        """Release if ``token`` holds the lease and the inbox did not move past
        ``seen_inbox_seq``; ``False`` if it moved (the run must loop). ``LeaseLost`` if stale.
        The outbox entries ``delivered`` are marked delivered in either case (in the same
        write where the backend allows it)."""

    def hold_for_approval(
        self, conversation_id: str, token: int, task_token: str, *, now: float, ttl: float
    ) -> None:
        """A run waits inside its execution for an approval: keep its lease for ``ttl`` and
        record the task token that resumes it. Any commit or release clears the token.
        ``LeaseLost`` if ``token`` no longer holds the lease."""

    def get_conversation(self, conversation_id: str) -> ConversationState | None: ...

    def create_conversation(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        policy: DoubleTextingPolicy,
        values: CallerValues,
        now: float,
    ) -> bool:
        """Create the conversation before its first message (a thread created before its
        first run), idle, owned by ``owner`` of ``tenant``; its fencing tokens go on above
        an erased one's of the same id. ``False`` (nothing written) if one exists under the
        id, whoever's it is."""

    def list_conversations(
        self, tenant: str, owner: str, *, limit: int, offset: int = 0
    ) -> list[ConversationSummary]:
        """The conversations of ``owner`` in ``tenant`` (those it created), the most
        recently active first: ``limit`` of them from ``offset``."""

    def set_values(self, conversation_id: str, values: CallerValues, *, now: float) -> bool:
        """Replace the conversation's own values (``ConversationState.values``); ``False``
        if there is no such conversation."""

    def pending_inbox(self, conversation_id: str, *, limit: int = 100) -> list[InboxEntry]:
        """Pending inbox entries, oldest first."""

    def load_checkpoint(self, conversation_id: str) -> bytes | None: ...

    def load_pending(
        self, state: ConversationState, *, window: int, limit: int = 100
    ) -> PendingWork:
        """The pending inbox (at most ``limit``, oldest first) with what a turn starts from:
        the checkpoint and the last ``window`` log entries. ``state`` is what ``renew_lease``
        just returned; one round trip where the backend allows it."""

    def load_log(self, conversation_id: str, *, limit: int) -> list[LogEntry]:
        """The last ``limit`` entries of the message log, oldest first."""

    def commit_turn(self, conversation_id: str, commit: TurnCommit) -> list[OutboxEntry]:
        """Apply a turn atomically: mark inbox entries consumed (``failed``, with the error,
        when ``commit.failed`` is set), save the checkpoint, append to the log and the
        outbox, set the status. ``LeaseLost`` if the token is stale; ``TurnSuperseded`` if
        ``expect_inbox_seq`` is set and the inbox moved. Returns the outbox entries written,
        so they can be delivered without reading them back."""

    def pending_outbox(self, conversation_id: str) -> list[OutboxEntry]: ...

    def mark_delivered(self, conversation_id: str, seqs: list[int], *, now: float) -> None: ...

    def mark_sinks(self, conversation_id: str, seq: int, sinks: Collection[str]) -> None:
        """Record that ``sinks`` took outbox entry ``seq`` (it stays undelivered: others
        have not): ``pending_outbox`` returns them as its ``sinks_done``."""

    def conversations_to_sweep(self, *, now: float, limit: int = 100) -> list[str]:
        """Conversations that need a run: pending inbox entries and no live lease, or a lease
        that expired while held (its run died, maybe after committing a reply that was never
        delivered: the new run's idle step delivers it and releases the lease)."""

    def history(self, conversation_id: str) -> History | None: ...

    def spend_quota(
        self, key: str, amount: int, *, limit: int, window_seconds: float, now: float
    ) -> float | None:
        """Add ``amount`` to ``key``'s use in the current fixed window (``now`` rounded down
        to ``window_seconds``) if that keeps it within ``limit``, atomically; ``None`` when
        it did, else the seconds until the window ends (nothing added)."""

    def expired_conversations(self, *, before: float, limit: int = 100) -> list[str]:
        """Conversations last used before ``before`` with nothing pending and no live lease
        (for the retention); a store that expires them itself (a TTL) lists none."""

    def forget(
        self, conversation_id: str, *, idle_before: float | None = None
    ) -> dict[str, int] | None:
        """Erase the conversation: its state, inbox, outbox, log, checkpoint, dedupe
        markers, connections and stored objects. What was removed, by kind (``None``: no
        such conversation, or with ``idle_before`` one that is no longer idle since before
        that time: a lease, a pending message, a later update). A run still going finds
        its lease gone and writes nothing."""

    def add_connection(self, connection_id: str, conversation_id: str, *, now: float) -> None: ...

    def remove_connection(self, connection_id: str) -> None: ...

    def list_connections(self, conversation_id: str) -> list[str]: ...


class MemoryEraser(Protocol):
    """Erases what a customer keeps in the graphs' long-term memory (the LangGraph store a
    graph sees as ``runtime.store``): ``forget`` and the retention call it when asked to
    erase a conversation owner's memories too."""

    def forget_customer(self, customer: str) -> int:
        """Delete every memory of ``customer`` (:attr:`ConversationState.customer`); how
        many were deleted."""


class TicketStore(Protocol):
    """Support tickets the agent's tools read and write; writes are idempotent by key. Each
    ticket belongs to a customer; another customer's ticket does not exist for a caller
    (``None``, ``NotFound``). Independent of :class:`ConversationStore` (a backend may keep
    both in one database)."""

    def create_ticket(
        self,
        *,
        idempotency_key: str,
        conversation_id: str,
        customer: str,
        subject: str,
        body: str,
        priority: str,
        now: float,
    ) -> Ticket: ...

    def get_ticket(self, ticket_id: int, *, customer: str) -> Ticket | None: ...

    def update_ticket(
        self,
        ticket_id: int,
        *,
        customer: str,
        idempotency_key: str,
        status: str | None,
        priority: str | None,
        comment: str | None,
        now: float,
    ) -> Ticket: ...


class Scheduler(Protocol):
    """The conversations' schedules and what fires them: a table and a timer (embedded),
    DynamoDB items and EventBridge Scheduler (AWS). Whatever fires one calls the core's
    :func:`~workers.core.schedules.fire_schedule`; a firing becomes an inbox message."""

    def add(self, schedule: Schedule, *, limit: int) -> Schedule:
        """Keep ``schedule`` and arm it; the one kept under its id if there is one, armed
        or done (an agent's follow-up planned again by a retried turn, a request sent
        again). ``BadInput`` (``too_many_schedules``) when its conversation has ``limit``
        armed already."""

    def get(self, conversation_id: str, schedule_id: str) -> Schedule | None:
        """The schedule, armed or done (``next_fire`` ``None``)."""

    def for_conversation(self, conversation_id: str) -> list[Schedule]:
        """The conversation's armed schedules, the next to fire first."""

    def remove(self, conversation_id: str, schedule_id: str) -> bool:
        """Disarm and delete it; ``False`` if there is no such armed schedule."""

    def fired(
        self, schedule: Schedule, *, next_fire: float | None, outcome: str, now: float
    ) -> None:
        """Record a firing: a one-off (``next_fire`` is ``None``) is done (kept a while,
        :data:`~workers.core.model.DONE_KEPT_SECONDS`, neither listed nor armed), a
        recurring one fires next at ``next_fire``."""

    def forget(self, conversation_id: str) -> int:
        """Disarm and delete every schedule of the conversation (its erasure); how many."""


class ConversationWebhooks(Protocol):
    """The conversations' own webhook subscriptions (the runtime's webhook queue keeps
    them; its sender posts their deliveries)."""

    def add_webhook(self, hook: ConversationWebhook, *, limit: int) -> ConversationWebhook:
        """Keep ``hook``; ``BadInput`` (``too_many_webhooks``) when its conversation has
        ``limit`` already."""

    def webhooks_of(self, conversation_id: str) -> list[ConversationWebhook]:
        """The conversation's subscriptions, oldest first."""

    def webhook(self, conversation_id: str, webhook_id: str) -> ConversationWebhook | None:
        """One of the conversation's subscriptions (``None``: deleted, or never made)."""

    def remove_webhook(self, conversation_id: str, webhook_id: str) -> bool:
        """Delete it, and its deliveries not sent yet; ``False`` if there is none."""

    def forget_webhooks(self, conversation_id: str) -> int:
        """Delete the conversation's subscriptions (its erasure); how many."""


class Authenticator(Protocol):
    """Turns a caller's credentials into a :class:`~events.identity.Principal`."""

    def authenticate(self, token: str | None) -> Principal:
        """The principal ``token`` proves; ``Unauthenticated`` (with a reason code) for no
        token or a bad one, ``RetryableError`` when the keys cannot be fetched."""


class WorkflowStarter(Protocol):
    """Starts a run (a workflow execution) for a conversation whose lease was just taken."""

    def start(self, run: RunRef) -> None: ...

    def resume(self, task_token: str) -> None:
        """Wake a run waiting inside its execution (Standard workflows) for an approval."""


REDELIVERY: ContextVar[bool] = ContextVar("agentworker_redelivery", default=False)
"""True while the core's ``deliver`` sends outbox entries (an earlier attempt, maybe in
another process, may have shown them already before it failed): a sink that can see what
its channel shows checks it first (the Slack sink: the thread's reply metadata)."""


class ReplySink(Protocol):
    """Sends outbox payloads and streamed chunks to the conversation's channel."""

    def send(self, payload: OutboxPayload) -> None:
        """Deliver one payload; raise ``RetryableError`` to retry later."""

    def send_chunk(self, chunk: StreamChunk) -> None:
        """Best-effort streaming of a reply in progress; never raises for a gone client."""


@runtime_checkable
class PerSinkDelivery(Protocol):
    """A sink made of named sinks (the AWS runtime's fan-out): it sends only to those that
    have not taken a payload yet, and says which did when another fails for now."""

    def send_missing(self, payload: OutboxPayload, done: frozenset[str]) -> None:
        """Send to every sink not in ``done``; ``PartialDelivery`` (the sinks that now have
        it) when one fails for now, after trying the others."""


@dataclass(frozen=True)
class Feedback:
    """A user's rating of a reply, for the trace of the turn that wrote it."""

    name: str
    """The assessment's name (``user_feedback`` for the thumbs)."""
    value: float | bool | str
    source_id: str
    """Who gave it (the sender's principal id)."""
    rationale: str | None = None
    reply_id: str | None = None
    conversation_id: str | None = None
    """The rated reply's conversation: its erasure drops feedback not exported yet."""
    withdrawn: bool = False
    """The source takes this rating back (a Slack reaction removed): the trace's matching
    assessments (same name, value, source and reply) are deleted."""


class SpanHandle(Protocol):
    def set_outputs(self, outputs: Any) -> None: ...

    def set_attributes(self, attributes: dict[str, Any]) -> None: ...


class OpenSpan(SpanHandle, Protocol):
    """A span started with ``Tracer.start_span``: it ends when ``end`` is called."""

    def end(self, error: BaseException | None = None) -> None:
        """End the span; with ``error``, record it and mark the span failed."""


class Tracer(Protocol):
    """One trace per turn (root span AGENT) with child spans; MLflow in the adapters."""

    def turn(
        self, name: str, *, tags: dict[str, str], inputs: Any
    ) -> AbstractContextManager[SpanHandle]: ...

    def span(
        self, name: str, *, kind: str, inputs: Any = None
    ) -> AbstractContextManager[SpanHandle]: ...

    def start_span(
        self, name: str, *, kind: str, inputs: Any = None, parent: OpenSpan | None = None
    ) -> OpenSpan:
        """A child of ``parent`` (else of the current span) that does not become the current
        span and ends by its ``end``: for callbacks that open and close a span in separate
        calls (model and tool calls of the app's graph). A no-op span outside a turn."""

    def forget(self, conversation_id: str) -> int | None:
        """Delete the conversation's traces, exported or not, and drop those of its turns
        still running (they started before this call); how many were deleted, or ``None``
        when the deletion is pending: the tracking store cannot be reached now (the embedded
        runtime's exporter finishes it later; elsewhere the caller says so, to try again).
        Never waits long on the tracking store."""

    def feedback(self, turn_id: str, feedback: Feedback) -> None:
        """Attach a user's feedback to the trace of the turn ``turn_id`` (as an MLflow
        assessment); it may be recorded after this returns, never on a turn's path."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the traces recorded so far are exported (False: ``timeout`` passed
        or the store is unreachable; they are kept). Lambda handlers call it last."""

    def close(self) -> None:
        """Export what is left and stop (the process is about to end)."""


class TurnAgent(Protocol):
    """Runs the agent graph for one turn from a checkpoint; no persistence of its own."""

    def run_turn(
        self,
        request: TurnRequest,
        *,
        on_chunk: Callable[[StreamPart], None] | None,
        tracer: Tracer,
    ) -> TurnOutput: ...

    def inspect(
        self,
        conversation_id: str,
        checkpoint: bytes | None,
        history: Sequence[LogEntry],
        *,
        with_messages: bool = False,
    ) -> GraphStateView:
        """The graph state a turn would start from (``history``: the log window); with
        ``with_messages``, its messages as JSON too (``GraphStateView.message_list``)."""


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    def sleep(self, seconds: float) -> None: ...


class NullSpan:
    def set_outputs(self, outputs: Any) -> None:
        return None

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        return None

    def end(self, error: BaseException | None = None) -> None:
        return None


class NullTracer:
    """A tracer that records nothing (tracing disabled, unit tests)."""

    @contextmanager
    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Iterator[SpanHandle]:
        yield NullSpan()

    @contextmanager
    def span(self, name: str, *, kind: str, inputs: Any = None) -> Iterator[SpanHandle]:
        yield NullSpan()

    def start_span(
        self, name: str, *, kind: str, inputs: Any = None, parent: OpenSpan | None = None
    ) -> OpenSpan:
        return NullSpan()

    def forget(self, conversation_id: str) -> int | None:
        return 0

    def feedback(self, turn_id: str, feedback: Feedback) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        return None
