"""AWS store round trips and bytes written per turn: ours vs ``DynamoDBSaver``, one moto server.

Both sides run the same plain-text turns ("message 17 about my order": no tool calls) of one
conversation on the same ``OfflineChatModel``, against the same ``ThreadedMotoServer``, each
with its own boto3 session metered by :class:`bench.aws_meter.AwsMeter`:

* ours: the core (``accept_message`` + ``drive_run``, as ``bench/overhead.py`` drives it)
  with the real ``DynamoDBConversationStore`` (DynamoDB + S3 offload) and the real agent;
  streaming and settings as configured by default, tracing off, a recording sink;
* baseline: a plain ``StateGraph`` (``messages: Annotated[list, add_messages]``, one model
  node) compiled with ``langgraph-checkpoint-aws``'s ``DynamoDBSaver`` (S3 offload
  configured), invoked with the same ``thread_id`` and the new ``HumanMessage`` each turn.

A second conversation of ours is driven through the real ASL definitions
(``statemachine/*.asl.json``, interpreted here: Task, Choice, Succeed), calling the ``turn``
handler's ``execute`` and the core's ``deliver`` for each Task, the way Step Functions calls
the Lambdas: this attributes the round trips to the Lambda invocations, times each
invocation in-process, and counts the state transitions (used by ``aws-cost``).
"""

from __future__ import annotations

import functools
import importlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage

from bench.aws_meter import AwsMeter, Usage, new_session
from bench.common import (
    CallCounter,
    DiscardSink,
    RecordingStarter,
    TimedOfflineChatModel,
    mean,
    plain_chat_graph,
    progress,
    text_of_turn,
)
from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from events.workflow import RunRef
from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore
from workers.adapters.aws.dynamodb_tickets import DynamoDBTicketStore
from workers.adapters.aws.tables import DynamoDBTableSpec
from workers.adapters.clock import SystemClock
from workers.bootstrap import build_agent, turn_settings
from workers.config import load_settings
from workers.core.ports import NullTracer
from workers.core.steps import Deps, accept_message, deliver, drive_run
from workers.sandbox.emulator import load_definition

OURS_TABLE = "bench-ours"
OURS_BUCKET = "bench-ours-blobs"
SAVER_TABLE = "bench-dynamodbsaver"
SAVER_BUCKET = "bench-dynamodbsaver-offload"
METRICS = (
    "round_trips",
    "dynamodb_calls",
    "s3_calls",
    "request_bytes_written",
    "item_bytes_written",
    "wru",
    "wru_table",
    "wru_index",
    "rru",
)
GOAL_ROUND_TRIPS = 5.0
GOAL_RATIO = 3.0


@dataclass(frozen=True)
class RoundTripConfig:
    turns: int = 50
    workflow_turns: int = 10
    """Turns of the second conversation, driven through the Express ASL."""
    standard_turns: int = 3
    """Turns driven through the Standard ASL (for its transition count)."""


# ours --------------------------------------------------------------------------------------


@dataclass
class Ours:
    deps: Deps
    store: DynamoDBConversationStore
    meter: AwsMeter
    model: TimedOfflineChatModel
    starter: RecordingStarter
    sink: DiscardSink
    methods: CallCounter


def build_ours(url: str, tmp: Path, shadow: Any, shadow_s3: Any) -> Ours:
    DynamoDBTableSpec(OURS_TABLE).create(shadow)
    shadow_s3.create_bucket(Bucket=OURS_BUCKET)
    session = new_session()
    meter = AwsMeter(shadow)
    meter.attach(session)
    store = DynamoDBConversationStore(
        dynamodb=session.client("dynamodb", endpoint_url=url),
        table_name=OURS_TABLE,
        s3=session.client("s3", endpoint_url=url),
        bucket=OURS_BUCKET,
    )
    settings = load_settings(state_dir=tmp, tracing=False)
    clock = SystemClock()
    model = TimedOfflineChatModel()
    tickets = DynamoDBTicketStore(
        dynamodb=session.client("dynamodb", endpoint_url=url), table_name=OURS_TABLE
    )
    agent = build_agent(settings, tickets, clock, model=model)
    starter = RecordingStarter()
    sink = DiscardSink()
    deps = Deps(store, agent, sink, starter, clock, NullTracer(), settings=turn_settings(settings))
    methods = CallCounter(store)
    methods.install()
    return Ours(deps, store, meter, model, starter, sink, methods)


