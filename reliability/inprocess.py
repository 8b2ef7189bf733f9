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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from events.identity import LOCAL_USER
from events.inbound import DoubleTextingPolicy, InboundMessage
from events.workflow import RunRef
from reliability.plan import WORKLOAD, Result, fault_points, second_order
from reliability.probe import (
    Fault,
    FaultBook,
    Findings,
    InjectedCrash,
    Ledger,
    LedgerSink,
    StoreProbe,
    check,
)
from workers.core.steps import Deps, TurnSettings, accept_message, drive_run, sweep

SINKS = ("primary", "secondary")


@dataclass(frozen=True)
class Variant:
    """How the worlds of one series are set up."""

    name: str
    policy: DoubleTextingPolicy = "enqueue"
    max_turns_per_run: int = 50
    flaky_every: int = 0
    """The secondary sink fails for now on every n-th payload (0: never): partial
    deliveries, whose per-sink marks are store writes too."""


VARIANTS = (
    Variant("enqueue"),
    Variant("merge", policy="merge"),
    Variant("one turn per run (handover)", max_turns_per_run=1),
    Variant("a flaky sink (per-sink marks)", flaky_every=2),
)


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
class World:
    """One database, the processes that used it in turn, and what they saw."""

    db_path: Path
    agent: Any
    ledger: Ledger
    faults: list[Fault]
    variant: Variant = Variant("enqueue")
    clock: VirtualClock = field(default_factory=VirtualClock)
    starter: QueueStarter = field(default_factory=QueueStarter)
    restarts: int = 0
    fired: list[Fault] = field(default_factory=list)
    deps: Deps | None = None
    _store: Any = None

    def boot(self) -> Deps:
        """Start a process: a new store on the file, the sweeper taking over stale leases
        (a process that dies in its own recovery is started again)."""
        while True:
            deps = self._start()
            try:
                sweep(deps)
            except InjectedCrash:
                continue
            return deps

    def _start(self) -> Deps:
        from workers.adapters.fanout import FanOutReplySink
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
            sink=FanOutReplySink(
                {
                    "primary": LedgerSink("primary", self.ledger),
                    "secondary": LedgerSink(
                        "secondary", self.ledger, flaky_every=self.variant.flaky_every
                    ),
                }
            ),
            starter=self.starter,
            clock=self.clock,
            settings=self.settings,
        )
        return self.deps

    @property
    def settings(self) -> TurnSettings:
        return TurnSettings(
            default_policy=self.variant.policy,
            retry_base_delay=0.01,
            max_turns_per_run=self.variant.max_turns_per_run,
        )

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
    variants: Sequence[Variant] = VARIANTS,
    progress: Callable[[str], None] = lambda _: None,
) -> Result:
    """For each variant: a clean world to learn the writes a conversation makes, one world
    per fault point (a fresh database), then worlds that die twice for the writes only
    recovery makes; each checked against the invariants."""
    result = Result(runtime="embedded, in-process (SQLite)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentworker-reliability-") as tmp:
        root = Path(tmp)
        agent = agent_factory(root)
        worlds = 0

        def world(faults: list[Fault], variant: Variant) -> World:
            nonlocal worlds
            worlds += 1
            return World(root / f"{worlds}.db", agent, Ledger(), faults, variant=variant)

        for variant in variants:
            clean = world([], variant)
            converse(clean, "ws:1")
            result.findings.add(clean.finish())
            counts = dict(clean.ledger.writes)
            result.written |= set(counts)
            points = fault_points(counts, "ws:1", every=every)
            seen: dict[str, dict[str, int]] = {}
            for i, fault in enumerate(points):
                faulted = world([fault], variant)
                converse(faulted, "ws:1")
                result.add(faulted.finish(), faulted)
                seen[f"{i}"] = dict(faulted.ledger.writes)
                progress(f"{variant.name}: {i + 1}/{len(points)} {fault.label}")
            named = [replace(f, conversation_id=f"{i}") for i, f in enumerate(points)]
            for twice in pairs(second_order(counts, named, seen.__getitem__, name=str)):
                faulted = world([replace(f, conversation_id="ws:1") for f in twice], variant)
                converse(faulted, "ws:1")
                result.add(faulted.finish(), faulted)
                progress(f"{variant.name}: {' then '.join(f.label for f in twice)}")
    result.seconds = time.perf_counter() - started
    return result


def pairs(faults: Sequence[Fault]) -> list[list[Fault]]:
    """``second_order``'s faults, grouped by conversation."""
    grouped: dict[str, list[Fault]] = {}
    for fault in faults:
        grouped.setdefault(fault.conversation_id, []).append(fault)
    return list(grouped.values())
