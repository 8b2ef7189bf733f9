"""botocore errors -> our typed errors: the one mapping every AWS adapter uses."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from workers.errors import AgentWorkerError, PermanentError, RetryableError

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServerError",
        "InternalServerException",
        "InternalFailure",
        "InternalError",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)
PERMANENT_CODES = frozenset(
    {"ValidationException", "ItemCollectionSizeLimitExceededException", "EntityTooLarge"}
)
NETWORK_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def map_aws_error(exc: Exception, what: str) -> Exception:
    """Throttling, 5xx, conflicts and network failures become ``RetryableError``; invalid
    requests ``PermanentError``; our own errors and anything else pass through unchanged
    (the workflow's ``Catch`` still sees their real type)."""
    if isinstance(exc, AgentWorkerError):
        return exc
    if isinstance(exc, NETWORK_ERRORS):
        return RetryableError(f"{what} failed: {exc}")
    code = error_code(exc)
    response: Any = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in RETRYABLE_CODES or status >= 500:
        return RetryableError(f"{what} failed ({code or status}): {exc}")
    if code in PERMANENT_CODES:
        return PermanentError(f"{what} refused ({code}): {exc}")
    return exc
