"""FanOutReplySink: every sink gets the payload, whatever another one does."""

from __future__ import annotations

from typing import Any

import pytest

from events.outbound import OutboxPayload, Reply, ReplyChunk, StreamChunk, UpdateChunk
from tests.fakes import RecordingSink
from workers.adapters.fanout import FanOutReplySink
from workers.errors import PartialDelivery, PermanentError, RetryableError

REPLY = Reply(conversation_id="slack:T1:C1:1.0", turn_id="t", text="hi")


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def send(self, payload: OutboxPayload) -> None:
        raise self.exc

    def send_chunk(self, chunk: StreamChunk) -> None:
        return None


def test_a_sink_that_refuses_for_good_does_not_keep_the_others_from_the_payload() -> None:
    after = RecordingSink()
    with pytest.raises(PermanentError):
        FanOutReplySink({"slack": Failing(PermanentError("channel_not_found")), "sns": after}).send(
            REPLY
        )
    assert after.sent == [REPLY]


def test_a_retryable_failure_wins_over_a_permanent_one() -> None:
    sinks = {"a": Failing(PermanentError("gone")), "b": Failing(RetryableError("throttled"))}
    with pytest.raises(RetryableError):
        FanOutReplySink(sinks).send(REPLY)


class Flaky(RecordingSink):
    """Fails for now the first ``failures`` sends, then records like the others."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, payload: OutboxPayload) -> None:
        if self.failures:
            self.failures -= 1
            raise RetryableError("websocket throttled")
        super().send(payload)


def test_a_partial_delivery_names_who_took_it_and_a_retry_sends_only_the_rest() -> None:
    slack, socket = RecordingSink(), Flaky(failures=1)
    fan_out = FanOutReplySink({"slack": slack, "websocket": socket})
    with pytest.raises(PartialDelivery) as partial:
        fan_out.send(REPLY)
    assert partial.value.delivered == {"slack"} and "websocket" in str(partial.value)
    fan_out.send_missing(REPLY, partial.value.delivered)
    assert slack.sent == [REPLY] and socket.sent == [REPLY]  # once each


class Management:
    """A fake API Gateway management client: records posts; ``gone`` connections raise."""

    def __init__(self, gone: set[str]) -> None:
        self.posts: list[str] = []
        self.gone = gone

    def post_to_connection(self, *, ConnectionId: str, Data: bytes) -> None:  # noqa: N803
        if ConnectionId in self.gone:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "GoneException"}}, "PostToConnection")
        self.posts.append(ConnectionId)


def test_a_turns_chunks_list_the_connections_once_and_drop_a_gone_one() -> None:
    from tests.fakes import InMemoryConversationStore
    from workers.adapters.aws.sinks import WebSocketReplySink

    store = InMemoryConversationStore()
    for n, connection in enumerate(("c1", "c2")):
        store.add_connection(connection, REPLY.conversation_id, now=float(n))
    listed: list[str] = []
    real = store.list_connections

    def counted(cid: str) -> list[str]:
        listed.append(cid)
        return real(cid)

    store.list_connections = counted  # type: ignore[method-assign,assignment]
    client = Management(gone={"c2"})
    sink = WebSocketReplySink(client, store)
    for index in range(15):
        sink.send_chunk(
            ReplyChunk(conversation_id=REPLY.conversation_id, turn_id="t", index=index, delta="x")
        )
    update = UpdateChunk(
        conversation_id=REPLY.conversation_id, turn_id="t", index=15, node="model", data={}
    )
    sink.send_chunk(update)  # node updates are the Agent Server API's, not the socket's
    assert len(listed) == 1  # one query for the turn's 15 chunks
    assert client.posts == ["c1"] * 15 and real(REPLY.conversation_id) == ["c1"]
    sink.send(REPLY)  # the final payload lists the connections again
    assert len(listed) == 2 and client.posts[-1] == "c1"


class Topic:
    """A fake SNS client whose ``publish`` raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def publish(self, **_: object) -> None:
        raise self.error


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error: Exception = ClientError(response, "Publish")
    return error


def test_sns_errors_the_adapters_did_not_know_get_a_family() -> None:
    """Before, these left the sink as botocore's own errors: past the fan-out (which tries
    the other sinks only for our two families) and into the workflow as names it does not
    handle, where the run looped Step -> TellUser -> Step (issue 17, item 16)."""
    from botocore.parsers import ResponseParserError

    from workers.adapters.aws.sinks import SnsReplySink

    refused = SnsReplySink(Topic(_client_error("NonExistentQueue", 400)), "arn:topic")
    with pytest.raises(PermanentError, match="NonExistentQueue"):
        refused.send(REPLY)
    garbled = ResponseParserError("Unable to parse response, invalid XML received: b'oops'")
    for error in (_client_error("SomethingNew", 503), garbled):
        with pytest.raises(RetryableError):
            SnsReplySink(Topic(error), "arn:topic").send(REPLY)
    other = RecordingSink()
    fan_out = FanOutReplySink({"sns": SnsReplySink(Topic(garbled), "arn:topic"), "ws": other})
    with pytest.raises(PartialDelivery) as partial:
        fan_out.send(REPLY)
    assert partial.value.delivered == {"ws"} and other.sent == [REPLY]


class Published:
    """A fake SNS client recording ``publish`` calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def publish(self, **params: Any) -> None:
        self.calls.append(params)


def test_on_a_fifo_topic_the_reply_id_is_the_deduplication_id() -> None:
    """Issue 17, item 18: SNS FIFO drops a second publish of the same ``reply_id`` within
    five minutes, whoever sends it; the conversation is the message group (a longer id than
    SNS takes is digested). A standard topic takes neither parameter."""
    from workers.adapters.aws.sinks import SnsReplySink, message_group

    fifo, standard = Published(), Published()
    SnsReplySink(fifo, "arn:aws:sns:us-east-1:1:replies.fifo").send(REPLY)
    SnsReplySink(standard, "arn:aws:sns:us-east-1:1:replies").send(REPLY)
    [sent] = fifo.calls
    assert sent["MessageDeduplicationId"] == REPLY.reply_id
    assert sent["MessageGroupId"] == REPLY.conversation_id
    assert "MessageDeduplicationId" not in standard.calls[0]
    assert "MessageGroupId" not in standard.calls[0]
    long_id = "ws:" + "a" * 250
    assert message_group(long_id) != long_id and len(message_group(long_id)) <= 128
    assert message_group(long_id) == message_group(long_id)
