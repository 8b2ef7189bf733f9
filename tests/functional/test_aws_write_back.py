"""A ticket's write-back to the helpdesk on the AWS runtime (moto): a ``ticket:<id>``
conversation's reply and status go out on the stack's event bus as
``agentworker.ticket.reply`` / ``agentworker.ticket.status`` events, which a helpdesk's rule
takes (here: into a queue), and which the bus's own rule for inbound tickets does not hand
back to ``ingest``."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.functional.aws_env import Aws, aws
from workers import bootstrap
from workers.sandbox.emulator import queue_arn

__all__ = ["aws"]  # the fixture


def helpdesk_queue(aws: Aws) -> str:
    """A queue a helpdesk's rule on the bus fills with the write-back events."""
    sqs, events = aws.session.client("sqs"), aws.session.client("events")
    url: str = sqs.create_queue(QueueName="helpdesk-write-back")["QueueUrl"]
    events.put_rule(
        Name="helpdesk",
        EventBusName=aws.stack.event_bus,
        EventPattern=json.dumps({"source": ["agentworker"]}),
    )
    events.put_targets(
        Rule="helpdesk",
        EventBusName=aws.stack.event_bus,
        Targets=[{"Id": "queue", "Arn": queue_arn(sqs, url)}],
    )
    return url


def received(aws: Aws, url: str, want: int, timeout: float = 20) -> list[dict[str, Any]]:
    sqs = aws.session.client("sqs")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        time.sleep(0.05)
    return got


def test_a_tickets_reply_and_status_go_out_on_the_bus(aws: Aws) -> None:
    url = helpdesk_queue(aws)
    aws.send_sqs("ticket:HD-9", "What are your opening hours?")
    aws.send_sqs("ws:alice:chat", "hello")  # not a ticket: nothing on the bus
    aws.pump()
    aws.wait_executions_done()
    events = received(aws, url, want=2)
    by_type = {e["detail-type"]: e for e in events}
    assert sorted(by_type) == ["agentworker.ticket.reply", "agentworker.ticket.status"]
    reply = by_type["agentworker.ticket.reply"]["detail"]
    status = by_type["agentworker.ticket.status"]["detail"]
    assert reply["ticket_id"] == "HD-9" and reply["conversation_id"] == "ticket:HD-9"
    assert reply["text"] and reply["id"] == f"msg_{reply['reply_id']}.ticket.reply"
    assert status["status"] == "answered" and status["reply_id"] == reply["reply_id"]
    assert all(e["source"] == "agentworker" for e in events)
    aws.pump(0.5)  # the bus's rule for inbound tickets took none of them back
    assert received(aws, url, want=1, timeout=1) == []
    history = bootstrap.aws_deps().store.history("ticket:HD-9")
    assert history is not None and len(history.inbox) == 1  # no loop into ingest
