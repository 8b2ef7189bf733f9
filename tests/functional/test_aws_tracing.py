"""A turn invoked through the ``turn`` handler is traced to a real MLflow tracking server
(``mlflow server`` on loopback), flushed before the handler returns, tagged with the
conversation."""

from __future__ import annotations

import json
from typing import Any

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


def test_a_thumb_on_a_reply_in_slack_reaches_its_trace_and_taking_it_back_withdraws_it(
    aws: Aws, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AWS runtime: the ``slack`` function reads which reply a reacted-to message shows
    (its metadata) and hands the rating to the ``feedback`` function (an asynchronous
    invocation), which records it on the turn's trace as ``POST .../feedback`` would; the
    reaction removed, the rating is withdrawn."""
    import time

    from tests.functional.slack_env import SIGNING_SECRET, slack_request
    from workers.handlers import slack
    from workers.sandbox.emulator import LambdaContextStub
    from workers.sandbox.slack_stub import (
        BOT_TOKEN,
        TEAM_ID,
        USER_ID,
        SlackWebStub,
        message_event,
        reaction_event,
    )
    from workers.sandbox.slack_stub import events_api_payload as payload

    def user_feedback(cid: str) -> list[Any]:
        [trace] = traces_of(mlflow_server, cid)
        return [a for a in trace.info.assessments if a.name == "user_feedback"]

    with SlackWebStub(bot_token=BOT_TOKEN) as web:
        monkeypatch.setenv("AGENTWORKER_SLACK_SIGNING_SECRET", SIGNING_SECRET)
        monkeypatch.setenv("AGENTWORKER_SLACK_BOT_TOKEN", BOT_TOKEN)
        monkeypatch.setenv("AGENTWORKER_SLACK_API_URL", web.url)
        monkeypatch.setenv("AGENTWORKER_TRACING", "true")
        monkeypatch.setenv("AGENTWORKER_MLFLOW_TRACKING_URI", mlflow_server)
        bootstrap.reset_aws_deps()
        context = LambdaContextStub("slack", "arn:aws:lambda:us-east-1:123456789012:function:slack")

        def send(event: dict[str, Any]) -> dict[str, Any]:
            answer: dict[str, Any] = slack.handler(slack_request(payload(event)), context)
            assert answer["statusCode"] == 200, answer
            return answer

        asked = message_event("hello there", channel="D0RATED")
        send(asked)
        web.wait_calls("chat.stopStream", 1, timeout=30)
        aws.wait_executions_done()
        [shown] = web.thread_messages("D0RATED", asked["ts"])
        cid = f"slack:{TEAM_ID}:D0RATED:{asked['ts']}"
        assert user_feedback(cid) == []

        send(reaction_event("reaction_added", reaction="-1", channel="D0RATED", ts=shown.ts))
        [down] = user_feedback(cid)  # recorded before the handler returned (moto invokes inline)
        assert down.value == -1 and down.source.source_id == f"slack:{TEAM_ID}:{USER_ID}"
        assert down.metadata["reply_id"] == shown.metadata["event_payload"]["reply_id"]  # type: ignore[index]
        other = send(
            reaction_event("reaction_added", reaction="-1", channel="D0RATED", ts=asked["ts"])
        )
        assert json.loads(other["body"])["type"] == "ignored"  # the member's own message

        send(reaction_event("reaction_removed", reaction="-1", channel="D0RATED", ts=shown.ts))
        deadline = time.monotonic() + 10
        while user_feedback(cid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert user_feedback(cid) == []
