"""Tables of the AWS sections (``aws-roundtrips``, ``cold-import``, ``bundle-size``,
``aws-cost``) for ``bench.report.render``."""

from __future__ import annotations

from typing import Any

from bench.common import fmt, human_bytes, render_table

MB = 1024 * 1024


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def _trend(slope: float | None, level: float, turns: int, unit: str) -> str:
    """The slope, called flat when over the whole run it moves the value by under 5 %."""
    if slope is None:
        return "n/a"
    flat = abs(slope) * max(turns - 2, 1) < 0.05 * abs(level) if level else slope == 0
    word = "flat" if flat else ("growing" if slope > 0 else "shrinking")
    return f"{slope:+,.1f} {unit}/turn ({word})"


def render_roundtrips(section: dict[str, Any]) -> str:
    cfg = section["config"]
    ours, saver = section["ours"], section["baseline"]
    ow, sw = ours["summary"]["total"]["windows"], saver["summary"]["windows"]
    rows = []
    for label in ow:
        o, s = ow[label], sw[label]
        rows.append(
            [
                label,
                fmt(o["round_trips"], 1),
                fmt(s["round_trips"], 1),
                human_bytes(o["request_bytes_written"]),
                human_bytes(s["request_bytes_written"]),
                human_bytes(o["item_bytes_written"]),
                human_bytes(s["item_bytes_written"]),
                fmt(o["wru"], 1),
                fmt(s["wru"], 1),
                fmt(o["rru"], 1),
                fmt(s["rru"], 1),
            ]
        )
    main = render_table(
        f"4. AWS store round trips and bytes per turn: ours vs DynamoDBSaver, {cfg['turns']} "
        "turns of one conversation each, one moto server (mean per turn over each window)",
        [
            "turns",
            "round trips: ours",
            "DynamoDBSaver",
            "request bytes written: ours",
            "DynamoDBSaver",
            "item bytes: ours",
            "DynamoDBSaver",
            "WRU: ours",
            "DynamoDBSaver",
            "RRU: ours",
            "DynamoDBSaver",
        ],
        rows,
    )
    goal = section["goal"]
    n = int(cfg["turns"])
    o_slope = ours["summary"]["total"]["slope_per_turn"]
    s_slope = saver["summary"]["slope_per_turn"]
    o_mean = ours["summary"]["total"]["steady"]
    s_mean = saver["summary"]["steady"]

    def trend(slopes: dict[str, Any], means: dict[str, Any], metric: str, unit: str) -> str:
        return _trend(slopes[metric], float(means[metric]), n, unit)

    notes = [
        f"  goal <= {goal['max_round_trips']:g} round trips per turn, >= "
        f"{goal['min_ratio']:g}x fewer than DynamoDBSaver: run side (first step .. release, "
        f"the turn and deliver Lambdas) {fmt(goal['ours_run_side'], 1)} vs "
        f"{fmt(goal['baseline'], 1)} (DynamoDBSaver/ours {_ratio(goal['ratio_run_side'])}) "
        f"{_verdict(goal['met_run_side'])}; including ingest's accept "
        f"{fmt(goal['ours_all'], 1)} (DynamoDBSaver/ours {_ratio(goal['ratio_all'])}) "
        f"{_verdict(goal['met_all'])}",
        f"  growth, least-squares slope over turns 2-{n}: request bytes ours "
        f"{trend(o_slope, o_mean, 'request_bytes_written', 'B')}, DynamoDBSaver "
        f"{trend(s_slope, s_mean, 'request_bytes_written', 'B')}; WRU ours "
        f"{trend(o_slope, o_mean, 'wru', 'WRU')}, DynamoDBSaver "
        f"{trend(s_slope, s_mean, 'wru', 'WRU')}",
        f"  ours per turn (steady): accept {fmt(ours['accept_ms_mean'])} ms + run "
        f"{fmt(ours['run_ms_mean'])} ms wall on moto (model {fmt(ours['model_ms_mean'], 3)} ms);"
        f" DynamoDBSaver graph.invoke {fmt(saver['run_ms_mean'])} ms; "
        f"{fmt(ours['chunks_per_turn'], 1)} streamed chunks and "
        f"{fmt(ours['payloads_per_turn'], 1)} outbox payload(s) per turn went to the sink",
    ]
    mismatch = ours["api_calls_mismatch_turns"]
    notes.append(
        "  cross-check: store.api_calls equals the round trips counted on the wire on every turn"
        if not mismatch
        else f"  WARNING: store.api_calls differs from the wire count on turns {mismatch}"
    )
    notes += [
        "  round trips = HTTP requests sent by the side's boto3 clients (botocore before-send);"
        " request bytes = Content-Length of PutItem/UpdateItem/DeleteItem/TransactWriteItems/"
        "BatchWriteItem/PutObject requests (DynamoDB JSON on the wire: names, base64); item "
        "bytes = DynamoDB size of the item images written",
        "  WRU = 1 per started KB of max(old, new) item image, x2 inside TransactWriteItems, "
        "+ index writes (entry = projected attributes + 100 B; 1 per add/remove/change, 2 when "
        "an index key changes); RRU = per started 4 KB (a Query sums its items), x0.5 "
        "eventually consistent; computed from the item images, moto reports no real capacity",
    ]
    return "\n".join(
        [
            main,
            *notes,
            "",
            _ops_table(ours, saver),
            "",
            _kinds_table(ours, saver),
            "",
            _invocations_table(section["workflow"]),
        ]
    )


