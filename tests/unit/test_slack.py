"""Slack: request signatures, the ``slack`` handler on real Slack payloads (in the real HTTP
API envelope, signed) with in-memory deps, the approve/deny button round trip, credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import moto
import pytest

from events.identity import ApprovalPolicy
from events.inbound import InboundMessage, SlackBlockActions, slack_button_value
from events.outbound import ApprovalRequest, Notice, Reply
from tests.fakes import (
    InMemoryConversationStore,
    ManualClock,
    RecordingSink,
    RecordingStarter,
    ScriptedAgent,
)
from tests.functional.slack_env import (
    SIGNING_SECRET,
    slack_fixture,
    slack_request,
    slack_signature,
)
from workers import bootstrap
from workers.adapters.slack import (
    SlackReplySink,
    SlackWeb,
    read_slack_secret,
    render_message,
    verify_slack_request,
)
from workers.core.steps import Deps, drive_run
from workers.errors import ConfigError, InvalidSlackSignature
from workers.handlers import slack
from workers.sandbox.emulator import LambdaContextStub

NOW = 1_700_000_000.0
BODY = b'{"type":"event_callback"}'
THREAD_CID = "slack:T111:C111:1726133698.626339"


# --- signature ------------------------------------------------------------------------------


def _verify(body: bytes = BODY, **kw: Any) -> None:
    args: dict[str, Any] = {
        "signing_secret": SIGNING_SECRET,
        "timestamp": str(int(NOW)),
        "signature": slack_signature(SIGNING_SECRET, str(int(NOW)), BODY),
        "body": body,
        "now": NOW,
    }
    verify_slack_request(**{**args, **kw})


def test_slacks_own_documented_example_signature() -> None:
    # api.slack.com/authentication/verifying-requests-from-slack, step by step
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    assert slack_signature(secret, "1531420618", body) == expected  # the tests' signer
    verify_slack_request(
        signing_secret=secret, timestamp="1531420618", signature=expected, body=body, now=1531420618
    )


def test_a_good_signature_passes() -> None:
    _verify()


def test_a_tampered_body_or_another_secret_is_refused() -> None:
    with pytest.raises(InvalidSlackSignature, match="does not match"):
        _verify(body=BODY + b" ")
    with pytest.raises(InvalidSlackSignature, match="does not match"):
        _verify(signing_secret="another-secret")


def test_a_timestamp_over_five_minutes_away_is_refused() -> None:
    _verify(now=NOW + 300)  # exactly 5 minutes: still fine
    with pytest.raises(InvalidSlackSignature, match="5 minutes"):
        _verify(now=NOW + 301)
    with pytest.raises(InvalidSlackSignature, match="5 minutes"):
        _verify(now=NOW - 301)  # from the future


def test_an_empty_signing_secret_verifies_nothing() -> None:
    """A request signed with the empty key would pass an empty secret: refused as a
    misconfiguration, whatever the request."""
    empty_signed = slack_signature("", str(int(NOW)), BODY)
    for secret in ("", "  "):
        with pytest.raises(ConfigError, match="empty"):
            _verify(signing_secret=secret, signature=empty_signed)


def test_missing_or_malformed_headers_are_refused() -> None:
    with pytest.raises(InvalidSlackSignature, match="missing"):
        _verify(signature=None)
    with pytest.raises(InvalidSlackSignature, match="missing"):
        _verify(timestamp="")
    with pytest.raises(InvalidSlackSignature, match="integer"):
        _verify(timestamp="soon")


# --- the handler on real payloads, with in-memory deps ----------------------------------------


class World:
    def __init__(self) -> None:
        self.store = InMemoryConversationStore()
        self.sink = RecordingSink()
        self.starter = RecordingStarter()
        self.deps = Deps(
            store=self.store,
            agent=ScriptedAgent(),
            sink=self.sink,
            starter=self.starter,
            clock=ManualClock(),
        )

    def call(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        context = LambdaContextStub("slack", "arn:aws:lambda:us-east-1:123456789012:function:slack")
        answer = slack.handler(event, context)
        return answer["statusCode"], json.loads(answer.get("body") or "{}")

    def inbox(self, conversation_id: str) -> list[Any]:
        return self.store.pending_inbox(conversation_id)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", SIGNING_SECRET)
    w = World()
    bootstrap.reset_aws_deps()
    monkeypatch.setattr(bootstrap, "aws_deps", lambda **_: w.deps)
    yield w
    bootstrap.reset_aws_deps()


def test_url_verification_answers_the_challenge(world: World) -> None:
    body = slack_fixture("url_verification.json")
    status, answer = world.call(slack_request(body))
    assert status == 200 and answer == {"challenge": body["challenge"]}


def test_a_thread_message_becomes_an_inbox_message_and_starts_a_run(world: World) -> None:
    status, answer = world.call(slack_request(slack_fixture("message_thread.json")))
    assert status == 200 and answer["type"] == "accepted" and answer["duplicate"] is False
    assert answer["conversation_id"] == THREAD_CID
    [entry] = world.inbox(THREAD_CID)
    msg = entry.message
    assert msg.text == "When Slack was released?" and msg.channel == "slack"
    assert msg.sender == "slack:T111:W222" and msg.dedupe_key == "slack:C111:1726133700.887259"
    assert msg.metadata == {"slack_channel": "C111", "slack_thread_ts": "1726133698.626339"}
    assert [run.conversation_id for run in world.starter.runs] == [THREAD_CID]


def test_a_top_level_dm_and_a_mention_start_their_own_threads(world: World) -> None:
    status, answer = world.call(slack_request(slack_fixture("message_im.json")))
    assert status == 200 and answer["conversation_id"] == "slack:T111:D111:1726133700.887259"
    status, answer = world.call(slack_request(slack_fixture("app_mention.json")))
    assert status == 200 and answer["conversation_id"] == "slack:T0G9PQBBK:C111:1678252212.229129"
    assert len(world.starter.runs) == 2


def test_a_slack_retry_with_a_new_event_id_is_one_message(world: World) -> None:
    body = slack_fixture("message_thread.json")
    assert world.call(slack_request(body))[1]["duplicate"] is False
    body["event_id"] = "Ev999"  # Slack redelivers with a new event id
    retry = {"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"}
    status, answer = world.call(slack_request(body, headers=retry))
    assert status == 200 and answer["duplicate"] is True
    assert len(world.inbox(THREAD_CID)) == 1 and len(world.starter.runs) == 1


def test_a_mention_also_delivered_as_a_message_is_one_message(world: World) -> None:
    mention = slack_fixture("app_mention.json")
    message = json.loads(json.dumps(mention))
    message["event"]["type"] = "message"
    message["event_id"] = "Ev-other"
    assert world.call(slack_request(mention))[1]["duplicate"] is False
    assert world.call(slack_request(message))[1]["duplicate"] is True


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bot_message.json", "bot message"),
        ("bot_message_subtype.json", "bot message"),
        ("message_changed.json", "message subtype 'message_changed'"),
    ],
)
def test_bot_messages_and_edits_are_acknowledged_and_ignored(
    world: World, name: str, reason: str
) -> None:
    status, answer = world.call(slack_request(slack_fixture(name)))
    assert status == 200 and answer == {"type": "ignored", "reason": reason}
    assert world.store.calls == [] and world.starter.runs == []


def test_other_events_are_acknowledged_and_ignored(world: World) -> None:
    body = slack_fixture("message_thread.json")
    body["event"] = {"type": "reaction_added", "user": "W222", "reaction": "thumbsup"}
    status, answer = world.call(slack_request(body))
    assert status == 200 and answer["type"] == "ignored"
    body = slack_fixture("message_thread.json")
    body["event"]["subtype"] = "channel_join"
    assert world.call(slack_request(body))[1]["type"] == "ignored"
    assert world.store.calls == []


def test_a_base64_encoded_body_is_verified_and_accepted(world: World) -> None:
    status, answer = world.call(
        slack_request(slack_fixture("message_thread.json"), base64_body=True)
    )
    assert status == 200 and answer["type"] == "accepted"


@pytest.mark.parametrize(
    "request_kw",
    [
        {"secret": "not-the-signing-secret"},
        {"timestamp": time.time() - 600},
        {"signed": False},
    ],
    ids=["bad-signature", "stale-timestamp", "missing-signature"],
)
def test_an_unsigned_or_stale_request_is_refused_with_401(
    world: World, request_kw: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, answer = world.call(slack_request(slack_fixture("message_thread.json"), **request_kw))
    assert status == 401 and answer["type"] == "error"
    assert answer["error"]["code"] == "invalid_signature"
    assert world.store.calls == [] and world.starter.runs == []
    assert SIGNING_SECRET not in capsys.readouterr().out  # nor in the logs


def test_a_signed_body_of_a_wrong_shape_names_the_problem(world: World) -> None:
    status, answer = world.call(slack_request("{not json"))
    assert status == 400 and answer["error"]["code"] == "bad_json"
    body = slack_fixture("message_thread.json")
    del body["event"]["channel"]
    status, answer = world.call(slack_request(body))
    assert status == 422 and answer["error"]["field"] == "event.channel"
    status, answer = world.call(slack_request("token=x&command=%2Fhelp", form=True))
    assert status == 400 and "payload" in answer["error"]["message"]


def test_without_a_signing_secret_the_function_is_misconfigured(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTWORKER_SLACK_SIGNING_SECRET")
    bootstrap.reset_aws_deps()
    with pytest.raises(ConfigError, match="AGENTWORKER_SLACK_SIGNING_SECRET"):
        world.call(slack_request(slack_fixture("message_thread.json")))


def test_an_empty_configured_signing_secret_is_misconfiguration(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", "")
    bootstrap.reset_aws_deps()
    with pytest.raises(ConfigError, match="empty"):
        world.call(slack_request(slack_fixture("message_thread.json"), secret=""))
    assert world.store.calls == []


# --- approve/deny buttons ---------------------------------------------------------------------


def _click(action_id: str, value: str, channel: str = "C111", team: str = "T111") -> dict[str, Any]:
    """The fixture's block_actions payload, clicking one of our buttons (from the thread's
    workspace unless ``team`` says otherwise)."""
    payload = slack_fixture("block_actions_with_message.json")
    payload["channel"]["id"] = payload["container"]["channel_id"] = channel
    payload["team"]["id"] = team
    payload["actions"] = [{**payload["actions"][0], "action_id": action_id, "value": value}]
    return payload


def test_an_unrelated_button_is_acknowledged_and_ignored(world: World) -> None:
    for name in ("block_actions.json", "block_actions_with_message.json"):
        status, answer = world.call(slack_request(slack_fixture(name), form=True))
        assert (status, answer) == (200, {})  # an interaction's acknowledgement is empty
    assert world.store.calls == []


def _waiting(world: World) -> ApprovalRequest:
    """A Slack thread whose last turn asks approval (the scripted agent's ``approve-me``)."""
    body = slack_fixture("message_thread.json")
    body["event"]["text"] = "please approve-me"
    world.call(slack_request(body))
    drive_run(world.deps, world.starter.runs[-1])
    ask = world.sink.sent[-1]
    assert isinstance(ask, ApprovalRequest) and ask.conversation_id == THREAD_CID
    world.store.calls.clear()
    return ask


@pytest.mark.parametrize(("action_id", "approved"), [("approve", True), ("deny", False)])
def test_a_button_click_becomes_the_decision(world: World, action_id: str, approved: bool) -> None:
    ask = _waiting(world)
    value = slack_button_value(THREAD_CID, ask.interrupt_id)
    runs = len(world.starter.runs)
    status, answer = world.call(slack_request(_click(action_id, value), form=True))
    assert (status, answer) == (200, {})
    entry = world.inbox(THREAD_CID)[-1]
    msg = entry.message
    assert msg.kind == "approval" and msg.channel == "slack" and msg.sender == "slack:T111:U111"
    assert msg.approval is not None
    assert (msg.approval.interrupt_id, msg.approval.approved) == (ask.interrupt_id, approved)
    assert world.call(slack_request(_click(action_id, value), form=True))[0] == 200
    assert world.store.calls.count("append_inbox") == 2
    assert world.inbox(THREAD_CID)[-1] == entry  # a double click is one decision
    assert len(world.starter.runs) == runs + 1


def test_a_click_on_a_question_nobody_waits_for_is_acknowledged_and_ignored(
    world: World,
) -> None:
    value = slack_button_value(THREAD_CID, "int-42")  # no such conversation
    status, answer = world.call(slack_request(_click("approve", value), form=True))
    assert (status, answer) == (200, {})
    assert "append_inbox" not in world.store.calls and world.starter.runs == []
    ask = _waiting(world)
    stale = slack_button_value(THREAD_CID, "int-41")  # another question than the pending one
    assert world.call(slack_request(_click("approve", stale), form=True)) == (200, {})
    assert "append_inbox" not in world.store.calls and world.inbox(THREAD_CID) == []
    assert ask.interrupt_id != "int-41"


def test_a_click_carrying_another_channels_conversation_is_refused(world: World) -> None:
    value = slack_button_value(THREAD_CID, "int-42")
    status, answer = world.call(slack_request(_click("approve", value, channel="C999"), form=True))
    assert status == 400 and "C999" in answer["error"]["message"]
    status, answer = world.call(slack_request(_click("approve", "no-separator"), form=True))
    assert status == 400 and answer["error"]["code"] == "bad_request"
    assert world.store.calls == []


def test_a_forged_click_from_another_workspace_or_no_channel_is_refused(world: World) -> None:
    """A signed click names the conversation in its button value; the clicker must be in
    that conversation's workspace and channel (a member of T222 with a channel C111 of its
    own cannot decide T111's approvals)."""
    ask = _waiting(world)
    value = slack_button_value(THREAD_CID, ask.interrupt_id)
    calls = len(world.store.calls)
    status, answer = world.call(slack_request(_click("approve", value, team="T222"), form=True))
    assert status == 400 and "T222" in answer["error"]["message"]
    no_channel = _click("approve", value)
    del no_channel["channel"]
    status, answer = world.call(slack_request(no_channel, form=True))
    assert status == 400 and "channel" in answer["error"]["message"]
    assert world.store.calls[calls:] == []  # nothing read, nothing written


def test_the_core_checks_the_clicker_against_the_conversations_owner(world: World) -> None:
    """Even a click whose team and channel match its button value is refused by the core
    when the conversation belongs to someone else (here: created by a backend for another
    tenant under a Slack-shaped id): acknowledged as stale, nothing written."""
    cid = "slack:T111:C111:1726133698.626339"
    world.deps.store.append_inbox(
        InboundMessage(conversation_id=cid, text="x", tenant="acme", owner="acme:ops"),
        now=world.deps.clock.now(),
        default_policy="enqueue",
    )
    status, _ = world.call(
        slack_request(_click("approve", slack_button_value(cid, "int-1")), form=True)
    )
    assert status == 200
    assert [e.message.kind for e in world.inbox(cid)] == ["user"]


def test_a_four_eyes_tool_is_not_approved_by_its_requester_in_slack(world: World) -> None:
    """``not_requester``: the member whose message led to the call clicks Approve: the
    click is acknowledged and changes nothing; another member of the channel decides."""
    world.deps.settings = replace(
        world.deps.settings,
        approval_policies={"update_ticket": ApprovalPolicy(not_requester=True)},
    )
    ask = _waiting(world)  # asked by W222 (message_thread.json)
    value = slack_button_value(THREAD_CID, ask.interrupt_id)
    own = _click("approve", value)
    own["user"]["id"] = "W222"
    calls = len(world.store.calls)
    status, _ = world.call(slack_request(own, form=True))
    assert status == 200 and "append_inbox" not in world.store.calls[calls:]
    status, _ = world.call(slack_request(_click("approve", value), form=True))  # U111
    assert status == 200
    [decision] = world.inbox(THREAD_CID)
    assert decision.message.sender == "slack:T111:U111"


def test_the_buttons_the_sink_renders_decide_the_pending_approval(world: World) -> None:
    """Message -> turn asking approval -> the rendered button -> click -> resumed turn."""
    body = slack_fixture("message_thread.json")
    body["event"]["text"] = "please approve-me"
    world.call(slack_request(body))
    drive_run(world.deps, world.starter.runs[-1])
    [ask] = world.sink.sent
    assert isinstance(ask, ApprovalRequest)
    blocks = render_message(ask)["blocks"]
    buttons = {b["action_id"]: b for b in blocks[-1]["elements"]}
    assert set(buttons) == {"approve", "deny"}
    click = _click("deny", buttons["deny"]["value"])
    status, _ = world.call(slack_request(click, form=True))
    assert status == 200
    drive_run(world.deps, world.starter.runs[-1])
    resumed = world.sink.sent[-1]
    assert isinstance(resumed, Reply) and '"approved": false' in resumed.text
    assert f"resumed {ask.interrupt_id} with" in resumed.text


def test_rendered_messages_go_to_the_thread_escaped() -> None:
    reply = Reply(conversation_id=THREAD_CID, turn_id="t", text="a <b> & c")
    assert render_message(reply) == {
        "channel": "C111",
        "thread_ts": "1726133698.626339",
        "text": "a &lt;b&gt; &amp; c",
        "metadata": {  # which reply it is: a reaction on it rates it
            "event_type": "agentworker_reply",
            "event_payload": {"conversation_id": THREAD_CID, "reply_id": reply.reply_id},
        },
    }
    notice = Notice(conversation_id=THREAD_CID, level="error", text="failed")
    assert render_message(notice)["text"] == ":warning: failed"
    assert "metadata" not in render_message(notice)  # no turn: nothing to rate
    ask = ApprovalRequest(
        conversation_id=THREAD_CID,
        turn_id="t",
        interrupt_id="i-1",
        tool="update_ticket",
        args={"ticket_id": 3, "status": "closed"},
        text="Close ticket 3?",
    )
    message = render_message(ask)
    assert message["text"] == "Close ticket 3?"
    [approve, deny] = message["blocks"][-1]["elements"]
    assert (approve["style"], deny["style"]) == ("primary", "danger")
    clicked = SlackBlockActions.model_validate(
        {
            "type": "block_actions",
            "user": {"id": "U1"},
            "team": {"id": "T111"},
            "channel": {"id": "C111"},
            "actions": [{"action_id": approve["action_id"], "value": approve["value"]}],
        }
    ).decision()
    assert clicked is not None and clicked.conversation_id == THREAD_CID
    assert clicked.approval is not None and clicked.approval.interrupt_id == "i-1"


def test_the_slack_sink_leaves_other_conversations_alone() -> None:
    asked: list[str] = []

    def token() -> None:
        asked.append("token")

    sink = SlackReplySink(SlackWeb(token, api_url="http://127.0.0.1:9/never"))
    sink.send(Reply(conversation_id="ticket:1", turn_id="t", text="hi"))
    sink.send(Reply(conversation_id="ws:alice:1", turn_id="t", text="hi"))
    assert asked == []
    sink.send(Reply(conversation_id=THREAD_CID, turn_id="t", text="hi"))  # no token: skipped
    assert asked == ["token"]


# --- credentials ------------------------------------------------------------------------------


def test_credentials_come_from_the_environment_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", "s1")
    monkeypatch.setenv("AGENTWORKER_SLACK_BOT_TOKEN", "xoxb-1")
    bootstrap.reset_aws_deps()
    creds = bootstrap.slack_credentials()
    assert creds.bot_token is not None and creds.bot_token.get_secret_value() == "xoxb-1"
    assert "xoxb-1" not in repr(creds) and "s1" not in str(creds)
    monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", "s2")
    assert bootstrap.slack_signing_secret() == "s1"  # read once
    bootstrap.reset_aws_deps()
    assert bootstrap.slack_signing_secret() == "s2"
    bootstrap.reset_aws_deps()


def test_credentials_from_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        good = client.create_secret(
            Name="slack", SecretString=json.dumps({"signing_secret": "s", "bot_token": "xoxb-2"})
        )["ARN"]
        bad = client.create_secret(Name="bad", SecretString="xoxb-leaked")["ARN"]
        monkeypatch.setenv("AGENTWORKER_SLACK_SECRET_ARN", good)
        monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", "ignored-when-the-arn-is-set")
        bootstrap.reset_aws_deps()
        assert bootstrap.slack_signing_secret() == "s"
        with pytest.raises(ConfigError, match="AGENTWORKER_SLACK_SECRET_ARN") as err:
            read_slack_secret(client, bad)
        assert "xoxb-leaked" not in str(err.value)
    bootstrap.reset_aws_deps()


def test_the_slack_handler_imports_without_langgraph_langchain_or_mlflow() -> None:
    code = (
        "import json, sys\nimport workers.handlers.slack\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert "workers" in loaded
    assert not {"langgraph", "langchain_core", "langchain_aws", "mlflow", "boto3"} & loaded


# --- roles of Slack members ---------------------------------------------------------------------


class Groups:
    """A Web API that lists user groups' members (``usergroups.users.list``), counting calls."""

    def __init__(self, members: dict[str, list[str]]) -> None:
        self.members = members
        self.asked: list[str] = []

    def try_call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        assert method == "usergroups.users.list"
        self.asked.append(body["usergroup"])
        users = self.members.get(body["usergroup"])
        return None if users is None else {"ok": True, "users": users}


def test_a_members_roles_are_their_own_and_their_groups_kept_a_while() -> None:
    from workers.adapters.slack_events import GROUP_CACHE_SECONDS, SlackRoles

    now = [0.0]
    groups = Groups({"S0OPS": ["U222", "U333"]})
    roles = SlackRoles(
        {"U111": ["approver"], "S0OPS": ["ops"], "S0GONE": ["admin"]},
        groups,  # type: ignore[arg-type]
        clock=lambda: now[0],
    )
    assert roles.of("U111") == {"approver"}
    assert roles.of("U222") == {"ops"}  # by its group; a group Slack cannot list gives nothing
    assert roles.of("U444") == frozenset()
    assert sorted(set(groups.asked)) == ["S0GONE", "S0OPS"]
    asked = len(groups.asked)
    roles.of("U333")
    assert len(groups.asked) == asked  # kept
    now[0] = GROUP_CACHE_SECONDS + 1
    roles.of("U333")
    assert len(groups.asked) == asked + 2  # both groups asked again once stale


def test_a_roles_policy_lets_a_member_with_the_role_decide_in_slack(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``update_ticket`` needs the ``approver`` role: a member without it clicks and nothing
    happens; the member ``slack_roles`` names decides."""
    world.deps.settings = replace(
        world.deps.settings,
        approval_policies={"update_ticket": ApprovalPolicy(roles=frozenset({"approver"}))},
    )
    monkeypatch.setenv("AGENTWORKER_SLACK_ROLES", json.dumps({"U111": ["approver"]}))
    bootstrap.reset_aws_deps()
    monkeypatch.setattr(bootstrap, "aws_deps", lambda **_: world.deps)
    ask = _waiting(world)
    value = slack_button_value(THREAD_CID, ask.interrupt_id)
    other = _click("approve", value)
    other["user"]["id"] = "U333"
    calls = len(world.store.calls)
    assert world.call(slack_request(other, form=True))[0] == 200
    assert "append_inbox" not in world.store.calls[calls:]  # no role: nothing recorded
    assert world.call(slack_request(_click("approve", value), form=True))[0] == 200  # U111
    [decision] = world.inbox(THREAD_CID)
    assert decision.message.sender == "slack:T111:U111"
