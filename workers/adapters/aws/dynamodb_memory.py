"""``DynamoDBMemoryStore``: the graphs' long-term memory (LangGraph's ``BaseStore``) on the
stack's own table, one partition per customer.

Why not ``langgraph-checkpoint-aws``'s ``DynamoDBStore``: it needs a table of its own, keys
an item by its whole namespace joined with ``:`` (so ``search`` finds only that exact
namespace, not the ones under a prefix; ``("a:b",)`` and ``("a", "b")`` are one namespace),
lists namespaces by scanning the whole table, and erasing a customer would be a scan too.
Here an item is

=====================================  =====================================================
``pk``                                 ``sk``
=====================================  =====================================================
``mem#<first label>``                  ``<label>/<label>/…/|<key>`` (the other labels, each
                                       with ``%``, ``/`` and ``|`` percent-encoded)
=====================================  =====================================================

with the namespace, key, value (JSON), ``created_at`` and ``updated_at`` as attributes. The
first label is the customer's (:class:`~workers.agent.store.TurnScopedStore` puts it there),
so everything a customer keeps is one partition: a search under a prefix is one ``Query``
with ``begins_with`` on the sort key, a listing of namespaces and an erasure one ``Query``
of the partition. A search or a listing without a first label would read every customer's
partition: refused (``UnscopedStoreOperation``). The stack's table has a local index, so a
partition holds at most 10 GB: a customer's memories, not a corpus.

Reads are strongly consistent (a memory written by one turn is read by the next, whichever
Lambda runs it); ``search`` filters and pages after the read (DynamoDB cannot compare inside
a JSON value), so its cost grows with the items under the prefix, not with ``limit``. TTL:
the table's own TTL attribute (``expires_at``) removes expired items within a day or two,
and reads skip them at once. No vector search: ``search(query=...)`` raises
``VectorSearchUnavailable``. The ``turn`` function's role already has every action used
here (:data:`ACTIONS`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from workers.adapters.aws.calls import AwsCalls
from workers.adapters.aws.calls import Item as Attributes
from workers.adapters.aws.dynamodb_table import DynamoDBTable, key_part, number, string
from workers.adapters.aws.tables import TABLE_PK, TABLE_SK, TTL_ATTRIBUTE
from workers.agent.store import warn_unranked_once
from workers.config import Settings
from workers.errors import ConditionFailed, UnscopedStoreOperation, VectorSearchUnavailable

__all__ = ["ACTIONS", "MEMORY_PK_PREFIX", "DynamoDBMemoryStore", "dynamodb_memory_store"]

MEMORY_PK_PREFIX = "mem#"
ACTIONS = frozenset(
    {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"}
)
"""The IAM actions the store calls (a test checks the ``turn`` role grants them)."""

_KEY_MARK = "|"
_ItemT = TypeVar("_ItemT", bound=Item)
_LABEL_END = "/"


class DynamoDBMemoryStore(BaseStore):
    """``BaseStore`` on the DynamoDB table ``table_name`` (the stack's table). ``dynamodb``
    is a boto3 client built by the composition root. ``ttl``: LangGraph's TTL settings
    (``default_ttl`` minutes, ``refresh_on_read``)."""

    supports_ttl = True

    def __init__(
        self,
        *,
        dynamodb: Any,
        table_name: str,
        ttl: TTLConfig | None = None,
        index_wanted: bool = False,
    ) -> None:
        """``index_wanted``: the app configured vector search, which DynamoDB lacks: a
        search by ``query`` is then refused; otherwise it is answered unranked, as
        LangGraph's stores answer one without an index."""
        self.index_wanted = index_wanted
        self.api_calls = AwsCalls()
        """API calls made so far, by ``service.operation``: round trips for benchmarks."""
        self._table = DynamoDBTable(dynamodb, table_name, self.api_calls)
        self.ttl_config = ttl

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Each operation in order, one or more calls each (no transaction across them)."""
        return [self._one(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    def _one(self, op: Op) -> Result:
        validate_op_namespace(op)
        if isinstance(op, GetOp):
            return self._get(op)
        if isinstance(op, PutOp):
            self._put(op)
            return None
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list_namespaces(op)
        raise TypeError(f"unknown store operation {type(op).__name__}")

    # operations --------------------------------------------------------------------------

    def _get(self, op: GetOp) -> Item | None:
        if not op.namespace:
            return None
        pk, sk = _key(op.namespace, op.key)
        found = self._table.get(pk, sk)
        if found is None or _expired(found, time.time()):
            return None
        if op.refresh_ttl:
            self._refresh(found)
        return _item(found, Item)

    def _put(self, op: PutOp) -> None:
        pk, sk = _key(op.namespace, op.key)
        if op.value is None:
            self._table.call("delete_item", TableName=self._table.name, Key=_keys(pk, sk))
            return
        now = datetime.now(UTC).isoformat()
        values: Attributes = {
            ":ns": string(json.dumps(list(op.namespace))),
            ":key": string(op.key),
            ":value": string(json.dumps(dict(op.value), separators=(",", ":"))),
            ":now": string(now),
        }
        sets = ["#ns = :ns", "#key = :key", "#value = :value", "#updated_at = :now"]
        sets.append("#created_at = if_not_exists(#created_at, :now)")
        update = "SET " + ", ".join(sets)
        if op.ttl is not None:
            values[":expires_at"] = number(int(time.time() + op.ttl * 60))
            values[":ttl_minutes"] = number(op.ttl)
            update += f", #{TTL_ATTRIBUTE} = :expires_at, #ttl_minutes = :ttl_minutes"
        else:  # a value put again without a TTL keeps no old deadline
            update += f" REMOVE #{TTL_ATTRIBUTE}, #ttl_minutes"
        self._table.update(pk, sk, update, values=values)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        if op.query and not self.index_wanted:
            warn_unranked_once()
        elif op.query:
            raise VectorSearchUnavailable(
                "store.search(query=...): the DynamoDB memory store (AWS runtime) has no vector"
                " search; search by namespace and filter, or run on the embedded runtime with"
                " store_index_dims and store_index_embed set"
            )
        if not op.namespace_prefix:
            raise UnscopedStoreOperation("store.search needs a namespace prefix on DynamoDB")
        now = time.time()
        labels = op.namespace_prefix[1:]
        begins = "".join(_label(x) + _LABEL_END for x in labels)
        found = [
            item
            for item in self._query(op.namespace_prefix[0], begins)
            if not _expired(item, now)
            and (not op.filter or _matches(json.loads(item["value"]["S"]), op.filter))
        ]
        # Most recently updated first, as SqliteStore answers.
        found.sort(key=lambda i: i["updated_at"]["S"], reverse=True)
        page = found[op.offset : op.offset + op.limit]
        if op.refresh_ttl:
            for item in page:
                self._refresh(item)
        return [_item(i, SearchItem) for i in page]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        first = next((c.path[0] for c in conditions if c.match_type == "prefix" and c.path), "*")
        if first == "*":
            raise UnscopedStoreOperation(
                "store.list_namespaces needs a prefix with a first label on DynamoDB"
            )
        now = time.time()
        namespaces = {
            tuple(json.loads(i["ns"]["S"]))
            for i in self._query(first, "", project=True)
            if not _expired(i, now)
        }
        matching = [ns for ns in namespaces if all(_does_match(c, ns) for c in conditions)]
        if op.max_depth is not None:
            matching = list({ns[: op.max_depth] for ns in matching})
        return sorted(matching)[op.offset : op.offset + op.limit]

    # DynamoDB ----------------------------------------------------------------------------

    def _query(self, first: str, begins: str, *, project: bool = False) -> Iterator[Attributes]:
        """The items of the partition of ``first`` whose sort key begins with ``begins``,
        every page."""
        values: Attributes = {":pk": string(_pk(first))}
        condition = f"#{TABLE_PK} = :pk"
        if begins:
            values[":begins"] = string(begins)
            condition += f" AND begins_with(#{TABLE_SK}, :begins)"
        params: Attributes = {
            "TableName": self._table.name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {f"#{TABLE_PK}": TABLE_PK}
            | ({f"#{TABLE_SK}": TABLE_SK} if begins else {}),
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        if project:
            params["ProjectionExpression"] = f"#ns, #{TTL_ATTRIBUTE}"
            params["ExpressionAttributeNames"] |= {"#ns": "ns", f"#{TTL_ATTRIBUTE}": TTL_ATTRIBUTE}
        while True:
            page = self._table.call("query", **params)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _refresh(self, item: Attributes) -> None:
        """Push a read item's deadline ``ttl_minutes`` from now (items without a TTL
        keep none); an item deleted meanwhile is not brought back."""
        if "ttl_minutes" not in item:
            return
        minutes = float(item["ttl_minutes"]["N"])
        values = {":expires_at": number(int(time.time() + minutes * 60))}
        try:
            self._table.update(
                item[TABLE_PK]["S"],
                item[TABLE_SK]["S"],
                f"SET #{TTL_ATTRIBUTE} = :expires_at",
                values=values,
                cond=f"attribute_exists(#{TABLE_PK})",
            )
        except ConditionFailed:
            return


def dynamodb_memory_store(settings: Settings, dynamodb: Any) -> DynamoDBMemoryStore:
    """The AWS runtime's memory store: on the stack's table (``settings.table_name``)
    through ``dynamodb``, the boto3 client the composition root already built. Vector search
    settings (``store_index_*``) cannot apply here: with them, ``search(query=...)`` says
    so; without, it is answered unranked as LangGraph's stores do."""
    return DynamoDBMemoryStore(
        dynamodb=dynamodb,
        table_name=settings.table_name,
        index_wanted=settings.store_index_dims is not None,
    )