def _ops_table(ours: dict[str, Any], saver: dict[str, Any]) -> str:
    accept = ours["summary"]["accept"]
    run = ours["summary"]["run"]
    total = ours["summary"]["total"]
    base = saver["summary"]
    ops = sorted(set(total["ops_per_turn"]) | set(base["ops_per_turn"]))
    rows = []
    for op in ops:
        rows.append(
            [
                op,
                fmt(accept["ops_per_turn"].get(op, 0.0), 2),
                fmt(run["ops_per_turn"].get(op, 0.0), 2),
                fmt(total["ops_per_turn"].get(op, 0.0), 2),
                fmt(total["wru_by_op"].get(op, 0.0), 1),
                fmt(base["ops_per_turn"].get(op, 0.0), 2),
                fmt(base["wru_by_op"].get(op, 0.0), 1),
            ]
        )
    rows.append(
        [
            "total",
            fmt(accept["steady"]["round_trips"], 2),
            fmt(run["steady"]["round_trips"], 2),
            fmt(total["steady"]["round_trips"], 2),
            fmt(total["steady"]["wru"], 1),
            fmt(base["steady"]["round_trips"], 2),
            fmt(base["steady"]["wru"], 1),
        ]
    )
    methods = ", ".join(f"{k} {fmt(v, 1)}" for k, v in ours["store_methods_per_turn"].items())
    table = render_table(
        "   calls per turn by operation (steady state, turns 2..N)",
        [
            "operation",
            "ours: accept",
            "ours: run",
            "ours: total",
            "ours: WRU",
            "DynamoDBSaver",
            "DynamoDBSaver: WRU",
        ],
        rows,
    )
    return f"{table}\n  ours, store methods per turn: {methods}"


def _kinds_table(ours: dict[str, Any], saver: dict[str, Any]) -> str:
    total = ours["summary"]["total"]
    base = saver["summary"]
    rows = [
        [
            f"ours {kind}",
            fmt(total["writes_by_kind"].get(kind, 0.0), 1),
            fmt(total["wru_by_kind"][kind], 1),
            human_bytes(total["item_bytes_by_kind"].get(kind, 0.0)),
        ]
        for kind in total["wru_by_kind"]
    ]
    rows += [
        [
            f"DynamoDBSaver {kind}",
            fmt(base["writes_by_kind"].get(kind, 0.0), 1),
            fmt(base["wru_by_kind"][kind], 1),
            human_bytes(base["item_bytes_by_kind"].get(kind, 0.0)),
        ]
        for kind in base["wru_by_kind"]
    ]
    table = render_table(
        "   item writes, write units and item bytes per turn by item kind (pk/sk prefix; "
        "steady state)",
        ["item kind", "writes", "WRU (table + index)", "item bytes"],
        rows,
    )
    o, b = total["steady"], base["steady"]
    return (
        f"{table}\n  WRU split table + index: ours {fmt(o['wru_table'], 1)} + "
        f"{fmt(o['wru_index'], 1)} (pending-items LSI, sweep-pending GSI); DynamoDBSaver "
        f"{fmt(b['wru_table'], 1)} + {fmt(b['wru_index'], 1)}"
    )


