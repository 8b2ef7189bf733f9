"""The eval's MLflow side: one run per eval (params, metrics, the per-case table), an MLflow
GenAI evaluation of the cases' turn traces (:mod:`workers.evals.genai`); run comparison;
dataset drafts from users' negative feedback.

MLflow is imported only here, when an eval logs, compares or reads feedback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.config import Settings
from workers.core import figures
from workers.errors import ConfigError
from workers.evals.scorers import CaseResult
from workers.observability import conversation_filter

EVAL_TAG = "agentworker.eval"
"""Tag of every eval run (``true``), so ``--compare`` can tell one from another run."""
TRACE_TAG = figures.EVAL_RUN_TAG
FEEDBACK = "user_feedback"
"""The name of a user's rating of a reply (an MLflow feedback assessment, value 1 or -1)."""


def _mlflow(settings: Settings) -> Any:
    from workers.observability import offline_mlflow_env

    offline_mlflow_env()
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow


def experiment_id(settings: Settings, *, create: bool) -> str | None:
    """The settings' experiment (created as the embedded tracer creates it, artifacts under
    the state directory, when ``create``)."""
    mlflow = _mlflow(settings)
    found = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if found is not None:
        return str(found.experiment_id)
    if not create:
        return None
    location = None
    if settings.mlflow_tracking_uri is None:
        from workers.statedir import private_dir

        private_dir(settings.state_dir)
        location = (settings.state_dir / "mlartifacts").resolve().as_uri()
    return str(mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location))


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    traces_tagged: int
    assessments: int = 0
    """Feedback logged on the traces by the GenAI evaluation (0: no trace to evaluate)."""


def log_eval_run(
    settings: Settings,
    *,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    results: Sequence[CaseResult],
    started_ms: int,
    tracing: bool,
    judge: str | None = None,
) -> LoggedRun:
    """Log one MLflow run: ``params``, ``metrics``, the per-case table (``eval_cases.json``,
    with each case's trace ids); with traces, the run is also MLflow's evaluation of them
    (``judge``: the judge model, the source of the judge's feedback); tag the cases' traces
    with the run id."""
    from workers.evals.genai import evaluate_traces, trace_verdicts

    mlflow = _mlflow(settings)
    experiment = experiment_id(settings, create=True)
    assert experiment is not None
    traces = _traces_of(settings, experiment, results, started_ms) if tracing else {}
    for result in results:
        result.trace_ids = [str(t.info.trace_id) for t in traces.get(result.conversation_id, [])]
    found = [trace for group in traces.values() for trace in group]
    trace_of_turn = {
        str(t.info.tags["turn_id"]): str(t.info.trace_id) for t in found if "turn_id" in t.info.tags
    }
    verdicts = trace_verdicts(results, trace_of_turn, judge=judge)
    with mlflow.start_run(
        experiment_id=experiment,
        run_name=f"eval {params.get('datasets', '')}"[:250],
        tags={EVAL_TAG: "true"},
    ) as run:
        mlflow.log_params({k: v[:6000] for k, v in params.items()})
        mlflow.log_metrics(dict(metrics))
        mlflow.log_table(data=case_table(results), artifact_file="eval_cases.json")
        evaluated = bool(found) and evaluate_traces(found, verdicts) is not None
        run_id = str(run.info.run_id)
    client = mlflow.MlflowClient()
    for trace in found:
        client.set_trace_tag(trace.info.trace_id, TRACE_TAG, run_id)
    assessed = sum(len(v) for v in verdicts.values()) if evaluated else 0
    return LoggedRun(run_id, experiment, len(found), assessed)


def case_table(results: Sequence[CaseResult]) -> dict[str, list[Any]]:
    """One row per case: id, status, scores, figures, failures, conversation and traces."""
    from workers.evals.scorers import SCORERS

    names = [*SCORERS, "judge"]
    table: dict[str, list[Any]] = {
        k: []
        for k in (
            "case_id",
            "status",
            *names,
            "latency_ms",
            "total_tokens",
            "cost_usd",
            "failures",
            "judge_rationale",
            "conversation_id",
            "trace_ids",
        )
    }
    for r in results:
        table["case_id"].append(r.case.id)
        table["status"].append(r.status)
        for name in names:
            score = r.scores.get(name)
            table[name].append(None if score is None else score.passed)
        table["latency_ms"].append(round(r.latency_ms, 1))
        table["total_tokens"].append(r.tokens)
        table["cost_usd"].append(r.cost_usd)
        table["failures"].append("; ".join(r.failures()))
        table["judge_rationale"].append(r.judge_rationale)
        table["conversation_id"].append(r.conversation_id)
        table["trace_ids"].append(",".join(r.trace_ids))
    return table


def _traces_of(
    settings: Settings, experiment: str, results: Sequence[CaseResult], started_ms: int
) -> dict[str, list[Any]]:
    """The turn traces (MLflow ``Trace``) of the results' conversations recorded since
    ``started_ms``, by conversation id, in the order they were recorded."""
    wanted = {r.conversation_id for r in results}
    found: dict[str, list[Any]] = {}
    for trace in _search(settings, experiment, f"timestamp_ms >= {started_ms}", spans=True):
        cid = trace.info.tags.get("conversation_id")
        if cid in wanted:
            found.setdefault(cid, []).append(trace)
    return found


