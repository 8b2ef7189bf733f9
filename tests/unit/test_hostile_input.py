"""Hostile input at the AWS entry points (with in-memory deps): a clear 4xx or a typed error,
never a crash, and nothing written; a caller without any identity is nobody. The local
server's cases are in ``tests/functional/test_local_guard.py`` and
``tests/functional/test_fuzz_local.py``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from events.identity import Principal, backend
from events.inbound import InboundMessage, SqsRecord
from events.json_input import MAX_DEPTH, parse_json
from tests.fakes import InMemoryConversationStore, in_memory_aws
from tests.functional.slack_env import SIGNING_SECRET, slack_fixture, slack_request
from workers import bootstrap
from workers.core.steps import accept_message, drive_run
from workers.errors import BadInput
from workers.handlers import approve, feedback, ingest, slack
from workers.sandbox.emulator import LambdaContextStub

DEEP = "[" * 100_000 + "]" * 100_000
NESTED_OBJECT = '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "aws"
SURROGATE = '{"conversation_id": "c1", "text": "hi", "metadata": {"k": "\\ud800"}}'


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryConversationStore]:
    deps = in_memory_aws(monkeypatch, AGENTWORKER_SLACK_SIGNING_SECRET=SIGNING_SECRET)
    yield cast(InMemoryConversationStore, deps.store)
    bootstrap.reset_aws_deps()


def context(name: str) -> Any:
    return LambdaContextStub(name, f"arn:aws:lambda:us-east-1:123456789012:function:{name}")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (DEEP, "too_deep"),
        (NESTED_OBJECT, "too_deep"),
        (SURROGATE, "bad_unicode"),
        ('{"text": "\\udfff"}', "bad_unicode"),
        ('{"\\ud800": 1}', "bad_unicode"),  # a key too
        ("{oops", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        # Numbers: past Python's int-string limit (a ValueError no JSON error handler
        # caught: a 500), past 64 bits (a checkpoint cannot hold it: the turn fails), and
        # what becomes inf or is no JSON at all (stored as null, silently).
        ('{"metadata": {"k": %s}}' % ("1" * 5000), "bad_number"),
        ("-" + "9" * 4400, "bad_number"),
        (f'{{"value": [{2**63}]}}', "bad_number"),
        (str(-(2**63) - 1), "bad_number"),
        ('{"score": 1e999}', "bad_number"),
        ("1" * 400 + ".5", "bad_number"),
        ('{"score": NaN}', "bad_json"),
        ("[Infinity]", "bad_json"),
        ("-Infinity", "bad_json"),
    ],
)
def test_the_parser_refuses_what_would_crash_later(raw: str | bytes, code: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_json(raw)
    assert caught.value.code == code and isinstance(caught.value, ValueError)


def test_the_parser_takes_what_is_fine() -> None:
    value = '{"a": ' * (MAX_DEPTH - 1) + '"ok \u00e9 \U0001f600"' + "}" * (MAX_DEPTH - 1)
    assert parse_json(value) is not None
    assert parse_json(b'{"text": "caf\\u00e9"}') == {"text": "café"}
    edges = f"[{2**63 - 1}, {-(2**63)}, 1e308, -0.0, 5e-324, {'9' * 18}]"
    assert parse_json(edges) == [2**63 - 1, -(2**63), 1e308, -0.0, 5e-324, int("9" * 18)]


def websocket_event(body: str) -> dict[str, Any]:
    return {
        "requestContext": {"routeKey": "$default", "connectionId": "conn-1"},
        "body": body,
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [(DEEP, "too_deep"), (SURROGATE.replace('"c1"', '"c1", "action": "send"'), "bad_unicode")],
)
def test_a_hostile_websocket_frame_is_a_400(
    store: InMemoryConversationStore, body: str, code: str
) -> None:
    answer = ingest.handler(websocket_event(body), context("ingest"))
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"]["code"] == code
    assert store.get_conversation("c1") is None


BACKEND = {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:role/desk"}}}
"""The ``requestContext`` of a backend IAM admitted on the approvals route."""
ALICE = {"sub": "u-alice", "tenant": "acme"}


def jwt_context(claims: dict[str, Any]) -> dict[str, Any]:
    return {"authorizer": {"jwt": {"claims": claims, "scopes": None}}}


def http_event(body: str, caller: dict[str, Any], cid: str = "c1") -> dict[str, Any]:
    return {"body": body, "pathParameters": {"conversation_id": cid}, "requestContext": caller}


@pytest.mark.parametrize(
    ("number", "code"), [("1" * 5000, "bad_number"), ("1e999", "bad_number"), ("NaN", "bad_json")]
)
def test_a_number_out_of_range_is_a_400_at_every_aws_entry_point(
    store: InMemoryConversationStore, number: str, code: str
) -> None:
    """The issue's 5,000-digit integer was a ValueError no handler caught (ingest, approve,
    feedback: an unhandled error); a 400 naming the problem now, wherever it comes in."""

    def body(template: str) -> str:  # json.dumps could not even write these numbers
        return template.replace("NUMBER", number)

    frame = body('{"action": "send", "conversation_id": "c1", "text": "hi", "n": NUMBER}')
    rating = '"conversation_id": "c1", "reply_id": "r", "score": NUMBER'
    connection = {"principal_id": "u-alice", "tenant": "acme"}
    answers = {
        "ingest (WebSocket)": ingest.handler(websocket_event(frame), context("ingest")),
        "approve": approve.handler(
            http_event(body('{"interrupt_id": "i", "approved": NUMBER}'), BACKEND),
            context("approve"),
        ),
        "feedback (HTTP)": feedback.handler(
            http_event(body('{"reply_id": "r", "score": NUMBER}'), jwt_context(ALICE)),
            context("feedback"),
        ),
        "feedback (WebSocket)": feedback.handler(
            {
                "requestContext": {
                    "routeKey": "feedback",
                    "connectionId": "conn-1",
                    "authorizer": connection,
                },
                "body": body('{"action": "feedback", ' + rating + "}"),
            },
            context("feedback"),
        ),
        "slack": slack.handler(
            slack_request(body('{"type": "event_callback", "n": NUMBER}')), context("slack")
        ),
    }
    for name, answer in answers.items():
        assert answer["statusCode"] == 400, (name, answer)
        assert json.loads(answer["body"])["error"]["code"] == code, (name, answer)
    with pytest.raises(BadInput) as caught:  # a failed record: retried, then the DLQ
        SqsRecord.model_validate({"messageId": "m1", "body": frame}).to_inbound()
    assert caught.value.code == code
    assert store.calls == []


@pytest.mark.parametrize("value", [2**70, float("inf"), {"name": "\ud800"}])
def test_an_answer_decoded_elsewhere_is_held_to_the_parsers_bounds(
    store: InMemoryConversationStore, value: Any
) -> None:
    """EventBridge events reach the function decoded by the Lambda runtime, not by
    ``parse_json``: an answer holding an integer past 64 bits would fail the turn of a graph
    that keeps it (a checkpoint cannot hold it), inf would be stored as null."""
    detail = {
        "conversation_id": "c1",
        "kind": "resume",
        "resume": {"interrupt_id": "i", "value": value},
    }
    event = {
        "id": "e-1",
        "detail-type": "agentworker.message",
        "source": "backend",
        "detail": detail,
    }
    with pytest.raises(ValidationError) as caught:
        ingest.handler(event, context("ingest"))
    [problem] = caught.value.errors()
    assert problem["loc"] == ("resume", "value")
    assert problem["type"] in ("bad_number", "bad_unicode")
    assert store.calls == []


def test_a_binary_frame_on_the_aws_websocket_is_a_400(store: InMemoryConversationStore) -> None:
    """API Gateway closes a socket that sends a binary frame (1003); an integration set to
    convert payloads would hand one on base64-encoded: refused as binary, never decoded as
    if it were the frame's text."""
    for handler, route in ((ingest.handler, "$default"), (feedback.handler, "feedback")):
        event = {
            "requestContext": {
                "routeKey": route,
                "connectionId": "conn-1",
                "authorizer": {"principal_id": "u-alice", "tenant": "acme"},
            },
            "body": base64.b64encode(b'{"action": "ping"}').decode(),
            "isBase64Encoded": True,
        }
        answer = handler(event, context("ingest"))
        assert answer["statusCode"] == 400, answer
        assert json.loads(answer["body"])["error"]["code"] == "binary_frame"
    assert store.calls == []


