"""What the suite watches and how it breaks things: a store probe that records every commit
and stops the worker right after a chosen store write, a ledger of what clients sent and
what every sink received, and the invariants checked against both.

The invariants (issue 11): every accepted message gets exactly one answer (a reply, a
request, or a failure notice naming it); no payload reaches any sink twice; the checkpoint
history of each conversation is linear (every commit that changed it started from the one
before); no lease is left held; nothing accepted is lost.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from events.inbound import InboundMessage
from events.outbound import OutboxPayload, StreamChunk
from workers.core.model import ConversationState, PendingWork, TurnCommit
from workers.core.ports import ReplySink
from workers.errors import RetryableError

WRITES = (
    "append_inbox",
    "try_acquire_lease",
    "renew_lease",
    "handover_lease",
    "release_lease",
    "hold_for_approval",
    "commit_turn",
    "mark_delivered",
    "mark_sinks",
)
"""Every store write of the turn contract (the ``ConversationStore`` methods that write)."""

ANSWERS = frozenset({"reply", "notice", "approval_request", "interrupt"})
"""Payload types that answer the messages they name in ``in_reply_to``."""


class InjectedCrash(BaseException):  # noqa: N818 - a process death, not an error
    """The worker dies here: a ``BaseException``, so no retry loop or handler catches it,
    as nothing in a killed process runs after the kill."""


@dataclass(frozen=True)
class Fault:
    """Stop the worker right after the ``occurrence``-th write ``method`` makes for
    ``conversation_id`` (``kind``: how it stops, which the runtime under test defines)."""

    method: str
    occurrence: int
    conversation_id: str
    kind: str = "crash"

    @property
    def label(self) -> str:
        return f"{self.kind} after {self.method} #{self.occurrence}"


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class Commit:
    conversation_id: str
    token: int
    base: str | None
    """Digest of the checkpoint the turn started from (what its claim loaded)."""
    new: str | None
    """Digest of the checkpoint it wrote (``None``: unchanged, e.g. a failure notice)."""


def conversation_of(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    first = args[0] if args else kwargs.get("msg", kwargs.get("conversation_id"))
    if isinstance(first, InboundMessage):
        return first.conversation_id
    return str(first)


@dataclass
class Ledger:
    """What clients had accepted, what sinks received, what the store committed."""

    accepted: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Message ids accepted, by conversation (a resend of the same dedupe key: same id)."""
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(sink, reply id) -> times received."""
    answers: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    """(conversation, message id) -> reply ids that answered it."""
    payloads: dict[str, OutboxPayload] = field(default_factory=dict)
    """Every payload a sink received, by reply id."""
    failures: set[str] = field(default_factory=set)
    """Reply ids of failure notices (a turn that failed for good, told to its sender)."""
    commits: list[Commit] = field(default_factory=list)
    fenced: list[tuple[str, str, int]] = field(default_factory=list)
    """(conversation, write, token) of every write that succeeded under a lease token, in
    the order the store applied them (a lease taken counts as a write of its token)."""
    writes: Counter[str] = field(default_factory=Counter)
    """Store writes made, by method (what the faults could pick from)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, conversation_id: str, message_id: str) -> None:
        with self.lock:
            self.accepted[conversation_id].add(message_id)

    def deliver(self, sink: str, payload: OutboxPayload) -> None:
        """``sink`` received ``payload`` (chunks are not payloads: streaming is best effort)."""
        with self.lock:
            self.deliveries[sink, payload.reply_id] += 1
            self.payloads[payload.reply_id] = payload
            if payload.type == "notice" and payload.level == "error":
                self.failures.add(payload.reply_id)
            if payload.type in ANSWERS:
                for message_id in getattr(payload, "in_reply_to", []):
                    self.answers[payload.conversation_id, message_id].add(payload.reply_id)

    def commit(self, record: Commit) -> None:
        with self.lock:
            self.commits.append(record)

    def wrote(self, conversation_id: str, method: str, token: int | None = None) -> None:
        with self.lock:
            self.writes[method] += 1
            if token is not None:
                self.fenced.append((conversation_id, method, token))


