"""Boundary models: every sample validates, bad input names the field, fixtures parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from events.inbound import (
    MAX_MESSAGE_BYTES,
    EventBridgeEvent,
    InboundMessage,
    MessageRequest,
    SlackEventEnvelope,
    SqsEvent,
    WsDecide,
)
from events.schemas import SCHEMA_MODELS, schema_of
from events.workflow import RunRef, run_name

SAMPLES = sorted((Path(__file__).parents[2] / "events" / "samples").glob("*.json"))
FIXTURES = Path(__file__).parents[1] / "fixtures"  # copied from shared/fixtures


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 10


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_validates_against_its_model(path: Path) -> None:
    model = SCHEMA_MODELS[path.name.split(".")[0]]
    data = json.loads(path.read_text())
    parsed: Any = TypeAdapter(model).validate_python(data)
    assert parsed is not None
    if isinstance(parsed, MessageRequest):
        assert parsed.to_inbound("ws:a:b").conversation_id == "ws:a:b"
    elif hasattr(parsed, "to_inbound"):
        assert isinstance(parsed.to_inbound(), InboundMessage)
    if isinstance(parsed, SqsEvent):
        assert parsed.records[0].to_inbound().conversation_id == "ticket:4711"


@pytest.mark.parametrize("name", list(SCHEMA_MODELS))
def test_every_model_has_a_json_schema(name: str) -> None:
    schema = schema_of(name)
    assert "properties" in schema or "oneOf" in schema or "$defs" in schema


def test_text_over_256_kb_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        MessageRequest(text="x" * (MAX_MESSAGE_BYTES + 1))
    first = err.value.errors()[0]
    assert first["loc"] == ("text",) and first["type"] == "too_large"
    MessageRequest(text="é" * (MAX_MESSAGE_BYTES // 2))  # 256 KB of UTF-8 exactly is fine


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"conversation_id": "x", "text": ""}, None),
        ({"conversation_id": "bad id with spaces", "text": "hi"}, "conversation_id"),
        ({"conversation_id": "x", "text": 5}, "text"),
        ({"conversation_id": "x", "kind": "approval"}, None),
        ({"conversation_id": "x", "text": "hi", "policy": "sometimes"}, "policy"),
        ({"conversation_id": "x", "text": "hi", "surprise": 1}, "surprise"),
    ],
)
def test_bad_messages_are_refused(data: dict[str, Any], field: str | None) -> None:
    with pytest.raises(ValidationError) as err:
        InboundMessage.model_validate(data)
    if field is not None:
        assert err.value.errors()[0]["loc"][0] == field


def test_dedupe_key_defaults_to_the_message_id() -> None:
    m = InboundMessage(conversation_id="x", text="hi")
    assert m.effective_dedupe_key == m.message_id


def test_approval_frame_has_a_stable_dedupe_key() -> None:
    frame = WsDecide(action="deny", conversation_id="c", interrupt_id="i9", reason="no")
    msg = frame.to_inbound()
    assert msg.effective_dedupe_key == "decision:i9" and msg.approval is not None
    assert msg.approval.approved is False


def test_run_names_are_safe_and_unique_per_token() -> None:
    ref = RunRef(conversation_id="slack:T1:C1:1700000000.0001", token=3)
    assert ref.run_id == "slack-T1-C1-1700000000-0001-3"
    assert run_name("a", 1) != run_name("a", 2)


def test_real_sqs_envelope_carries_our_message() -> None:
    event = json.loads((FIXTURES / "aws" / "sqsEvent.json").read_text())
    event["Records"][0]["body"] = json.dumps({"conversation_id": "ticket:1", "text": "hello"})
    parsed = SqsEvent.model_validate(event)
    msg = parsed.records[0].to_inbound()
    assert msg.channel == "sqs" and msg.dedupe_key == f"sqs:{parsed.records[0].message_id}"
    with pytest.raises(ValidationError):
        parsed.records[1].to_inbound()  # the fixture's own body is not one of our messages


def test_a_null_dedupe_key_in_a_queue_body_gets_the_queue_default() -> None:
    event = json.loads((FIXTURES / "aws" / "sqsEvent.json").read_text())
    body = {"conversation_id": "ticket:1", "text": "hi", "dedupe_key": None, "channel": None}
    event["Records"][0]["body"] = json.dumps(body)
    record = SqsEvent.model_validate(event).records[0]
    msg = record.to_inbound()
    assert msg.dedupe_key == f"sqs:{record.message_id}" and msg.channel == "sqs"


def test_real_eventbridge_envelope_carries_our_message() -> None:
    event = json.loads((FIXTURES / "aws" / "eventBridgeEvent.json").read_text())
    with pytest.raises(ValueError, match="unexpected detail-type"):
        EventBridgeEvent.model_validate(event).to_inbound()  # an EC2 notification
    event["detail-type"] = "agentworker.message"
    event["detail"] = {"conversation_id": "ticket:1", "text": "hello"}
    msg = EventBridgeEvent.model_validate(event).to_inbound()
    assert msg.channel == "eventbridge" and msg.dedupe_key == f"eventbridge:{event['id']}"


def test_a_ticket_event_on_eventbridge_becomes_the_ticket_conversation() -> None:
    event = json.loads((FIXTURES / "aws" / "eventBridgeEvent.json").read_text())
    event["detail-type"] = "ticket.created"
    event["detail"] = {"ticket_id": "4711", "subject": "Fridge", "body": "It is warm."}
    msg = EventBridgeEvent.model_validate(event).to_inbound()
    assert (msg.conversation_id, msg.channel) == ("ticket:4711", "ticket")
    assert msg.dedupe_key == f"ticket:{event['id']}" and msg.text == "Fridge\n\nIt is warm."
    event["detail-type"] = "ticket.deleted"
    with pytest.raises(ValueError):
        EventBridgeEvent.model_validate(event).to_inbound()


@pytest.mark.parametrize("name", ["app_mention.json", "message_im.json", "message_thread.json"])
def test_real_slack_events_become_messages_keyed_by_channel_and_ts(name: str) -> None:
    body = json.loads((FIXTURES / "slack" / name).read_text())
    envelope = SlackEventEnvelope.model_validate(body)
    msg = envelope.to_inbound()
    ev = body["event"]
    assert msg.dedupe_key == f"slack:{ev['channel']}:{ev['ts']}"
    root = ev.get("thread_ts") or ev["ts"]
    assert msg.conversation_id == f"slack:{body['team_id']}:{ev['channel']}:{root}"
    assert not envelope.is_from_bot()


@pytest.mark.parametrize("name", ["bot_message.json", "bot_message_subtype.json"])
def test_slack_bot_messages_are_recognised(name: str) -> None:
    body = json.loads((FIXTURES / "slack" / name).read_text())
    assert SlackEventEnvelope.model_validate(body).is_from_bot()


def test_the_mention_that_addressed_the_bot_is_not_part_of_the_question() -> None:
    body = json.loads((FIXTURES / "slack" / "app_mention.json").read_text())
    assert body["event"]["text"] == "<@U111> hey"
    assert SlackEventEnvelope.model_validate(body).to_inbound().text == "hey"
    body["event"]["text"] = "<@U111|bot> <@U222> close ticket 3 for <@U333>"
    assert SlackEventEnvelope.model_validate(body).to_inbound().text == "close ticket 3 for <@U333>"
    body["event"]["text"] = "<@U111>"
    assert SlackEventEnvelope.model_validate(body).to_inbound().text == "<@U111>"
