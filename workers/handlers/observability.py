"""Powertools logger and metrics shared by the handlers (no I/O: they print JSON/EMF)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics

SERVICE = "agentworker"
NAMESPACE = "agentworker"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