@dataclass
class Findings:
    """Violations of the invariants; each must be 0."""

    messages: int = 0
    """Accepted messages checked."""
    lost: int = 0
    answered_twice: int = 0
    duplicate_deliveries: int = 0
    forked_histories: int = 0
    stranded_leases: int = 0
    stale_writes: int = 0
    """Writes that succeeded for a run after a newer run took its lease over."""
    failure_notices: int = 0
    """Messages told their turn failed for good (retries spent): not a violation."""
    unfired_faults: int = 0
    """Faults planned that never fired (timing moved the write they named): not a
    violation, but what they would have tested is not covered (see ``Result.uncovered``)."""
    details: list[str] = field(default_factory=list)

    VIOLATIONS = (
        "lost",
        "answered_twice",
        "duplicate_deliveries",
        "forked_histories",
        "stranded_leases",
        "stale_writes",
    )

    @property
    def ok(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.VIOLATIONS)

    def add(self, other: Findings) -> None:
        self.messages += other.messages
        self.unfired_faults += other.unfired_faults
        self.failure_notices += other.failure_notices
        for name in self.VIOLATIONS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.details.extend(other.details)

    def unfired(self, planned: Iterable[Fault], fired: Iterable[Fault]) -> None:
        """Count (and name) the planned faults that did not fire."""
        done = list(fired)
        missed = [f for f in planned if f not in done]
        self.details += [f"{f.label} ({f.conversation_id}): never fired" for f in missed]
        self.unfired_faults += len(missed)

    def as_dict(self) -> dict[str, int]:
        counts = {
            "messages": self.messages,
            "failure_notices": self.failure_notices,
            "unfired_faults": self.unfired_faults,
        }
        return counts | {n: getattr(self, n) for n in self.VIOLATIONS}


PAYLOAD: TypeAdapter[OutboxPayload] = TypeAdapter(OutboxPayload)
"""Parses a payload a sink received (a JSON frame, an SNS message)."""


class LedgerSink:
    """A sink that records what it sends in a ledger as sink ``name``: forwarding to
    ``inner`` (the runtime's own) when given; with ``flaky_every``, failing every n-th
    send for now (nothing recorded)."""

    def __init__(
        self, name: str, ledger: Ledger, inner: ReplySink | None = None, flaky_every: int = 0
    ) -> None:
        self.name = name
        self._ledger = ledger
        self._inner = inner
        self._flaky_every = flaky_every
        self._sends = 0

    def send(self, payload: OutboxPayload) -> None:
        self._sends += 1
        if self._flaky_every and self._sends % self._flaky_every == 0:
            raise RetryableError(f"{self.name}: unavailable for now")
        if self._inner is not None:
            self._inner.send(payload)
        self._ledger.deliver(self.name, payload)

    def send_chunk(self, chunk: StreamChunk) -> None:
        if self._inner is not None:
            self._inner.send_chunk(chunk)


def check(
    ledger: Ledger,
    states: Callable[[str], ConversationState | None],
    *,
    sinks: Iterable[str] | Callable[[str], Iterable[str]],
    answers_from_sinks: bool = True,
) -> Findings:
    """The invariants over what ``ledger`` saw and the conversations' final ``states``.

    With ``answers_from_sinks`` a message counts as answered when a sink received its
    answer (delivery is part of the promise); every sink in ``sinks`` (or ``sinks(cid)``,
    the sinks a conversation's payloads go to) must have received every answer."""
    found = Findings()
    names = [] if callable(sinks) else list(sinks)
    sinks_of = sinks if callable(sinks) else lambda _: names
    for cid, message_ids in sorted(ledger.accepted.items()):
        sink_names = list(sinks_of(cid))
        for message_id in sorted(message_ids):
            found.messages += 1
            replies = ledger.answers.get((cid, message_id), set())
            if not replies:
                found.lost += 1
                found.details.append(f"{cid}: {message_id} never answered")
            elif replies & ledger.failures:
                found.failure_notices += 1
            if len(replies) > 1:
                found.answered_twice += 1
                found.details.append(f"{cid}: {message_id} answered {len(replies)} times")
            if answers_from_sinks:
                for reply_id in replies:
                    missing = [s for s in sink_names if (s, reply_id) not in ledger.deliveries]
                    if missing:
                        found.lost += 1
                        found.details.append(f"{cid}: {reply_id} never reached {missing}")
        state = states(cid)
        if state is None:  # its answered messages are lost too (the others are counted)
            found.lost += sum(bool(ledger.answers.get((cid, m))) for m in message_ids)
            found.details.append(f"{cid}: the conversation is gone")
        elif state.lease_token is not None or state.status == "running":
            found.stranded_leases += 1
            found.details.append(f"{cid}: lease {state.lease_token} held, {state.status}")
    for (sink, reply_id), times in sorted(ledger.deliveries.items()):
        if times > 1:
            found.duplicate_deliveries += times - 1
            payload = ledger.payloads.get(reply_id)
            what = f"{payload.conversation_id}: {payload.type}" if payload else "payload"
            found.details.append(f"{what} {reply_id} reached {sink} {times} times")
    found.forked_histories = len(forks(ledger.commits, found.details))
    found.stale_writes = stale_writes(ledger.fenced, found.details)
    return found


