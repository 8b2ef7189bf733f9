"""The fencing window, measured: workers that stall right after a send, for longer than
their lease, on the AWS runtime under moto with Lambda's timeouts at the production ratio.

Fencing refuses every store write of a run whose lease another run took, but a send is no
store write: a worker that stalled past its lease while sending (descheduled, swapped out,
paused) could still send what its successor sends. Production closes that part of the
window with Lambda's timeouts: every function's is shorter than the lease
(``turnTimeout`` 180 s, ``leaseTtlSeconds`` 240 s in ``serverless.yml``; ``deliver`` 30 s),
so Lambda stops a stalled invocation before its lease can lapse. What remains is a worker
stopped between a send and the write that marks it sent: the step's retry, or the run that
takes the conversation over, sends the entry again. The reply topic is FIFO and an entry's
``reply_id`` its deduplication id, so SNS drops that second publish (WebSocket and Slack
have no such id: their receivers get the repeat, which the same ``reply_id`` lets them
drop).

Here every conversation's first reply stalls right after it was published, for longer than
the lease, with every function's timeout at the turn function's production ratio to the
lease (the loosest of them). Reported: the stalls, the invocations stopped at their
timeout, the runs taken over, the publishes SNS dropped as repeats, and the invariants
(duplicate deliveries must be 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.client import BaseClient

from reliability.plan import Result
from reliability.probe import Ledger, check
from reliability.workflow import (
    SINK,
    ApiCall,
    Faulty,
    aws_calls_through,
    lease_ttl,
    run_conversations,
    running,
)
from tests.functional.aws_env import aws_runtime
from workers import bootstrap

SERVERLESS = Path(__file__).resolve().parents[1] / "serverless.yml"
STALL = 1.25
"""How long a sender stalls, in leases."""
STALLS = "stalls after a send, longer than the lease"
STOPPED = "invocations stopped at their timeout"
TAKEN_OVER = "runs taken over by the sweeper"
DROPPED = "publishes SNS dropped as repeats (FIFO deduplication)"


def production_ratio() -> float:
    """The turn function's timeout over the lease, as ``serverless.yml`` deploys them: the
    largest of the functions' ratios, all under 1 (a step never outlives its lease)."""
    params = yaml.safe_load(SERVERLESS.read_text())["params"]["default"]
    return float(params["turnTimeout"]) / float(params["leaseTtlSeconds"])


@contextmanager
def stalling_sends(faulty: Faulty, cids: set[str], seconds: float) -> Iterator[list[str]]:
    """While active, the first SNS publish of each conversation of ``cids`` stalls its
    function for ``seconds`` once it went out, and a function's AWS call past its timeout
    stops it (``Faulty.timeout``). Yields the conversations stalled so far."""
    stalled: list[str] = []
    lock = threading.Lock()

    def call(real: ApiCall, client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        faulty.stop_if_late()
        response = real(client, operation, params)
        if operation == "Publish" and getattr(faulty.inside, "name", None) is not None:
            cid = params["MessageAttributes"]["conversation_id"]["StringValue"]
            with lock:
                first = cid in cids and cid not in stalled
                if first:
                    stalled.append(cid)
            if first:
                time.sleep(seconds)
        return response

    with aws_calls_through(call):
        yield stalled


def run(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    """Eight conversations at full size, three reduced, each with its first reply stalled."""
    ratio = production_ratio()
    lease = float(lease_ttl(every=every))
    result = Result(runtime="AWS, senders stalled past their lease (production timeouts)")
    started = time.perf_counter()
    env = pytest.MonkeyPatch()
    try:
        env.setenv("AGENTWORKER_LEASE_TTL_SECONDS", str(lease))
        env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        env.setenv("POWERTOOLS_LOG_LEVEL", "ERROR")
        with aws_runtime(env.setenv) as aws:
            ledger = Ledger()
            faulty = Faulty(aws, ledger, timeout=lease * ratio)
            faulty.install()
            cids = [f"ticket:window-{i}" for i in range(8 if every else 3)]
            with (
                stalling_sends(faulty, set(cids), lease * STALL) as stalled,
                running(aws, faulty),
            ):
                run_conversations(aws, ledger, cids, timeout=120, progress=progress)
            store = bootstrap.aws_deps().store
            result.findings = check(ledger, store.get_conversation, sinks=[SINK])
            result.faults_by_kind = {STALLS: len(stalled)}
            result.notes = {
                STOPPED: faulty.stopped,
                TAKEN_OVER: ledger.writes["try_acquire_lease"],
                DROPPED: aws.deduplication.dropped,
            }
            result.settings = {
                "lease": f"{lease:g} s",
                "timeout": f"{lease * ratio:g} s ({ratio:g} of the lease, as deployed)",
                "stall": f"{lease * STALL:g} s",
            }
    finally:
        env.undo()
    result.seconds = time.perf_counter() - started
    progress(f"{result.runtime}: {result.faults_by_kind} {result.notes}")
    return result
