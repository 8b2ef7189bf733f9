"""Cold start of the Lambda handlers: import time in a fresh interpreter, and ``turn``'s
import plus its first turn.

Each sample is a new ``sys.executable -c`` process that times ``import <module>`` with
``time.perf_counter`` (the interpreter's own start-up excluded), prints JSON and exits; the
samples of the modules are interleaved. The same process reports which heavy frameworks the
import left in ``sys.modules``: ``ingest``, ``deliver``, ``approve`` and ``sweeper`` must not
import LangGraph, LangChain or MLflow (``mlflow-tracing`` installs the ``mlflow`` package,
so ``mlflow`` there means tracing was imported).

``turn``, import plus first turn: the bench process seeds a conversation (one accepted
message and its lease) in a fresh table on the bench's moto server; a fresh process then
times ``from workers.handlers import turn`` and the handler's first ``step`` event
(the real handler: Powertools, ``bootstrap.aws_deps(with_agent=True)`` from
``AGENTWORKER_*`` settings, ``AWS_ENDPOINT_URL`` pointing at moto, the offline model), i.e.
the cold ``turn`` Lambda answering the first message.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.aws_meter import REGION, new_session
from bench.common import RecordingStarter, progress
from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore
from workers.adapters.aws.tables import DynamoDBTableSpec
from workers.adapters.clock import SystemClock
from workers.bootstrap import NoAgent
from workers.core.ports import NullTracer
from workers.core.steps import Deps, accept_message

HANDLERS = (
    "workers.handlers.ingest",
    "workers.handlers.deliver",
    "workers.handlers.approve",
    "workers.handlers.sweeper",
    "workers.handlers.slack",
    "workers.handlers.authorizer",
    "workers.handlers.turn",
)
BASELINE = "boto3"
HEAVY = ("langgraph", "langchain_core", "langchain_aws", "langsmith", "mlflow")
REPORTED = (*HEAVY, "boto3", "botocore")
"""Top-level packages whose presence in ``sys.modules`` after the import is reported."""
LIGHT_HANDLERS = frozenset(HANDLERS) - {"workers.handlers.turn"}
GOAL_IMPORT_S = 1.0
GOAL_LIGHT_IMPORT_S = 0.5
GOAL_FIRST_TURN_S = 1.75
COLD_TABLE = "bench-cold-turn"
COLD_BUCKET = "bench-cold-turn-blobs"
REPO = Path(__file__).resolve().parents[1]

_IMPORT_SCRIPT = """
import json, sys, time
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
present = sorted({{m.split(".")[0] for m in sys.modules}} & set({reported!r}))
print(json.dumps({{"seconds": elapsed, "present": present}}))
"""

_TURN_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from workers.handlers import turn
t1 = time.perf_counter()


class Context:
    function_name = "turn"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:turn"
    memory_limit_in_mb = 1024
    aws_request_id = "bench"
    function_version = "$LATEST"

    def get_remaining_time_in_millis(self):
        return 300_000


run = json.loads(sys.argv[1])
t2 = time.perf_counter()
step = turn.handler({"op": "step", "run": run, "execution_id": "bench-cold"}, Context())
t3 = time.perf_counter()
present = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print("BENCH-RESULT " + json.dumps({
    "import_s": t1 - t0, "step_s": t3 - t2, "total_s": t3 - t0,
    "outcome": step["outcome"], "turn": step.get("turn"), "present": present,
}))
"""


@dataclass(frozen=True)
class ColdImportConfig:
    samples: int = 10
    first_turn_samples: int = 5


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTWORKER_", "AWS_"))}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    env.update(extra or {})
    return env


