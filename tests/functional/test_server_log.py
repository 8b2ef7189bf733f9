"""What a real server writes to its terminal, at DEBUG (where uvicorn and websockets log
every request's headers): each request's access line and no "Logging error" traceback in
its place; no bearer token (HTTP ``Authorization``, the WebSocket's ``bearer.<token>``
subprotocol or header); and no password of the tracking URI, neither in a log line (the
server's, MLflow's, the trace exporter's) nor in the exporter's command line, which every
local user can read."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import DEV_TOKEN, ServerProcess, free_port

ALICE = hs256(claims("alice", tenant="acme"))
PASSWORD = "s3cret-pw-for-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "AGENTWORKER_LOG_LEVEL": "DEBUG",
        "AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET,
        "AGENTWORKER_TRACING": "true",
        # nothing listens there: the prompt registry and the exporter fail, and say so
        "AGENTWORKER_MLFLOW_TRACKING_URI": f"http://agent:{PASSWORD}@127.0.0.1:{free_port()}/",
    }
    with ServerProcess(tmp_path_factory.mktemp("log"), env=env) as srv:
        yield srv


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_no_secret(log: str) -> None:
    assert ALICE not in log and ALICE.split(".")[2] not in log
    assert PASSWORD not in log
    # the development token is printed once, on purpose: the line that opens the chat page
    assert all(
        line.startswith("agentworker: open ") for line in log.splitlines() if DEV_TOKEN in line
    )


def test_at_debug_every_request_logs_its_access_line_and_no_token(server: ServerProcess) -> None:
    """Ordinary use: the page, the API (a turn answered), the WebSocket."""
    assert httpx.get(f"{server.url}/").status_code == 200
    sent = httpx.get(f"{server.url}/v1/conversations/ws:acme:log-1?x=1", headers=bearer(ALICE))
    assert sent.status_code == 404
    posted = httpx.post(
        f"{server.url}/v1/conversations/ws:acme:log-2/messages",
        json={"text": "hello"},
        headers=bearer(ALICE),
    )
    assert posted.status_code == 202, posted.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = httpx.get(f"{server.url}/v1/conversations/ws:acme:log-2", headers=bearer(ALICE))
        if view.json()["replies"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no reply")
    for how in (
        {"subprotocols": ["agentworker", f"bearer.{ALICE}"]},
        {"additional_headers": bearer(ALICE)},
    ):
        with connect(server.ws_url, **how) as ws:
            ws.send(json.dumps({"action": "ping"}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    log = Path(server.log).read_text()
    assert "Logging error" not in log and "Traceback" not in log
    assert '"GET /v1/conversations/ws:acme:log-1?x=1 HTTP/1.1" 404' in log
    assert '"GET / HTTP/1.1" 200' in log
    assert '"POST /v1/conversations/ws:acme:log-2/messages HTTP/1.1" 202' in log
    assert "< authorization: Bearer [TOKEN]" in log  # the headers were logged, masked
    assert "bearer.[TOKEN]" in log
    assert_no_secret(log)


def test_the_tracking_password_is_in_no_log_line_and_no_command_line(
    server: ServerProcess,
) -> None:
    sent = httpx.post(
        f"{server.url}/v1/conversations/ws:acme:log-2/messages",
        json={"text": "hello"},
        headers=bearer(ALICE),
    )
    assert sent.status_code == 202
    assert server.proc is not None
    parent = f"--parent\0{server.proc.pid}\0"
    deadline = time.monotonic() + 30
    exporter, log = b"", ""
    while time.monotonic() < deadline:  # the exporter starts with the first trace
        if not exporter:
            exporter = next((c for c in _command_lines() if parent.encode() in c), b"")
        log = Path(server.log).read_text()
        if exporter and "tracking store unavailable" in log:
            break
        time.sleep(0.1)
    assert b"workers.tracing.exporter" in exporter and PASSWORD.encode() not in exporter
    assert "the registry at http://agent:***@127.0.0.1" in log  # named, password masked
    assert "tracking store unavailable (http://agent:***@127.0.0.1" in log
    assert_no_secret(log)


def _command_lines() -> Iterator[bytes]:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            yield cmdline.read_bytes()
        except OSError:  # a process that ended meanwhile
            continue
