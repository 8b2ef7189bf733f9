"""In-memory fakes of the core's ports, for unit tests (no I/O). The fake stores pass the
same contract suites as the real backends (tests/contract), so they cannot drift from them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import (
    CustomChunk,
    GraphStateView,
    Notice,
    OutboxPayload,
    ReplyChunk,
    StatusChunk,
    StreamChunk,
    TokenUsage,
    UpdateChunk,
)
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
    PendingInterrupt,
    PendingWork,
    Schedule,
    Ticket,
    ToolApproval,
    TurnCommit,
    TurnOutput,
    TurnRequest,
    admitted,
)
from workers.core.policies import accept_decision, window_start
from workers.core.ports import Tracer
from workers.core.steps import Deps
from workers.errors import BadInput, LeaseLost, NotFound, RetryableError, TurnSuperseded


@dataclass
class _Conv:
    state: ConversationState
    inbox: list[InboxEntry] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)
    checkpoint: bytes | None = None


def replace_status(commit: TurnCommit) -> Callable[[InboxEntry], InboxEntry]:
    """How ``commit`` marks the inbox entries it consumes: ``consumed``, or ``failed`` with
    its error."""
    if commit.failed is None:
        return lambda e: replace(e, status="consumed")
    return lambda e: replace(e, status="failed", error=commit.failed)


class InMemoryConversationStore:
    """Dict-backed ``ConversationStore``; one lock makes it atomic."""

    def __init__(self) -> None:
        self._convs: dict[str, _Conv] = {}
        self._lock = threading.RLock()
        self._conns: dict[tuple[str, str], float] = {}
        self._quotas: dict[str, tuple[float, int]] = {}
        self._erased_tokens: dict[str, int] = {}
        """The last token of each erased conversation: one created again goes on above."""
        self.calls: list[str] = []

    def _get(self, cid: str) -> _Conv:
        conv = self._convs.get(cid)
        if conv is None:
            raise NotFound(f"unknown conversation {cid}", field="conversation_id")
        return conv

    def _holding(self, cid: str, token: int) -> _Conv:
        conv = self._convs.get(cid)
        if conv is None or conv.state.lease_token != token:
            raise LeaseLost(f"token {token} no longer holds {cid}")
        return conv

    def append_inbox(
        self,
        msg: InboundMessage,
        *,
        now: float,
        default_policy: DoubleTextingPolicy,
        lease_ttl: float | None = None,
        access: Access | None = None,
    ) -> AcceptResult:
        self.calls.append("append_inbox")
        with self._lock:
            cid = msg.conversation_id
            conv = self._convs.get(cid)
            owned = None if conv is None else (conv.state.tenant, conv.state.owner)
            if access is not None and not admitted(access, owned):
                raise NotFound.conversation(cid)
            if conv is not None:
                for e in conv.inbox:
                    if e.message.effective_dedupe_key == msg.effective_dedupe_key:
                        return AcceptResult(
                            e.message.message_id,
                            e.seq,
                            duplicate=True,
                            rejected=e.status == "rejected",
                        )
            if conv is None:
                state = ConversationState(
                    cid,
                    msg.policy or default_policy,
                    "idle",
                    0,
                    self._erased_tokens.get(cid, 0),
                    None,
                    None,
                    None,
                    None,
                    now,
                    now,
                    tenant=msg.tenant,
                    owner=msg.owner,
                )
                conv = self._convs[cid] = _Conv(state)
            st = conv.state
            policy = msg.policy or st.policy
            decision = accept_decision(policy, lease_live=st.lease_live(now), lease_ttl=lease_ttl)
            seq = st.inbox_seq + 1
            conv.state = replace(st, inbox_seq=seq, policy=policy, updated_at=now)
            conv.inbox.append(InboxEntry(seq, msg, decision.status))
            if decision.notice is not None:
                notice = Notice(
                    conversation_id=cid, in_reply_to=[msg.message_id], text=decision.notice
                )
                self._outbox(conv, [notice])
            lease = None
            if decision.lease_ttl is not None:
                lease = self._take_lease(conv, now, decision.lease_ttl)
            return AcceptResult(
                msg.message_id, seq, duplicate=False, rejected=decision.rejected, lease=lease
            )

    def _take_lease(self, conv: _Conv, now: float, ttl: float) -> Lease:
        st = conv.state
        token = st.last_token + 1
        conv.state = replace(
            st,
            last_token=token,
            lease_token=token,
            lease_expires_at=now + ttl,
            lease_execution_id=None,
        )
        return Lease(st.conversation_id, token, now + ttl)

    def try_acquire_lease(self, conversation_id: str, *, now: float, ttl: float) -> Lease | None:
        self.calls.append("try_acquire_lease")
        with self._lock:
            conv = self._get(conversation_id)
            if conv.state.lease_live(now):
                return None
            return self._take_lease(conv, now, ttl)

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
        self.calls.append("renew_lease")
        with self._lock:
            conv = self._holding(conversation_id, token)
            claimed = conv.state.inbox_seq if claim else conv.state.claimed_seq
            conv.state = replace(conv.state, lease_expires_at=now + ttl, claimed_seq=claimed)
            if bind is not None:
                bound = conv.state.lease_execution_id
                if bound is not None and bound != bind:
                    raise LeaseLost(f"token {token} is already bound to {bound}")
                status = "running" if conv.state.status == "idle" else conv.state.status
                conv.state = replace(conv.state, lease_execution_id=bind, status=status)
            pending = sum(1 for e in conv.inbox if e.status == "pending")
            undelivered = sum(1 for e in conv.outbox if not e.delivered)
            return replace(conv.state, pending_count=pending, undelivered_count=undelivered)

    def handover_lease(self, conversation_id: str, token: int, *, now: float, ttl: float) -> Lease:
        self.calls.append("handover_lease")
        with self._lock:
            conv = self._holding(conversation_id, token)
            new = conv.state.last_token + 1
            conv.state = replace(
                conv.state,
                last_token=new,
                lease_token=new,
                lease_expires_at=now + ttl,
                lease_execution_id=None,
            )
            return Lease(conversation_id, new, now + ttl)

    def hold_for_approval(
        self, conversation_id: str, token: int, task_token: str, *, now: float, ttl: float
    ) -> None:
        self.calls.append("hold_for_approval")
        with self._lock:
            conv = self._holding(conversation_id, token)
            conv.state = replace(
                conv.state, lease_expires_at=now + ttl, approval_task_token=task_token
            )

    def release_lease(
        self,
        conversation_id: str,
        token: int,
        *,
        seen_inbox_seq: int,
        now: float,
        delivered: Sequence[int] = (),
    ) -> bool:
        self.calls.append("release_lease")
        with self._lock:
            conv = self._holding(conversation_id, token)
            self._mark(conv, delivered)
            if conv.state.inbox_seq != seen_inbox_seq:
                return False
            status = "idle" if conv.state.status == "running" else conv.state.status
            conv.state = replace(
                conv.state,
                lease_token=None,
                lease_expires_at=None,
                lease_execution_id=None,
                approval_task_token=None,
                claimed_seq=None,
                status=status,
            )
            return True

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
        self.calls.append("create_conversation")
        with self._lock:
            if conversation_id in self._convs:
                return False
            floor = self._erased_tokens.get(conversation_id, 0)
            state = ConversationState(
                conversation_id, policy, "idle", 0, floor, None, None, None, None, now, now
            )
            state = replace(state, tenant=tenant, owner=owner, values=values, pending_count=0)
            self._convs[conversation_id] = _Conv(state)
            return True

    def list_conversations(
        self, tenant: str, owner: str, *, limit: int, offset: int = 0
    ) -> list[ConversationSummary]:
        self.calls.append("list_conversations")
        with self._lock:
            mine = [
                c.state
                for c in self._convs.values()
                if (c.state.tenant, c.state.owner) == (tenant, owner)
            ]
        mine.sort(key=lambda s: (-s.updated_at, s.conversation_id))
        return [
            ConversationSummary(s.conversation_id, s.status, s.created_at, s.updated_at, s.values)
            for s in mine[offset : offset + limit]
        ]

    def set_values(self, conversation_id: str, values: CallerValues, *, now: float) -> bool:
        self.calls.append("set_values")
        with self._lock:
            conv = self._convs.get(conversation_id)
            if conv is None:
                return False
            conv.state = replace(conv.state, values=values, updated_at=now)
            return True

    def get_conversation(self, conversation_id: str) -> ConversationState | None:
        self.calls.append("get_conversation")
        conv = self._convs.get(conversation_id)
        return None if conv is None else conv.state

    def pending_inbox(self, conversation_id: str, *, limit: int = 100) -> list[InboxEntry]:
        self.calls.append("pending_inbox")
        conv = self._convs.get(conversation_id)
        if conv is None:
            return []
        return [e for e in conv.inbox if e.status == "pending"][:limit]

    def load_checkpoint(self, conversation_id: str) -> bytes | None:
        self.calls.append("load_checkpoint")
        conv = self._convs.get(conversation_id)
        return None if conv is None else conv.checkpoint

    def load_pending(
        self, state: ConversationState, *, window: int, limit: int = 100
    ) -> PendingWork:
        cid = state.conversation_id
        work = PendingWork(
            self.pending_inbox(cid, limit=limit),
            self.load_checkpoint(cid),
            self.load_log(cid, limit=window),
        )
        del self.calls[-3:]  # one call of the port, not three
        self.calls.append("load_pending")
        return work

    def load_log(self, conversation_id: str, *, limit: int) -> list[LogEntry]:
        self.calls.append("load_log")
        conv = self._convs.get(conversation_id)
        if conv is None or limit <= 0:
            return []
        return conv.log[-limit:]

    def commit_turn(self, conversation_id: str, commit: TurnCommit) -> list[OutboxEntry]:
        self.calls.append("commit_turn")
        with self._lock:
            conv = self._holding(conversation_id, commit.token)
            if (
                commit.expect_inbox_seq is not None
                and conv.state.inbox_seq != commit.expect_inbox_seq
            ):
                raise TurnSuperseded("inbox moved")
            consumed = set(commit.consumed)
            done = replace_status(commit)
            conv.inbox = [
                done(e) if e.seq in consumed and e.status == "pending" else e for e in conv.inbox
            ]
            if commit.checkpoint is not None:
                conv.checkpoint = commit.checkpoint
            known = {e.message_id for e in conv.log}
            conv.log.extend(e for e in commit.log if e.message_id not in known)
            written = self._outbox(conv, commit.outbox)
            status = commit.status if commit.status != "idle" else "running"
            conv.state = replace(
                conv.state,
                status=status,
                pending_approval=commit.pending_approval,
                approval_task_token=None,
                claimed_seq=None,
                lease_expires_at=commit.lease_until or conv.state.lease_expires_at,
            )
            return written

    def _outbox(self, conv: _Conv, payloads: Sequence[OutboxPayload]) -> list[OutboxEntry]:
        start = len(conv.outbox)
        entries = [OutboxEntry(start + i, p) for i, p in enumerate(payloads, start=1)]
        conv.outbox.extend(entries)
        return entries

    def pending_outbox(self, conversation_id: str) -> list[OutboxEntry]:
        self.calls.append("pending_outbox")
        conv = self._convs.get(conversation_id)
        return [] if conv is None else [e for e in conv.outbox if not e.delivered]

    def mark_delivered(self, conversation_id: str, seqs: list[int], *, now: float) -> None:
        self.calls.append("mark_delivered")
        with self._lock:
            self._mark(self._get(conversation_id), seqs)

    @staticmethod
    def _mark(conv: _Conv, seqs: Sequence[int]) -> None:
        marks = set(seqs)
        conv.outbox = [replace(e, delivered=True) if e.seq in marks else e for e in conv.outbox]

    def conversations_to_sweep(self, *, now: float, limit: int = 100) -> list[str]:
        self.calls.append("conversations_to_sweep")
        return [
            cid
            for cid, conv in self._convs.items()
            if (conv.state.lease_token is not None and not conv.state.lease_live(now))
            or (conv.state.lease_token is None and any(e.status == "pending" for e in conv.inbox))
        ][:limit]

    def history(self, conversation_id: str) -> History | None:
        conv = self._convs.get(conversation_id)
        return None if conv is None else History(conv.state, list(conv.inbox), list(conv.outbox))

    def spend_quota(
        self, key: str, amount: int, *, limit: int, window_seconds: float, now: float
    ) -> float | None:
        start = window_start(now, window_seconds)
        with self._lock:
            seen_start, used = self._quotas.get(key, (start, 0))
            used = used if seen_start == start else 0
            if used + amount > limit:
                return start + window_seconds - now
            self._quotas[key] = (start, used + amount)
            return None

    def mark_sinks(self, conversation_id: str, seq: int, sinks: Collection[str]) -> None:
        with self._lock:
            conv = self._convs.get(conversation_id)
            if conv is None:
                return
            conv.outbox = [
                replace(e, sinks_done=e.sinks_done | frozenset(sinks)) if e.seq == seq else e
                for e in conv.outbox
            ]

    def expired_conversations(self, *, before: float, limit: int = 100) -> list[str]:
        with self._lock:
            return [
                cid
                for cid, conv in sorted(self._convs.items(), key=lambda kv: kv[1].state.updated_at)
                if conv.state.updated_at < before
                and not conv.state.lease_live(before)
                and not any(e.status == "pending" for e in conv.inbox)
            ][:limit]

    def forget(
        self, conversation_id: str, *, idle_before: float | None = None
    ) -> dict[str, int] | None:
        with self._lock:
            if idle_before is not None and conversation_id not in self.expired_conversations(
                before=idle_before, limit=len(self._convs)
            ):
                return None
            conv = self._convs.pop(conversation_id, None)
            if conv is None:
                return None
            self._erased_tokens[conversation_id] = conv.state.last_token
            links = [k for k in self._conns if k[1] == conversation_id]
            for link in links:
                del self._conns[link]
            return {
                "inbox": len(conv.inbox),
                "outbox": len(conv.outbox),
                "log": len(conv.log),
                "checkpoint": int(conv.checkpoint is not None),
                "connections": len(links),
                "conversation": 1,
            }

    def add_connection(self, connection_id: str, conversation_id: str, *, now: float) -> None:
        self._conns[(connection_id, conversation_id)] = now

    def remove_connection(self, connection_id: str) -> None:
        for key in [k for k in self._conns if k[0] == connection_id]:
            del self._conns[key]

    def list_connections(self, conversation_id: str) -> list[str]:
        return [
            c
            for (c, cid), _ in sorted(self._conns.items(), key=lambda kv: kv[1])
            if cid == conversation_id
        ]


class InMemoryTicketStore:
    """Dict-backed ``TicketStore``; one lock makes it atomic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: dict[int, Ticket] = {}
        self._effects: dict[str, int] = {}

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
    ) -> Ticket:
        with self._lock:
            if idempotency_key in self._effects:
                return self._owned(self._effects[idempotency_key], customer)
            tid = len(self._tickets) + 1
            self._tickets[tid] = Ticket(
                tid, conversation_id, subject, body, "open", priority, now, now, customer=customer
            )
            self._effects[idempotency_key] = tid
            return self._tickets[tid]

    def get_ticket(self, ticket_id: int, *, customer: str) -> Ticket | None:
        ticket = self._tickets.get(ticket_id)
        return None if ticket is None else ticket.of(customer)

    def _owned(self, ticket_id: int, customer: str) -> Ticket:
        ticket = self.get_ticket(ticket_id, customer=customer)
        if ticket is None:
            raise NotFound.ticket(ticket_id)
        return ticket

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
    ) -> Ticket:
        with self._lock:
            ticket = self._owned(ticket_id, customer)
            if idempotency_key in self._effects:
                return ticket
            comments = [*ticket.comments, comment] if comment else ticket.comments
            ticket = replace(
                ticket,
                status=status or ticket.status,
                priority=priority or ticket.priority,
                comments=comments,
                updated_at=now,
            )
            self._tickets[ticket_id] = ticket
            self._effects[idempotency_key] = ticket_id
            return ticket


class ManualClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


class RecordingStarter:
    def __init__(self) -> None:
        self.runs: list[RunRef] = []
        self.resumed: list[str] = []

    def start(self, run: RunRef) -> None:
        self.runs.append(run)

    def resume(self, task_token: str) -> None:
        self.resumed.append(task_token)


class RecordingSink:
    def __init__(self) -> None:
        self.sent: list[OutboxPayload] = []
        self.chunks: list[ReplyChunk] = []
        """The reply's streamed text."""
        self.custom: list[CustomChunk] = []
        """What the graph streamed of its own."""
        self.statuses: list[StatusChunk] = []
        self.updates: list[UpdateChunk] = []
        """What the turns said they were doing."""
        self.failing = False
        """While set, ``send`` raises ``RetryableError`` (a channel that is down)."""

    def send(self, payload: OutboxPayload) -> None:
        if self.failing:
            raise RetryableError("the channel is down")
        self.sent.append(payload)

    def send_chunk(self, chunk: StreamChunk) -> None:
        if isinstance(chunk, CustomChunk):
            self.custom.append(chunk)
        elif isinstance(chunk, StatusChunk):
            self.statuses.append(chunk)
        elif isinstance(chunk, UpdateChunk):
            self.updates.append(chunk)
        else:
            self.chunks.append(chunk)


