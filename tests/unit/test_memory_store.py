"""The memory store's parts beyond the contract: the SQLite file is its owner's alone and
serves many threads at once; the settings of vector search; the DynamoDB store keeps one
partition per customer on the stack's table, with actions the ``turn`` role grants."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.adapters.aws.dynamodb_memory import ACTIONS, MEMORY_PK_PREFIX, DynamoDBMemoryStore
from workers.adapters.local.sqlite_memory import MEMORY_FILE, open_local_store, store_index
from workers.agent.sdk import TurnInfo, bound_turn
from workers.agent.store import TurnScopedStore, customer_label
from workers.config import APP_KEYS, Settings
from workers.errors import ConfigError, UnscopedStoreOperation

ROOT = Path(__file__).parents[2]
TABLE = "agentworker"


def test_the_sqlite_file_is_created_owner_only_and_reopens_migrated(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_local_store(state)
    store.put(("customer:x", "m"), "k", {"v": 1})
    store.conn.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.iterdir():  # the database, its -wal and -shm
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    again = open_local_store(state)
    try:
        item = again.get(("customer:x", "m"), "k")
        assert item is not None and item.value == {"v": 1}
        assert (state / MEMORY_FILE).exists()
    finally:
        again.conn.close()


def test_many_worker_threads_share_one_sqlite_store(tmp_path: Path) -> None:
    base = open_local_store(tmp_path)
    store = TurnScopedStore(base)

    def turn(n: int) -> list[int]:
        customer = f"acme/user{n % 4}"
        with bound_turn(TurnInfo(f"c{n}", "t", "test", (), "root", customer=customer)):
            for i in range(20):
                store.put(("memories",), f"{n}-{i}", {"n": n})
            return sorted({i.value["n"] for i in store.search(("memories",), limit=1000)})

    try:
        with ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(turn, range(16)))
        for n, values in enumerate(seen):
            assert set(values) <= {m for m in range(16) if m % 4 == n % 4}
            assert n in values
    finally:
        base.conn.close()


def test_vector_search_settings_come_both_or_neither(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"store_index_dims", "store_index_embed"} <= set(APP_KEYS)
    assert store_index(Settings()) is None
    index = store_index(Settings(store_index_dims=3, store_index_embed="openai:text-embed"))
    assert index == {"dims": 3, "embed": "openai:text-embed"}
    with pytest.raises(ConfigError, match="store_index_embed"):
        store_index(Settings(store_index_dims=3))
    with pytest.raises(ConfigError, match="store_index_dims"):
        store_index(Settings(store_index_embed="openai:text-embed"))


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from tests.moto_env import mocked_table

    with mocked_table(monkeypatch, TABLE) as client:
        yield client


def test_dynamodb_keeps_one_partition_per_customer_on_the_stack_table(dynamodb: Any) -> None:
    base = DynamoDBMemoryStore(dynamodb=dynamodb, table_name=TABLE)
    store = TurnScopedStore(base)
    with bound_turn(TurnInfo("c", "t", "test", (), "root", customer="acme/alice")):
        store.put(("memories", "a/b|c"), "k|1", {"v": 1})
        store.put(("memories",), "k2", {"v": 2})
        assert [i.namespace for i in store.search(("memories", "a/b|c"))] == [("memories", "a/b|c")]
    items = dynamodb.scan(TableName=TABLE)["Items"]
    assert {i["pk"]["S"] for i in items} == {MEMORY_PK_PREFIX + customer_label("acme/alice")}
    assert sorted(i["sk"]["S"] for i in items) == ["memories/a%2Fb%7Cc/|k|1", "memories/|k2"]
    # Across customers' partitions the store refuses (the turn role may not scan).
    with pytest.raises(UnscopedStoreOperation):
        base.search(())
    with pytest.raises(UnscopedStoreOperation):
        base.list_namespaces()


def test_the_turn_role_grants_what_the_dynamodb_memory_store_calls() -> None:
    template = yaml.safe_load((ROOT / "serverless.yml").read_text())
    statements = template["resources"]["Resources"]["TurnRole"]["Properties"]["Policies"][0][
        "PolicyDocument"
    ]["Statement"]
    granted = {a for s in statements if isinstance(s, dict) for a in s["Action"]}
    assert granted >= ACTIONS
    assert "dynamodb:Scan" not in granted
