"""The inbound queue's dead letters under moto (``mock_aws``): a look consumes nothing, a
redrive sends back the same body and group with a fresh deduplication id and deletes only
what it sent, an unknown id moves nothing, an unparseable body moves only when forced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from workers.adapters.aws.dead_letters import SqsDeadLetters, inbound_queue_url
from workers.config import load_settings
from workers.errors import ConfigError, NotFound
from workers.stack import QUEUE_MAX_RECEIVES, StackNames

NAMES = StackNames("agentworker-test")


class Queues:
    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs
        self.dlq_url = sqs.create_queue(QueueName=NAMES.dlq, Attributes={"FifoQueue": "true"})[
            "QueueUrl"
        ]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(QUEUE_MAX_RECEIVES)}
        self.queue_url = sqs.create_queue(
            QueueName=NAMES.queue,
            Attributes={"FifoQueue": "true", "RedrivePolicy": json.dumps(policy)},
        )["QueueUrl"]
        self.sent = 0

    def poison(self, body: str, group: str = "ticket:1") -> str:
        """Send ``body`` to the inbound queue and fail it until SQS moves it to the DLQ."""
        self.sent += 1
        message_id: str = self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=body,
            MessageGroupId=group,
            MessageDeduplicationId=f"d{self.sent}",
        )["MessageId"]
        for _ in range(QUEUE_MAX_RECEIVES + 1):  # the last receive moves it
            self.sqs.receive_message(QueueUrl=self.queue_url, VisibilityTimeout=0)
        return message_id

    def dead(self, wait_seconds: int = 1) -> SqsDeadLetters:
        return SqsDeadLetters.of_queue(self.sqs, self.queue_url, wait_seconds=wait_seconds)

    def drain(self, url: str) -> list[dict[str, Any]]:
        """Every message of ``url`` (consumed), with its attributes."""
        got: list[dict[str, Any]] = []
        while batch := self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", []):
            got.extend(batch)
            for m in batch:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got


@pytest.fixture
def queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[Queues]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield Queues(boto3.client("sqs"))


def message(text: str, cid: str = "ticket:1", **extra: Any) -> str:
    return json.dumps({"conversation_id": cid, "text": text, **extra})


def test_a_look_lists_each_dead_letter_and_consumes_none(queues: Queues) -> None:
    good = queues.poison(message("please help"))
    bad = queues.poison("{not json", group="poison")
    dead = queues.dead()
    assert dead.dlq_url == queues.dlq_url
    peek = dead.peek()
    assert peek.total == 2
    by_id = {d.message_id: d for d in peek.letters}
    assert set(by_id) == {good, bad}
    assert by_id[good].conversation_id == "ticket:1"
    parsed = by_id[good].message
    assert parsed is not None and parsed.text == "please help"
    assert by_id[good].receive_count == QUEUE_MAX_RECEIVES
    assert by_id[good].error == f"failed {QUEUE_MAX_RECEIVES} receives"
    assert by_id[bad].message is None and by_id[bad].conversation_id is None
    assert by_id[bad].error.startswith("does not parse: SQS body is not valid JSON")
    assert by_id[bad].group_id == "poison"
    # Still there, and visible at once: a second look and a consumer see both.
    assert {d.message_id for d in dead.peek().letters} == {good, bad}
    assert {m["MessageId"] for m in queues.drain(queues.dlq_url)} == {good, bad}


def test_a_body_that_parses_but_is_not_a_message_says_why(queues: Queues) -> None:
    queues.poison(json.dumps({"conversation_id": "ticket:1"}))  # no text
    queues.poison(json.dumps([1, 2]), group="g2")
    errors = sorted(d.error for d in queues.dead().peek().letters)
    assert errors == [
        "does not parse: SQS body must be a JSON object",
        "does not parse: text: a user message needs a non-empty text",
    ]


def test_a_redrive_sends_the_same_body_and_group_back_and_deletes_only_that(
    queues: Queues,
) -> None:
    first = queues.poison(message("one"))
    keyed = queues.poison(message("two", "ticket:2", dedupe_key="helpdesk:7"), group="ticket:2")
    stays = queues.poison(message("three", "ticket:3"), group="ticket:3")
    report = queues.dead().redrive([first, keyed])
    assert [m.letter.message_id for m in report.moved] == [first, keyed]
    assert report.not_moved == []
    back = {m["MessageId"]: m for m in queues.drain(queues.queue_url)}
    assert set(back) == {m.sent_id for m in report.moved}
    sent = {m.letter.message_id: back[m.sent_id] for m in report.moved}
    # ingest keyed the first by its SQS id: the key is written in, so a copy accepted
    # before it failed is a duplicate; the second names its own key and goes as it was.
    assert json.loads(sent[first]["Body"]) == {
        "conversation_id": "ticket:1",
        "text": "one",
        "dedupe_key": f"sqs:{first}",
    }
    assert sent[keyed]["Body"] == message("two", "ticket:2", dedupe_key="helpdesk:7")
    assert sent[first]["Attributes"]["MessageGroupId"] == "ticket:1"
    assert sent[keyed]["Attributes"]["MessageGroupId"] == "ticket:2"
    assert {m["MessageId"] for m in queues.drain(queues.dlq_url)} == {stays}


def test_an_unknown_id_moves_nothing(queues: Queues) -> None:
    known = queues.poison(message("one"))
    with pytest.raises(NotFound, match="'nope'") as raised:
        queues.dead().redrive([known, "nope"])
    assert raised.value.field == "id"
    assert queues.drain(queues.queue_url) == []
    assert [m["MessageId"] for m in queues.drain(queues.dlq_url)] == [known]  # and visible


def test_an_unparseable_body_moves_only_when_forced(queues: Queues) -> None:
    bad = queues.poison("{not json", group="poison")
    good = queues.poison(message("fine"))
    report = queues.dead().redrive(None)  # --all
    assert [m.letter.message_id for m in report.moved] == [good]
    [skipped] = report.not_moved
    assert skipped.letter.message_id == bad and skipped.skipped
    assert "does not parse" in skipped.reason and "--force" in skipped.reason
    assert [d.message_id for d in queues.dead().peek().letters] == [bad]
    forced = queues.dead().redrive([bad], force=True)
    assert [m.letter.message_id for m in forced.moved] == [bad]
    bodies = sorted(m["Body"] for m in queues.drain(queues.queue_url))
    assert "{not json" in bodies  # sent as it was
    assert queues.dead().peek().letters == []


def test_a_failed_send_leaves_the_dead_letter_where_it_was(queues: Queues) -> None:
    kept = queues.poison(message("one"))

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            return getattr(queues.sqs, name)

        def send_message(self, **params: Any) -> Any:
            error = {"Error": {"Code": "AccessDenied", "Message": "no"}}
            raise ClientError(error, "SendMessage")

    dead = SqsDeadLetters.of_queue(Refusing(), queues.queue_url)
    report = dead.redrive([kept])
    assert report.moved == []
    [left] = report.not_moved
    assert not left.skipped and "AccessDenied" in left.reason
    assert [m["MessageId"] for m in queues.drain(queues.dlq_url)] == [kept]


def test_the_queue_is_found_by_the_stack_name_and_must_have_a_dead_letter_queue(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTWORKER_TABLE_NAME", NAMES.table)
    assert inbound_queue_url(queues.sqs, load_settings()) == queues.queue_url
    monkeypatch.setenv("AGENTWORKER_QUEUE_URL", "https://example.invalid/q")
    assert inbound_queue_url(queues.sqs, load_settings()) == "https://example.invalid/q"
    monkeypatch.delenv("AGENTWORKER_QUEUE_URL")
    monkeypatch.setenv("AGENTWORKER_TABLE_NAME", "agentworker-nowhere")
    with pytest.raises(ConfigError, match="AGENTWORKER_TABLE_NAME='agentworker-nowhere'"):
        inbound_queue_url(queues.sqs, load_settings())
    plain = queues.sqs.create_queue(QueueName="plain")["QueueUrl"]
    with pytest.raises(ConfigError, match="no dead-letter queue"):
        SqsDeadLetters.of_queue(queues.sqs, plain)


def test_a_fifo_group_shows_ten_dead_letters_at_a_time_and_the_count_says_so(
    queues: Queues,
) -> None:
    ids = [queues.poison(message(f"m{i}")) for i in range(12)]
    # Short polls stop at ten, below the count: a long poll follows (moto's answer is
    # exact, so it may be short here).
    first = queues.dead(wait_seconds=0).peek()
    assert (len(first.letters), first.total) == (10, 12)
    assert [d.message_id for d in first.letters] == ids[:10]  # oldest first
    moved = queues.dead(wait_seconds=0).redrive(None)
    assert [m.letter.message_id for m in moved.moved] == ids[:10]
    assert [d.message_id for d in queues.dead().peek().letters] == ids[10:]