class ScriptedAgent:
    """A ``TurnAgent`` that echoes, or runs a hook first (to fail, or to act mid-turn)."""

    def __init__(self) -> None:
        self.requests: list[TurnRequest] = []
        self.hook: Any = None

    def run_turn(self, request: TurnRequest, *, on_chunk: Any, tracer: Tracer) -> TurnOutput:
        self.requests.append(request)
        if self.hook is not None:
            self.hook(request)
        text = " + ".join(request.texts)
        if request.resume is not None:
            text = f"resumed {request.resume.interrupt_id} with {json.dumps(request.resume.value)}"
        if on_chunk is not None:
            on_chunk(text)
        if "approve-me" in text or "ask-me" in text:
            approval = ToolApproval("update_ticket", {"x": 1}, "ok?")
            return TurnOutput(
                checkpoint=b"waiting",
                log=[],
                reply_text=None,
                interrupt=PendingInterrupt(
                    f"int-{request.turn_id}",
                    {"question": "which?"},
                    "ok?",
                    approval if "approve-me" in text else None,
                ),
                usage=TokenUsage(),
            )
        return TurnOutput(
            checkpoint=f"ckpt:{request.turn_id}".encode(),
            log=[LogEntry(f"{request.turn_id}-u", "human", text.encode())],
            reply_text=f"echo {text}",
            interrupt=None,
            usage=TokenUsage(input_tokens=3, output_tokens=2),
        )

    def inspect(
        self,
        conversation_id: str,
        checkpoint: bytes | None,
        history: Sequence[LogEntry],
        *,
        with_messages: bool = False,
    ) -> GraphStateView:
        return GraphStateView(
            conversation_id=conversation_id,
            checkpoint_id=None if checkpoint is None else checkpoint.decode(),
            values={},
            messages=len(history),
            next=[],
            interrupts=[],
        )