def _search(
    settings: Settings, experiment: str, filter_string: str, *, spans: bool = False
) -> Iterator[Any]:
    client = _mlflow(settings).MlflowClient()
    token: str | None = None
    while True:
        page = client.search_traces(
            locations=[experiment],
            filter_string=filter_string,
            max_results=500,
            order_by=["timestamp_ms ASC"],
            page_token=token,
            include_spans=spans,
        )
        yield from page
        token = page.token
        if not token:
            return


# compare --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delta:
    metric: str
    a: float | None
    b: float | None

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


def compare_runs(settings: Settings, run_a: str, run_b: str) -> tuple[list[Delta], dict[str, Any]]:
    """Per-metric values of two eval runs and their params (``ConfigError`` for a run id
    the tracking store does not know)."""
    mlflow = _mlflow(settings)
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    runs = []
    for run_id in (run_a, run_b):
        try:
            runs.append(client.get_run(run_id))
        except MlflowException:
            raise ConfigError(
                f"run {run_id!r}: no such MLflow run in {settings.shown_tracking_uri}"
            ) from None
    a, b = (r.data.metrics for r in runs)
    deltas = [Delta(m, a.get(m), b.get(m)) for m in sorted(set(a) | set(b))]
    params = {
        key: (runs[0].data.params.get(key), runs[1].data.params.get(key))
        for key in sorted(set(runs[0].data.params) | set(runs[1].data.params))
    }
    return deltas, params


# feedback -------------------------------------------------------------------------------------


def feedback_cases(settings: Settings, *, since_ms: int = 0) -> list[dict[str, Any]]:
    """Draft cases from negative user feedback (``user_feedback`` = -1) given since
    ``since_ms``: the conversation's user turns up to the rated reply, the reply and the
    comment in ``notes``, ``review: true`` (expectations are for a human to write)."""
    experiment = experiment_id(settings, create=False)
    if experiment is None:
        return []
    drafts: list[dict[str, Any]] = []
    for trace in _search(settings, experiment, "", spans=False):
        for feedback in trace.info.assessments or []:
            if not _negative(feedback, since_ms):
                continue
            drafts.append(_draft(settings, experiment, trace, feedback))
    return drafts


def _negative(assessment: Any, since_ms: int) -> bool:
    value = getattr(getattr(assessment, "feedback", None), "value", None)
    valid = getattr(assessment, "valid", True) is not False
    return (
        assessment.name == FEEDBACK
        and valid
        and value is not None
        and _number(value) < 0
        and (assessment.create_time_ms or 0) >= since_ms
    )


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _draft(settings: Settings, experiment: str, rated: Any, feedback: Any) -> dict[str, Any]:
    cid = str(rated.info.tags.get("conversation_id", ""))
    turns: list[dict[str, Any]] = []
    reply = ""
    for trace in _search(settings, experiment, conversation_filter(cid), spans=True):
        if trace.info.timestamp_ms > rated.info.timestamp_ms:
            break
        inputs = _json(trace.data.request)
        turns.extend(_turns_of(inputs))
        if trace.info.trace_id == rated.info.trace_id:
            outputs = _json(trace.data.response)
            reply = str(outputs.get("reply") or "") if isinstance(outputs, dict) else ""
            break
    turn_id = str(rated.info.tags.get("turn_id", rated.info.trace_id))
    return {
        "id": f"feedback-{turn_id}"[:80],
        "description": "From a user's negative feedback: write the expectations, then remove"
        " 'review'.",
        "tags": ["feedback"],
        "turns": turns or [{"user": "(the conversation's messages were not traced)"}],
        "review": True,
        "notes": {
            "rated_reply": reply,
            "comment": feedback.rationale or "",
            "rated_by": getattr(feedback.source, "source_id", "") or "",
            "trace_id": rated.info.trace_id,
            "conversation_id": cid,
        },
    }


def _json(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _turns_of(inputs: Any) -> list[dict[str, Any]]:
    """A turn trace's input as dataset turns: its texts, or the decision it resumed with."""
    if not isinstance(inputs, dict):
        return []
    if "resume" in inputs:
        value = inputs["resume"]
        if isinstance(value, dict) and isinstance(value.get("approved"), bool):
            return [{"approve": value["approved"], "reason": str(value.get("reason") or "")}]
        return [{"answer": value}]
    return [{"user": str(t)} for t in inputs.get("texts") or [] if str(t).strip()]


def since_ms(text: str | None, *, now: float | None = None) -> int:
    """``--since``: ``30m``, ``24h``, ``7d`` ago, or an ISO date/time; ``ConfigError`` else."""
    if not text:
        return 0
    now = time.time() if now is None else now
    units = {"m": 60, "h": 3600, "d": 86_400}
    number, unit = text[:-1], text[-1:]
    if unit in units and number.replace(".", "", 1).isdigit():
        return int((now - float(number) * units[unit]) * 1000)
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: expected 30m, 24h, 7d or an ISO date (2026-01-31)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
