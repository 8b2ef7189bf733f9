"""Property-based fuzzing of every AWS entry point (in-memory deps): ``CASES`` hostile
inputs each (any bytes, any JSON, deep nesting, lone surrogates, numbers out of range,
binary WebSocket frames, almost-right bodies, callers with and without an identity), and
each gets a 2xx/4xx answer or a typed error; none crashes a handler or gets a 5xx."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.fakes import in_memory_aws
from tests.functional.slack_env import SIGNING_SECRET, slack_request
from tests.fuzz import (
    BATCH,
    BATCHED,
    CASES,
    hostile,
    id_field,
    json_values,
    shaped,
    text_field,
    ws_frames,
)
from workers import bootstrap
from workers.core.steps import Deps
from workers.errors import PermanentError
from workers.handlers import approve, feedback, ingest, slack
from workers.sandbox.emulator import LambdaContextStub

ANSWERED = frozenset({200, 202, 400, 401, 403, 404, 409, 413, 415, 422, 429})


@pytest.fixture
def deps(monkeypatch: pytest.MonkeyPatch) -> Iterator[Deps]:
    yield in_memory_aws(monkeypatch, AGENTWORKER_SLACK_SIGNING_SECRET=SIGNING_SECRET)
    bootstrap.reset_aws_deps()


def context(name: str) -> Any:
    return LambdaContextStub(name, f"arn:aws:lambda:us-east-1:123456789012:function:{name}")


def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> int:
    """Run ``check`` on ``CASES`` examples of ``strategy``; the number run."""
    ran = [0]

    @BATCHED
    @given(st.lists(strategy, min_size=BATCH, max_size=BATCH))
    def run(cases: list[Any]) -> None:
        for case in cases:
            ran[0] += 1
            check(case)

    run()
    return ran[0]


def text(case: str | bytes) -> str:
    return case if isinstance(case, str) else case.decode("utf-8", "replace")


MESSAGE = {
    "conversation_id": id_field,
    "text": text_field,
    "kind": st.sampled_from(["user", "approval", "resume", "other"]),
    "approval": json_values | st.just({"interrupt_id": "i", "approved": True}),
    "resume": json_values,
    "sender": text_field,
    "tenant": text_field,
    "metadata": json_values,
    "policy": st.sampled_from(["enqueue", "merge", "bogus"]),
}


def ws_event(body: str | bytes, route: str = "$default") -> dict[str, Any]:
    """A frame as API Gateway hands it on; a binary one base64-encoded (what an integration
    converting payloads passes; the gateway itself closes a socket that sends one)."""
    ctx = {"routeKey": route, "connectionId": "conn-fuzz"}
    if isinstance(body, bytes):
        return {
            "requestContext": ctx,
            "body": base64.b64encode(body).decode(),
            "isBase64Encoded": True,
        }
    return {"requestContext": ctx, "body": body, "isBase64Encoded": False}


def test_websocket_frames(deps: Deps) -> None:
    def check(body: str | bytes) -> None:
        answer = ingest.handler(ws_event(body), context("ingest"))
        assert answer["statusCode"] in ANSWERED, answer
        if answer["statusCode"] >= 400:
            assert json.loads(answer["body"])["error"]["code"]

    assert fuzz(hostile(ws_frames), check) >= CASES


def sqs_record(message_id: str, body: str, group: str) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": "r",
        "body": body,
        "attributes": {"MessageGroupId": group, "ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:in.fifo",
        "awsRegion": "us-east-1",
    }


def test_sqs_bodies(deps: Deps) -> None:
    seen = [0]

    def check(body: str | bytes) -> None:
        seen[0] += 1
        good = json.dumps({"conversation_id": f"sqs:fuzz:{seen[0]}", "text": "hello"})
        records = [sqs_record("bad", text(body), "g-bad"), sqs_record("good", good, "g-good")]
        answer = ingest.handler({"Records": records}, context("ingest"))
        # A bad body is a failed record (back to the queue, then the DLQ), never a crash,
        # and the rest of the batch is accepted.
        assert answer["batchItemFailures"] in ([], [{"itemIdentifier": "bad"}])
        assert deps.store.get_conversation(f"sqs:fuzz:{seen[0]}") is not None

    assert fuzz(hostile(shaped(MESSAGE)), check) >= CASES


def test_eventbridge_details(deps: Deps) -> None:
    details = st.one_of(
        st.dictionaries(st.text(max_size=12), json_values, max_size=6),
        st.fixed_dictionaries({}, optional=MESSAGE),
        st.fixed_dictionaries(
            {},
            optional={"ticket_id": text_field, "event_id": text_field, "body": text_field},
        ),
    )
    types = st.sampled_from(["agentworker.message", "ticket.created", "ticket.bogus", "x"])

    def check(case: tuple[str, dict[str, Any]]) -> None:
        detail_type, detail = case
        event = {"id": "e-1", "detail-type": detail_type, "source": "fuzz", "detail": detail}
        try:
            answer = ingest.handler(event, context("ingest"))
        except (PermanentError, ValidationError):
            return  # typed: EventBridge retries, then its DLQ
        assert "message_id" in answer

    assert fuzz(st.tuples(types, details), check) >= CASES


CALLERS = st.sampled_from(
    [
        {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:role/desk"}}},  # a backend
        {"authorizer": {"jwt": {"claims": {"sub": "u-fuzz", "tenant": "acme"}}}},  # a user
        {"authorizer": {"jwt": {"claims": {"sub": "u-fuzz"}}}},  # no tenant claim
        {"identity": {"sourceIp": "203.0.113.9"}},  # nobody
        {},
    ]
)
"""The ``requestContext`` of an HTTP API route: who API Gateway says is calling."""


def http_event(raw: str | bytes, encoded: bool, cid: Any, caller: dict[str, Any]) -> Any:
    data = text(raw)
    if encoded and isinstance(raw, bytes):
        data = base64.b64encode(raw).decode()
    return {
        "body": data,
        "isBase64Encoded": encoded,
        "pathParameters": {"conversation_id": cid},
        "requestContext": caller,
    }


API_ROUTES = st.sampled_from(
    [
        ("POST", "/threads"),
        ("POST", "/threads/search"),
        ("GET", "/threads/{id}"),
        ("PATCH", "/threads/{id}"),
        ("DELETE", "/threads/{id}"),
        ("GET", "/threads/{id}/state"),
        ("POST", "/threads/{id}/history"),
        ("POST", "/threads/{id}/runs"),
        ("POST", "/threads/{id}/runs/wait"),
        ("POST", "/threads/{id}/runs/stream"),
        ("GET", "/threads/{id}/runs"),
        ("GET", "/threads/{id}/runs/{id}"),
        ("POST", "/threads/{id}/runs/{id}/cancel"),
        ("GET", "/threads/{id}/runs/{id}/stream"),
        ("POST", "/runs/wait"),
        ("POST", "/assistants/search"),
        ("GET", "/assistants/{id}/schemas"),
        ("POST", "/v1/conversations/{id}/schedules"),
        ("GET", "/v1/conversations/{id}/schedules"),
        ("DELETE", "/v1/conversations/{id}/schedules/{id}"),
        ("POST", "/v1/conversations/{id}/webhooks"),
        ("GET", "/v1/conversations/{id}/webhooks"),
        ("DELETE", "/v1/conversations/{id}/webhooks/{id}"),
    ]
)
"""The ``api`` function's routes, with a fuzzed id wherever one goes."""
RUN_BODY = shaped(
    {
        "assistant_id": st.sampled_from(["agentworker", "x", ""]) | text_field,
        "input": json_values,
        "command": json_values,
        "metadata": json_values,
        "config": json_values,
        "context": json_values,
        "multitask_strategy": st.sampled_from(["reject", "enqueue", "interrupt"]) | text_field,
        "stream_mode": json_values,
        "thread_id": id_field,
        "limit": json_values,
        # the schedules' and webhooks' bodies
        "text": text_field,
        "in_seconds": json_values,
        "cron": st.sampled_from(["0 9 * * *", "* *", "61 * * * *"]) | text_field,
        "timezone": st.sampled_from(["Europe/Paris", "Mars/Base"]) | text_field,
        "url": st.sampled_from(["https://hooks.example.com/x", "http://127.0.0.1/"]) | text_field,
        "events": json_values,
        "secret": text_field,
    }
)


