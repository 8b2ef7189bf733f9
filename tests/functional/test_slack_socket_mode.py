"""``agentworker slack --socket-mode``: the Slack app on the embedded runtime without a public
URL. A real process connects through ``slack_sdk``'s Socket Mode client to a stand-in for
Slack (``workers/sandbox/slack_stub.py``: ``apps.connections.open``, the WebSocket, the Web
API), acknowledges each envelope within Slack's 3 s, and answers in the thread."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.server_process import ServerProcess, assessments
from tests.functional.slack_env import slack_fixture
from workers.sandbox.slack_stub import (
    APP_TOKEN,
    BOT_TOKEN,
    TEAM_ID,
    USER_ID,
    SlackWebStub,
    events_api_payload,
    message_event,
    reaction_event,
)

CHANNEL = "D0STUBDM"
PUBLIC = "C0STUBCHAN"


@pytest.fixture
def slack() -> Iterator[SlackWebStub]:
    with SlackWebStub() as stub:
        yield stub


def env(stub: SlackWebStub) -> dict[str, str]:
    return {
        "AGENTWORKER_SLACK_APP_TOKEN": APP_TOKEN,
        "AGENTWORKER_SLACK_BOT_TOKEN": BOT_TOKEN,
        "AGENTWORKER_SLACK_API_URL": stub.url,
    }


def click(value: str, action_id: str = "approve") -> dict[str, Any]:
    payload = slack_fixture("block_actions_with_message.json")
    payload["team"]["id"] = TEAM_ID
    payload["channel"]["id"] = payload["container"]["channel_id"] = CHANNEL
    payload["actions"] = [{**payload["actions"][0], "action_id": action_id, "value": value}]
    return payload


def test_events_and_clicks_over_socket_mode_are_acked_and_answered(
    slack: SlackWebStub, tmp_path: Path
) -> None:
    traced = {**env(slack), "AGENTWORKER_TRACING": "true"}
    with ServerProcess(tmp_path, env=traced, subcommand=("slack", "--socket-mode")):
        opened_thread = {
            "type": "assistant_thread_started",
            "assistant_thread": {"user_id": "U1", "channel_id": CHANNEL, "thread_ts": "90.1"},
        }
        started = slack.socket_mode.send_event(events_api_payload(opened_thread))
        assert slack.socket_mode.wait_ack(started).in_time
        slack.wait_calls("assistant.threads.setSuggestedPrompts", 1)
        prompts = slack.assistant_thread(CHANNEL, "90.1").prompts
        assert prompts and all(p["message"] for p in prompts)  # the app's suggested prompts

        asked = message_event("please open a ticket about the printer", channel=CHANNEL)
        envelope = slack.socket_mode.send_event(events_api_payload(asked))
        assert slack.socket_mode.wait_ack(envelope).in_time  # within Slack's 3 s
        [opened] = slack.wait_calls("chat.stopStream", 1, timeout=30)  # a DM: streamed
        [reply] = slack.thread_messages(CHANNEL, asked["ts"])
        assert reply.text.startswith("Opened ticket 1") and reply.stream_state == "stopped"
        assert slack.calls("chat.postMessage") == []
        slack.wait_calls("assistant.threads.setTitle", 1)  # from its first message
        thread = slack.assistant_thread(CHANNEL, asked["ts"])  # a direct message: assistant
        assert thread.title == "please open a ticket about the printer"
        assert thread.statuses[:2] == ["is thinking...", "is running create_ticket..."]
        assert thread.status == ""  # cleared by the reply

        again = slack.socket_mode.send_event(events_api_payload(asked), retry_attempt=1)
        assert slack.socket_mode.wait_ack(again).in_time  # Slack's redelivery: one message

        close = message_event("close ticket 1", channel=CHANNEL, thread_ts=asked["ts"])
        slack.socket_mode.send_event(events_api_payload(close))
        ask = slack.wait_calls("chat.postMessage", 1, timeout=30)[-1]  # the buttons
        [approve, _] = ask.args["blocks"][-1]["elements"]
        clicked = click(approve["value"])
        clicked["message"] = {**ask.response["message"], "ts": ask.response["ts"]}
        decided = slack.socket_mode.send_event(clicked, kind="interactive")
        assert slack.socket_mode.wait_ack(decided).in_time
        slack.wait_calls("chat.stopStream", 2, timeout=30)
        done = slack.thread_messages(CHANNEL, asked["ts"])[-1]
        assert "is closed" in done.text
        [update] = slack.wait_calls("chat.update", 1)  # the buttons are gone, the decision shown
        shown = slack.message(str(ask.response["ts"]))
        assert all(b["type"] != "actions" for b in shown.blocks)
        assert f"Approved by <@{clicked['user']['id']}>" in shown.text
        assert len(slack.calls("chat.startStream")) == 2  # the redelivery answered nothing
        assert len(slack.thread_messages(CHANNEL, asked["ts"])) == 3

        # A mention in a channel (Slack sends it as a mention and as a message): one turn,
        # streamed into its thread, addressed to the member who asked, the thread's status
        # set while it works and cleared by the reply.
        mention = message_event(
            "<@U0STUBBOT> please open a ticket about the fax",
            channel=PUBLIC,
            event_type="app_mention",
        )
        for event in (mention, {**mention, "type": "message", "channel_type": "channel"}):
            sent = slack.socket_mode.send_event(events_api_payload(event))
            assert slack.socket_mode.wait_ack(sent).in_time
        slack.wait_calls("chat.stopStream", 3, timeout=30)
        start = slack.calls("chat.startStream")[-1].args
        assert (start["channel"], start["thread_ts"]) == (PUBLIC, mention["ts"])
        assert (start["recipient_team_id"], start["recipient_user_id"]) == (TEAM_ID, USER_ID)
        [shown] = slack.thread_messages(PUBLIC, mention["ts"])
        assert shown.text.startswith("Opened ticket") and shown.stream_state == "stopped"
        status = slack.assistant_thread(PUBLIC, mention["ts"])
        assert status.statuses[:2] == ["is thinking...", "is running create_ticket..."]
        assert status.status == ""
        assert len(slack.calls("chat.startStream")) == 3  # the pair was one message

        # A thumb on the reply reaches its turn's trace, as POST .../feedback would put it;
        # taking the reaction back withdraws it; other reactions mean nothing.
        cid = f"slack:{TEAM_ID}:{PUBLIC}:{mention['ts']}"
        where = f"tags.conversation_id = '{cid}'"
        for kind, name in (("reaction_added", "tada"), ("reaction_added", "+1")):
            thumb = reaction_event(kind, reaction=name, channel=PUBLIC, ts=shown.ts)  # type: ignore[arg-type]
            assert slack.socket_mode.wait_ack(
                slack.socket_mode.send_event(events_api_payload(thumb))
            ).in_time
        [up] = assessments(tmp_path, where)
        assert up.value == 1 and up.source.source_id == f"slack:{TEAM_ID}:{USER_ID}"
        assert up.source.source_type == "HUMAN" and up.metadata["reply_id"]
        removed = reaction_event("reaction_removed", reaction="+1", channel=PUBLIC, ts=shown.ts)
        slack.socket_mode.send_event(events_api_payload(removed))
        assert assessments(tmp_path, where, until=lambda found: not found) == []


def test_without_an_app_token_it_says_what_to_set(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "slack",
            "--socket-mode",
            "--state-dir",
            str(tmp_path),
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("AGENTWORKER_")}
        | {"MLFLOW_MODEL_CATALOG_URI": "", "AGENTWORKER_SLACK_BOT_TOKEN": BOT_TOKEN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "AGENTWORKER_SLACK_APP_TOKEN" in run.stderr and len(run.stderr.splitlines()) == 1
