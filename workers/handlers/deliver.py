"""``deliver``: send a conversation's undelivered outbox entries (SNS, WebSocket)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict

from events.inbound import ConversationId
from events.workflow import RunRef
from workers import bootstrap
from workers.core.steps import deliver, deliver_run
from workers.handlers.observability import logger, metrics, reported_to_the_workflow


class DeliverTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: ConversationId
    run: RunRef | None = None
    """The run whose turn could not send (the workflow's ``Deliver``): it sends only while
    it still holds the lease."""


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    task = DeliverTask.model_validate(event)
    logger.append_keys(conversation_id=task.conversation_id)
    deps = bootstrap.aws_deps()
    with reported_to_the_workflow():
        if task.run is None:
            sent = deliver(deps, task.conversation_id)
        else:
            sent = deliver_run(deps, task.run)
    metrics.add_metric(name="delivered", unit=MetricUnit.Count, value=sent)
    return {"delivered": sent}
