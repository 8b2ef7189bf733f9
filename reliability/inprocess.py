"""Faults in one process: the embedded runtime's core steps over SQLite, with the worker
dying right after each store write of the turn contract in turn.

A death is an :class:`~reliability.probe.InjectedCrash` raised right after the write: nothing
after it runs (no retry loop, no ``finally`` of ours catches a ``BaseException``). The
"restarted process" is a new store on the same database file with the clock moved past the
lease, whose sweeper takes over what the dead one held, as the embedded runtime does at
start. A client whose send died resends with the same dedupe key, as a client without an
answer would.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.identity import LOCAL_USER
from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import OutboxPayload, ReplyChunk
from events.workflow import RunRef
from reliability.probe import (
    Fault,
    FaultBook,
    Findings,
    InjectedCrash,
    Ledger,
    StoreProbe,
    check,
)
from workers.core.steps import Deps, TurnSettings, accept_message, drive_run, sweep

SINKS = ("primary", "secondary")

WORKLOAD: tuple[tuple[str, ...], ...] = (
    ("hello", "open a ticket about the printer"),
    ("how do I reset my password?",),
)
"""Each conversation's messages, in batches: a batch is sent before its runs go (two
messages queue behind one run; a tool call with a side effect; a turn after a restart)."""


class VirtualClock:
    """Wall time plus an offset a restart moves past the lease; ``sleep`` (retry backoff)
    moves the offset instead of waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += seconds


class QueueStarter:
    """Runs started, driven one after the other by :func:`drain`."""

    def __init__(self) -> None:
        self.runs: deque[RunRef] = deque()

    def start(self, run: RunRef) -> None:
        self.runs.append(run)

    def resume(self, task_token: str) -> None:
        raise AssertionError("the embedded runtime issues no task tokens")


@dataclass
class RecordingSink:
    name: str
    ledger: Ledger

    def send(self, payload: OutboxPayload) -> None:
        self.ledger.deliver(self.name, payload)

    def send_chunk(self, chunk: ReplyChunk) -> None:
        return None


@dataclass
class World:
    """One database, the processes that used it in turn, and what they saw."""

    db_path: Path
    agent: Any
    ledger: Ledger
    faults: list[Fault]
    policy: DoubleTextingPolicy = "enqueue"
    clock: VirtualClock = field(default_factory=VirtualClock)
    starter: QueueStarter = field(default_factory=QueueStarter)
    restarts: int = 0
    fired: list[Fault] = field(default_factory=list)
    deps: Deps | None = None
    _store: Any = None

    def boot(self) -> Deps:
        """Start a process: a new store on the file, the sweeper taking over stale leases."""
        from workers.adapters.aws.sinks import FanOutReplySink
        from workers.adapters.local.sqlite_store import SqliteConversationStore

        if self._store is not None:
            self.fired.extend(self._store.book.fired)
            self._store.inner.close()
            self.clock.offset += self.settings.lease_ttl + 1
            self.starter.runs.clear()  # queued runs died with the process
            self.restarts += 1
        remaining = [f for f in self.faults if f not in self.fired]
        self._store = StoreProbe(
            SqliteConversationStore(self.db_path), self.ledger, FaultBook(remaining)
        )
        self.deps = Deps(
            store=self._store,
            agent=self.agent,
            sink=FanOutReplySink({n: RecordingSink(n, self.ledger) for n in SINKS}),
            starter=self.starter,
            clock=self.clock,
            settings=self.settings,
        )
        sweep(self.deps)
        return self.deps

    @property
    def settings(self) -> TurnSettings:
        return TurnSettings(default_policy=self.policy, retry_base_delay=0.01)

    def send(self, cid: str, text: str, key: str) -> None:
        """Send until accepted (a send the process died in is resent with the same key)."""
        msg = InboundMessage(conversation_id=cid, text=text, dedupe_key=key)
        while True:
            deps = self.deps or self.boot()
            try:
                result = accept_message(deps, msg, LOCAL_USER)
            except InjectedCrash:
                self.boot()
                continue
            self.ledger.accept(cid, result.message_id)
            return

    def drain(self) -> None:
        """Drive every started run to its end, restarting when the process dies."""
        while True:
            deps = self.deps or self.boot()
            if not self.starter.runs:
                return
            run = self.starter.runs.popleft()
            try:
                drive_run(deps, run)
            except InjectedCrash:
                self.boot()

    def finish(self) -> Findings:
        """A last restart (whatever was left is swept), then the invariants."""
        self.boot()
        self.drain()
        self.fired.extend(self._store.book.fired)
        self._store.inner.close()
        from workers.adapters.local.sqlite_store import SqliteConversationStore

        store = SqliteConversationStore(self.db_path)
        try:
            return check(self.ledger, store.get_conversation, sinks=SINKS)
        finally:
            store.close()


