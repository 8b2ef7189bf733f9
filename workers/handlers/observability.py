"""Powertools logger and metrics shared by the handlers (no I/O: they print JSON/EMF), and
how the workflow's tasks report their errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from workers.errors import AgentWorkerError, ModelThrottled, as_workflow_error

SERVICE = "agentworker"
NAMESPACE = "agentworker"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


@contextmanager
def reported_to_the_workflow() -> Iterator[None]:
    """Around a Step Functions task's work: our errors leave under the name of their family
    (``as_workflow_error``), the one the ASL's ``Retry``/``Catch`` match (Step Functions
    compares names exactly: a ``PartialDelivery`` under its own name fell to
    ``States.ALL``), each counted by its own name (``error_PartialDelivery``)."""
    try:
        yield
    except AgentWorkerError as exc:
        metrics.add_metric(name=f"error_{type(exc).__name__}", unit=MetricUnit.Count, value=1)
        if isinstance(exc, ModelThrottled):
            metrics.add_metric(name="ModelThrottles", unit=MetricUnit.Count, value=1)
        reported = as_workflow_error(exc)
        if reported is exc:
            raise
        raise reported from exc
