"""``docs/RELIABILITY.md`` from a run of the suite."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reliability.concurrency import Series, Size
from reliability.plan import Result
from reliability.probe import WRITES, Findings
from reliability.workflow import REPLANS, RUN_AGAIN, lease_ttl

VIOLATION_TITLES = {
    "lost": "lost",
    "answered_twice": "answered twice",
    "duplicate_deliveries": "duplicate deliveries",
    "forked_histories": "forked histories",
    "stranded_leases": "stranded leases",
    "stale_writes": "writes after takeover",
}


@dataclass
class Fuzz:
    cases: int
    entry_points: list[str]
    passed: bool
    seconds: float


@dataclass
class Run:
    size: str
    faults: list[Result] = field(default_factory=list)
    window: list[Result] = field(default_factory=list)
    dependencies: list[Result] = field(default_factory=list)
    concurrency: list[Series] = field(default_factory=list)
    concurrency_size: Size = field(default_factory=Size)
    outbound: list[Result] = field(default_factory=list)
    """Schedules and webhooks: what leaves and comes back on its own."""
    fuzz: Fuzz | None = None
    seconds: float = 0.0

    @property
    def findings(self) -> Findings:
        total = Findings()
        for result in [*self.faults, *self.window, *self.dependencies, *self.outbound]:
            total.add(result.findings)
        for series in self.concurrency:
            total.add(series.findings)
        return total

    @property
    def order_violations(self) -> int:
        return sum(s.order_violations for s in self.concurrency)

    @property
    def ok(self) -> bool:
        fuzz_ok = self.fuzz is None or self.fuzz.passed
        uncovered = any(r.uncovered for r in [*self.faults, *self.outbound])
        return self.findings.ok and not self.order_violations and fuzz_ok and not uncovered


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _violations(found: Findings) -> list[object]:
    counts = (getattr(found, name) for name in VIOLATION_TITLES)
    return [found.messages, found.failure_notices, *counts]


def render(run: Run) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"Python {platform.python_version()}, {os.cpu_count()} cores, {sys.platform}"
    total = run.findings
    verdict = "every invariant held" if run.ok else "**invariants were violated** (see below)"
    out = [
        "# Reliability report",
        "",
        f"Written by `make reliability` ({run.size} size) on {now}; {machine}; "
        f"{run.seconds:.0f} s. `make test` runs the same suite at reduced size "
        "(`tests/e2e/test_reliability.py`), and fails on any violation. Result: "
        f"{verdict}.",
        "",
        "## What is checked",
        "",
        "After every run, on the store's final state and on what the clients and sinks saw:",
        "",
        "- **lost**: an accepted message without an answer (a reply, a request or a failure "
        "notice naming it) at every sink;",
        "- **answered twice**: a message with more than one answer;",
        "- **duplicate deliveries**: a payload that reached a sink more than once;",
        "- **forked histories**: a commit that changed the checkpoint without starting from "
        "the last one committed;",
        "- **stranded leases**: a conversation still leased or running at the end;",
        "- **writes after takeover**: a write that succeeded for a run after a newer run "
        "took its lease (the fence must refuse it).",
        "",
        "Each must be 0. *Failure notices* are not violations: a message whose turn failed "
        "for good (its retries spent under a dependency storm) gets one, and that is its "
        "one answer.",
        "",
        "## Results",
        "",
    ]
    rows: list[list[object]] = []
    for result in [*run.faults, *run.window, *run.dependencies, *run.outbound]:
        rows.append([result.runtime, *_violations(result.findings)])
    for series in run.concurrency:
        rows.append([f"concurrency: {series.name}", *_violations(series.findings)])
    rows.append(["**total**", *_violations(total)])
    out += _table(["case", "messages", "failure notices", *VIOLATION_TITLES.values()], rows)
    out += ["", f"Order violations (double-texting policies): {run.order_violations}.", ""]
    out += _faults(run)
    out += _window(run)
    out += _dependencies(run)
    out += _concurrency(run)
    out += _outbound(run)
    out += _fuzz(run)
    details = total.details[:50]
    if details:
        title = "## Notes" if run.ok else "## Violations and notes"
        out += [title, "", *(f"- {d}" for d in details), ""]
    return "\n".join(out).rstrip() + "\n"


def _faults(run: Run) -> list[str]:
    out = [
        "## Faults after each store write",
        "",
        "The worker stops right after the write (an exception nothing catches in-process; "
        "SIGKILL of the embedded server; on AWS the Lambda function fails with an error, "
        "times out, or finishes and loses its response), then recovers as deployed "
        "(restart and sweep; Step Functions' retries, the SQS redelivery, the sweeper's "
        f"schedule; a {lease_ttl(every=run.size == 'full')} s lease). Faults fired, by write:",
        "",
    ]
    header = ["write", *(r.runtime for r in run.faults)]
    rows = [[f"`{w}`", *(r.faults_by_write.get(w, "-") for r in run.faults)] for w in WRITES]
    rows.append(["**total**", *(r.faults for r in run.faults)])
    rows.append(["restarts / recoveries", *(r.restarts for r in run.faults)])
    rows.append(["seconds", *(f"{r.seconds:.1f}" for r in run.faults)])
    out += _table(header, rows)
    out += [""]
    for result in run.faults:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.faults_by_kind.items()))
        out.append(f"- {result.runtime}: {kinds}.")
        again = result.notes.get(RUN_AGAIN, 0)
        if again:
            out.append(
                f"  {again} conversation(s) run again: a write a planned fault named did not "
                "happen in the first (timing moved it), so its faults were planned in a fresh "
                f"conversation (up to {REPLANS} times)."
            )
        if result.findings.unfired_faults:
            out.append(
                f"  **{result.findings.unfired_faults} planned fault(s) never fired**, even "
                "planned again (see the notes)."
            )
        if result.uncovered:
            out.append(f"  **Not covered**: {', '.join(result.uncovered)}.")
    out += [
        "",
        "`-`: the runtime does not make that write in this suite (`hold_for_approval` is the "
        "Standard workflow's wait for an approval, run on AWS with a conversation that asks "
        "for one and gets it; the embedded runtime's per-sink marks and handovers are "
        "exercised in-process). A write only recovery makes (the sweeper's lease takeover) "
        "gets a second fault in a conversation that already died once.",
        "",
    ]
    return out


def _window(run: Run) -> list[str]:
    if not run.window:
        return []
    out = [
        "## The fencing window, measured",
        "",
        "Fencing refuses every store write of a run whose lease was taken over, but a send "
        "is no store write. Each conversation's first reply stalls its worker right after "
        "the publish, for longer than the lease; every function's timeout is the turn "
        "function's production ratio to the lease (`turnTimeout` : `leaseTtlSeconds` in "
        "`serverless.yml`), so Lambda stops a stalled invocation before its lease lapses, "
        "between its send and the write marking it sent. The run that takes the "
        "conversation over sends the reply again, and the FIFO reply topic drops that "
        "publish (its deduplication id is the reply's `reply_id`).",
        "",
    ]
    for result in run.window:
        ran = ", ".join(f"{k} {v}" for k, v in result.settings.items())
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.faults_by_kind.items()))
        notes = "; ".join(f"{k}: {n}" for k, n in result.notes.items())
        dups = result.findings.duplicate_deliveries
        out.append(
            f"- {result.runtime} ({result.seconds:.1f} s; {ran}): {kinds}; {notes}; "
            f"duplicate deliveries: {dups}."
        )
    return [*out, ""]


def _outbound(run: Run) -> list[str]:
    if not run.outbound:
        return []
    out = [
        "## Schedules and webhooks",
        "",
        "What fires or leaves on its own, checked like the messages above. A scheduled "
        "message is an accepted message: lost when it never posted or was never answered, "
        "answered twice when it posted twice or got two answers; a schedule still armed "
        "after it fired counts as stranded. A webhook payload (every reply, request and "
        "notice) is lost when the receiver never took it, answered twice when it came "
        "under two `webhook-id`s; delivery is at least once, so a server killed between "
        "the receiver's 2xx and its mark sends that one again under the same "
        "`webhook-id` (counted below as *taken again*; a receiver drops it by that id, "
        "as Standard Webhooks asks):",
        "",
    ]
    for result in run.outbound:
        ran = ", ".join(f"{k} {v}" for k, v in result.settings.items())
        faults = ", ".join(f"`{m}` {n}" for m, n in sorted(result.faults_by_write.items()))
        notes = "; ".join(f"{k}: {n}" for k, n in result.notes.items())
        said = "; ".join(x for x in (faults and f"kill -9 after {faults}", notes) if x)
        out.append(
            f"- {result.runtime} ({result.seconds:.1f} s; {ran}): {said}; "
            f"{result.findings.messages} {_unit(result)}, lost {result.findings.lost}, "
            f"twice {result.findings.answered_twice}."
        )
    return [*out, ""]


def _unit(result: Result) -> str:
    """What a schedules-and-webhooks case counts: payloads sent out, or occurrences."""
    return "payloads" if result.runtime.startswith("webhooks") else "occurrences"


def _dependencies(run: Run) -> list[str]:
    if not run.dependencies:
        return []
    out = [
        "## Dependency faults",
        "",
        "The AWS errors are raised by our functions' boto3 clients as botocore raises them "
        "once its own retries gave up (the harness's own calls go through): every 15th "
        "DynamoDB call, every 8th S3 call (checkpoints are forced to S3), every 3rd SNS "
        "publish and WebSocket post; the model's come from the Converse stub over HTTP "
        "(botocore retries them first); Slack's from its Web API stub (every 3rd post). "
        "Counts are errors injected:",
        "",
    ]
    for result in run.dependencies:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(result.faults_by_kind.items()))
        notes = "; ".join(f"{k}: {n}" for k, n in result.notes.items())
        out.append(f"- {result.runtime} ({result.seconds:.1f} s): injected {kinds}. {notes}.")
    return [*out, ""]


def _concurrency(run: Run) -> list[str]:
    size = run.concurrency_size
    out = [
        "## Concurrency",
        "",
        f"The embedded runtime in one process (8 workers, offline model with "
        f"{size.model_ms} ms latency): {size.senders} senders x {size.messages} messages on "
        f"one conversation per policy; {size.conversations} conversations at once; a first "
        "turn that outlasts its 0.5 s lease, taken over by the sweeper.",
        "",
    ]
    rows = [
        [s.name, f"{s.senders} x {s.messages}", s.conversations, s.turns, f"{s.seconds:.2f}",
         s.order_violations]
        for s in run.concurrency
    ]  # fmt: skip
    out += _table(
        ["case", "senders x messages", "conversations", "turns", "seconds", "order violations"],
        rows,
    )
    return [*out, ""]


def _fuzz(run: Run) -> list[str]:
    if run.fuzz is None:
        return []
    fuzz = run.fuzz
    state = "passed" if fuzz.passed else "**failed**"
    return [
        "## Hostile input",
        "",
        f"Hypothesis, {fuzz.cases:,} derandomized cases per entry point ({fuzz.seconds:.0f} s, "
        f"{state}): every answer is a 2xx or 4xx, never a 5xx or a crash.",
        "",
        *(f"- {e}" for e in fuzz.entry_points),
        "",
    ]
