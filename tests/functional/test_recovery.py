"""Restarts and crashes: the conversation continues and nothing accepted is lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.server_process import ServerProcess


def view(srv: ServerProcess, cid: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(
        f"{srv.url}/v1/conversations/{cid}", timeout=10, headers=srv.auth
    ).json()
    return data


def send(srv: ServerProcess, cid: str, text: str) -> str:
    resp = httpx.post(
        f"{srv.url}/v1/conversations/{cid}/messages",
        json={"text": text},
        timeout=10,
        headers=srv.auth,
    )
    assert resp.status_code == 202, resp.text
    message_id: str = resp.json()["message_id"]
    return message_id


def answers(srv: ServerProcess, cid: str, message_id: str) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in view(srv, cid).get("replies", [])
        if message_id in e["payload"]["in_reply_to"]
    ]


def wait_answered(srv: ServerProcess, cid: str, ids: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(answers(srv, cid, m) for m in ids):
            return
        time.sleep(0.05)
    raise AssertionError(f"unanswered after {timeout}s: {view(srv, cid)}")


def test_restart_mid_conversation_keeps_history_and_context(tmp_path: Path) -> None:
    cid = "ws:bob:restart"
    srv = ServerProcess(tmp_path).start()
    try:
        ids = [send(srv, cid, f"message {i}") for i in range(3)]
        wait_answered(srv, cid, ids)
    finally:
        srv.stop()
    srv = ServerProcess(tmp_path, port=srv.port).start()
    try:
        before = view(srv, cid)
        assert len(before["messages"]) == 3 and len(before["replies"]) == 3
        nxt = send(srv, cid, "and after the restart")
        wait_answered(srv, cid, [nxt])
        [reply] = answers(srv, cid, nxt)
        # the offline model counts the user messages it sees: the context survived
        assert "[message 4 in this conversation's context]" in reply["text"]
    finally:
        srv.stop()


def test_a_crash_mid_turn_loses_nothing_and_answers_once(tmp_path: Path) -> None:
    cid = "ws:crash"
    slow = ServerProcess(tmp_path, env={"AGENTWORKER_MODEL": "offline:1500"}).start()
    try:
        first = send(slow, cid, "first, during the crash")
        second = send(slow, cid, "second, queued behind it")
        deadline = time.monotonic() + 10
        while view(slow, cid)["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert view(slow, cid)["status"] == "running"
    finally:
        slow.kill()  # SIGKILL mid-turn: no clean shutdown, the lease is left behind
    fast = ServerProcess(tmp_path, port=slow.port).start()
    try:
        wait_answered(fast, cid, [first, second])
        time.sleep(0.3)  # anything duplicated would show up by now
        assert len(answers(fast, cid, first)) == 1
        assert len(answers(fast, cid, second)) == 1
        final = view(fast, cid)
        assert [m["status"] for m in final["messages"]] == ["consumed", "consumed"]
        assert final["status"] == "idle"
    finally:
        fast.stop()


def test_two_servers_cannot_share_a_state_directory(tmp_path: Path) -> None:
    with ServerProcess(tmp_path):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "workers.cli",
                "serve",
                "--state-dir",
                str(tmp_path),
                "--port",
                "9",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"AGENTWORKER_TRACING": "false", "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode != 0
        assert (
            "another agentworker process is using this state directory" in out.stdout + out.stderr
        )


def test_every_turn_is_an_mlflow_trace(tmp_path: Path) -> None:
    cid = "ws:carol:traced"
    srv = ServerProcess(tmp_path, env={"AGENTWORKER_TRACING": "true"}).start()
    try:
        ids = [send(srv, cid, "hello"), send(srv, cid, "open a ticket about the fridge")]
        wait_answered(srv, cid, ids)
    finally:
        srv.stop()  # flushes the async trace queue
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "traces", "-c", cid, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("tr-")]
    assert len(rows) == 2, out.stdout
    assert all(" OK " in row for row in rows)
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("agentworker")
    traces = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")
    assert len(traces) == 2  # exactly one per turn: no stray traces
    by_id = {t.info.tags["message_ids"]: t for t in traces}
    tool_turn = by_id[ids[1]]
    assert tool_turn.info.tags["conversation_id"] == cid
    assert tool_turn.info.tags["channel"] == "api" and tool_turn.info.tags["run_id"]
    assert tool_turn.info.token_usage["input_tokens"] > 0
    spans = [(sp.name, sp.span_type) for sp in tool_turn.data.spans]
    assert spans[0] == ("turn", "AGENT")
    assert ("tool.create_ticket", "TOOL") in spans and ("model", "CHAT_MODEL") in spans
    assert {"store.commit", "deliver"} <= {name for name, _ in spans}
    assert tool_turn.data.spans[0].attributes["store.claim_ms"] > 0
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "traces",
            "-c",
            "nobody",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 1 and "no traces" in missing.stdout
