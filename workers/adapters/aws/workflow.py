"""``StepFunctionsWorkflowStarter``: one execution per (conversation, fencing token)."""

from __future__ import annotations

import json
import logging
from typing import Any

from events.workflow import RunRef
from workers.adapters.aws.errors import error_code, map_aws_error

log = logging.getLogger(__name__)


class StepFunctionsWorkflowStarter:
    """Starts the conversation workflow. The execution is named from the conversation and the
    token, so a repeated start is refused by Step Functions and harmless (the run's first
    step binds the lease to its own execution anyway). The input is ``{"run": RunRef}``,
    the shape every state of the workflow passes on."""

    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self._client = client
        self._arn = state_machine_arn

    def start(self, run: RunRef) -> None:
        try:
            self._client.start_execution(
                stateMachineArn=self._arn,
                name=run.run_id,
                input=json.dumps({"run": run.model_dump(mode="json", exclude_none=True)}),
            )
        except Exception as exc:
            if error_code(exc) == "ExecutionAlreadyExists":
                log.info("run %s already started", run.run_id)
                return
            raise map_aws_error(exc, "StartExecution") from exc

    def stop(self, execution_arn: str, cause: str) -> None:
        """Stop a Standard execution whose run was cancelled (its lease is already taken:
        this only spares the rest of its steps). Step Functions cannot stop an Express
        execution, and one that has ended needs no stop: both are left to end at their
        next step, fenced by the lease."""
        try:
            self._client.stop_execution(executionArn=execution_arn, cause=cause[:256])
        except Exception as exc:
            if error_code(exc) in {"ExecutionDoesNotExist", "ValidationException"}:
                log.info("execution %s not stopped: %s", execution_arn, error_code(exc))
                return
            raise map_aws_error(exc, "StopExecution") from exc

    def resume(self, task_token: str) -> None:
        """Wake a Standard run waiting on ``.waitForTaskToken``. A token that timed out or
        was used is not an error: that run moved on, and the approval is still in the inbox
        for the conversation's next run."""
        try:
            self._client.send_task_success(taskToken=task_token, output="{}")
        except Exception as exc:
            if error_code(exc) in {"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"}:
                log.info("task token no longer waiting: %s", error_code(exc))
                return
            raise map_aws_error(exc, "SendTaskSuccess") from exc
