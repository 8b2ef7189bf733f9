"""The AWS ``feedback`` function (in-memory deps): the HTTP API route and the WebSocket route
``feedback`` rate a reply as the caller, and refuse the rest with a 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from events.identity import Principal
from events.inbound import InboundMessage
from tests.fakes import RecordingSink, RecordingStarter, in_memory_aws
from tests.unit.test_feedback import FeedbackRecorder
from tests.unit.test_hostile_input import DEEP, FIXTURES, context, user_event
from workers import bootstrap
from workers.core.steps import Deps, accept_message, drive_run
from workers.handlers import feedback, ingest

CID = "ws:acme:rated"
ALICE = {"sub": "u-alice", "tenant": "acme"}


@pytest.fixture
def deps(monkeypatch: pytest.MonkeyPatch) -> Iterator[Deps]:
    deps = in_memory_aws(monkeypatch)
    deps.tracer = FeedbackRecorder()
    yield deps
    bootstrap.reset_aws_deps()


@pytest.fixture
def reply_id(deps: Deps) -> str:
    owner = Principal(id="u-alice", tenant="acme")
    accept_message(deps, InboundMessage(conversation_id=CID, text="hello"), owner)
    starter = deps.starter
    assert isinstance(starter, RecordingStarter)
    drive_run(deps, starter.runs.pop())
    sink = deps.sink
    assert isinstance(sink, RecordingSink)
    reply_id: str = sink.sent[-1].reply_id
    return reply_id


def ws_event(frame: Any, principal_id: str | None = "u-alice", tenant: str = "acme") -> Any:
    authorizer = {"principal_id": principal_id, "tenant": tenant} if principal_id else None
    body = frame if isinstance(frame, str) else json.dumps(frame)
    ctx = {"routeKey": "feedback", "connectionId": "c-1", "authorizer": authorizer}
    return {"requestContext": ctx, "body": body}


def given(deps: Deps) -> list[Any]:
    tracer = deps.tracer
    assert isinstance(tracer, FeedbackRecorder)
    return tracer.given


def test_the_http_route_rates_as_the_tokens_principal(deps: Deps, reply_id: str) -> None:
    body = {"reply_id": reply_id, "score": -1, "comment": "no"}
    for claims, status in [({"sub": "u-eve", "tenant": "evil"}, 404), ({"sub": "u-alice"}, 401)]:
        answer = feedback.handler(user_event(body, claims, CID), context("feedback"))
        assert answer["statusCode"] == status, answer
    assert given(deps) == []
    answer = feedback.handler(user_event(body, ALICE, CID), context("feedback"))
    assert answer["statusCode"] == 202, answer
    assert json.loads(answer["body"])["recorded"] is True
    [(_, rating)] = given(deps)
    assert (rating.value, rating.source_id, rating.rationale) == (-1, "u-alice", "no")


def test_a_rating_without_any_identity_is_a_401_never_a_backend(deps: Deps, reply_id: str) -> None:
    """The real HTTP API event with its identity removed rated the reply as ``iam:unknown``,
    a trusted backend that may act on any conversation."""
    event: dict[str, Any] = json.loads((FIXTURES / "apiGatewayProxyV2Event.json").read_text())
    del event["requestContext"]["authorizer"]
    event["pathParameters"] = {"conversation_id": CID}
    event["body"] = json.dumps({"reply_id": reply_id, "score": -1})
    answer = feedback.handler(event, context("feedback"))
    assert answer["statusCode"] == 401, answer
    error = json.loads(answer["body"])["error"]
    assert (error["code"], error["reason"]) == ("unauthenticated", "missing")
    assert given(deps) == []


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("{oops", 400, None),
        (DEEP, 400, "body"),
        ("[1]", 422, "body"),
        ({"score": 1}, 422, "reply_id"),
        ({"reply_id": "R", "score": 3}, 422, "score"),
        ({"reply_id": "R", "score": "1"}, 422, "score"),
        ({"reply_id": "R", "score": 1, "comment": "x" * 2001}, 422, "comment"),
        ({"reply_id": "nope", "score": 1}, 404, "reply_id"),
    ],
)
def test_the_http_route_refuses_bad_bodies(
    deps: Deps, reply_id: str, body: Any, status: int, field: str | None
) -> None:
    if isinstance(body, dict) and body.get("reply_id") == "R":
        body = {**body, "reply_id": reply_id}
    event = user_event({}, ALICE, CID)
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    answer = feedback.handler(event, context("feedback"))
    assert answer["statusCode"] == status, answer
    assert json.loads(answer["body"])["error"]["field"] == field
    bad_id = feedback.handler(user_event({}, ALICE, "bad id!"), context("feedback"))
    assert bad_id["statusCode"] == 422
    assert given(deps) == []


def test_the_websocket_route_rates_as_the_connections_principal(deps: Deps, reply_id: str) -> None:
    frame = {"action": "feedback", "conversation_id": CID, "reply_id": reply_id, "score": 1}
    stranger = feedback.handler(ws_event(frame, "u-eve", "evil"), context("feedback"))
    assert stranger["statusCode"] == 404
    for bad, field in [
        ({**frame, "score": 0}, "score"),
        ({**frame, "reply_id": ""}, "reply_id"),
        ({k: v for k, v in frame.items() if k != "conversation_id"}, "conversation_id"),
    ]:
        answer = feedback.handler(ws_event(bad), context("feedback"))
        assert answer["statusCode"] == 422
        assert json.loads(answer["body"])["error"]["field"] == field
    assert feedback.handler(ws_event("{oops"), context("feedback"))["statusCode"] == 400
    assert given(deps) == []
    answer = feedback.handler(ws_event(frame), context("feedback"))
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["type"] == "feedback"
    [(_, rating)] = given(deps)
    assert (rating.value, rating.source_id) == (1, "u-alice")


def test_a_feedback_frame_on_the_default_route_says_where_it_belongs(deps: Deps) -> None:
    frame = {"action": "feedback", "conversation_id": CID, "reply_id": "r", "score": 1}
    event = ws_event(frame)
    event["requestContext"]["routeKey"] = "$default"
    answer = ingest.handler(event, context("ingest"))
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["error"]["code"] == "wrong_route"


def test_ratings_spend_the_quota_on_aws_and_are_refused_with_429(deps: Deps, reply_id: str) -> None:
    """Issue 17.13 on AWS: a rating spends the minute's messages quota like any write; past
    it, the HTTP route answers 429 with ``Retry-After`` and the WebSocket route ``throttled``."""
    from dataclasses import replace

    deps.settings = replace(deps.settings, quota_messages_per_minute=1)
    body = {"reply_id": reply_id, "score": 1}
    first = feedback.handler(user_event(body, ALICE, CID), context("feedback"))
    assert first["statusCode"] == 202, first
    refused = feedback.handler(user_event(body, ALICE, CID), context("feedback"))
    assert refused["statusCode"] == 429, refused
    assert json.loads(refused["body"])["error"]["code"] == "throttled"
    assert int(refused["headers"]["retry-after"]) >= 1
    frame = {"action": "feedback", "conversation_id": CID, "reply_id": reply_id, "score": 1}
    over = feedback.handler(ws_event(frame), context("feedback"))
    assert json.loads(over["body"])["error"]["code"] == "throttled"
    assert len(given(deps)) == 1