def test_a_hostile_sqs_body_is_a_typed_error_for_the_dlq() -> None:
    record = {"messageId": "m1", "body": DEEP, "eventSourceARN": "arn:aws:sqs:q"}
    with pytest.raises(BadInput):
        SqsRecord.model_validate(record).to_inbound()


@pytest.mark.parametrize(
    ("body", "encoded", "status", "code"),
    [
        ("not base64 !!", True, 400, "bad_request"),
        (DEEP, False, 400, "too_deep"),
        ('{"interrupt_id": "\\ud800", "approved": true}', False, 400, "bad_unicode"),
        ('{"interrupt_id": "i", "approved": "maybe"}', False, 422, "validation_error"),
        ("[1, 2]", False, 422, "validation_error"),
    ],
)
def test_the_approve_endpoint_answers_bad_bodies_with_a_4xx(
    store: InMemoryConversationStore, body: str, encoded: bool, status: int, code: str
) -> None:
    event = {
        "body": body,
        "isBase64Encoded": encoded,
        "pathParameters": {"conversation_id": "c1"},
        "requestContext": BACKEND,
    }
    answer = approve.handler(event, context("approve"))
    assert answer["statusCode"] == status, answer
    assert json.loads(answer["body"])["error"]["code"] == code
    assert store.get_conversation("c1") is None


