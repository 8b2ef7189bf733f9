"""``agentworker stats``: turns, latency, time to first token, tokens, prompt-cache hits, cost,
throttles and guardrail interventions, from the turn traces in MLflow.

The figures are the trace tags ``workers.core.figures`` names (one search, no span read):
MLflow's store turns the root span's ``mlflow.traceTag.<tag>`` attributes into them. A trace
without them (a store that keeps them as attributes, a turn that failed before its figures)
is read from its root span's attributes instead, one trace at a time.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from workers.core import figures
from workers.errors import BadInput
from workers.observability import conversation_filter

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def parse_since(text: str, now: datetime) -> datetime:
    """``1d``, ``12h``, ``30m``, ``2w`` before ``now``, or an ISO date or time (UTC when it
    names no zone); ``BadInput`` otherwise."""
    match = _SPAN.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            "bad_since", f"--since {text!r}: expected 30m, 12h, 1d, 2w or an ISO date/time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TurnFigures:
    """One turn trace's figures."""

    conversation_id: str
    started: datetime
    duration_ms: float
    ok: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    ttft_ms: float | None = None
    throttles: int = 0
    guardrail_interventions: int = 0
    from_eval: bool = False
    """A turn of ``agentworker eval`` (its conversations are ``eval:``, its traces tagged
    with the eval run), not of real traffic."""

    @classmethod
    def of(
        cls,
        tags: Mapping[str, str],
        *,
        started: datetime,
        duration_ms: float,
        ok: bool,
    ) -> TurnFigures:
        """The figures in ``tags`` (trace tags, or root attributes without their prefix)."""
        return cls(
            conversation_id=str(tags.get("conversation_id", "")),
            started=started,
            duration_ms=duration_ms,
            ok=ok,
            input_tokens=_int(tags.get(figures.INPUT_TOKENS)),
            output_tokens=_int(tags.get(figures.OUTPUT_TOKENS)),
            cache_read_tokens=_int(tags.get(figures.CACHE_READ_TOKENS)),
            cache_write_tokens=_int(tags.get(figures.CACHE_WRITE_TOKENS)),
            cost_usd=_float(tags.get(figures.COST_USD)),
            ttft_ms=_float(tags.get(figures.TTFT_MS)),
            throttles=_int(tags.get(figures.MODEL_THROTTLES)),
            guardrail_interventions=_int(tags.get(figures.GUARDRAIL_INTERVENTIONS)),
            from_eval=figures.EVAL_RUN_TAG in tags
            or str(tags.get("conversation_id", "")).startswith(figures.EVAL_CONVERSATION_PREFIX),
        )


def _int(value: object) -> int:
    number = _float(value)
    return int(number) if number is not None else 0