def converse(world: World, cid: str, workload: Sequence[Sequence[str]] = WORKLOAD) -> None:
    for batch_no, batch in enumerate(workload):
        for n, text in enumerate(batch):
            world.send(cid, text, key=f"{cid}:{batch_no}:{n}")
        world.drain()


@dataclass
class Result:
    """One runtime's faults: how many were injected, by write, and the findings."""

    runtime: str
    faults_by_write: dict[str, int] = field(default_factory=dict)
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    findings: Findings = field(default_factory=Findings)
    seconds: float = 0.0
    written: set[str] = field(default_factory=set)
    """The writes a clean conversation made: each must have had a fault after it."""

    @property
    def faults(self) -> int:
        return sum(self.faults_by_write.values())

    @property
    def uncovered(self) -> list[str]:
        """Writes a conversation makes that no fault followed."""
        return sorted(self.written - set(self.faults_by_write))

    def count(self, fired: Sequence[Fault]) -> None:
        for fault in fired:
            self.faults_by_write[fault.method] = self.faults_by_write.get(fault.method, 0) + 1
            self.faults_by_kind[fault.kind] = self.faults_by_kind.get(fault.kind, 0) + 1


def fault_points(
    counts: dict[str, int], cid: str, *, every: bool, kind: str = "crash"
) -> list[Fault]:
    """The faults to inject in a conversation whose clean run made ``counts`` writes: after
    every occurrence of every write (``every``), or after the first and the last of each."""
    points: list[Fault] = []
    for method, n in sorted(counts.items()):
        picks = range(1, n + 1) if every else sorted({1, n})
        points.extend(Fault(method, k, cid, kind) for k in picks)
    return points


def offline_agent(root: Path) -> Any:
    """The bundled support app on the offline model, its tickets in a database of its own."""
    from workers.adapters.clock import SystemClock
    from workers.adapters.local.sqlite_store import SqliteConversationStore
    from workers.adapters.local.sqlite_tickets import SqliteTicketStore
    from workers.bootstrap import build_agent
    from workers.config import load_settings

    settings = load_settings(model="offline", state_dir=root, tracing=False)
    tickets = SqliteTicketStore(SqliteConversationStore(root / "tickets.db").database)
    return build_agent(settings, tickets, SystemClock())


def run(
    *,
    every: bool,
    agent_factory: Callable[[Path], Any] = offline_agent,
    policies: Sequence[DoubleTextingPolicy] = ("enqueue", "merge"),
    progress: Callable[[str], None] = lambda _: None,
) -> Result:
    """One clean run per policy to learn the writes a conversation makes, then one world per
    fault point (a fresh database), each checked against the invariants."""
    result = Result(runtime="embedded, in-process (SQLite)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentworker-reliability-") as tmp:
        root = Path(tmp)
        agent = agent_factory(root)
        for policy in policies:
            clean = World(root / f"clean-{policy}.db", agent, Ledger(), [], policy=policy)
            converse(clean, "ticket:clean")
            result.findings.add(clean.finish())
            counts = clean.ledger.writes
            result.written |= set(counts)
            points = fault_points(dict(counts), "ticket:1", every=every)
            for i, fault in enumerate(points):
                world = World(root / f"{policy}-{i}.db", agent, Ledger(), [fault], policy=policy)
                converse(world, "ticket:1")
                found = world.finish()
                if len(world.fired) != 1:
                    found.details.append(f"{fault.label}: never fired")
                    found.unfired_faults += 1
                result.findings.add(found)
                result.count(world.fired)
                result.restarts += world.restarts
                progress(f"{policy}: {i + 1}/{len(points)} {fault.label}")
    result.seconds = time.perf_counter() - started
    return result
