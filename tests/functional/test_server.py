"""The real server on a loopback port, driven with httpx and websockets clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from events.inbound import MAX_MESSAGE_BYTES
from tests.functional.server_process import ServerProcess
from tests.markup import unsafe_parts
from workers.config import DEFAULT_SUGGESTED_PROMPTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("state")) as srv:
        yield srv


def post(srv: ServerProcess, cid: str, body: Any, **kw: Any) -> httpx.Response:
    kw["headers"] = {**srv.auth, **kw.get("headers", {})}
    return httpx.post(f"{srv.url}/v1/conversations/{cid}/messages", json=body, timeout=10, **kw)


def wait_reply(
    srv: ServerProcess, cid: str, message_id: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = httpx.get(f"{srv.url}/v1/conversations/{cid}", timeout=10, headers=srv.auth).json()
        for entry in view.get("replies", []):
            if message_id in entry["payload"]["in_reply_to"]:
                payload: dict[str, Any] = entry["payload"]
                return payload
        time.sleep(0.05)
    raise AssertionError(f"no reply to {message_id}")


def replies_to(view: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in view["replies"] if message_id in e["payload"]["in_reply_to"]]


def test_healthz(server: ServerProcess) -> None:
    body = httpx.get(f"{server.url}/healthz").json()
    assert body["status"] == "ok" and body["model"] == "offline"


def test_index_page_is_served(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "/v1/ws" in page.text


def test_post_then_get_conversation(server: ServerProcess) -> None:
    forged = post(server, "api:t1", {"text": "hello there", "sender": "tester"})
    assert forged.status_code == 422 and forged.json()["error"]["field"] == "sender"
    resp = post(server, "api:t1", {"text": "hello there"})
    assert resp.status_code == 202
    accepted = resp.json()
    assert accepted["duplicate"] is False and accepted["seq"] == 1
    reply = wait_reply(server, "api:t1", accepted["message_id"])
    assert reply["type"] == "reply" and "hello there" in reply["text"]
    assert reply["usage"]["input_tokens"] > 0
    view = httpx.get(f"{server.url}/v1/conversations/api:t1", headers=server.auth).json()
    assert view["status"] == "idle" and view["pending_approval"] is None
    assert view["messages"][0]["status"] == "consumed"
    assert view["messages"][0]["sender"] == "local"  # the principal, never the body
    assert view["replies"][0]["delivered"] is True


def test_repeated_dedupe_key_returns_the_same_id_and_one_turn(server: ServerProcess) -> None:
    first = post(server, "api:dup", {"text": "once", "dedupe_key": "src-1"}).json()
    second = post(server, "api:dup", {"text": "once", "dedupe_key": "src-1"}).json()
    assert second["message_id"] == first["message_id"] and second["duplicate"] is True
    wait_reply(server, "api:dup", first["message_id"])
    view = httpx.get(f"{server.url}/v1/conversations/api:dup", headers=server.auth).json()
    assert len(view["messages"]) == 1 and len(view["replies"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{not json", 400, "bad_json", None),
        (b"[1, 2]", 422, "validation_error", "body"),
        (b"{}", 422, "validation_error", "text"),
        (b'{"text": 5}', 422, "validation_error", "text"),
        (b'{"text": "hi", "policy": "sometimes"}', 422, "validation_error", "policy"),
        (b'{"text": "hi", "colour": "red"}', 422, "validation_error", "colour"),
        (
            json.dumps({"text": "x" * (MAX_MESSAGE_BYTES + 1)}).encode(),
            413,
            "too_large",
            "text",
        ),
        (b'{"text": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413, "too_large", "body"),
    ],
    ids=[
        "malformed",
        "not-object",
        "missing-text",
        "wrong-type",
        "bad-enum",
        "unknown-field",
        "text-over-256k",
        "body-over-1mb",
    ],
)
def test_bad_input_gets_a_clear_json_error(
    server: ServerProcess, body: bytes, status: int, code: str, field: str | None
) -> None:
    resp = httpx.post(
        f"{server.url}/v1/conversations/api:bad/messages",
        content=body,
        headers={**server.auth, "content-type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["field"] == field
    assert err["message"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # still serving


def test_unknown_and_invalid_conversation_ids(server: ServerProcess) -> None:
    missing = httpx.get(f"{server.url}/v1/conversations/nobody:here", headers=server.auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "conversation_id"
    bad = httpx.get(f"{server.url}/v1/conversations/-bad", headers=server.auth)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "conversation_id"


def test_bad_input_loses_nothing_accepted_earlier(server: ServerProcess) -> None:
    ok = post(server, "api:keep", {"text": "keep me"}).json()
    post(server, "api:keep", {"text": 5})
    httpx.post(
        f"{server.url}/v1/conversations/api:keep/messages", content=b"{oops", headers=server.auth
    )
    wait_reply(server, "api:keep", ok["message_id"])
    view = httpx.get(f"{server.url}/v1/conversations/api:keep", headers=server.auth).json()
    assert [m["text"] for m in view["messages"]] == ["keep me"]


async def _recv_until(ws: Any, pred: Any, timeout: float = 20) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            if pred(frame):
                return frames


def test_websocket_chat_with_streaming_tool_and_approval(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with websockets.connect(server.ws_url, additional_headers=server.auth) as ws:
            cid = "ws:alice:chat"
            await ws.send(json.dumps({"action": "subscribe", "conversation_id": cid}))
            sub = json.loads(await ws.recv())
            assert sub == {"type": "subscribed", "conversation_id": cid, "conversation": None}

            await ws.send(json.dumps({"action": "send", "conversation_id": cid, "text": "hi you"}))
            frames = await _recv_until(ws, lambda f: f["type"] == "reply")
            assert frames[0]["type"] == "accepted"
            chunks = [f["delta"] for f in frames if f["type"] == "chunk"]
            assert "".join(chunks) == frames[-1]["text"]

            await ws.send(
                json.dumps(
                    {
                        "action": "send",
                        "conversation_id": cid,
                        "text": "please open a ticket about the VPN",
                    }
                )
            )
            frames = await _recv_until(ws, lambda f: f["type"] == "reply")
            ticket_id = frames[-1]["text"].split()[2].rstrip(":")
            await ws.send(
                json.dumps(
                    {"action": "send", "conversation_id": cid, "text": f"close ticket {ticket_id}"}
                )
            )
            frames = await _recv_until(ws, lambda f: f["type"] == "approval_request")
            ask = frames[-1]
            assert ask["tool"] == "update_ticket" and ask["args"]["status"] == "closed"
            await ws.send(
                json.dumps(
                    {
                        "action": "approve",
                        "conversation_id": cid,
                        "interrupt_id": ask["interrupt_id"],
                    }
                )
            )
            frames = await _recv_until(ws, lambda f: f["type"] == "reply")
            assert "is closed" in frames[-1]["text"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ("{nope", "bad_json", None),
        ('{"action": "dance"}', "unknown_action", "action"),
        ('{"text": "no action"}', "unknown_action", "action"),
        ('{"action": "send", "conversation_id": "ws:a:b"}', "validation_error", "text"),
        ('{"action": "send", "conversation_id": "ws:a:b", "text": 3}', "validation_error", "text"),
        ('{"action": "approve", "conversation_id": "ws:a:b"}', "validation_error", "interrupt_id"),
        (
            '{"action": "subscribe", "conversation_id": "bad id"}',
            "validation_error",
            "conversation_id",
        ),
        ('["a"]', "validation_error", "action"),
    ],
)
def test_websocket_bad_frames_get_error_frames_and_the_socket_stays_open(
    server: ServerProcess, frame: str, code: str, field: str | None
) -> None:
    async def scenario() -> None:
        async with websockets.connect(server.ws_url, additional_headers=server.auth) as ws:
            await ws.send(frame)
            err = json.loads(await ws.recv())
            assert err["type"] == "error", err
            assert err["error"]["code"] == code and err["error"]["field"] == field
            await ws.send(json.dumps({"action": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}

    asyncio.run(scenario())


def test_websocket_text_over_256_kb(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with websockets.connect(
            server.ws_url, max_size=None, additional_headers=server.auth
        ) as ws:
            big = "x" * (MAX_MESSAGE_BYTES + 10)
            await ws.send(
                json.dumps({"action": "send", "conversation_id": "ws:a:big", "text": big})
            )
            err = json.loads(await ws.recv())
            assert err["error"]["code"] == "too_large" and err["error"]["field"] == "text"
            await ws.send(json.dumps({"action": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}

    asyncio.run(scenario())


def test_cli_send_and_history(server: ServerProcess) -> None:
    """The CLI finds the running server's development token in its state directory."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.cli", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "AGENTWORKER_STATE_DIR": str(server.state_dir)},
        )

    sent = cli("send", "-c", "cli:demo", "open a ticket about the coffee machine")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("Opened ticket")
    ticket = sent.stdout.split()[2].rstrip(":")
    ask = cli("send", "-c", "cli:demo", f"close ticket {ticket}")
    assert ask.stdout.startswith("[approval needed] May I set status to closed")
    done = cli("send", "-c", "cli:demo", "--approve")
    assert "is closed" in done.stdout, done.stderr
    again = cli("send", "-c", "cli:demo", "--approve")
    assert again.returncode == 1 and "nothing is waiting" in again.stderr
    hist = cli("history", "-c", "cli:demo")
    assert hist.returncode == 0 and "coffee machine" in hist.stdout and "approved" in hist.stdout
    missing = cli("history", "-c", "cli:nobody")
    assert missing.returncode == 1 and "404 not_found" in missing.stderr


