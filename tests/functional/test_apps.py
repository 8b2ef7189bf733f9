"""Apps served by the real server: the triage example (custom channels, a free-form
``interrupt()``, an async node) over HTTP, the WebSocket and the CLI; answers nobody waits
for; custom channels across ``kill -9``; a graph or model that cannot work stops
``agentworker serve`` with one line before it serves anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.functional.server_process import DEV_TOKEN, ServerProcess, free_port
from tests.functional.test_recovery import answers, send, view, wait_answered

TRIAGE = {"AGENTWORKER_GRAPH": "triage_bot.graph:build", "AGENTWORKER_CONTEXT_WINDOW": "40"}


def state(srv: ServerProcess, cid: str) -> dict[str, Any]:
    resp = httpx.get(f"{srv.url}/v1/conversations/{cid}/state", timeout=10, headers=srv.auth)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def resume(srv: ServerProcess, cid: str, interrupt_id: str, value: Any) -> httpx.Response:
    body = {"resume": {"interrupt_id": interrupt_id, "value": value}}
    return httpx.post(
        f"{srv.url}/v1/conversations/{cid}/messages", json=body, timeout=10, headers=srv.auth
    )


def test_triage_asks_then_resumes_over_http_and_keeps_its_channels_across_kill_9(
    tmp_path: Path,
) -> None:
    cid = "ws:carol:triage"
    srv = ServerProcess(tmp_path, env=TRIAGE).start()
    try:
        first = send(srv, cid, "Hello, I have a question")
        wait_answered(srv, cid, [first])
        [ask] = answers(srv, cid, first)
        assert ask["type"] == "interrupt" and ask["value"]["options"] == [
            "billing",
            "technical",
            "account",
        ]
        assert view(srv, cid)["status"] == "awaiting_approval"
        waiting = state(srv, cid)
        assert waiting["next"] == ["classify"] and waiting["interrupts"][0]["value"] == ask["value"]
        answer = resume(srv, cid, ask["interrupt_id"], {"category": "account"})
        assert answer.status_code == 202, answer.text
        wait_answered(srv, cid, [answer.json()["message_id"]])
        [reply] = answers(srv, cid, answer.json()["message_id"])
        assert reply["type"] == "reply" and reply["text"].startswith("[account team, normal")
        urgent = send(srv, cid, "The app is down, urgent!")
        wait_answered(srv, cid, [urgent])
        before = state(srv, cid)["values"]
        assert before["category"] == "technical" and before["priority"] == "urgent"
        assert before["routing"] == ["account:asked", "technical:keywords"]
    finally:
        srv.kill()  # SIGKILL: no clean shutdown
    srv = ServerProcess(tmp_path, port=srv.port, env=TRIAGE).start()
    try:
        after = state(srv, cid)
        assert after["values"] == before and after["messages"] == 4
        nxt = send(srv, cid, "is there any news?")
        wait_answered(srv, cid, [nxt])
        [reply] = answers(srv, cid, nxt)
        assert reply["text"].startswith("[technical team, urgent priority]")  # remembered
        assert state(srv, cid)["values"]["summary"].endswith("is there any news?")
    finally:
        srv.stop()


def test_answers_nobody_waits_for_change_nothing(tmp_path: Path) -> None:
    cid = "ws:dave:triage"
    with ServerProcess(tmp_path, env=TRIAGE) as srv:
        unknown = resume(srv, "ws:nobody:x", "i-1", "billing")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        first = send(srv, cid, "my invoice is wrong")  # classified: nothing asked
        wait_answered(srv, cid, [first])
        before = view(srv, cid)
        stale = resume(srv, cid, "i-1", "billing")
        assert stale.status_code == 409, stale.text
        assert stale.json()["error"] == {
            "code": "not_waiting",
            "message": f"conversation {cid!r} is not waiting for an answer",
            "field": "interrupt_id",
        }
        assert view(srv, cid) == before  # nothing written
        deep: Any = "x"
        for _ in range(40):
            deep = [deep]
        too_deep = resume(srv, cid, "i-1", deep)
        assert too_deep.status_code == 422 and too_deep.json()["error"]["field"] == "resume.value"


def test_triage_over_the_websocket_streams_asks_and_resumes(tmp_path: Path) -> None:
    cid = "ws:erin:triage"
    with (
        ServerProcess(tmp_path, env=TRIAGE) as srv,
        connect(srv.ws_url, additional_headers=srv.auth) as ws,
    ):
        ws.send(json.dumps({"action": "send", "conversation_id": cid, "text": "hi there"}))
        frames = frames_until(ws, "interrupt")
        assert frames[0]["type"] == "accepted"
        ask = frames[-1]
        ws.send(
            json.dumps(
                {
                    "action": "resume",
                    "conversation_id": cid,
                    "interrupt_id": ask["interrupt_id"],
                    "value": "billing",
                }
            )
        )
        frames = frames_until(ws, "reply")
        chunks = "".join(f["delta"] for f in frames if f["type"] == "chunk")
        reply = frames[-1]
        assert reply["text"].startswith("[billing team, normal priority]")
        assert chunks and chunks in reply["text"]  # the model's output streamed from the node
        ws.send(
            json.dumps(
                {"action": "resume", "conversation_id": cid, "interrupt_id": "x", "value": 1}
            )
        )
        error = frames_until(ws, "error")[-1]
        assert error["error"]["code"] == "not_waiting"


def frames_until(ws: Any, kind: str, timeout: float = 30) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        frames.append(frame)
        if frame["type"] == kind:
            return frames
    raise AssertionError(f"no {kind} frame: {frames}")


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        # The servers' token, as a user who copied it would pass it.
        env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", "AGENTWORKER_TOKEN": DEV_TOKEN}
        | (env or {}),
    )


def test_the_cli_answers_an_interrupt_with_json(tmp_path: Path) -> None:
    cid = "cli:frank"
    with ServerProcess(tmp_path, env=TRIAGE) as srv:
        url = ["--url", srv.url]
        asked = cli("send", "-c", cid, "hello", *url)
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.startswith("[answer needed] Is this about billing")
        bad = cli("send", "-c", cid, "--resume", "{not json", *url)
        assert bad.returncode == 2 and "--resume: not JSON" in bad.stderr
        done = cli("send", "-c", cid, "--resume", '{"category": "technical"}', *url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("[technical team, normal priority]")
        again = cli("send", "-c", cid, "--resume", '"billing"', *url)
        assert again.returncode == 1 and "nothing is waiting" in again.stderr
        shown = cli("state", "-c", cid, *url)
        assert json.loads(shown.stdout)["values"]["category"] == "technical"
        history = cli("history", "-c", cid, *url)
        assert 'answered {"category": "technical"}' in history.stdout


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--graph", "nowhere.at.all:graph"], {}, "graph 'nowhere.at.all:graph' (--graph): "),
        ([], {"AGENTWORKER_GRAPH": "json:dumps"}, "the factory raised TypeError"),
        (
            ["--model", "bedrock:anthropic.claude-3-5-haiku-20241022-v1:0"],
            {"AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_CONFIG_FILE": "/nonexistent"},
            "no AWS region for Bedrock",
        ),
        (["--model", "openai:gpt-4o-mini"], {"OPENAI_API_KEY": ""}, "set OPENAI_API_KEY"),
        (["--model", "mistery-model"], {}, "expected 'offline' or '<provider>:<model>'"),
    ],
)
def test_serve_refuses_what_cannot_work_in_one_line_before_serving(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    port = str(free_port())
    out = cli("serve", "--port", port, "--state-dir", str(tmp_path / "s"), *args, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "serving" not in out.stdout and "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("agentworker: ") and expected in line, line


def test_serve_reads_the_app_file_of_the_working_directory(tmp_path: Path) -> None:
    app = tmp_path / "app"
    made = cli("new", "greeter", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    app = tmp_path / "greeter"
    with ServerProcess(tmp_path / "state", cwd=app) as srv:
        first = send(srv, "ws:g:1", "hello")
        wait_answered(srv, "ws:g:1", [first])
        [ask] = answers(srv, "ws:g:1", first)
        assert ask["type"] == "interrupt" and "name" in ask["text"]
        named = send(srv, "ws:g:1", "Grace")  # typed in the chat: the interrupt's answer
        wait_answered(srv, "ws:g:1", [named])
        assert state(srv, "ws:g:1")["values"] == {"name": "Grace"}
        [reply] = answers(srv, "ws:g:1", named)
        assert reply["type"] == "reply" and "hello" in reply["text"]


def test_the_demo_runs_any_graph_it_is_given(tmp_path: Path) -> None:
    out = cli(
        "demo", "--state-dir", str(tmp_path / "s"), "--no-tracing", "--graph",
        "triage_bot.graph:build",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "graph triage_bot.graph:build" in out.stdout and "demo ok" in out.stdout
    assert "demo:alice > (answer 'yes')" in out.stdout  # the graph asked, the demo answered
