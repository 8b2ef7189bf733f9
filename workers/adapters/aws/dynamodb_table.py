"""One DynamoDB table through the low-level client: requests, pagination, attribute values.

The stores build their writes as ``TransactWriteItems`` actions (``put``, ``update_action``,
``delete``) and run them with :meth:`DynamoDBTable.transact`; expressions name attributes as
``#name`` and values as ``:value``, and :func:`expressions` sends only the placeholders an
expression uses (DynamoDB refuses unused ones).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from workers.adapters.aws.calls import AwsCalls, Item
from workers.adapters.aws.tables import TABLE_PK, TABLE_SK
from workers.errors import PermanentError, RetryableError

MAX_TRANSACTION_ACTIONS = 100
"""DynamoDB's limit of actions in one ``TransactWriteItems``."""
MAX_ATTEMPTS = 8
"""Optimistic retries (re-read, rewrite) before giving up with ``RetryableError``."""
_BATCH_GET_KEYS = 100
_BATCH_WRITE_KEYS = 25
_KEY_PART_BYTES = 900
"""Longest raw user value in a key; longer ones are hashed (a sort key holds at most 1 KB)."""

_NAME = re.compile(r"#(\w+)")
_VALUE = re.compile(r":\w+")


class DynamoDBTable:
    """Reads (strongly consistent unless asked otherwise) and writes on one table."""

    def __init__(self, client: Any, name: str, calls: AwsCalls) -> None:
        self.client = client
        self.name = name
        self.calls = calls

    def call(self, operation: str, **params: Any) -> Item:
        """One counted, error-mapped client call."""
        return self.calls(self.client, "dynamodb", operation, **params)

    def get(self, pk: str, sk: str) -> Item | None:
        response = self.call("get_item", TableName=self.name, Key=key(pk, sk), ConsistentRead=True)
        item: Item | None = response.get("Item")
        return item

    def batch_get(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        """The items of ``keys`` that exist, by ``(pk, sk)``; one call per 100 keys."""
        found: dict[tuple[str, str], Item] = {}
        for start in range(0, len(keys), _BATCH_GET_KEYS):
            chunk = keys[start : start + _BATCH_GET_KEYS]
            request: Item = {
                self.name: {"Keys": [key(pk, sk) for pk, sk in chunk], "ConsistentRead": True}
            }
            for _ in attempts():
                response = self.call("batch_get_item", RequestItems=request)
                for item in response.get("Responses", {}).get(self.name, []):
                    found[(get_str(item, TABLE_PK), get_str(item, TABLE_SK))] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise RetryableError(f"{self.name}: batch read throttled, keys left unprocessed")
        return found

    def batch_delete(self, keys: Sequence[tuple[str, str]]) -> None:
        """Delete the items of ``keys`` (absent ones are fine); one call per 25 keys."""
        for start in range(0, len(keys), _BATCH_WRITE_KEYS):
            chunk = keys[start : start + _BATCH_WRITE_KEYS]
            request: Item = {
                self.name: [{"DeleteRequest": {"Key": key(pk, sk)}} for pk, sk in chunk]
            }
            for _ in attempts():
                response = self.call("batch_write_item", RequestItems=request)
                request = response.get("UnprocessedItems") or {}
                if not request:
                    break
            else:
                raise RetryableError(f"{self.name}: batch delete throttled, items left")

    def update(
        self,
        pk: str,
        sk: str,
        update: str,
        *,
        values: Item,
        cond: str | None = None,
        returns: str = "NONE",
    ) -> Item:
        """``UpdateItem``; the attributes asked by ``returns``. A false condition raises
        ``ConditionFailed`` carrying the old item."""
        return self.apply(self.update_action(pk, sk, update, cond=cond, values=values), returns)

    def apply(self, action: Item, returns: str = "NONE") -> Item:
        """One ``update_action`` on its own, as ``UpdateItem`` (no transaction)."""
        response = self.call("update_item", **action["Update"], ReturnValues=returns)
        attributes: Item = response.get("Attributes", {})
        return attributes

    def update_action(
        self, pk: str, sk: str, update: str, *, values: Item, cond: str | None = None
    ) -> Item:
        return {
            "Update": {
                "TableName": self.name,
                "Key": key(pk, sk),
                # The old item comes back with a failed condition: no read to learn why.
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                **expressions(values, UpdateExpression=update, ConditionExpression=cond),
            }
        }

    def put(self, item: Item, *, cond: str | None = None) -> Item:
        put: Item = {"TableName": self.name, "Item": item}
        if cond:
            # The existing item comes back with a failed condition (a dedupe marker, meta).
            put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return {"Put": put | expressions({}, ConditionExpression=cond)}

    def delete(self, pk: str, sk: str) -> Item:
        return {"Delete": {"TableName": self.name, "Key": key(pk, sk)}}

    def transact(self, actions: list[Item]) -> None:
        """Apply ``actions`` atomically; ``TransactionCancelled`` says which condition failed."""
        if len(actions) > MAX_TRANSACTION_ACTIONS:
            raise PermanentError(
                f"one write would take {len(actions)} actions, over DynamoDB's "
                f"{MAX_TRANSACTION_ACTIONS} per transaction (too many messages in one turn)"
            )
        # The request token makes botocore's own retries of this call idempotent.
        self.call(
            "transact_write_items", TransactItems=actions, ClientRequestToken=uuid.uuid4().hex
        )

    def query(
        self,
        key_condition: str,
        values: Item,
        *,
        index: str | None = None,
        filter_expression: str | None = None,
        limit: int | None = None,
        forward: bool = True,
        consistent: bool = True,
    ) -> list[Item]:
        """All matching items, following every 1 MB page, or the first ``limit``."""
        params: Item = {
            "TableName": self.name,
            "ScanIndexForward": forward,
            "ConsistentRead": consistent,
            **expressions(
                values, KeyConditionExpression=key_condition, FilterExpression=filter_expression
            ),
        }
        if index is not None:
            params["IndexName"] = index
        items: list[Item] = []
        while True:
            if limit is not None:
                params["Limit"] = limit - len(items)
            response = self.call("query", **params)
            items.extend(response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if start is None or (limit is not None and len(items) >= limit):
                return items
            params["ExclusiveStartKey"] = start


def attempts() -> Iterator[int]:
    """Attempt numbers for an optimistic write, with a short jittered pause between them."""
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, 0.005 * 2**attempt))
        yield attempt


