"""``turn``: a Step Functions task. ``op`` is the workflow state calling it: ``step``
(claim and advance one turn, deliver it and release the lease when the inbox is drained, or
finish the run; the first step binds the lease to the execution), ``fail`` (tell the user
the turn failed for good), ``await_approval`` (Standard: hold the lease while the execution
waits for the approval's task token)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict

from events.outbound import GraphStateView
from events.workflow import RunRef, StepResult
from workers import bootstrap
from workers.core.model import LogEntry, StreamPart, TurnOutput, TurnRequest
from workers.core.ports import Tracer, TurnAgent
from workers.core.steps import (
    Deps,
    fail_pending_turn,
    hold_for_approval,
    retry_exhausted_text,
    run_step,
)
from workers.errors import PermanentError
from workers.handlers.observability import logger, metrics, reported_to_the_workflow


class TurnTask(BaseModel):
    """The payload the workflow sends (see ``statemachine/*.asl.json``)."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["step", "fail", "await_approval"]
    run: RunRef
    execution_id: str | None = None
    hold_approvals: bool = False
    """Standard workflows: a turn awaiting approval keeps the lease (the execution waits)."""
    error: dict[str, Any] | None = None
    task_token: str | None = None


def workflow_error(error: dict[str, Any] | None) -> str:
    """What a failed message keeps of the error the workflow caught: its name and the
    Lambda error's message (``Cause`` is the function's JSON error, when it is one)."""
    error = error or {}
    name = str(error.get("Error", "Error"))
    cause = error.get("Cause")
    try:
        detail = json.loads(cause)["errorMessage"] if isinstance(cause, str) else None
    except (ValueError, TypeError, KeyError):
        detail = cause
    return f"{name}: {detail}"[:1000] if detail else name


def execute(deps: Deps, task: TurnTask) -> StepResult:
    """Map the workflow's ``op`` to the core step."""
    if task.op == "await_approval":
        if not task.task_token:
            raise PermanentError("await_approval needs the task token", field="task_token")
        hold_for_approval(deps, task.run, task.task_token)
        return StepResult(run=task.run, outcome="more_pending")
    if task.op == "fail":
        cause = str((task.error or {}).get("Error", "Error"))
        reason = PermanentError(cause) if cause == "PermanentError" else RuntimeError(cause)
        return fail_pending_turn(
            deps,
            task.run,
            retry_exhausted_text(reason),
            hold_approvals=task.hold_approvals,
            error=workflow_error(task.error),
        )
    return run_step(
        deps, task.run, execution_id=task.execution_id, hold_approvals=task.hold_approvals
    )


class TurnRecorder:
    """The ``TurnAgent`` of one invocation: the app's agent, whose turn outputs it keeps for
    the invocation's metrics."""

    def __init__(self, agent: TurnAgent) -> None:
        self.agent = agent
        self.outputs: list[TurnOutput] = []

    def run_turn(
        self, request: TurnRequest, *, on_chunk: Callable[[StreamPart], None] | None, tracer: Tracer
    ) -> TurnOutput:
        output = self.agent.run_turn(request, on_chunk=on_chunk, tracer=tracer)
        self.outputs.append(output)
        return output

    def inspect(
        self,
        conversation_id: str,
        checkpoint: bytes | None,
        history: Sequence[LogEntry],
        *,
        with_messages: bool = False,
    ) -> GraphStateView:
        return self.agent.inspect(conversation_id, checkpoint, history, with_messages=with_messages)


def add_turn_metrics(outputs: Sequence[TurnOutput]) -> None:
    """The figures of the invocation's turns as metrics: tokens, prompt-cache reads, cost
    (when every model is priced), time to first token, throttles."""
    for output in outputs:
        usage = output.usage
        metrics.add_metric(name="InputTokens", unit=MetricUnit.Count, value=usage.input_tokens)
        metrics.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=usage.output_tokens)
        metrics.add_metric(
            name="CacheReadTokens", unit=MetricUnit.Count, value=usage.cache_read_tokens
        )
        metrics.add_metric(
            name="ModelThrottles", unit=MetricUnit.Count, value=output.model_throttles
        )
        if output.cost is not None:
            metrics.add_metric(
                name="TurnCostUSD", unit=MetricUnit.NoUnit, value=output.cost.total_cost
            )
        if output.time_to_first_token_ms is not None:
            metrics.add_metric(
                name="TimeToFirstTokenMs",
                unit=MetricUnit.Milliseconds,
                value=output.time_to_first_token_ms,
            )


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    task = TurnTask.model_validate(event)
    logger.append_keys(conversation_id=task.run.conversation_id, run_id=task.run.run_id)
    deps = bootstrap.aws_deps(with_agent=True)
    recorder = TurnRecorder(deps.agent)
    deps = replace(deps, agent=recorder)
    try:
        with reported_to_the_workflow():
            result = execute(deps, task)
    finally:
        sent, flush_ms = bootstrap.flush_traces(deps)
        metrics.add_metric(name="TraceFlushMs", unit=MetricUnit.Milliseconds, value=flush_ms)
        if not sent:
            metrics.add_metric(name="TracesUnsent", unit=MetricUnit.Count, value=1)
    add_turn_metrics(recorder.outputs)
    metrics.add_metric(name=f"step_{result.outcome}", unit=MetricUnit.Count, value=1)
    if result.turn is not None:
        metrics.add_metric(name=f"turn_{result.turn}", unit=MetricUnit.Count, value=1)
    if result.guardrail_interventions:
        metrics.add_metric(
            name="GuardrailInterventions",
            unit=MetricUnit.Count,
            value=result.guardrail_interventions,
        )
    return result.model_dump(mode="json")
