"""The AWS runtime on moto for functional tests: the stack, the Converse stub, the Lambda
routing and an SQS poller, in this process (``mock_aws``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import boto3
import moto
import pytest

from workers import bootstrap
from workers.sandbox.converse_stub import ConverseStubServer
from workers.sandbox.emulator import (
    MOTO_CONFIG,
    EventsPoller,
    LambdaContextStub,
    SqsPoller,
    Stack,
    TopicDeduplication,
    create_stack,
    default_handlers,
    fifo_topic_deduplication,
    queue_arn,
    route_lambda_to_handlers,
    serialized_dynamodb,
    subscribe_queue,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "aws"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


@dataclass
class Aws:
    session: Any
    stack: Stack
    replies_url: str
    poller: SqsPoller
    events: SqsPoller
    """The bus's rules' deliveries to ``ingest``."""
    stub: ConverseStubServer
    handlers: dict[str, Any] = field(default_factory=dict)
    """The Lambda handlers moto invokes, by function name (a test may wrap one)."""
    deduplication: TopicDeduplication = field(default_factory=TopicDeduplication)
    """What the reply topic dropped as published already (SNS FIFO's deduplication)."""

    def send_sqs(self, conversation_id: str, text: str, *, dedupe_key: str | None = None) -> None:
        body: dict[str, Any] = {"conversation_id": conversation_id, "text": text}
        if dedupe_key:
            body["dedupe_key"] = dedupe_key
        self.send_body(body)

    def send_body(self, body: dict[str, Any], *, deduplication_id: str | None = None) -> None:
        """A message of any kind on the inbound queue, in its conversation's group."""
        self.session.client("sqs").send_message(
            QueueUrl=self.stack.queue_url,
            MessageBody=json.dumps(body),
            MessageGroupId=body["conversation_id"],
            MessageDeduplicationId=deduplication_id or f"{time.time_ns()}",
        )

    def converse(self, cids: Sequence[str], texts: Sequence[str]) -> None:
        """Each text to every conversation through the inbound queue, a round at a time:
        a round's runs end before the next is sent."""
        for text in texts:
            for cid in cids:
                self.send_sqs(cid, text)
            self.pump()
            self.wait_executions_done()

    def webhook_ids(self, cids: Sequence[str]) -> dict[str, list[str]]:
        """The ``webhook-id`` of each payload of each conversation, in outbox order."""
        store = bootstrap.aws_deps().store
        found: dict[str, list[str]] = {}
        for cid in cids:
            history = store.history(cid)
            found[cid] = [f"msg_{e.payload.reply_id}" for e in history.outbox] if history else []
        return found

    def pump(self, seconds: float = 0.0) -> None:
        """Poll the inbound queue until it is empty (and ``seconds`` have passed)."""
        deadline = time.monotonic() + seconds
        while self.poller.poll_once() + self.events.poll_once() or time.monotonic() < deadline:
            time.sleep(0.05)

    def replies(self, timeout: float = 30.0, want: int = 1) -> list[dict[str, Any]]:
        sqs = self.session.client("sqs")
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got) < want:
            for m in sqs.receive_message(QueueUrl=self.replies_url, MaxNumberOfMessages=10).get(
                "Messages", []
            ):
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.replies_url, ReceiptHandle=m["ReceiptHandle"])
            time.sleep(0.05)
        return got

    def executions(self) -> list[dict[str, Any]]:
        sfn = self.session.client("stepfunctions")
        arn = self.stack.state_machine_arns["express"]
        found: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=arn)["executions"]
        return found

    def wait_executions_done(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        sfn = self.session.client("stepfunctions")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [
                sfn.describe_execution(executionArn=e["executionArn"]) for e in self.executions()
            ]
            if runs and all(r["status"] != "RUNNING" for r in runs):
                return runs
            time.sleep(0.1)
        raise AssertionError("executions still running")


@contextmanager
def aws_runtime(setenv: Callable[[str, str], None]) -> Iterator[Aws]:
    """The AWS runtime on moto in this process while the block lasts; ``setenv`` sets this
    process's environment (the handlers read their settings from it, as on Lambda) and
    its caller restores it."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AGENTWORKER_TRACING": "false",
    }.items():
        setenv(name, value)
    with ConverseStubServer() as stub, moto.mock_aws(config=cast(Any, MOTO_CONFIG)):
        session = boto3.session.Session(region_name="us-east-1")
        stack = create_stack(session.client, retry_interval_seconds=1)
        for name, value in stack.environment().items():
            setenv(name, value)
        setenv("AGENTWORKER_MODEL", f"bedrock:{MODEL}")
        setenv("AGENTWORKER_BEDROCK_ENDPOINT_URL", stub.endpoint_url)
        setenv("AGENTWORKER_BEDROCK_REGION", "us-east-1")
        sqs = session.client("sqs")
        replies_url = subscribe_queue(session.client, stack.topic_arn, "replies").queue_url
        handlers = dict(default_handlers())
        inbound_arn = queue_arn(sqs, stack.queue_url)
        poller = SqsPoller(sqs, stack.queue_url, inbound_arn, handlers["ingest"])
        events = EventsPoller(
            sqs, stack.events_queue_url, queue_arn(sqs, stack.events_queue_url), handlers["ingest"]
        )
        bootstrap.reset_aws_deps()
        # Handlers run in moto's execution threads and the poller in this one: moto's
        # DynamoDB must answer one request at a time, as real DynamoDB's conditions do.
        try:
            with (
                route_lambda_to_handlers(handlers),
                serialized_dynamodb(),
                fifo_topic_deduplication() as deduplication,
            ):
                yield Aws(
                    session, stack, replies_url, poller, events, stub, handlers, deduplication
                )
        finally:
            bootstrap.reset_aws_deps()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    with aws_runtime(monkeypatch.setenv) as runtime:
        yield runtime


def approval_event(conversation_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A real HTTP API (payload 2.0) envelope carrying a decision for the approve handler,
    on the backends' route: IAM admitted the caller (the fixture's JWT authorizer context
    is the users' route's)."""
    event: dict[str, Any] = json.loads((FIXTURES / "apiGatewayProxyV2Event.json").read_text())
    event["requestContext"]["authorizer"] = {
        "iam": {"userArn": "arn:aws:iam::123456789012:role/backoffice", "accountId": "123456789012"}
    }
    event["pathParameters"] = {"conversation_id": conversation_id}
    event["body"] = json.dumps(body)
    return event


def lambda_context() -> Any:
    return LambdaContextStub("ingest", "arn:aws:lambda:us-east-1:123456789012:function:ingest")
