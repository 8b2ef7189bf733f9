"""Calling boto3 clients: count every API call and map AWS errors to ours.

Conditional failures are not errors for the store, they are answers ("the lease is not
free", "this key was seen"): :class:`ConditionFailed` and :class:`TransactionCancelled` carry
the old item(s) DynamoDB returned so the caller can tell which answer it got.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from botocore.exceptions import ClientError

from workers.adapters.aws.errors import NETWORK_ERRORS, map_aws_error
from workers.errors import PermanentError, RetryableError

# Codes of one TransactWriteItems cancellation reason.
_RETRYABLE_REASONS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded"})
_PERMANENT_REASONS = frozenset({"ValidationError", "ItemCollectionSizeLimitExceeded"})

Item = dict[str, Any]
"""A DynamoDB item in the low-level client's typed form (``{"name": {"S": "value"}}``)."""


class ConditionFailed(Exception):
    """A single-item write's condition was false; ``item`` is the old item, if any."""

    def __init__(self, item: Item | None) -> None:
        super().__init__("conditional check failed")
        self.item = item


class TransactionCancelled(RetryableError):
    """A ``TransactWriteItems`` was cancelled by conditions or conflicts (nothing written).

    Callers that read the reasons catch it; where none does, a conflict is worth a retry.
    """

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        super().__init__("transaction cancelled: " + ", ".join(r.get("Code", "?") for r in reasons))
        self.reasons = reasons

    def failed(self, index: int) -> bool:
        """Whether the condition of the ``index``-th action was false."""
        return self._code(index) == "ConditionalCheckFailed"

    def item(self, index: int) -> Item | None:
        """The old item of the ``index``-th action (asked with ``ALL_OLD``), if it existed."""
        if index >= len(self.reasons):
            return None
        item: Item | None = self.reasons[index].get("Item")
        return item

    def failed_indexes(self) -> list[int]:
        return [i for i in range(len(self.reasons)) if self.failed(i)]

    def _code(self, index: int) -> str:
        if index >= len(self.reasons):
            return ""
        return str(self.reasons[index].get("Code", ""))


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
        except NETWORK_ERRORS as exc:
            raise RetryableError(f"{service}.{operation} failed: {exc}") from exc
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
