"""Schedules under ``kill -9`` of the embedded server: each occurrence posted once and
answered once, whatever dies when.

Each fault gets a conversation of its own, driven over HTTP like a client: a first message,
then a schedule due half a second later (made with a dedupe key, so a request sent again
after the server died under it makes no second one), then the wait for the scheduled
message's answer, restarting the server whenever it is gone. The server dies right after
the schedule's writes (its creation, the firing's inbox append, the firing's record), and
one more conversation's server is killed while its schedule is due and started again only
after. The standard invariants are checked on what the server's sink sent and on the store;
beyond them, a schedule that posted its message twice counts as answered twice, one that
never posted as lost, and one left armed after it fired as stranded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reliability.crashing_server import (
    SCHEDULE_ADD,
    SCHEDULE_FIRED,
    write_plan,
)
from reliability.killnine import (
    Supervisor,
    converse,
    crashing,
    settle,
    wait_answered,
    writes_of,
)
from reliability.plan import LosingEveryOther, Result
from reliability.probe import Fault, Findings, Ledger

DUE_SECONDS = 0.5
SCHEDULE_WRITES = {SCHEDULE_ADD: 1, "append_inbox": 2, SCHEDULE_FIRED: 1}
"""The writes of a schedule's life after the conversation's first message: it is made, its
firing appended to the inbox (the conversation's second append), the firing recorded."""


def scheduled(sup: Supervisor, cid: str, ledger: Ledger, *, down_while_due: bool = False) -> None:
    """Make the conversation's schedule and wait until its message is answered."""
    body = {"text": f"follow up on {cid}", "in_seconds": DUE_SECONDS, "dedupe_key": cid}
    made = sup.call("POST", f"/v1/conversations/{cid}/schedules", json=body)
    if made.status_code != 201:
        raise AssertionError(f"{cid}: {made.status_code} {made.text}")
    if down_while_due:
        sup.server.kill()
        time.sleep(DUE_SECONDS * 3)
    deadline = time.monotonic() + 60
    while True:
        view = sup.call("GET", f"/v1/conversations/{cid}").json()
        posted = [m["message_id"] for m in view["messages"] if m["channel"] == "schedule"]
        if posted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for message_id in posted:
        ledger.accept(cid, message_id)
    wait_answered(sup, cid, posted)


def audit(sup: Supervisor, cids: list[str]) -> Findings:
    """What the invariants over the sink cannot see: each schedule posted exactly once and
    is gone once it fired."""
    found = Findings()
    for cid in cids:
        view = sup.call("GET", f"/v1/conversations/{cid}").json()
        posted = [m for m in view["messages"] if m["channel"] == "schedule"]
        if not posted:
            found.lost += 1
            found.details.append(f"{cid}: its schedule never posted")
        if len(posted) > 1:
            found.answered_twice += 1
            found.details.append(f"{cid}: its schedule posted {len(posted)} times")
        left = sup.call("GET", f"/v1/conversations/{cid}/schedules").json()["schedules"]
        if left:
            found.stranded_leases += 1
            found.details.append(f"{cid}: {len(left)} schedule(s) still armed after firing")
    return found


def run(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    result = Result(runtime="schedules: embedded server, kill -9")
    result.settings = {"due after": f"{DUE_SECONDS} s", "timer": "every 1 s"}
    started = time.perf_counter()
    with crashing("agentworker-schedules-") as (root, plan, sup):
        ledger = Ledger()
        cids: list[str] = []
        try:
            converse(sup, "ws:sched-clean", ledger, [("hello",)])
            scheduled(sup, "ws:sched-clean", ledger)
            cids.append("ws:sched-clean")
            clean = writes_of(root, "ws:sched-clean")
            result.written = {m for m in SCHEDULE_WRITES if clean.get(m)}
            # the schedule's own writes, each made once (the turn that answers it is the
            # kill -9 suite's): the firing is the conversation's second inbox append
            planned = [
                Fault(method, occurrence, f"ws:sched-{i}", "kill -9")
                for i, (method, occurrence) in enumerate(sorted(SCHEDULE_WRITES.items()))
            ]
            write_plan(plan, planned)
            sup.server.stop()  # the next start reads the plan
            for i, fault in enumerate(planned):
                converse(sup, fault.conversation_id, ledger, [("hello",)])
                scheduled(sup, fault.conversation_id, ledger)
                cids.append(fault.conversation_id)
                progress(f"schedules: {i + 1}/{len(planned)} {fault.label}")
            converse(sup, "ws:sched-down", ledger, [("hello",)])
            scheduled(sup, "ws:sched-down", ledger, down_while_due=True)
            cids.append("ws:sched-down")
            result.notes["killed while a schedule was due"] = 1
            extra = audit(sup, cids)
        finally:
            sup.server.stop()
        settle(root, ledger, planned, result, starts=sup.starts, extra=extra)
    result.seconds = time.perf_counter() - started
    return result


def run_aws(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    """Schedules on the AWS runtime (moto): EventBridge Scheduler's stand-in invokes
    ``ingest`` twice for every occurrence, and every other invocation loses its response
    after ``ingest`` did its work (EventBridge Scheduler then retries it): each occurrence
    must still post once and be answered once."""
    import pytest

    from events.identity import backend
    from events.schedules import ScheduleRequest
    from tests.functional.aws_env import aws_runtime
    from workers import bootstrap
    from workers.core.schedules import create_schedule
    from workers.sandbox.emulator import SchedulerFirer

    conversations = 8 if every else 3
    result = Result(runtime="schedules: AWS (moto), every firing delivered twice, responses lost")
    result.settings = {"invocations per occurrence": "2", "responses lost": "every other"}
    started = time.perf_counter()
    env = pytest.MonkeyPatch()
    found = Findings()
    try:
        env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        env.setenv("POWERTOOLS_LOG_LEVEL", "ERROR")
        with aws_runtime(env.setenv) as aws:
            cids = [f"ws:sched-aws-{i}" for i in range(conversations)]
            aws.converse(cids, ["hello"])
            deps = bootstrap.aws_deps()
            maker = backend("iam:reliability")
            for cid in cids:
                request = ScheduleRequest(text=f"follow up on {cid}", in_seconds=1)
                create_schedule(deps, cid, maker, request)
            lossy = LosingEveryOther(aws.handlers["ingest"])

            arn = aws.stack.function_arns["ingest"]
            firer = SchedulerFirer(
                aws.session.client("scheduler"), aws.stack.schedule_group, {arn: ("ingest", lossy)},
                repeat=2,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while any(deps.scheduler.for_conversation(c) for c in cids):  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    break
                firer.fire_due(time.time() + 5)
            aws.pump()
            aws.wait_executions_done()
            result.notes["invocations"] = lossy.calls
            result.notes["responses lost"] = lossy.lost
            for cid in cids:
                history = deps.store.history(cid)
                posted = [
                    e.message.message_id
                    for e in (history.inbox if history else [])
                    if e.message.channel == "schedule"
                ]
                found.messages += 1
                answers = [
                    o.payload
                    for o in (history.outbox if history else [])
                    if set(o.payload.in_reply_to) & set(posted)
                ]
                if not posted or not answers:
                    found.lost += 1
                    found.details.append(f"{cid}: posted {len(posted)}, answered {len(answers)}")
                if len(posted) > 1 or len(answers) > 1:
                    found.answered_twice += 1
                    found.details.append(f"{cid}: posted {len(posted)}, answered {len(answers)}")
                progress(f"schedules on AWS: {cid} posted {len(posted)}, answered {len(answers)}")
    finally:
        env.undo()
    result.findings = found
    result.written = set()
    result.seconds = time.perf_counter() - started
    return result
