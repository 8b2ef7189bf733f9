"""What the eval tests share: an MLflow SQLite store migrated once (creating one takes
seconds), copied into each test's state directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.mlflow_store import migrated_store

REPO = Path(__file__).resolve().parents[2]
DATASETS = sorted(str(p) for p in (REPO / "evals").glob("*.jsonl"))
THRESHOLDS = str(REPO / "evals" / "thresholds.toml")


@pytest.fixture(scope="session")
def mlflow_template() -> Path:
    """An empty, migrated MLflow store (see :mod:`tests.mlflow_store`)."""
    return migrated_store()


@pytest.fixture
def eval_state(tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory with its own copy of the migrated store, the settings' default."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(mlflow_template, state / "mlflow.db")
    monkeypatch.setenv("AGENTWORKER_STATE_DIR", str(state))
    monkeypatch.chdir(tmp_path)
    return state


def write_cases(path: Path, *cases: dict[str, Any] | str) -> Path:
    """A dataset file: dicts as JSON lines, strings as they are (malformed lines)."""
    path.write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in cases))
    return path


def eval_run(state: Path, run_id: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}").get_run(run_id)


def run_id_of(out: str) -> str:
    line = next(x for x in out.splitlines() if x.startswith("mlflow run "))
    return line.split()[2]


def cases_table(state: Path, run_id: str) -> dict[str, Any]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    local = client.download_artifacts(run_id, "eval_cases.json", str(state / "download"))
    data = json.loads(Path(local).read_text())
    return {row[0]: dict(zip(data["columns"], row, strict=True)) for row in data["data"]}


def assessments_of(state: Path, trace_id: str) -> dict[str, tuple[object, str | None, str]]:
    """A trace's feedback: name -> (value, rationale, source type)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    return {
        a.name: (a.value, a.rationale, a.source.source_type)
        for a in client.get_trace(trace_id).info.assessments
        if a.feedback is not None
    }
