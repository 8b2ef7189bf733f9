"""Outbound webhooks on the AWS runtime (moto): every function queues deliveries on the
webhooks queue (SQS FIFO), and the ``webhooks`` function, fed by it as Lambda's event source
mapping would, signs and posts them. A receiver that fails three times then takes everything
gets each payload once, in order per conversation, with valid signatures; one that always
fails ends in the webhooks' dead-letter queue after the queue's receives, and the turns are
answered as without it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.aws_env import Aws, aws
from tests.functional.test_webhooks import SECRET, Receiver
from workers import bootstrap
from workers.sandbox.emulator import WEBHOOK_ATTEMPTS, SqsPoller, queue_arn

__all__ = ["aws"]  # the fixture


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {"helpdesk": Receiver(fail_first=3), "broken": Receiver(always_fail=True)}
    yield made
    for receiver in made.values():
        receiver.close()


def test_deliveries_are_queued_sent_once_in_order_and_dead_lettered(
    aws: Aws, receivers: dict[str, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriptions = [
        {"name": name, "url": r.url, "secret_env": "HOOK_SECRET", "events": ["reply"]}
        for name, r in receivers.items()
    ]
    monkeypatch.setenv("AGENTWORKER_WEBHOOKS", json.dumps(subscriptions))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("AGENTWORKER_WEBHOOK_RETRY_BASE_SECONDS", "0.1")
    monkeypatch.setenv("AGENTWORKER_WEBHOOK_TIMEOUT_SECONDS", "2")
    bootstrap.reset_aws_deps()
    cids = ["ws:alice:hook-1", "ws:bob:hook-2"]
    for text in ("hello", "how do I reset my password?"):
        for cid in cids:
            aws.send_sqs(cid, text)
        aws.pump()
        aws.wait_executions_done()
    store = bootstrap.aws_deps().store
    expected = {
        cid: [f"msg_{e.payload.reply_id}" for e in store.history(cid).outbox]  # type: ignore[union-attr]
        for cid in cids
    }
    assert all(len(ids) == 2 for ids in expected.values()), expected

    sqs = aws.session.client("sqs")
    url = aws.stack.webhooks_queue_url
    courier = SqsPoller(sqs, url, queue_arn(sqs, url), aws.handlers["webhooks"])
    helpdesk = receivers["helpdesk"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        courier.poll_once()
        dead = int(
            sqs.get_queue_attributes(
                QueueUrl=aws.stack.webhooks_dlq_url,
                AttributeNames=["ApproximateNumberOfMessages"],
            )["Attributes"]["ApproximateNumberOfMessages"]
        )
        if len(helpdesk.taken) >= 4 and dead >= 4:
            break
        time.sleep(0.2)
    taken: list[dict[str, Any]] = helpdesk.taken
    assert helpdesk.bad_signatures == 0 and helpdesk.requests >= 4 + 3
    ids = [t["id"] for t in taken]
    assert sorted(ids) == sorted(i for v in expected.values() for i in v)  # each once
    for wanted in expected.values():
        assert [i for i in ids if i in wanted] == wanted  # in order per conversation
    assert dead == 4  # the broken receiver's four, after its receives
    # each conversation's first delivery was tried the queue's receives; the one behind it
    # was held back with it (its receives count too) and died with it, in order
    assert 2 * WEBHOOK_ATTEMPTS <= receivers["broken"].requests <= 4 * WEBHOOK_ATTEMPTS