def _invocations_table(workflow: dict[str, Any]) -> str:
    express = workflow["express"]
    rows = []
    for row in express["by_invocation"]:
        rows.append(
            [
                row["label"],
                fmt(row["per_turn"], 1),
                fmt(row["round_trips"], 1),
                fmt(row["wru"], 1),
                fmt(row["rru"], 1),
                f"{fmt(row['ms_mean'])} ms ({fmt(row['ms_p50'])})",
                ", ".join(f"{k} {fmt(v, 0)}" for k, v in row["store_methods"].items()),
            ]
        )
    table = render_table(
        f"   where ours' round trips go: per Lambda invocation of the Express workflow "
        f"({express['turns']} turns through statemachine/conversation.asl.json, steady state)",
        [
            "invocation",
            "per turn",
            "round trips",
            "WRU",
            "RRU",
            "in-process mean (p50)",
            "store methods",
        ],
        rows,
    )
    standard = workflow["standard"]
    return "\n".join(
        [
            table,
            f"  Express path: {' -> '.join(express['states_path'])} "
            f"({fmt(express['transitions_per_turn'], 1)} states)",
            f"  Standard path: {' -> '.join(standard['states_path'])} "
            f"({fmt(standard['transitions_per_turn'], 1)} state transitions per turn)",
            "  ingest writes without reading when its process accepted the conversation's"
            " previous message (it predicts meta: that run done, the lease released), as here;"
            " a cold process, or a message arriving while a run holds the lease, reads first:"
            " one more round trip",
        ]
    )


def render_cold_import(section: dict[str, Any]) -> str:
    rows = []
    for row in section["modules"]:
        if "clean" in row:
            framework = "none" if row["clean"] else "IMPORTED " + ",".join(row["heavy_imported"])
        else:
            framework = ",".join(row["heavy_imported"]) or "none"
        rows.append(
            [
                row["module"],
                f"{row['median_s']:.3f} s",
                f"{row['min_s']:.3f} s",
                f"{row['max_s']:.3f} s",
                f"{row['over_boto3_s']:+.3f} s",
                "baseline" if "met" not in row else _verdict(row["met"]),
                framework,
                "yes" if "boto3" in row["present_after_import"] else "no",
            ]
        )
    table = render_table(
        f"5. Cold import of each handler in a fresh process (median of "
        f"{section['config']['samples']}; interpreter start-up excluded; goal < 1.0 s)",
        [
            "module",
            "median",
            "min",
            "max",
            "vs boto3",
            "goal",
            "langgraph/langchain/mlflow",
            "boto3 loaded",
        ],
        rows,
    )
    light = [r for r in section["modules"] if "met_light_budget" in r]
    slow = [r["module"] for r in light if not r["met_light_budget"]]
    notes = [
        "  ingest/deliver/approve/sweeper/slack must not import langgraph, langchain_core, "
        "langchain_aws, langsmith or mlflow (mlflow-tracing provides the mlflow package); "
        f"ARCHITECTURE's budget for them, < {light[0]['light_budget_s'] if light else 0.5:g} s "
        f"each: {_verdict(not slow)}" + (f" ({', '.join(slow)})" if slow else ""),
        "  the handlers import boto3 lazily (bootstrap.build_aws on the first event), so a "
        "handler's first event also pays boto3's import and client creation",
    ]
    first = section.get("first_turn")
    if first is not None:
        notes.append(
            f"  turn, import + first turn in a fresh process (median of {len(first['samples'])},"
            f" real handler, offline model, moto server): {first['median_total_s']:.2f} s = "
            f"import {first['median_import_s']:.2f} s + first step {first['median_step_s']:.2f} s"
            " (builds the agent, LangGraph imported here, binds the run, takes the turn);"
            f" goal < {first['goal_s']:g} s {_verdict(first['met'])}; loaded: "
            + ", ".join(first["samples"][-1]["present"])
        )
    return "\n".join([table, *notes])


