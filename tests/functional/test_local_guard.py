"""The local server is safe by default: loopback only, requests addressed to it from its own
page only (Host, Origin: DNS rebinding and cross-site requests are refused), JSON bodies
only, a bounded number of subscriptions per socket, and hostile JSON answered with a 4xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.functional.server_process import DEV_TOKEN, ServerProcess, free_port
from workers.adapters.local.guard import check_bind
from workers.config import Settings
from workers.errors import ConfigError

APP_ORIGIN = "http://localhost:5173"
"""A web app served from another origin than the API (a dev server's), in allowed_origins."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = {
        "AGENTWORKER_MAX_SUBSCRIPTIONS": "3",
        "AGENTWORKER_ALLOWED_HOSTS": "chat.internal",
        "AGENTWORKER_ALLOWED_ORIGINS": APP_ORIGIN,
    }
    with ServerProcess(tmp_path_factory.mktemp("guard"), env=env) as srv:
        yield srv


def post(srv: ServerProcess, body: bytes, **headers: str) -> httpx.Response:
    headers.setdefault("content-type", "application/json")
    return httpx.post(
        f"{srv.url}/v1/conversations/api:guard/messages",
        content=body,
        headers={**srv.auth, **headers},
    )


def test_another_host_name_is_refused_dns_rebinding(server: ServerProcess) -> None:
    evil = httpx.get(
        f"{server.url}/v1/conversations/api:guard",
        headers={**server.auth, **{"host": "evil.example"}},
    )
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "host_not_allowed"
    page = httpx.get(f"{server.url}/", headers={"host": f"evil.example:{server.port}"})
    assert page.status_code == 403
    named = httpx.get(f"{server.url}/healthz", headers={"host": f"chat.internal:{server.port}"})
    assert named.status_code == 200  # allowed_hosts
    own = httpx.get(f"{server.url}/healthz", headers={"host": f"localhost:{server.port}"})
    assert own.status_code == 200


def test_another_sites_page_cannot_post_or_read(server: ServerProcess) -> None:
    cross = post(server, b'{"text": "hi"}', origin="https://evil.example")
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "origin_not_allowed"
    simple = post(server, b'{"text": "hi"}', **{"content-type": "text/plain"})
    assert simple.status_code == 415  # what a cross-site form could send without preflight
    assert simple.json()["error"]["code"] == "unsupported_media_type"
    bare = httpx.post(
        f"{server.url}/v1/conversations/api:guard/messages", content=b"{}", headers=server.auth
    )
    assert bare.status_code == 415
    read = httpx.get(
        f"{server.url}/v1/conversations/api:guard",
        headers={**server.auth, **{"origin": "http://evil.example"}},
    )
    assert read.status_code == 403
    own = post(server, b'{"text": "hi"}', origin=f"http://127.0.0.1:{server.port}")
    assert own.status_code == 202


def preflight(srv: ServerProcess, path: str, origin: str, **headers: str) -> httpx.Response:
    """What a browser asks before a request its page may not send unasked (a JSON body, a
    token header): no credentials."""
    return httpx.request(
        "OPTIONS",
        f"{srv.url}{path}",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,last-event-id",
            **headers,
        },
    )