def stale_writes(fenced: Iterable[tuple[str, str, int]], details: list[str]) -> int:
    """Writes a run made after a newer run's token held the conversation (the older run
    was taken over; the fence must have refused it)."""
    newest: dict[str, int] = {}
    stale = 0
    for cid, method, token in fenced:
        if token < newest.get(cid, 0):
            stale += 1
            details.append(f"{cid}: {method} by token {token} after token {newest[cid]}")
        newest[cid] = max(token, newest.get(cid, 0))
    return stale


def forks(commits: Iterable[Commit], details: list[str]) -> set[str]:
    """Conversations where a commit that changed the checkpoint did not start from the last
    one committed (two runs advanced the same state: a fork)."""
    head: dict[str, str | None] = {}
    forked: set[str] = set()
    for record in commits:
        if record.new is None:
            continue
        expected = head.get(record.conversation_id)
        if record.base != expected:
            forked.add(record.conversation_id)
            details.append(f"{record.conversation_id}: token {record.token} forked the history")
        head[record.conversation_id] = record.new
    return forked


class FaultBook:
    """The faults to inject and the writes counted so far, by conversation: shared by every
    probe of a process (a Lambda process builds more than one store)."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._faults: dict[tuple[str, str, int], Fault] = {}
        self.fired: list[Fault] = []
        self.arm(faults)

    def arm(self, faults: Iterable[Fault]) -> None:
        """Add ``faults`` (occurrences count from the conversation's first write)."""
        with self._lock:
            self._faults.update({(f.conversation_id, f.method, f.occurrence): f for f in faults})

    def count(self, cid: str, method: str) -> Fault | None:
        """Count a write just made; the fault it triggers, if any (each fires once)."""
        with self._lock:
            self._counts[cid, method] += 1
            fault = self._faults.get((cid, method, self._counts[cid, method]))
            if fault is None or fault in self.fired:
                return None
            self.fired.append(fault)
            return fault

    def counts(self, conversation_id: str) -> dict[str, int]:
        """Writes made for ``conversation_id`` so far, by method."""
        with self._lock:
            return {m: n for (c, m), n in self._counts.items() if c == conversation_id}


class StoreProbe:
    """A ``ConversationStore`` that records commits and writes into a ledger and, when the
    book names the write just made, calls ``stop(fault)`` right after it (which raises: the
    worker dies with the write done).

    Stands in for the store it wraps (any backend); thread-safe."""

    def __init__(
        self,
        store: Any,
        ledger: Ledger,
        book: FaultBook,
        *,
        stop: Callable[[Fault], None] | None = None,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self.book = book
        self._stop = stop or _crash
        self._loaded = threading.local()
        self._order = threading.Lock()

    @property
    def inner(self) -> Any:
        return self._store

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name == "load_pending":
            return self._load_pending
        if name not in WRITES:
            return attribute

        def write(*args: Any, **kwargs: Any) -> Any:
            cid = conversation_of(name, args, kwargs)
            with self._order:  # the ledger sees the writes in the order the store did
                result = attribute(*args, **kwargs)
                if name == "commit_turn":
                    self._record_commit(cid, args[1] if len(args) > 1 else kwargs["commit"])
                self._ledger.wrote(cid, name, token_of(name, args, kwargs, result))
            fault = self.book.count(cid, name)
            if fault is not None:
                self._stop(fault)
            return result

        return write

    def _load_pending(self, state: ConversationState, **kwargs: Any) -> PendingWork:
        work: PendingWork = self._store.load_pending(state, **kwargs)
        self._loaded.base = (state.conversation_id, digest(work.checkpoint))
        return work

    def _record_commit(self, cid: str, commit: TurnCommit) -> None:
        loaded = getattr(self._loaded, "base", None)
        base = loaded[1] if loaded is not None and loaded[0] == cid else None
        self._ledger.commit(Commit(cid, commit.token, base, digest(commit.checkpoint)))


def token_of(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> int | None:
    """The lease token a successful write acted under (or took), if any."""
    if method in ("append_inbox", "try_acquire_lease", "handover_lease"):
        lease = getattr(result, "lease", result)  # AcceptResult.lease, or the Lease itself
        token = getattr(lease, "token", None)
        return token if isinstance(token, int) else None
    if method == "commit_turn":
        commit = args[1] if len(args) > 1 else kwargs["commit"]
        return int(commit.token)
    if method in ("renew_lease", "release_lease", "hold_for_approval"):
        return int(args[1] if len(args) > 1 else kwargs["token"])
    return None


def _crash(fault: Fault) -> None:
    raise InjectedCrash(fault.label)
