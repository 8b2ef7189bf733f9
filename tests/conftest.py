"""Test-wide settings: nothing fetched from the network, no user env leaking in; under
pytest-xdist, the tests of a module that shares a fixture wider than a test run in one
worker."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any

import pytest


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
    copies (unpickled: a third of the parse's cost), since what gets it may change it."""
    from botocore.loaders import JSONFileLoader

    parse = JSONFileLoader.load_file
    parsed: dict[str, bytes] = {}

    def load_file(self: JSONFileLoader, file_path: str) -> Any:
        if file_path not in parsed:
            parsed[file_path] = pickle.dumps(parse(self, file_path), pickle.HIGHEST_PROTOCOL)
        return pickle.loads(parsed[file_path])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JSONFileLoader, "load_file", load_file)
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