def api_event(
    route: tuple[str, str], ident: Any, raw: str | bytes, encoded: bool, caller: dict[str, Any]
) -> dict[str, Any]:
    method, template = route
    path = template.replace("{id}", str(ident).replace("/", "%2F").replace("?", "%3F"))
    event: dict[str, Any] = http_event(raw, encoded, ident, caller)
    event["rawPath"] = path
    event["requestContext"] = {**caller, "http": {"method": method, "path": path}}
    event["headers"] = {"last-event-id": str(ident)} if "stream" in path else {}
    return event


def test_the_approve_route_and_the_api_function(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``approve`` route and the ``api`` function (the Agent Server API), one case each
    in turn; a run waits for nothing here (no turn runs on these deps)."""
    from workers.adapters.aws.api_runtime import AwsApiRuntime
    from workers.handlers import api

    monkeypatch.setattr(AwsApiRuntime, "wait_limit_seconds", 0.0)
    body = shaped({"interrupt_id": text_field, "approved": json_values, "reason": text_field})
    cases = st.one_of(
        st.tuples(hostile(body), st.booleans(), id_field, CALLERS),
        st.tuples(API_ROUTES, id_field, hostile(RUN_BODY), st.booleans(), CALLERS),
    )

    def check(case: tuple[Any, ...]) -> None:
        nobody = not case[-1].get("authorizer")
        if len(case) == 4:
            answer = approve.handler(http_event(*case), context("approve"))
            assert answer["statusCode"] in ({401} if nobody else ANSWERED), answer
        else:  # nobody: a 401, unless refused before any route (no such path, not base64)
            answer = api.handler(api_event(*case), context("api"))
            assert answer["statusCode"] in ANSWERED, answer
            if nobody and answer["statusCode"] != 401:
                routing = '"message":"Not Found"' in answer["body"]
                assert answer["statusCode"] == 400 or routing, answer

    assert fuzz(cases, check) >= CASES


def test_the_feedback_routes(deps: Deps) -> None:
    """The HTTP route and the WebSocket route ``feedback``, one case each in turn."""
    fields = {"reply_id": text_field, "score": json_values, "comment": text_field}
    frame = shaped(
        {**fields, "action": st.sampled_from(["feedback", "send"]), "conversation_id": id_field}
    )
    cases = st.one_of(
        st.tuples(hostile(shaped(fields)), st.booleans(), id_field, CALLERS),
        st.tuples(hostile(frame)),
    )

    def check(case: tuple[Any, ...]) -> None:
        event = http_event(*case) if len(case) == 4 else ws_event(case[0], route="feedback")
        answer = feedback.handler(event, context("feedback"))
        assert answer["statusCode"] in ANSWERED, answer

    assert fuzz(cases, check) >= CASES


def test_slack_events(deps: Deps) -> None:
    kinds = ["message", "app_mention", "reaction_added", "reaction_removed", "other"]
    item = st.fixed_dictionaries(
        {"type": st.sampled_from(["message", "file"]) | json_values, "channel": id_field},
        optional={"ts": text_field},
    )
    event = st.fixed_dictionaries(
        {
            "type": st.sampled_from([*kinds, "assistant_thread_started"]) | json_values,
            "channel": id_field,
            "ts": text_field,
        },
        optional={
            "text": text_field,
            "user": text_field,
            "thread_ts": text_field,
            "reaction": st.sampled_from(["+1", "-1::skin-tone-2", "tada"]) | json_values,
            "item": item | json_values,
            "assistant_thread": json_values,
        },
    )
    body = shaped(
        {
            "type": st.sampled_from(["event_callback", "url_verification"]) | json_values,
            "team_id": text_field,
            "event_id": text_field,
            "event": event | json_values,
            "challenge": text_field,
        }
    )

    def check(raw: str | bytes) -> None:
        answer = slack.handler(slack_request(text(raw)), context("slack"))
        assert answer["statusCode"] in ANSWERED, answer

    assert fuzz(hostile(body), check) >= CASES


def test_slack_clicks(deps: Deps) -> None:
    action = st.fixed_dictionaries(
        {"action_id": st.sampled_from(["approve", "deny", "x"]), "value": text_field}
    )
    payload = shaped(
        {
            "type": st.sampled_from(["block_actions", "view_submission"]) | json_values,
            "user": st.fixed_dictionaries({"id": text_field}) | json_values,
            "team": st.fixed_dictionaries({"id": text_field}) | json_values,
            "channel": st.fixed_dictionaries({"id": text_field}) | json_values,
            "actions": st.lists(action, max_size=3) | json_values,
        }
    )

    def check(raw: str | bytes) -> None:
        answer = slack.handler(slack_request(text(raw), form=True), context("slack"))
        assert answer["statusCode"] in ANSWERED, answer

    assert fuzz(hostile(payload), check) >= CASES
