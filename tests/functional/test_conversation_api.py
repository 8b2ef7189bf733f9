"""The conversation API's reads and waits on a real ``agentworker serve``: a message
answered in the request that sent it (``?wait=``), server-sent events that follow a
conversation, a client that drops mid-turn and reconnects with ``Last-Event-ID`` (every
event once, across a restart too), the caller's list of conversations; hostile ids and
parameters are 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import ServerProcess

ALICE = hs256(claims("alice", tenant="acme"))
BOB = hs256(claims("bob", tenant="acme"))
ENV = {
    "AGENTWORKER_GRAPH": "tests.langgraph_apps.slow_stream:graph",
    "AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET,
}


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("sse"), env=ENV) as server:
        yield server


def send(srv: ServerProcess, cid: str, text: str, *, wait: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/conversations/{cid}/messages",
        params={} if wait is None else {"wait": wait},
        json={"text": text},
        headers=auth(ALICE),
        timeout=30,
    )


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The events of an SSE body, each as ``{"id", "event", "data"}``; comments skipped."""
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value


def read(
    srv: ServerProcess,
    cid: str,
    *,
    until: str | None = None,
    last_id: str | None = None,
    count: int = 0,
) -> list[dict[str, Any]]:
    """Events of the conversation's stream until one of type ``until``, or ``count``."""
    headers = auth(ALICE) | ({"last-event-id": last_id} if last_id else {})
    got: list[dict[str, Any]] = []
    with httpx.stream(
        "GET", f"{srv.url}/v1/conversations/{cid}/stream", headers=headers, timeout=30
    ) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for event in events(resp.iter_lines()):
            got.append(event)
            if event["event"] == until or len(got) == count:
                break
    return got


