"""``OpenAIStubServer`` driven by the real clients: ``ChatOpenAI``, the ``openai`` SDK, and
agentworker's own ``make_model("openai:...")`` and support agent.

The clients are built with ``max_retries=0`` so each scripted error is seen once; the tests of
``make_model`` keep its one SDK retry, which honours the stub's ``retry-after``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from support_agent.tools import support_tools
from tests.fakes import InMemoryTicketStore, ManualClock
from tests.turns import Conversation
from workers.agent.models import make_model, map_model_error
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.errors import ConfigError, PermanentError, RetryableError
from workers.sandbox.openai_stub import OpenAIStubServer, ToolUse, Usage

MODEL = "gpt-4o-mini"
API_KEY = "test-key"
CREATE_TICKET = {
    "type": "function",
    "function": {
        "name": "create_ticket",
        "description": "Open a new support ticket.",
        "parameters": {
            "type": "object",
            "properties": {"subject": {"type": "string"}, "priority": {"type": "string"}},
            "required": ["subject"],
        },
    },
}


@pytest.fixture
def stub() -> Iterator[OpenAIStubServer]:
    with OpenAIStubServer() as server:
        yield server


def chat_model(stub: OpenAIStubServer, *, model: str = MODEL, **kwargs: Any) -> ChatOpenAI:
    """``ChatOpenAI`` on the stub; no SDK retries and a 10 s timeout unless ``kwargs`` say."""
    options: dict[str, Any] = {"max_retries": 0, "timeout": 10, **kwargs}
    return ChatOpenAI(model=model, base_url=stub.base_url, api_key=SecretStr(API_KEY), **options)


def sdk_client(stub: OpenAIStubServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key=API_KEY, max_retries=0, timeout=10)


def collect(
    model: Runnable[Any, BaseMessage], prompt: str | list[BaseMessage]
) -> tuple[list[AIMessageChunk], AIMessageChunk]:
    chunks = [c for c in model.stream(prompt) if isinstance(c, AIMessageChunk)]
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return chunks, total


def ask(model: Runnable[Any, BaseMessage], prompt: str, *, streaming: bool) -> AIMessage:
    """One model call, streamed or not, as one ``AIMessage``."""
    if streaming:
        _, total = collect(model, prompt)
        return AIMessage(
            content=total.content, tool_calls=total.tool_calls, usage_metadata=total.usage_metadata
        )
    reply = model.invoke(prompt)
    assert isinstance(reply, AIMessage)
    return reply


def raw_post(
    stub: OpenAIStubServer, body: Any, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{stub.endpoint_url}{path}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# the wire format ---------------------------------------------------------------------------


def test_a_completion_has_openais_shape(stub: OpenAIStubServer) -> None:
    stub.script(tool_calls=[ToolUse("create_ticket", {"subject": "Printer"}, "call_1")])
    status, headers, text = raw_post(stub, {"model": MODEL, "messages": [user("hi")]})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    body = json.loads(text)
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["model"]) == ("chat.completion", MODEL)
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert (message["role"], message["content"]) == ("assistant", None)
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "create_ticket", "arguments": '{"subject": "Printer"}'},
        }
    ]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_a_stream_has_openais_chunks(stub: OpenAIStubServer) -> None:
    args = {"subject": "The printer on the third floor", "priority": "high"}
    stub.script("Opening a ticket now.", [ToolUse("create_ticket", args, "call_9")], Usage(12, 8))
    request = {
        "model": MODEL,
        "messages": [user("printer")],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, text = raw_post(stub, request)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    events = sse_data(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    *with_choices, usage_chunk = chunks
    deltas = [c["choices"][0]["delta"] for c in with_choices]
    assert deltas[0]["role"] == "assistant"
    texts = [d["content"] for d in deltas if d.get("content")]
    assert texts == ["Opening ", "a ", "ticket ", "now."]
    fragments = [f for d in deltas for f in d.get("tool_calls", [])]
    assert fragments[0] == {
        "index": 0,
        "id": "call_9",
        "type": "function",
        "function": {"name": "create_ticket", "arguments": ""},
    }
    assert len(fragments) > 2  # the arguments arrive in pieces
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == args
    assert [c["choices"][0]["finish_reason"] for c in with_choices][-1] == "tool_calls"
    assert all(c["usage"] is None for c in with_choices)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 12
    assert usage_chunk["usage"]["total_tokens"] == 20


def test_a_stream_sends_no_usage_unless_asked(stub: OpenAIStubServer) -> None:
    status, _, text = raw_post(stub, {"model": MODEL, "messages": [user("hi")], "stream": True})
    assert status == 200
    chunks = [json.loads(e) for e in sse_data(text)[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_the_path_without_v1_is_served_too(stub: OpenAIStubServer) -> None:
    stub.script("short path")
    body = {"model": MODEL, "messages": [user("hi")]}
    status, _, text = raw_post(stub, body, "/chat/completions")
    assert status == 200
    assert json.loads(text)["choices"][0]["message"]["content"] == "short path"
    assert stub.requests[0].path == "/chat/completions"


# ChatOpenAI against the stub ---------------------------------------------------------------


def test_invoke_returns_the_scripted_text_and_usage(stub: OpenAIStubServer) -> None:
    stub.script("Your order ships tomorrow.", usage=Usage(21, 7))
    reply = chat_model(stub).invoke([SystemMessage("Be brief."), HumanMessage("Where is it?")])
    assert isinstance(reply, AIMessage)
    assert reply.content == "Your order ships tomorrow."
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == 21
    assert reply.usage_metadata["output_tokens"] == 7
    assert reply.usage_metadata["total_tokens"] == 28
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == MODEL
    [request] = stub.requests
    assert request.model == MODEL
    assert not request.streaming
    assert request.system_text == "Be brief."
    assert request.last_user_text == "Where is it?"
    assert request.authorization == f"Bearer {API_KEY}"
    assert stub.pending() == 0


def test_stream_yields_chunks_that_add_up_to_the_text(stub: OpenAIStubServer) -> None:
    text = "Your order ships tomorrow, from the Berlin warehouse."
    stub.script(text, usage={"prompt_tokens": 30, "completion_tokens": 12})
    chunks, total = collect(chat_model(stub, stream_usage=True), "Where is my order?")
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 3  # really streamed, word by word
    assert "".join(texts) == text
    assert total.usage_metadata is not None
    assert (total.usage_metadata["input_tokens"], total.usage_metadata["total_tokens"]) == (30, 42)
    assert total.response_metadata["finish_reason"] == "stop"
    [request] = stub.requests
    assert request.streaming and request.include_usage


def test_stream_without_stream_usage_reports_none(stub: OpenAIStubServer) -> None:
    stub.script("No usage here.")
    _, total = collect(chat_model(stub, stream_usage=False), "hi")
    assert total.text == "No usage here."
    assert total.usage_metadata is None
    assert not stub.requests[0].include_usage


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_a_scripted_tool_call_comes_back_as_tool_calls(
    stub: OpenAIStubServer, streaming: bool
) -> None:
    args = {"subject": "Printer on fire", "priority": "urgent"}
    stub.script(
        "Opening a ticket.",
        tool_calls=[{"name": "create_ticket", "arguments": json.dumps(args), "id": "call_abc"}],
    )
    model = chat_model(stub, stream_usage=True).bind_tools([CREATE_TICKET])
    reply = ask(model, "The printer is on fire", streaming=streaming)
    assert reply.tool_calls == [
        {"name": "create_ticket", "args": args, "id": "call_abc", "type": "tool_call"}
    ]
    assert reply.text == "Opening a ticket."
    [request] = stub.requests
    assert request.tool_names == ["create_ticket"]
    assert request.body["tools"][0]["function"]["parameters"]["required"] == ["subject"]


def test_tool_calls_get_openai_like_ids_when_none_is_scripted(stub: OpenAIStubServer) -> None:
    stub.script(tool_calls=[ToolUse("create_ticket", {"subject": "a"})])
    stub.script(tool_calls=[ToolUse("create_ticket", {"subject": "a"})])
    model = chat_model(stub).bind_tools([CREATE_TICKET])
    first, second = ask(model, "x", streaming=False), ask(model, "x", streaming=False)
    [a], [b] = first.tool_calls, second.tool_calls
    assert str(a["id"]).startswith("call_") and len(str(a["id"])) == 29
    assert a["id"] != b["id"]  # derived from the request number


def test_the_tool_result_goes_back_in_a_second_request(stub: OpenAIStubServer) -> None:
    stub.script(tool_calls=[ToolUse("create_ticket", {"subject": "Printer"}, "call_t1")])
    model = chat_model(stub).bind_tools([CREATE_TICKET])
    conversation: list[BaseMessage] = [HumanMessage("open a ticket about the printer")]
    first = model.invoke(conversation)
    assert isinstance(first, AIMessage)
    conversation += [first, ToolMessage("Opened ticket 7.", tool_call_id="call_t1")]
    second = model.invoke(conversation)  # unscripted: the offline model summarises the result
    assert second.content == "Opened ticket 7."
    sent = stub.requests[1].messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_t1"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"subject": "Printer"}
    assert (sent[2]["tool_call_id"], sent[2]["content"]) == ("call_t1", "Opened ticket 7.")


def test_a_dangling_tool_message_is_a_bad_request(stub: OpenAIStubServer) -> None:
    stub.script("never sent")
    with pytest.raises(openai.BadRequestError) as caught:
        chat_model(stub).invoke([HumanMessage("hi"), ToolMessage("result", tool_call_id="nope")])
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "messages.[1].role"
    assert "must be a response to a preceeding message with 'tool_calls'" in caught.value.message
    assert stub.pending() == 1  # an invalid request consumes no scripted reply
    assert isinstance(map_model_error(caught.value), PermanentError)


@pytest.mark.parametrize(
    ("messages", "param", "needle"),
    [
        (None, "messages", "Missing required parameter: 'messages'."),
        ([], "messages", "empty array"),
        ([{"role": "robot", "content": "x"}], "messages[0].role", "Invalid value: 'robot'"),
        (
            [
                user("a"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ],
                },
                user("never mind"),
            ],
            "messages.[1].role",
            "did not have response messages: c1",
        ),
        (
            [user("a"), {"role": "tool", "content": "r"}],
            "messages.[1].tool_call_id",
            "must have a 'tool_call_id'",
        ),
    ],
    ids=["missing", "empty", "bad-role", "unanswered-call", "no-call-id"],
)
def test_malformed_messages_get_openais_400(
    stub: OpenAIStubServer, messages: list[dict[str, Any]] | None, param: str, needle: str
) -> None:
    body: dict[str, Any] = {"model": MODEL}
    if messages is not None:
        body["messages"] = messages
    status, headers, text = raw_post(stub, body)
    assert (status, headers["Content-Type"]) == (400, "application/json")
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert needle in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"temperature": 3}, "temperature"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ],
    ids=["stream-options-without-stream", "temperature", "max-tokens", "tool-without-name"],
)
def test_malformed_parameters_get_openais_400(
    stub: OpenAIStubServer, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_client(stub).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body=extra
        )
    assert caught.value.param == param


def test_what_is_not_a_chat_completion_gets_an_openai_shaped_error(
    stub: OpenAIStubServer,
) -> None:
    status, _, text = raw_post(stub, {"model": MODEL}, "/v1/completions")
    assert status == 404
    assert json.loads(text)["error"]["message"] == "Invalid URL (POST /v1/completions)"
    status, _, text = raw_post(stub, b"not json")
    assert status == 400
    assert "could not parse the JSON body" in json.loads(text)["error"]["message"]
    assert stub.requests == []  # only parsed requests are recorded


# errors, and how agentworker maps them -----------------------------------------------------


def test_throttling_is_a_429_rate_limit_error_until_the_script_runs_out(
    stub: OpenAIStubServer,
) -> None:
    stub.throttle(times=2, retry_after=7)
    stub.script("finally")
    model = chat_model(stub)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            model.invoke("hi")
        assert caught.value.status_code == 429
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.type == "requests"
        assert caught.value.response.headers["retry-after"] == "7"
        assert isinstance(map_model_error(caught.value), RetryableError)
    assert model.invoke("hi").content == "finally"
    assert len(stub.requests) == 3  # max_retries=0: the SDK did not retry on its own


def test_the_sdk_retries_a_throttle_after_retry_after_when_allowed(
    stub: OpenAIStubServer,
) -> None:
    stub.throttle(retry_after=0.05)
    stub.script("after one retry")
    assert chat_model(stub, max_retries=1).invoke("hi").content == "after one retry"
    assert [r.header("x-stainless-retry-count") for r in stub.requests] == ["0", "1"]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
@pytest.mark.parametrize(
    ("status", "error", "typed"),
    [
        (500, openai.InternalServerError, RetryableError),
        (503, openai.InternalServerError, RetryableError),
        (400, openai.BadRequestError, PermanentError),
        (404, openai.NotFoundError, PermanentError),
    ],
)
def test_scripted_failures_surface_with_their_status(
    stub: OpenAIStubServer,
    streaming: bool,
    status: int,
    error: type[openai.APIStatusError],
    typed: type[Exception],
) -> None:
    stub.fail(status, "scripted")
    with pytest.raises(error) as caught:
        ask(chat_model(stub), "hi", streaming=streaming)
    assert caught.value.status_code == status
    assert caught.value.message.endswith("scripted")
    assert isinstance(map_model_error(caught.value), typed)


def test_a_scripted_bad_request_carries_param_and_code(stub: OpenAIStubServer) -> None:
    stub.bad_request("This model's maximum context length is 128000 tokens.", code="x_code")
    with pytest.raises(openai.BadRequestError) as caught:
        chat_model(stub).invoke("hi")
    assert caught.value.code == "x_code"
    assert isinstance(map_model_error(caught.value), PermanentError)


def test_a_stopped_stub_refuses_connections(stub: OpenAIStubServer) -> None:
    model, client = chat_model(stub), sdk_client(stub)
    assert model.invoke("warm the connection pool").content
    stub.stop()
    with pytest.raises(openai.APIConnectionError):
        model.invoke("hi")
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    # The SDK's own exception maps as it should.
    assert type(caught.value) is openai.APIConnectionError
    assert isinstance(map_model_error(caught.value), RetryableError)


def test_a_connection_dropped_mid_stream_after_some_chunks(stub: OpenAIStubServer) -> None:
    stub.fail_stream("Partial answer that")
    stub.script("not for streams")  # fail_stream only hits streaming requests
    model = chat_model(stub)
    assert model.invoke("hi").content == "not for streams"
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        seen.extend(c.text for c in model.stream("hi"))
    assert "".join(seen) == "Partial answer that"
    assert stub.pending() == 0


def test_an_error_event_mid_stream_is_an_api_error(stub: OpenAIStubServer) -> None:
    stub.fail_stream("Partial ", error_message="The server had an error.")
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        seen.extend(c.text for c in chat_model(stub).stream("hi"))
    assert "".join(seen) == "Partial "
    assert caught.value.message == "The server had an error."
    assert caught.value.type == "server_error"


def _connection_refused(stub: OpenAIStubServer) -> BaseException:
    model = chat_model(stub)
    stub.stop()
    with pytest.raises(openai.APIConnectionError) as caught:
        model.invoke("hi")
    return caught.value


def _dropped_mid_stream(stub: OpenAIStubServer) -> BaseException:
    stub.fail_stream("Partial ")
    with pytest.raises(openai.APIConnectionError) as caught:
        collect(chat_model(stub), "hi")
    return caught.value


def _timed_out(stub: OpenAIStubServer) -> BaseException:
    stub.latency_s = 1.0
    with pytest.raises(openai.APITimeoutError) as caught:
        chat_model(stub, timeout=0.2).invoke("hi")
    return caught.value


def _error_event_mid_stream(stub: OpenAIStubServer) -> BaseException:
    stub.fail_stream(error_message="The server had an error.", error_type="server_error")
    with pytest.raises(openai.APIError) as caught:
        collect(chat_model(stub), "hi")
    return caught.value


@pytest.mark.parametrize(
    "provoke",
    [_connection_refused, _dropped_mid_stream, _timed_out, _error_event_mid_stream],
    ids=["refused", "dropped-mid-stream", "timeout", "error-event-mid-stream"],
)
def test_transient_chatopenai_failures_map_to_retryable(
    stub: OpenAIStubServer, provoke: Any
) -> None:
    exc = provoke(stub)
    assert isinstance(map_model_error(exc), RetryableError), type(exc).__name__


def test_known_models_and_api_key_are_checked_when_configured() -> None:
    with OpenAIStubServer(known_models={MODEL}, api_key=API_KEY) as stub:
        with pytest.raises(openai.NotFoundError) as missing:
            chat_model(stub, model="gpt-nonexistent").invoke("hi")
        assert missing.value.code == "model_not_found"
        wrong_key = ChatOpenAI(
            model=MODEL, base_url=stub.base_url, api_key=SecretStr("sk-wrong-key"), max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong_key.invoke("hi")
        assert denied.value.code == "invalid_api_key"
        assert isinstance(map_model_error(denied.value), PermanentError)
        assert chat_model(stub).invoke("hi").content


def test_scripts_can_target_one_model(stub: OpenAIStubServer) -> None:
    stub.script("for gpt-4o", model="gpt-4o")
    stub.script("for anyone")
    assert chat_model(stub).invoke("hi").content == "for anyone"
    assert chat_model(stub, model="gpt-4o").invoke("hi").content == "for gpt-4o"
    assert [r.model for r in stub.requests] == [MODEL, "gpt-4o"]


def test_base_url_needs_a_running_server() -> None:
    server = OpenAIStubServer()
    with pytest.raises(RuntimeError, match="start"):
        _ = server.base_url
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    server.stop()  # idempotent


# agentworker's model factory ---------------------------------------------------------------


def test_make_model_openai_talks_to_the_stub(
    stub: OpenAIStubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    model = make_model("openai:gpt-4o-mini")
    assert isinstance(model, ChatOpenAI)
    stub.script("hello from the stub", usage=Usage(5, 4))
    reply = model.invoke("hi")
    assert reply.content == "hello from the stub"
    _, total = collect(model, "hi again")
    assert total.usage_metadata is not None  # make_model turns stream_usage on
    plain, streamed = stub.requests
    assert plain.model == streamed.model == "gpt-4o-mini"
    assert plain.authorization == streamed.authorization == f"Bearer {API_KEY}"
    assert plain.body["max_completion_tokens"] == 1024
    assert plain.body["temperature"] == 0.0
    assert streamed.streaming and streamed.include_usage


def test_make_model_retries_a_throttle_once_inside_the_call(
    stub: OpenAIStubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    model = make_model("openai:gpt-4o-mini")
    stub.throttle(times=2, retry_after=0.05)
    with pytest.raises(openai.RateLimitError) as caught:
        model.invoke("hi")
    assert len(stub.requests) == 2  # max_retries=1: one retry, then the workflow's turn
    assert isinstance(map_model_error(caught.value), RetryableError)


def test_make_model_openai_without_a_key_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_model("openai:gpt-4o-mini")


# the default reply: the offline model, tools included --------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_default_reply_opens_a_ticket_with_the_support_tools(
    stub: OpenAIStubServer, streaming: bool
) -> None:
    tools = support_tools(InMemoryTicketStore(), ManualClock())
    model = chat_model(stub, stream_usage=True).bind_tools(tools)
    reply = ask(model, "please open a ticket about the printer", streaming=streaming)
    [call] = reply.tool_calls
    assert call["name"] == "create_ticket"
    assert call["args"] == {
        "subject": "the printer",
        "body": "please open a ticket about the printer",
    }
    assert str(call["id"]).startswith("call_")
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] > 0
    assert set(stub.requests[0].tool_names) == {t.name for t in tools}


def test_default_reply_without_tools_is_the_offline_text(stub: OpenAIStubServer) -> None:
    reply = chat_model(stub).invoke("please open a ticket about the printer")
    assert reply.content == (
        "(offline model) You said: please open a ticket about the printer"
        " [message 1 in this conversation's context]"
    )


def test_new_ids_give_fresh_tool_call_ids_on_every_call() -> None:
    prompt = "please open a ticket about the printer"
    with OpenAIStubServer() as steady, OpenAIStubServer(new_ids=True) as fresh:
        ids: dict[str, list[str]] = {}
        for name, server in (("steady", steady), ("fresh", fresh)):
            model = chat_model(server).bind_tools([CREATE_TICKET])
            ids[name] = [
                str(ask(model, prompt, streaming=s).tool_calls[0]["id"]) for s in (False, True)
            ]
        assert ids["steady"][0] == ids["steady"][1]  # the offline model's ids are deterministic
        assert ids["fresh"][0] != ids["fresh"][1]
        assert all(i.startswith("call_") and len(i) == 29 for i in ids["fresh"])
        # per reply: a scripted id is replaced too
        steady.script(tool_calls=[ToolUse("create_ticket", {}, "call_fixed")], new_ids=True)
        reply = ask(chat_model(steady).bind_tools([CREATE_TICKET]), prompt, streaming=False)
        assert reply.tool_calls[0]["id"] not in ("call_fixed", ids["steady"][0])


# the support agent, one whole turn ---------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_the_support_agent_opens_a_ticket_with_an_openai_model(
    stub: OpenAIStubServer, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    # Wired as agentworker serves it: AGENTWORKER_MODEL's model, the default graph.
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    stub.new_ids = True  # as a real model's: nothing may depend on the offline model's ids
    tickets = InMemoryTicketStore()
    agent = build_agent(load_settings(model="openai:gpt-4o-mini"), tickets, ManualClock())
    conv = Conversation(agent)

    out = conv.turn("please open a ticket about the printer", stream=streaming)

    ticket = tickets.get_ticket(1, customer="")
    assert ticket is not None and ticket.subject == "the printer"
    assert out.reply_text == "Opened ticket 1: 'the printer' (priority normal)."
    assert out.tool_calls == ["create_ticket"]
    assert out.model_calls == 2
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    if streaming:
        assert "".join(conv.chunks) == out.reply_text
    first, second = stub.requests
    assert [first.streaming, second.streaming] == [streaming, streaming]
    assert first.model == "gpt-4o-mini"
    assert first.system_text and "create_ticket" in first.tool_names
    call, result = second.messages[-2:]
    assert result["role"] == "tool"
    assert result["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "Opened ticket 1" in result["content"]


def test_a_model_the_app_builds_itself_reports_the_servers_usage_in_a_turn(
    stub: OpenAIStubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As LangGraph's templates build theirs: ``init_chat_model`` in the node, nothing said
    of stream usage, ``OPENAI_BASE_URL`` set (LangChain then leaves usage off)."""
    from langchain.chat_models import init_chat_model
    from langgraph.graph import START, MessagesState, StateGraph

    from workers.agent.runner import GraphTurnAgent

    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)

    def call_model(state: MessagesState) -> dict[str, Any]:
        model = init_chat_model("openai:gpt-4o-mini", max_retries=0)
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node(call_model)
    builder.add_edge(START, "call_model")
    conv = Conversation(GraphTurnAgent(builder))
    stub.script("Streamed, and counted.", usage=Usage(17, 6))
    out = conv.turn("hi")
    assert out.reply_text == "Streamed, and counted."
    assert (out.usage.input_tokens, out.usage.output_tokens) == (17, 6)
    [request] = stub.requests
    assert request.streaming and request.include_usage
    # outside a turn LangChain's default stands
    stub.script("Not counted.")
    collect(chat_model(stub), "hi")
    assert stub.requests[-1].streaming and not stub.requests[-1].include_usage
