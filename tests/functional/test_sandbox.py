"""``agentworker sandbox`` as a real process (moto server, the real ASL, our handlers), driven by
``agentworker send --target sandbox`` processes, and stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.functional.server_process import free_port
from workers.cli import main

pytest.importorskip("moto")

ENV = {**os.environ, "AGENTWORKER_TRACING": "false", "MLFLOW_MODEL_CATALOG_URI": ""}


def agentworker(*args: str) -> list[str]:
    return [sys.executable, "-m", "workers.cli", *args]


class SandboxProcess:
    def __init__(self, state_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.log = state_dir / "sandbox.log"
        cmd = agentworker("sandbox", "--port", str(self.port), "--state-dir", str(state_dir), *args)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=ENV, stdout=out, stderr=subprocess.STDOUT)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "sandbox.json"

    def wait_ready(self, timeout: float = 40.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not self.state_file.exists():
            assert self.proc.poll() is None, f"sandbox exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"sandbox not ready:\n{self.output()}"
            time.sleep(0.1)
        state: dict[str, str] = json.loads(self.state_file.read_text())
        return state

    def send(self, conversation: str, *args: str) -> subprocess.Popen[str]:
        cmd = agentworker("send", "--target", "sandbox", "--state-dir", str(self.state_dir))
        return subprocess.Popen(
            [*cmd, "-c", conversation, "--timeout", "20", *args],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def say(self, conversation: str, *args: str) -> str:
        """Send, wait for the reply, return it (the command must succeed)."""
        proc = self.send(conversation, *args)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"{args}: {out}{err}\n{self.output()}"
        return out.strip()

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    process = SandboxProcess(tmp_path)
    try:
        yield process
    finally:
        process.kill()


def test_sandbox_answers_each_conversation_and_stops_on_ctrl_c(sandbox: SandboxProcess) -> None:
    state = sandbox.wait_ready()
    assert state["endpoint_url"] == f"http://127.0.0.1:{sandbox.port}"
    assert state["queue_url"].endswith("/agentworker-inbound.fifo")
    assert state["replies_queue_url"].endswith("/agentworker-replies-sandbox")
    banner = sandbox.output()
    assert state["topic_arn"] in banner and state["state_machine_arn"] in banner
    assert f"agentworker send --target sandbox --state-dir {sandbox.state_dir}" in banner

    reply = sandbox.say("ticket:1", "please open a ticket about the printer")
    assert reply.startswith("Opened ticket 1: ")

    # two clients wait on the one replies queue at once: each gets its own conversation's reply
    monitor = sandbox.send("ticket:2", "please open a ticket about the monitor")
    keyboard = sandbox.send("ws:me:3", "please open a ticket about the keyboard")
    (monitor_out, monitor_err), (keyboard_out, keyboard_err) = (
        monitor.communicate(timeout=30),
        keyboard.communicate(timeout=30),
    )
    assert (monitor.returncode, keyboard.returncode) == (0, 0), (
        f"{monitor_err}{keyboard_err}\n{sandbox.output()}"
    )
    assert "Opened ticket" in monitor_out and "'the monitor'" in monitor_out
    assert "Opened ticket" in keyboard_out and "'the keyboard'" in keyboard_out

    asked = sandbox.say("ticket:1", "close ticket 1")
    assert asked.startswith("[approval needed] ")
    assert sandbox.say("ticket:1", "--approve").startswith("Updated. Ticket 1 ")

    # The event bus routes agentworker.message to ingest, as the deployed stack does.
    assert state["event_bus"] and state["event_bus"] in banner
    clients = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    bus = clients.client("events", endpoint_url=state["endpoint_url"])
    detail = {"conversation_id": "ticket:40", "text": "please open a ticket about the bus"}
    put = bus.put_events(
        Entries=[
            {
                "Source": "crm",
                "DetailType": "agentworker.message",
                "Detail": json.dumps(detail),
                "EventBusName": state["event_bus"],
            }
        ]
    )
    assert put["FailedEntryCount"] == 0
    sqs = clients.client("sqs", endpoint_url=state["endpoint_url"])
    deadline, texts = time.monotonic() + 30, list[str]()
    while time.monotonic() < deadline and not texts:
        got = sqs.receive_message(QueueUrl=state["replies_queue_url"], WaitTimeSeconds=1)
        for message in got.get("Messages", []):
            body = json.loads(message["Body"])
            payload = json.loads(body["Message"]) if "Message" in body else body
            if payload["conversation_id"] == "ticket:40":
                texts.append(payload["text"])
    assert texts and "'the bus'" in texts[0], sandbox.output()

    started = time.monotonic()
    assert sandbox.interrupt() == 0, sandbox.output()
    assert time.monotonic() - started < 5
    assert not sandbox.state_file.exists()


def test_the_sandbox_serves_the_graph_it_is_given(tmp_path: Path) -> None:
    """``--graph``: the triage example behind the AWS runtime on moto; its interrupt is
    answered with ``--resume`` through the queues, like any message."""
    process = SandboxProcess(tmp_path, "--graph", "triage_bot.graph:build")
    try:
        process.wait_ready()
        asked = process.say("ticket:7", "hello")
        assert asked.startswith("[answer needed] Is this about billing"), asked
        answered = process.say("ticket:7", "--resume", '"account"')
        assert answered.startswith("[account team, normal priority]"), answered
        assert process.interrupt() == 0
    finally:
        process.kill()


def test_the_sandbox_refuses_a_graph_that_cannot_work_before_it_is_ready(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        agentworker("sandbox", "--state-dir", str(tmp_path), "--graph", "nowhere:graph"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "graph 'nowhere:graph' (--graph): cannot import 'nowhere'" in out.stderr
    assert "sandbox ready" not in out.stdout and not (tmp_path / "sandbox.json").exists()


def test_send_to_a_sandbox_that_is_not_running_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["send", "--target", "sandbox", "--state-dir", str(tmp_path), "-c", "t:1", "hi"])
    assert code == 1
    assert "start one with 'agentworker sandbox'" in capsys.readouterr().err
