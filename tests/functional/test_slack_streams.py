"""A long reply streamed into its Slack thread while the model writes it, on both runtimes,
against the stand-in's limits (``workers/sandbox/slack_stub.py``): the streamed message is
continued in a new one past Slack's size, an append Slack throttles (HTTP 429 with
``Retry-After``) is sent later with nothing lost, and the thread ends showing exactly the
reply, every message stopped, the last one naming the reply. The model is the Converse
stub, streaming word by word with a pause between words, as Bedrock does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.functional.aws_env import MODEL, Aws, aws, lambda_context
from tests.functional.server_process import ServerProcess
from tests.functional.slack_env import SIGNING_SECRET, slack_request
from workers import bootstrap
from workers.handlers import slack
from workers.sandbox.converse_stub import ConverseStubServer
from workers.sandbox.slack_stub import (
    APP_TOKEN,
    BOT_TOKEN,
    SlackWebStub,
    events_api_payload,
    message_event,
)

__all__ = ["aws"]  # the fixture

REPLY = " ".join(f"word{n:02d}" for n in range(30)) + "."
"""209 characters, 31 words: about 3 s at :data:`WORD_PAUSE_S` a word."""
WORD_PAUSE_S = 0.1
MESSAGE_CHARS = 80
"""The stand-in's size for one streamed message (Slack's is larger, and undocumented)."""


def stand_in() -> SlackWebStub:
    web = SlackWebStub(max_stream_chars=MESSAGE_CHARS)
    web.fail("chat.appendStream", retry_after=1)  # the first append: throttled
    return web


def shown_as_the_reply(web: SlackWebStub, channel: str, thread_ts: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        shown = web.thread_messages(channel, thread_ts)
        ended = shown and shown[-1].metadata is not None
        if ended or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "".join(m.text for m in shown) == REPLY  # nothing lost, nothing twice
    assert len(shown) >= 3  # 209 characters in messages of at most 80
    assert all(m.stream_state == "stopped" for m in shown)
    assert all(len(m.text) <= MESSAGE_CHARS for m in shown)
    throttled = [c for c in web.calls("chat.appendStream") if c.status == 429]
    assert len(throttled) == 1
    streamed = [
        c.at for c in web.calls() if c.ok and c.method in ("chat.startStream", "chat.appendStream")
    ]
    assert max(streamed) - min(streamed) >= 1.0, "the reply was not streamed as it was written"
    assert shown[-1].metadata is not None
    assert shown[-1].metadata["event_payload"]["reply_id"]


def test_a_long_reply_streams_rotates_and_survives_a_429_on_the_embedded_runtime(
    tmp_path: Path,
) -> None:
    with ConverseStubServer(stream_delay_s=WORD_PAUSE_S) as model, stand_in() as web:
        model.script(REPLY)
        env = {
            "AGENTWORKER_SLACK_APP_TOKEN": APP_TOKEN,
            "AGENTWORKER_SLACK_BOT_TOKEN": BOT_TOKEN,
            "AGENTWORKER_SLACK_API_URL": web.url,
            "AGENTWORKER_MODEL": f"bedrock:{MODEL}",
            "AGENTWORKER_BEDROCK_ENDPOINT_URL": model.endpoint_url,
            "AGENTWORKER_BEDROCK_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        with ServerProcess(tmp_path, env=env, subcommand=("slack", "--socket-mode")):
            asked = message_event("tell me a long story", channel="D0LONG")
            web.socket_mode.send_event(events_api_payload(asked))
            shown_as_the_reply(web, "D0LONG", asked["ts"])


def test_a_long_reply_streams_rotates_and_survives_a_429_on_aws(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stand_in() as web:
        monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", SIGNING_SECRET)
        monkeypatch.setenv("AGENTWORKER_SLACK_BOT_TOKEN", BOT_TOKEN)
        monkeypatch.setenv("AGENTWORKER_SLACK_API_URL", web.url)
        bootstrap.reset_aws_deps()
        aws.stub.stream_delay_s = WORD_PAUSE_S
        aws.stub.script(REPLY)
        asked = message_event("tell me a long story", channel="D0LONGAWS")
        answer = slack.handler(slack_request(events_api_payload(asked)), lambda_context())
        assert answer["statusCode"] == 200
        shown_as_the_reply(web, "D0LONGAWS", asked["ts"])
        aws.wait_executions_done()
