"""The Lambda side with only the package's base dependencies, as a Lambda bundle has them:
``mlflow-tracing`` and not full ``mlflow``, no server extras. Every other test runs with the
``local`` and ``dev`` extras, which would hide a call that only full MLflow provides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functional.server_process import mlflow_server_process, traces_of

ROOT = Path(__file__).parents[2]

TRACED_TURN = """
import json, sys, tempfile
from pathlib import Path
from workers.adapters.clock import SystemClock
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.agent.offline import OfflineChatModel
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.core.model import TurnRequest
from workers.observability import MlflowTracer

store = SqliteConversationStore(Path(tempfile.mkdtemp()) / "tickets.db")
agent = build_agent(load_settings(), store, SystemClock(), model=OfflineChatModel())
tracer = MlflowTracer(sys.argv[1], "agentworker")
tags = {"conversation_id": "bundle:1", "run_id": "bundle-1", "channel": "sqs"}
with tracer.turn("turn", tags=tags, inputs={"texts": ["open a ticket about the bundle"]}):
    request = TurnRequest("bundle:1", "t1", "sqs", ["open a ticket about the bundle"], None,
                          None, [])
    out = agent.run_turn(request, on_chunk=None, tracer=tracer)
tracer.flush()
print(json.dumps({"reply": out.reply_text}))
"""


@pytest.fixture(scope="module")
def base_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install .`` (no extras)."""
    venv = tmp_path_factory.mktemp("lambda-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def run(python: Path, code: str, *args: str) -> str:
    # Run outside the repository so the installed package, not the source tree, is imported.
    out = subprocess.run(
        [str(python), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=python.parent,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_bundle_has_mlflow_tracing_not_mlflow(base_python: Path) -> None:
    found = json.loads(
        run(
            base_python,
            "import importlib.metadata as md, json, re\n"  # names normalized as in PEP 503
            "names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower()"
            " for d in md.distributions()}\n"
            "print(json.dumps(sorted(names)))",
        )
    )
    assert "mlflow-tracing" in found and "aws-lambda-powertools" in found
    assert not {"mlflow", "mlflow-skinny", "fastapi", "uvicorn", "moto", "pytest"} & set(found)


def test_light_handlers_import_without_langgraph_langchain_or_mlflow(base_python: Path) -> None:
    loaded = json.loads(
        run(
            base_python,
            "import json, sys\n"
            "import workers.handlers.ingest, workers.handlers.deliver\n"
            "import workers.handlers.approve, workers.handlers.sweeper\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))",
        )
    )
    assert not {"langgraph", "langchain_core", "langchain_aws", "mlflow"} & set(loaded)


def test_a_traced_turn_runs_on_mlflow_tracing_alone(base_python: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    with mlflow_server_process(tmp_path) as url:
        out = json.loads(run(base_python, TRACED_TURN, url))
        assert out["reply"].startswith("Opened ticket 1")
        traces = traces_of(url, "bundle:1")
    assert len(traces) == 1
    spans = {(s.name, s.span_type) for s in traces[0].data.spans}
    assert {("turn", "AGENT"), ("model", "CHAT_MODEL"), ("tool.create_ticket", "TOOL")} <= spans
