"""Turning the measured results into tables (stdout) and environment facts (JSON)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import fmt, human_bytes, render_table

PACKAGES = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langchain-core",
    "mlflow",
    "pydantic",
    "boto3",
    "moto",
    "langgraph-checkpoint-aws",
)
OVERHEAD_GOAL_MS = 5.0


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
        "git_commit": _git_commit(),
        "mlflow_async_trace_logging": os.environ.get(
            "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "unset (MLflow default: true)"
        ),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    parts = [
        f"agentworker embedded benchmarks ({'quick' if results['quick'] else 'full'} run, "
        f"{results['started_at']}): Python {env['python']}, SQLite {env['sqlite']}, "
        f"{env['cpu_count']} CPUs, langgraph {env['packages'].get('langgraph')}",
    ]
    if "overhead" in results:
        parts.append(_overhead(results["overhead"]))
    if "throughput" in results:
        parts.append(_throughput(results["throughput"]))
    if "tracing" in results:
        from bench import tracing

        parts.append(tracing.render(results["tracing"]))
    if "storage" in results:
        parts.append(_storage(results["storage"]))
    if "byo_graph" in results:
        from bench import byo

        parts.append(byo.render(results["byo_graph"]))
    if "langgraph_dev" in results:
        from bench import langgraph_dev

        parts.append(langgraph_dev.render(results["langgraph_dev"]))
    if "webhooks" in results:
        from bench import webhooks

        parts.append(webhooks.table(results["webhooks"]))
    if any(k in results for k in ("aws_roundtrips", "cold_import", "bundle_size", "aws_cost")):
        from bench import aws_report

        if "aws_roundtrips" in results:
            parts.append(aws_report.render_roundtrips(results["aws_roundtrips"]))
        if "cold_import" in results:
            parts.append(aws_report.render_cold_import(results["cold_import"]))
        if "bundle_size" in results:
            parts.append(aws_report.render_bundle(results["bundle_size"]))
        if "aws_cost" in results:
            parts.append(aws_report.render_cost(results["aws_cost"]))
    return "\n\n".join(parts) + "\n"


def _overhead(section: dict[str, Any]) -> str:
    cfg = section["config"]
    header = [
        "variant",
        "overhead p50",
        "p90",
        "p99",
        "mean",
        "model p50",
        "wall p50",
        "store calls",
        "SQL stmts",
        "write tx",
        "flush",
    ]
    rows = []
    notes = []
    for v in section["variants"]:
        o, m, w, rt = v["overhead_ms"], v["model_ms"], v["wall_ms"], v["round_trips"]
        rows.append(
            [
                v["label"],
                f"{fmt(o['p50'])} ms",
                f"{fmt(o['p90'])} ms",
                f"{fmt(o['p99'])} ms",
                f"{fmt(o['mean'])} ms",
                f"{fmt(m['p50'], 3)} ms",
                f"{fmt(w['p50'])} ms",
                fmt(rt["store_calls_per_turn"], 1),
                fmt(rt["sql_statements_per_turn"], 1),
                fmt(rt["write_transactions_per_turn"], 1),
                "n/a" if v["flush_s"] is None else f"{v['flush_s'] * 1000:,.0f} ms",
            ]
        )
        verdict = "met" if o["p50"] <= OVERHEAD_GOAL_MS else "NOT met"
        line = (
            f"  {v['label']}: goal p50 <= {OVERHEAD_GOAL_MS:g} ms {verdict}; mean incl. the "
            f"final flush {fmt(v['overhead_incl_flush_mean_ms'])} ms/turn"
        )
        if v.get("traces_recorded") is not None:
            line += f"; traces recorded {v['traces_recorded']} of {v['turns_total']} turns run"
        notes.append(line)
    by_method = section["variants"][0]["round_trips"]["store_calls_by_method"]
    notes.append(
        "  store calls per turn by method: "
        + ", ".join(f"{k} {fmt(val, 1)}" for k, val in by_method.items())
    )
    table = render_table(
        f"1. Worker overhead per turn, model excluded: {cfg['turns']} turns after "
        f"{cfg['warmup']} warm-up, round-robin over {cfg['conversations']} conversations "
        "(accept_message + drive_run wall time minus time inside the model)",
        header,
        rows,
    )
    counted = section["variants"][0]["round_trips"]["turns"]
    return "\n".join(
        [
            table,
            *notes,
            "  store calls = ConversationStore method calls; SQL stmts = statements on the "
            "store's connection (incl. BEGIN/COMMIT); write tx = BEGIN IMMEDIATE transactions"
            f" (counted in a separate untimed pass of {counted} turns)",
        ]
    )


def _throughput(section: dict[str, Any]) -> str:
    cfg = section["config"]
    header = [
        "model L",
        "workers W",
        "turns",
        "elapsed",
        "turns/s",
        "ideal min(W,C)/L",
        "measured/ideal",
        "latency p50",
        "latency p99",
    ]
    rows = []
    for r in section["runs"]:
        ideal = r["ideal_turns_per_s"]
        rows.append(
            [
                f"{r['model_latency_ms']:g} ms",
                str(r["workers"]),
                fmt(int(r["turns"])),
                f"{fmt(r['elapsed_s'])} s",
                fmt(r["turns_per_s"], 1),
                "n/a (L=0)" if ideal is None else fmt(ideal, 1),
                "n/a" if r["efficiency"] is None else f"{r['efficiency'] * 100:.0f} %",
                f"{fmt(r['latency_ms']['p50'])} ms",
                f"{fmt(r['latency_ms']['p99'])} ms",
            ]
        )
    table = render_table(
        f"2. Throughput of EmbeddedRuntime: C={cfg['conversations']} conversations x "
        f"{cfg['messages']} messages, each user sends the next message after the reply",
        header,
        rows,
    )
    bad = [
        r
        for r in section["runs"]
        if r["notices"] or r["turns"] != r["conversations"] * r["messages_per_conversation"]
    ]
    notes = [
        "  turns/s = turns completed / (first accept -> pool idle); latency = accept -> reply "
        "frame on the conversation's hub subscription",
    ]
    if bad:
        notes.append(f"  WARNING: {len(bad)} configuration(s) had missing turns or notices")
    return "\n".join([table, *notes])


def _storage(section: dict[str, Any]) -> str:
    cfg = section["config"]
    ours, plain = section["sides"]
    pairs = list(zip(ours["points"], plain["points"], strict=True))

    def num(p: dict[str, Any], key: str) -> str:
        return human_bytes(p[key]) if p.get("measured_turns") else "n/a"

    bytes_rows = [
        [
            str(po["point"]),
            num(po, "wal_bytes_per_turn"),
            num(pp, "wal_bytes_per_turn"),
            num(po, "logical_growth_bytes_per_turn"),
            num(pp, "logical_growth_bytes_per_turn"),
            num(po, "used_growth_bytes_per_turn"),
            num(pp, "used_growth_bytes_per_turn"),
        ]
        for po, pp in pairs
    ]
    bytes_table = render_table(
        f"3. SQLite bytes per turn vs conversation length (one conversation each side; mean of "
        f"the {cfg['window']} turns ending at each point)",
        [
            "turn ~",
            "WAL written: ours",
            "plain",
            "logical growth: ours",
            "plain",
            "used-size growth: ours",
            "plain",
        ],
        bytes_rows,
    )

    def lat(p: dict[str, Any]) -> str:
        return f"{fmt(p['latency_ms_p50'])} ms" if p.get("measured_turns") else "n/a"

    def ratio(po: dict[str, Any], pp: dict[str, Any]) -> str:
        if not (po.get("measured_turns") and pp.get("measured_turns")):
            return "n/a"
        return f"{pp['latency_ms_p50'] / po['latency_ms_p50']:.1f}x"

    latency_table = render_table(
        "   turn latency (median of the max(window, turn/10) turns ending at each point; the "
        "whole turn, model included)",
        ["turn ~", "ours", "plain", "plain/ours"],
        [[str(po["point"]), lat(po), lat(pp), ratio(po, pp)] for po, pp in pairs],
    )
    totals = render_table(
        "   totals",
        ["side", "turns", "total time", "DB used", "DB+WAL files", "logical", "last checkpoint"],
        [
            [
                s["label"] + (" (stopped: time budget)" if s["stopped_early"] else ""),
                fmt(int(s["turns"])),
                f"{fmt(s['total_s'], 1)} s",
                human_bytes(s["final_used_bytes"]),
                human_bytes(s["final_file_bytes"]),
                human_bytes(s["final_logical_bytes"]),
                human_bytes(s["last_checkpoint_blob_bytes"]),
            ]
            for s in (ours, plain)
        ],
    )
    notes = [
        "  WAL written = WAL frames appended by the turn x page size (WAL truncated by a "
        "checkpoint before the turn): what the turn wrote, overwrites included",
        "  logical growth = growth of sum(length(column)) over every row of every table; "
        "used-size growth = growth of (page_count - freelist_count) x page_size",
        "  ours = accept_message + drive_run (lease, inbox, checkpoint, log, outbox, deliver);"
        " plain = StateGraph + SqliteSaver graph.invoke; same OfflineChatModel and texts, no "
        "tool calls, no streaming, no tracing, both WAL + synchronous=NORMAL",
    ]
    return "\n".join([bytes_table, *notes, "", latency_table, "", totals])
