"""The eval run as an MLflow GenAI evaluation of the cases' turn traces.

The cases were already run and scored (the gate's figures come from
:mod:`workers.evals.scorers` and the judge); ``mlflow.genai.evaluate`` is then given the
cases' exported traces (no ``predict_fn``: nothing is run again) and one ``@scorer`` per
verdict name that hands back the verdict already computed for that trace as a ``Feedback``.
MLflow links the traces to the run, logs each feedback on its trace (so the Traces tab of
the run and each trace show them), aggregates them into ``<name>/mean`` metrics and marks
the run as an evaluation run (tag ``mlflow.runType = genai_evaluate``).

What each trace carries: a turn's trace, a feedback per deterministic scorer its turn's
expectations ask for (source ``CODE``); the trace of a case's last turn also ``case`` (the
case's status, its failures as rationale) and ``judge`` when a judge ran (source
``LLM_JUDGE``, the judge model as source id). Pass or fail is the value (``True`` /
``False``); the failure reasons are the rationale.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from workers.evals.scorers import CaseResult, score_turns

log = logging.getLogger(__name__)

CASE = "case"
"""The feedback on a case's last trace: the case passed (``True``) or not."""
JUDGE = "judge"
CODE_SOURCE = "agentworker.eval"
"""The source id of the deterministic scorers' feedback."""

_QUIET = {
    # Our scorers call no model: no rate limit to respect, and one writer at a time suits the
    # SQLite store (MLflow's defaults, 10 threads at 10 items/s, take seconds for nothing).
    "MLFLOW_GENAI_EVAL_PREDICT_RATE_LIMIT": "0",
    "MLFLOW_GENAI_EVAL_SCORER_RATE_LIMIT": "0",
    "MLFLOW_GENAI_EVAL_MAX_WORKERS": "1",
    "MLFLOW_GENAI_EVAL_MAX_SCORER_WORKERS": "1",
}


@dataclass(frozen=True)
class TraceVerdict:
    """One feedback to log on a trace."""

    name: str
    passed: bool
    rationale: str
    source: Literal["CODE", "LLM_JUDGE"] = "CODE"
    source_id: str = CODE_SOURCE


def trace_verdicts(
    results: Sequence[CaseResult], trace_of_turn: Mapping[str, str], *, judge: str | None
) -> dict[str, dict[str, TraceVerdict]]:
    """trace id -> verdict name -> verdict, for the traces in ``trace_of_turn`` (turn id ->
    trace id); a case none of whose turns has a trace gets none."""
    verdicts: dict[str, dict[str, TraceVerdict]] = {}
    for result in results:
        last: str | None = None
        for seen, scores in zip(result.turns, score_turns(result), strict=True):
            traced = dict.fromkeys(trace_of_turn[t] for t in seen.turn_ids if t in trace_of_turn)
            for trace_id in traced:
                verdicts.setdefault(trace_id, {}).update(
                    (name, TraceVerdict(name, score.passed, "; ".join(score.reasons)))
                    for name, score in scores.items()
                )
                last = trace_id
        if last is None:
            continue
        on_last = verdicts.setdefault(last, {})
        on_last[CASE] = TraceVerdict(CASE, result.status == "passed", "; ".join(result.failures()))
        score = result.scores.get(JUDGE)
        if score is not None:
            on_last[JUDGE] = TraceVerdict(
                JUDGE,
                score.passed,
                result.judge_rationale or "; ".join(score.reasons),
                source="LLM_JUDGE",
                source_id=judge or JUDGE,
            )
    return verdicts


def evaluate_traces(
    traces: Sequence[Any], verdicts: Mapping[str, Mapping[str, TraceVerdict]]
) -> dict[str, float] | None:
    """``mlflow.genai.evaluate`` over ``traces`` (MLflow ``Trace`` objects of the active
    run's experiment) with a scorer per verdict name; MLflow's aggregated metrics. Must run
    inside the eval's ``mlflow.start_run`` (MLflow reuses the active run). ``None`` when
    MLflow could not evaluate them (logged as a warning: the run keeps the gate's figures)."""
    import mlflow.genai
    from mlflow.exceptions import MlflowException

    names = sorted({name for found in verdicts.values() for name in found})
    scorers = [_scorer(name, verdicts) for name in names]
    try:
        with _quiet_evaluate():
            result = mlflow.genai.evaluate(data=list(traces), scorers=scorers)
    except MlflowException as exc:
        # The gate's figures are logged already: the run stands without MLflow's view.
        log.warning("MLflow's evaluation of the eval's traces failed: %s", exc)
        return None
    return {str(k): float(v) for k, v in result.metrics.items() if v is not None}


def _scorer(name: str, verdicts: Mapping[str, Mapping[str, TraceVerdict]]) -> Any:
    from mlflow.entities import AssessmentSource, Feedback
    from mlflow.genai.scorers import scorer

    def verdict(trace: Any) -> Feedback | None:
        found = verdicts.get(str(trace.info.trace_id), {}).get(name)
        if found is None:
            return None  # the scorer does not apply to this turn: no feedback
        return Feedback(
            name=name,
            value=found.passed,
            rationale=found.rationale or None,
            source=AssessmentSource(source_type=found.source, source_id=found.source_id),
        )

    # timeout=0: the verdict is a look-up, no thread per call to bound it.
    return scorer(verdict, name=name, timeout=0)


@contextlib.contextmanager
def _quiet_evaluate() -> Iterator[None]:
    """MLflow's settings for the call (unless the environment sets them), and its closing
    banner (printed to stdout) kept out of the eval's report."""
    saved = {key: os.environ.get(key) for key in _QUIET}
    for key, value in _QUIET.items():
        os.environ.setdefault(key, value)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for key, before in saved.items():
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before