def test_the_approve_endpoint_takes_a_base64_body(store: InMemoryConversationStore) -> None:
    body = base64.b64encode(b'{"interrupt_id": "i", "approved": true}').decode()
    event = {
        "body": body,
        "isBase64Encoded": True,
        "pathParameters": {"conversation_id": "c1"},
        "requestContext": BACKEND,
    }
    answer = approve.handler(event, context("approve"))
    assert answer["statusCode"] == 404  # parsed; the conversation does not exist
    assert store.get_conversation("c1") is None


def call_slack(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = slack.handler(event, context("slack"))
    return answer["statusCode"], json.loads(answer.get("body") or "{}")


def test_a_signed_slack_body_that_is_hostile_is_a_400(store: InMemoryConversationStore) -> None:
    status, answer = call_slack(slack_request(DEEP))
    assert (status, answer["error"]["code"]) == (400, "too_deep")
    event = slack_fixture("message_thread.json")
    event["event"]["text"] = "\ud800"
    status, answer = call_slack(slack_request(json.dumps(event)))
    assert (status, answer["error"]["code"]) == (400, "bad_unicode")


@pytest.mark.parametrize("timestamp", ["1" * 4000, "1" * 5000, "1e9", "-1", "\u0661" * 10])
def test_a_slack_timestamp_that_is_no_unix_time_is_a_401(
    store: InMemoryConversationStore, timestamp: str
) -> None:
    """Checked before the signature, so anyone can send it: 4,000 digits overflowed the
    float it was compared with (an unhandled error)."""
    event = slack_request(slack_fixture("message_thread.json"))
    event["headers"]["x-slack-request-timestamp"] = timestamp
    status, answer = call_slack(event)
    assert (status, answer["error"]["code"]) == (401, "invalid_signature")
    assert store.calls == []


def test_a_signed_slack_event_that_is_a_string_is_ignored(
    store: InMemoryConversationStore,
) -> None:
    event = slack_fixture("message_thread.json")
    event["event"] = "surprise"
    status, answer = call_slack(slack_request(event))
    assert status == 200 and answer["type"] == "ignored"
    assert store.calls == []


def test_the_aws_websocket_answers_a_throttled_sender_with_429(
    store: InMemoryConversationStore,
) -> None:
    deps = bootstrap.aws_deps()
    deps.settings = replace(deps.settings, quota_messages_per_minute=1)
    frame = '{"action": "send", "conversation_id": "ws:q:1", "text": "hi"}'
    first = ingest.handler(websocket_event(frame), context("ingest"))
    second = ingest.handler(websocket_event(frame.replace("hi", "again")), context("ingest"))
    assert first["statusCode"] == 200 and second["statusCode"] == 429
    assert json.loads(second["body"])["error"]["code"] == "throttled"
    assert len(store.pending_inbox("ws:q:1")) == 1


def user_event(body: dict[str, Any], claims: dict[str, Any], cid: str = "ws:acme:a") -> Any:
    """The HTTP API (payload 2.0) event of the user route: its JWT authorizer verified the
    token and passes the claims (arrays as API Gateway writes them: ``"[a b]"``)."""
    return {
        "body": json.dumps(body),
        "pathParameters": {"conversation_id": cid},
        "requestContext": {"authorizer": {"jwt": {"claims": claims, "scopes": None}}},
    }


def test_users_approve_as_themselves_through_the_jwt_route(
    store: InMemoryConversationStore,
) -> None:
    deps = bootstrap.aws_deps()
    owner = Principal(id="u-alice", tenant="acme")
    accept_message(deps, InboundMessage(conversation_id="ws:acme:a", text="approve-me"), owner)
    drive_run(deps, deps.starter.runs.pop())  # type: ignore[attr-defined]
    waiting = store.get_conversation("ws:acme:a")
    assert waiting is not None and waiting.pending_approval is not None
    decision = {"interrupt_id": waiting.pending_approval.interrupt_id, "approved": True}
    alice = {"sub": "u-alice", "tenant": "acme", "roles": "[agent approver]"}
    for claims, status in [
        ({"sub": "u-eve", "tenant": "evil"}, 404),  # another tenant: it does not exist
        ({"sub": "u-alice"}, 401),  # no tenant claim
    ]:
        answer = approve.handler(user_event(decision, claims), context("approve"))
        assert answer["statusCode"] == status, answer
    forged = approve.handler(user_event(decision | {"sender": "boss"}, alice), context("approve"))
    assert forged["statusCode"] == 422 and json.loads(forged["body"])["error"]["field"] == "sender"
    answer = approve.handler(user_event(decision, alice), context("approve"))
    assert answer["statusCode"] == 202, answer
    [entry] = store.pending_inbox("ws:acme:a")
    assert entry.message.sender == "u-alice" and entry.message.kind == "approval"


def test_a_backend_names_the_approver_on_the_iam_route(store: InMemoryConversationStore) -> None:
    deps = bootstrap.aws_deps()
    backoffice = backend("iam:arn:aws:iam::1:role/desk")
    accept_message(deps, InboundMessage(conversation_id="ticket:5", text="approve-me"), backoffice)
    drive_run(deps, deps.starter.runs.pop())  # type: ignore[attr-defined]
    waiting = store.get_conversation("ticket:5")
    assert waiting is not None and waiting.pending_approval is not None
    body = {"interrupt_id": waiting.pending_approval.interrupt_id, "approved": False}
    event = {
        "body": json.dumps(body | {"sender": "agent-7"}),
        "pathParameters": {"conversation_id": "ticket:5"},
        "requestContext": {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:role/desk"}}},
    }
    answer = approve.handler(event, context("approve"))
    assert answer["statusCode"] == 202
    assert store.pending_inbox("ticket:5")[0].message.sender == "agent-7"


def waiting_for_approval(cid: str) -> str:
    """A conversation a backend opened, waiting on a tool's approval: its interrupt id."""
    deps = bootstrap.aws_deps()
    backoffice = backend("iam:arn:aws:iam::1:role/desk")
    accept_message(deps, InboundMessage(conversation_id=cid, text="approve-me"), backoffice)
    drive_run(deps, deps.starter.runs.pop())  # type: ignore[attr-defined]
    waiting = deps.store.get_conversation(cid)
    assert waiting is not None and waiting.pending_approval is not None
    return waiting.pending_approval.interrupt_id


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param({}, id="no-jwt-no-iam"),
        pytest.param({"authorizer": {"iam": {}}}, id="iam-without-caller"),
        pytest.param({"identity": {"sourceIp": "203.0.113.9"}}, id="rest-identity-without-caller"),
    ],
)
def test_an_approval_without_any_identity_is_a_401_never_a_backend(
    store: InMemoryConversationStore, identity: dict[str, Any]
) -> None:
    """The real HTTP API event with its identity removed: before, it was ``iam:unknown``, a
    trusted backend that may decide any conversation's approval and name the approver."""
    interrupt_id = waiting_for_approval("ticket:5")
    event: dict[str, Any] = json.loads((FIXTURES / "apiGatewayProxyV2Event.json").read_text())
    del event["requestContext"]["authorizer"]
    event["requestContext"] |= identity
    body = {"interrupt_id": interrupt_id, "approved": True, "sender": "boss"}
    event |= {"body": json.dumps(body), "pathParameters": {"conversation_id": "ticket:5"}}
    answer = approve.handler(event, context("approve"))
    assert answer["statusCode"] == 401, answer
    error = json.loads(answer["body"])["error"]
    assert (error["code"], error["reason"]) == ("unauthenticated", "missing")
    assert store.pending_inbox("ticket:5") == []
    state = store.get_conversation("ticket:5")
    assert state is not None and state.status == "awaiting_approval"


