"""Faults on the AWS runtime under moto: the Lambda function making a store write fails right
after it, in three ways, and Step Functions, the SQS event source and the sweeper's schedule
recover as deployed.

- ``Lambda error``: an unhandled exception raised by the write's call (the function's own
  code sees it, as it would a bug at that point);
- ``timeout``: the function stops right after the write (nothing of ours runs after it) and
  Lambda reports ``Sandbox.Timedout``;
- ``lost response``: the function finishes, its response is lost
  (``Lambda.ServiceException``): the caller retries work that was done.

Each fault gets a conversation of its own; all run at once through the real workflow
(moto executes the ASL), the SQS poller feeding ``ingest`` and the sweeper every second,
with a 3-second lease so takeovers happen. The replies are read from the SNS topic's queue.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from botocore.client import BaseClient

from events.outbound import OutboxPayload
from reliability.plan import WORKLOAD, Result, fault_points, second_order
from reliability.probe import (
    PAYLOAD,
    Fault,
    FaultBook,
    InjectedCrash,
    Ledger,
    StoreProbe,
    check,
)
from tests.functional.aws_env import Aws, approval_event, aws_runtime
from workers import bootstrap
from workers.core.model import InboxEntry
from workers.sandbox.emulator import (
    Handler,
    ScheduledInvoker,
    SqsPoller,
    invoke_handler,
    queue_arn,
)

KINDS: tuple[str, ...] = ("Lambda error", "timeout", "lost response")


def lease_ttl(*, every: bool) -> str:
    """The lease, seconds: short, so the sweeper takes over dead runs soon, yet longer than
    a live run stalls between its commit and its marks under the load (at full size dozens
    of executions share two cores). A worker stalled past its lease has its store writes
    refused, but a send is no store write: the SNS topic drops a repeated ``reply_id``, and
    ``reliability/window.py`` measures that window with Lambda's timeouts as deployed.
    Reduced (``make test``, its tests spread over workers on two cores): a 3 s lease let a
    live run stall past it under that load, again and again, until the test timed out."""
    return "10" if every else "8"


SINK = "sns"


class InjectedError(Exception):
    """An unhandled exception right after a store write (the ``Lambda error`` fault)."""


def lambda_error(error_type: str, message: str) -> Exception:
    """An exception Lambda would report with ``errorType`` ``error_type`` (the emulator
    reports the class name)."""
    error: Exception = type(error_type, (Exception,), {})(message)
    return error


@dataclass
class Faulty:
    """The stack's handlers with faults: installed into the emulator's routing."""

    aws: Aws
    ledger: Ledger
    book: FaultBook = field(default_factory=FaultBook)
    lost: threading.local = field(default_factory=threading.local)
    inside: threading.local = field(default_factory=threading.local)
    """``inside.name``: the function running in this thread (its clients may be faulted);
    ``inside.deadline``: when Lambda stops it (with ``timeout``)."""
    timeout: float | None = None
    """Lambda's timeout, emulated for every function (``None``: none, as before): an
    invocation still running past it is stopped at its next AWS call, since Lambda freezes
    and ends it and nothing it would do after reaches AWS (see :func:`lambda_timeouts`)."""
    stopped: int = 0
    """Invocations stopped at their timeout."""

    def stop(self, fault: Fault) -> None:
        if fault.kind == "lost response":
            self.lost.fault = fault  # the function goes on; its answer is lost on the way
        elif fault.kind == "timeout":
            raise InjectedCrash(fault.label)
        else:
            raise InjectedError(fault.label)

    def wrap(self, name: str, handler: Handler) -> Handler:
        def invoke(event: dict[str, Any], context: Any) -> Any:
            self.lost.fault = None
            self.inside.name = name
            self.inside.deadline = None if self.timeout is None else time.monotonic() + self.timeout
            try:
                result = handler(event, context)
            except InjectedCrash as crash:
                timed_out = lambda_error("Sandbox.Timedout", f"{name}: timed out ({crash})")
                raise timed_out from None
            finally:
                self.inside.name = None
                self.inside.deadline = None
            if self.lost.fault is not None:
                raise lambda_error("Lambda.ServiceException", f"{name}: the response was lost")
            return result

        return invoke

    def stop_if_late(self) -> None:
        """Stop the invocation running in this thread if it is past its timeout."""
        deadline = getattr(self.inside, "deadline", None)
        if deadline is not None and time.monotonic() > deadline:
            self.inside.deadline = None
            self.stopped += 1
            raise InjectedCrash(f"{self.inside.name}: stopped at its {self.timeout:.1f} s timeout")

    def install(self) -> None:
        self.probe()
        for name in ("ingest", "turn", "deliver", "sweeper", "approve"):
            self.aws.handlers[name] = self.wrap(name, self.aws.handlers[name])

    def probe(self) -> None:
        """Put the probe in front of the functions' stores (again after the deps are rebuilt)."""
        for deps in (bootstrap.aws_deps(), bootstrap.aws_deps(with_agent=True)):
            deps.store = StoreProbe(deps.store, self.ledger, self.book, stop=self.stop)