def render_bundle(section: dict[str, Any]) -> str:
    rows = [
        [
            d["name"],
            d["version"],
            f"{d['bytes'] / MB:,.1f} MB",
            f"{d['pyc_bytes'] / MB:,.1f} MB",
            fmt(d["files"]),
            ", ".join(d["required_by"]),
        ]
        for d in section["top"]
    ]
    table = render_table(
        f"6. Unzipped size of the turn function's dependencies: closure of "
        f"[project] dependencies ({section['distributions']} distributions, "
        f"{section['platform']}, Python {section['python']}), top 10",
        ["distribution", "version", "installed", "of it .pyc", "files", "required by"],
        rows,
    )
    total = section["total_bytes"] / MB
    without = section["total_without_runtime_provided_bytes"] / MB
    pyc = section["pyc_bytes"] / MB
    own = section["own_sources"]["bytes"] / MB
    return "\n".join(
        [
            table,
            f"  total {total:,.1f} MB (incl. our workers/ + events/ {own:,.1f} MB and "
            f"{pyc:,.1f} MB of .pyc); without {'/'.join(section['runtime_provided'])} "
            f"(provided by the Lambda Python runtime) {without:,.1f} MB; without .pyc "
            f"(pip --no-compile) {total - pyc:,.1f} MB",
            f"  goal < {section['goal_mb']:g} MB: {_verdict(section['met_goal'])} "
            f"({_verdict(section['met_goal_without_runtime_provided'])} without the runtime's "
            f"SDK); hard limit {section['limit_mb']:g} MB: "
            f"{'within' if section['within_limit'] else 'EXCEEDED'}",
            f"  mlflow-tracing present: {'yes' if section['has_mlflow_tracing'] else 'NO'}; "
            f"full mlflow present: {'YES' if section['has_full_mlflow'] else 'no'}",
            "",
            _render_trimmed(section),
        ]
    )


def _render_trimmed(section: dict[str, Any]) -> str:
    trim = section["trimmed"]
    rows = [
        [d["name"], d["version"], f"{d['bytes'] / MB:,.1f} MB", d["reason"]]
        for d in trim["excluded"]
    ]
    table = render_table(
        f"6b. Trimmed {trim['function']} bundle: the closure without what "
        f"workers/packaging.py excludes ({len(rows)} distributions)",
        ["excluded", "version", "installed", "why the function never needs it"],
        rows,
    )
    total = trim["total_bytes"] / MB
    without = trim["total_without_runtime_provided_bytes"] / MB
    notes = [
        table,
        f"  trimmed {total:,.1f} MB (untrimmed {section['total_bytes'] / MB:,.1f} MB, "
        f"-{trim['excluded_bytes'] / MB:,.1f} MB, {trim['distributions']} distributions); "
        f"without {'/'.join(section['runtime_provided'])} {without:,.1f} MB (untrimmed "
        f"{section['total_without_runtime_provided_bytes'] / MB:,.1f} MB)",
        f"  goal < {section['goal_mb']:g} MB: {_verdict(trim['met_goal'])} "
        f"({_verdict(trim['met_goal_without_runtime_provided'])} without the runtime's "
        f"SDK); hard limit {section['limit_mb']:g} MB: "
        f"{'within' if trim['within_limit'] else 'EXCEEDED'}",
    ]
    if trim["not_in_closure"]:
        notes.append(f"  excluded but not in the closure: {', '.join(trim['not_in_closure'])}")
    if trim["only_required_by_excluded"]:
        notes.append(
            "  kept but only excluded distributions require them: "
            + ", ".join(trim["only_required_by_excluded"])
        )
    return "\n".join(notes)


