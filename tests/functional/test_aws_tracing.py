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


def test_forget_with_the_tracking_server_down_says_the_traces_remain_and_how_to_retry(
    aws: Aws,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``forget --target aws`` while the tracking server is down: the rows are erased, the
    command says the traces are not (exit 3) and how to finish; run again once the server
    answers, it deletes them. Before: a traceback after the rows were gone, and a second
    run answered "no conversation"."""
    from tests.functional.server_process import free_port
    from workers.cli import main

    cid = "ticket:forget-while-down"
    monkeypatch.setenv("AGENTWORKER_TRACING", "true")
    monkeypatch.setenv("AGENTWORKER_MLFLOW_TRACKING_URI", mlflow_server)
    bootstrap.reset_aws_deps()
    aws.send_sqs(cid, "hello")
    aws.pump()
    aws.replies()
    aws.wait_executions_done()
    assert len(traces_of(mlflow_server, cid)) == 1
    monkeypatch.setenv("AGENTWORKER_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    bootstrap.reset_aws_deps()
    assert main(["forget", "-c", cid, "--target", "aws"]) == 3
    out, err = capsys.readouterr()
    assert f"forgot {cid}:" in out and "1 conversation" in out
    assert "traces are not deleted" in err and f"agentworker forget -c {cid} --target aws" in err
    assert bootstrap.aws_deps().store.get_conversation(cid) is None
    monkeypatch.setenv("AGENTWORKER_MLFLOW_TRACKING_URI", mlflow_server)
    bootstrap.reset_aws_deps()
    assert main(["forget", "-c", cid, "--target", "aws"]) == 0
    assert f"forgot {cid}: 1 traces" in capsys.readouterr().out
    assert traces_of(mlflow_server, cid) == []