def in_memory_aws(monkeypatch: Any, **env: str) -> Deps:
    """In-memory deps that the Lambda handlers get from ``bootstrap.aws_deps`` for the rest
    of the test (``env``: the settings the handlers read, e.g. the Slack signing secret)."""
    from workers import bootstrap

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    deps = Deps(
        InMemoryConversationStore(),
        ScriptedAgent(),
        RecordingSink(),
        RecordingStarter(),
        ManualClock(),
        scheduler=InMemoryScheduler(),
        webhooks=InMemoryWebhooks(),
    )
    bootstrap.reset_aws_deps()
    monkeypatch.setattr(bootstrap, "aws_deps", lambda **_: deps)
    return deps


@dataclass
class RecordedSpan:
    """One span a ``SpanRecordingTracer`` saw, as plain data."""

    name: str
    kind: str
    inputs: Any
    parent: RecordedSpan | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    outputs: Any = None
    error: BaseException | None = None
    ended: bool = False
    tags: dict[str, str] = field(default_factory=dict)

    def set_outputs(self, outputs: Any) -> None:
        self.outputs = outputs

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.attributes.update(attributes)

    def end(self, error: BaseException | None = None) -> None:
        self.error, self.ended = error, True


class SpanRecordingTracer:
    """The ``Tracer`` port recording every span (turn roots, context spans and callback
    spans) with its inputs, attributes and outputs."""

    def __init__(self) -> None:
        self.spans: list[RecordedSpan] = []
        self._current: list[RecordedSpan] = []

    def named(self, name: str) -> list[RecordedSpan]:
        return [s for s in self.spans if s.name == name]

    @contextmanager
    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Iterator[RecordedSpan]:
        with self._open(RecordedSpan(name, "AGENT", inputs, tags=dict(tags))) as span:
            yield span

    @contextmanager
    def span(self, name: str, *, kind: str, inputs: Any = None) -> Iterator[RecordedSpan]:
        parent = self._current[-1] if self._current else None
        with self._open(RecordedSpan(name, kind, inputs, parent)) as span:
            yield span

    @contextmanager
    def _open(self, span: RecordedSpan) -> Iterator[RecordedSpan]:
        self.spans.append(span)
        self._current.append(span)
        try:
            yield span
        except BaseException as exc:
            span.end(exc)
            raise
        finally:
            self._current.pop()
            span.ended = True

    def start_span(
        self, name: str, *, kind: str, inputs: Any = None, parent: Any = None
    ) -> RecordedSpan:
        above = parent if isinstance(parent, RecordedSpan) else None
        span = RecordedSpan(
            name, kind, inputs, above or (self._current[-1] if self._current else None)
        )
        self.spans.append(span)
        return span

    def forget(self, conversation_id: str) -> int | None:
        return 0

    def feedback(self, turn_id: str, feedback: Any) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        return None