def render_cost(section: dict[str, Any]) -> str:
    from bench.aws_cost import COMPONENTS, VARIANT_LABELS

    variants = section["variants"]
    names = list(variants)
    rows = [
        [component, *(f"${variants[n]['per_1m_turns'][component]:,.2f}" for n in names)]
        for component in COMPONENTS
    ]
    rows.append(["total", *(f"${variants[n]['total_per_1m_turns']:,.2f}" for n in names)])
    table = render_table(
        "7. Infrastructure cost per 1M turns, model tokens excluded, from the measured counts "
        "(steady state of section 4; one run per turn)",
        ["component", *(VARIANT_LABELS[n] for n in names)],
        rows,
    )
    per = section["per_turn"]
    notes = [
        f"  measured per turn: {fmt(per['round_trips'], 1)} DynamoDB/S3 round trips, "
        f"{fmt(per['wru'], 1)} WRU, {fmt(per['rru'], 1)} RRU, {fmt(per['s3_puts'], 2)} S3 PUT, "
        f"{fmt(per['s3_gets'], 2)} S3 GET, {fmt(per['sns_publishes'], 1)} SNS publish",
    ]
    for n in names:
        v = variants[n]
        by_fn = ", ".join(
            f"{k} {fmt(c, 1)}" for k, c in v["lambda_invocations_by_function"].items()
        )
        notes.append(
            f"  {VARIANT_LABELS[n]}: {fmt(v['lambda_invocations_per_turn'], 1)} Lambda "
            f"invocations ({by_fn}), {v['lambda_gb_s_per_turn']:.4f} GB-s per turn; "
            f"{v['step_functions_note']}"
        )
    a = section["assumptions"]
    memory = ", ".join(f"{k} {v} MB" for k, v in a["lambda_memory_mb"].items())
    notes.append(
        f"  assumptions: Lambda {a['lambda_architecture']} with {memory}, billed per ms of "
        f"the in-process durations measured on moto (Lambda runtime overhead, cold starts, "
        f"logs and data transfer excluded); SQS {a['sqs_requests_per_message']:g} requests per "
        f"message (send, receive, delete; batch size 1); runs per turn: {a['runs_per_turn']}"
    )
    notes.append(f"  prices ({section['prices_as_of']}):")
    notes += [f"    {p['text']}" for p in section["prices"].values()]
    sens = section["sensitivity"]
    notes.append(
        f"  sensitivity: each second of model latency per turn adds "
        f"${sens['model_second_lambda']:,.2f} per 1M turns of turn-Lambda duration (all "
        f"variants) + ${sens['model_second_express']:,.2f} Express duration; streaming "
        f"{fmt(sens['chunks_per_turn'], 1)} chunks per turn to one WebSocket connection would "
        f"add ${sens['websocket_per_1m_turns']:,.2f} of API Gateway messages (and one "
        "list_connections Query per turn in WebSocketReplySink); each second of a cold "
        f"start of turn costs ${sens['cold_start_second_turn']:,.2f} per 1M cold starts"
        + (
            f" (measured cold import + first turn: {sens['cold_first_turn_s']:.2f} s)"
            if "cold_first_turn_s" in sens
            else ""
        )
    )
    saver = section["baseline_dynamodb"]
    notes.append(
        f"  for comparison, DynamoDB with DynamoDBSaver on the same turns: "
        f"{fmt(saver['steady_wru'], 1)} WRU + {fmt(saver['steady_rru'], 1)} RRU per turn = "
        f"${saver['steady_per_1m_turns']:,.2f} per 1M turns (steady mean); at "
        f"{saver['last_label']} {fmt(saver['last_wru'], 1)} WRU = "
        f"${saver['last_per_1m_turns']:,.2f}, growing with the conversation's length"
    )
    return "\n".join([table, *notes])
