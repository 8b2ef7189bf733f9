"""Infrastructure cost per 1M turns (model tokens excluded), from the measured counts.

Everything per turn comes from ``aws-roundtrips`` (steady state, turns 2..N of one
conversation, one message per run): DynamoDB write/read units computed from the measured
item sizes, S3 requests, the Lambda invocations and their in-process durations of the
workflow-shaped pass, the states the Step Functions definitions entered, the replies
published. Only the unit prices below and the stated deployment assumptions (Lambda memory,
SQS batch size) are not measured; they are printed with the result.
"""

from __future__ import annotations

import math
from typing import Any

PRICES_AS_OF = "us-east-1 list prices (public AWS pricing pages, 2025; free tiers ignored)"
PRICES: dict[str, tuple[float, str]] = {
    "dynamodb_wru": (0.625 / 1e6, "DynamoDB on-demand: $0.625 per 1M write request units"),
    "dynamodb_rru": (0.125 / 1e6, "DynamoDB on-demand: $0.125 per 1M read request units"),
    "s3_put": (0.005 / 1e3, "S3 Standard: $0.005 per 1,000 PUT/COPY/POST/LIST"),
    "s3_get": (0.0004 / 1e3, "S3 Standard: $0.0004 per 1,000 GET"),
    "lambda_request": (0.20 / 1e6, "Lambda: $0.20 per 1M requests"),
    "lambda_gb_s": (0.0000133334, "Lambda arm64: $0.0000133334 per GB-second (x86: 0.0000166667)"),
    "sfn_transition": (0.025 / 1e3, "Step Functions Standard: $0.025 per 1,000 state transitions"),
    "sfn_express_request": (1.00 / 1e6, "Step Functions Express: $1.00 per 1M requests"),
    "sfn_express_gb_s": (
        0.00001667,
        "Step Functions Express: $0.00001667 per GB-second (first tier), duration rounded up "
        "to 100 ms, memory billed in 64 MB steps",
    ),
    "sqs_fifo_request": (0.50 / 1e6, "SQS FIFO: $0.50 per 1M requests (64 KB chunks)"),
    "sns_publish": (0.50 / 1e6, "SNS standard topic: $0.50 per 1M publishes (64 KB chunks)"),
    "apigw_ws_message": (1.00 / 1e6, "API Gateway WebSocket: $1.00 per 1M messages (32 KB)"),
}
MEMORY_MB = {"ingest": 256, "turn": 1024, "deliver": 256}
"""Assumed Lambda memory sizes (arm64, as serverless.yml's provider)."""
EXPRESS_MEMORY_MB = 64
SQS_REQUESTS_PER_MESSAGE = 3.0
"""SendMessage by the producer + ReceiveMessage + DeleteMessage by the Lambda event source
mapping, batch size 1 (empty long-poll receives not counted)."""
TURNS = 1_000_000
VARIANTS = ("standard", "express", "direct")
VARIANT_LABELS = {
    "standard": "Step Functions Standard",
    "express": "Step Functions Express",
    "direct": "direct SQS->Lambda (no workflow)",
}
COMPONENTS = (
    "DynamoDB writes",
    "DynamoDB reads",
    "S3 requests",
    "Lambda requests",
    "Lambda duration",
    "Step Functions",
    "SQS FIFO",
    "SNS publishes",
)


def price(name: str) -> float:
    return PRICES[name][0]


def _function(label: str) -> str:
    return label.split(":", 1)[0]


def _lambda_use(rows: list[dict[str, Any]]) -> tuple[float, float, dict[str, float]]:
    """(invocations, GB-seconds, invocations by function) per turn, each invocation billed
    in whole milliseconds at its function's memory."""
    invocations = gb_s = 0.0
    by_function: dict[str, float] = {}
    for row in rows:
        fn = _function(row["label"])
        per_turn = float(row["per_turn"])
        invocations += per_turn
        by_function[fn] = by_function.get(fn, 0.0) + per_turn
        billed_s = math.ceil(float(row["ms_mean"])) / 1000.0
        gb_s += per_turn * billed_s * MEMORY_MB[fn] / 1024.0
    return invocations, gb_s, by_function


