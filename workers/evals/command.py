"""``agentworker eval``: run golden datasets through the app, score, log, gate; compare two
eval runs; turn negative feedback into draft cases."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from workers.agent.app import DEFAULT_GRAPH
from workers.config import Settings
from workers.errors import ConfigError
from workers.evals import report, tracking
from workers.evals.dataset import load_datasets
from workers.evals.runner import Prices, RunOptions, graph_of, run_cases
from workers.evals.scorers import metrics

DEFAULT_THRESHOLDS = Path("evals/thresholds.toml")


def _warn(text: str) -> None:
    print(f"agentworker eval: {text}", file=sys.stderr)


def run_eval(
    settings: Settings,
    datasets: list[Path],
    *,
    graph_override: str | None = None,
    thresholds_path: Path | None = None,
    judge_spec: str | None = None,
    concurrency: int = 4,
) -> int:
    """Run, score, log and gate; the exit code (0 passed, 1 below a threshold, 2 bad input
    through ``ConfigError``)."""
    from workers.agent.models import ModelOptions, make_model

    if concurrency < 1:
        raise ConfigError(f"--concurrency {concurrency}: must be at least 1")
    options = ModelOptions(
        region=settings.bedrock_region, endpoint_url=settings.bedrock_endpoint_url
    )
    make_model(settings.model, options)  # an unknown model or provider stops here (exit 2)
    judge = None
    spec = judge_spec or settings.judge_model
    if spec:
        from workers.evals.judge import Judge

        judge = Judge(make_model(spec, options), name=spec, concurrency=concurrency)
    path = thresholds_path or (DEFAULT_THRESHOLDS if DEFAULT_THRESHOLDS.is_file() else None)
    thresholds = report.read_thresholds(path) if path else report.NO_THRESHOLDS
    data = load_datasets(datasets)
    for skipped in data.skipped:
        _warn(f"warning: {skipped} (line skipped)")
    if data.in_review:
        _warn(f"{len(data.in_review)} case(s) marked 'review' are drafts and were not run")
    if not data.cases:
        raise ConfigError(f"no case to run in {', '.join(map(str, datasets))}")
    if settings.tracing:
        # Made here, so the runtimes' tracers (given this tracking URI) find it.
        tracking.experiment_id(settings, create=True)
    started_ms = int(time.time() * 1000)
    progress = report.Progress(len(data.cases))
    run_options = RunOptions(concurrency=concurrency, graph_override=graph_override)
    try:
        results = asyncio.run(
            run_cases(
                data.cases,
                settings,
                options=run_options,
                judge=judge,
                on_done=progress,
            )
        )
    finally:
        progress.close()
    figures = metrics(results, skipped_lines=len(data.skipped))
    graphs = sorted({graph_of(c, settings, run_options) or DEFAULT_GRAPH for c in data.cases})
    params = {
        "datasets": ",".join(data.sources),
        "graph": ",".join(graphs),
        "model": settings.model,
        **_prompt_params(settings),
        "judge": spec or "(none)",
        "cases": str(len(results)),
        "concurrency": str(concurrency),
    }
    logged = tracking.log_eval_run(
        settings,
        params=params,
        metrics=figures,
        results=results,
        started_ms=started_ms,
        tracing=settings.tracing,
        judge=spec,
    )
    print(report.metrics_table(figures, thresholds))
    failures = report.failures_table(results)
    if failures:
        print()
        print(failures)
    print()
    passed = sum(r.status == "passed" for r in results)
    print(
        f"{passed}/{len(results)} cases passed, {int(figures['errored'])} errored,"
        f" {len(data.skipped)} dataset line(s) skipped"
    )
    if not Prices.for_settings(settings).known:
        print(f"cost: no price for model {settings.model} (AGENTWORKER_PRICES): counted as 0")
    if settings.tracing:
        print(
            f"traces: {logged.traces_tagged} tagged {tracking.TRACE_TAG}={logged.run_id},"
            f" {logged.assessments} assessment(s) logged on them"
        )
    else:
        print("traces: tracing is off (AGENTWORKER_TRACING=false): the run has no traces")
    where = f"experiment {logged.experiment_id}, {settings.shown_tracking_uri}"
    print(f"mlflow run {logged.run_id} ({where})")
    verdicts = thresholds.check(figures)
    below = [name for name, verdict in verdicts.items() if verdict == "FAIL"]
    if path is None:
        print("no thresholds file: every case must pass")
        return 0 if passed == len(results) else 1
    if below:
        print(f"FAILED: {', '.join(below)} outside {path}")
        return 1
    print(f"gate ok ({path})")
    return 0


def _prompt_params(settings: Settings) -> dict[str, str]:
    """The prompt the run's app served (registry name and version, or the file's hash)."""
    from workers.bootstrap import load_prompt

    tags = load_prompt(settings).trace_tags()
    return {key: tags[key] for key in ("prompt_name", "prompt_version") if key in tags} or {
        "prompt_name": "(the app's own)"
    }


def compare(settings: Settings, run_a: str, run_b: str) -> int:
    deltas, params = tracking.compare_runs(settings, run_a, run_b)
    changed = [(k, a, b) for k, (a, b) in params.items() if a != b]
    for key, a, b in changed:
        print(f"{key}: {a} -> {b}")
    if changed:
        print()
    print(report.compare_table(deltas))
    return 0


def from_feedback(settings: Settings, out: Path, since: str | None) -> int:
    drafts = tracking.feedback_cases(settings, since_ms=tracking.since_ms(since))
    try:
        with out.open("a", encoding="utf-8") as handle:
            for draft in drafts:
                handle.write(json.dumps(draft, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ConfigError(f"{out}: {exc}") from None
    print(
        f"wrote {len(drafts)} draft case(s) from negative feedback to {out}; fill in their"
        " expectations and remove 'review' to run them"
    )
    return 0
