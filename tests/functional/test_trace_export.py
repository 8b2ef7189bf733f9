"""Traces leave the embedded server through the spool and the exporter process: every
turn's trace is in MLflow after a ``kill -9`` of the server, and a tracking store that is
down holds up no reply and loses no trace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.functional.server_process import ServerProcess, free_port
from tests.functional.test_recovery import send, wait_answered
from workers.tracing.exporter import read_records
from workers.tracing.spool import CLOSED, OPEN, segments

TRACED = {"AGENTWORKER_TRACING": "true"}


def spool_of(state: Path) -> list[Path]:
    spool = state / "trace-spool"
    return segments(spool, CLOSED) + segments(spool, OPEN)


def count_traces(state: Path) -> int:
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("agentworker")
    if experiment is None:
        return 0
    found = mlflow.search_traces(
        locations=[experiment.experiment_id], return_type="list", include_spans=False
    )
    return len(found)


def test_after_kill_9_every_answered_turn_has_its_trace(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, env=TRACED).start()
    try:
        sent = [
            (f"ws:kim:k9-{i}", send(srv, f"ws:kim:k9-{i}", "where is my order")) for i in range(6)
        ]
        for cid, message_id in sent:
            wait_answered(srv, cid, [message_id])
    finally:
        srv.kill()  # no clean shutdown: the last segment is still open
    # The orphaned exporter exports the dead server's segments, then exits.
    deadline = time.monotonic() + 60
    while spool_of(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool_of(tmp_path) == []
    assert count_traces(tmp_path) == len(sent)


def test_a_tracking_store_that_is_down_holds_up_no_reply_and_loses_no_trace(
    tmp_path: Path,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    env = {**TRACED, "AGENTWORKER_MLFLOW_TRACKING_URI": down}
    srv = ServerProcess(tmp_path, env=env).start()
    try:
        cid = "ws:kim:down"
        started = time.monotonic()
        ids = [send(srv, cid, f"question {i} about my order") for i in range(3)]
        wait_answered(srv, cid, ids, timeout=15)
        answered_s = time.monotonic() - started
    finally:
        stopping = time.monotonic()
        srv.stop()
        stop_s = time.monotonic() - stopping
    assert answered_s < 10, answered_s
    assert stop_s < 15, stop_s  # the exporter gives up on a store that is down when told to stop
    kept = [r for p in spool_of(tmp_path) for r in read_records(p)[0]]
    assert [r["tags"]["conversation_id"] for r in kept] == [cid] * len(kept)
    assert len(kept) >= 1  # the turns' traces wait in the spool for the next start
    assert "tracking store unavailable" in srv.log.read_text()


def test_a_runtime_stopped_right_after_its_first_turn_still_exports_it(tmp_path: Path) -> None:
    """The exporter is still starting when the server stops: it is told by a file, which
    it reads once it is up, not by a signal it cannot handle yet."""
    from workers.bootstrap import build_tracer
    from workers.config import load_settings

    tracer = build_tracer(load_settings(state_dir=tmp_path, tracing=True))
    with tracer.turn("turn", tags={"conversation_id": "c", "turn_id": "t"}, inputs=None):
        pass
    tracer.close()
    assert spool_of(tmp_path) == []
    assert count_traces(tmp_path) == 1