def test_a_page_on_an_allowed_origin_may_call_and_read_the_api(server: ServerProcess) -> None:
    """CORS for an origin of allowed_origins: the preflight is answered before any token is
    asked for, and every answer (a JSON one, an error, a run's event stream) names that
    origin and the headers LangGraph's client reads."""
    asked = preflight(server, "/threads/cors-1/runs/stream", APP_ORIGIN)
    assert asked.status_code == 204, asked.text
    assert asked.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in asked.headers["access-control-allow-methods"]
    allowed = asked.headers["access-control-allow-headers"].split(", ")
    for header in ("authorization", "x-api-key", "content-type", "last-event-id"):
        assert header in allowed
    assert int(asked.headers["access-control-max-age"]) > 0
    assert asked.headers["vary"].lower() == "origin"

    sent = post(server, b'{"text": "hi"}', origin=APP_ORIGIN)
    assert sent.status_code == 202
    assert sent.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "origin" in sent.headers["vary"].lower()
    no_token = httpx.get(f"{server.url}/threads/cors-1", headers={"origin": APP_ORIGIN})
    assert no_token.status_code == 401  # the page can read why
    assert no_token.headers["access-control-allow-origin"] == APP_ORIGIN

    run = {
        "assistant_id": "support_agent",
        "input": {"messages": [{"role": "user", "content": "hello"}]},
        "if_not_exists": "create",
    }
    with httpx.stream(
        "POST",
        f"{server.url}/threads/cors-1/runs/stream",
        json=run,
        headers={"x-api-key": DEV_TOKEN, "origin": APP_ORIGIN},
        timeout=30,
    ) as streamed:
        assert streamed.status_code == 200, streamed.read()
        assert streamed.headers["access-control-allow-origin"] == APP_ORIGIN
        exposed = streamed.headers["access-control-expose-headers"].split(", ")
        assert {"content-location", "location"} <= set(exposed)
        assert streamed.headers["content-location"].startswith("/threads/cors-1/runs/")
        assert "event: metadata" in streamed.read().decode()


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",  # a sandboxed frame's, or a file's
        "http://localhost:5174",
        "http://localhost:5173.evil.example",
        "*",
        "http://localhost:5173 http://evil.example",
    ],
)
def test_another_origin_gets_no_cors_only_the_refusal(server: ServerProcess, origin: str) -> None:
    asked = preflight(server, "/threads/cors-2/runs/stream", origin)
    assert asked.status_code == 403
    assert asked.json()["error"]["code"] == "origin_not_allowed"
    assert not [h for h in asked.headers if h.startswith("access-control-")]
    read = httpx.get(f"{server.url}/threads/cors-2", headers={**server.auth, "origin": origin})
    assert read.status_code == 403 and "access-control-allow-origin" not in read.headers


def test_an_allowed_origins_preflight_to_another_host_is_refused(server: ServerProcess) -> None:
    """DNS rebinding stays refused for an allowed page too."""
    asked = preflight(server, "/threads", APP_ORIGIN, host="evil.example")
    assert asked.status_code == 403 and asked.json()["error"]["code"] == "host_not_allowed"
    assert "access-control-allow-origin" not in asked.headers