def test_wait_answers_in_the_request_and_bad_waits_are_422(srv: ServerProcess) -> None:
    answered = send(srv, "ws:acme:w1", "hello", wait="30")
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["accepted"]["type"] == "accepted"
    assert body["answer"]["type"] == "reply"
    assert body["answer"]["text"] == "done after 6 steps: hello"
    assert body["accepted"]["message_id"] in body["answer"]["in_reply_to"]
    short = send(srv, "ws:acme:w2", "hello", wait="0.1")  # not in time: 202 as without it
    assert short.status_code == 202 and short.json()["type"] == "accepted"
    for bad in ("abc", "-1", "121", "nan", "1" * 400, "inf"):
        refused = send(srv, "ws:acme:w3", "x", wait=bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"]["field"] == "wait"


def test_a_stream_dropped_mid_turn_resumes_with_every_event_once(srv: ServerProcess) -> None:
    cid = "ws:acme:s1"
    assert send(srv, cid, "first", wait="30").status_code == 200  # the conversation exists
    with httpx.stream(
        "GET", f"{srv.url}/v1/conversations/{cid}/stream", headers=auth(ALICE), timeout=30
    ) as resp:
        lines = resp.iter_lines()
        assert send(srv, cid, "second").status_code == 202
        stream = events(lines)
        seen = [next(stream), next(stream), next(stream)]
    assert [e["event"] for e in seen] == ["status", "custom", "custom"]  # then it dropped
    assert seen[0]["data"]["text"] == "thinking"
    rest = read(srv, cid, until="reply", last_id=seen[-1]["id"])
    steps = [e["data"]["data"]["step"] for e in seen + rest if e["event"] == "custom"]
    assert steps == list(range(6))  # none lost, none twice
    reply = rest[-1]
    assert reply["event"] == "reply" and reply["data"]["text"] == "done after 6 steps: second"

    # everything the store keeps, from the start; then after the first reply only
    kept = read(srv, cid, count=2, last_id="start")
    assert [e["data"]["text"] for e in kept] == [
        "done after 6 steps: first",
        "done after 6 steps: second",
    ]
    after = read(srv, cid, until="reply", last_id=kept[0]["id"])
    assert [e["id"] for e in after] == [kept[1]["id"]]


def test_a_stream_resumes_across_a_restart(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, env=ENV) as first:
        assert send(first, "ws:acme:r1", "one", wait="30").status_code == 200
        [one] = read(first, "ws:acme:r1", until="reply", last_id="start")
    with ServerProcess(tmp_path, port=first.port, env=ENV) as again:
        assert send(again, "ws:acme:r1", "two").status_code == 202
        rest = read(again, "ws:acme:r1", until="reply", last_id=one["id"])
    assert [e["data"]["text"] for e in rest if e["event"] == "reply"] == ["done after 6 steps: two"]


def test_hostile_stream_requests_are_4xx(srv: ServerProcess) -> None:
    url = f"{srv.url}/v1/conversations/ws:acme:h1/stream"
    assert httpx.get(url, headers=auth(ALICE), timeout=10).status_code == 404  # none yet
    assert send(srv, "ws:acme:h1", "hi", wait="30").status_code == 200
    assert httpx.get(url, headers=auth(BOB), timeout=10).status_code == 404  # not his
    assert httpx.get(url, timeout=10).status_code == 401
    hostile = ("p.", "p.x.y", "c.-.t", "c.-.t.99999999999", "x" * 5000, "c.a.b.-1")
    for bad in (*(h.encode() for h in hostile), "p.\u00e9".encode()):
        headers = [(b"authorization", f"Bearer {ALICE}".encode()), (b"last-event-id", bad)]
        resp = httpx.get(url, headers=headers, timeout=10)
        assert resp.status_code == 400, (bad, resp.text)
        assert resp.json()["error"]["code"] == "bad_event_id"
    unknown = httpx.get(url, params={"after": "p." + "0" * 32}, headers=auth(ALICE), timeout=10)
    assert unknown.status_code == 400


def test_the_callers_conversations_are_listed_and_filtered(srv: ServerProcess) -> None:
    carol, dave = hs256(claims("carol", tenant="acme")), hs256(claims("dave", tenant="acme"))
    for cid in ("ws:acme:l1", "ws:acme:l2", "ws:acme:l3"):
        sent = httpx.post(
            f"{srv.url}/v1/conversations/{cid}/messages",
            params={"wait": "30"},
            json={"text": "hi"},
            headers=auth(carol),
            timeout=30,
        )
        assert sent.status_code == 200, sent.text
    tagged = httpx.patch(
        f"{srv.url}/v1/conversations/ws:acme:l1",
        json={"metadata": {"topic": "billing"}},
        headers=auth(carol),
        timeout=10,
    )
    assert tagged.status_code == 200

    def listed(token: str, **params: str) -> httpx.Response:
        return httpx.get(
            f"{srv.url}/v1/conversations", params=params, headers=auth(token), timeout=10
        )

    page = listed(carol, limit="2").json()
    assert [c["conversation_id"] for c in page["conversations"]] == ["ws:acme:l1", "ws:acme:l3"]
    assert page["next_offset"] == 2 and page["conversations"][0]["status"] == "idle"
    assert page["conversations"][0]["metadata"] == {"topic": "billing"}
    last = listed(carol, limit="2", offset="2").json()
    assert [c["conversation_id"] for c in last["conversations"]] == ["ws:acme:l2"]
    assert last["next_offset"] is None
    billing = listed(carol, metadata='{"topic": "billing"}').json()["conversations"]
    assert [c["conversation_id"] for c in billing] == ["ws:acme:l1"]
    assert listed(carol, status="awaiting_approval").json()["conversations"] == []
    assert listed(dave).json()["conversations"] == []  # another caller's are not his
    for bad in (
        {"limit": "0"},
        {"limit": "101"},
        {"offset": "-1"},
        {"status": "bogus"},
        {"metadata": "[1]"},
        {"metadata": "{"},
        {"metadata": "1" * 5000},
        {"nope": "1"},
    ):
        resp = listed(carol, **bad)
        assert 400 <= resp.status_code < 500, (bad, resp.text)
    assert httpx.get(f"{srv.url}/v1/conversations", timeout=10).status_code == 401


def test_a_running_turn_is_cancelled_over_http_and_the_websocket(srv: ServerProcess) -> None:
    """Cancelled after its second progress note: the stream shows no further note and no
    reply, the sender gets the notice, the message is failed; the next one is answered."""
    cid = "ws:acme:c1"
    cancel_url = f"{srv.url}/v1/conversations/{cid}/cancel"
    assert httpx.post(cancel_url, headers=auth(ALICE), timeout=10).status_code == 404  # none
    assert send(srv, cid, "first", wait="30").status_code == 200
    idle = httpx.post(cancel_url, headers=auth(ALICE), timeout=10)
    assert idle.status_code == 409 and idle.json()["error"]["code"] == "not_running"
    with httpx.stream(
        "GET", f"{srv.url}/v1/conversations/{cid}/stream", headers=auth(ALICE), timeout=30
    ) as resp:
        stream = events(resp.iter_lines())
        assert send(srv, cid, "second").status_code == 202
        assert [next(stream)["event"] for _ in range(3)] == ["status", "custom", "custom"]
        foreign = httpx.post(cancel_url, headers=auth(BOB), timeout=10)
        assert foreign.status_code == 404
        done = httpx.post(cancel_url, headers=auth(ALICE), timeout=10)
        assert done.status_code == 200 and done.json()["type"] == "cancelled"
        after = []
        for event in stream:
            after.append(event)
            if event["event"] in ("notice", "reply"):
                break
    notice = after[-1]
    assert notice["event"] == "notice", after
    assert notice["data"]["text"] == "Stopped: this answer was cancelled."
    assert len([e for e in after if e["event"] == "custom"]) <= 1  # one already on its way
    view = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=auth(ALICE), timeout=10)
    second = [m for m in view.json()["messages"] if m["text"] == "second"]
    assert second[0]["status"] == "failed"
    assert all(
        r["payload"].get("text") != "done after 6 steps: second" for r in view.json()["replies"]
    )

    with connect(srv.ws_url, additional_headers=auth(ALICE)) as ws:
        ws.send(json.dumps({"action": "send", "conversation_id": cid, "text": "third"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "accepted"
        while json.loads(ws.recv(timeout=10))["type"] != "custom":
            pass
        ws.send(json.dumps({"action": "cancel", "conversation_id": cid}))
        frames = [json.loads(ws.recv(timeout=10))]
        while frames[-1]["type"] not in ("notice", "reply"):
            frames.append(json.loads(ws.recv(timeout=10)))
        assert {"type": "cancelled", "conversation_id": cid} in frames
        assert frames[-1]["type"] == "notice"
    assert send(srv, cid, "fourth", wait="30").json()["answer"]["text"].endswith("fourth")
