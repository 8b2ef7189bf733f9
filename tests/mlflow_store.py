"""An empty MLflow SQLite store, migrated once: creating one runs MLflow's migrations, which
takes seconds (8 s on a loaded machine). Tests copy it into a state directory where a traced
server or an eval would otherwise create its own; the creation itself stays covered by
``tests/functional/test_trace_export.py`` (a first run with no store)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_TEMPLATE: list[Path] = []


def migrated_store() -> Path:
    """The template store: kept in the temporary directory per MLflow version and reused
    by later sessions; only ever copied, and written under another name first."""
    if not _TEMPLATE:
        from workers.observability import offline_mlflow_env

        offline_mlflow_env()
        import mlflow

        path = Path(tempfile.gettempdir()) / f"agentworker-mlflow-{mlflow.__version__}.db"
        if not path.is_file():
            fresh = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{fresh}").search_experiments()
            fresh.replace(path)
        _TEMPLATE.append(path)
    return _TEMPLATE[0]


def seed_store(state_dir: Path) -> Path:
    """``state_dir/mlflow.db`` as a copy of the template (unless one is there already)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / "mlflow.db"
    if not target.exists():
        shutil.copy(migrated_store(), target)
    return target