class ListSink:
    """A trace sink (the recorder's) that keeps what it is given; ``forgets`` is what its
    ``forget`` answers (``None``: the tracking store is down, the erasure pending)."""

    def __init__(self, *, forgets: int | None = 0) -> None:
        self.records: list[dict[str, Any]] = []
        self.forgotten: list[tuple[str, int]] = []
        self._forgets = forgets

    def put(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        return None

    def forget(self, conversation_id: str, before: int) -> int | None:
        self.forgotten.append((conversation_id, before))
        return self._forgets


class CountingMemories:
    """A ``MemoryEraser``: memories counted by customer, erased on request."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self.erased: list[str] = []

    def forget_customer(self, customer: str) -> int:
        self.erased.append(customer)
        return self.counts.pop(customer, 0)


class InMemoryScheduler:
    """``Scheduler`` in dicts; ``due`` as the embedded runtime's timer asks it."""

    def __init__(self) -> None:
        self.kept: dict[str, Schedule] = {}
        self.fail_fired = 0
        """While above zero, ``fired`` raises (a crash after the firing's accept) and counts
        down."""

    def add(self, schedule: Schedule, *, limit: int) -> Schedule:
        kept = self.kept.get(schedule.schedule_id)
        if kept is not None:
            return kept
        if len(self.for_conversation(schedule.conversation_id)) >= limit:
            raise BadInput("too_many_schedules", "too many", field="conversation_id")
        self.kept[schedule.schedule_id] = schedule
        return schedule

    def get(self, conversation_id: str, schedule_id: str) -> Schedule | None:
        kept = self.kept.get(schedule_id)
        return kept if kept is not None and kept.conversation_id == conversation_id else None

    def for_conversation(self, conversation_id: str) -> list[Schedule]:
        found = [
            s
            for s in self.kept.values()
            if s.conversation_id == conversation_id and s.next_fire is not None
        ]
        return sorted(found, key=lambda s: (s.next_fire or 0.0, s.schedule_id))

    def remove(self, conversation_id: str, schedule_id: str) -> bool:
        kept = self.get(conversation_id, schedule_id)
        if kept is None or kept.next_fire is None:
            return False
        del self.kept[schedule_id]
        return True

    def fired(
        self, schedule: Schedule, *, next_fire: float | None, outcome: str, now: float
    ) -> None:
        if self.fail_fired:
            self.fail_fired -= 1
            raise RetryableError("crashed before the firing was recorded")
        kept = self.kept.get(schedule.schedule_id)
        if kept is not None:
            self.kept[schedule.schedule_id] = kept.after_firing(next_fire, outcome, now)

    def forget(self, conversation_id: str) -> int:
        gone = [s.schedule_id for s in self.kept.values() if s.conversation_id == conversation_id]
        for schedule_id in gone:
            del self.kept[schedule_id]
        return len(gone)

    def due(self, now: float) -> list[tuple[str, str, float]]:
        found = [s for s in self.kept.values() if s.next_fire is not None and s.next_fire <= now]
        found.sort(key=lambda s: s.next_fire or 0.0)
        return [(s.conversation_id, s.schedule_id, s.next_fire or 0.0) for s in found]


class InMemoryWebhooks:
    """``ConversationWebhooks`` in a dict (by conversation, then id, in the order made)."""

    def __init__(self) -> None:
        self.kept: dict[str, dict[str, ConversationWebhook]] = {}

    def add_webhook(self, hook: ConversationWebhook, *, limit: int) -> ConversationWebhook:
        mine = self.kept.setdefault(hook.conversation_id, {})
        if len(mine) >= limit:
            raise BadInput("too_many_webhooks", "too many", field="conversation_id")
        mine[hook.webhook_id] = hook
        return hook

    def webhooks_of(self, conversation_id: str) -> list[ConversationWebhook]:
        found = self.kept.get(conversation_id, {}).values()
        return sorted(found, key=lambda h: (h.created_at, h.webhook_id))

    def webhook(self, conversation_id: str, webhook_id: str) -> ConversationWebhook | None:
        return self.kept.get(conversation_id, {}).get(webhook_id)

    def remove_webhook(self, conversation_id: str, webhook_id: str) -> bool:
        return self.kept.get(conversation_id, {}).pop(webhook_id, None) is not None

    def forget_webhooks(self, conversation_id: str) -> int:
        return len(self.kept.pop(conversation_id, {}))
