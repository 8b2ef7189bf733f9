"""What every runtime's fault run shares: the workload of a conversation, where to inject
faults, and the result it reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reliability.probe import Fault, Findings

WORKLOAD: tuple[tuple[str, ...], ...] = (
    ("hello", "open a ticket about the printer"),
    ("how do I reset my password?",),
)
"""Each conversation's messages, in batches: a batch is sent before its runs go (two
messages queue behind one run; a tool call with a side effect; a turn after a restart)."""


@dataclass
class Result:
    """One runtime's faults: how many were injected, by write, and the findings."""

    runtime: str
    faults_by_write: dict[str, int] = field(default_factory=dict)
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    findings: Findings = field(default_factory=Findings)
    seconds: float = 0.0
    notes: dict[str, int] = field(default_factory=dict)
    """Other counts worth reporting (e.g. per-sink marks written after partial deliveries)."""
    settings: dict[str, str] = field(default_factory=dict)
    """What the case ran with, for the report (e.g. its lease and timeouts)."""
    written: set[str] = field(default_factory=set)
    """The writes a clean conversation made: each must have had a fault after it."""

    @property
    def faults(self) -> int:
        return sum(self.faults_by_write.values())

    @property
    def uncovered(self) -> list[str]:
        """Writes a conversation makes that no fault followed."""
        return sorted(self.written - set(self.faults_by_write))

    def add(self, found: Findings, world: Any) -> None:
        """A world's findings, faults fired and restarts (its planned faults must fire)."""
        found.unfired(world.faults, world.fired)
        self.findings.add(found)
        self.count(world.fired)
        self.restarts += world.restarts

    def count(self, fired: Sequence[Fault]) -> None:
        for fault in fired:
            self.faults_by_write[fault.method] = self.faults_by_write.get(fault.method, 0) + 1
            self.faults_by_kind[fault.kind] = self.faults_by_kind.get(fault.kind, 0) + 1


def fault_points(
    counts: dict[str, int], cid: str, *, every: bool, kind: str = "crash"
) -> list[Fault]:
    """The faults to inject in a conversation whose clean run made ``counts`` writes: after
    every occurrence of every write (``every``), or (reduced, ``make test``) after one of
    each, the first and the last taking turns across the writes (in name order): every
    write is still followed by a fault, at both ends of a conversation."""
    points: list[Fault] = []
    for i, (method, n) in enumerate(sorted(counts.items())):
        picks = range(1, n + 1) if every else (1 if i % 2 == 0 else n,)
        points.extend(Fault(method, k, cid, kind) for k in picks)
    return points


def second_order(
    clean: dict[str, int],
    planned: Sequence[Fault],
    writes_of: Callable[[str], dict[str, int]],
    *,
    name: Callable[[int], str],
) -> list[Fault]:
    """Writes only a recovery makes (the sweeper's takeover of a dead run's lease, its
    delivery of what the dead run committed): for each, a conversation that dies at the
    first planned fault that led to it, then again right after that write."""
    faults: list[Fault] = []
    covered: set[str] = set()
    for first in planned:
        for method in sorted(set(writes_of(first.conversation_id)) - set(clean) - covered):
            covered.add(method)
            cid = name(len(faults))
            faults += [replace(first, conversation_id=cid), Fault(method, 1, cid, first.kind)]
    return faults


class LosingEveryOther:
    """A Lambda handler whose every other response is lost after it did its work (a
    timeout, a dropped connection): the caller sees an error and tries again."""

    def __init__(self, handler: Callable[[dict[str, Any], Any], Any]) -> None:
        self.handler = handler
        self.calls = 0

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        answer = self.handler(event, context)
        self.calls += 1
        if self.calls % 2:
            raise TimeoutError("the response was lost")
        return answer

    @property
    def lost(self) -> int:
        return (self.calls + 1) // 2
