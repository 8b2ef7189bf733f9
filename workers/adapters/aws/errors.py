"""botocore errors -> our typed errors: the one mapping every AWS adapter uses.

Every error an AWS call can end with gets a family, so the workflow never sees a botocore
class it does not name (Step Functions matches error names exactly; an unnamed one falls to
``States.ALL`` and, worse, a delivery failing that way made the run loop): a known code
decides; else the HTTP status does (429 and 5xx: retryable; another 4xx: the request was
refused, permanent); an answer botocore could not parse (a proxy's HTML or text page) and
the network's failures are retryable, as botocore itself says ("further retries may
succeed").
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    ParamValidationError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.parsers import ResponseParserError

from workers.errors import AgentWorkerError, PermanentError, RetryableError

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "KMSThrottlingException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServerError",
        "InternalServerException",
        "InternalServerErrorException",
        "InternalFailure",
        "InternalError",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)
"""Codes that are worth a retry whatever their HTTP status (several throttles are 400s)."""
PERMANENT_CODES = frozenset(
    {"ValidationException", "ItemCollectionSizeLimitExceededException", "EntityTooLarge"}
)
NETWORK_ERRORS = (BotocoreConnectionError, HTTPClientError, ResponseParserError)
"""The endpoint could not be reached (DNS, connect, proxy, TLS), the connection broke or
timed out, or what came back was not the service's answer (``ResponseParserError``: e.g. a
load balancer's text page with a 500)."""
TOO_MANY_REQUESTS = 429
CLIENT_ERRORS = range(400, 500)
SERVER_ERRORS = 500


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    """The HTTP status of a botocore ``ClientError`` (0 for anything else)."""
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    try:
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    except (TypeError, ValueError):
        return 0


def map_aws_error(exc: Exception, what: str) -> Exception:
    """Throttling, 5xx, conflicts, network failures and unreadable answers become
    ``RetryableError``; a refused request (a known invalid-request code, any other 4xx, a
    parameter botocore rejected) ``PermanentError``; our own errors and what is no AWS error
    at all (a bug) pass through unchanged."""
    if isinstance(exc, AgentWorkerError):
        return exc
    if isinstance(exc, NETWORK_ERRORS):
        return RetryableError(f"{what} failed: {exc}")
    if isinstance(exc, ParamValidationError):
        return PermanentError(f"{what} refused: {exc}")
    if not isinstance(exc, ClientError):
        return exc
    code, status = error_code(exc), http_status(exc)
    if code in RETRYABLE_CODES or status >= SERVER_ERRORS or status == TOO_MANY_REQUESTS:
        return RetryableError(f"{what} failed ({code or status}): {exc}")
    if code in PERMANENT_CODES or status in CLIENT_ERRORS:
        return PermanentError(f"{what} refused ({code or status}): {exc}")
    # No status to judge by (not a real HTTP answer): worth the workflow's bounded retries.
    return RetryableError(f"{what} failed ({code or 'no status'}): {exc}")
