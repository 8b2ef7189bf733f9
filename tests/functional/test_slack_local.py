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
from tests.functional.slack_env import (
    BOT_TOKEN,
    SIGNING_SECRET,
    SlackApiStub,
    slack_api_stub,
    slack_fixture,
    slack_request,
)

THREAD = ("C111", "1726133698.626339")


@pytest.fixture(scope="module")
def slack_web() -> Iterator[SlackApiStub]:
    with slack_api_stub() as stub:
        yield stub


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, slack_web: SlackApiStub
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
    served: ServerProcess, slack_web: SlackApiStub
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
    [opened] = slack_web.posted(1)
    assert (opened.body["channel"], opened.body["thread_ts"]) == THREAD
    assert opened.body["text"].startswith("Opened ticket 1")
    assert opened.headers["authorization"] == f"Bearer {BOT_TOKEN}"

    post(served, slack_request(message("close ticket 1", "1.2")))
    ask = slack_web.posted(2)[-1].body
    [approve, _] = ask["blocks"][-1]["elements"]
    click = slack_fixture("block_actions_with_message.json")
    click["channel"]["id"] = click["container"]["channel_id"] = THREAD[0]
    click["team"]["id"] = "T111"
    click["actions"] = [{**click["actions"][0], "action_id": "approve", "value": approve["value"]}]
    clicked = post(served, slack_request(click, form=True))
    assert clicked.status_code == 200, clicked.text
    assert clicked.content == b""  # an interaction's acknowledgement is empty
    done = slack_web.posted(3)[-1].body
    assert "is closed" in done["text"] and done["thread_ts"] == THREAD[1]


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
