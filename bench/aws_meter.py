"""Metering boto3 clients against a moto server: round trips, bytes written, capacity units.

:class:`AwsMeter` hooks a ``boto3.Session``'s botocore events, so every client made from
that session afterwards (ours, or the ones ``DynamoDBSaver`` builds from the session we pass
it) is measured the same way:

* round trips: one per HTTP request sent (``before-send``; a botocore retry would count);
* request bytes written: ``Content-Length`` of the request body of write operations
  (:data:`WRITE_OPS`), i.e. the JSON/XML payload on the wire, attribute names and base64
  included;
* DynamoDB capacity, computed (moto's ``ConsumedCapacity`` is a constant) from item sizes
  with DynamoDB's published rules, see :func:`item_size` and :class:`AwsMeter`:
  writes 1 WRU per started KB of the larger of the old and new item image (2x inside
  ``TransactWriteItems``), plus index writes (an index entry is its projected attributes plus
  100 bytes; 1 write when an entry is added, removed or its projected attributes change, 2
  when an index key changes); reads 1 RRU per started 4 KB strongly consistent, 0.5
  eventually consistent, a ``Query`` rounding the sum of the items it read.

Item images come from a mirror of every item written through a metered session: after an
``UpdateItem`` (alone or in a transaction) the new image is read back with an unmetered
"shadow" client, so the capacity bookkeeping adds no round trips to the numbers.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

WRITE_OPS = frozenset(
    {
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "TransactWriteItems",
        "BatchWriteItem",
        "PutObject",
        "UploadPart",
        "CompleteMultipartUpload",
        "CopyObject",
    }
)
"""Operations whose request bytes count as bytes written."""

REGION = "us-east-1"
INDEX_ENTRY_OVERHEAD = 100
"""Bytes DynamoDB adds to each secondary index entry for its own bookkeeping."""

Item = dict[str, Any]


# sizes -----------------------------------------------------------------------------------


def _number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0") or "0"
    mantissa = digits.split("e")[0].split("E")[0]
    return (len(mantissa) + 1) // 2 + 1


def _binary_len(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):  # base64 text, as in a raw request body
        return len(base64.b64decode(value))
    return len(bytes(value))


def attribute_size(value: dict[str, Any]) -> int:
    """Size of one attribute value by DynamoDB's rules (strings and binaries by length,
    numbers ~1 byte per two significant digits + 1, containers 3 bytes + 1 per element)."""
    (kind, raw), *_ = value.items()
    if kind == "S":
        return len(str(raw).encode())
    if kind == "N":
        return _number_size(str(raw))
    if kind == "B":
        return _binary_len(raw)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(v).encode()) for v in raw)
    if kind == "NS":
        return sum(_number_size(str(v)) for v in raw)
    if kind == "BS":
        return sum(_binary_len(v) for v in raw)
    if kind == "L":
        return 3 + sum(1 + attribute_size(v) for v in raw)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attribute_size(v) for k, v in raw.items())
    raise ValueError(f"unknown attribute type {kind!r}")


def item_size(item: Item | None) -> int:
    """Size of an item as DynamoDB bills it: attribute names plus values."""
    if not item:
        return 0
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def _key_prefix(value: str) -> str:
    cut = min((i for i in (value.find("#"), value.find("_")) if i >= 0), default=-1)
    head = value if cut < 0 else value[: cut + 1]
    return head if len(head) <= 12 else "*"


def item_kind(key: Item, key_names: tuple[str, ...]) -> str:
    """A short name for the kind of item a key addresses: the prefix (through the first
    ``#`` or ``_``) of each key attribute, e.g. ``conv#/meta``, ``conv#/log#``,
    ``CHECKPOINT_/#``, ``CHUNK_/CHUNK``."""
    parts = []
    for name in key_names:
        raw = key.get(name, {})
        parts.append(_key_prefix(str(next(iter(raw.values()), "")) if raw else ""))
    return "/".join(parts)


def units(size: int, block: int) -> int:
    """Capacity units for ``size`` bytes in blocks of ``block`` (at least one)."""
    return max(1, math.ceil(size / block))


# table layouts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexLayout:
    name: str
    keys: tuple[str, ...]
    projection: str
    include: tuple[str, ...] = ()

    def entry(self, item: Item, table_keys: tuple[str, ...]) -> Item | None:
        """The index entry of ``item`` (``None``: not in this sparse index)."""
        if any(k not in item for k in self.keys):
            return None
        if self.projection == "ALL":
            return item
        wanted = set(self.keys) | set(table_keys)
        if self.projection == "INCLUDE":
            wanted |= set(self.include)
        return {k: v for k, v in item.items() if k in wanted}

    def write_units(self, old: Item | None, new: Item | None, table_keys: tuple[str, ...]) -> int:
        before = None if old is None else self.entry(old, table_keys)
        after = None if new is None else self.entry(new, table_keys)
        if before is None and after is None:
            return 0
        if before is None or after is None:
            present = after if after is not None else before
            return units(item_size(present) + INDEX_ENTRY_OVERHEAD, 1024)
        if any(before.get(k) != after.get(k) for k in self.keys):  # delete + put
            return units(item_size(before) + INDEX_ENTRY_OVERHEAD, 1024) + units(
                item_size(after) + INDEX_ENTRY_OVERHEAD, 1024
            )
        if before != after:
            return units(item_size(after) + INDEX_ENTRY_OVERHEAD, 1024)
        return 0


@dataclass(frozen=True)
class TableLayout:
    name: str
    keys: tuple[str, ...]
    indexes: tuple[IndexLayout, ...]

    @classmethod
    def describe(cls, client: Any, name: str) -> TableLayout:
        table = client.describe_table(TableName=name)["Table"]
        keys = tuple(k["AttributeName"] for k in table["KeySchema"])
        indexes = []
        for index in [
            *table.get("LocalSecondaryIndexes", []),
            *table.get("GlobalSecondaryIndexes", []),
        ]:
            projection = index.get("Projection", {})
            indexes.append(
                IndexLayout(
                    name=index["IndexName"],
                    keys=tuple(k["AttributeName"] for k in index["KeySchema"]),
                    projection=str(projection.get("ProjectionType", "ALL")),
                    include=tuple(projection.get("NonKeyAttributes", [])),
                )
            )
        return cls(name, keys, tuple(indexes))

    def key_of(self, item: Item) -> tuple[str, ...] | None:
        if any(k not in item for k in self.keys):
            return None
        return tuple(repr(item[k]) for k in self.keys)


# usage -----------------------------------------------------------------------------------


@dataclass
class Usage:
    """What a metered session did; subtract two snapshots for one turn's share."""

    calls: Counter[str] = field(default_factory=Counter)
    """Round trips by ``service.Operation``."""
    request_bytes: Counter[str] = field(default_factory=Counter)
    """Request body bytes of write operations, by ``service.Operation``."""
    item_bytes: int = 0
    """Sum of the sizes of the item images written (new images; deletes count 0)."""
    items_written: int = 0
    wru_table: int = 0
    wru_index: int = 0
    rru: float = 0.0
    s3_put_bytes: int = 0
    wru_by_op: Counter[str] = field(default_factory=Counter)
    """Write units (table + index) by ``dynamodb.Operation``."""
    rru_by_op: dict[str, float] = field(default_factory=dict)
    wru_by_kind: Counter[str] = field(default_factory=Counter)
    """Write units (table + index) by item kind (:func:`item_kind`)."""
    item_bytes_by_kind: Counter[str] = field(default_factory=Counter)
    writes_by_kind: Counter[str] = field(default_factory=Counter)
    """Item writes (puts, updates, deletes, alone or in a transaction) by item kind."""

    def copy(self) -> Usage:
        return Usage(
            Counter(self.calls),
            Counter(self.request_bytes),
            self.item_bytes,
            self.items_written,
            self.wru_table,
            self.wru_index,
            self.rru,
            self.s3_put_bytes,
            Counter(self.wru_by_op),
            dict(self.rru_by_op),
            Counter(self.wru_by_kind),
            Counter(self.item_bytes_by_kind),
            Counter(self.writes_by_kind),
        )

    def minus(self, before: Usage) -> Usage:
        calls = Counter(self.calls)
        calls.subtract(before.calls)
        written = Counter(self.request_bytes)
        written.subtract(before.request_bytes)
        wru = Counter(self.wru_by_op)
        wru.subtract(before.wru_by_op)
        rru = {
            k: v - before.rru_by_op.get(k, 0.0)
            for k, v in self.rru_by_op.items()
            if v != before.rru_by_op.get(k, 0.0)
        }
        kinds = Counter(self.wru_by_kind)
        kinds.subtract(before.wru_by_kind)
        kind_bytes = Counter(self.item_bytes_by_kind)
        kind_bytes.subtract(before.item_bytes_by_kind)
        kind_writes = Counter(self.writes_by_kind)
        kind_writes.subtract(before.writes_by_kind)
        return Usage(
            +calls,
            +written,
            self.item_bytes - before.item_bytes,
            self.items_written - before.items_written,
            self.wru_table - before.wru_table,
            self.wru_index - before.wru_index,
            self.rru - before.rru,
            self.s3_put_bytes - before.s3_put_bytes,
            +wru,
            rru,
            +kinds,
            +kind_bytes,
            +kind_writes,
        )

    @property
    def round_trips(self) -> int:
        return sum(self.calls.values())

    def service_calls(self, service: str) -> int:
        return sum(n for op, n in self.calls.items() if op.startswith(service + "."))

    @property
    def bytes_written(self) -> int:
        return sum(self.request_bytes.values())

    @property
    def wru(self) -> int:
        return self.wru_table + self.wru_index

    def to_dict(self) -> dict[str, Any]:
        return {
            "round_trips": self.round_trips,
            "dynamodb_calls": self.service_calls("dynamodb"),
            "s3_calls": self.service_calls("s3"),
            "calls": dict(sorted(self.calls.items())),
            "request_bytes_written": self.bytes_written,
            "request_bytes_by_op": dict(sorted(self.request_bytes.items())),
            "item_bytes_written": self.item_bytes,
            "items_written": self.items_written,
            "wru_table": self.wru_table,
            "wru_index": self.wru_index,
            "wru": self.wru,
            "rru": self.rru,
            "s3_put_bytes": self.s3_put_bytes,
            "wru_by_op": dict(sorted(self.wru_by_op.items())),
            "rru_by_op": dict(sorted(self.rru_by_op.items())),
            "wru_by_kind": dict(sorted(self.wru_by_kind.items())),
            "item_bytes_by_kind": dict(sorted(self.item_bytes_by_kind.items())),
            "writes_by_kind": dict(sorted(self.writes_by_kind.items())),
        }


# the meter -------------------------------------------------------------------------------


class AwsMeter:
    """Counts what clients of the sessions it is attached to send (see the module doc).

    ``shadow`` is an unmetered DynamoDB client on the same endpoint, used to learn table
    layouts and to read back the images of updated items.
    """

    def __init__(self, shadow: Any) -> None:
        self._shadow = shadow
        self._lock = threading.RLock()
        self._usage = Usage()
        self._layouts: dict[str, TableLayout] = {}
        self._mirror: dict[tuple[str, tuple[str, ...]], Item] = {}
        self.errors: Counter[str] = Counter()
        """Operations answered with an HTTP error (not counted in capacity)."""

    def attach(self, session: Any) -> None:
        """Meter every client created from ``session`` from now on."""
        events = session.events
        events.register("before-parameter-build", self._on_params)
        events.register("before-send", self._on_send)
        events.register("after-call", self._on_result)

    def snapshot(self) -> Usage:
        with self._lock:
            return self._usage.copy()

    # hooks -------------------------------------------------------------------------------

    def _on_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = params

    def _on_send(self, request: Any, event_name: str, **_: Any) -> None:
        service, operation = event_name.split(".", 2)[1:]
        name = f"{service}.{operation}"
        size = 0
        if operation in WRITE_OPS:
            length = request.headers.get("Content-Length")
            if length is not None:
                size = int(length)
            elif isinstance(request.body, bytes | bytearray):
                size = len(request.body)
        with self._lock:
            self._usage.calls[name] += 1
            if size:
                self._usage.request_bytes[name] += size
            if operation in ("PutObject", "UploadPart"):
                self._usage.s3_put_bytes += size

    def _on_result(
        self,
        http_response: Any,
        parsed: dict[str, Any],
        model: Any,
        context: dict[str, Any],
        event_name: str,
        **_: Any,
    ) -> None:
        service, operation = event_name.split(".", 2)[1:]
        if getattr(http_response, "status_code", 200) >= 300:
            with self._lock:
                self.errors[f"{service}.{operation}"] += 1
            return
        if service != "dynamodb":
            return
        params: dict[str, Any] = context.get("bench_params") or {}
        with self._lock:
            handler = getattr(self, f"_ddb_{operation}", None)
            if handler is None:
                return
            usage = self._usage
            wru, rru = usage.wru, usage.rru
            handler(params, parsed)
            name = f"dynamodb.{operation}"
            if usage.wru != wru:
                usage.wru_by_op[name] += usage.wru - wru
            if usage.rru != rru:
                usage.rru_by_op[name] = usage.rru_by_op.get(name, 0.0) + usage.rru - rru

    # DynamoDB capacity -------------------------------------------------------------------

    def _layout(self, table: str) -> TableLayout:
        layout = self._layouts.get(table)
        if layout is None:
            layout = self._layouts[table] = TableLayout.describe(self._shadow, table)
        return layout

    def _read_back(self, table: str, key: Item) -> Item | None:
        found: Item | None = self._shadow.get_item(
            TableName=table, Key=key, ConsistentRead=True
        ).get("Item")
        return found

    def _write(self, table: str, key: Item, new: Item | None, *, transactional: bool) -> None:
        layout = self._layout(table)
        item_key = layout.key_of(key)
        if item_key is None:
            return
        old = self._mirror.get((table, item_key))
        base = units(max(item_size(old), item_size(new)), 1024) * (2 if transactional else 1)
        index = sum(ix.write_units(old, new, layout.keys) for ix in layout.indexes)
        kind = item_kind(key, layout.keys)
        usage = self._usage
        usage.wru_table += base
        usage.wru_index += index
        usage.wru_by_kind[kind] += base + index
        usage.writes_by_kind[kind] += 1
        if new is None:
            self._mirror.pop((table, item_key), None)
        else:
            self._mirror[(table, item_key)] = new
            usage.item_bytes += item_size(new)
            usage.item_bytes_by_kind[kind] += item_size(new)
            usage.items_written += 1

    def _full_size(self, table: str, item: Item, fallback: Item | None = None) -> int:
        """The size of the whole stored item behind ``item`` (a key or a projected item);
        the size of ``fallback`` (else of ``item``) when it was not written through us."""
        layout = self._layout(table)
        item_key = layout.key_of(item)
        stored = None if item_key is None else self._mirror.get((table, item_key))
        if stored is None:
            stored = fallback if fallback is not None else item
        return item_size(stored)

    def _ddb_PutItem(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        self._write(params["TableName"], params["Item"], params["Item"], transactional=False)

    def _ddb_UpdateItem(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        table, key = params["TableName"], params["Key"]
        self._write(table, key, self._read_back(table, key), transactional=False)

    def _ddb_DeleteItem(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        self._write(params["TableName"], params["Key"], None, transactional=False)

    def _ddb_TransactWriteItems(  # noqa: N802
        self, params: dict[str, Any], parsed: dict[str, Any]
    ) -> None:
        for action in params.get("TransactItems", []):
            if "Put" in action:
                put = action["Put"]
                self._write(put["TableName"], put["Item"], put["Item"], transactional=True)
            elif "Update" in action:
                update = action["Update"]
                table, key = update["TableName"], update["Key"]
                self._write(table, key, self._read_back(table, key), transactional=True)
            elif "Delete" in action:
                delete = action["Delete"]
                self._write(delete["TableName"], delete["Key"], None, transactional=True)
            elif "ConditionCheck" in action:
                check = action["ConditionCheck"]
                layout = self._layout(check["TableName"])
                item_key = layout.key_of(check["Key"])
                current = None if item_key is None else self._mirror.get((layout.name, item_key))
                self._usage.wru_table += 2 * units(item_size(current), 1024)

    def _ddb_BatchWriteItem(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        unprocessed = parsed.get("UnprocessedItems") or {}
        if unprocessed:
            self.errors["dynamodb.BatchWriteItem.unprocessed"] += 1
        for table, requests in params.get("RequestItems", {}).items():
            for request in requests:
                if "PutRequest" in request:
                    item = request["PutRequest"]["Item"]
                    self._write(table, item, item, transactional=False)
                elif "DeleteRequest" in request:
                    self._write(table, request["DeleteRequest"]["Key"], None, transactional=False)

    def _ddb_GetItem(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        item = parsed.get("Item")
        size = 0 if item is None else self._full_size(params["TableName"], params["Key"], item)
        factor = 1.0 if params.get("ConsistentRead") else 0.5
        self._usage.rru += units(size, 4096) * factor

    def _ddb_BatchGetItem(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        found = parsed.get("Responses", {})
        for table, request in params.get("RequestItems", {}).items():
            factor = 1.0 if request.get("ConsistentRead") else 0.5
            layout = self._layout(table)
            present = {layout.key_of(i): i for i in found.get(table, [])}
            for key in request.get("Keys", []):
                hit = present.get(layout.key_of(key))
                size = 0 if hit is None else self._full_size(table, key, hit)
                self._usage.rru += units(size, 4096) * factor

    def _ddb_Query(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        table = params["TableName"]
        total = sum(self._full_size(table, item) for item in parsed.get("Items", []))
        factor = 1.0 if params.get("ConsistentRead") else 0.5
        self._usage.rru += units(total, 4096) * factor

    def _ddb_TransactGetItems(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:  # noqa: N802
        for action in params.get("TransactItems", []):
            get = action.get("Get", {})
            self._usage.rru += 2 * units(self._full_size(get["TableName"], get["Key"]), 4096)


# the moto server -------------------------------------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """A ``ThreadedMotoServer`` on 127.0.0.1 (a free port) for the whole bench run; yields
    its endpoint URL. Its request log is silenced."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_session() -> Any:
    """A boto3 session with moto's dummy credentials (nothing leaves the machine)."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