def compute(roundtrips: dict[str, Any], cold: dict[str, Any] | None = None) -> dict[str, Any]:
    ours = roundtrips["ours"]
    steady = ours["summary"]["total"]["steady"]
    ops = ours["summary"]["total"]["ops_per_turn"]
    wru, rru = float(steady["wru"]), float(steady["rru"])
    s3_puts = sum(v for k, v in ops.items() if k in ("s3.PutObject", "s3.UploadPart"))
    s3_gets = float(ops.get("s3.GetObject", 0.0))
    publishes = float(ours["payloads_per_turn"])
    shared = {
        "DynamoDB writes": wru * price("dynamodb_wru"),
        "DynamoDB reads": rru * price("dynamodb_rru"),
        "S3 requests": s3_puts * price("s3_put") + s3_gets * price("s3_get"),
        "SQS FIFO": SQS_REQUESTS_PER_MESSAGE * price("sqs_fifo_request"),
        "SNS publishes": publishes * price("sns_publish"),
    }
    workflow = roundtrips["workflow"]
    variants: dict[str, dict[str, Any]] = {}
    for name in ("standard", "express"):
        flow = workflow[name]
        invocations, gb_s, by_function = _lambda_use(flow["by_invocation"])
        steady_execs = [e for e in flow["executions"] if e["turn"] > 1] or flow["executions"]
        task_ms = sum(e["task_ms"] for e in steady_execs) / len(steady_execs)
        if name == "standard":
            sfn = float(flow["transitions_per_turn"]) * price("sfn_transition")
            sfn_note = f"{flow['transitions_per_turn']:g} state transitions per turn"
        else:
            billed_s = math.ceil(task_ms / 100.0) / 10.0
            execs = float(flow["executions_per_turn"])
            sfn = execs * (
                price("sfn_express_request")
                + billed_s * EXPRESS_MEMORY_MB / 1024.0 * price("sfn_express_gb_s")
            )
            sfn_note = (
                f"{execs:g} execution per turn, {task_ms:,.0f} ms of tasks billed as "
                f"{billed_s * 1000:,.0f} ms at {EXPRESS_MEMORY_MB} MB"
            )
        variants[name] = {
            "components": {
                **shared,
                "Lambda requests": invocations * price("lambda_request"),
                "Lambda duration": gb_s * price("lambda_gb_s"),
                "Step Functions": sfn,
            },
            "lambda_invocations_per_turn": invocations,
            "lambda_invocations_by_function": by_function,
            "lambda_gb_s_per_turn": gb_s,
            "step_functions_note": sfn_note,
            "states_path": flow["states_path"],
        }
    direct_ms = float(ours["accept_ms_mean"]) + float(ours["run_ms_mean"])
    direct_gb_s = math.ceil(direct_ms) / 1000.0 * MEMORY_MB["turn"] / 1024.0
    variants["direct"] = {
        "components": {
            **shared,
            "Lambda requests": price("lambda_request"),
            "Lambda duration": direct_gb_s * price("lambda_gb_s"),
            "Step Functions": 0.0,
        },
        "lambda_invocations_per_turn": 1.0,
        "lambda_invocations_by_function": {"turn": 1.0},
        "lambda_gb_s_per_turn": direct_gb_s,
        "step_functions_note": (
            f"none: one turn Lambda per SQS message runs accept + drive_run "
            f"({direct_ms:,.0f} ms measured)"
        ),
        "states_path": [],
    }
    for variant in variants.values():
        per_turn = variant["components"]
        variant["per_1m_turns"] = {k: per_turn[k] * TURNS for k in COMPONENTS}
        variant["total_per_1m_turns"] = sum(variant["per_1m_turns"].values())
    turn_gb = MEMORY_MB["turn"] / 1024.0
    sensitivity = {
        "model_second_lambda": turn_gb * price("lambda_gb_s") * TURNS,
        "model_second_express": EXPRESS_MEMORY_MB / 1024.0 * price("sfn_express_gb_s") * TURNS,
        "chunks_per_turn": float(ours["chunks_per_turn"]),
        "websocket_per_1m_turns": float(ours["chunks_per_turn"] + publishes)
        * price("apigw_ws_message")
        * TURNS,
        "cold_start_second_turn": turn_gb * price("lambda_gb_s") * TURNS,
    }
    if cold is not None and "first_turn" in cold:
        sensitivity["cold_first_turn_s"] = float(cold["first_turn"]["median_total_s"])
    baseline = roundtrips["baseline"]["summary"]
    windows = baseline["windows"]
    last_label = [k for k in windows if k.startswith("turn ") and k != "turn 1"][-1]
    saver = {
        "steady_wru": baseline["steady"]["wru"],
        "steady_rru": baseline["steady"]["rru"],
        "steady_per_1m_turns": (
            baseline["steady"]["wru"] * price("dynamodb_wru")
            + baseline["steady"]["rru"] * price("dynamodb_rru")
        )
        * TURNS,
        "last_label": last_label,
        "last_wru": windows[last_label]["wru"],
        "last_rru": windows[last_label]["rru"],
        "last_per_1m_turns": (
            windows[last_label]["wru"] * price("dynamodb_wru")
            + windows[last_label]["rru"] * price("dynamodb_rru")
        )
        * TURNS,
    }
    return {
        "prices_as_of": PRICES_AS_OF,
        "prices": {k: {"usd": v[0], "text": v[1]} for k, v in PRICES.items()},
        "assumptions": {
            "lambda_memory_mb": MEMORY_MB,
            "lambda_architecture": "arm64",
            "express_memory_mb": EXPRESS_MEMORY_MB,
            "sqs_requests_per_message": SQS_REQUESTS_PER_MESSAGE,
            "runs_per_turn": "1 (each message finds the conversation idle: one run per turn)",
        },
        "per_turn": {
            "wru": wru,
            "rru": rru,
            "s3_puts": s3_puts,
            "s3_gets": s3_gets,
            "sns_publishes": publishes,
            "round_trips": float(steady["round_trips"]),
        },
        "variants": {name: variants[name] for name in VARIANTS},
        "sensitivity": sensitivity,
        "baseline_dynamodb": saver,
    }
