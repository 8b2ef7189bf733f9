"""The turn's root span: its inputs (the decision of a resumed turn), its figures as trace
tags (``mlflow.traceTag.*`` attributes), a throttled turn's count, and the turn handler's
metrics of the same figures."""

from __future__ import annotations

from typing import Any

import pytest

from events.identity import LOCAL_USER
from events.inbound import ApprovalDecision, InboundMessage
from events.outbound import ApprovalRequest, TokenUsage
from tests.fakes import (
    InMemoryConversationStore,
    ManualClock,
    RecordingSink,
    RecordingStarter,
    ScriptedAgent,
    SpanRecordingTracer,
)
from workers.core import figures
from workers.core.model import TurnOutput, TurnRequest
from workers.core.ports import NullTracer
from workers.core.steps import Deps, TurnSettings, accept_message, drive_run
from workers.costs import Cost
from workers.errors import ModelThrottled
from workers.handlers import turn as turn_handler
from workers.handlers.observability import metrics

CID = "ws:alice:chat1"
TAG = figures.TAG_ATTRIBUTE_PREFIX


class CostlyAgent(ScriptedAgent):
    def run_turn(self, request: TurnRequest, *, on_chunk: Any, tracer: Any) -> TurnOutput:
        out = super().run_turn(request, on_chunk=on_chunk, tracer=tracer)
        usage = TokenUsage(input_tokens=100, output_tokens=10, cache_read_tokens=60)
        return TurnOutput(
            out.checkpoint,
            out.log,
            out.reply_text,
            out.interrupt,
            usage,
            model_calls=1,
            cost=Cost(0.25, 0.5),
            time_to_first_token_ms=12.5,
        )


def world(agent: Any, **settings: Any) -> tuple[Deps, SpanRecordingTracer, RecordingStarter]:
    tracer, starter = SpanRecordingTracer(), RecordingStarter()
    deps = Deps(
        InMemoryConversationStore(),
        agent,
        RecordingSink(),
        starter,
        ManualClock(),
        tracer,
        TurnSettings(**settings),
    )
    return deps, tracer, starter


def run_all(deps: Deps, starter: RecordingStarter) -> None:
    while starter.runs:
        drive_run(deps, starter.runs.pop(0))


def test_a_resumed_turn_shows_the_decision_as_its_input() -> None:
    deps, tracer, starter = world(ScriptedAgent())
    accept_message(deps, InboundMessage(conversation_id=CID, text="please approve-me"), LOCAL_USER)
    run_all(deps, starter)
    sink = deps.sink
    assert isinstance(sink, RecordingSink)
    ask = sink.sent[0]
    assert isinstance(ask, ApprovalRequest)
    decision = ApprovalDecision(interrupt_id=ask.interrupt_id, approved=False, reason="no")
    msg = InboundMessage(conversation_id=CID, kind="approval", approval=decision)
    accept_message(deps, msg, LOCAL_USER)
    run_all(deps, starter)
    first, resumed = tracer.named("turn")
    assert first.inputs == {"texts": ["please approve-me"]}
    assert resumed.inputs["resume"] == {"approved": False, "reason": "no"}
    assert resumed.inputs["interrupt_id"] == ask.interrupt_id and "texts" not in resumed.inputs


def test_a_turn_root_carries_its_figures_as_tag_attributes() -> None:
    deps, tracer, starter = world(CostlyAgent())
    accept_message(deps, InboundMessage(conversation_id=CID, text="hi"), LOCAL_USER)
    run_all(deps, starter)
    [root] = tracer.named("turn")
    attrs = root.attributes
    assert attrs["mlflow.llm.cost"] == {"input_cost": 0.25, "output_cost": 0.5, "total_cost": 0.75}
    assert attrs["mlflow.chat.tokenUsage"]["cache_read_input_tokens"] == 60
    assert attrs["time_to_first_token_ms"] == 12.5
    assert attrs[TAG + figures.COST_USD] == "0.75000000"
    assert attrs[TAG + figures.CACHE_READ_TOKENS] == "60"
    assert attrs[TAG + figures.TTFT_MS] == "12.500"
    assert attrs[TAG + figures.MODEL_THROTTLES] == "0"
    assert all(isinstance(v, str) for k, v in attrs.items() if k.startswith(TAG))


def test_a_throttled_turn_counts_its_throttle() -> None:
    agent = ScriptedAgent()

    def throttle(request: TurnRequest) -> None:
        raise ModelThrottled("model call throttled (ThrottlingException): Rate exceeded")

    agent.hook = throttle
    deps, tracer, starter = world(agent, retry_attempts=2, retry_base_delay=0.0)
    accept_message(deps, InboundMessage(conversation_id=CID, text="hi"), LOCAL_USER)
    run_all(deps, starter)
    roots = tracer.named("turn")
    assert len(roots) == 2
    for root in roots:
        assert isinstance(root.error, ModelThrottled)
        assert root.attributes[TAG + figures.MODEL_THROTTLES] == "1"


def test_the_turn_handler_puts_the_figures_in_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    out = CostlyAgent().run_turn(
        TurnRequest(CID, "t1", "api", [], None, None, [], []), on_chunk=None, tracer=NullTracer()
    )
    recorder = turn_handler.TurnRecorder(CostlyAgent())
    recorder.run_turn(
        TurnRequest(CID, "t2", "api", [], None, None, [], []), on_chunk=None, tracer=NullTracer()
    )
    assert len(recorder.outputs) == 1
    metrics.clear_metrics()
    try:
        turn_handler.add_turn_metrics([out])
        emitted = {name: m["Value"] for name, m in metrics.metric_set.items()}
    finally:
        metrics.clear_metrics()
    assert emitted["TurnCostUSD"] == [0.75]
    assert emitted["InputTokens"] == [100] and emitted["CacheReadTokens"] == [60]
    assert emitted["TimeToFirstTokenMs"] == [12.5] and emitted["ModelThrottles"] == [0]