def _float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Stats:
    """What ``stats`` prints, computed from turn figures."""

    turns: Sequence[TurnFigures]

    @property
    def failed(self) -> int:
        return sum(not t.ok for t in self.turns)

    def latency_ms(self, q: float) -> float | None:
        return percentile([t.duration_ms for t in self.turns], q)

    def ttft_ms(self, q: float) -> float | None:
        return percentile([t.ttft_ms for t in self.turns if t.ttft_ms is not None], q)

    def total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.turns)

    @property
    def cache_hit_ratio(self) -> float | None:
        """Input tokens read from the prompt cache, of all input tokens (which include the
        cache's reads and writes)."""
        inputs = self.total("input_tokens")
        return self.total("cache_read_tokens") / inputs if inputs else None

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd or 0.0 for t in self.turns)

    @property
    def unpriced(self) -> int:
        """Turns with model calls but no cost (a model without a price)."""
        return sum(t.cost_usd is None and t.input_tokens > 0 for t in self.turns)

    def cost_by(self, key: str) -> list[tuple[str, float, int]]:
        """(key, cost, turns) by conversation (``key="conversation"``) or UTC day, costliest
        conversations first and days in order."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for t in self.turns:
            name = t.conversation_id if key == "conversation" else t.started.date().isoformat()
            sums[name] += t.cost_usd or 0.0
            counts[name] += 1
        rows = [(k, sums[k], counts[k]) for k in sums]
        if key == "conversation":
            return sorted(rows, key=lambda r: (-r[1], r[0]))
        return sorted(rows)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def render(stats: Stats, *, since: datetime, top: int = 5, evals_left_out: int = 0) -> str:
    """``stats`` as the lines ``agentworker stats`` prints (``evals_left_out``: eval turns
    not counted)."""
    turns = len(stats.turns)
    lines = [f"turns since {since.isoformat(timespec='seconds')}: {turns} ({stats.failed} failed)"]
    if evals_left_out:
        lines.append(f"eval turns left out: {evals_left_out} (--include-evals counts them)")
    if not turns:
        return "\n".join(lines)
    ratio = stats.cache_hit_ratio
    unpriced = f" ({stats.unpriced} turns unpriced)" if stats.unpriced else ""
    lines += [
        f"latency ms: p50 {_ms(stats.latency_ms(50))}  p95 {_ms(stats.latency_ms(95))}",
        f"time to first token ms: p50 {_ms(stats.ttft_ms(50))}  p95 {_ms(stats.ttft_ms(95))}",
        f"tokens: in {stats.total('input_tokens'):,}  out {stats.total('output_tokens'):,}"
        f"  cache read {stats.total('cache_read_tokens'):,}"
        f"  cache write {stats.total('cache_write_tokens'):,}",
        "cache hit ratio: " + ("-" if ratio is None else f"{ratio:.1%}"),
        f"cost USD: {stats.cost_usd:.6f}{unpriced}",
        f"model throttles: {stats.total('throttles')}",
        f"guardrail interventions: {stats.total('guardrail_interventions')}",
        "",
        f"cost by conversation (top {top}):",
        *(f"  {c}  {cost:.6f}  ({n} turns)" for c, cost, n in stats.cost_by("conversation")[:top]),
        "cost by day (UTC):",
        *(f"  {d}  {cost:.6f}  ({n} turns)" for d, cost, n in stats.cost_by("day")),
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def read_turns(
    tracking_uri: str,
    experiment: str,
    *,
    since: datetime,
    conversation_id: str | None = None,
) -> list[TurnFigures]:
    """The figures of the turn traces started at or after ``since`` (of one conversation)."""
    from workers.observability import offline_mlflow_env

    offline_mlflow_env()
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"trace.timestamp_ms >= {int(since.timestamp() * 1000)}"
    if conversation_id is not None:
        query += f" AND {conversation_filter(conversation_id)}"
    traces = mlflow.search_traces(
        locations=[found.experiment_id],
        filter_string=query,
        return_type="list",
        include_spans=False,
    )
    out = []
    for trace in traces:
        info = trace.info
        if "turn_id" not in info.tags:
            continue  # not a turn (another tool's trace in the experiment)
        tags: dict[str, Any] = dict(info.tags)
        if not any(key in tags for key in figures.TURN_TAGS):
            tags.update(_root_figures(client, info.trace_id))
        state = str(getattr(info.state, "value", info.state))
        out.append(
            TurnFigures.of(
                tags,
                started=datetime.fromtimestamp(info.request_time / 1000, tz=UTC),
                duration_ms=float(info.execution_duration or 0),
                ok=state == "OK",
            )
        )
    return out


def _root_figures(client: Any, trace_id: str) -> dict[str, Any]:
    """The figures a turn's root span holds as ``mlflow.traceTag.*`` attributes (and the
    guard steps' ``guardrail.interventions``)."""
    trace = client.get_trace(trace_id)
    roots = [s for s in trace.data.spans if s.parent_id is None]
    if not roots:
        return {}
    attributes = roots[0].attributes or {}
    prefix = figures.TAG_ATTRIBUTE_PREFIX
    out = {k[len(prefix) :]: v for k, v in attributes.items() if k.startswith(prefix)}
    if figures.GUARDRAIL_INTERVENTIONS in attributes:
        out.setdefault(figures.GUARDRAIL_INTERVENTIONS, attributes[figures.GUARDRAIL_INTERVENTIONS])
    return out
