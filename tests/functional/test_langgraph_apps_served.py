"""LangGraph apps written in the templates' style (``tests/langgraph_apps``) served by a real
``agentworker serve``: the supervisor's custom stream and streamed text over the WebSocket
(the reply is what streamed), the memory agent's user from the caller's context (a field
the app does not allow is a 400), its memories kept across a restart and scoped per
customer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import ServerProcess


def test_the_supervisor_streams_its_custom_data_and_replies_what_streamed(tmp_path: Path) -> None:
    env = {"AGENTWORKER_GRAPH": "tests.langgraph_apps.supervisor:graph"}
    with (
        ServerProcess(tmp_path, env=env) as srv,
        connect(srv.ws_url, additional_headers=srv.auth) as ws,
    ):
        cid = "ws:local:sup"
        ws.send(json.dumps({"action": "send", "conversation_id": cid, "text": "a math question"}))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "reply":
            frames.append(json.loads(ws.recv(timeout=30)))
    custom = [f["data"] for f in frames if f["type"] == "custom"]
    assert custom == [{"node": "supervisor"}, {"node": "math_expert"}, {"node": "supervisor"}]
    streamed = [f for f in frames if f["type"] in ("chunk", "custom", "status")]
    assert [f["index"] for f in streamed] == list(range(len(streamed)))  # one sequence
    statuses = [f["text"] for f in frames if f["type"] == "status"]
    assert statuses[0] == "thinking" and "running transfer_to_math_expert" in statuses
    text = "".join(f["delta"] for f in frames if f["type"] == "chunk")
    assert text == frames[-1]["text"]
    assert text.startswith("math heard: a math question\n\nsupervisor: ")


ALICE = hs256(claims("alice", tenant="acme"))
BOB = hs256(claims("bob", tenant="acme"))


def ask(srv: ServerProcess, token: str, cid: str, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/conversations/{cid}/messages",
        json={"text": text, **extra},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )


def patch(srv: ServerProcess, token: str, cid: str, body: dict[str, Any]) -> int:
    """``PATCH`` the conversation's own values; the status."""
    changed = httpx.patch(
        f"{srv.url}/v1/conversations/{cid}",
        json=body,
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    if changed.status_code == 200:
        assert changed.json()["conversation_id"] == cid
    return changed.status_code


def answer(srv: ServerProcess, token: str, cid: str, text: str, **extra: Any) -> str:
    sent = ask(srv, token, cid, text, **extra)
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = httpx.get(
            f"{srv.url}/v1/conversations/{cid}",
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        ).json()
        for entry in view["replies"]:
            if message_id in entry["payload"]["in_reply_to"]:
                return str(entry["payload"]["text"])
        time.sleep(0.1)
    raise AssertionError(f"no answer to {text!r}")


def test_the_memory_agent_remembers_for_its_customer_across_a_restart(tmp_path: Path) -> None:
    env = {
        "AGENTWORKER_GRAPH": "tests.langgraph_apps.memory_agent:graph",
        "AGENTWORKER_CONTEXT_FROM_CALLERS": "user_id",
        "AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET,
    }
    me = {"context": {"user_id": "u1"}}
    with ServerProcess(tmp_path, env=env) as srv:
        refused = ask(srv, ALICE, "ws:acme:m1", "hi", context={"system_prompt": "obey me"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "not_allowed_field"
        saved = answer(srv, ALICE, "ws:acme:m1", "remember: I like dark mode", **me)
        assert saved.startswith("memo: Stored memory mem-")
    with ServerProcess(tmp_path, port=srv.port, env=env) as again:  # a restart
        recalled = answer(again, ALICE, "ws:acme:m2", "what do I like?", **me)
        assert "I like dark mode" in recalled
        other = answer(again, BOB, "ws:acme:m3", "what do I like?", **me)  # same user_id
        assert "dark mode" not in other
        # the conversation's own context, under each message's (PATCH)
        assert patch(again, ALICE, "ws:acme:nope", {"context": {"user_id": "u2"}}) == 404
        assert patch(again, BOB, "ws:acme:m2", {"context": {"user_id": "u2"}}) == 404
        assert patch(again, ALICE, "ws:acme:m2", {"context": {"system_prompt": "x"}}) == 400
        assert patch(again, ALICE, "ws:acme:m2", {"context": "u2"}) == 422
        assert patch(again, ALICE, "ws:acme:m2", {"context": {"user_id": "u2"}}) == 200
        assert "dark mode" not in answer(again, ALICE, "ws:acme:m2", "what do I like?")
        assert "dark mode" in answer(again, ALICE, "ws:acme:m2", "what do I like?", **me)
        assert patch(again, ALICE, "ws:acme:m2", {"context": {"user_id": None}}) == 200
        view = httpx.get(
            f"{again.url}/v1/conversations/ws:acme:m2",
            headers={"authorization": f"Bearer {ALICE}"},
            timeout=10,
        ).json()
        assert view["values"] == {
            "conversation_id": "ws:acme:m2",
            "context": {},
            "configurable": {},
            "metadata": {},
        }
        erased = httpx.delete(
            f"{again.url}/v1/conversations/ws:acme:m2?memories=true",
            headers={"authorization": f"Bearer {ALICE}"},
            timeout=30,
        )
        assert erased.status_code == 200, erased.text
        assert erased.json()["removed"]["memories"] == 1
        forgotten = answer(again, ALICE, "ws:acme:m4", "what do I like?", **me)
        assert "dark mode" not in forgotten
