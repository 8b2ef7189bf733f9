"""The Slack app on the embedded runtime: ``agentworker serve`` serves the Request URL
(``/slack/events``) with the same logic as the AWS ``slack`` function, and replies go back to
the thread through the Web API (a local stub of it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.functional.server_process import ServerProcess
from tests.functional.slack_env import SIGNING_SECRET, slack_fixture, slack_request
from workers.sandbox.slack_stub import BOT_TOKEN, SlackWebStub

THREAD = ("C111", "1726133698.626339")


@pytest.fixture(scope="module")
def slack_web() -> Iterator[SlackWebStub]:
    with SlackWebStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, slack_web: SlackWebStub
) -> Iterator[ServerProcess]:
    env = {
        "AGENTWORKER_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "AGENTWORKER_SLACK_BOT_TOKEN": BOT_TOKEN,
        "AGENTWORKER_SLACK_API_URL": slack_web.url,
    }
    with ServerProcess(tmp_path_factory.mktemp("slack"), env=env) as server:
        yield server


def post(server: ServerProcess, event: dict[str, object]) -> httpx.Response:
    """What Slack sends to the Request URL: the HTTP API envelope's headers and body."""
    body = event["body"]
    assert isinstance(body, str)
    headers = event["headers"]
    assert isinstance(headers, dict)
    return httpx.post(f"{server.url}/slack/events", content=body, headers=headers, timeout=30)


def message(text: str, ts: str) -> dict[str, object]:
    body = slack_fixture("message_thread.json")
    body["event"] |= {"text": text, "ts": ts, "event_ts": ts}
    body["event_id"] = f"Ev{ts}"
    return body


def test_a_thread_is_answered_in_its_thread_once_and_a_click_decides(
    served: ServerProcess, slack_web: SlackWebStub
) -> None:
    challenge = post(served, slack_request(slack_fixture("url_verification.json")))
    assert challenge.status_code == 200 and "challenge" in challenge.json()

    asked = post(served, slack_request(message("please open a ticket about the printer", "1.1")))
    assert asked.status_code == 200 and asked.json()["duplicate"] is False
    retried = slack_request(
        message("please open a ticket about the printer", "1.1"),
        headers={"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"},
    )
    assert post(served, retried).json()["duplicate"] is True  # Slack's retry: one message
    [stopped] = slack_web.wait_calls("chat.stopStream", 1, timeout=30)
    [start] = slack_web.calls("chat.startStream")  # streamed to who asked (the fixture's W222)
    assert (start.args["channel"], start.args["thread_ts"]) == THREAD
    assert (start.args["recipient_team_id"], start.args["recipient_user_id"]) == ("T111", "W222")
    assert start.token == BOT_TOKEN
    [opened] = slack_web.thread_messages(*THREAD)
    assert opened.text.startswith("Opened ticket 1") and opened.stream_state == "stopped"

    post(served, slack_request(message("close ticket 1", "1.2")))
    [ask] = slack_web.wait_calls("chat.postMessage", 1, timeout=30)
    [approve, _] = ask.args["blocks"][-1]["elements"]
    click = slack_fixture("block_actions_with_message.json")
    click["channel"]["id"] = click["container"]["channel_id"] = THREAD[0]
    click["team"]["id"] = "T111"
    click["actions"] = [{**click["actions"][0], "action_id": "approve", "value": approve["value"]}]
    click["message"] = {**ask.response["message"], "ts": ask.response["ts"]}
    clicked = post(served, slack_request(click, form=True))
    assert clicked.status_code == 200, clicked.text
    assert clicked.content == b""  # an interaction's acknowledgement is empty
    slack_web.wait_calls("chat.stopStream", 2, timeout=30)
    done = slack_web.thread_messages(*THREAD)[-1]
    assert "is closed" in done.text and done.thread_ts == THREAD[1]
    decided = slack_web.message(str(ask.response["ts"]))
    assert all(b["type"] != "actions" for b in decided.blocks)  # the decision, no buttons


def test_unsigned_stale_or_malformed_requests_are_refused(served: ServerProcess) -> None:
    body = message("hello", "2.1")
    unsigned = post(served, slack_request(body, signed=False))
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "invalid_signature"
    stale = post(served, slack_request(body, timestamp=1))
    assert stale.status_code == 401
    wrong = post(served, slack_request(body, secret="another-secret"))
    assert wrong.status_code == 401
    half = {"type": "event_callback", "event": {"type": "message", "user": "U1", "text": "x"}}
    shape = post(served, slack_request(json.dumps(half)))  # no channel, no ts
    assert shape.status_code == 422 and shape.json()["error"]["code"] == "validation_error"
    assert post(served, slack_request("{not json")).status_code == 400
    bot = post(served, slack_request(slack_fixture("bot_message.json")))
    assert bot.status_code == 200 and bot.json()["type"] == "ignored"


def test_without_a_slack_app_the_route_is_not_there(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as plain:
        answer = post(plain, slack_request(message("hello", "3.1")))
    assert answer.status_code == 404
