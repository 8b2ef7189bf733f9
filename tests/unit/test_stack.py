"""The stack spec: the committed ``deploy/stack.json`` is what the code generates, and every
environment variable it names is a setting the code reads."""

from __future__ import annotations

import json
from pathlib import Path

from workers.adapters.aws.tables import TTL_ATTRIBUTE, DynamoDBTableSpec
from workers.config import ENV_PREFIX, Settings
from workers.stack import StackNames, export, export_json

ROOT = Path(__file__).parents[2]


def test_the_committed_spec_is_current() -> None:
    committed = (ROOT / "deploy" / "stack.json").read_text()
    assert committed == export_json(), "stale: run `agentworker stack-spec --out deploy/stack.json`"


def test_the_spec_carries_the_stores_table_and_ttl() -> None:
    table = export()["table"]
    request = DynamoDBTableSpec("x").create_request()
    for key in (
        "KeySchema",
        "AttributeDefinitions",
        "LocalSecondaryIndexes",
        "GlobalSecondaryIndexes",
    ):
        assert table[key] == request[key]
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_names_come_from_one_prefix() -> None:
    suffixes = export()["suffixes"]
    names = StackNames("agentworker-dev")
    assert names.queue == "agentworker-dev" + suffixes["queue"]
    assert names.dlq == "agentworker-dev" + suffixes["dlq"]
    assert names.table == "agentworker-dev" + suffixes["table"]


def test_every_environment_variable_is_a_setting() -> None:
    env = export()["environment"]
    names = {name for variables in env.values() for name in variables}
    names = {n for n in names if not n.startswith("POWERTOOLS_")}  # Powertools' own
    fields = {ENV_PREFIX + f.upper() for f in Settings.model_fields}
    assert names <= fields, names - fields
    assert json.loads(export_json()) == export()
