"""The store a graph sees (``runtime.store``, ``InjectedStore``, ``get_store()``): LangGraph's
``BaseStore``, scoped to the customer the current turn serves.

:class:`TurnScopedStore` wraps the runtime's store (SQLite embedded, DynamoDB on AWS) and
puts one label in front of every namespace the app passes: :func:`customer_label` of
:attr:`~workers.agent.sdk.TurnInfo.customer` (the conversation's tenant and owner). The app
reads back exactly the namespaces it wrote, without the label; whatever namespace it passes
(``()``, a label that looks like another customer's, a ``list_namespaces`` prefix or depth,
a wildcard), it stays under its own label, so another customer's memories do not exist for
it. :func:`erase_customer` deletes everything under one customer's label (``forget
--memories``, the retention).

The store is outside the turn's fenced commit: a write happens when the node makes it, and a
turn that is retried after a failure runs its nodes again (see ``docs/memory.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, TypeVar

from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    validate_op_namespace,
)

from workers.agent.sdk import current_turn
from workers.errors import OutsideTurn

__all__ = [
    "StoreMemories",
    "TurnScopedStore",
    "customer_label",
    "erase_customer",
    "warn_unranked_once",
]

log = logging.getLogger(__name__)
_warned = threading.Event()


def warn_unranked_once() -> None:
    """A ``search(query=...)`` without a vector index is answered as LangGraph's own stores
    answer it, a listing in no order of meaning: the log says so once per process."""
    if not _warned.is_set():
        _warned.set()
        log.warning(
            "store.search(query=...) without a vector index: answered unranked, as"
            " LangGraph's stores answer it; store_index_dims and store_index_embed rank it"
        )


LABEL_PREFIX = "customer:"
"""Every customer label starts so: a reader of the raw store sees whose items are whose."""

_ERASE_PAGE = 500

_ItemT = TypeVar("_ItemT", bound=Item)


def customer_label(customer: str) -> str:
    """The namespace label that holds ``customer``'s items: ``customer:`` and the customer
    with ``%``, ``.`` and NUL percent-encoded (a LangGraph label may hold neither ``.`` nor
    NUL), so two customers never share a label (``a.b`` is ``customer:a%2Eb``, and
    ``a%2Eb`` is ``customer:a%252Eb``). ``OutsideTurn`` for an empty customer: nobody's
    items may be written unscoped."""
    if not customer:
        raise OutsideTurn("the store is scoped to a conversation's customer; this turn has none")
    escaped = customer.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")
    return LABEL_PREFIX + escaped


class TurnScopedStore(BaseStore):
    """``base`` as one customer sees it: the current turn's (read at every call, so one
    instance serves every turn and thread of the process).

    Every operation is one ``base`` operation under the customer's label: the same round
    trips, results in the same order. ``put`` and ``delete`` need a namespace of at least
    one label, as on any ``BaseStore``; ``search(())`` and ``list_namespaces()`` cover the
    customer's whole store. Outside a turn (no graph running) every call raises
    ``OutsideTurn``."""

    def __init__(self, base: BaseStore) -> None:
        self.base = base
        # What a BaseStore's put() consults before it batches: the base's own TTL support.
        self.supports_ttl = base.supports_ttl
        self.ttl_config = base.ttl_config

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        label, ops = self._scoped(ops)
        return [_unscoped(r, label) for r in self.base.batch(ops)]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        label, ops = self._scoped(ops)
        return [_unscoped(r, label) for r in await self.base.abatch(ops)]

    def _scoped(self, ops: Iterable[Op]) -> tuple[str, list[Op]]:
        label = customer_label(current_turn().customer)
        return label, [_scope(op, label) for op in ops]


def _scope(op: Op, label: str) -> Op:
    # Ops handed to batch() directly skip BaseStore's checks: check them here, the app's
    # namespace as the app passed it.
    validate_op_namespace(op)
    if isinstance(op, GetOp):
        return op._replace(namespace=(label, *op.namespace))
    if isinstance(op, PutOp):
        if not op.namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        return op._replace(namespace=(label, *op.namespace))
    if isinstance(op, SearchOp):
        return op._replace(namespace_prefix=(label, *op.namespace_prefix))
    if isinstance(op, ListNamespacesOp):
        conditions = [
            c._replace(path=(label, *c.path)) if c.match_type == "prefix" else c
            for c in op.match_conditions or ()
        ]
        if not any(c.match_type == "prefix" for c in conditions):
            conditions.insert(0, MatchCondition(match_type="prefix", path=(label,)))
        depth = None if op.max_depth is None else op.max_depth + 1
        return op._replace(match_conditions=tuple(conditions), max_depth=depth)
    raise TypeError(f"unknown store operation {type(op).__name__}")


def _unscoped(result: Result, label: str) -> Result:
    """A base result as the app sees it: its namespaces without the customer's label.
    Anything not under the label (which the base never returns) is left out."""
    if result is None:
        return None
    if isinstance(result, Item):
        return _item(result, label)
    out: list[Item | SearchItem | tuple[str, ...]] = []
    for entry in result:
        if isinstance(entry, Item):
            found = _item(entry, label)
            if found is not None:
                out.append(found)
        elif entry[:1] == (label,):
            out.append(tuple(entry[1:]))
    return out  # type: ignore[return-value]


def _item(item: _ItemT, label: str) -> _ItemT | None:
    namespace = tuple(item.namespace)
    if namespace[:1] != (label,):
        return None
    fields: dict[str, Any] = {
        "namespace": namespace[1:],
        "key": item.key,
        "value": item.value,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }
    if isinstance(item, SearchItem):
        return SearchItem(**fields, score=item.score)  # type: ignore[return-value]
    return Item(**fields)  # type: ignore[return-value]


def erase_customer(base: BaseStore, customer: str) -> int:
    """Delete every item ``customer`` keeps in ``base`` (all namespaces under their label);
    the number deleted. Pages of searches and deletes: a store with a TTL that expires some
    items meanwhile is fine, and an item written while this runs may survive it."""
    label = customer_label(customer)
    deleted: set[tuple[tuple[str, ...], str]] = set()
    while True:
        page = base.search((label,), limit=_ERASE_PAGE, refresh_ttl=False)
        fresh = [i for i in page if (tuple(i.namespace), i.key) not in deleted]
        if not fresh:
            return len(deleted)
        base.batch([PutOp(tuple(i.namespace), i.key, None) for i in fresh])
        deleted.update((tuple(i.namespace), i.key) for i in fresh)


class StoreMemories:
    """The :class:`~workers.core.ports.MemoryEraser` of a ``BaseStore``: what the core calls
    to erase a conversation owner's memories."""

    def __init__(self, base: BaseStore) -> None:
        self.base = base

    def forget_customer(self, customer: str) -> int:
        return erase_customer(self.base, customer)
