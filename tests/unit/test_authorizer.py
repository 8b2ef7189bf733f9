"""The WebSocket API's ``$connect`` authorizer and what ``ingest`` does with the principal it
stores: real HS256 tokens, the API Gateway event shapes, in-memory deps."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import jwt
import pytest

from tests.fakes import InMemoryConversationStore, in_memory_aws
from workers import bootstrap
from workers.errors import AuthorizerRefusal
from workers.handlers import authorizer, ingest
from workers.sandbox.emulator import LambdaContextStub

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"
ARN = "arn:aws:execute-api:us-east-1:123456789012:abc123/dev/$connect"


def token(sub: str, tenant: str | None = "acme", **extra: Any) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600, **extra}
    if tenant is not None:
        claims["tenant"] = tenant
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryConversationStore]:
    deps = in_memory_aws(monkeypatch, AGENTWORKER_AUTH_JWT_SECRET=SECRET)
    yield cast(InMemoryConversationStore, deps.store)
    bootstrap.reset_aws_deps()


def context(name: str) -> Any:
    return LambdaContextStub(name, f"arn:aws:lambda:us-east-1:123456789012:function:{name}")


def connect_event(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": ARN,
        "headers": headers,
        "requestContext": {"routeKey": "$connect", "connectionId": "c-1", "eventType": "CONNECT"},
    }


def authorize(headers: dict[str, str]) -> dict[str, Any]:
    answer: dict[str, Any] = authorizer.handler(connect_event(headers), context("authorizer"))
    return answer


def test_a_browser_token_in_the_subprotocol_allows_the_connection(
    store: InMemoryConversationStore,
) -> None:
    protocol = f"agentworker, bearer.{token('u-alice', roles=['agent', 'approver'])}"
    answer = authorize({"Sec-WebSocket-Protocol": protocol})
    assert answer["principalId"] == "u-alice"
    [statement] = answer["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": ARN}
    assert answer["context"] == {
        "principal_id": "u-alice",
        "tenant": "acme",
        "roles": "agent,approver",
    }
    # ingest answers $connect with our subprotocol (never the token).
    connected = ingest.handler(
        {
            "requestContext": {"routeKey": "$connect", "connectionId": "c-1"},
            "headers": {"Sec-WebSocket-Protocol": protocol},
        },
        context("ingest"),
    )
    assert connected == {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "agentworker"}}
    assert authorize({"Authorization": f"Bearer {token('u-bob')}"})["principalId"] == "u-bob"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Sec-WebSocket-Protocol": "agentworker"},
        {"Sec-WebSocket-Protocol": "agentworker, bearer.not-a-jwt"},
        {"Authorization": f"Bearer {jwt.encode({'sub': 'x', 'tenant': 't', 'exp': 1}, SECRET)}"},
        {"Authorization": f"Bearer {token('x', tenant=None)}"},
        {"Authorization": "Bearer " + jwt.encode({"sub": "x", "tenant": "t"}, "k" * 40)},
    ],
)
def test_a_bad_token_is_a_401_and_is_never_logged(
    store: InMemoryConversationStore, headers: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AuthorizerRefusal, match="^Unauthorized$"):
        authorize(headers)
    logged = capsys.readouterr().out
    for value in headers.values():
        assert value.split(".")[-1] not in logged or not value.count(".")


def frame_event(
    frame: dict[str, Any], principal: dict[str, str] | None, connection: str = "c-1"
) -> dict[str, Any]:
    ctx: dict[str, Any] = {"routeKey": "$default", "connectionId": connection}
    if principal is not None:
        ctx["authorizer"] = principal
    return {"requestContext": ctx, "body": json.dumps(frame)}


def test_frames_act_as_the_connections_principal(store: InMemoryConversationStore) -> None:
    alice = authorize({"Authorization": f"Bearer {token('u-alice')}"})["context"]
    eve = authorize({"Authorization": f"Bearer {token('u-eve', tenant='evil')}"})["context"]
    send = {"action": "send", "conversation_id": "ws:acme:1", "text": "hello"}
    first = ingest.handler(frame_event(send, alice), context("ingest"))
    assert first["statusCode"] == 200
    assert store.pending_inbox("ws:acme:1")[0].message.sender == "u-alice"
    refused = ingest.handler(frame_event(send, eve), context("ingest"))
    assert refused["statusCode"] == 404, refused
    # Following someone else's conversation is answered as following one that does not
    # exist (no existence oracle), and records no connection: nothing of it reaches Eve.
    subscribe = {"action": "subscribe", "conversation_id": "ws:acme:1"}
    missing_too = {"action": "subscribe", "conversation_id": "ws:acme:nothing-here"}
    foreign = ingest.handler(frame_event(subscribe, eve, "c-eve"), context("ingest"))
    unknown = ingest.handler(frame_event(missing_too, eve, "c-eve"), context("ingest"))
    assert foreign["statusCode"] == unknown["statusCode"] == 200
    assert json.loads(foreign["body"]) == {"type": "subscribed", "conversation_id": "ws:acme:1"}
    assert json.loads(unknown["body"])["type"] == "subscribed"
    assert store.list_connections("ws:acme:1") == ["c-1"]  # Alice's own, not Eve's
    # With an identity provider, a frame without the authorizer's principal is refused.
    missing = ingest.handler(frame_event(send, None), context("ingest"))
    assert missing["statusCode"] == 401
    assert json.loads(missing["body"])["error"]["reason"] == "missing"
    assert len(store.pending_inbox("ws:acme:1")) == 1


def test_a_resume_frame_is_authorized_like_an_approval_on_aws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 17.1 on the AWS WebSocket: the requester's ``resume`` frame approving their
    own four-eyes tool call is a 403 and writes nothing, like their ``approve`` frame."""
    from dataclasses import replace

    from events.identity import ApprovalPolicy
    from workers.core.steps import TurnSettings, drive_run

    deps = in_memory_aws(monkeypatch, AGENTWORKER_AUTH_JWT_SECRET=SECRET)
    policy = {"update_ticket": ApprovalPolicy.parse("not_requester")}
    deps.settings = replace(
        TurnSettings(), approval_policies=policy, tenant_roles=frozenset({"ops"})
    )
    alice = authorize({"Authorization": f"Bearer {token('u-alice')}"})["context"]
    ops = authorize({"Authorization": f"Bearer {token('u-olga', roles=['ops'])}"})["context"]
    cid = "ws:acme:approve"
    send = {"action": "send", "conversation_id": cid, "text": "please approve-me"}
    assert ingest.handler(frame_event(send, alice), context("ingest"))["statusCode"] == 200
    starter = cast(Any, deps.starter)
    while starter.runs:
        drive_run(deps, starter.runs.pop(0))
    state = deps.store.get_conversation(cid)
    assert state is not None and state.pending_approval is not None
    interrupt_id = state.pending_approval.interrupt_id
    for frame in (
        {"action": "approve", "conversation_id": cid, "interrupt_id": interrupt_id},
        {"action": "resume", "conversation_id": cid, "interrupt_id": interrupt_id, "value": True},
        {
            "action": "resume",
            "conversation_id": cid,
            "interrupt_id": interrupt_id,
            "value": {"approved": True},
        },
    ):
        refused = ingest.handler(frame_event(frame, alice), context("ingest"))
        assert refused["statusCode"] == 403, refused
        assert json.loads(refused["body"])["error"]["code"] == "not_allowed"
    assert deps.store.pending_inbox(cid) == []
    resume: dict[str, Any] = {"action": "resume", "conversation_id": cid, "value": True}
    resume["interrupt_id"] = interrupt_id
    assert ingest.handler(frame_event(resume, ops), context("ingest"))["statusCode"] == 200
