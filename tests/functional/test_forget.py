"""``agentworker forget`` on a real server with MLflow tracing on: the conversation's rows,
its traces and its spans are gone, it says what it removed, and nothing else is touched.
The SQLite store's part: the text leaves the files, and a run cut off by the erasure cannot
write into a conversation created again under the id."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from events.inbound import InboundMessage
from tests.functional.server_process import DEV_TOKEN, ServerProcess
from tests.functional.test_recovery import send, wait_answered
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.core.model import Access, TurnCommit
from workers.errors import LeaseLost


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
        assert f"forgot {gone}:" in out.stdout
        # Deleted within the erasure's wait for the exporter (2 s), else after it (below).
        assert "2 traces" in out.stdout or "traces: pending" in out.stdout
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


def test_forget_leaves_no_text_in_the_database_files(tmp_path: Path) -> None:
    """Before: the rows were deleted, their text stayed in the write-ahead log (and, once
    checkpointed, in the database's free pages)."""
    store = SqliteConversationStore(tmp_path / "agentworker.db")
    secret = "erase-me-7f3a9c"
    for i in range(3):
        message = InboundMessage(conversation_id="ws:a:gone", text=f"{secret} {i}")
        store.append_inbox(message, now=1.0, default_policy="enqueue")
    kept = InboundMessage(conversation_id="ws:a:kept", text="keep me")
    store.append_inbox(kept, now=1.0, default_policy="enqueue")
    assert store.forget("ws:a:gone") is not None
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert "agentworker.db-wal" in files  # the store is still open: its log is there, empty
    assert [name for name, data in files.items() if secret.encode() in data] == []
    assert [e.message.text for e in store.pending_inbox("ws:a:kept")] == ["keep me"]
    store.close()


def test_a_run_cut_off_by_an_erasure_cannot_write_into_the_id_taken_again(tmp_path: Path) -> None:
    """Alice's run holds token 1 when her conversation is erased; Mallory creates the id
    again. Before: the new conversation's first lease was token 1 too, and the old run's
    commit (Alice's reply) landed in Mallory's conversation."""
    store = SqliteConversationStore(tmp_path / "agentworker.db")
    cid = "ws:shared:1"
    first = InboundMessage(conversation_id=cid, text="alice's", tenant="acme", owner="alice")
    held = store.append_inbox(first, now=1.0, default_policy="enqueue", lease_ttl=60)
    assert held.lease is not None
    store.renew_lease(cid, held.lease.token, now=2.0, ttl=60, bind="run-of-alice")
    assert store.forget(cid) is not None
    again = InboundMessage(conversation_id=cid, text="mallory's", tenant="evil", owner="mallory")
    taken = store.append_inbox(
        again,
        now=3.0,
        default_policy="enqueue",
        lease_ttl=60,
        access=Access("evil", frozenset({"mallory"})),
    )
    assert taken.lease is not None and taken.lease.token > held.lease.token
    with pytest.raises(LeaseLost):
        store.commit_turn(cid, TurnCommit(held.lease.token, [1], "idle", b"alice's checkpoint"))
    assert store.load_checkpoint(cid) is None
    store.close()