ApiCall = Callable[[BaseClient, str, dict[str, Any]], Any]
"""botocore's ``BaseClient._make_api_call``: every AWS call of this process goes through it."""


@contextmanager
def aws_calls_through(
    wrap: Callable[[ApiCall, BaseClient, str, dict[str, Any]], Any],
) -> Iterator[None]:
    """While active, every AWS call of this process (the functions' and the harness's) is
    ``wrap(real, client, operation, params)``, ``real`` being the call botocore would make."""
    real: ApiCall = BaseClient._make_api_call

    def call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        return wrap(real, client, operation, params)

    BaseClient._make_api_call = call
    try:
        yield
    finally:
        BaseClient._make_api_call = real


@contextmanager
def lambda_timeouts(faulty: Faulty) -> Iterator[None]:
    """While active, every AWS call of a function past its timeout stops the function
    (``Faulty.timeout``): the calls it made before went out, none after."""

    def call(real: ApiCall, client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        faulty.stop_if_late()
        return real(client, operation, params)

    with aws_calls_through(call):
        yield


@contextmanager
def running(aws: Aws, faulty: Faulty) -> Iterator[None]:
    """The event source mapping and the sweeper's schedule, in threads."""
    sqs = aws.session.client("sqs")
    poller = SqsPoller(
        sqs, aws.stack.queue_url, queue_arn(sqs, aws.stack.queue_url), aws.handlers["ingest"]
    )
    arn = aws.stack.function_arns["sweeper"]
    sweeper = ScheduledInvoker(aws.handlers["sweeper"], "sweeper", arn, 1.0)
    poller.start()
    sweeper.start()
    try:
        yield
    finally:
        poller.stop()
        sweeper.stop()


APPROVE = "<approve>"
"""A workload item: approve the approval the conversation was last asked for, through the
``approve`` function (as a backend would), resending until it answers 202."""
APPROVALS: tuple[tuple[str, ...], ...] = (
    ("please open a ticket about the printer",),
    ("close ticket {ticket}",),
    (APPROVE,),
)
"""A conversation that asks for an approval and gets it (the Standard workflow holds the
lease while it waits: ``hold_for_approval``)."""

Matcher = Callable[[InboxEntry], bool]


def submit(aws: Aws, ledger: Ledger, cid: str, key: str, item: str) -> Matcher:
    """Send one workload item; how to recognise it in the inbox."""
    if item != APPROVE:
        aws.send_sqs(cid, item.format(ticket=ticket_of(ledger, cid)), dedupe_key=key)
        return lambda entry: entry.message.dedupe_key == key
    asked = [p for p in ledger.payloads.values() if p.conversation_id == cid]
    interrupt_id = str(getattr(asked_for(asked), "interrupt_id", ""))
    event = approval_event(cid, {"interrupt_id": interrupt_id, "approved": True})
    for _ in range(30):  # a caller without an answer tries again
        data, failed = invoke_handler(
            aws.handlers["approve"], "approve", "approve", json.dumps(event)
        )
        if not failed and json.loads(data).get("statusCode") == 202:
            break
        time.sleep(0.5)
    return lambda entry: (
        entry.message.approval is not None and entry.message.approval.interrupt_id == interrupt_id
    )


def ticket_of(ledger: Ledger, cid: str) -> str:
    """The number of the ticket the conversation opened (its reply names it)."""
    for payload in ledger.payloads.values():
        found = re.search(r"ticket (\d+)", getattr(payload, "text", ""))
        if payload.conversation_id == cid and found:
            return found.group(1)
    return "0"


def asked_for(payloads: Sequence[OutboxPayload]) -> OutboxPayload | None:
    requests = [p for p in payloads if p.type == "approval_request"]
    return max(requests, key=lambda p: p.created_at) if requests else None


def collect(aws: Aws, ledger: Ledger) -> int:
    sqs = aws.session.client("sqs")
    got = sqs.receive_message(QueueUrl=aws.replies_url, MaxNumberOfMessages=10).get("Messages", [])
    for message in got:
        ledger.deliver(SINK, PAYLOAD.validate_json(message["Body"]))
        sqs.delete_message(QueueUrl=aws.replies_url, ReceiptHandle=message["ReceiptHandle"])
    return len(got)


def run_conversations(
    aws: Aws,
    ledger: Ledger,
    cids: Sequence[str],
    *,
    timeout: float,
    progress: Callable[[str], None],
    workload: Sequence[Sequence[str]] = WORKLOAD,
) -> None:
    """Each conversation's workload, batch after batch, all conversations at once; waits
    for every message's answer and then for every run to end."""
    store = bootstrap.aws_deps().store
    for batch_no, batch in enumerate(workload):
        expected: dict[str, list[Matcher]] = {}
        for cid in cids:
            expected[cid] = [
                submit(aws, ledger, cid, f"{cid}:{batch_no}:{n}", item)
                for n, item in enumerate(batch)
            ]
        deadline = time.monotonic() + timeout
        waiting = set(cids)
        while waiting and time.monotonic() < deadline:
            collect(aws, ledger)
            for cid in sorted(waiting):
                history = store.history(cid)
                if history is None:
                    continue
                answered = {m for (c, m) in ledger.answers if c == cid}
                found = [[e for e in history.inbox if match(e)] for match in expected[cid]]
                if all(f and f[0].message.message_id in answered for f in found):
                    for entries in found:
                        ledger.accept(cid, entries[0].message.message_id)
                    waiting.discard(cid)
            time.sleep(0.1)
        progress(f"batch {batch_no + 1}/{len(workload)}: {len(cids) - len(waiting)} answered")
        for cid in waiting:  # never answered: recorded as accepted so the check counts them
            history = store.history(cid)
            for entry in history.inbox if history else []:
                ledger.accept(cid, entry.message.message_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        collect(aws, ledger)
        states = [store.get_conversation(cid) for cid in cids]
        if all(s is not None and s.lease_token is None for s in states):
            break
        time.sleep(0.2)
    time.sleep(1.0)  # anything delivered twice would arrive by now
    collect(aws, ledger)


def plan(clean: dict[str, int], *, every: bool, start: int = 0) -> list[Fault]:
    """After each write the clean conversation made, in conversations of their own: every
    kind after every occurrence (``every``), or one kind after the first and another after
    the last occurrence, the kinds taking turns across the writes."""
    faults: list[Fault] = []
    points = fault_points(clean, "", every=every)
    methods = sorted({p.method for p in points})
    for point in points:
        if every:
            kinds = KINDS
        else:
            turn = methods.index(point.method) + (point.occurrence > 1)
            kinds = (KINDS[turn % len(KINDS)],)
        for kind in kinds:
            cid = f"ticket:aws-{start + len(faults)}"
            faults.append(replace(point, kind=kind, conversation_id=cid))
    return faults


REPLANS = 2
"""How often a fault whose write never happened is planned again in a fresh conversation."""
RUN_AGAIN = "conversations run again (a planned write did not happen)"


def run_planned(
    aws: Aws,
    faulty: Faulty,
    faults: list[Fault],
    *,
    stage: str,
    timeout: float,
    progress: Callable[[str], None],
    workload: Sequence[Sequence[str]] = WORKLOAD,
) -> tuple[list[Fault], int]:
    """Arm ``faults`` and run their conversations. A conversation whose faults did not all
    fire (timing moved the write they named: under load a Standard run's 10-second lease
    lapsed before its wait, so the run that took over never held for the approval) is run
    again, all its faults with it, in a fresh conversation, up to ``REPLANS`` times.
    Returns the faults that fired and the last plan of the others (which a report calls
    unfired), and how many conversations were run again."""
    kept: list[Fault] = []
    again = 0
    for attempt in range(REPLANS + 1):
        faulty.book.arm(faults)
        cids = sorted({f.conversation_id for f in faults})
        progress(f"{stage}: {len(faults)} faults in {len(cids)} conversations")
        run_conversations(aws, faulty.ledger, cids, timeout=timeout, progress=progress,
                          workload=workload)  # fmt: skip
        missed = {f.conversation_id for f in faults if f not in faulty.book.fired}
        kept += [f for f in faults if f.conversation_id not in missed]
        if not missed or attempt == REPLANS:
            break
        again += len(missed)
        stage = f"{stage}, again where a write did not happen"
        faults = [
            replace(f, conversation_id=f"{f.conversation_id}-again{attempt + 1}")
            for f in faults
            if f.conversation_id in missed
        ]
    return kept + [f for f in faults if f.conversation_id in missed], again


def standard_approvals(
    aws: Aws,
    faulty: Faulty,
    result: Result,
    setenv: Callable[[str, str], None],
    *,
    every: bool,
    progress: Callable[[str], None],
) -> list[Fault]:
    """The Standard workflow, whose run waits inside its execution for an approval: a
    clean conversation, then faults after the writes it makes that no fault followed yet
    (every write, at full size)."""
    setenv("AGENTWORKER_STATE_MACHINE_ARN", aws.stack.state_machine_arns["standard"])
    bootstrap.reset_aws_deps()
    faulty.probe()
    ledger = faulty.ledger
    run_conversations(
        aws, ledger, ["ticket:std-clean"], timeout=60, progress=progress, workload=APPROVALS
    )
    clean = faulty.book.counts("ticket:std-clean")
    result.written |= set(clean)
    covered = {f.method for f in faulty.book.fired}
    todo = clean if every else {m: n for m, n in clean.items() if m not in covered}
    faults = [
        replace(f, conversation_id=f.conversation_id.replace("aws-", "std-"))
        for f in plan(todo, every=every, start=0)
    ]
    faults, again = run_planned(
        aws, faulty, faults, stage="standard workflow", timeout=120, progress=progress,
        workload=APPROVALS,
    )  # fmt: skip
    result.notes[RUN_AGAIN] = result.notes.get(RUN_AGAIN, 0) + again
    return faults


def run(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    result = Result(runtime="AWS (moto: Step Functions, Lambda, SQS, DynamoDB)")
    started = time.perf_counter()
    env = pytest.MonkeyPatch()
    try:
        env.setenv("AGENTWORKER_LEASE_TTL_SECONDS", lease_ttl(every=every))
        env.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # no EMF lines on stdout
        env.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
        with aws_runtime(env.setenv) as aws:
            ledger = Ledger()
            planned: list[Fault] = []
            replanned = 0
            faulty = Faulty(aws, ledger)
            faulty.install()
            with running(aws, faulty):
                run_conversations(aws, ledger, ["ticket:aws-clean"], timeout=60, progress=progress)
                clean = faulty.book.counts("ticket:aws-clean")
                result.written = set(clean)
                faults = plan(clean, every=every)
                for stage in ("single", "again", "again", "after a recovery"):
                    if stage == "again":  # timing moved a write no fault followed yet
                        covered = {f.method for f in faulty.book.fired}
                        missing = {m: n for m, n in clean.items() if m not in covered}
                        faults = plan(missing, every=False, start=len(planned))
                    elif stage != "single":
                        faults = second_order(
                            clean, planned, faulty.book.counts, name="ticket:aws-twice-{}".format
                        )
                    if not faults:
                        continue
                    faults, again = run_planned(
                        aws, faulty, faults, stage=stage, timeout=120, progress=progress
                    )
                    planned += faults
                    replanned += again
                planned += standard_approvals(
                    aws, faulty, result, env.setenv, every=every, progress=progress
                )
            store = bootstrap.aws_deps().store
            found = check(ledger, store.get_conversation, sinks=[SINK])
            fired = faulty.book.fired
            found.unfired(planned, fired)
            result.findings = found
            result.count(fired)
            result.restarts = len(fired)
            result.notes[RUN_AGAIN] = result.notes.get(RUN_AGAIN, 0) + replanned
    finally:
        env.undo()
    result.seconds = time.perf_counter() - started
    return result
