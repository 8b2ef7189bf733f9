"""Feedback on the real server (tracing on): ``POST .../feedback`` and the WebSocket action
``feedback`` become MLflow assessments on the reply's turn trace; bad input is a 4xx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from events.inbound import MAX_FEEDBACK_COMMENT
from tests.functional.server_process import ServerProcess, assessments
from tests.functional.test_recovery import answers, send, view, wait_answered


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    state = tmp_path_factory.mktemp("feedback")
    with ServerProcess(state, env={"AGENTWORKER_TRACING": "true"}) as srv:
        yield srv


def rate(srv: ServerProcess, cid: str, body: Any, **kw: Any) -> httpx.Response:
    headers = {**srv.auth, **kw.pop("headers", {})}
    url = f"{srv.url}/v1/conversations/{cid}/feedback"
    if isinstance(body, bytes | str):
        headers.setdefault("content-type", "application/json")
        return httpx.post(url, content=body, headers=headers, timeout=10, **kw)
    return httpx.post(url, json=body, headers=headers, timeout=10, **kw)


def reply_to(srv: ServerProcess, cid: str, text: str) -> dict[str, Any]:
    message_id = send(srv, cid, text)
    wait_answered(srv, cid, [message_id])
    [reply] = answers(srv, cid, message_id)
    return reply


def test_a_thumb_down_over_http_and_up_over_the_websocket_reach_the_turns_trace(
    server: ServerProcess,
) -> None:
    cid = "ws:local:rated"
    first = reply_to(server, cid, "hello")
    second = reply_to(server, cid, "and again")
    comment = "wrong answer, write to me at jane.doe@example.com"
    resp = rate(server, cid, {"reply_id": first["reply_id"], "score": -1, "comment": comment})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {
        "type": "feedback",
        "conversation_id": cid,
        "reply_id": first["reply_id"],
        "score": -1,
        "recorded": True,
    }

    async def thumb_up() -> list[dict[str, Any]]:
        async with websockets.connect(server.ws_url, additional_headers=server.auth) as ws:
            frames = [
                {"action": "feedback", "conversation_id": cid, "reply_id": second["reply_id"]},
                {
                    "action": "feedback",
                    "conversation_id": cid,
                    "reply_id": second["reply_id"],
                    "score": 1,
                },
            ]
            got = []
            for frame in frames:
                await ws.send(json.dumps(frame))
                got.append(json.loads(await ws.recv()))
            return got

    missing_score, ack = asyncio.run(thumb_up())
    assert missing_score["error"]["field"] == "score"
    assert ack["type"] == "feedback" and ack["reply_id"] == second["reply_id"]

    sender = view(server, cid)["messages"][0]["sender"]
    [down] = assessments(server.state_dir, f"tags.turn_id = '{first['turn_id']}'")
    assert down.value == -1 and down.source.source_type == "HUMAN"
    assert down.source.source_id == sender
    assert down.rationale is not None and "wrong answer" in down.rationale
    assert "jane.doe@example.com" not in down.rationale  # the redaction hook ran
    assert down.metadata == {"reply_id": first["reply_id"]}
    [up] = assessments(server.state_dir, f"tags.turn_id = '{second['turn_id']}'")
    assert up.value == 1 and up.source.source_id == sender


@pytest.fixture(scope="module")
def reply_id(server: ServerProcess) -> str:
    reply_id: str = reply_to(server, "ws:local:hostile", "rate me")["reply_id"]
    return reply_id


HOSTILE: list[tuple[Any, int, str | None]] = [
    (b"{nope", 400, None),
    (b"[1, 2]", 422, "body"),
    (b'"just a string"', 422, "body"),
    ({}, 422, "reply_id"),
    ({"score": 1}, 422, "reply_id"),
    ({"reply_id": "R"}, 422, "score"),
    ({"reply_id": "R", "score": 0}, 422, "score"),
    ({"reply_id": "R", "score": 2}, 422, "score"),
    ({"reply_id": "R", "score": "1"}, 422, "score"),
    ({"reply_id": "R", "score": 1.0}, 422, "score"),
    ({"reply_id": "R", "score": True}, 422, "score"),
    ({"reply_id": "R", "score": None}, 422, "score"),
    ({"reply_id": 7, "score": 1}, 422, "reply_id"),
    ({"reply_id": "", "score": 1}, 422, "reply_id"),
    ({"reply_id": "x" * 5000, "score": 1}, 422, "reply_id"),
    ({"reply_id": "R", "score": 1, "comment": 5}, 422, "comment"),
    ({"reply_id": "R", "score": 1, "comment": "x" * (MAX_FEEDBACK_COMMENT + 1)}, 422, "comment"),
    ({"reply_id": "R", "score": 1, "extra": "no"}, 422, "extra"),
    ({"reply_id": "R", "score": 1, "sender": "mallory"}, 422, "sender"),
    (b'{"reply_id": "R", "score": 1, "comment": "\\ud800"}', 400, "body"),
    (b"[" * 10_000, 400, "body"),
    ({"reply_id": "no-such-reply", "score": 1}, 404, "reply_id"),
]


@pytest.mark.parametrize(("body", "status", "field"), HOSTILE)
def test_hostile_feedback_gets_a_4xx_naming_the_field(
    server: ServerProcess, reply_id: str, body: Any, status: int, field: str | None
) -> None:
    if isinstance(body, dict) and body.get("reply_id") == "R":
        body = {**body, "reply_id": reply_id}
    resp = rate(server, "ws:local:hostile", body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["field"] == field, error


def test_feedback_elsewhere_or_in_another_form_is_refused(
    server: ServerProcess, reply_id: str
) -> None:
    body = {"reply_id": reply_id, "score": 1}
    other = rate(server, "ws:local:never-created", body)
    assert other.status_code == 404 and other.json()["error"]["field"] == "conversation_id"
    assert rate(server, "bad id!", body).status_code == 422
    form = rate(server, "ws:local:hostile", "reply_id=x", headers={"content-type": "text/plain"})
    assert form.status_code == 415
    unauthenticated = httpx.post(
        f"{server.url}/v1/conversations/ws:local:hostile/feedback", json=body, timeout=10
    )
    assert unauthenticated.status_code == 401
    huge = rate(server, "ws:local:hostile", b'{"comment": "' + b"x" * (2 << 20) + b'"}')
    assert huge.status_code == 413


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"conversation_id": "ws:local:hostile", "score": 1}, "reply_id"),
        ({"conversation_id": "ws:local:hostile", "reply_id": "R", "score": "up"}, "score"),
        ({"conversation_id": "ws:local:hostile", "reply_id": "R", "score": -2}, "score"),
        ({"reply_id": "R", "score": 1}, "conversation_id"),
        ({"conversation_id": "ws:local:hostile", "reply_id": "nope", "score": 1}, "reply_id"),
        ({"conversation_id": "ws:local:elsewhere", "reply_id": "R", "score": 1}, "conversation_id"),
    ],
)
def test_bad_feedback_frames_get_error_frames_and_the_socket_stays_open(
    server: ServerProcess, reply_id: str, frame: dict[str, Any], field: str
) -> None:
    frame = {"action": "feedback", **frame}
    if frame.get("reply_id") == "R":
        frame["reply_id"] = reply_id

    async def scenario() -> None:
        async with websockets.connect(server.ws_url, additional_headers=server.auth) as ws:
            await ws.send(json.dumps(frame))
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["error"]["field"] == field, err
            await ws.send(json.dumps({"action": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}

    asyncio.run(scenario())
