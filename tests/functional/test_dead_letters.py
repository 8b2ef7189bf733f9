"""Dead letters of the AWS runtime on moto: a poison message really lands in the inbound
queue's dead-letter queue through the SQS poller (Lambda's event source mapping), is listed
by ``agentworker dlq list --target aws``, redriven by ``agentworker dlq redrive`` once the
fault is fixed, and answered exactly once, also when ``ingest`` had accepted it before it
failed. The same commands reach a sandbox through its ``sandbox.json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.aws_env import Aws, aws
from workers.cli import main
from workers.errors import RetryableError
from workers.sandbox.emulator import SqsPoller, queue_arn
from workers.sandbox.server import SandboxState, client_factory, state_path
from workers.stack import QUEUE_MAX_RECEIVES

__all__ = ["aws"]  # the fixture

Handler = Callable[[dict[str, Any], Any], Any]


def poller(aws: Aws, handler: Handler) -> SqsPoller:
    """Lambda's event source mapping on the inbound queue, feeding ``handler``. The queue's
    visibility timeout (2 s in the emulator) becomes 0: a failed receive comes back at once,
    and the test does not sleep through three of them."""
    sqs = aws.session.client("sqs")
    url = aws.stack.queue_url
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "0"})
    return SqsPoller(sqs, url, queue_arn(sqs, url), handler)


def drain(source: SqsPoller) -> int:
    """Poll until the queue is empty; how many receives it took."""
    receives = 0
    while source.poll_once():
        receives += 1
    return receives


def send(aws: Aws, conversation_id: str, text: str) -> str:
    """A message for the agent on the inbound queue, as a producer sends it (no dedupe key:
    ``ingest`` keys it by its SQS message id); returns that id."""
    sent = aws.session.client("sqs").send_message(
        QueueUrl=aws.stack.queue_url,
        MessageBody=json.dumps({"conversation_id": conversation_id, "text": text}),
        MessageGroupId=conversation_id,
        MessageDeduplicationId=f"{conversation_id}:{text}",
    )
    return str(sent["MessageId"])


def test_a_poison_message_is_listed_redriven_after_the_fix_and_answered_once(
    aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    down = True

    def ingest(event: dict[str, Any], context: Any) -> Any:
        if down:
            raise RetryableError("ingest cannot reach its table")
        return aws.handlers["ingest"](event, context)

    source = poller(aws, ingest)
    message_id = send(aws, "ticket:70", "my printer is on fire")
    assert drain(source) == QUEUE_MAX_RECEIVES  # the next receive moved it to the DLQ

    assert main(["dlq", "list", "--target", "aws"]) == 0
    out = capsys.readouterr().out
    assert message_id in out and "ticket:70" in out and "my printer is on fire" in out
    assert f"failed {QUEUE_MAX_RECEIVES} receives" in out

    assert main(["dlq", "redrive", "--target", "aws", "--id", "nope"]) == 2
    assert "no message 'nope' in the dead-letter queue" in capsys.readouterr().err

    down = False
    aws.stub.script(reply_text="Fire extinguisher on its way.")
    assert main(["dlq", "redrive", "--target", "aws", "--id", message_id]) == 0
    assert f"moved {message_id} (ticket:70)" in capsys.readouterr().out
    drain(source)
    [reply] = aws.replies()
    assert reply["text"] == "Fire extinguisher on its way."
    aws.wait_executions_done()
    assert aws.replies(timeout=0.5) == []
    assert main(["dlq", "list", "--target", "aws"]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_a_message_accepted_before_it_failed_is_not_answered_again(
    aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ingest`` accepted the message, then died before reporting success, on every
    receive: the run answers it, and the copy the redrive sends back is a duplicate."""

    def accepts_then_dies(event: dict[str, Any], context: Any) -> Any:
        aws.handlers["ingest"](event, context)
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}

    aws.stub.script(reply_text="Answered once.")
    message_id = send(aws, "ticket:71", "hello")
    drain(poller(aws, accepts_then_dies))
    [reply] = aws.replies()
    assert reply["text"] == "Answered once."

    assert main(["dlq", "redrive", "--target", "aws", "--all"]) == 0
    assert f"moved {message_id}" in capsys.readouterr().out
    drain(poller(aws, aws.handlers["ingest"]))
    aws.wait_executions_done()
    assert aws.replies(timeout=1.0) == []
    assert len(aws.stub.requests) == 1  # one model call: one turn


@pytest.fixture
def sandbox_dir(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """A ``sandbox.json`` pointing at a moto server holding the stack's queues (what the
    commands read of a running sandbox), and a client of that server."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        clients = client_factory(endpoint)
        sqs = clients("sqs")
        dlq = sqs.create_queue(
            QueueName="agentworker-inbound-dlq.fifo", Attributes={"FifoQueue": "true"}
        )
        policy = {"deadLetterTargetArn": queue_arn(sqs, dlq["QueueUrl"]), "maxReceiveCount": "1"}
        queue = sqs.create_queue(
            QueueName="agentworker-inbound.fifo",
            Attributes={"FifoQueue": "true", "RedrivePolicy": json.dumps(policy)},
        )["QueueUrl"]
        state = SandboxState(
            endpoint_url=endpoint,
            queue_url=queue,
            replies_queue_url="",
            topic_arn="",
            state_machine_arn="",
            table_name="agentworker",
            bucket_name="agentworker-state",
            pid=0,
        )
        state_path(tmp_path).write_text(state.model_dump_json())
        yield tmp_path, sqs
    finally:
        server.stop()


def test_the_commands_reach_the_sandbox_through_its_state_file(
    sandbox_dir: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, sqs = sandbox_dir
    queue = SandboxState.model_validate_json(state_path(state_dir).read_text()).queue_url
    sqs.send_message(
        QueueUrl=queue, MessageBody="{not json", MessageGroupId="g", MessageDeduplicationId="1"
    )
    for _ in range(2):  # maxReceiveCount 1: the second receive moves it
        sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0)
    where = ["--target", "sandbox", "--state-dir", str(state_dir)]
    assert main(["dlq", "list", *where]) == 0
    out = capsys.readouterr().out
    assert "does not parse: SQS body is not valid JSON" in out and "{not json" in out

    assert main(["dlq", "redrive", "--all", *where]) == 1  # not moved: unparseable
    out = capsys.readouterr().out
    assert "skipped" in out and "--force" in out and "0 moved, 1 not moved" in out
    assert sqs.receive_message(QueueUrl=queue).get("Messages", []) == []

    assert main(["dlq", "redrive", "--all", "--force", *where]) == 0
    assert "1 moved, 0 not moved" in capsys.readouterr().out
    [back] = sqs.receive_message(QueueUrl=queue)["Messages"]
    assert back["Body"] == "{not json"
