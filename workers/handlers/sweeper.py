"""``sweeper`` (scheduled every minute): start runs for conversations with pending messages
and an expired lease, so a crashed run never strands a message."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from workers import bootstrap
from workers.core.steps import sweep
from workers.handlers.observability import logger, metrics


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    started = sweep(bootstrap.aws_deps())
    metrics.add_metric(name="swept", unit=MetricUnit.Count, value=len(started))
    return {"started": [run.run_id for run in started]}