def test_cli_without_a_server_says_so(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "send",
            "-c",
            "x",
            "hi",
            "--url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 1 and "no server at" in out.stderr


def test_bad_config_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "serve", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"AGENTWORKER_WORKERS": "lots", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "AGENTWORKER_WORKERS" in out.stderr


def test_cli_schema_prints_json_schemas() -> None:
    def schema(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers.cli", "schema", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    everything = json.loads(schema().stdout)
    assert {"InboundMessage", "Reply", "ReplyChunk", "ApprovalRequest", "RunRef"} <= set(everything)
    one = json.loads(schema("InboundMessage").stdout)
    assert "conversation_id" in one["properties"]
    bad = schema("Nope")
    assert bad.returncode == 2 and "unknown model" in bad.stderr


def test_the_app_says_its_name_model_and_prompts_to_a_signed_in_caller(
    server: ServerProcess,
) -> None:
    refused = httpx.get(f"{server.url}/v1/app", timeout=10)
    assert refused.status_code == 401
    app = httpx.get(f"{server.url}/v1/app", headers=server.auth, timeout=10).json()
    assert app == {
        "name": "Support agent",
        "model": "offline",
        "suggested_prompts": list(DEFAULT_SUGGESTED_PROMPTS),
    }


def test_the_page_runs_only_its_own_script(server: ServerProcess) -> None:
    """The page's Content-Security-Policy names its one inline script by hash: markup that
    got into the page another way could run no script, load nothing, post no form."""
    page = httpx.get(f"{server.url}/")
    directives = page.headers["content-security-policy"].split(";")
    policy = dict(part.strip().partition(" ")[::2] for part in directives)
    [script] = re.findall(r"<script>(.*?)</script>", page.text, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["form-action"] == "'none'" and policy["base-uri"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_a_socket_that_asks_for_html_gets_replies_rendered_and_sanitized(
    server: ServerProcess,
) -> None:
    """``/v1/ws?render=html`` (the chat page): every reply frame, and every reply of the
    history, carries ``html`` beside its text; chunks and notices stay text; other sockets
    get the frames as they are."""
    cid = "ws:alice:markdown"
    hostile = "**bold** <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=y>"

    async def scenario() -> None:
        url = server.ws_url
        async with websockets.connect(url + "?render=html", additional_headers=server.auth) as ws:
            await ws.send(json.dumps({"action": "send", "conversation_id": cid, "text": hostile}))
            frames = await _recv_until(ws, lambda f: f["type"] == "reply")
            reply = frames[-1]
            assert "<strong>bold</strong>" in reply["html"]
            assert unsafe_parts(reply["html"]) == []
            assert "&lt;script&gt;" in reply["html"]  # shown as text, never run
            assert all("html" not in f for f in frames[:-1])
            await ws.send(json.dumps({"action": "subscribe", "conversation_id": cid}))
            history = json.loads(await ws.recv())["conversation"]
            assert [r["payload"] for r in history["replies"]] == [reply]
        async with websockets.connect(url, additional_headers=server.auth) as ws:
            await ws.send(json.dumps({"action": "subscribe", "conversation_id": cid}))
            history = json.loads(await ws.recv())["conversation"]
            [plain] = [r["payload"] for r in history["replies"]]
            assert plain == {k: v for k, v in reply.items() if k != "html"}

    asyncio.run(scenario())