def test_a_slack_message_without_a_user_is_ignored(store: InMemoryConversationStore) -> None:
    """Signed by Slack but from nobody: not a shared ``slack:<team>:unknown`` member of the
    channel that posts, spends a quota and answers approvals."""
    event = slack_fixture("message_thread.json")
    del event["event"]["user"]
    status, answer = call_slack(slack_request(event))
    assert (status, answer["type"]) == (200, "ignored")
    assert answer["reason"] == "message without a user"
    assert store.calls == []


def test_a_queued_message_for_another_owners_conversation_goes_to_the_dlq(
    store: InMemoryConversationStore,
) -> None:
    """Issue 17.3 on AWS: a backend's queued message whose id is a user's conversation (the
    backend names no owner, or another one) fails its record, so the queue's dead-letter
    queue keeps it with the reason; naming the owner, it lands there."""
    deps = bootstrap.aws_deps()
    alice = Principal(id="alice", tenant="acme")
    accept_message(deps, InboundMessage(conversation_id="ws:acme:1", text="hi"), alice)

    def record(message_id: str, body: dict[str, Any]) -> dict[str, Any]:
        event = json.loads((FIXTURES / "sqsEvent.json").read_text())
        first: dict[str, Any] = event["Records"][0]
        return {**first, "messageId": message_id, "body": json.dumps(body)}

    stray = {"conversation_id": "ws:acme:1", "text": "from the desk"}
    elsewhere = {**stray, "tenant": "globex", "owner": "alice"}
    named = {**stray, "tenant": "acme", "owner": "alice"}
    for message_id, body in (("stray", stray), ("elsewhere", elsewhere)):
        own = record(f"own-{message_id}", {"conversation_id": "ticket:9", "text": "fine"})
        batch = {"Records": [record(message_id, body), own]}
        answer = ingest.handler(batch, context("ingest"))
        assert answer["batchItemFailures"] == [{"itemIdentifier": message_id}]
    answer = ingest.handler({"Records": [record("named", named)]}, context("ingest"))
    assert answer["batchItemFailures"] == []
    texts = [e.message.text for e in store.pending_inbox("ws:acme:1")]
    assert texts == ["hi", "from the desk"]
