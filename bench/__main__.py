"""``python -m bench [--quick] [options]``: run the benchmarks, print tables, write JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    aws_cost,
    aws_roundtrips,
    bundle_size,
    byo,
    cold_import,
    langgraph_dev,
    overhead,
    storage,
    throughput,
    tracing,
)
from bench.aws_meter import moto_server
from bench.common import progress
from bench.report import environment, render
from workers.observability import offline_mlflow_env

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = (
    "overhead",
    "throughput",
    "tracing",
    "storage",
    "byo-graph",
    "langgraph-dev",
    "webhooks",
    "aws-roundtrips",
    "cold-import",
    "bundle-size",
    "aws-cost",
)
AWS_SERVER_SECTIONS = frozenset({"aws-roundtrips", "cold-import", "aws-cost"})
"""Sections that need the (one, shared) moto server."""

FULL: dict[str, Any] = {
    "overhead_turns": 300,
    "overhead_warmup": 30,
    "overhead_conversations": 10,
    "tp_conversations": 50,
    "tp_messages": 10,
    "tp_latencies_ms": "0,50",
    "tp_workers": "1,10,50",
    "tr_conversations": 50,
    "tr_messages": 10,
    "storage_points": "10,100,1000",
    "storage_window": 10,
    "baseline_budget_s": 180.0,
    "byo_points": "1,10,100,1000",
    "byo_window": 5,
    "lg_wait_runs": 50,
    "lg_stream_runs": 20,
    "lg_threads": 50,
    "lg_runs_per_thread": 10,
    "lg_workers": 4,
    "aws_turns": 50,
    "aws_workflow_turns": 10,
    "aws_standard_turns": 3,
    "cold_samples": 10,
    "cold_first_turn_samples": 5,
}
QUICK: dict[str, Any] = {
    "overhead_turns": 100,
    "overhead_warmup": 20,
    "overhead_conversations": 10,
    "tp_conversations": 20,
    "tp_messages": 5,
    "tp_latencies_ms": "0,50",
    "tp_workers": "1,20",
    "tr_conversations": 20,
    "tr_messages": 5,
    "storage_points": "10,100,300",
    "storage_window": 5,
    "baseline_budget_s": 60.0,
    "byo_points": "1,50,200",
    "byo_window": 5,
    "lg_wait_runs": 10,
    "lg_stream_runs": 5,
    "lg_threads": 10,
    "lg_runs_per_thread": 3,
    "lg_workers": 4,
    "aws_turns": 10,
    "aws_workflow_turns": 4,
    "aws_standard_turns": 2,
    "cold_samples": 3,
    "cold_first_turn_samples": 2,
}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the embedded runtime (offline, temp dirs, loopback only).",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--overhead-turns", type=int, help="measured turns per variant")
    parser.add_argument("--overhead-warmup", type=int, help="warm-up turns per variant")
    parser.add_argument("--overhead-conversations", type=int, help="turns round-robin over N")
    parser.add_argument("--tp-conversations", type=int, help="simulated users")
    parser.add_argument("--tp-messages", type=int, help="messages per user")
    parser.add_argument("--tp-latencies-ms", help="model latencies, comma list (ms)")
    parser.add_argument("--tp-workers", help="worker pool sizes, comma list")
    parser.add_argument("--tr-conversations", type=int, help="tracing: sockets")
    parser.add_argument("--tr-messages", type=int, help="tracing: messages per socket")
    parser.add_argument("--storage-points", help="conversation lengths to sample, comma list")
    parser.add_argument("--storage-window", type=int, help="turns averaged at each point")
    parser.add_argument("--baseline-budget-s", type=float, help="time cap of the baseline")
    parser.add_argument("--byo-points", help="byo-graph: conversation lengths, comma list")
    parser.add_argument("--byo-window", type=int, help="byo-graph: turns averaged per point")
    parser.add_argument("--lg-wait-runs", type=int, help="langgraph-dev: runs.wait samples")
    parser.add_argument("--lg-stream-runs", type=int, help="langgraph-dev: runs.stream samples")
    parser.add_argument("--lg-threads", type=int, help="langgraph-dev: threads at once")
    parser.add_argument("--lg-runs-per-thread", type=int, help="langgraph-dev: runs per thread")
    parser.add_argument(
        "--lg-workers", type=int, help="langgraph-dev: runs at once on every server"
    )
    parser.add_argument("--aws-turns", type=int, help="turns per side of aws-roundtrips")
    parser.add_argument(
        "--aws-workflow-turns", type=int, help="turns driven through the Express ASL"
    )
    parser.add_argument(
        "--aws-standard-turns", type=int, help="turns driven through the Standard ASL"
    )
    parser.add_argument("--cold-samples", type=int, help="fresh processes per handler import")
    parser.add_argument(
        "--cold-first-turn-samples", type=int, help="fresh processes for turn's first turn"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the overhead loops")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic", "workers", "httpx", "werkzeug"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before anything imports mlflow: no price list download, no telemetry.
    offline_mlflow_env()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    _quiet_logs()
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "embedded",
        "started_at": started.isoformat(),
        "quick": args.quick,
        "parameters": {k: getattr(args, k) for k in FULL},
        "environment": environment(),
    }
    with tempfile.TemporaryDirectory(prefix="agentworker-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "overhead" in sections:
            results["overhead"] = overhead.run(
                tmp,
                overhead.OverheadConfig(
                    turns=args.overhead_turns,
                    warmup=args.overhead_warmup,
                    conversations=args.overhead_conversations,
                    profile=args.profile,
                ),
            )
        if "throughput" in sections:
            results["throughput"] = throughput.run(
                tmp,
                throughput.ThroughputConfig(
                    conversations=args.tp_conversations,
                    messages=args.tp_messages,
                    latencies_ms=_floats(args.tp_latencies_ms),
                    workers=_ints(args.tp_workers),
                ),
            )
        if "tracing" in sections:
            results["tracing"] = tracing.run(
                tmp,
                tracing.TracingConfig(
                    conversations=args.tr_conversations, messages=args.tr_messages
                ),
            )
        if "storage" in sections:
            results["storage"] = storage.run(
                tmp,
                storage.StorageConfig(
                    points=_ints(args.storage_points),
                    window=args.storage_window,
                    baseline_budget_s=args.baseline_budget_s,
                ),
            )
        if "byo-graph" in sections:
            results["byo_graph"] = byo.run(
                tmp,
                storage.StorageConfig(
                    points=_ints(args.byo_points),
                    window=args.byo_window,
                    baseline_budget_s=args.baseline_budget_s,
                ),
            )
        if "webhooks" in sections:
            from bench import webhooks

            results["webhooks"] = webhooks.run(
                tmp, webhooks.WebhooksConfig(turns=50 if args.quick else 200)
            )
        if "langgraph-dev" in sections:
            results["langgraph_dev"] = langgraph_dev.run(
                tmp,
                langgraph_dev.LangGraphDevConfig(
                    wait_runs=args.lg_wait_runs,
                    stream_runs=args.lg_stream_runs,
                    threads=args.lg_threads,
                    runs_per_thread=args.lg_runs_per_thread,
                    workers=args.lg_workers,
                ),
            )
        with contextlib.ExitStack() as stack:
            url = (
                stack.enter_context(moto_server()) if AWS_SERVER_SECTIONS & set(sections) else None
            )
            if url is not None and ("aws-roundtrips" in sections or "aws-cost" in sections):
                results["aws_roundtrips"] = aws_roundtrips.run(
                    url,
                    tmp,
                    aws_roundtrips.RoundTripConfig(
                        turns=args.aws_turns,
                        workflow_turns=args.aws_workflow_turns,
                        standard_turns=args.aws_standard_turns,
                    ),
                )
            if "cold-import" in sections:
                results["cold_import"] = cold_import.run(
                    url,
                    cold_import.ColdImportConfig(
                        samples=args.cold_samples,
                        first_turn_samples=args.cold_first_turn_samples,
                    ),
                )
        if "bundle-size" in sections:
            results["bundle_size"] = bundle_size.run()
        if "aws-cost" in sections:
            results["aws_cost"] = aws_cost.compute(
                results["aws_roundtrips"], results.get("cold_import")
            )
    results["duration_s"] = time.perf_counter() - t0
    for variant in results.get("overhead", {}).get("variants", []):
        if "profile" in variant:
            print(f"cProfile, overhead {variant['label']}:\n{variant['profile']}", file=sys.stderr)
    print(render(results))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"embedded-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    progress(f"results written to {path} (run took {results['duration_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
