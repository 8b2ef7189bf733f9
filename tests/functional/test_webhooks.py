"""Outbound webhooks on the embedded runtime (``agentworker serve``): receivers on loopback
verify every request with the ``standardwebhooks`` package. One fails three times and then
takes everything: it gets each payload once, in order per conversation. One never answers
in time and one always fails: the turns are answered as fast as without them, the failing
one's deliveries end dead, listed and sent again by ``agentworker dlq``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.functional.server_process import ServerProcess

SECRET = "whsec_" + base64.b64encode(b"a secret of the helpdesk, 32 bytes").decode()


class Receiver:
    """A webhook receiver: fails its first ``fail_first`` requests (HTTP 503), sleeps
    ``delay`` s before answering, and records what it took, verified."""

    def __init__(self, *, fail_first: int = 0, always_fail: bool = False, delay: float = 0.0):
        self.fail_first, self.always_fail, self.delay = fail_first, always_fail, delay
        self.requests = 0
        self.taken: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.always_fail or receiver.requests <= receiver.fail_first
                    try:
                        event = Webhook(SECRET).verify(body, dict(self.headers))
                    except Exception:
                        receiver.bad_signatures += 1
                        failing = True
                    else:
                        if not failing:
                            receiver.taken.append({"id": self.headers["webhook-id"], **event})
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {
        "helpdesk": Receiver(fail_first=3),
        "slow": Receiver(delay=1.5),  # past the 1 s the sender waits
        "broken": Receiver(always_fail=True),
    }
    yield made
    for receiver in made.values():
        receiver.close()


def served(state: Path, receivers: dict[str, Receiver]) -> ServerProcess:
    hooks = [
        {"name": name, "url": r.url, "secret_env": "HELPDESK_WEBHOOK_SECRET"}
        for name, r in receivers.items()
    ]
    env = {
        "AGENTWORKER_WEBHOOKS": json.dumps(hooks),
        "HELPDESK_WEBHOOK_SECRET": SECRET,
        "AGENTWORKER_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "AGENTWORKER_WEBHOOK_ATTEMPTS": "4",
        "AGENTWORKER_WEBHOOK_TIMEOUT_SECONDS": "1",
        "AGENTWORKER_QUOTA_MESSAGES_PER_MINUTE": "1000",
    }
    return ServerProcess(state, env=env)


def ask(server: ServerProcess, cid: str, text: str) -> float:
    """Send ``text`` and wait for the turn's answer; the seconds it took."""
    started = time.monotonic()
    sent = httpx.post(
        f"{server.url}/v1/conversations/{cid}/messages",
        json={"text": text},
        headers=server.auth,
        timeout=10,
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]
    while time.monotonic() - started < 30:
        view = httpx.get(f"{server.url}/v1/conversations/{cid}", headers=server.auth).json()
        if any(message_id in e["payload"].get("in_reply_to", []) for e in view["replies"]):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"no answer to {text!r}")


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def dlq(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWORKER_")}
    command = [sys.executable, "-m", "workers.cli", "dlq", *args, "--webhooks"]
    return subprocess.run(
        [*command, "--state-dir", str(server.state_dir)],
        env=env | {"MLFLOW_MODEL_CATALOG_URI": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_payload_once_in_order_and_a_failing_receiver_costs_the_turns_nothing(
    tmp_path: Path, receivers: dict[str, Receiver]
) -> None:
    texts = ["hello", "what are your opening hours?", "thanks, bye"]
    with served(tmp_path / "state", receivers) as server:
        took = [ask(server, cid, text) for text in texts for cid in ("ws:me:a", "ws:me:b")]
        helpdesk = receivers["helpdesk"]
        wait_for(lambda: len(helpdesk.taken) == 6, "the helpdesk receiver got every reply")
        assert helpdesk.requests >= 9 and helpdesk.bad_signatures == 0  # 3 refused, retried
        ids = [t["id"] for t in helpdesk.taken]
        assert len(set(ids)) == 6  # each payload once
        assert all(t["id"] == f"msg_{t['data']['reply_id']}" for t in helpdesk.taken)
        for cid in ("ws:me:a", "ws:me:b"):  # in order per conversation
            mine = [t["data"] for t in helpdesk.taken if t["data"]["conversation_id"] == cid]
            assert [t["type"] for t in helpdesk.taken if t["data"] in mine] == ["reply"] * 3
            view = httpx.get(f"{server.url}/v1/conversations/{cid}", headers=server.auth).json()
            assert [d["reply_id"] for d in mine] == [
                e["payload"]["reply_id"] for e in view["replies"]
            ]

        # A receiver that never answers in time and one that always fails: the turns took no
        # longer than a turn takes (the deliveries are queued, never sent on the turn's path).
        assert max(took) < 2.0, took
        broken = receivers["broken"]

        def dead(name: str) -> list[list[str]]:
            listed = dlq(server, "list").stdout.splitlines()
            return [line.split() for line in listed if f" {name} " in line]

        # Each conversation's first delivery dies; the ones behind it wait (never ahead).
        wait_for(lambda: len(dead("broken")) == 2, "the broken receiver's dead letters")
        assert all(row[4] == "4" and "503" in " ".join(row) for row in dead("broken"))
        assert "more held behind them" in dlq(server, "list").stdout
        assert broken.requests == 2 * 4  # the held ones were never tried

        # Redriven once the receiver is fixed: each delivered, once, in order.
        broken.always_fail = False
        moved = dlq(server, "redrive", "--all")
        assert moved.returncode == 0 and "2 webhook deliveries queued again" in moved.stdout
        wait_for(lambda: len(broken.taken) >= 6, "the redriven and held deliveries")
        assert dead("broken") == []
        assert len({t["id"] for t in broken.taken}) == len(broken.taken) == 6
        for cid in ("ws:me:a", "ws:me:b"):
            view = httpx.get(f"{server.url}/v1/conversations/{cid}", headers=server.auth).json()
            got = [t["data"] for t in broken.taken if t["data"]["conversation_id"] == cid]
            sent = [e["payload"]["reply_id"] for e in view["replies"]]
            assert [d["reply_id"] for d in got] == sent


def test_a_dead_delivery_holds_the_ones_behind_it_until_it_is_redriven(tmp_path: Path) -> None:
    """The queue hands out a receiver's conversation in order: a dead delivery holds the
    ones behind it (other receivers and conversations go on), a redrive sends it first."""
    from workers.adapters.local.webhooks import WebhookQueue

    queue = WebhookQueue(tmp_path / "webhooks.db")
    try:
        for n in range(3):
            queue.add("helpdesk", f"msg_{n}", "ws:a", "reply", b"{}")
        queue.add("helpdesk", "msg_b", "ws:b", "reply", b"{}")
        queue.add("crm", "msg_0", "ws:a", "reply", b"{}")
        first = {(d.subscription, d.webhook_id): d for d in queue.due(time.time(), 10)}
        assert set(first) == {("helpdesk", "msg_0"), ("helpdesk", "msg_b"), ("crm", "msg_0")}
        queue.failed(first["helpdesk", "msg_0"].id, "HTTP 503", retry_at=None)  # dead
        due = {(d.subscription, d.webhook_id) for d in queue.due(time.time(), 10)}
        assert due == {("helpdesk", "msg_b"), ("crm", "msg_0")}  # not msg_1 of ws:a
        assert queue.held() == 2 and queue.held("ws:b") == 0
        queue.redrive(None)
        assert [d.webhook_id for d in queue.due(time.time(), 10) if d.conversation_id == "ws:a"
                and d.subscription == "helpdesk"] == ["msg_0"]  # fmt: skip
        assert queue.held() == 0
    finally:
        queue.close()


def test_the_example_receiver_takes_what_the_server_sends(tmp_path: Path) -> None:
    """``examples/webhook_receiver.py``, run as its docstring says, verifies and prints
    what the server sends it, a ticket's write-back (``ticket.reply``, ``ticket.status``)
    included; a request that is not signed with its secret gets 400."""
    from tests.functional.server_process import free_port

    port = free_port()
    example = Path(__file__).parents[2] / "examples" / "webhook_receiver.py"
    env = {**os.environ, "HELPDESK_WEBHOOK_SECRET": SECRET}
    receiver = subprocess.Popen(
        [sys.executable, str(example), str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: _answers(url), "the example receiver")
        forged = httpx.post(url, content=b"{}", headers={"webhook-id": "x"}, timeout=5)
        assert forged.status_code == 400
        hook = [{"name": "example", "url": url, "secret_env": "HELPDESK_WEBHOOK_SECRET"}]
        server_env = {"AGENTWORKER_WEBHOOKS": json.dumps(hook), "HELPDESK_WEBHOOK_SECRET": SECRET}
        with ServerProcess(tmp_path / "state", env=server_env) as server:
            ask(server, "ws:me:example", "hello")
            ask(server, "ticket:HD-9", "my printer jams")  # a ticket: written back too
            assert receiver.stdout is not None
            lines = [json.loads(receiver.stdout.readline()) for _ in range(4)]
        assert lines == [
            {"type": "reply", "conversation": "ws:me:example"},
            {"type": "reply", "conversation": "ticket:HD-9"},
            {"type": "ticket.reply", "conversation": "ticket:HD-9"},
            {"type": "ticket.status", "conversation": "ticket:HD-9"},
        ]
    finally:
        receiver.kill()
        receiver.wait()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True
