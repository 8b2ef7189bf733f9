"""Test-wide settings: nothing fetched from the network, no user env leaking in; under
pytest-xdist, the tests that share a fixture wider than a test run in one worker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make test`` spreads the tests over worker processes one by one, except that a test
    using one of our module- or session-scoped fixtures (a server, a venv) joins its
    module's group: the fixture then starts once, in the worker that runs the group."""
    for item in items:
        if item.get_closest_marker("xdist_group") or not _shares_a_fixture(item):
            continue
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def _shares_a_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope != "function" and definition.func.__module__.startswith("tests.")
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_MODEL_CATALOG_URI", "")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in list(os.environ):
        if name.startswith("AGENTWORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def mlflow_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real ``mlflow server`` on loopback for the session (it takes seconds to start);
    the tests that use it keep to their own conversations."""
    pytest.importorskip("mlflow")
    from tests.functional.server_process import mlflow_server_process

    with mlflow_server_process(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