def expressions(values: Item, **named: str | None) -> Item:
    """Request parameters for the given expressions (``UpdateExpression=...``), with the
    ``#name`` and ``:value`` placeholders they use."""
    params: Item = {k: v for k, v in named.items() if v}
    text = " ".join(params.values())
    names = {f"#{n}": n for n in _NAME.findall(text)}
    used = set(_VALUE.findall(text))
    if names:
        params["ExpressionAttributeNames"] = names
    picked = {k: v for k, v in values.items() if k in used}
    if picked:
        params["ExpressionAttributeValues"] = picked
    return params


# keys -----------------------------------------------------------------------------------------


def key(pk: str, sk: str) -> Item:
    return {TABLE_PK: string(pk), TABLE_SK: string(sk)}


def key_part(value: str) -> str:
    """``value`` if it fits in a key, else ``sha256:<hex>`` of it."""
    raw = value.encode()
    if len(raw) <= _KEY_PART_BYTES:
        return value
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# attribute values -----------------------------------------------------------------------------


def string(value: str) -> Item:
    return {"S": value}


def number(value: float) -> Item:
    # repr round-trips a float exactly; DynamoDB keeps 38 significant digits.
    return {"N": str(value) if isinstance(value, int) else repr(float(value))}


def get_str(item: Item, name: str) -> str:
    return str(item[name]["S"])


def opt_str(item: Item, name: str) -> str | None:
    return None if name not in item else get_str(item, name)


def get_int(item: Item, name: str) -> int:
    return int(item[name]["N"])


def opt_int(item: Item, name: str) -> int | None:
    return None if name not in item else get_int(item, name)


def get_float(item: Item, name: str) -> float:
    return float(item[name]["N"])


def string_list(values: list[str]) -> Item:
    return {"L": [string(v) for v in values]}


def get_str_list(item: Item, name: str) -> list[str]:
    return [str(v["S"]) for v in item[name]["L"]]