def test_another_sites_page_cannot_open_the_websocket(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(server.ws_url, origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(server.ws_url, additional_headers={"Host": "evil.example"})
    # The page's own way: its origin, and the token as a subprotocol (browsers cannot set
    # headers on a WebSocket); the server picks "agentworker", never echoing the token.
    with connect(
        server.ws_url,
        origin=f"http://127.0.0.1:{server.port}",  # type: ignore[arg-type]
        subprotocols=["agentworker", f"bearer.{DEV_TOKEN}"],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == "agentworker"
        ws.send(json.dumps({"action": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


@pytest.mark.parametrize(
    ("headers", "subprotocols", "reason"),
    [
        ({}, None, "missing"),
        ({"authorization": "Bearer not-the-token-at-all"}, None, "bad_token"),
        ({}, ["agentworker", "bearer.not-the-token-at-all"], "bad_token"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None, "malformed"),
    ],
)
def test_a_socket_without_the_token_is_told_why_and_closed(
    server: ServerProcess, headers: dict[str, str], subprotocols: Any, reason: str
) -> None:
    with connect(server.ws_url, additional_headers=headers, subprotocols=subprotocols) as ws:
        error = json.loads(ws.recv(timeout=10))
        assert error["error"]["code"] == "unauthenticated" and error["error"]["reason"] == reason
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_every_api_request_needs_the_token(server: ServerProcess) -> None:
    for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token"}):
        for resp in (
            httpx.get(f"{server.url}/v1/conversations/api:guard", headers=headers),
            httpx.get(f"{server.url}/v1/conversations/api:guard/state", headers=headers),
            httpx.post(
                f"{server.url}/v1/conversations/api:guard/messages",
                json={"text": "hi"},
                headers=headers,
            ),
        ):
            assert resp.status_code == 401, resp.text
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.json()["error"]["code"] == "unauthenticated"
            assert "wrong-token" not in resp.text
    # The page and the health check are open: the page holds no data, its token comes from
    # the URL's fragment.
    assert httpx.get(f"{server.url}/").status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_socket_follows_a_bounded_number_of_conversations(server: ServerProcess) -> None:
    with connect(server.ws_url, additional_headers=server.auth) as ws:
        for n in range(3):
            ws.send(json.dumps({"action": "subscribe", "conversation_id": f"ws:cap:{n}"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        ws.send(json.dumps({"action": "subscribe", "conversation_id": "ws:cap:4"}))
        error = json.loads(ws.recv(timeout=10))
        assert error["error"]["code"] == "too_many_subscriptions"
        ws.send(json.dumps({"action": "subscribe", "conversation_id": "ws:cap:1"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"  # already followed


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"text": "x", "metadata": ' + b'{"a": ' * 80 + b'"v"' + b"}" * 80 + b"}", "too_deep"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"text": "x", "metadata": {"k": "\\ud800"}}', "bad_unicode"),
        (b'{"text": "\\udfff lone"}', "bad_unicode"),
    ],
    ids=["nested-object", "nested-array-100k", "surrogate-in-metadata", "surrogate-in-text"],
)
def test_hostile_json_is_a_400_and_the_server_goes_on(
    server: ServerProcess, body: bytes, code: str
) -> None:
    resp = post(server, body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == code, resp.text
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_hostile_frames_are_error_frames_and_the_socket_stays_open(
    server: ServerProcess,
) -> None:
    with connect(server.ws_url, additional_headers=server.auth) as ws:
        ws.send("[" * 100_000 + "]" * 100_000)
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "too_deep"
        frame = {"action": "send", "conversation_id": "ws:h:1", "text": "\udcff"}
        ws.send(json.dumps(frame))
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "bad_unicode"
        ws.send(json.dumps({"action": "ping"}))
        assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])  # noqa: S104
def test_serve_refuses_an_address_others_can_reach(tmp_path: Path, host: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "serve", "--host", host, "--port",
         str(free_port()), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""},
    )  # fmt: skip
    assert out.returncode == 2 and "serving" not in out.stdout
    [line] = out.stderr.strip().splitlines()
    assert line == (
        f"agentworker: --host={host!r}: without authentication (AGENTWORKER_AUTH_JWKS_URL or"
        " AGENTWORKER_AUTH_JWT_SECRET) the local server listens on loopback only"
        " (127.0.0.1, ::1, localhost)"
    )


def test_with_an_identity_provider_another_address_may_be_bound() -> None:
    secret = "s" * 32
    for host in ("0.0.0.0", "192.168.1.20"):  # noqa: S104
        check_bind(Settings(host=host, auth_jwt_secret=secret))  # no ConfigError
        with pytest.raises(ConfigError):
            check_bind(Settings(host=host, dev_token="d" * 20))


def test_a_principal_over_its_quota_gets_429_with_retry_after(tmp_path: Path) -> None:
    env = {"AGENTWORKER_QUOTA_MESSAGES_PER_MINUTE": "2"}
    with ServerProcess(tmp_path, env=env) as srv:
        url = f"{srv.url}/v1/conversations/ws:quota:1/messages"
        answers = [httpx.post(url, json={"text": f"m{i}"}, headers=srv.auth) for i in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        refused = answers[2]
        assert refused.json()["error"]["code"] == "throttled"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        with connect(srv.ws_url, additional_headers=srv.auth) as ws:
            frame = {"action": "send", "conversation_id": "ws:quota:1", "text": "again"}
            ws.send(json.dumps(frame))
            while (answer := json.loads(ws.recv(timeout=10)))["type"] != "error":
                pass
            assert answer["error"]["code"] == "throttled"
        view = httpx.get(f"{srv.url}/v1/conversations/ws:quota:1", headers=srv.auth).json()
        assert [m["text"] for m in view["messages"]] == ["m0", "m1"]  # nothing refused written


def test_metadata_is_bounded_and_counted_in_the_bytes_quota(tmp_path: Path) -> None:
    """Issue 17.13: the bytes quota counted ``text`` only, and ``metadata`` had no bound
    (about 1 MB per message got past it)."""
    env = {"AGENTWORKER_QUOTA_TEXT_BYTES_PER_DAY": "3000"}
    with ServerProcess(tmp_path, env=env) as srv:
        url = f"{srv.url}/v1/conversations/ws:meta:1/messages"

        def post(metadata: dict[str, str]) -> httpx.Response:
            return httpx.post(url, json={"text": "hi", "metadata": metadata}, headers=srv.auth)

        huge = post({"k": "v" * 20_000})
        assert huge.status_code == 413 and huge.json()["error"]["field"] == "metadata"
        assert post({f"k{i}": "v" for i in range(65)}).status_code == 422
        assert post({"k": "v" * 2000}).status_code == 202
        # 2 + 2001 bytes spent of 3000: another 1000 bytes of metadata are past the quota.
        over = post({"k": "v" * 1000})
        assert over.status_code == 429 and over.json()["error"]["code"] == "throttled"
