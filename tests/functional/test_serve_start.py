"""How ``agentworker serve`` starts, as a newcomer meets it: the development token stays the
same across restarts (so a reloaded page and the CLI keep working) until it is rotated; a
taken port is one line and exit code 2, with nothing printed or written before; and
``agentworker send`` exits 1 when the answer is an error notice."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.functional.server_process import DEV_TOKEN, ServerProcess
from tests.graphs import OUTAGE_FILE


def without_a_set_token(state: Path, *args: str) -> ServerProcess:
    """A server that makes or keeps its own development token (none set in its settings)."""
    srv = ServerProcess(state, args=list(args))
    del srv.env["AGENTWORKER_DEV_TOKEN"]
    return srv


def token_of(state: Path) -> str:
    path = state / "dev-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text().strip()


def status_with(srv: ServerProcess, token: str) -> int:
    return httpx.get(
        f"{srv.url}/v1/conversations/ws:local:start",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    ).status_code


def test_the_dev_token_survives_a_restart_until_it_is_rotated(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with without_a_set_token(state) as srv:
        first = token_of(state)
        sent = httpx.post(
            f"{srv.url}/v1/conversations/ws:local:start/messages",
            json={"text": "hello"},
            headers={"authorization": f"Bearer {first}"},
            timeout=10,
        )
        assert sent.status_code == 202, sent.text
    assert f"#token={first}" in srv.log.read_text()

    with without_a_set_token(state) as again:  # a restart: the page's token still works
        assert token_of(state) == first
        assert status_with(again, first) == 200
        with connect(
            again.ws_url, subprotocols=[Subprotocol("agentworker"), Subprotocol(f"bearer.{first}")]
        ) as ws:
            ws.send(json.dumps({"action": "ping"}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}
    # a quiet terminal: the socket's access line, not "connection open" and "closed" too
    log = again.log.read_text()
    assert '"WebSocket /v1/ws" [accepted]' in log
    assert "connection open" not in log and "connection closed" not in log

    with without_a_set_token(state, "--rotate-token") as rotated:
        fresh = token_of(state)
        assert fresh != first and len(fresh) >= 16
        assert status_with(rotated, first) == 401
        assert status_with(rotated, fresh) == 200

    (state / "dev-token").chmod(0o644)  # others could have read it: not kept
    with without_a_set_token(state) as exposed:
        assert token_of(state) != fresh
        assert status_with(exposed, fresh) == 401


def serve(port: int, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "serve",
            "--port",
            str(port),
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "AGENTWORKER_TRACING": "false"},
    )


def test_a_taken_port_is_one_line_and_exit_2_before_anything_is_printed_or_written(
    tmp_path: Path,
) -> None:
    with socket.socket() as other:  # another program holds the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = serve(port, tmp_path / "fresh")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"agentworker: cannot listen on 127.0.0.1:{port}: the address is in use"
        " (another program listens there; stop it or pass --port)"
    ]
    assert not (tmp_path / "fresh" / "dev-token").exists()

    # a second server on the same state directory and port leaves the first one's token be
    state = tmp_path / "state"
    with without_a_set_token(state) as running:
        token = (state / "dev-token").stat()
        out = serve(running.port, state)
        assert out.returncode == 2 and "the address is in use" in out.stderr
        assert (state / "dev-token").stat().st_mtime_ns == token.st_mtime_ns
        assert status_with(running, token_of(state)) == 404  # let in; nothing there


def test_send_exits_1_with_the_error_notice_on_stderr(tmp_path: Path) -> None:
    outage = tmp_path / "outage"
    outage.touch()
    env = {
        "AGENTWORKER_GRAPH": "tests.graphs:outage_graph",
        "AGENTWORKER_RETRY_ATTEMPTS": "1",
        OUTAGE_FILE: str(outage),
    }
    with ServerProcess(tmp_path / "state", env=env) as srv:

        def send(text: str, **env: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "workers.cli", "send", "-c", "ws:local:down", text]
                + ["--url", srv.url],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={**os.environ, **(env or {"AGENTWORKER_TOKEN": DEV_TOKEN})},
            )

        elsewhere = tmp_path / "another-app" / ".agentworker"
        elsewhere.mkdir(parents=True)
        (elsewhere / "dev-token").write_text("another-servers-token-0123")
        wrong = send("hello", AGENTWORKER_STATE_DIR=str(elsewhere))
        assert wrong.returncode == 1
        assert wrong.stderr.splitlines()[1].startswith(
            f"agentworker: the token in {elsewhere / 'dev-token'} is not this server's"
        )

        down = send("hello")
        assert down.returncode == 1, down
        assert down.stdout == ""
        assert down.stderr.startswith("agentworker: [error] ")
        outage.unlink()
        up = send("hello again")
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith("fine: ") and up.stderr == ""
