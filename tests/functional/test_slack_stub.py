"""``SlackWebStub`` and ``SocketModeStub`` driven by the real ``slack_sdk`` clients: WebClient
(messages, ``chat_stream``, throttling through ``RateLimitErrorRetryHandler``, a workspace
that refuses streaming) and the builtin ``SocketModeClient`` (hello, envelopes, acks,
reconnecting on ``disconnect``)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from workers.sandbox.slack_stub import (
    APP_TOKEN,
    BOT_TOKEN,
    RateLimit,
    SlackWebStub,
    SocketModeStub,
    events_api_payload,
    message_event,
    reaction_event,
)

DM = "D0STUBDM"
CHANNEL = "C0STUBCHAN"


@pytest.fixture
def stub() -> Iterator[SlackWebStub]:
    with SlackWebStub() as server:
        yield server


@pytest.fixture
def client(stub: SlackWebStub) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=stub.url, retry_handlers=[])


def slack_error(call: Any) -> SlackApiError:
    """The SlackApiError that ``call()`` raises."""
    with pytest.raises(SlackApiError) as caught:
        call()
    return caught.value


def test_post_update_and_the_thread_a_user_sees(stub: SlackWebStub, client: WebClient) -> None:
    question = stub.seed_message(DM, "what is the weather?")
    client.assistant_threads_setStatus(
        channel_id=DM, thread_ts=question, status="is thinking...", loading_messages=["Hmm"]
    )
    client.assistant_threads_setTitle(channel_id=DM, thread_ts=question, title="Weather")
    client.assistant_threads_setSuggestedPrompts(
        channel_id=DM, thread_ts=question, prompts=[{"title": "Tomorrow?", "message": "And then?"}]
    )
    thinking = stub.assistant_thread(DM, question)
    assert (thinking.status, thinking.loading_messages) == ("is thinking...", ["Hmm"])

    posted = client.chat_postMessage(channel=DM, thread_ts=question, text="Sunny")
    ts = posted["ts"]
    assert posted["channel"] == DM and posted["message"]["text"] == "Sunny"
    assert stub.assistant_thread(DM, question).status == ""  # a reply clears the status
    client.chat_update(channel=DM, ts=ts, text="Sunny, 24 °C")
    client.reactions_add(channel=DM, timestamp=question, name="eyes")

    assert stub.final_text(ts) == "Sunny, 24 °C"
    assert [m.ts for m in stub.thread_messages(DM, question)] == [ts]
    thread = stub.assistant_thread(DM, question)
    assert (thread.title, thread.statuses) == ("Weather", ["is thinking..."])
    assert thread.prompts == [{"title": "Tomorrow?", "message": "And then?"}]
    assert stub.reactions(DM, question) == ["eyes"]
    assert slack_error(
        lambda: client.reactions_add(channel=DM, timestamp=question, name="eyes")
    ).response["error"] == ("already_reacted")
    replies = client.conversations_replies(channel=DM, ts=question)["messages"]
    assert [m["text"] for m in replies] == ["what is the weather?", "Sunny, 24 °C"]
    assert [c.method for c in stub.calls()][-3:] == [
        "reactions.add",
        "reactions.add",
        "conversations.replies",
    ]
    assert stub.wait_calls("chat.update", 1, timeout=1)[0].args["text"] == "Sunny, 24 °C"


def test_tokens_are_checked_as_slack_does(stub: SlackWebStub) -> None:
    def error_of(client: WebClient, method: str) -> str:
        return str(slack_error(lambda: client.api_call(method)).response["error"])

    assert error_of(WebClient(base_url=stub.url), "auth.test") == "not_authed"
    assert error_of(WebClient(token="xoxb-wrong", base_url=stub.url), "auth.test") == "invalid_auth"
    assert error_of(WebClient(token=APP_TOKEN, base_url=stub.url), "auth.test") == (
        "not_allowed_token_type"
    )
    bot = WebClient(token=BOT_TOKEN, base_url=stub.url)
    assert error_of(bot, "apps.connections.open") == "not_allowed_token_type"
    assert error_of(bot, "chat.unknownThing") == "unknown_method"
    url = bot.apps_connections_open(app_token=APP_TOKEN)["url"]
    assert url.startswith(f"ws://127.0.0.1:{stub.socket_mode.port}/link/?ticket=")

    # a form body with the token in it, as Slack also accepts
    form = f"token={BOT_TOKEN}&channel={DM}&text=plain+form".encode()
    request = urllib.request.Request(f"{stub.url}chat.postMessage", data=form, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["ok"] is True and stub.final_text(answer["ts"]) == "plain form"
    assert stub.calls("chat.postMessage")[-1].token == BOT_TOKEN


def test_chat_stream_accumulates_markdown_until_stopped(
    stub: SlackWebStub, client: WebClient
) -> None:
    streamer = client.chat_stream(channel=DM, thread_ts="1700000000.000100", buffer_size=10)
    for piece in ["**Sunny** ", "all day, ", "then rain", " later."]:
        streamer.append(markdown_text=piece)
    feedback = [{"type": "context", "elements": [{"type": "mrkdwn", "text": "AI"}]}]
    stopped = streamer.stop(markdown_text="\nBye", blocks=feedback)
    assert streamer.ts is not None

    assert stopped["message"]["text"] == "**Sunny** all day, then rain later.\nBye"
    assert stub.final_text(streamer.ts) == "**Sunny** all day, then rain later.\nBye"
    message = stub.message(streamer.ts)
    assert message.stream_state == "stopped" and message.blocks == feedback
    methods = [c.method for c in stub.calls()]
    assert methods == ["chat.startStream", "chat.appendStream", "chat.stopStream"]
    # the SDK sends text as markdown chunks, and what it still buffered with the stop
    assert stub.calls("chat.stopStream")[0].args["chunks"] == [
        {"type": "markdown_text", "text": " later.\nBye"}
    ]

    with pytest.raises(SlackRequestError):  # the SDK refuses on its own side
        streamer.append(markdown_text="more")
    late = slack_error(
        lambda: client.chat_appendStream(channel=DM, ts=str(streamer.ts), markdown_text="more")
    )
    assert late.response["error"] == "message_not_in_streaming_state"
    assert stub.final_text(streamer.ts).endswith("Bye")


def test_stream_limits_answer_slacks_errors() -> None:
    now = [1000.0]
    with SlackWebStub(append_rate=RateLimit(2, 60.0), clock=lambda: now[0]) as stub:
        client = WebClient(token=BOT_TOKEN, base_url=stub.url, retry_handlers=[])
        missing = slack_error(lambda: client.chat_startStream(channel=CHANNEL, thread_ts="1.1"))
        assert missing.response["error"] == "missing_recipient_team_id"

        ts = str(client.chat_startStream(channel=DM, thread_ts="1.1", markdown_text="a")["ts"])
        too_long = slack_error(
            lambda: client.chat_appendStream(channel=DM, ts=ts, markdown_text="x" * 12_001)
        )
        assert too_long.response["error"] == "msg_too_long"
        client.chat_appendStream(channel=DM, ts=ts, markdown_text="b")
        throttled = slack_error(
            lambda: client.chat_appendStream(channel=DM, ts=ts, markdown_text="c")
        )
        assert throttled.response.status_code == 429
        assert throttled.response.headers["Retry-After"] == "60"
        assert throttled.response["error"] == "ratelimited"

        client.assistant_threads_setStatus(channel_id=DM, thread_ts="1.9", status="is typing...")
        assert stub.assistant_thread(DM, "1.9").status == "is typing..."

        now[0] += 301.0  # past the stream's and the status's lifetimes, and the window
        assert stub.assistant_thread(DM, "1.9").status == ""
        expired = slack_error(
            lambda: client.chat_appendStream(channel=DM, ts=ts, markdown_text="d")
        )
        assert expired.response["error"] == "message_not_in_streaming_state"
        assert slack_error(lambda: client.chat_stopStream(channel=DM, ts=ts)).response["error"] == (
            "message_not_in_streaming_state"
        )
        assert stub.final_text(ts) == "ab"
        unknown = slack_error(
            lambda: client.chat_appendStream(channel=DM, ts="9.9", markdown_text="e")
        )
        assert unknown.response["error"] == "message_not_found"


def test_throttled_update_gets_through_with_the_sdks_retry_handler(stub: SlackWebStub) -> None:
    client = WebClient(
        token=BOT_TOKEN, base_url=stub.url, retry_handlers=[RateLimitErrorRetryHandler()]
    )
    ts = client.chat_postMessage(channel=DM, text="draft")["ts"]
    client.chat_update(channel=DM, ts=ts, text="draft 2")
    client.chat_update(channel=DM, ts=ts, text="final")  # throttled once, then retried

    first, throttled, retried = stub.calls("chat.update")
    assert (throttled.status, throttled.error) == (429, "ratelimited")
    assert retried.ok and retried.at - throttled.at >= 1.0  # Retry-After: 1 was honoured
    assert first.ok and stub.final_text(ts) == "final"


def test_injected_faults_are_answered_once_each(stub: SlackWebStub, client: WebClient) -> None:
    stub.fail("chat.postMessage", retry_after=7)
    stub.fail("chat.postMessage", status=200, error="channel_not_found", retry_after=None)
    throttled = slack_error(lambda: client.chat_postMessage(channel=DM, text="hi"))
    assert throttled.response.status_code == 429
    assert throttled.response.headers["Retry-After"] == "7"
    refused = slack_error(lambda: client.chat_postMessage(channel=DM, text="hi"))
    assert refused.response["error"] == "channel_not_found"
    assert "Retry-After" not in refused.response.headers
    assert client.chat_postMessage(channel=DM, text="hi")["ok"] is True
    assert stub.pending() == 0


def test_a_workspace_that_refuses_streaming_leaves_post_and_update(
    stub: SlackWebStub, client: WebClient
) -> None:
    stub.refuse_streaming()
    streamer = client.chat_stream(channel=DM, thread_ts="1.2", buffer_size=4)
    refused = slack_error(lambda: streamer.append(markdown_text="Hello"))
    assert refused.response["error"] == "not_allowed_token_type"
    assert streamer.ts is None

    ts = client.chat_postMessage(channel=DM, thread_ts="1.2", text="Hello")["ts"]
    client.chat_update(channel=DM, ts=ts, text="Hello, world")
    assert [m.text for m in stub.thread_messages(DM, "1.2")] == ["Hello, world"]

    stub.allow_streaming()
    assert client.chat_startStream(channel=DM, thread_ts="1.2")["ok"] is True


def test_socket_mode_client_connects_acks_and_reconnects(stub: SlackWebStub) -> None:
    received: list[SocketModeRequest] = []
    raw_messages: list[str] = []
    got_event = threading.Event()

    def ack(client: BaseSocketModeClient, request: SocketModeRequest) -> None:
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        received.append(request)
        got_event.set()

    socket_client = SocketModeClient(
        app_token=APP_TOKEN,
        web_client=WebClient(token=BOT_TOKEN, base_url=stub.url),
        on_message_listeners=[raw_messages.append],
    )
    socket_client.socket_mode_request_listeners.append(ack)
    try:
        socket_client.connect()
        stub.socket_mode.wait_connections(1)
        event = message_event("hello bot", channel=DM)
        first = stub.socket_mode.send_event(events_api_payload(event))
        ack_1 = stub.socket_mode.wait_ack(first)
        assert ack_1.in_time and ack_1.connection_id == 1
        assert got_event.wait(2) and received[0].payload["event"]["text"] == "hello bot"
        assert json.loads(raw_messages[0])["type"] == "hello"

        # Slack closes the old socket some time after asking for a refresh. The builtin
        # client reads one connection at a time and its old read blocks until that close
        # (or its 3 s receive timeout), so without the close the next ack would be late.
        assert stub.socket_mode.disconnect("refresh_requested", close_after_s=0.1) == 1
        stub.socket_mode.wait_connections(2)
        deadline = time.monotonic() + 3
        while stub.socket_mode.open_connections != 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the client closes the old connection after the new one opens
        assert stub.socket_mode.open_connections == 1
        reaction = reaction_event("reaction_added", reaction="+1", channel=DM, ts="1.3")
        second = stub.socket_mode.send_event(events_api_payload(reaction))
        ack_2 = stub.socket_mode.wait_ack(second)
        assert ack_2.in_time and ack_2.connection_id == 2
        assert [c.method for c in stub.calls("apps.connections.open")] == [
            "apps.connections.open",
            "apps.connections.open",
        ]
    finally:
        # closing from the server's side frees the client's blocked read (see above), so
        # close() returns at once instead of after the 3 s receive timeout
        socket_client.auto_reconnect_enabled = False
        stub.socket_mode.drop_connections()
        socket_client.close()


def test_socket_mode_reports_a_late_ack_and_refuses_unknown_tickets() -> None:
    now = [0.0]
    with SocketModeStub(clock=lambda: now[0]) as socket_mode:
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{socket_mode.port}/link/?ticket=forged").close()

        with connect(socket_mode.issue_url()) as websocket:
            hello = json.loads(websocket.recv(timeout=2))
            assert hello["type"] == "hello" and hello["num_connections"] == 1
            envelope_id = socket_mode.send_event({"command": "/weather"}, "slash_commands")
            envelope = json.loads(websocket.recv(timeout=2))
            assert envelope["envelope_id"] == envelope_id
            assert envelope["accepts_response_payload"] is True
            now[0] += 3.5
            websocket.send(json.dumps({"envelope_id": envelope_id, "payload": {"text": "ok"}}))
            late = socket_mode.wait_ack(envelope_id, timeout=2)
        assert late.payload == {"text": "ok"} and late.latency_s == 3.5 and not late.in_time
