"""``webhooks``: the webhooks queue (SQS FIFO, partial batch failures): each delivery signed
and posted; a failed one stays on the queue, visible again after the next backoff, and
holds back its conversation's later ones; after its attempts it goes to the dead-letter
queue, and they follow it there (``workers/adapters/aws/webhooks.py``)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from workers import bootstrap
from workers.adapters.aws.webhooks import QueueRecord
from workers.handlers.observability import logger, metrics


def _record(raw: dict[str, Any]) -> QueueRecord:
    attributes = raw.get("attributes") or {}
    return QueueRecord(
        message_id=str(raw["messageId"]),
        body=str(raw["body"]),
        receives=int(attributes.get("ApproximateReceiveCount") or 1),
        receipt_handle=str(raw["receiptHandle"]),
        group=str(attributes.get("MessageGroupId") or ""),
    )


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = [_record(raw) for raw in event.get("Records", [])]
    failed = bootstrap.webhook_courier().deliver_batch(records)
    metrics.add_metric(
        name="webhooks_sent", unit=MetricUnit.Count, value=len(records) - len(failed)
    )
    metrics.add_metric(name="webhooks_failed", unit=MetricUnit.Count, value=len(failed))
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}
