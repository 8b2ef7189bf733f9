"""``agentworker dlq`` on the embedded runtime, against a real server process: messages
whose turn failed for good during an outage are listed, redriven once it is over (with the
server running: its sweeper runs them; with it stopped: its next start does), and each is
answered exactly once, however often the redrive is repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.functional.server_process import ServerProcess
from tests.functional.test_recovery import answers, send, view, wait_answered
from tests.graphs import OUTAGE_FILE
from workers.cli import main


def copy_of(srv: ServerProcess, cid: str, message_id: str) -> str:
    """The id of the message a redrive accepted in place of ``message_id``."""
    [copy] = [m["message_id"] for m in view(srv, cid)["messages"] if m["message_id"] != message_id]
    return str(copy)


def test_failed_messages_are_listed_redriven_and_answered_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outage = tmp_path / "outage"
    outage.touch()
    srv = ServerProcess(
        tmp_path / "state",
        env={
            "AGENTWORKER_GRAPH": "tests.graphs:outage_graph",
            "AGENTWORKER_RETRY_ATTEMPTS": "1",
            "AGENTWORKER_SWEEP_INTERVAL_SECONDS": "0.2",
            OUTAGE_FILE: str(outage),
        },
    )
    where = ["--state-dir", str(srv.state_dir)]
    first, second = "ws:local:dlq-a", "ws:local:dlq-b"
    srv.start()
    try:
        a, b = send(srv, first, "hello"), send(srv, second, "hi again")
        wait_answered(srv, first, [a])
        wait_answered(srv, second, [b])
        [notice] = answers(srv, first, a)
        assert notice["type"] == "notice" and notice["level"] == "error"
        [failed] = view(srv, first)["messages"]
        assert failed["status"] == "failed"
        assert failed["error"] == "RuntimeError: the model is down (after 1 attempt)"

        assert main(["dlq", "list", *where]) == 0
        out = capsys.readouterr().out
        assert a in out and b in out and first in out and "the model is down" in out

        assert main(["dlq", "redrive", "--id", a, "--id", "nope", *where]) == 2
        assert "no failed message 'nope'" in capsys.readouterr().err
        assert [m["status"] for m in view(srv, first)["messages"]] == ["failed"]

        outage.unlink()
        assert main(["dlq", "redrive", "--id", a, *where]) == 0  # the server runs
        assert f"redriven {a} ({first})" in capsys.readouterr().out
        wait_answered(srv, first, [copy_of(srv, first, a)], timeout=10)
    finally:
        srv.stop()

    assert main(["dlq", "redrive", "--all", *where]) == 0  # the server is stopped
    assert f"redriven {b} ({second})" in capsys.readouterr().out
    srv.start()
    try:
        wait_answered(srv, second, [copy_of(srv, second, b)], timeout=10)
        assert main(["dlq", "redrive", "--id", a, "--id", b, *where]) == 0
        assert capsys.readouterr().out.count("already redriven") == 2
        for cid, original in ((first, a), (second, b)):
            messages: list[dict[str, Any]] = view(srv, cid)["messages"]
            assert [m["status"] for m in messages] == ["redriven", "consumed"]
            copy = messages[1]["message_id"]
            [reply] = answers(srv, cid, copy)
            assert reply["type"] == "reply" and reply["text"].startswith("fine: ")
            assert len(answers(srv, cid, original)) == 1  # its error notice, nothing more
        assert main(["dlq", "list", *where]) == 0
        assert "no failed messages" in capsys.readouterr().out
    finally:
        srv.stop()