def _pk(first: str) -> str:
    return MEMORY_PK_PREFIX + key_part(first)


def _key(namespace: tuple[str, ...], key: str) -> tuple[str, str]:
    labels = "".join(_label(x) + _LABEL_END for x in namespace[1:])
    return _pk(namespace[0]), labels + _KEY_MARK + key


def _keys(pk: str, sk: str) -> Attributes:
    return {TABLE_PK: string(pk), TABLE_SK: string(sk)}


def _label(label: str) -> str:
    return label.replace("%", "%25").replace(_LABEL_END, "%2F").replace(_KEY_MARK, "%7C")


def _expired(item: Attributes, now: float) -> bool:
    return TTL_ATTRIBUTE in item and float(item[TTL_ATTRIBUTE]["N"]) <= now


def _item(found: Attributes, kind: type[_ItemT]) -> _ItemT:
    return kind(
        value=json.loads(found["value"]["S"]),
        key=found["key"]["S"],
        namespace=tuple(json.loads(found["ns"]["S"])),
        created_at=datetime.fromisoformat(found["created_at"]["S"]),
        updated_at=datetime.fromisoformat(found["updated_at"]["S"]),
    )


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """LangGraph's namespace match: a prefix or suffix of labels, ``*`` matching any one."""
    path = condition.path
    if len(namespace) < len(path):
        return False
    pairs = (
        zip(namespace, path, strict=False)
        if condition.match_type == "prefix"
        else zip(reversed(namespace), reversed(path), strict=False)
    )
    return all(p in ("*", n) for n, p in pairs)


def _matches(value: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    return all(_compare(value.get(k), expected) for k, expected in filter.items())


def _compare(actual: Any, expected: Any) -> bool:
    """LangGraph's filter semantics (``InMemoryStore``): equality, nested objects, and the
    operators ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``."""
    if isinstance(expected, Mapping):
        if any(str(k).startswith("$") for k in expected):
            return all(_operator(actual, op, v) for op, v in expected.items())
        return isinstance(actual, Mapping) and all(
            _compare(actual.get(k), v) for k, v in expected.items()
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(_compare(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(actual == expected)


def _operator(actual: Any, op: str, expected: Any) -> bool:
    if op == "$eq":
        return bool(actual == expected)
    if op == "$ne":
        return bool(actual != expected)
    if actual is None:
        return False
    compare = {
        "$gt": float.__gt__,
        "$gte": float.__ge__,
        "$lt": float.__lt__,
        "$lte": float.__le__,
    }.get(op)
    if compare is None:
        raise ValueError(f"Unsupported operator: {op}")
    return bool(compare(float(actual), float(expected)))
