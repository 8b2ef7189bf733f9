"""Concurrent senders on the embedded runtime (its worker pool, sweeper and SQLite store, in
this process): many senders on one conversation under each double-texting policy, many
conversations at once, and a run whose lease is taken over mid-turn.

Checked: the invariants of :mod:`reliability.probe` (one answer per message, no duplicate
delivery, no fork, no lease left, no write by a run that was taken over), and the order each
policy promises (:func:`order_violations`).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.identity import LOCAL_USER
from events.inbound import DoubleTextingPolicy, InboundMessage
from reliability.probe import FaultBook, Findings, Ledger, LedgerSink, StoreProbe, check
from workers.core.model import History, TurnOutput, TurnRequest
from workers.core.policies import REJECTED_NOTICE
from workers.core.ports import Tracer

POLICIES: tuple[DoubleTextingPolicy, ...] = ("enqueue", "merge", "interrupt", "reject")
SINK = "hub"


@dataclass(frozen=True)
class Size:
    senders: int = 20
    messages: int = 10
    """Per sender, on the one conversation of each policy."""
    conversations: int = 200
    model_ms: int = 2
    """The offline model's latency per call (turns overlap arrivals)."""


FULL = Size()
SMALL = Size(senders=5, messages=4, conversations=40)


@dataclass
class Series:
    """One concurrency case's figures and findings."""

    name: str
    senders: int
    messages: int
    conversations: int
    turns: int = 0
    seconds: float = 0.0
    order_violations: int = 0
    findings: Findings = field(default_factory=Findings)


class SlowFirstTurn:
    """The app's agent, whose first turn of ``conversation_id`` outlasts the lease: the
    sweeper takes the conversation over while it runs."""

    def __init__(self, inner: Any, conversation_id: str, seconds: float) -> None:
        self._inner = inner
        self._cid = conversation_id
        self._seconds = seconds
        self._slept = threading.Event()
        self.turns = 0

    def run_turn(self, request: TurnRequest, *, on_chunk: Any, tracer: Tracer) -> TurnOutput:
        self.turns += 1
        if request.conversation_id == self._cid and not self._slept.is_set():
            self._slept.set()
            time.sleep(self._seconds)
        output: TurnOutput = self._inner.run_turn(request, on_chunk=on_chunk, tracer=tracer)
        return output

    def inspect(self, *args: Any) -> Any:
        return self._inner.inspect(*args)


def order_violations(policy: DoubleTextingPolicy, history: History, details: list[str]) -> int:
    """How the answers break the order ``policy`` promises: ``enqueue``, one reply per
    message in inbox order; ``merge`` and ``interrupt``, replies to consecutive runs of
    messages in inbox order; ``reject``, every message replied to in order or refused with
    the notice."""
    seq_of = {e.message.message_id: e.seq for e in history.inbox}
    answers = [e.payload for e in history.outbox if e.payload.type in ("reply", "notice")]
    found = 0
    last = 0
    for payload in answers:
        seqs = sorted(seq_of[m] for m in payload.in_reply_to)
        refused = payload.type == "notice" and payload.text == REJECTED_NOTICE
        if policy == "reject" and refused:
            continue
        if not seqs:
            continue
        wrong = (
            seqs[0] <= last
            or (policy in ("enqueue", "reject") and len(seqs) != 1)
            or seqs != list(range(seqs[0], seqs[0] + len(seqs)))
        )
        if wrong:
            found += 1
            details.append(f"{history.state.conversation_id}: {policy} answered seqs {seqs}")
        last = max(last, seqs[-1])
    return found


