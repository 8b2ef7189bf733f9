"""``agentworker stats`` over a real MLflow store (SQLite in a temporary directory): turns of
the support agent traced through the span recorder into MLflow, throttled turns, a resumed
turn, and the figures read back from the traces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from events.outbound import TokenUsage
from tests.fakes import (
    InMemoryConversationStore,
    InMemoryTicketStore,
    ManualClock,
    RecordingSink,
    RecordingStarter,
)
from workers.bootstrap import build_agent
from workers.cli import main
from workers.config import load_settings
from workers.core import figures
from workers.core.model import TurnOutput, TurnRequest
from workers.core.ports import Tracer
from workers.core.steps import Deps, TurnSettings, accept_message, drive_run
from workers.costs import ModelPrice, cost_of
from workers.errors import BadInput, ModelThrottled
from workers.stats import Stats, TurnFigures, parse_since, percentile, read_turns
from workers.tracing.direct import DirectSink
from workers.tracing.mlflow_export import MlflowExport
from workers.tracing.recorder import SpanRecorder

PRICE = {"offline": {"input": 2.0, "output": 8.0}}


class ThrottledAgent:
    """A model that is always throttled."""

    def run_turn(self, request: TurnRequest, *, on_chunk: Any, tracer: Tracer) -> TurnOutput:
        raise ModelThrottled("model call throttled (ThrottlingException): Rate exceeded")

    def inspect(
        self, conversation_id: str, checkpoint: bytes | None, history: Any, **_: Any
    ) -> Any:
        raise NotImplementedError


def converse(deps: Deps, cid: str, *texts: str) -> None:
    starter = deps.starter
    assert isinstance(starter, RecordingStarter)
    for text in texts:
        accept_message(deps, InboundMessage(conversation_id=cid, text=text), LOCAL_USER)
        drive_run(deps, starter.runs.pop())


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SpanRecorder]:
    state = tmp_path_factory.mktemp("stats")
    settings = load_settings(state_dir=state, prices=PRICE)
    uri = settings.tracking_uri
    tracer = SpanRecorder(DirectSink(lambda: MlflowExport(uri, "agentworker", artifact_dir=state)))
    agent = build_agent(settings, InMemoryTicketStore(), ManualClock())
    store, sink = InMemoryConversationStore(), RecordingSink()
    deps = Deps(store, agent, sink, RecordingStarter(), ManualClock(), tracer)
    converse(deps, "ws:a:1", "The printer is on fire, please open a ticket", "thanks")
    converse(deps, "ws:b:1", "hello there")
    converse(deps, "eval:batch1:greeting", "hello there")  # what `agentworker eval` runs
    throttled = Deps(
        store,
        ThrottledAgent(),
        sink,
        RecordingStarter(),
        ManualClock(),
        tracer,
        TurnSettings(retry_attempts=2, retry_base_delay=0.0),
    )
    converse(throttled, "ws:c:1", "anyone?")
    assert tracer.flush()
    return state, tracer


def test_stats_reads_every_turn_and_prices_it(traced: tuple[Path, SpanRecorder]) -> None:
    state, _ = traced
    settings = load_settings(state_dir=state)
    since = datetime.now(UTC) - timedelta(hours=1)
    every = read_turns(settings.tracking_uri, "agentworker", since=since)
    assert [t.conversation_id for t in every if t.from_eval] == ["eval:batch1:greeting"]
    turns = [t for t in every if not t.from_eval]
    stats = Stats(turns)
    assert len(turns) == 5 and stats.failed == 2
    assert stats.total("throttles") == 2
    import mlflow

    experiment = mlflow.get_experiment_by_name("agentworker")
    assert experiment is not None
    traces = [
        t
        for t in mlflow.search_traces(
            locations=[experiment.experiment_id],
            return_type="list",
            include_spans=False,
        )
        if not t.info.tags["conversation_id"].startswith("eval:")
    ]
    # The tokens agree with MLflow's own aggregation of the model spans.
    inputs = sum((t.info.token_usage or {}).get("input_tokens", 0) for t in traces)
    assert stats.total("input_tokens") == inputs > 0
    price = ModelPrice.model_validate(PRICE["offline"])
    by_hand = sum(
        cost_of(
            TokenUsage(input_tokens=f.input_tokens, output_tokens=f.output_tokens), price
        ).total_cost
        for f in turns
    )
    assert stats.cost_usd == pytest.approx(by_hand, rel=1e-6) and stats.cost_usd > 0
    costs = [t.info.cost for t in traces if t.info.cost]
    assert sum(c["total_cost"] for c in costs) == pytest.approx(stats.cost_usd, rel=1e-6)
    top = stats.cost_by("conversation")
    assert top[0][0] == "ws:a:1" and top[0][2] == 2
    assert [d for d, _, _ in stats.cost_by("day")] == [datetime.now(UTC).date().isoformat()]
    assert stats.ttft_ms(50) is not None  # the embedded runtime streams
    only = read_turns(settings.tracking_uri, "agentworker", since=since, conversation_id="ws:b:1")
    assert [t.conversation_id for t in only] == ["ws:b:1"]
    # Without its tags, a trace's figures are read from its root span.
    [trace] = [t for t in traces if t.info.tags.get("conversation_id") == "ws:b:1"]
    client = mlflow.MlflowClient()
    for key in figures.TURN_TAGS:
        if key in trace.info.tags:
            client.delete_trace_tag(trace.info.trace_id, key)
    [again] = read_turns(
        settings.tracking_uri, "agentworker", since=since, conversation_id="ws:b:1"
    )
    assert again == only[0] and again.input_tokens > 0


def test_the_cli_prints_the_figures_and_refuses_a_bad_since(
    traced: tuple[Path, SpanRecorder], capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = traced
    assert main(["stats", "--state-dir", str(state), "--since", "2h"]) == 0
    out = capsys.readouterr().out
    assert "5 (2 failed)" in out and "model throttles: 2" in out
    assert "cost by conversation (top 5):" in out and "ws:a:1" in out
    assert "cache hit ratio: 0.0%" in out
    assert "eval turns left out: 1" in out and "eval:" not in out.replace("eval turns", "")
    assert main(["stats", "--state-dir", str(state), "--since", "2h", "--include-evals"]) == 0
    out = capsys.readouterr().out
    assert "6 (2 failed)" in out and "eval:batch1:greeting" in out and "left out" not in out
    assert main(["stats", "--state-dir", str(state), "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err


def test_a_trace_an_eval_run_tagged_is_an_eval_turn_whatever_its_conversation() -> None:
    at = datetime.now(UTC)
    of = TurnFigures.of
    assert of(
        {"conversation_id": "ws:a", "eval_run_id": "r1"}, started=at, duration_ms=1, ok=True
    ).from_eval
    assert not of({"conversation_id": "ws:a"}, started=at, duration_ms=1, ok=True).from_eval


def test_figures_in_trace_tags_are_read_without_the_spans() -> None:
    tags = {
        "conversation_id": "x",
        figures.INPUT_TOKENS: "100",
        figures.CACHE_READ_TOKENS: "40",
        figures.COST_USD: "0.5",
        figures.GUARDRAIL_INTERVENTIONS: "3",
        figures.TTFT_MS: "nan",
    }
    now = datetime.now(UTC)
    turn = figures_of(tags, now)
    assert (turn.input_tokens, turn.cache_read_tokens, turn.cost_usd) == (100, 40, 0.5)
    assert turn.guardrail_interventions == 3 and turn.ttft_ms is None
    assert Stats([turn]).cache_hit_ratio == pytest.approx(0.4)


def figures_of(tags: dict[str, str], now: datetime) -> TurnFigures:
    return TurnFigures.of(tags, started=now, duration_ms=1.0, ok=True)


def test_since_and_percentiles() -> None:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    assert parse_since("1d", now) == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2026-01-01", now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(BadInput):
        parse_since("1y", now)
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile([5, 1, 3, 2, 4], 95) == 5
    assert percentile([], 50) is None