def _drive_ours(ours: Ours, turns: int) -> list[dict[str, Any]]:
    cid = "bench-aws-drive-run"
    per_turn: list[dict[str, Any]] = []
    step = max(1, turns // 4)
    for turn in range(1, turns + 1):
        u0 = ours.meter.snapshot()
        m0 = Counter(ours.methods.counts)
        api0 = ours.store.api_calls.total
        model0, chunks0, sent0 = ours.model.elapsed, ours.sink.chunks, ours.sink.sent
        t0 = time.perf_counter()
        accept_message(
            ours.deps, InboundMessage(conversation_id=cid, text=text_of_turn(turn)), LOCAL_USER
        )
        t1 = time.perf_counter()
        u1 = ours.meter.snapshot()
        summary = drive_run(ours.deps, ours.starter.take())
        t2 = time.perf_counter()
        u2 = ours.meter.snapshot()
        if summary.outcomes != ["replied"] or summary.ended != "idle":
            raise RuntimeError(f"unexpected run summary: {summary}")
        methods = Counter(ours.methods.counts)
        methods.subtract(m0)
        per_turn.append(
            {
                "turn": turn,
                "accept": u1.minus(u0).to_dict(),
                "run": u2.minus(u1).to_dict(),
                "total": u2.minus(u0).to_dict(),
                "store_methods": dict(sorted((+methods).items())),
                "store_api_calls": ours.store.api_calls.total - api0,
                "accept_ms": (t1 - t0) * 1000.0,
                "run_ms": (t2 - t1) * 1000.0,
                "model_ms": (ours.model.elapsed - model0) * 1000.0,
                "chunks": ours.sink.chunks - chunks0,
                "payloads": ours.sink.sent - sent0,
            }
        )
        if turn % step == 0 and turn < turns:
            progress(f"aws-roundtrips (ours): {turn}/{turns} turns")
    return per_turn


# the workflow, interpreted ------------------------------------------------------------------


def _path(path: str, data: Any, context: dict[str, Any]) -> Any:
    if path == "$":
        return data
    root, rest = (context, path[3:]) if path.startswith("$$.") else (data, path[2:])
    for part in rest.split("."):
        root = root[part]
    return root


def _template(template: Any, data: Any, context: dict[str, Any]) -> Any:
    if not isinstance(template, dict):
        return template
    out: dict[str, Any] = {}
    for name, value in template.items():
        if name.endswith(".$"):
            out[name[:-2]] = _path(value, data, context)
        else:
            out[name] = _template(value, data, context)
    return out


Invoke = Callable[[str, dict[str, Any]], dict[str, Any]]


def walk_asl(
    definition: dict[str, Any], data: Any, context: dict[str, Any], invoke: Invoke
) -> list[str]:
    """Run ``definition`` (the subset our ASL uses: Lambda Tasks, string Choices, Succeed)
    on ``data``; returns the states entered, in order (Standard bills each as a transition).
    Retry/Catch are not interpreted: a raised error propagates."""
    states: dict[str, Any] = definition["States"]
    name: str = definition["StartAt"]
    entered: list[str] = []
    while True:
        if len(entered) > 200:
            raise RuntimeError("workflow did not end within 200 states")
        entered.append(name)
        state = states[name]
        kind = state["Type"]
        if kind == "Succeed":
            return entered
        if kind == "Choice":
            name = state.get("Default", "")
            for rule in state["Choices"]:
                if "StringEquals" not in rule:
                    raise NotImplementedError(f"choice rule {rule}")
                if _path(rule["Variable"], data, context) == rule["StringEquals"]:
                    name = rule["Next"]
                    break
            if not name:
                raise RuntimeError(f"no choice matched in {entered[-1]}")
            continue
        if kind != "Task" or not str(state["Resource"]).endswith(":lambda:invoke"):
            raise NotImplementedError(f"state {name}: {kind} {state.get('Resource')}")
        params = _template(state["Parameters"], data, context)
        result = {"Payload": invoke(params["FunctionName"], params["Payload"])}
        if "ResultSelector" in state:
            result = _template(state["ResultSelector"], result, context)
        if "ResultPath" not in state or state["ResultPath"] == "$":
            data = result
        elif state["ResultPath"] is not None:
            raise NotImplementedError(f"ResultPath {state['ResultPath']}")
        if state.get("End"):
            return entered
        name = state["Next"]


def _drive_workflow(ours: Ours, variant: str, turns: int) -> dict[str, Any]:
    from workers.handlers.deliver import DeliverTask
    from workers.handlers.turn import TurnTask, execute

    definition = json.loads(load_definition(variant, {"turn": "turn", "deliver": "deliver"}))
    cid = f"bench-aws-workflow-{variant}"
    invocations: list[dict[str, Any]] = []
    transitions: list[int] = []
    executions: list[dict[str, Any]] = []

    def measured(label: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        u0, m0 = ours.meter.snapshot(), Counter(ours.methods.counts)
        model0 = ours.model.elapsed
        t0 = time.perf_counter()
        out = call()
        elapsed = time.perf_counter() - t0
        methods = Counter(ours.methods.counts)
        methods.subtract(m0)
        if label == "turn:step":
            label = f"turn:step ({out.get('outcome')})"
        invocations.append(
            {
                "turn": len(transitions) + 1,
                "label": label,
                "ms": elapsed * 1000.0,
                "model_ms": (ours.model.elapsed - model0) * 1000.0,
                "usage": ours.meter.snapshot().minus(u0).to_dict(),
                "store_methods": dict(sorted((+methods).items())),
            }
        )
        return out

    def invoke(function: str, payload: dict[str, Any]) -> dict[str, Any]:
        if function == "turn":
            task = TurnTask.model_validate(payload)
            return measured(
                f"turn:{task.op}", lambda: execute(ours.deps, task).model_dump(mode="json")
            )
        if function == "deliver":
            target = DeliverTask.model_validate(payload)
            return measured(
                "deliver", lambda: {"delivered": deliver(ours.deps, target.conversation_id)}
            )
        raise RuntimeError(f"unknown function {function}")

    def ingest(msg: InboundMessage) -> dict[str, Any]:
        return {"accepted": accept_message(ours.deps, msg, LOCAL_USER).message_id}

    for turn in range(1, turns + 1):
        msg = InboundMessage(conversation_id=cid, text=text_of_turn(turn))
        measured("ingest", functools.partial(ingest, msg))
        run: RunRef = ours.starter.take()
        start = time.perf_counter()
        before = len(invocations)
        entered = walk_asl(
            definition,
            {"run": run.model_dump(mode="json", exclude_none=True)},
            {"Execution": {"Id": f"arn:aws:states:us-east-1:000000000000:execution:{run.run_id}"}},
            invoke,
        )
        executions.append(
            {
                "turn": turn,
                "states": entered,
                "ms": (time.perf_counter() - start) * 1000.0,
                "task_ms": sum(i["ms"] for i in invocations[before:]),
            }
        )
        transitions.append(len(entered))
        if entered[-1] != "Released":
            raise RuntimeError(f"{variant} run ended in {entered[-1]}: {entered}")
    return {
        "variant": variant,
        "turns": turns,
        "executions_per_turn": len(executions) / turns,
        "transitions_per_turn": mean([float(t) for t in transitions]),
        "states_path": executions[-1]["states"],
        "executions": executions,
        "invocations": invocations,
        "by_invocation": _by_invocation(invocations, turns),
    }


def _by_invocation(invocations: list[dict[str, Any]], turns: int) -> list[dict[str, Any]]:
    """Per Lambda invocation kind: how many per turn, mean round trips, ops, store methods,
    and mean in-process duration, steady state (the first turn, which creates the
    conversation, excluded when there are more)."""
    steady = [i for i in invocations if i["turn"] > 1] if turns > 1 else invocations
    n_turns = max(1, turns - 1) if turns > 1 else 1
    order: list[str] = []
    for inv in steady:
        if inv["label"] not in order:
            order.append(inv["label"])
    rows = []
    for label in order:
        mine = [i for i in steady if i["label"] == label]
        ops: Counter[str] = Counter()
        methods: Counter[str] = Counter()
        for inv in mine:
            ops.update(inv["usage"]["calls"])
            methods.update(inv["store_methods"])
        rows.append(
            {
                "label": label,
                "per_turn": len(mine) / n_turns,
                "round_trips": mean([float(i["usage"]["round_trips"]) for i in mine]),
                "ops": {k: v / len(mine) for k, v in sorted(ops.items())},
                "store_methods": {k: v / len(mine) for k, v in sorted(methods.items())},
                "ms_mean": mean([i["ms"] for i in mine]),
                "ms_p50": sorted(i["ms"] for i in mine)[len(mine) // 2],
                "model_ms_mean": mean([i["model_ms"] for i in mine]),
                "wru": mean([float(i["usage"]["wru"]) for i in mine]),
                "rru": mean([float(i["usage"]["rru"]) for i in mine]),
            }
        )
    return rows


# the baseline ------------------------------------------------------------------------------


def _drive_saver(url: str, shadow: Any, shadow_s3: Any, turns: int) -> list[dict[str, Any]]:
    # The table DynamoDBSaver expects (it creates none): string PK + SK, on demand.
    shadow.create_table(
        TableName=SAVER_TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
    )
    shadow.get_waiter("table_exists").wait(TableName=SAVER_TABLE)
    shadow_s3.create_bucket(Bucket=SAVER_BUCKET)
    session = new_session()
    meter = AwsMeter(shadow)
    meter.attach(session)
    # No py.typed in the package: imported as Any.
    saver_module = importlib.import_module("langgraph_checkpoint_aws.checkpoint.dynamodb")
    saver = saver_module.DynamoDBSaver(
        table_name=SAVER_TABLE,
        session=session,
        endpoint_url=url,
        s3_offload_config={"bucket_name": SAVER_BUCKET, "endpoint_url": url},
    )
    graph = plain_chat_graph(saver)
    config: Any = {"configurable": {"thread_id": "bench-aws-dynamodbsaver"}}
    per_turn: list[dict[str, Any]] = []
    step = max(1, turns // 4)
    for turn in range(1, turns + 1):
        u0 = meter.snapshot()
        t0 = time.perf_counter()
        out = graph.invoke({"messages": [HumanMessage(text_of_turn(turn))]}, config)
        elapsed = time.perf_counter() - t0
        if len(out["messages"]) != 2 * turn:
            raise RuntimeError(f"baseline thread has {len(out['messages'])} messages")
        usage: Usage = meter.snapshot().minus(u0)
        per_turn.append({"turn": turn, "total": usage.to_dict(), "run_ms": elapsed * 1000.0})
        if turn % step == 0 and turn < turns:
            progress(f"aws-roundtrips (DynamoDBSaver): {turn}/{turns} turns")
    if meter.errors:
        progress(f"aws-roundtrips (DynamoDBSaver): HTTP errors {dict(meter.errors)}")
    return per_turn


# summaries ---------------------------------------------------------------------------------


def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = mean(xs), mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


@dataclass
class Windows:
    n: int
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, n: int) -> Windows:
        w = cls(n)
        w.rows["turn 1"] = (0, 1)
        if n >= 2:
            w.rows[f"turns 2-{min(6, n)}"] = (1, min(6, n))
        if n >= 7:
            w.rows[f"turns {n - 4}-{n}"] = (n - 5, n)
        w.rows[f"turn {n}"] = (n - 1, n)
        w.rows[f"steady mean (2-{n})" if n >= 2 else "mean"] = (1 if n >= 2 else 0, n)
        return w


def summarize(per_turn: list[dict[str, Any]], part: str = "total") -> dict[str, Any]:
    """Windows of the per-turn metrics, ops per turn (steady state) and growth slopes."""
    n = len(per_turn)
    windows = Windows.of(n)
    out: dict[str, Any] = {"windows": {}}
    for label, (lo, hi) in windows.rows.items():
        rows = [t[part] for t in per_turn[lo:hi]]
        out["windows"][label] = {m: mean([float(r[m]) for r in rows]) for m in METRICS}
    steady = per_turn[1:] if n >= 2 else per_turn
    ops: Counter[str] = Counter()
    for t in steady:
        ops.update(t[part]["calls"])
    out["ops_per_turn"] = {k: v / len(steady) for k, v in sorted(ops.items())}
    for name in ("wru_by_op", "rru_by_op", "wru_by_kind", "item_bytes_by_kind", "writes_by_kind"):
        total: Counter[str] = Counter()
        for t in steady:
            total.update(t[part][name])
        out[name] = {k: v / len(steady) for k, v in sorted(total.items())}
    out["steady"] = {m: mean([float(t[part][m]) for t in steady]) for m in METRICS}
    xs = [float(t["turn"]) for t in steady]
    out["slope_per_turn"] = {
        m: _slope(xs, [float(t[part][m]) for t in steady])
        for m in ("round_trips", "request_bytes_written", "item_bytes_written", "wru", "rru")
    }
    return out


def run(url: str, tmp: Path, cfg: RoundTripConfig) -> dict[str, Any]:
    shadow_session = new_session()
    shadow = shadow_session.client("dynamodb", endpoint_url=url)
    shadow_s3 = shadow_session.client("s3", endpoint_url=url)
    progress(f"aws-roundtrips (ours): {cfg.turns} turns, core + DynamoDBConversationStore")
    ours = build_ours(url, tmp, shadow, shadow_s3)
    ours_turns = _drive_ours(ours, cfg.turns)
    progress(
        f"aws-roundtrips (ours): {cfg.workflow_turns} turns through the Express ASL, "
        f"{cfg.standard_turns} through the Standard ASL"
    )
    workflow = {
        "express": _drive_workflow(ours, "express", cfg.workflow_turns),
        "standard": _drive_workflow(ours, "standard", cfg.standard_turns),
    }
    ours.methods.remove()
    if ours.meter.errors:
        progress(f"aws-roundtrips (ours): HTTP errors {dict(ours.meter.errors)}")
    progress(f"aws-roundtrips (DynamoDBSaver): {cfg.turns} turns, StateGraph + DynamoDBSaver")
    saver_turns = _drive_saver(url, shadow, shadow_s3, cfg.turns)
    ours_summary = {part: summarize(ours_turns, part) for part in ("total", "accept", "run")}
    saver_summary = summarize(saver_turns)
    steady = ours_turns[1:] if len(ours_turns) > 1 else ours_turns
    methods: Counter[str] = Counter()
    for t in steady:
        methods.update(t["store_methods"])
    all_rt = ours_summary["total"]["steady"]["round_trips"]
    run_rt = ours_summary["run"]["steady"]["round_trips"]
    saver_rt = saver_summary["steady"]["round_trips"]
    mismatched = [
        t["turn"] for t in ours_turns if t["store_api_calls"] != t["total"]["round_trips"]
    ]
    return {
        "config": {
            "turns": cfg.turns,
            "workflow_turns": cfg.workflow_turns,
            "standard_turns": cfg.standard_turns,
            "endpoint": "ThreadedMotoServer on 127.0.0.1 (one server, both sides)",
        },
        "ours": {
            "label": "ours: core + DynamoDBConversationStore",
            "per_turn": ours_turns,
            "summary": ours_summary,
            "store_methods_per_turn": {k: v / len(steady) for k, v in sorted(methods.items())},
            "chunks_per_turn": mean([float(t["chunks"]) for t in steady]),
            "payloads_per_turn": mean([float(t["payloads"]) for t in steady]),
            "accept_ms_mean": mean([t["accept_ms"] for t in steady]),
            "run_ms_mean": mean([t["run_ms"] for t in steady]),
            "model_ms_mean": mean([t["model_ms"] for t in steady]),
            "api_calls_mismatch_turns": mismatched,
        },
        "baseline": {
            "label": "DynamoDBSaver (langgraph-checkpoint-aws) + StateGraph",
            "per_turn": saver_turns,
            "summary": saver_summary,
            "run_ms_mean": mean([t["run_ms"] for t in saver_turns[1:] or saver_turns]),
        },
        "workflow": workflow,
        "goal": {
            "max_round_trips": GOAL_ROUND_TRIPS,
            "min_ratio": GOAL_RATIO,
            "ours_all": all_rt,
            "ours_run_side": run_rt,
            "baseline": saver_rt,
            "ratio_all": saver_rt / all_rt if all_rt else None,
            "ratio_run_side": saver_rt / run_rt if run_rt else None,
            "met_run_side": run_rt <= GOAL_ROUND_TRIPS and saver_rt >= GOAL_RATIO * run_rt,
            "met_all": all_rt <= GOAL_ROUND_TRIPS and saver_rt >= GOAL_RATIO * all_rt,
        },
    }