class Harness:
    """The embedded runtime with a probed store and a recording sink."""

    def __init__(self, root: Path, *, model_ms: int, **settings: Any) -> None:
        from workers.config import load_settings

        self.settings = load_settings(
            model=f"offline:{model_ms}" if model_ms else "offline",
            state_dir=root,
            tracing=False,
            workers=8,
            **settings,
        )
        self.ledger = Ledger()
        self.runtime: Any = None

    async def __aenter__(self) -> Harness:
        from workers.bootstrap import build_embedded

        self.runtime = build_embedded(self.settings)
        deps = self.runtime.deps
        deps.store = StoreProbe(deps.store, self.ledger, FaultBook())
        deps.sink = LedgerSink(SINK, self.ledger, deps.sink)
        await self.runtime.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runtime.stop()

    async def send(self, cid: str, text: str, policy: DoubleTextingPolicy | None = None) -> None:
        msg = InboundMessage(conversation_id=cid, text=text, policy=policy)
        result = await self.runtime.accept(msg, LOCAL_USER)
        self.ledger.accept(cid, result.message_id)

    async def settle(self, cids: Sequence[str], timeout: float = 120.0) -> None:
        """Wait until every conversation is answered and idle with its lease released."""
        store = self.runtime.store
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.runtime.wait_idle(timeout=timeout)
            states = [store.get_conversation(cid) for cid in cids]
            if all(s is not None and s.lease_token is None for s in states):
                return
            await asyncio.sleep(0.05)

    def check(self, series: Series, policies: dict[str, DoubleTextingPolicy]) -> None:
        store = self.runtime.store
        series.findings = check(self.ledger, store.get_conversation, sinks=[SINK])
        series.turns = self.ledger.writes["commit_turn"]
        for cid, policy in policies.items():
            history = store.history(cid)
            if history is not None:
                series.order_violations += order_violations(
                    policy, history, series.findings.details
                )


async def _senders(h: Harness, cid: str, size: Size, policy: DoubleTextingPolicy) -> None:
    async def sender(n: int) -> None:
        for i in range(size.messages):
            await h.send(cid, f"sender {n} message {i}", policy=policy)

    await asyncio.gather(*(sender(n) for n in range(size.senders)))


async def one_conversation(root: Path, size: Size, policy: DoubleTextingPolicy) -> Series:
    series = Series(f"{policy}: one conversation", size.senders, size.messages, 1)
    cid = f"ws:{policy}"
    started = time.perf_counter()
    async with Harness(root / policy, model_ms=size.model_ms) as h:
        await _senders(h, cid, size, policy)
        await h.settle([cid])
        series.seconds = time.perf_counter() - started
        h.check(series, {cid: policy})
    return series


async def many_conversations(root: Path, size: Size) -> Series:
    series = Series("many conversations at once", size.conversations, 2, size.conversations)
    cids = [f"ws:many-{i}" for i in range(size.conversations)]
    started = time.perf_counter()
    async with Harness(root / "many", model_ms=size.model_ms) as h:

        async def converse(cid: str) -> None:
            await h.send(cid, "hello")
            await h.send(cid, "open a ticket about the printer")

        await asyncio.gather(*(converse(cid) for cid in cids))
        await h.settle(cids)
        series.seconds = time.perf_counter() - started
        h.check(series, dict.fromkeys(cids, "enqueue"))
    return series


async def takeover(root: Path) -> Series:
    """A first turn that outlasts its 0.5 s lease: the sweeper (every 0.2 s) takes the
    conversation over and a second run answers; the first run's commit must be refused."""
    series = Series("a run taken over mid-turn", 1, 2, 1)
    cid = "ws:takeover"
    started = time.perf_counter()
    async with Harness(
        root / "takeover", model_ms=0, lease_ttl_seconds=0.5, sweep_interval_seconds=0.2
    ) as h:
        slow = SlowFirstTurn(h.runtime.deps.agent, cid, seconds=1.5)
        h.runtime.deps.agent = slow
        await h.send(cid, "hello")
        await h.send(cid, "open a ticket about the printer")
        await asyncio.sleep(2.0)  # the slow turn ends after the takeover
        await h.settle([cid])
        series.seconds = time.perf_counter() - started
        h.check(series, {cid: "enqueue"})
        tokens = {token for c, _, token in h.ledger.fenced if c == cid}
        if len(tokens) < 2:  # nothing was taken over: the case tested nothing
            series.findings.details.append(f"{cid}: no takeover happened (tokens {tokens})")
            series.findings.unfired_faults += 1
    return series


def run(size: Size, *, progress: Callable[[str], None] = lambda _: None) -> list[Series]:
    async def main() -> list[Series]:
        with tempfile.TemporaryDirectory(prefix="agentworker-concurrency-") as tmp:
            root = Path(tmp)
            out: list[Series] = []
            for policy in POLICIES:
                out.append(await one_conversation(root, size, policy))
                progress(out[-1].name)
            out.append(await many_conversations(root, size))
            progress(out[-1].name)
            out.append(await takeover(root))
            progress(out[-1].name)
            return out

    return asyncio.run(main())
