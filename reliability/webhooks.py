"""Webhooks under ``kill -9`` of the embedded server, to a receiver that fails a third of
its requests: every payload reaches it, once, in order per conversation.

Each fault gets a conversation of its own (the usual workload, driven over HTTP), and the
server dies right after a write of the webhook queue: a delivery queued by the reply sink,
or one marked sent, or between the receiver's 2xx and that mark. The receiver verifies
every signature (``standardwebhooks``) and keeps what it took. At the end, for every
reply, approval request or notice of every conversation: **lost** when no event with its
``webhook-id`` was taken; **answered twice** when one payload came under two ids (what a
receiver could not tell apart); and the order of each conversation's first receptions
against its outbox (``out of order`` in the notes, which must be 0). Delivery is at least
once: killed after the receiver's 2xx and before the mark, the server sends that delivery
again with the same ``webhook-id``, which a receiver drops as Standard Webhooks asks; those
repeats are counted in the notes (``taken again, same webhook-id``), never hidden.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reliability.crashing_server import (
    FIRED,
    WEBHOOK_ADD,
    WEBHOOK_DELIVERED,
    WEBHOOK_SENT,
    read_lines,
    write_plan,
)
from reliability.killnine import Supervisor, converse, crashing, writes_of
from reliability.plan import WORKLOAD, LosingEveryOther, Result, fault_points
from reliability.probe import Fault, Findings, Ledger

SECRET = "whsec_" + base64.b64encode(b"the reliability suite's receiver").decode()
FAIL_RATE = 1 / 3
WEBHOOK_WRITES = (WEBHOOK_ADD, WEBHOOK_SENT, WEBHOOK_DELIVERED)
ATTEMPTS_ON_AWS = 2
"""Few, so that deliveries die on the way: the dead-letter path is exercised too."""


class FlakyReceiver:
    """Answers 503 to a third of the requests (seeded), 204 to the rest; keeps the verified
    events it took, in the order it took them."""

    def __init__(self, seed: int = 7) -> None:
        from standardwebhooks.webhooks import Webhook

        self.taken: list[tuple[str, dict[str, Any]]] = []
        self.requests = 0
        self.bad_signatures = 0
        self._lock = threading.Lock()
        rng = random.Random(seed)
        receiver = self
        verifier = Webhook(SECRET)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver._lock:
                    receiver.requests += 1
                    failing = rng.random() < FAIL_RATE
                    try:
                        event = verifier.verify(body, dict(self.headers))
                    except Exception:
                        receiver.bad_signatures += 1
                        failing = True
                    else:
                        if not failing:
                            receiver.taken.append((self.headers["webhook-id"], event))
                self.send_response(503 if failing else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        with self._lock:
            return [webhook_id for webhook_id, _ in self.taken]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def expected(sup: Supervisor, cid: str) -> list[str]:
    """The ``webhook-id`` of each payload of the conversation, in outbox order."""
    view = sup.call("GET", f"/v1/conversations/{cid}").json()
    return [f"msg_{r['payload']['reply_id']}" for r in view["replies"]]


def wait_received(sup: Supervisor, receiver: FlakyReceiver, cid: str, timeout: float = 60) -> None:
    """Until the receiver took every payload of the conversation (the server restarted
    whenever a fault killed it: its sender dies with it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(expected(sup, cid)) <= set(receiver.ids()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{cid}: the receiver did not get every payload in {timeout} s")


def audit(receiver: FlakyReceiver, expected_ids: dict[str, list[str]]) -> tuple[Findings, int, int]:
    """The findings, the conversations out of order, the repeats under the same id, for
    each conversation's payloads' ``webhook-id`` in outbox order."""
    found = Findings()
    again = 0
    taken = Counter(receiver.ids())
    order = receiver.ids()
    out_of_order = 0
    payloads: Counter[str] = Counter()
    for _, event in receiver.taken:
        data = event.get("data") or {}
        payloads[str(data.get("reply_id"))] += 1
    for cid, ids in expected_ids.items():
        found.messages += len(ids)
        for webhook_id in ids:
            if not taken[webhook_id]:
                found.lost += 1
                found.details.append(f"{cid}: {webhook_id} never taken by the receiver")
            elif taken[webhook_id] > 1:
                again += taken[webhook_id] - 1
        firsts = sorted((order.index(i), i) for i in ids if i in taken)
        if [i for _, i in firsts] != [i for i in ids if i in taken]:
            out_of_order += 1
            found.details.append(f"{cid}: its payloads reached the receiver out of order")
    for reply_id, count in payloads.items():
        ids_for = {
            i for i, e in receiver.taken if (e.get("data") or {}).get("reply_id") == reply_id
        }
        if len(ids_for) > 1:
            found.answered_twice += 1
            found.details.append(f"{reply_id}: came under {len(ids_for)} webhook ids ({count})")
    return found, out_of_order, again


def run(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    result = Result(runtime="webhooks: embedded server, kill -9, receiver failing 1 in 3")
    result.settings = {"receiver failing": "1 in 3 (503)", "retry base": "0.05 s"}
    started = time.perf_counter()
    receiver = FlakyReceiver()
    with crashing("agentworker-webhooks-") as (root, plan, sup):
        sup.server.env.update(
            {
                "AGENTWORKER_WEBHOOKS": json.dumps(
                    [{"name": "helpdesk", "url": receiver.url, "secret_env": "RELIABILITY_HOOK"}]
                ),
                "RELIABILITY_HOOK": SECRET,
                "AGENTWORKER_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
                "AGENTWORKER_WEBHOOK_ATTEMPTS": "50",
            }
        )
        ledger = Ledger()
        cids: list[str] = []
        try:
            converse(sup, "ws:hook-clean", ledger, WORKLOAD)
            wait_received(sup, receiver, "ws:hook-clean")
            cids.append("ws:hook-clean")
            clean = writes_of(root, "ws:hook-clean")
            result.written = {m for m in WEBHOOK_WRITES if clean.get(m)}
            # full size: after every occurrence; reduced: after the first of each (one
            # message per conversation below)
            counts = {m: clean[m] if every else 1 for m in WEBHOOK_WRITES if clean.get(m)}
            points = fault_points(counts, "", every=True, kind="kill -9")
            planned = [replace(f, conversation_id=f"ws:hook-{i}") for i, f in enumerate(points)]
            write_plan(plan, planned)
            sup.server.stop()  # the next start reads the plan
            # reduced size: one message each (three payloads' worth of writes are the full's)
            workload = WORKLOAD if every else (("hello",),)
            for i, fault in enumerate(planned):
                converse(sup, fault.conversation_id, ledger, workload)
                wait_received(sup, receiver, fault.conversation_id)
                cids.append(fault.conversation_id)
                progress(f"webhooks: {i + 1}/{len(planned)} {fault.label}")
            found, out_of_order, again = audit(receiver, {c: expected(sup, c) for c in cids})
        finally:
            sup.server.stop()
            receiver.close()
        fired = [Fault(**r) for r in read_lines(root / FIRED)]
        found.unfired(planned, fired)
        result.findings = found
        result.count(fired)
        result.restarts = sup.starts - 1
        result.notes["requests"] = receiver.requests
        result.notes["refused by the receiver"] = receiver.requests - len(receiver.taken)
        result.notes["bad signatures"] = receiver.bad_signatures
        result.notes["out of order"] = out_of_order
        result.notes["taken again, same webhook-id"] = again
    result.seconds = time.perf_counter() - started
    return result


def run_aws(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    """Webhooks on the AWS runtime (moto): every payload's deliveries queued twice (a
    delivering step retried: the queue's deduplication id drops the second), the
    ``webhooks`` function's response lost after every other batch it handled (the event
    source mapping then hands the whole batch out again, posted ones too), and the receiver
    failing one request in three, with two attempts per delivery: what dies meanwhile goes
    to the webhooks' dead-letter queue with the deliveries behind it, and is sent back with
    ``agentworker dlq redrive --webhooks``'s redrive, as an operator would, and counted."""
    import pytest

    from tests.functional.aws_env import aws_runtime
    from workers.adapters.aws.dead_letters import SqsDeadLetters
    from workers.adapters.aws.webhooks import SqsWebhookSink
    from workers.sandbox.emulator import SqsPoller, queue_arn

    conversations = 6 if every else 2
    messages = ("hello", "how do I reset my password?", "thanks") if every else ("hello", "hi")
    result = Result(runtime="webhooks: AWS (moto), queued twice, responses lost, failing 1 in 3")
    result.settings = {
        "receiver failing": "1 in 3 (503)",
        "responses lost": "every other",
        "attempts": str(ATTEMPTS_ON_AWS),
    }
    started = time.perf_counter()
    receiver = FlakyReceiver(seed=3)
    env = pytest.MonkeyPatch()
    try:
        env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        env.setenv("POWERTOOLS_LOG_LEVEL", "ERROR")
        subscription = {"name": "helpdesk", "url": receiver.url, "secret_env": "RELIABILITY_HOOK"}
        env.setenv("AGENTWORKER_WEBHOOKS", json.dumps([subscription]))
        env.setenv("RELIABILITY_HOOK", SECRET)
        env.setenv("AGENTWORKER_WEBHOOK_RETRY_BASE_SECONDS", "0.05")
        env.setenv("AGENTWORKER_WEBHOOK_ATTEMPTS", str(ATTEMPTS_ON_AWS))
        queued = SqsWebhookSink.send

        def twice(sink: SqsWebhookSink, payload: Any) -> None:
            queued(sink, payload)
            queued(sink, payload)

        env.setattr(SqsWebhookSink, "send", twice)
        with aws_runtime(env.setenv) as aws:
            cids = [f"ws:hook-aws-{i}" for i in range(conversations)]
            aws.converse(cids, messages)
            expected_ids = aws.webhook_ids(cids)
            sqs = aws.session.client("sqs")
            url = aws.stack.webhooks_queue_url
            lossy = LosingEveryOther(aws.handlers["webhooks"])
            courier = SqsPoller(sqs, url, queue_arn(sqs, url), lossy)
            dead = SqsDeadLetters.of_queue(sqs, url, wait_seconds=0, webhooks=True)
            wanted = {i for ids in expected_ids.values() for i in ids}
            redriven = 0
            deadline = time.monotonic() + 240
            # until both queues are empty: what was posted but whose response was lost
            # comes back, and is posted again
            while time.monotonic() < deadline:
                if courier.poll_once():
                    continue
                moved = dead.redrive().moved
                redriven += len(moved)
                if moved:
                    progress(f"webhooks on AWS: {len(moved)} dead-lettered, redriven")
                elif not _waiting(sqs, url):
                    break
                time.sleep(0.2)
            progress(f"webhooks on AWS: {len(set(receiver.ids()) & wanted)}/{len(wanted)} taken")
            found, out_of_order, again = audit(receiver, expected_ids)
            result.notes["requests"] = receiver.requests
            result.notes["refused by the receiver"] = receiver.requests - len(receiver.taken)
            result.notes["responses lost"] = lossy.lost
            result.notes["dead-lettered, redriven"] = redriven
            result.notes["bad signatures"] = receiver.bad_signatures
            result.notes["out of order"] = out_of_order
            result.notes["taken again, same webhook-id"] = again
    finally:
        env.undo()
        receiver.close()
    result.findings = found
    result.written = set()
    result.seconds = time.perf_counter() - started
    return result


def _waiting(sqs: Any, url: str) -> int:
    """Messages on the queue, visible or in flight."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(found.get(n, 0)) for n in names)
