"""The memory store contract: what a graph sees as ``runtime.store``, a LangGraph ``BaseStore``
scoped per customer (:class:`~workers.agent.store.TurnScopedStore`), over every backend:
SQLite (embedded runtime), DynamoDB on moto (AWS runtime), and LangGraph's own
``InMemoryStore`` as the reference the other two must agree with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore, InvalidNamespaceError, PutOp
from langgraph.store.memory import InMemoryStore
from langgraph.store.sqlite.base import SqliteIndexConfig

from events.identity import identity_key
from tests.moto_env import mocked_table
from workers.agent.sdk import TurnInfo, bound_turn
from workers.agent.store import TurnScopedStore, customer_label, erase_customer
from workers.errors import ConfigError, OutsideTurn, VectorSearchUnavailable

TABLE = "agentworker"
ALICE = identity_key("acme", "alice")
BOB = identity_key("acme", "bob")


@dataclass
class Backend:
    name: str
    base: BaseStore
    sweep: Callable[[], None]
    """What removes expired items, if the backend needs it (SQLite's TTL sweep)."""

    @property
    def store(self) -> TurnScopedStore:
        return TurnScopedStore(self.base)


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "memory":
        yield Backend("memory", InMemoryStore(), lambda: None)
    elif request.param == "sqlite":
        from workers.adapters.local.sqlite_memory import open_local_store

        sqlite = open_local_store(tmp_path / "state")
        yield Backend("sqlite", sqlite, lambda: None if sqlite.sweep_ttl() else None)
        sqlite.conn.close()
    else:
        from workers.adapters.aws.dynamodb_memory import DynamoDBMemoryStore

        with mocked_table(monkeypatch, TABLE) as dynamodb:
            yield Backend(
                "dynamodb", DynamoDBMemoryStore(dynamodb=dynamodb, table_name=TABLE), lambda: None
            )


@contextmanager
def turn_of(customer: str) -> Iterator[None]:
    """Run the body as a turn of a conversation of ``customer`` (what the runner does)."""
    with bound_turn(TurnInfo("conv", "turn", "test", ("m1",), "root", customer=customer)):
        yield


def keys(items: list[Any]) -> set[str]:
    return {i.key for i in items}


# the BaseStore contract, as one customer sees it ------------------------------------------


def test_put_get_delete_round_trip_without_the_customer_label(backend: Backend) -> None:
    store = backend.store
    with turn_of(ALICE):
        assert store.get(("memories", "prefs"), "theme") is None
        store.put(("memories", "prefs"), "theme", {"value": "dark", "n": 1.5})
        item = store.get(("memories", "prefs"), "theme")
        assert item is not None
        assert item.namespace == ("memories", "prefs")
        assert (item.key, item.value) == ("theme", {"value": "dark", "n": 1.5})
        created = item.created_at
        store.put(("memories", "prefs"), "theme", {"value": "light"})
        again = store.get(("memories", "prefs"), "theme")
        assert again is not None and again.value == {"value": "light"}
        assert again.updated_at >= created
        store.delete(("memories", "prefs"), "theme")
        assert store.get(("memories", "prefs"), "theme") is None


def test_search_by_prefix_filter_limit_and_offset(backend: Backend) -> None:
    store = backend.store
    with turn_of(ALICE):
        for n in range(6):
            kind = "fact" if n % 2 else "preference"
            store.put(("memories", "u1"), f"m{n}", {"kind": kind, "n": n})
        store.put(("memories", "u1", "deep"), "d", {"kind": "fact", "n": 10})
        store.put(("other",), "o", {"kind": "fact", "n": 11})

        assert keys(store.search(("memories", "u1"), limit=100)) == {
            *(f"m{n}" for n in range(6)),
            "d",
        }
        assert keys(store.search(("memories",), filter={"kind": "fact"}, limit=100)) == {
            "m1",
            "m3",
            "m5",
            "d",
        }
        assert keys(store.search(("memories",), filter={"n": {"$gte": 4}}, limit=100)) == {
            "m4",
            "m5",
            "d",
        }
        assert keys(store.search((), limit=100)) == {*(f"m{n}" for n in range(6)), "d", "o"}
        first = store.search(("memories", "u1"), limit=3)
        rest = store.search(("memories", "u1"), limit=10, offset=3)
        assert len(first) == 3 and len(rest) == 4
        assert keys(first) | keys(rest) == keys(store.search(("memories", "u1"), limit=100))
        assert not keys(first) & keys(rest)
        found = store.search(("memories", "u1", "deep"))
        assert [(i.namespace, i.key) for i in found] == [(("memories", "u1", "deep"), "d")]


def test_list_namespaces_prefix_suffix_depth_and_paging(backend: Backend) -> None:
    store = backend.store
    with turn_of(ALICE):
        for ns in [("a", "b", "c"), ("a", "b", "d"), ("a", "e"), ("f",), ("g", "b", "d")]:
            store.put(ns, "k", {"v": 1})
        assert store.list_namespaces() == [
            ("a", "b", "c"),
            ("a", "b", "d"),
            ("a", "e"),
            ("f",),
            ("g", "b", "d"),
        ]
        assert store.list_namespaces(prefix=("a",)) == [
            ("a", "b", "c"),
            ("a", "b", "d"),
            ("a", "e"),
        ]
        assert store.list_namespaces(prefix=("*", "b")) == [
            ("a", "b", "c"),
            ("a", "b", "d"),
            ("g", "b", "d"),
        ]
        assert store.list_namespaces(suffix=("d",)) == [("a", "b", "d"), ("g", "b", "d")]
        assert store.list_namespaces(max_depth=1) == [("a",), ("f",), ("g",)]
        assert store.list_namespaces(prefix=("a",), max_depth=2) == [("a", "b"), ("a", "e")]
        assert store.list_namespaces(limit=2, offset=1) == [("a", "b", "d"), ("a", "e")]


def test_async_operations(backend: Backend) -> None:
    store = backend.store

    async def body() -> Any:
        await store.aput(("memories",), "k", {"v": 1})
        found = await store.asearch(("memories",))
        return await store.aget(("memories",), "k"), found

    with turn_of(ALICE):
        item, found = asyncio.run(body())
    assert item is not None and item.namespace == ("memories",) and item.value == {"v": 1}
    assert [i.namespace for i in found] == [("memories",)]


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"], indirect=True)
def test_an_item_past_its_ttl_is_not_read(backend: Backend) -> None:
    """The runtimes' stores (LangGraph's ``InMemoryStore``, the reference, keeps no TTL)."""
    assert backend.base.supports_ttl
    store = backend.store
    with turn_of(ALICE):
        store.put(("memories",), "brief", {"v": 1}, ttl=1 / 600)  # 0.1 s
        store.put(("memories",), "kept", {"v": 2})
        time.sleep(1.1)  # SQLite compares its deadlines to the second
        backend.sweep()
        assert store.get(("memories",), "brief") is None
        assert keys(store.search(("memories",))) == {"kept"}


# the scoping -------------------------------------------------------------------------------


def test_another_customer_reaches_nothing_whatever_namespace_it_passes(backend: Backend) -> None:
    store = backend.store
    with turn_of(ALICE):
        store.put(("memories", "alice"), "secret", {"text": "alice's"})
    alice = customer_label(ALICE)
    with turn_of(BOB):
        # Listings first: InMemoryStore lists a namespace a get() of nothing created.
        assert store.list_namespaces() == []
        assert store.list_namespaces(prefix=(alice,)) == []
        assert store.list_namespaces(prefix=("*",), max_depth=1) == []
        assert store.list_namespaces(suffix=("alice",)) == []
        assert store.get(("memories", "alice"), "secret") is None
        assert store.get((alice, "memories", "alice"), "secret") is None
        assert store.search(()) == []
        assert store.search((alice,)) == []
        assert store.search(("*",)) == []
        # Writing under a label like Alice's lands under Bob's own label.
        store.put((alice, "memories", "alice"), "secret", {"text": "bob's"})
        assert [(i.namespace, i.value) for i in store.search(())] == [
            ((alice, "memories", "alice"), {"text": "bob's"})
        ]
    with turn_of(ALICE):
        item = store.get(("memories", "alice"), "secret")
        assert item is not None and item.value == {"text": "alice's"}
        assert store.list_namespaces() == [("memories", "alice")]


def test_customers_that_escape_alike_stay_apart(backend: Backend) -> None:
    store = backend.store
    twins = ["acme/a.b", "acme/a%2Eb", "acme/a%252Eb"]
    for customer in twins:
        with turn_of(customer):
            store.put(("m",), "who", {"customer": customer})
    for customer in twins:
        with turn_of(customer):
            assert [i.value["customer"] for i in store.search(())] == [customer]
    assert len({customer_label(c) for c in twins}) == 3
    assert all("." not in customer_label(c) for c in twins)


def test_invalid_namespaces_are_refused_as_langgraph_refuses_them(backend: Backend) -> None:
    store = backend.store
    with turn_of(ALICE):
        with pytest.raises(InvalidNamespaceError):
            store.put((), "k", {"v": 1})
        with pytest.raises(InvalidNamespaceError):
            store.batch([PutOp((), "k", {"v": 1})])
        with pytest.raises(InvalidNamespaceError):
            store.put(("a.b",), "k", {"v": 1})
        with pytest.raises(InvalidNamespaceError):
            store.batch([PutOp(("a.b",), "k", {"v": 1})])
        assert store.search(()) == []


def test_outside_a_turn_the_store_is_a_typed_error(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(OutsideTurn):
        store.get(("memories",), "k")
    with pytest.raises(OutsideTurn), turn_of(""):
        store.search(())


def test_erase_customer_deletes_every_item_of_theirs_and_nothing_else(backend: Backend) -> None:
    store = backend.store
    with turn_of(ALICE):
        for n in range(7):
            store.put(("memories", str(n % 3)), f"k{n}", {"n": n})
        store.put(("profile",), "me", {"name": "Alice"})
    with turn_of(BOB):
        store.put(("memories", "0"), "k0", {"n": "bob"})

    assert erase_customer(backend.base, ALICE) == 8
    assert erase_customer(backend.base, ALICE) == 0
    with turn_of(ALICE):
        assert store.search(()) == []
        if backend.name != "memory":  # InMemoryStore lists the namespaces it emptied
            assert store.list_namespaces() == []
    with turn_of(BOB):
        assert [i.value for i in store.search(())] == [{"n": "bob"}]


# vector search ------------------------------------------------------------------------------


def test_a_search_by_query_without_an_index_is_answered_as_langgraph_does(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Unranked, as ``InMemoryStore`` and ``SqliteStore`` answer it without an index (the
    memory agent template searches so): the log says once what would rank it."""
    from workers.agent import store as scoped

    scoped._warned.clear()
    store = backend.store
    with turn_of(ALICE):
        store.put(("memories",), "a", {"text": "likes dark mode"})
        store.put(("memories",), "b", {"text": "lives in Oslo"})
        found = store.search(("memories",), query="dark mode")
    assert sorted(i.key for i in found) == ["a", "b"]
    if backend.name != "memory":
        assert "store_index_dims and store_index_embed rank it" in caplog.text


def test_a_query_where_vector_search_was_asked_for_but_cannot_be_is_a_clear_error() -> None:
    from workers.adapters.aws.dynamodb_memory import DynamoDBMemoryStore

    store = TurnScopedStore(DynamoDBMemoryStore(dynamodb=None, table_name="t", index_wanted=True))
    with turn_of(ALICE), pytest.raises(VectorSearchUnavailable, match="no vector search"):
        store.search(("memories",), query="dark mode")


def _embed(texts: Sequence[str]) -> list[list[float]]:
    """Three made-up dimensions: how much a text is about colours, food, travel."""
    words = (("dark", "light", "colour"), ("pizza", "food"), ("train", "travel"))
    return [[float(sum(w in t for w in group)) + 0.01 for group in words] for t in texts]


def test_vector_search_ranks_by_meaning_within_the_customer(tmp_path: Path) -> None:
    from workers.adapters.local.sqlite_memory import open_local_store, vector_search_available

    index: SqliteIndexConfig = {"dims": 3, "embed": _embed, "fields": ["text"]}
    bases: list[BaseStore] = [InMemoryStore(index=index)]
    if vector_search_available():
        bases.append(open_local_store(tmp_path, index=index))
    for base in bases:
        store = TurnScopedStore(base)
        with turn_of(ALICE):
            store.put(("memories",), "colour", {"text": "likes the dark colour theme"})
            store.put(("memories",), "food", {"text": "eats pizza, loves food"})
            store.put(("memories",), "travel", {"text": "goes by train when travel"})
        with turn_of(BOB):
            store.put(("memories",), "bob", {"text": "pizza pizza food food"})
            assert [i.key for i in store.search(("memories",), query="food")] == ["bob"]
        with turn_of(ALICE):
            found = store.search(("memories",), query="pizza food", limit=2)
            assert [i.key for i in found][0] == "food"
            assert found[0].score is not None and found[0].namespace == ("memories",)


def test_vector_search_where_sqlite_cannot_load_extensions_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.adapters.local import sqlite_memory

    monkeypatch.setattr(sqlite_memory, "vector_search_available", lambda: False)
    with pytest.raises(ConfigError, match="store_index_dims"):
        sqlite_memory.open_local_store(tmp_path, index=SqliteIndexConfig(dims=3, embed=_embed))
    assert not (tmp_path / sqlite_memory.MEMORY_FILE).exists()
