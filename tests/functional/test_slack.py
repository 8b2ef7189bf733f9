"""Slack over real HTTP: the Slack sink against a local Web API stub, and a Slack thread end to
end on the AWS runtime on moto (signed requests through the ``slack`` handler, the workflow,
replies and approval buttons posted to the stub, credentials from Secrets Manager)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from events.outbound import ApprovalRequest, Reply, ReplyChunk
from tests.functional.aws_env import Aws, aws, lambda_context
from tests.functional.slack_env import (
    BOT_TOKEN,
    SIGNING_SECRET,
    SlackApiStub,
    slack_api_stub,
    slack_fixture,
    slack_request,
)
from workers import bootstrap
from workers.adapters.slack import SlackReplySink, SlackWeb
from workers.errors import PermanentError, RetryableError
from workers.handlers import slack

__all__ = ["aws"]  # the fixture

CID = "slack:T111:C111:1726133698.626339"


@pytest.fixture
def stub() -> Iterator[SlackApiStub]:
    with slack_api_stub() as running:
        yield running


def _sink(stub: SlackApiStub, token: str | None = BOT_TOKEN) -> SlackReplySink:
    web = SlackWeb(lambda: SecretStr(token) if token else None, api_url=stub.url, timeout=5)
    return SlackReplySink(web)


def test_a_reply_is_posted_to_its_thread(stub: SlackApiStub) -> None:
    from workers.adapters.slack_stream import reply_metadata

    reply = Reply(conversation_id=CID, turn_id="t", text="Hello, thread.")
    _sink(stub).send(reply)
    [call] = stub.posted()
    assert call.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert call.headers["content-type"].startswith("application/json")
    assert call.body == {
        "channel": "C111",
        "thread_ts": "1726133698.626339",
        "text": "Hello, thread.",
        "metadata": reply_metadata(CID, reply.reply_id),
    }


def test_an_approval_request_is_posted_with_approve_and_deny_buttons(stub: SlackApiStub) -> None:
    ask = ApprovalRequest(
        conversation_id=CID,
        turn_id="t",
        interrupt_id="int-7",
        tool="update_ticket",
        args={"ticket_id": 1, "status": "closed"},
        text="Close ticket 1?",
    )
    _sink(stub).send(ask)
    [call] = stub.posted()
    assert call.body["channel"] == "C111" and call.body["thread_ts"] == "1726133698.626339"
    actions = [b for b in call.body["blocks"] if b["type"] == "actions"]
    [buttons] = [a["elements"] for a in actions]
    assert [(b["action_id"], b["value"]) for b in buttons] == [
        ("approve", f"{CID}|int-7"),
        ("deny", f"{CID}|int-7"),
    ]


def test_other_conversations_and_a_channels_pieces_are_not_posted(stub: SlackApiStub) -> None:
    """A channel's stream needs its recipient, which the turn's first status names: a
    turn that named nobody posts its reply once, as it is."""
    from events.outbound import ReplyChunk

    sink = _sink(stub)
    sink.send(Reply(conversation_id="ticket:1", turn_id="t", text="not for Slack"))
    sink.send_chunk(ReplyChunk(conversation_id=CID, turn_id="t", index=0, delta="Hel"))
    _sink(stub, token=None).send(Reply(conversation_id=CID, turn_id="t", text="no token"))
    assert stub.calls == []
    sink.send(Reply(conversation_id=CID, turn_id="t", text="Hello"))
    [posted] = stub.posted()
    assert posted.body["text"] == "Hello"


FAILURES: list[tuple[tuple[int, dict[str, Any], dict[str, str]], type[Exception], str]] = [
    ((429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "3"}), RetryableError, "after 3"),
    ((503, {"ok": False, "error": "x"}, {}), RetryableError, r"failed \(x\)"),
    ((503, {"ok": False}, {}), RetryableError, "HTTP 503"),
    ((200, {"ok": False, "error": "ratelimited"}, {}), RetryableError, "ratelimited"),
    ((200, {"ok": False, "error": "invalid_auth"}, {}), PermanentError, "invalid_auth"),
    ((200, {"ok": False, "error": "channel_not_found"}, {}), PermanentError, "channel_not_found"),
    ((404, {"ok": False}, {}), PermanentError, "HTTP 404"),
]


@pytest.mark.parametrize(("answer", "error", "match"), FAILURES)
def test_web_api_failures_are_typed(
    stub: SlackApiStub,
    answer: tuple[int, dict[str, Any], dict[str, str]],
    error: type[Exception],
    match: str,
) -> None:
    stub.answer(*answer)
    with pytest.raises(error, match=match) as raised:
        _sink(stub).send(Reply(conversation_id=CID, turn_id="t", text="hi"))
    assert BOT_TOKEN not in str(raised.value)
    if error is PermanentError:
        assert not isinstance(raised.value, RetryableError)


def test_an_unreachable_web_api_is_retryable() -> None:
    with slack_api_stub() as gone:
        url = gone.url
    sink = SlackReplySink(SlackWeb(lambda: SecretStr(BOT_TOKEN), api_url=url, timeout=2))
    with pytest.raises(RetryableError, match="chat.postMessage failed"):
        sink.send(Reply(conversation_id=CID, turn_id="t", text="hi"))


# --- end to end on the AWS runtime ------------------------------------------------------------


def test_a_mention_in_a_channel_streams_into_its_thread_and_a_click_decides_on_aws(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AWS runtime, a mention in a channel (credentials from Secrets Manager): the
    ``turn`` function sets the thread's status and streams the reply into the thread,
    addressed to the member who asked; Slack's retry (a new event id) is one message; the
    approval's buttons are clicked, the message shows the decision and loses them."""
    from workers.sandbox.slack_stub import BOT_TOKEN as STUB_BOT
    from workers.sandbox.slack_stub import TEAM_ID, USER_ID, SlackWebStub
    from workers.sandbox.slack_stub import events_api_payload as payload
    from workers.sandbox.slack_stub import message_event as said

    with SlackWebStub(bot_token=STUB_BOT) as web:
        secret = {"signing_secret": SIGNING_SECRET, "bot_token": STUB_BOT}
        arn = aws.session.client("secretsmanager").create_secret(
            Name="agentworker/slack", SecretString=json.dumps(secret)
        )["ARN"]
        monkeypatch.setenv("AGENTWORKER_SLACK_SECRET_ARN", arn)
        monkeypatch.setenv("AGENTWORKER_SLACK_API_URL", web.url)
        bootstrap.reset_aws_deps()

        # A conversation that is not Slack's is answered on SNS and never posted to Slack.
        aws.send_sqs("ticket:20", "hello")
        aws.pump()
        [reply] = aws.replies()
        assert reply["conversation_id"] == "ticket:20"
        aws.wait_executions_done()
        assert web.calls() == []

        def send(event: dict[str, Any], **headers: str) -> dict[str, Any]:
            answer: dict[str, Any] = slack.handler(
                slack_request(payload(event), headers=headers), lambda_context()
            )
            assert answer["statusCode"] == 200, answer
            return answer

        channel = "C0AWSCHAN"
        mention = said(
            "<@U0STUBBOT> please open a ticket about the printer",
            channel=channel,
            event_type="app_mention",
        )
        send(mention)
        web.wait_calls("chat.stopStream", 1, timeout=30)
        aws.wait_executions_done()
        [start] = web.calls("chat.startStream")
        assert (start.args["channel"], start.args["thread_ts"]) == (channel, mention["ts"])
        assert (start.args["recipient_team_id"], start.args["recipient_user_id"]) == (
            TEAM_ID,
            USER_ID,
        )
        assert start.token == STUB_BOT  # the bot token from the secret
        [opened] = web.thread_messages(channel, mention["ts"])
        assert opened.text.startswith("Opened ticket 1") and opened.stream_state == "stopped"
        status = web.assistant_thread(channel, mention["ts"])
        assert status.statuses[0] == "is thinking..." and status.status == ""

        # Slack retries the next message (a new event id, the same channel+ts): one turn.
        close = said("close ticket 1", channel=channel, thread_ts=mention["ts"])
        send(close)
        again = send(close, **{"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
        assert json.loads(again["body"])["duplicate"] is True
        [ask] = web.wait_calls("chat.postMessage", 1, timeout=30)  # the buttons
        aws.wait_executions_done()
        state = bootstrap.aws_deps().store.get_conversation(
            f"slack:{TEAM_ID}:{channel}:{mention['ts']}"
        )
        assert state is not None and state.status == "awaiting_approval"

        [approve, _] = ask.args["blocks"][-1]["elements"]
        click = slack_fixture("block_actions_with_message.json")
        click["team"]["id"] = TEAM_ID
        click["channel"]["id"] = click["container"]["channel_id"] = channel
        click["actions"] = [
            {**click["actions"][0], "action_id": "approve", "value": approve["value"]}
        ]
        click["message"] = {**ask.response["message"], "ts": ask.response["ts"]}
        clicked = slack.handler(slack_request(click, form=True), lambda_context())
        assert clicked["statusCode"] == 200 and "body" not in clicked
        web.wait_calls("chat.stopStream", 2, timeout=30)
        aws.wait_executions_done()
        decided = web.message(str(ask.response["ts"]))  # the buttons are gone, who decided shown
        assert all(b["type"] != "actions" for b in decided.blocks)
        assert f"Approved by <@{click['user']['id']}>" in decided.text
        done = web.thread_messages(channel, mention["ts"])[-1]
        assert "is closed" in done.text
        assert len(web.thread_messages(channel, mention["ts"])) == 3  # nothing twice


def test_a_direct_message_streams_its_reply_with_its_status_on_aws(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AWS runtime, a direct message (an assistant thread): the ``turn`` function sets
    the thread's status, streams the reply (``chat.startStream`` ... ``stopStream``) and the
    streamed message ends as the committed reply; Slack's retry of the event is one message."""
    from workers.sandbox.slack_stub import BOT_TOKEN as STUB_BOT
    from workers.sandbox.slack_stub import TEAM_ID, SlackWebStub, events_api_payload, message_event

    with SlackWebStub(bot_token=STUB_BOT) as web:
        monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", SIGNING_SECRET)
        monkeypatch.setenv("AGENTWORKER_SLACK_BOT_TOKEN", STUB_BOT)
        monkeypatch.setenv("AGENTWORKER_SLACK_API_URL", web.url)
        bootstrap.reset_aws_deps()
        aws.stub.script(reply_text="Hello from Bedrock, streamed into the thread.")
        event = message_event("hi there", channel="D0AWS")
        body = events_api_payload(event)
        for retry in ({}, {"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"}):
            answer = slack.handler(slack_request(body, headers=retry), lambda_context())
            assert answer["statusCode"] == 200
        web.wait_calls("chat.stopStream", 1, timeout=30)
        aws.wait_executions_done()
        [shown] = web.thread_messages("D0AWS", event["ts"])
        assert shown.text == "Hello from Bedrock, streamed into the thread."
        assert web.assistant_thread("D0AWS", event["ts"]).statuses[0] == "is thinking..."
        assert len(web.calls("chat.startStream")) == 1 and web.calls("chat.postMessage") == []
        thread = bootstrap.aws_deps().store.history(f"slack:{TEAM_ID}:D0AWS:{event['ts']}")
        assert thread is not None and len(thread.inbox) == 1  # the retry was the same message


def test_a_stream_against_slacks_limits_rotates_and_loses_nothing_under_429s() -> None:
    """The reply sink against the Slack stand-in's real limits (its error codes, its
    ``Retry-After``): a throttled append is sent later, a stream past Slack's size and past
    its lifetime goes on in a new message, and the thread ends showing the reply."""
    from workers.adapters.slack_stream import FLUSH_SECONDS, SlackStreams
    from workers.sandbox.slack_stub import BOT_TOKEN as STUB_BOT
    from workers.sandbox.slack_stub import SlackWebStub

    now = [0.0]

    def clock() -> float:
        return now[0]

    with SlackWebStub(bot_token=STUB_BOT, max_stream_chars=40, stream_ttl_s=30, clock=clock) as web:
        sink = SlackReplySink(SlackWeb(lambda: SecretStr(STUB_BOT), api_url=web.url))

        def sleep(seconds: float) -> None:
            now[0] += seconds

        sink.streams = SlackStreams(sink.web.call, clock=clock, sleep=sleep)
        cid = "slack:T1:D0LIMITS:100.000001"
        words = [f"word{n:02d} " for n in range(12)]  # 84 characters
        web.fail("chat.appendStream", retry_after=2)
        for n, word in enumerate(words):
            if n == 8:
                now[0] += 31  # past the stream's lifetime: Slack ends it
            sink.send_chunk(ReplyChunk(conversation_id=cid, turn_id="t", index=n, delta=word))
            now[0] += FLUSH_SECONDS
        text = "".join(words) + "done."
        sink.send(Reply(conversation_id=cid, turn_id="t", text=text))
        shown = web.thread_messages("D0LIMITS", "100.000001")
        assert "".join(m.text for m in shown) == text  # nothing lost, nothing twice
        assert len(shown) == 3  # rotated on size and on Slack ending the stream
        assert all(m.stream_state == "stopped" for m in shown)  # none left streaming
        throttled = [c for c in web.calls("chat.appendStream") if c.status == 429]
        assert len(throttled) == 1


def test_a_delivery_tried_again_in_another_process_shows_each_reply_once() -> None:
    """The ``turn`` function streamed the reply (or posted the question) and then failed
    before the delivery was marked; the ``deliver`` function (another process: no stream
    of that turn there) tries again. It finds the payload in the thread by its metadata
    and sends nothing; what Slack does not show yet is sent."""
    from events.outbound import ApprovalRequest as Ask
    from workers.core.ports import REDELIVERY
    from workers.sandbox.slack_stub import BOT_TOKEN as STUB_BOT
    from workers.sandbox.slack_stub import SlackWebStub

    with SlackWebStub(bot_token=STUB_BOT) as web:

        def sink() -> SlackReplySink:  # a process of its own: nothing kept from the others
            return SlackReplySink(SlackWeb(lambda: SecretStr(STUB_BOT), api_url=web.url))

        root = web.seed_message("D0AGAIN", "hello")
        cid = f"slack:T1:D0AGAIN:{root}"
        streamed = Reply(conversation_id=cid, turn_id="t1", text="Hello, streamed.")
        turn = sink()
        turn.send_chunk(ReplyChunk(conversation_id=cid, turn_id="t1", index=0, delta="Hello"))
        turn.send(streamed)
        asked = Ask(
            conversation_id=cid,
            turn_id="t2",
            interrupt_id="i-2",
            tool="update_ticket",
            args={"ticket_id": 1},
            text="Close ticket 1?",
        )
        turn.send(asked)
        assert len(web.thread_messages("D0AGAIN", root)) == 2

        retried = REDELIVERY.set(True)
        try:
            for payload in (streamed, asked):
                sink().send(payload)
            later = Reply(conversation_id=cid, turn_id="t3", text="Not shown yet.")
            sink().send(later)
        finally:
            REDELIVERY.reset(retried)
        shown = [m.text for m in web.thread_messages("D0AGAIN", root)]
        assert shown == ["Hello, streamed.", "Close ticket 1?", "Not shown yet."]
        assert len(web.calls("conversations.replies")) == 3
        sink().send(later)  # a first attempt does not look: it is the turn's own delivery
        assert len(web.calls("conversations.replies")) == 3
