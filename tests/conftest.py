"""Test-wide settings: nothing fetched from the network, no user env leaking in."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_MODEL_CATALOG_URI", "")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in list(os.environ):
        if name.startswith("AGENTWORKER_"):
            monkeypatch.delenv(name)
