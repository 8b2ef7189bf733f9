"""``agentworker demo`` end to end: a fresh process, real SQLite, MLflow traces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_and_checks_itself(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    state = tmp_path / "state"
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "demo", "--state-dir", str(state)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo ok" in out.stdout
    rows = {
        line.split()[0]: line.split()
        for line in out.stdout.splitlines()
        if line.startswith("demo:")
    }
    # conversation policy messages turns tool-calls approvals replies status traces
    alice, bob = rows["demo:alice"], rows["demo:bob"]
    assert alice[1:] == ["enqueue", "4", "4", "2", "1", "3", "idle", "4"]
    assert bob[1:] == ["merge", "2", "1", "1", "0", "1", "idle", "1"]
    assert (state / "agentworker.db").is_file() and (state / "mlflow.db").is_file()
    assert list(cwd.iterdir()) == []  # nothing (e.g. MLflow's ./mlruns) outside the state dir
    assert "INFO" not in out.stdout + out.stderr
