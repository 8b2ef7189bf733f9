"""``agentworker tickets import``: a 200-ticket helpdesk export answered by a running server,
the importer killed (``kill -9``) half way and started again: every ticket answered exactly
once, the summary right, the rows that are not tickets named."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.aws_env import Aws, aws
from tests.functional.server_process import DEV_TOKEN, ServerProcess
from workers import bootstrap

__all__ = ["aws"]  # the fixture

TICKETS = 200


def export(path: Path) -> Path:
    """A helpdesk's CSV export, with its own column names and two rows that are not tickets."""
    with path.open("w", newline="", encoding="utf-8") as out:
        rows = csv.writer(out)
        rows.writerow(["Ticket ID", "Subject", "Description", "Requester", "Priority", "Tags"])
        for n in range(1, TICKETS + 1):
            rows.writerow(
                [
                    f"HD-{n}",
                    f"Printer {n} jams",
                    f"The printer on floor {n % 7} jams on every page.",
                    f"user{n}@example.com",
                    "normal",
                    "hardware, printers",
                ]
            )
        rows.writerow(["", "No id", "A row without a ticket id", "x@example.com", "low", ""])
        rows.writerow(["HD-7", "Again", "Ticket HD-7 listed twice", "y@example.com", "low", ""])
    return path


def importer(server: ServerProcess, file: Path, *more: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWORKER_")}
    env |= {"AGENTWORKER_TOKEN": DEV_TOKEN, "MLFLOW_MODEL_CATALOG_URI": ""}
    command = [sys.executable, "-m", "workers.cli", "tickets", "import", str(file)]
    return subprocess.Popen(
        [*command, "--url", server.url, "--concurrency", "8", *more],
        env=env,
        cwd=file.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def answered(server: ServerProcess) -> int:
    """How many of the server's conversations are idle (their ticket answered)."""
    idle, offset = 0, 0
    while offset is not None:
        page = httpx.get(
            f"{server.url}/v1/conversations",
            params={"limit": 100, "offset": offset},
            headers=server.auth,
            timeout=10,
        ).json()
        idle += sum(1 for c in page["conversations"] if c["status"] == "idle")
        offset = page["next_offset"]
    return idle


def test_an_import_killed_half_way_goes_on_and_answers_every_ticket_once(tmp_path: Path) -> None:
    file = export(tmp_path / "backlog.csv")
    served = {
        "AGENTWORKER_QUOTA_MESSAGES_PER_MINUTE": "1000",
        "AGENTWORKER_WORKERS": "4",
        "AGENTWORKER_MODEL": "offline:40",  # 40 ms a model call: the kill lands half way
    }
    with ServerProcess(tmp_path / "state", env=served) as server:
        first = importer(server, file)
        deadline = time.monotonic() + 120
        while answered(server) < TICKETS // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # kill -9, mid-import
        first.wait(timeout=10)
        assert TICKETS // 3 <= answered(server) < TICKETS

        again = importer(server, file, "--json")
        out, err = again.communicate(timeout=300)
        assert again.returncode == 1, err  # two rows are not tickets
        summary: dict[str, Any] = json.loads(out)
        assert summary["tickets"] == TICKETS + 2
        assert summary["answered"] == TICKETS and summary["failed"] == 2
        assert summary["escalated"] == 0 and summary["waiting_for_approval"] == 0
        assert summary["resumed"] >= TICKETS // 3  # read back, not sent again
        assert summary["input_tokens"] > 0 and summary["output_tokens"] > 0
        reasons = sorted(f["reason"] for f in summary["failures"])
        assert reasons[0].startswith("id:") and "listed twice" in reasons[1]

        for n in (1, 77, TICKETS):  # each ticket: one message, one reply, its fields kept
            view = httpx.get(
                f"{server.url}/v1/conversations/ticket:HD-{n}", headers=server.auth, timeout=10
            ).json()
            assert len(view["messages"]) == 1 and len(view["replies"]) == 1
            assert view["messages"][0]["text"].startswith(f"Printer {n} jams\n\nThe printer")
        assert answered(server) == TICKETS

        table = importer(server, file)  # a third run: nothing to do, the table says so
        out, err = table.communicate(timeout=120)
        assert "answered" in out and f"{TICKETS}" in out and "failed: line 202" in out
        assert "tickets" in err  # the progress bar, on stderr


def test_a_file_it_cannot_read_or_no_server_is_said_in_one_line(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "workers.cli", "tickets", "import", str(tmp_path / "none.csv")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "none.csv" in missing.stderr
    file = export(tmp_path / "backlog.csv")
    gone = subprocess.run(
        [sys.executable, "-m", "workers.cli", "tickets", "import", str(file)]
        + ["--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 3 and "run the same command again" in gone.stderr


def test_tickets_queued_on_the_aws_runtime_are_answered_once_even_sent_twice(
    aws: Aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--target aws``: the tickets go to the inbound queue in batches of ten
    (``SendMessageBatch``); the workflow answers each; the file sent again (a rerun after a
    crash) answers nothing twice (SQS's deduplication, then the dedupe key)."""
    from workers.tickets import run_to_queue

    file = tmp_path / "backlog.jsonl"
    rows = [{"id": f"Q{n}", "subject": f"Printer {n} jams", "requester": "ana"} for n in range(12)]
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sqs = aws.session.client("sqs")
    for _ in range(2):
        assert run_to_queue(file, sqs, aws.stack.queue_url, columns={}, as_json=True) == 0
        out = capsys.readouterr().out  # (the handlers' metrics print there too)
        summary = json.loads(out[out.index('{\n  "tickets"') :])
        assert (summary["queued"], summary["failed"]) == (12, 0)
        aws.pump()
    replies = aws.replies(want=12)
    aws.wait_executions_done()
    assert sorted(r["conversation_id"] for r in replies) == sorted(
        f"ticket:Q{n}" for n in range(12)
    )
    store = bootstrap.aws_deps().store
    for n in (0, 11):
        found = store.history(f"ticket:Q{n}")
        assert found is not None and len(found.inbox) == 1
        assert found.inbox[0].message.metadata["ticket_requester"] == "ana"
