"""Slack for tests: signed requests in the real HTTP API (payload 2.0) envelope, and a local
stub of the Web API that records what it is sent and answers as scripted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

FIXTURES = Path(__file__).parents[1] / "fixtures"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a test value, like Slack's docs' example
BOT_TOKEN = "xoxb-test-token"


def slack_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}``: what Slack sends (written out
    here so that a test can sign as an attacker would, with an empty key too)."""
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def slack_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "slack" / name).read_text())
    return data


def slack_request(
    body: dict[str, Any] | str,
    *,
    form: bool = False,
    secret: str = SIGNING_SECRET,
    timestamp: float | None = None,
    base64_body: bool = False,
    headers: dict[str, str] | None = None,
    signed: bool = True,
) -> dict[str, Any]:
    """An HTTP API v2 event (the real envelope of ``apiGatewayProxyV2Event.json``) carrying
    ``body`` as Slack sends it: JSON for the Events API, or with ``form`` the interactivity
    form ``payload=<json>``; signed with ``secret`` at ``timestamp`` (default now)."""
    event: dict[str, Any] = json.loads(
        (FIXTURES / "aws" / "apiGatewayProxyV2Event.json").read_text()
    )
    if isinstance(body, str):
        raw = body
    elif form:
        raw = urlencode({"payload": json.dumps(body)})
    else:
        raw = json.dumps(body)
    ts = str(int(time.time() if timestamp is None else timestamp))
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/slack/events"
    event["headers"] = {
        "content-type": content_type,
        "user-agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "x-slack-request-timestamp": ts,
        **({"x-slack-signature": slack_signature(secret, ts, raw.encode())} if signed else {}),
        **(headers or {}),
    }
    event["pathParameters"] = None
    if base64_body:
        event["body"] = base64.b64encode(raw.encode()).decode()
        event["isBase64Encoded"] = True
    else:
        event["body"] = raw
    return event


@dataclass
class SlackCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class SlackApiStub:
    """``POST /api/<method>``: records the call, answers with the next scripted
    (status, body, headers) or ``{"ok": true, ...}``."""

    calls: list[SlackCall] = field(default_factory=list)
    script: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        with self._lock:
            self.script.append((status, body, headers or {}))

    def posted(self, want: int = 1, timeout: float = 30.0) -> list[SlackCall]:
        """The ``chat.postMessage`` calls, once there are ``want`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [c for c in self.calls if c.path == "/api/chat.postMessage"]
            if len(found) >= want:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{want} chat.postMessage calls expected, got {len(found)}")

    def _handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            self.calls.append(SlackCall(path, headers, json.loads(raw or b"{}")))
            status, body, extra = self.script.pop(0) if self.script else (200, {}, {})
        if not body:
            body = {"ok": True, "channel": "C", "ts": f"{time.time():.6f}"}
        return status, json.dumps(body).encode(), extra


@contextmanager
def slack_api_stub() -> Iterator[SlackApiStub]:
    stub = SlackApiStub()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = stub._handle(self.path, headers, raw)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
