"""``ConverseStubServer`` driven by the real clients: ``ChatBedrockConverse`` and boto3.

The clients are built with botocore retries off (``total_max_attempts=1``) so each scripted
error is seen once; one test turns retries on to show botocore retrying a 429 by itself.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import pytest
from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]
from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped,unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
    ClientError,
    EventStreamError,
    ReadTimeoutError,
)
from langchain_aws import ChatBedrockConverse
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from pydantic import SecretStr
from urllib3.exceptions import ReadTimeoutError as StreamReadTimeoutError

from support_agent.graph import system_prompt
from tests.fakes import InMemoryTicketStore, ManualClock
from tests.turns import Conversation
from workers.agent.models import map_model_error
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.core.model import TurnOutput
from workers.errors import PermanentError, RetryableError
from workers.sandbox.converse_stub import (
    ConverseStubServer,
    Reply,
    ToolUse,
    Usage,
    encode_event,
    encode_exception,
    reply_events,
)

MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
NO_RETRIES = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)


@pytest.fixture
def stub() -> Iterator[ConverseStubServer]:
    with ConverseStubServer() as server:
        yield server


def chat_model(
    stub: ConverseStubServer, config: Config = NO_RETRIES, *, model_id: str = MODEL_ID
) -> ChatBedrockConverse:
    return ChatBedrockConverse(
        model_id=model_id,
        region_name="us-east-1",
        endpoint_url=stub.endpoint_url,
        aws_access_key_id=SecretStr("testing"),
        aws_secret_access_key=SecretStr("testing"),
        config=config,
    )


def runtime_client(stub: ConverseStubServer) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=stub.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


def collect(model: ChatBedrockConverse, prompt: str) -> tuple[list[AIMessageChunk], AIMessageChunk]:
    chunks = [c for c in model.stream(prompt) if isinstance(c, AIMessageChunk)]
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return chunks, total


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


# the wire format ---------------------------------------------------------------------------


def test_event_stream_framing_decodes_with_botocore() -> None:
    reply = Reply("Hi there.", (ToolUse("lookup_ticket", {"ticket_id": 7}, "tu1"),))
    frames = [encode_event(e.kind, e.payload) for e in reply_events(reply, {}, time.monotonic())]
    frames.append(encode_exception("throttlingException", "Rate exceeded"))
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))  # validates prelude and message CRC32s
    messages = list(buffer)
    kinds = [m.headers.get(":event-type") for m in messages[:-1]]
    assert kinds == [
        "messageStart",
        *["contentBlockDelta"] * 2,
        "contentBlockStop",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert all(m.headers[":message-type"] == "event" for m in messages[:-1])
    assert all(m.headers[":content-type"] == "application/json" for m in messages)
    payloads = [json.loads(m.payload) for m in messages]
    assert payloads[0] == {"role": "assistant"}
    assert "".join(p["delta"]["text"] for p in payloads[1:3]) == "Hi there."
    assert payloads[4] == {
        "start": {"toolUse": {"toolUseId": "tu1", "name": "lookup_ticket"}},
        "contentBlockIndex": 1,
    }
    assert json.loads(payloads[5]["delta"]["toolUse"]["input"]) == {"ticket_id": 7}
    assert payloads[7] == {"stopReason": "tool_use"}
    assert set(payloads[8]) == {"usage", "metrics"}
    assert messages[-1].headers[":message-type"] == "exception"
    assert messages[-1].headers[":exception-type"] == "throttlingException"


# ChatBedrockConverse against the stub --------------------------------------------------------


def test_invoke_returns_the_scripted_text_and_usage(stub: ConverseStubServer) -> None:
    stub.script(reply_text="Your order ships tomorrow.", usage=Usage(21, 7))
    reply = chat_model(stub).invoke([SystemMessage("Be brief."), HumanMessage("Where is it?")])
    assert isinstance(reply, AIMessage)
    assert reply.content == "Your order ships tomorrow."
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == 21
    assert reply.usage_metadata["output_tokens"] == 7
    assert reply.usage_metadata["total_tokens"] == 28
    assert reply.response_metadata["stopReason"] == "end_turn"
    [request] = stub.requests
    assert request.model_id == MODEL_ID  # ':' arrives URL-encoded and is decoded
    assert not request.streaming
    assert request.system_text == "Be brief."
    assert request.last_user_text == "Where is it?"
    assert request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256")
    assert stub.pending() == 0


def test_stream_yields_chunks_that_add_up_to_the_text(stub: ConverseStubServer) -> None:
    text = "Your order ships tomorrow, from the Berlin warehouse."
    stub.script(reply_text=text, usage={"inputTokens": 30, "outputTokens": 12})
    chunks, total = collect(chat_model(stub), "Where is my order?")
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 3  # really streamed, word by word
    assert "".join(texts) == text
    assert total.usage_metadata is not None and total.usage_metadata["total_tokens"] == 42
    assert total.response_metadata["stopReason"] == "end_turn"
    assert [r.streaming for r in stub.requests] == [True]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_a_scripted_tool_call_comes_back_as_tool_calls(
    stub: ConverseStubServer, streaming: bool
) -> None:
    args = {"subject": "Printer on fire", "body": "It is on fire.", "priority": "urgent"}
    stub.script(
        reply_text="Opening a ticket.",
        tool_calls=[{"name": "create_ticket", "input": args, "toolUseId": "tooluse_1"}],
    )
    model = chat_model(stub)
    if streaming:
        _, reply = collect(model, "The printer is on fire")
    else:
        invoked = model.invoke("The printer is on fire")
        assert isinstance(invoked, AIMessage)
        reply = AIMessageChunk(content=invoked.content, tool_calls=invoked.tool_calls)
    assert reply.tool_calls == [
        {"name": "create_ticket", "args": args, "id": "tooluse_1", "type": "tool_call"}
    ]
    assert reply.text == "Opening a ticket."


def test_tool_calls_get_bedrock_like_ids_when_none_is_scripted(stub: ConverseStubServer) -> None:
    stub.script(tool_calls=[ToolUse("current_time")])
    reply = chat_model(stub).invoke("time?")
    assert isinstance(reply, AIMessage)
    [call] = reply.tool_calls
    assert call["name"] == "current_time" and call["args"] == {}
    assert str(call["id"]).startswith("tooluse_")
    assert reply.response_metadata["stopReason"] == "tool_use"


def test_throttling_is_a_429_client_error_until_the_script_runs_out(
    stub: ConverseStubServer,
) -> None:
    stub.throttle(times=2)
    stub.script(reply_text="finally")
    model = chat_model(stub)
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            model.invoke("hi")
        assert error_code(caught.value) == "ThrottlingException"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert caught.value.response["Error"]["Message"] == "Rate exceeded"
        assert isinstance(map_model_error(caught.value), RetryableError)
    assert model.invoke("hi").content == "finally"
    assert len(stub.requests) == 3  # botocore did not retry on its own


def test_throttling_before_a_stream_opens(stub: ConverseStubServer) -> None:
    stub.throttle()
    with pytest.raises(ClientError) as caught:
        collect(chat_model(stub), "hi")
    assert error_code(caught.value) == "ThrottlingException"
    _, total = collect(chat_model(stub), "hi")
    assert total.text.startswith("(offline model) You said: hi")


def test_botocore_retries_a_throttle_by_itself_when_allowed(stub: ConverseStubServer) -> None:
    stub.throttle(times=1)
    stub.script(reply_text="after one retry")
    model = chat_model(stub, Config(retries={"total_max_attempts": 2, "mode": "standard"}))
    reply = model.invoke("hi")
    assert reply.content == "after one retry"
    assert reply.response_metadata["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(stub.requests) == 2


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
@pytest.mark.parametrize(
    ("status", "code", "typed"),
    [
        (500, "InternalServerException", RetryableError),
        (503, "ServiceUnavailableException", RetryableError),
        (400, "ValidationException", PermanentError),
        (403, "AccessDeniedException", PermanentError),
    ],
)
def test_scripted_failures_surface_with_their_codes(
    stub: ConverseStubServer,
    streaming: bool,
    status: int,
    code: str,
    typed: type[Exception],
) -> None:
    stub.fail(status=status, error_type=code, message="scripted")
    model = chat_model(stub)
    with pytest.raises(ClientError) as caught:
        if streaming:
            collect(model, "hi")
        else:
            model.invoke("hi")
    assert error_code(caught.value) == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert isinstance(map_model_error(caught.value), typed)


def test_a_fault_after_the_stream_opened_is_an_event_stream_error(
    stub: ConverseStubServer,
) -> None:
    stub.fail_stream("throttlingException", "Rate exceeded", text_before="Partial ")
    stub.script(reply_text="not for streams")  # fail_stream only hits streaming requests
    assert chat_model(stub).invoke("hi").content == "not for streams"
    seen: list[str] = []
    with pytest.raises(EventStreamError) as caught:
        seen.extend(c.text for c in chat_model(stub).stream("hi"))
    assert "".join(seen) == "Partial "
    # botocore names the error after the event member: lower camel case.
    assert error_code(caught.value) == "throttlingException"


def test_a_throttle_after_the_stream_opened_maps_to_retryable(
    stub: ConverseStubServer,
) -> None:
    stub.fail_stream("throttlingException", "Rate exceeded")
    with pytest.raises(EventStreamError) as caught:
        collect(chat_model(stub), "hi")
    assert isinstance(map_model_error(caught.value), RetryableError)


def test_scripts_can_target_one_model(stub: ConverseStubServer) -> None:
    other = "amazon.nova-lite-v1:0"
    stub.script(reply_text="for nova", model_id=other)
    stub.script(reply_text="for anyone")
    assert chat_model(stub).invoke("hi").content == "for anyone"
    assert chat_model(stub, model_id=other).invoke("hi").content == "for nova"
    assert [r.model_id for r in stub.requests] == [MODEL_ID, other]


def test_unknown_model_ids_are_rejected_when_the_models_are_listed() -> None:
    with (
        ConverseStubServer(known_models={"amazon.nova-lite-v1:0"}) as stub,
        pytest.raises(ClientError) as caught,
    ):
        chat_model(stub).invoke("hi")
    assert error_code(caught.value) == "ValidationException"
    assert "model identifier is invalid" in str(caught.value)


def test_latency_is_injected(stub: ConverseStubServer) -> None:
    stub.latency_s = 0.3
    started = time.monotonic()
    chat_model(stub).invoke("hi")
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_a_slow_model_past_the_read_timeout_is_retryable(
    stub: ConverseStubServer, streaming: bool
) -> None:
    # invoke waits for the first byte; a stream has started and stalls between events
    stub.latency_s, stub.stream_delay_s = (0.0, 2.0) if streaming else (2.0, 0.0)
    stub.script(reply_text="too late for the client")
    model = chat_model(stub, Config(retries={"total_max_attempts": 1}, read_timeout=0.3))
    # botocore wraps a timeout before the response; inside an open stream urllib3's surfaces
    with pytest.raises((ReadTimeoutError, StreamReadTimeoutError)) as caught:
        if streaming:
            collect(model, "hi")
        else:
            model.invoke("hi")
    assert type(caught.value).__name__ == "ReadTimeoutError"
    assert isinstance(map_model_error(caught.value), RetryableError)


def test_default_reply_calls_a_tool_when_one_is_offered(stub: ConverseStubServer) -> None:
    tool = {
        "name": "create_ticket",
        "description": "Open a support ticket.",
        "parameters": {"type": "object", "properties": {"subject": {"type": "string"}}},
    }
    model = chat_model(stub).bind_tools([tool])
    reply = model.invoke("Please open a ticket about the broken printer")
    assert isinstance(reply, AIMessage)
    [call] = reply.tool_calls
    assert call["name"] == "create_ticket"
    assert call["args"]["subject"] == "the broken printer"
    assert stub.requests[0].tool_names == ["create_ticket"]


# request validation, as Bedrock does it ------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        (None, "messages field is required"),
        ([], "messages field is required"),
        (
            [
                {"role": "user", "content": [{"text": "a"}]},
                {"role": "user", "content": [{"text": "b"}]},
            ],
            "must alternate between user and assistant roles",
        ),
        ([{"role": "user", "content": []}], "messages.0 is empty"),
        (
            [
                {"role": "user", "content": [{"text": "a"}]},
                {"role": "assistant", "content": [{"text": "b"}]},
                {
                    "role": "user",
                    "content": [{"toolResult": {"toolUseId": "x", "content": [{"text": "r"}]}}],
                },
            ],
            "exceeds the number of toolUse blocks of previous turn",
        ),
        (
            [
                {"role": "user", "content": [{"text": "a"}]},
                {
                    "role": "assistant",
                    "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
                },
                {"role": "user", "content": [{"text": "never mind"}]},
            ],
            "Expected toolResult blocks at messages.2.content for the following Ids: t1",
        ),
    ],
    ids=["missing", "empty", "not-alternating", "empty-content", "orphan-result", "no-result"],
)
def test_malformed_requests_get_a_validation_exception(
    stub: ConverseStubServer, messages: list[dict[str, Any]] | None, needle: str
) -> None:
    kwargs: dict[str, Any] = {"modelId": MODEL_ID, "system": [{"text": "s"}]}
    if messages is not None:
        kwargs["messages"] = messages
    stub.script(reply_text="never sent")
    with pytest.raises(ClientError) as caught:
        runtime_client(stub).converse(**kwargs)
    assert error_code(caught.value) == "ValidationException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert needle in caught.value.response["Error"]["Message"]
    assert stub.pending() == 1  # an invalid request consumes no scripted reply
    assert isinstance(map_model_error(caught.value), PermanentError)


def raw_post(stub: ConverseStubServer, path: str, data: bytes) -> tuple[int, str, str]:
    request = urllib.request.Request(f"{stub.endpoint_url}{path}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, "", response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("x-amzn-ErrorType", ""), err.read().decode()


def test_what_is_not_a_converse_call_gets_a_bedrock_shaped_error(stub: ConverseStubServer) -> None:
    status, kind, _ = raw_post(stub, "/model/m/invoke", b"{}")
    assert (status, kind.split(":")[0]) == (404, "UnknownOperationException")
    status, kind, _ = raw_post(stub, "/model/m/converse", b"not json")
    assert (status, kind.split(":")[0]) == (400, "SerializationException")
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "toolConfig": 5}
    status, kind, text = raw_post(stub, "/model/m/converse", json.dumps(body).encode())
    assert (status, kind.split(":")[0]) == (500, "InternalServerException")
    assert "Converse stub error" in json.loads(text)["message"]


def test_endpoint_url_needs_a_running_server() -> None:
    server = ConverseStubServer()
    with pytest.raises(RuntimeError, match="start"):
        _ = server.endpoint_url
    with server:
        assert server.endpoint_url.startswith("http://127.0.0.1:")
    server.stop()  # idempotent


def test_boto3_converse_stream_reads_the_events(stub: ConverseStubServer) -> None:
    stub.script(reply_text="Two words", tool_calls=[ToolUse("lookup_ticket", {"ticket_id": 3})])
    response = runtime_client(stub).converse_stream(
        modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "status of 3"}]}]
    )
    events = list(response["stream"])
    assert [next(iter(e)) for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[-1]["metadata"]["usage"]["totalTokens"] > 0


# the real agent, one turn ------------------------------------------------------------------


class BedrockConversation:
    """The support example with ``ChatBedrockConverse`` on the stub, fed its log like the
    core does."""

    def __init__(self, stub: ConverseStubServer, *, streaming: bool) -> None:
        self.tickets = InMemoryTicketStore()
        agent = build_agent(load_settings(), self.tickets, ManualClock(), chat_model(stub))
        self.conversation = Conversation(agent, window=20, conversation_id="ticket:1")
        self.streaming = streaming

    @property
    def chunks(self) -> list[str]:
        return self.conversation.chunks

    def turn(self, text: str) -> TurnOutput:
        return self.conversation.turn(text, stream=self.streaming)


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_the_agent_opens_a_ticket_through_bedrock_converse(
    stub: ConverseStubServer, streaming: bool
) -> None:
    args = {"subject": "Printer on fire", "body": "The printer is on fire."}
    stub.script(tool_calls=[ToolUse("create_ticket", args, "tooluse_a1")], usage=Usage(100, 20))
    stub.script(reply_text="I opened ticket 1 for you.", usage=Usage(140, 9))
    conv = BedrockConversation(stub, streaming=streaming)

    out = conv.turn("The printer is on fire, please open a ticket")

    ticket = conv.tickets.get_ticket(1, customer="")
    assert ticket is not None and ticket.subject == "Printer on fire"
    assert out.reply_text == "I opened ticket 1 for you."
    assert out.tool_calls == ["create_ticket"]
    assert out.model_calls == 2
    assert (out.usage.input_tokens, out.usage.output_tokens) == (240, 29)
    assert [e.role for e in out.log] == ["human", "ai", "tool", "ai"]
    if streaming:
        assert "".join(conv.chunks) == out.reply_text
    first, second = stub.requests
    assert [first.streaming, second.streaming] == [streaming, streaming]
    assert first.system_text == system_prompt()
    assert "create_ticket" in first.tool_names
    assert first.last_user_text == "The printer is on fire, please open a ticket"
    result = second.messages[-1]["content"][0]["toolResult"]
    assert result["toolUseId"] == "tooluse_a1"
    assert "Opened ticket 1" in json.dumps(result["content"])
    assert stub.pending() == 0


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_the_agent_with_the_default_replies_over_two_turns(
    stub: ConverseStubServer, streaming: bool
) -> None:
    conv = BedrockConversation(stub, streaming=streaming)
    out = conv.turn("Please open a ticket about the login page being slow")
    assert out.reply_text == "Opened ticket 1: 'the login page being slow' (priority normal)."
    # The second turn sends the first from the log (toolUse/toolResult included): the stub
    # would answer ValidationException if the history broke Converse's rules.
    again = conv.turn("thanks")
    assert again.reply_text is not None and "You said: thanks" in again.reply_text
    roles = [m["role"] for m in stub.requests[-1].messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
