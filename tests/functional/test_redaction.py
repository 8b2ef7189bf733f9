"""The redaction hook on real output: a conversation about a card number and an e-mail
address, served by a real server with MLflow tracing on: no span of its traces and no line
of the server's log holds them, while the conversation itself (the user's own data, in the
store) keeps them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.functional.server_process import ServerProcess
from tests.functional.test_recovery import send, view, wait_answered

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
# the card in any grouping (spaces, dashes, none); a bare "4111" would also match the
# nanosecond timestamps of the spans now and then
CARD_LEAK = re.compile(r"4111[ -]?1111[ -]?1111[ -]?1111|1111[ -]1111")


def test_no_span_and_no_log_line_holds_the_card_or_the_email(tmp_path: Path) -> None:
    cid = "ws:dana:pii"
    env = {"AGENTWORKER_TRACING": "true", "AGENTWORKER_LOG_LEVEL": "DEBUG"}
    srv = ServerProcess(tmp_path, env=env).start()
    try:
        ids = [
            send(srv, cid, f"please open a ticket about card {CARD}, mail {EMAIL}"),
            send(srv, cid, f"my card {CARD} was charged twice"),
        ]
        wait_answered(srv, cid, ids)
        stored = json.dumps(view(srv, cid))
    finally:
        srv.stop()  # flushes the traces
    assert CARD in stored and EMAIL in stored  # the user's own conversation keeps them
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("agentworker")
    traces = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")
    assert len(traces) == 2
    dumped = [json.dumps(t.to_dict(), default=str) for t in traces]
    spans = sum(len(t.data.spans) for t in traces)
    assert spans >= 6 and any("[CARD]" in d for d in dumped) and any("[EMAIL]" in d for d in dumped)
    for text in dumped:
        assert not CARD_LEAK.search(text) and EMAIL not in text
    log = srv.log.read_text()
    assert "DEBUG" in log or "INFO" in log
    assert not CARD_LEAK.search(log) and EMAIL not in log
