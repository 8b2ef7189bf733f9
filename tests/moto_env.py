"""moto in this process, as the contract and unit tests of the AWS adapters use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def mocked_table(monkeypatch: pytest.MonkeyPatch, table: str) -> Iterator[Any]:
    """moto's AWS with fake credentials in ``us-east-1`` while the block lasts, and the
    stack's DynamoDB table ``table`` in it: a DynamoDB client (more clients: ``boto3``)."""
    import boto3
    from moto import mock_aws

    from workers.adapters.aws.tables import DynamoDBTableSpec

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        DynamoDBTableSpec(table).create(dynamodb)
        yield dynamodb