def _sample(module: str) -> dict[str, Any]:
    script = _IMPORT_SCRIPT.format(module=module, reported=REPORTED)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"import {module} failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _seed(url: str, n: int) -> list[dict[str, Any]]:
    """``n`` conversations with one accepted message each and its lease: the runs the cold
    ``turn`` processes bind and step."""
    session = new_session()
    ddb = session.client("dynamodb", endpoint_url=url)
    s3 = session.client("s3", endpoint_url=url)
    DynamoDBTableSpec(COLD_TABLE).create(ddb)
    s3.create_bucket(Bucket=COLD_BUCKET)
    store = DynamoDBConversationStore(
        dynamodb=ddb, table_name=COLD_TABLE, s3=s3, bucket=COLD_BUCKET
    )
    starter = RecordingStarter()
    deps = Deps(store, NoAgent(), _Sink(), starter, SystemClock(), NullTracer())
    runs = []
    for i in range(n):
        msg = InboundMessage(conversation_id=f"bench-cold-{i}", text="message 1 about my order")
        accept_message(deps, msg, LOCAL_USER)
        runs.append(starter.take().model_dump(mode="json", exclude_none=True))
    return runs


class _Sink:
    def send(self, payload: Any) -> None:
        return None

    def send_chunk(self, chunk: Any) -> None:
        return None


def _first_turn(url: str, run: dict[str, Any]) -> dict[str, Any]:
    env = _env(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AGENTWORKER_TABLE_NAME": COLD_TABLE,
            "AGENTWORKER_BUCKET_NAME": COLD_BUCKET,
            "AGENTWORKER_STATE_MACHINE_ARN": (
                f"arn:aws:states:{REGION}:000000000000:stateMachine:bench-unused"
            ),
            "AGENTWORKER_MODEL": "offline",
            "AGENTWORKER_TRACING": "false",
            "POWERTOOLS_METRICS_NAMESPACE": "bench",
        }
    )
    out = subprocess.run(
        [sys.executable, "-c", _TURN_SCRIPT % (REPORTED,), json.dumps(run)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"cold turn failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH-RESULT "))
    if result["turn"] != "replied":
        raise RuntimeError(f"cold turn did not reply: {result}")
    return result


def run(url: str | None, cfg: ColdImportConfig) -> dict[str, Any]:
    modules = (BASELINE, *HANDLERS)
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modules}
    progress(f"cold-import: {cfg.samples} fresh processes per module ({len(modules)} modules)")
    for _ in range(cfg.samples):
        for module in modules:
            samples[module].append(_sample(module))
    rows = []
    baseline = statistics.median(s["seconds"] for s in samples[BASELINE])
    for module in modules:
        seconds = [s["seconds"] for s in samples[module]]
        present = sorted({h for s in samples[module] for h in s["present"]})
        heavy = [p for p in present if p in HEAVY]
        median = statistics.median(seconds)
        row: dict[str, Any] = {
            "module": module,
            "median_s": median,
            "min_s": min(seconds),
            "max_s": max(seconds),
            "samples_s": seconds,
            "over_boto3_s": median - baseline,
            "heavy_imported": heavy,
            "present_after_import": present,
        }
        if module in LIGHT_HANDLERS:
            row["must_not_import"] = list(HEAVY)
            row["clean"] = not heavy
            row["light_budget_s"] = GOAL_LIGHT_IMPORT_S
            row["met_light_budget"] = median < GOAL_LIGHT_IMPORT_S
        if module != BASELINE:
            row["goal_s"] = GOAL_IMPORT_S
            row["met"] = median < GOAL_IMPORT_S
        rows.append(row)
    result: dict[str, Any] = {
        "config": {"samples": cfg.samples, "first_turn_samples": cfg.first_turn_samples},
        "python": sys.executable,
        "modules": rows,
        "boto3_median_s": baseline,
    }
    if url is not None and cfg.first_turn_samples > 0:
        progress(f"cold-import: turn import + first turn, {cfg.first_turn_samples} processes")
        firsts = [_first_turn(url, r) for r in _seed(url, cfg.first_turn_samples)]
        total = statistics.median(f["total_s"] for f in firsts)
        result["first_turn"] = {
            "samples": firsts,
            "median_total_s": total,
            "median_import_s": statistics.median(f["import_s"] for f in firsts),
            "median_step_s": statistics.median(f["step_s"] for f in firsts),
            "goal_s": GOAL_FIRST_TURN_S,
            "met": total < GOAL_FIRST_TURN_S,
        }
    return result
