"""Property-based fuzzing of the local server's entry points, on a real embedded runtime
(SQLite, the offline model): ``CASES`` hostile request bodies and ``CASES`` hostile
WebSocket frames (text and binary) on one socket; every one gets a 2xx/4xx JSON answer and
the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

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
from workers.adapters.local.server import create_app
from workers.config import Settings

TOKEN = "fuzz-dev-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ANSWERED = frozenset({200, 202, 400, 401, 403, 404, 405, 409, 413, 415, 422, 429})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        state_dir=Path(tmp_path_factory.mktemp("fuzz")),
        tracing=False,
        dev_token=TOKEN,
        allowed_hosts=["testserver"],
        workers=2,
    )
    with TestClient(create_app(settings), base_url="http://testserver") as test_client:
        yield test_client


def cid_text(value: Any) -> str:
    return quote(value if isinstance(value, str) else json.dumps(value), safe="")


def test_http_message_and_conversation_bodies(client: TestClient) -> None:
    body = shaped(
        {
            "text": text_field,
            "dedupe_key": text_field,
            "approval": json_values | st.just({"interrupt_id": "i", "approved": True}),
            "resume": json_values | st.just({"interrupt_id": "i", "value": [1]}),
            "policy": st.sampled_from(["enqueue", "merge", "bogus"]),
            "metadata": json_values,
            "sender": text_field,
            "context": json_values | st.just({"k": None}),
            "configurable": json_values,
            "assistant_id": st.sampled_from(["support_agent", "nope"]) | text_field,
            "input": json_values | st.just({"messages": [{"role": "user", "content": "hi"}]}),
            "command": json_values | st.just({"resume": True}),
            "thread_id": id_field,
            "multitask_strategy": st.sampled_from(["reject", "enqueue", "rollback", "bogus"]),
            "if_exists": st.sampled_from(["raise", "do_nothing", "bogus"]),
            "limit": json_values,
            "at": text_field | json_values,
            "in_seconds": json_values | st.just(3600),
            "cron": st.sampled_from(["0 9 * * MON-FRI", "61 * * * *", "* *"]) | text_field,
            "timezone": st.sampled_from(["Europe/Paris", "Nowhere/Else"]) | text_field,
            "url": st.sampled_from(["https://hooks.example.com/x", "http://127.0.0.1/"])
            | text_field,
            "events": json_values | st.just(["reply"]),
            "secret": text_field,
        }
    )
    media = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"])
    # a message, a change of the conversation's own values (the same fields, mostly), the
    # Agent Server API's bodies (threads, runs, assistants), a schedule and a webhook
    routes = st.sampled_from(
        [
            ("POST", "/v1/conversations/{cid}/messages"),
            ("POST", "/v1/conversations/{cid}/messages"),
            ("PATCH", "/v1/conversations/{cid}"),
            ("POST", "/threads/{cid}/runs/wait"),
            ("POST", "/threads/{cid}/runs"),
            ("PATCH", "/threads/{cid}"),
            ("POST", "/threads"),
            ("POST", "/threads/search"),
            ("POST", "/assistants/search"),
            ("POST", "/v1/conversations/{cid}/schedules"),
            ("POST", "/v1/conversations/{cid}/webhooks"),
        ]
    )
    ran = [0]

    case = st.tuples(hostile(body), media, id_field, routes)

    @BATCHED
    @given(st.lists(case, min_size=BATCH, max_size=BATCH))
    def run(cases: list[tuple[str | bytes, str, Any, tuple[str, str]]]) -> None:
        for raw, content_type, cid, (method, path) in cases:
            ran[0] += 1
            data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
            resp = client.request(
                method,
                path.format(cid=cid_text(cid)),
                content=data,
                headers={**AUTH, "content-type": content_type},
            )
            assert resp.status_code in ANSWERED, resp.text
            if resp.status_code >= 400:
                assert resp.json()["error"]["code"]

    run()
    assert ran[0] >= CASES
    assert client.get("/healthz").status_code == 200


def test_websocket_frames(client: TestClient) -> None:
    ran = [0]
    with client.websocket_connect("/v1/ws", headers=AUTH) as ws:

        @BATCHED
        @given(st.lists(hostile(ws_frames), min_size=BATCH, max_size=BATCH))
        def run(frames: list[str | bytes]) -> None:
            for raw in frames:
                ran[0] += 1
                if isinstance(raw, bytes):
                    ws.send_bytes(raw)  # a binary frame
                else:
                    ws.send_text(raw)
                while True:  # replies of earlier frames may come in between
                    answer = ws.receive_json()
                    if answer.get("type") in ("accepted", "subscribed", "pong", "error"):
                        break
                if answer["type"] == "error":
                    assert answer["error"]["code"] != "internal_error", answer

        run()
        ws.send_text(json.dumps({"action": "ping"}))
        while ws.receive_json().get("type") != "pong":
            pass
    assert ran[0] >= CASES


def test_numbers_out_of_range_and_binary_frames_are_4xx_and_the_socket_stays_open(
    client: TestClient,
) -> None:
    """The issue's reproductions: a 5,000-digit integer was a 500 with a traceback over HTTP
    and an ``internal_error`` over the WebSocket; a binary frame dropped the socket."""
    huge = "1" * 5000
    for body, code in [
        ('{"text": "hi", "metadata": {"n": NUMBER}}', "bad_number"),
        ('{"resume": {"interrupt_id": "i", "value": NUMBER}}', "bad_number"),
        ('{"text": "hi", "policy": 1e999}', "bad_number"),
        ('{"text": NaN}', "bad_json"),
    ]:
        resp = client.post(
            "/v1/conversations/ws:local:n/messages",
            content=body.replace("NUMBER", huge),
            headers={**AUTH, "content-type": "application/json"},
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == code
    feedback = client.post(
        "/v1/conversations/ws:local:n/feedback",
        content='{"reply_id": "r", "score": ' + huge + "}",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert (feedback.status_code, feedback.json()["error"]["code"]) == (400, "bad_number")
    with client.websocket_connect("/v1/ws", headers=AUTH) as ws:
        frame = '{"action": "send", "conversation_id": "ws:local:n", "text": "hi", "n": NUMBER}'
        ws.send_text(frame.replace("NUMBER", huge))
        assert ws.receive_json()["error"]["code"] == "bad_number"
        ws.send_bytes(b'{"action": "ping"}')
        assert ws.receive_json()["error"] == {
            "code": "binary_frame",
            "message": "frames are JSON text: send a text frame",
            "field": None,
        }
        ws.send_text('{"action": "ping"}')
        assert ws.receive_json() == {"type": "pong"}  # still open
    assert client.get("/v1/conversations/ws:local:n", headers=AUTH).status_code == 404


def test_a_content_length_of_thousands_of_digits_is_413(client: TestClient) -> None:
    """A declared length past Python's int-string limit was ``int()``-ed: a 500 (a real
    uvicorn's h11 refuses it first, an ASGI server that passes it on did not)."""
    resp = client.post(
        "/v1/conversations/ws:local:n/messages",
        content=b'{"text": "hi"}',
        headers={**AUTH, "content-type": "application/json", "content-length": "9" * 5000},
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"
