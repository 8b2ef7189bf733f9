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

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from pydantic import TypeAdapter

from events.outbound import OutboxPayload
from reliability.plan import WORKLOAD, Result, fault_points, second_order
from reliability.probe import Fault, FaultBook, InjectedCrash, Ledger, StoreProbe, check
from tests.functional.aws_env import Aws, aws_runtime
from workers import bootstrap
from workers.sandbox.emulator import Handler, ScheduledInvoker, SqsPoller, queue_arn

KINDS: tuple[str, ...] = ("Lambda error", "timeout", "lost response")
def lease_ttl(*, every: bool) -> str:
    """The lease, seconds: short, so the sweeper takes over dead runs soon, yet longer than
    a live run stalls between its commit and its marks under the load (at full size dozens
    of executions share two cores). A worker stalled past its lease is the limit of
    fencing: its store writes are refused, but a send it already began may repeat its
    successor's (receivers dedupe by ``reply_id``)."""
    return "10" if every else "3"


SINK = "sns"
PAYLOAD: TypeAdapter[OutboxPayload] = TypeAdapter(OutboxPayload)


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
    """``inside.name``: the function running in this thread (its clients may be faulted)."""

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
            try:
                result = handler(event, context)
            except InjectedCrash as crash:
                timed_out = lambda_error("Sandbox.Timedout", f"{name}: timed out ({crash})")
                raise timed_out from None
            finally:
                self.inside.name = None
            if self.lost.fault is not None:
                raise lambda_error("Lambda.ServiceException", f"{name}: the response was lost")
            return result

        return invoke

    def install(self) -> None:
        for deps in (bootstrap.aws_deps(), bootstrap.aws_deps(with_agent=True)):
            deps.store = StoreProbe(deps.store, self.ledger, self.book, stop=self.stop)
        for name in ("ingest", "turn", "deliver", "sweeper"):
            self.aws.handlers[name] = self.wrap(name, self.aws.handlers[name])


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


def send(aws: Aws, cid: str, batch_no: int, batch: Sequence[str]) -> list[str]:
    """Queue a batch; its dedupe keys (the ledger learns the ids from the inbox)."""
    keys = []
    for n, text in enumerate(batch):
        key = f"{cid}:{batch_no}:{n}"
        aws.send_sqs(cid, text, dedupe_key=key)
        keys.append(key)
    return keys


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
) -> None:
    """Each conversation's workload, batch after batch, all conversations at once; waits
    for every message's answer and then for every run to end."""
    store = bootstrap.aws_deps().store
    for batch_no, batch in enumerate(WORKLOAD):
        expected: dict[str, list[str]] = {}
        for cid in cids:
            expected[cid] = send(aws, cid, batch_no, batch)
        deadline = time.monotonic() + timeout
        waiting = set(cids)
        while waiting and time.monotonic() < deadline:
            collect(aws, ledger)
            for cid in sorted(waiting):
                history = store.history(cid)
                if history is None:
                    continue
                ids = {e.message.dedupe_key: e.message.message_id for e in history.inbox}
                answered = {m for (c, m) in ledger.answers if c == cid}
                if all(k in ids and ids[k] in answered for k in expected[cid]):
                    for key in expected[cid]:
                        ledger.accept(cid, ids[key])
                    waiting.discard(cid)
            time.sleep(0.1)
        progress(f"batch {batch_no + 1}/{len(WORKLOAD)}: {len(cids) - len(waiting)} answered")
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
                    faulty.book.arm(faults)
                    planned += faults
                    cids = sorted({f.conversation_id for f in faults})
                    progress(f"{stage}: {len(faults)} faults in {len(cids)} conversations")
                    run_conversations(aws, ledger, cids, timeout=120, progress=progress)
            store = bootstrap.aws_deps().store
            found = check(ledger, store.get_conversation, sinks=[SINK])
            fired = faulty.book.fired
            missed = [f for f in planned if f not in fired]
            found.details += [f"{f.label} ({f.conversation_id}): never fired" for f in missed]
            found.unfired_faults = len(missed)
            result.findings = found
            result.count(fired)
            result.restarts = len(fired)
    finally:
        env.undo()
    result.seconds = time.perf_counter() - started
    return result
