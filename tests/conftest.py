"""Test-wide settings: nothing fetched from the network, no user env leaking in; under
pytest-xdist, the tests of a module that shares a fixture wider than a test run in one
worker; ``--sdk-server`` picks the Agent Server the ``served`` fixture's tests run against."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.functional.agent_servers import ServedGraphs


SDK_SERVERS = ("agentworker", "langgraph-dev")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sdk-server",
        choices=SDK_SERVERS,
        default="agentworker",
        help="the Agent Server that the tests using the `served` fixture run against; with "
        "langgraph-dev (`make compare`) only those tests are collected, less the ones marked "
        "agentworker_only",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "agentworker_only: checks of agentworker's own (its error shapes, identities, apps),"
        " not collected with --sdk-server=langgraph-dev",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against ``langgraph dev``: the tests of the calls both servers serve, and no other."""
    if config.getoption("sdk_server") == "agentworker":
        return
    shared = [
        item
        for item in items
        if "served" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("agentworker_only") is None
    ]
    kept = {id(item) for item in shared}
    others = [item for item in items if id(item) not in kept]
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = shared


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedGraphs]:
    """The graphs of ``tests.functional.agent_servers.GRAPHS`` behind the server that
    ``--sdk-server`` names (``agentworker serve`` unless told)."""
    from tests.functional.agent_servers import ServedGraphs

    graphs = ServedGraphs(request.config.getoption("sdk_server"), tmp_path_factory.mktemp("sdk"))
    try:
        yield graphs
    finally:
        graphs.close()


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (``make test`` runs -n)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The tests one by one over the workers, but a module that shares a fixture wider than a
    test in one worker (:mod:`tests.xdist_scheduling`); other ``--dist`` modes as asked."""
    if config.getvalue("dist") != "load":
        return None
    from tests.xdist_scheduling import SharedFixtureScheduling

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _botocore_models_parsed_once() -> Iterator[None]:
    """botocore parses a service's model files (large JSON, into ordered dicts) again for
    every new session, and the AWS tests make a few sessions each (ours, moto's, the
    stack's): a sixth of their time. Parse each file once per test process and hand out
    copies (unpickled: a third of the parse's cost), since what gets it may change it; and
    give every session of the process the same loader (per data path), which keeps what it
    loaded as one session's clients share it: the AWS runtime's tests take 40% less CPU."""
    from botocore.loaders import JSONFileLoader

    parse = JSONFileLoader.load_file
    parsed: dict[str, bytes] = {}

    def load_file(self: JSONFileLoader, file_path: str) -> Any:
        if file_path not in parsed:
            parsed[file_path] = pickle.dumps(parse(self, file_path), pickle.HIGHEST_PROTOCOL)
        return pickle.loads(parsed[file_path])

    import botocore.session

    make_loader = botocore.session.create_loader
    loaders: dict[str | None, Any] = {}

    def create_loader(search_path_string: str | None = None) -> Any:
        # one loader per data path for the process: its parsed models are cached on it, as
        # a session's own clients share them already
        if search_path_string not in loaders:
            loaders[search_path_string] = make_loader(search_path_string)
        return loaders[search_path_string]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JSONFileLoader, "load_file", load_file)
        patch.setattr(botocore.session, "create_loader", create_loader)
        yield


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
