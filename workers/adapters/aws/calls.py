"""Calling boto3 clients: count every API call and map AWS errors to ours.

Conditional failures are not errors for the store, they are answers ("the lease is not
free", "this key was seen"): :class:`ConditionFailed` and :class:`TransactionCancelled` carry
the old item(s) DynamoDB returned so the caller can tell which answer it got.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from workers.adapters.aws.errors import NETWORK_ERRORS, map_aws_error
from workers.errors import (
    ConditionFailed,
    Item,
    PermanentError,
    RetryableError,
    TransactionCancelled,
)

__all__ = ["AwsCalls", "ConditionFailed", "Item", "TransactionCancelled"]

# Codes of one TransactWriteItems cancellation reason.
_RETRYABLE_REASONS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded"})
_PERMANENT_REASONS = frozenset({"ValidationError", "ItemCollectionSizeLimitExceeded"})


class AwsCalls:
    """Invokes client operations, counting each one (``counts["dynamodb.get_item"]``).

    The count is of our calls: botocore's own retries of a throttled call are not counted.
    A benchmark divides :attr:`total` by the number of turns for round trips per turn.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()

    def __call__(self, client: Any, service: str, operation: str, **params: Any) -> Item:
        self.counts[f"{service}.{operation}"] += 1
        try:
            response: Item = getattr(client, operation)(**params)
        except ClientError as exc:
            mapped = _map_client_error(exc, service, operation)
            if mapped is exc:
                raise
            raise mapped from exc
        except (*NETWORK_ERRORS, ParamValidationError) as exc:
            raise map_aws_error(exc, f"{service}.{operation}") from exc
        return response


def _map_client_error(exc: Exception, service: str, operation: str) -> Exception:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    what = f"{service}.{operation}"
    if code == "ConditionalCheckFailedException":
        return ConditionFailed(response.get("Item"))
    if code == "TransactionCanceledException":
        reasons: list[dict[str, Any]] = list(response.get("CancellationReasons") or [])
        codes = {str(r.get("Code", "")) for r in reasons}
        if codes & _RETRYABLE_REASONS:
            return RetryableError(f"{what} throttled: {exc}")
        if codes & _PERMANENT_REASONS:
            return PermanentError(f"{what} refused: {exc}")
        # ConditionalCheckFailed and TransactionConflict: the caller decides (re-read, retry).
        return TransactionCancelled(reasons)
    return map_aws_error(exc, what)
