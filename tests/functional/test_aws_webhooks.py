"""Outbound webhooks on the AWS runtime (moto): every function queues deliveries on the
webhooks queue (SQS FIFO), and the ``webhooks`` function, fed by it as Lambda's event source
mapping would, signs and posts them. A receiver that fails three times then takes everything
gets each payload once, in order per conversation, with valid signatures; one that always
fails ends in the webhooks' dead-letter queue after the queue's receives (``agentworker dlq
--webhooks --target aws`` lists it and sends it back), and the turns are answered as without
it. A conversation's own webhook (``POST /v1/conversations/{id}/webhooks`` on the ``api``
function) gets its conversation's deliveries while it and the conversation are there."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.functional.aws_env import Aws, aws
from tests.functional.test_webhooks import SECRET, Receiver
from workers import bootstrap
from workers.sandbox.emulator import SqsPoller, queue_arn

__all__ = ["aws"]  # the fixture

ATTEMPTS = 4


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {"helpdesk": Receiver(fail_first=3), "broken": Receiver(always_fail=True)}
    yield made
    for receiver in made.values():
        receiver.close()


def test_deliveries_are_queued_sent_once_in_order_and_dead_lettered(
    aws: Aws,
    receivers: dict[str, Receiver],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    subscriptions = [
        {"name": name, "url": r.url, "secret_env": "HOOK_SECRET", "events": ["reply"]}
        for name, r in receivers.items()
    ]
    monkeypatch.setenv("AGENTWORKER_WEBHOOKS", json.dumps(subscriptions))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("AGENTWORKER_WEBHOOK_RETRY_BASE_SECONDS", "0.1")
    monkeypatch.setenv("AGENTWORKER_WEBHOOK_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("AGENTWORKER_WEBHOOK_ATTEMPTS", str(ATTEMPTS))
    bootstrap.reset_aws_deps()
    cids = ["ws:alice:hook-1", "ws:bob:hook-2"]
    aws.converse(cids, ("hello", "how do I reset my password?"))
    expected = aws.webhook_ids(cids)
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
    # each conversation's first delivery was tried its attempts and died; the one behind
    # it followed it to the dead-letter queue untried (never ahead of it)
    broken = receivers["broken"]
    assert broken.requests == 2 * ATTEMPTS

    # `agentworker dlq` lists them and, once the receiver is back, sends them back: each
    # taken once, in order per conversation
    listed = run_cli(capsys, "dlq", "list", "--webhooks", "--target", "aws")
    assert listed.count("reply to broken: msg_") == 4
    assert listed.count("HTTP 503") == 2 and listed.count("held behind msg_") == 2
    assert all(cid in listed for cid in cids)
    broken.always_fail = False
    moved = run_cli(capsys, "dlq", "redrive", "--webhooks", "--all", "--target", "aws")
    assert "4 moved, 0 not moved" in moved and "to the webhooks queue" in moved
    deadline = time.monotonic() + 30
    while len(broken.taken) < 4 and time.monotonic() < deadline:
        courier.poll_once()
        time.sleep(0.1)
    ids = [t["id"] for t in broken.taken]
    assert sorted(ids) == sorted(i for v in expected.values() for i in v)
    for wanted in expected.values():
        assert [i for i in ids if i in wanted] == wanted
    assert "no dead letters" in run_cli(capsys, "dlq", "list", "--webhooks", "--target", "aws")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from workers import cli

    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def drain(aws: Aws, until: Callable[[], bool], seconds: float = 30) -> None:
    """Feed the webhooks queue to the function until ``until()`` (or the queue is empty)."""
    sqs = aws.session.client("sqs")
    url = aws.stack.webhooks_queue_url
    courier = SqsPoller(sqs, url, queue_arn(sqs, url), aws.handlers["webhooks"])
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        if not courier.poll_once():
            left = sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            if not any(int(v) for v in left.values()):
                return
            time.sleep(0.1)


def test_a_conversations_own_webhook_on_the_aws_runtime(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made, listed and deleted through the ``api`` function behind the JWT authorizer by
    who may use the conversation; its deliveries signed with its own secret; none after it
    was deleted, and none once the conversation's id belongs to someone else."""
    from langgraph_sdk import get_sync_client

    from tests.functional.test_aws_agent_server import verified
    from tests.functional.test_aws_schedules import ALICE, BOB
    from workers.handlers import api
    from workers.sandbox.http_api import HttpApiStandIn

    monkeypatch.setenv("AGENTWORKER_WEBHOOK_PRIVATE_URLS", "true")  # the receiver is local
    bootstrap.reset_aws_deps()
    receiver = Receiver()
    try:
        with HttpApiStandIn(api.handler, verified) as gateway:
            sdk = get_sync_client(url=gateway.url, api_key=None, headers=ALICE)
            [assistant] = sdk.assistants.search()
            tid = sdk.threads.create()["thread_id"]
            graph = assistant["graph_id"]

            def ask(text: str, client: Any = sdk) -> None:
                said: Any = {"messages": [{"role": "user", "content": text}]}
                client.runs.wait(tid, graph, input=said)
                aws.wait_executions_done()

            ask("hi")
            path = f"{gateway.url}/v1/conversations/{tid}/webhooks"
            body = {"url": receiver.url, "secret": SECRET, "events": ["reply"]}
            made = httpx.post(path, json=body, headers=ALICE)
            assert made.status_code == 201, made.text
            hook = made.json()
            assert hook["secret"] == SECRET
            assert httpx.post(path, json=body, headers=BOB).status_code == 404
            assert httpx.get(path, headers=BOB).status_code == 404
            listed = httpx.get(path, headers=ALICE).json()["webhooks"]
            assert [h["webhook_id"] for h in listed] == [hook["webhook_id"]]
            assert listed[0]["secret"] is None

            ask("how do I reset my password?")
            drain(aws, lambda: len(receiver.taken) >= 1)
            store = bootstrap.aws_deps().store
            last = store.history(tid).outbox[-1].payload  # type: ignore[union-attr]
            assert [t["id"] for t in receiver.taken] == [f"msg_{last.reply_id}"]
            assert receiver.bad_signatures == 0 and receiver.taken[0]["type"] == "reply"

            gone = httpx.delete(f"{path}/{hook['webhook_id']}", headers=ALICE)
            assert gone.status_code == 200 and httpx.get(path, headers=ALICE).json() == {
                "conversation_id": tid,
                "webhooks": [],
            }
            ask("thanks")
            drain(aws, lambda: False, seconds=5)
            assert len(receiver.taken) == 1  # nothing after it was deleted

            # The conversation expires (DynamoDB's TTL takes its items, not the webhook's)
            # and Bob makes one under the same id: Alice's receiver gets none of his.
            again = httpx.post(path, json=body, headers=ALICE)
            assert again.status_code == 201
            store.forget(tid)
            bobs = get_sync_client(url=gateway.url, api_key=None, headers=BOB)
            bobs.threads.create(thread_id=tid)
            ask("this is Bob's", client=bobs)
            drain(aws, lambda: False, seconds=5)
            assert len(receiver.taken) == 1 and receiver.requests == 1
    finally:
        receiver.close()
