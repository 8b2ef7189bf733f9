"""A turn invoked through the ``turn`` handler is traced to a real MLflow tracking server
(``mlflow server`` on loopback), flushed before the handler returns, tagged with the
conversation."""

from __future__ import annotations

import pytest

from tests.functional.aws_env import Aws, aws
from tests.functional.server_process import traces_of
from workers import bootstrap

__all__ = ["aws"]  # the fixture


@pytest.fixture
def mlflow_server(mlflow_server_url: str) -> str:
    return mlflow_server_url


def test_a_turn_through_the_handler_is_traced_to_the_tracking_server(
    aws: Aws, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("AGENTWORKER_TRACING", "true")
    monkeypatch.setenv("AGENTWORKER_MLFLOW_TRACKING_URI", mlflow_server)
    bootstrap.reset_aws_deps()
    aws.send_sqs("ticket:traced", "please open a ticket about the coffee machine")
    aws.pump()
    [reply] = aws.replies()
    assert reply["text"].startswith("Opened ticket")
    # The step sends the reply inside the turn's trace; the trace is flushed before the
    # handler returns, so once the run is over it is there, with no polling.
    aws.wait_executions_done()
    traces = traces_of(mlflow_server, "ticket:traced")
    assert len(traces) == 1
    trace = traces[0]
    assert trace.info.tags["channel"] == "sqs" and trace.info.tags["run_id"]
    assert trace.info.token_usage["input_tokens"] > 0
    spans = {(s.name, s.span_type) for s in trace.data.spans}
    assert {("turn", "AGENT"), ("model", "CHAT_MODEL"), ("tool.create_ticket", "TOOL")} <= spans
