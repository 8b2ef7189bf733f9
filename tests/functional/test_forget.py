"""``agentworker forget`` on a real server with MLflow tracing on: the conversation's rows,
its traces and its spans are gone, it says what it removed, and nothing else is touched."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.functional.server_process import DEV_TOKEN, ServerProcess
from tests.functional.test_recovery import send, wait_answered


def test_forget_leaves_nothing_behind(tmp_path: Path) -> None:
    gone, kept = "ws:erin:erase-me", "ws:erin:keep-me"
    srv = ServerProcess(tmp_path, env={"AGENTWORKER_TRACING": "true"}).start()
    try:
        ids = [send(srv, gone, "hello"), send(srv, gone, "what time is it?")]
        wait_answered(srv, gone, ids)
        wait_answered(srv, kept, [send(srv, kept, "keep this")])
        out = subprocess.run(
            [sys.executable, "-m", "workers.cli", "forget", "-c", gone, "--url", srv.url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "AGENTWORKER_TOKEN": DEV_TOKEN},
        )
        assert out.returncode == 0, out.stderr
        assert f"forgot {gone}:" in out.stdout and "2 traces" in out.stdout
        assert "2 inbox" in out.stdout and "1 conversation" in out.stdout
        missing = httpx.get(f"{srv.url}/v1/conversations/{gone}", headers=srv.auth)
        assert missing.status_code == 404
        again = httpx.delete(f"{srv.url}/v1/conversations/{gone}", headers=srv.auth)
        assert again.status_code == 404
        assert httpx.get(f"{srv.url}/v1/conversations/{kept}", headers=srv.auth).status_code == 200
    finally:
        srv.stop()
    db = sqlite3.connect(tmp_path / "agentworker.db")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        if "conversation_id" in columns:
            rows = db.execute(f"SELECT COUNT(*) FROM {table} WHERE conversation_id = ?", (gone,))  # noqa: S608
            assert rows.fetchone()[0] == 0, table
    assert (
        db.execute(
            "SELECT COUNT(*) FROM conversations WHERE conversation_id = ?", (kept,)
        ).fetchone()[0]
        == 1
    )
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("agentworker")
    traces = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")
    assert [t.info.tags["conversation_id"] for t in traces] == [kept]
    spans = sqlite3.connect(tmp_path / "mlflow.db")
    span_tables = [
        r[0] for r in spans.execute("SELECT name FROM sqlite_master WHERE name = 'spans'")
    ]
    if span_tables:
        dumped = " ".join(str(r) for r in spans.execute("SELECT * FROM spans"))
        assert gone not in dumped
