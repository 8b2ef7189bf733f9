"""The ``turn`` handler's ``fail`` op (the workflow's TellUser): the failed message keeps
the error the workflow caught."""

from __future__ import annotations

import json

from tests.unit.test_steps import CID, World
from workers.core.steps import claim_inbox
from workers.handlers.turn import TurnTask, execute, workflow_error


def test_tell_user_keeps_the_workflows_error_with_the_failed_message() -> None:
    w = World()
    w.send("hello", "k1")
    run = w.starter.runs.pop(0)
    claim_inbox(w.deps, run, execution_id="exec-1")  # the step that then failed for good
    cause = json.dumps({"errorType": "RetryableError", "errorMessage": "bedrock throttled"})
    task = TurnTask(op="fail", run=run, error={"Error": "RetryableError", "Cause": cause})
    assert execute(w.deps, task).outcome == "released"
    history = w.store.history(CID)
    assert history is not None
    [entry] = history.inbox
    assert entry.status == "failed"
    assert entry.error == "RetryableError: bedrock throttled"
    [notice] = w.sink.sent
    assert notice.type == "notice" and notice.level == "error"


def test_the_workflow_error_is_read_whatever_its_cause_holds() -> None:
    assert workflow_error(None) == "Error"
    assert workflow_error({"Error": "States.Timeout"}) == "States.Timeout"
    assert workflow_error({"Error": "X", "Cause": "not json"}) == "X: not json"
    assert workflow_error({"Error": "X", "Cause": '{"no": "message"}'}) == 'X: {"no": "message"}'
    assert len(workflow_error({"Error": "X", "Cause": "y" * 5000})) == 1000
