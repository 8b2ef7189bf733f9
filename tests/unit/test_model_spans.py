"""Model and tool spans in MLflow's chat format, token usage with the prompt cache, cost."""

from __future__ import annotations

import json
import logging
from uuid import uuid4

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from events.outbound import TokenUsage
from tests.fakes import InMemoryTicketStore, ManualClock, SpanRecordingTracer
from tests.turns import Conversation
from workers.agent.callbacks import MAX_CONTENT_CHARS, TurnCallbacks, chat_tools
from workers.agent.offline import OfflineChatModel
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.core import figures
from workers.costs import DEFAULT_PRICES, UNPRICED, Cost, ModelPrice, cost_of, price_for

PRICE = ModelPrice(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)


def reply(text: str = "", **usage: object) -> LLMResult:
    message = AIMessage(text, usage_metadata=usage) if usage else AIMessage(text)
    return LLMResult(generations=[[ChatGeneration(message=message)]])


# costs ---------------------------------------------------------------------------------------


def test_cache_reads_and_writes_are_priced_apart() -> None:
    usage = TokenUsage(
        input_tokens=1_000_000 + 2_000_000 + 4_000_000,
        output_tokens=500_000,
        cache_read_tokens=2_000_000,
        cache_write_tokens=4_000_000,
    )
    cost = cost_of(usage, PRICE)
    assert cost.input_cost == pytest.approx(1 * 3.0 + 2 * 0.3 + 4 * 3.75)
    assert cost.output_cost == pytest.approx(0.5 * 15.0)
    assert cost.as_attribute()["total_cost"] == pytest.approx(cost.input_cost + cost.output_cost)
    uncached = cost_of(TokenUsage(input_tokens=7_000_000, output_tokens=500_000), PRICE)
    assert uncached.input_cost == pytest.approx(7 * 3.0)


def test_a_cross_region_profile_is_priced_as_its_model_and_unknown_models_not_at_all() -> None:
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    assert price_for("us." + model, DEFAULT_PRICES) == DEFAULT_PRICES[model]
    assert price_for("global." + model, DEFAULT_PRICES) == DEFAULT_PRICES[model]
    assert price_for("vendor.model-x", DEFAULT_PRICES) is None
    assert price_for(None, DEFAULT_PRICES) is None
    offline = DEFAULT_PRICES["offline"]
    assert cost_of(TokenUsage(input_tokens=10, output_tokens=10), offline).total_cost == 0


def test_prices_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AGENTWORKER_PRICES", json.dumps({"vendor.model-x": {"input": 1, "output": 2}})
    )
    settings = load_settings()
    assert settings.prices["vendor.model-x"] == ModelPrice(input=1, output=2)
    monkeypatch.setenv("AGENTWORKER_PRICES", json.dumps({"m": {"input": -1, "output": 2}}))
    from workers.errors import ConfigError

    with pytest.raises(ConfigError, match="PRICES"):
        load_settings()


# model spans, callback by callback ------------------------------------------------------------


def test_a_model_span_holds_the_chat_the_tools_and_the_reply() -> None:
    tracer = SpanRecordingTracer()
    callbacks = TurnCallbacks(tracer, {"m1": PRICE})
    run = uuid4()
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Find", "parameters": {}},
        },
        {
            "toolSpec": {
                "name": "create",
                "description": "Make",
                "inputSchema": {"json": {"type": "object"}},
            }
        },
    ]
    history = [
        SystemMessage("be brief"),
        HumanMessage("status of 7?"),
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"ticket_id": 7}, "id": "c1"}]),
        ToolMessage("open", tool_call_id="c1"),
        HumanMessage("x" * (MAX_CONTENT_CHARS + 5)),
    ]
    callbacks.on_chat_model_start(
        {"name": "ChatX"},
        [history],
        run_id=run,
        metadata={"ls_model_name": "m1", "ls_provider": "amazon_bedrock"},
        invocation_params={"tools": tools},
    )
    answer = AIMessage(
        "Let me open one.",
        tool_calls=[{"name": "create", "args": {"subject": "printer"}, "id": "c2"}],
        usage_metadata={
            "input_tokens": 1000,
            "output_tokens": 100,
            "total_tokens": 1100,
            "input_token_details": {"cache_read": 600, "cache_creation": 300},
        },
    )
    callbacks.on_llm_end(LLMResult(generations=[[ChatGeneration(message=answer)]]), run_id=run)

    [span] = tracer.named("model")
    assert span.kind == "CHAT_MODEL" and span.ended
    messages = span.inputs["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[2]["content"] is None
    assert messages[2]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"ticket_id": 7}'},
        }
    ]
    assert messages[3] == {"role": "tool", "content": "open", "tool_call_id": "c1"}
    assert messages[4]["content"].endswith("... [truncated 5 chars]")
    assert len(messages[4]["content"]) < MAX_CONTENT_CHARS + 40
    attrs = span.attributes
    assert attrs["mlflow.message.format"] == "langchain"
    assert attrs["mlflow.llm.model"] == "m1" and attrs["mlflow.llm.provider"] == "amazon_bedrock"
    assert [t["function"]["name"] for t in attrs["mlflow.chat.tools"]] == ["lookup", "create"]
    assert attrs["mlflow.chat.tools"][1]["function"]["parameters"] == {"type": "object"}
    assert attrs["mlflow.chat.tokenUsage"] == {
        "input_tokens": 1000,
        "output_tokens": 100,
        "total_tokens": 1100,
        "cache_read_input_tokens": 600,
        "cache_creation_input_tokens": 300,
    }
    expected = cost_of(
        TokenUsage(
            input_tokens=1000, output_tokens=100, cache_read_tokens=600, cache_write_tokens=300
        ),
        PRICE,
    )
    assert attrs["mlflow.llm.cost"] == expected.as_attribute()
    [choice] = span.outputs["choices"]
    assert choice["message"]["content"] == "Let me open one."
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "create" and json.loads(call["arguments"]) == {"subject": "printer"}
    assert callbacks.usage.cache_read_tokens == 600 and callbacks.cost == expected
    json.dumps([span.inputs, span.outputs, span.attributes])  # plain data only


def test_an_unpriced_model_gets_no_cost_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    tracer = SpanRecordingTracer()
    callbacks = TurnCallbacks(tracer, {})
    model = f"vendor.unpriced-{uuid4().hex[:6]}"
    caplog.set_level(logging.WARNING, logger="workers.costs")
    for _ in range(2):
        run = uuid4()
        callbacks.on_chat_model_start(
            {}, [[HumanMessage("hi")]], run_id=run, metadata={"ls_model_name": model}
        )
        callbacks.on_llm_end(
            reply("hello", input_tokens=5, output_tokens=2, total_tokens=7), run_id=run
        )
    assert callbacks.cost is None and callbacks.usage.total_tokens == 14
    assert all("mlflow.llm.cost" not in s.attributes for s in tracer.named("model"))
    assert [r.getMessage() for r in caplog.records].count(
        f"no price for model {model!r}: its cost is left out of traces and stats (set"
        " AGENTWORKER_PRICES to price it)"
    ) == 1
    assert model in UNPRICED._seen


def test_anthropic_and_openai_tool_shapes_become_chat_tools() -> None:
    tools = chat_tools(
        [
            {"name": "a", "description": "A", "input_schema": {"type": "object"}},
            {"type": "function", "function": {"name": "b"}},
            "not a tool",
        ]
    )
    assert tools == [
        {
            "type": "function",
            "function": {"name": "a", "description": "A", "parameters": {"type": "object"}},
        },
        {"type": "function", "function": {"name": "b"}},
    ]


# a whole turn of the support agent on the offline model ---------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_a_turn_traces_its_model_and_tool_calls_readably(stream: bool) -> None:
    tracer = SpanRecordingTracer()
    agent = build_agent(load_settings(), InMemoryTicketStore(), ManualClock(), OfflineChatModel())
    conv = Conversation(agent, tracer=tracer)
    out = conv.turn("The printer is on fire, please open a ticket", stream=stream)

    models = tracer.named("model")
    assert len(models) == out.model_calls == 2
    first, second = models
    assert first.inputs["messages"][-1] == {
        "role": "user",
        "content": "The printer is on fire, please open a ticket",
    }
    tool_names = {t["function"]["name"] for t in first.attributes["mlflow.chat.tools"]}
    assert "create_ticket" in tool_names
    [call] = first.outputs["choices"][0]["message"]["tool_calls"]
    args = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "create_ticket" and args["subject"]
    assert [m["role"] for m in second.inputs["messages"]][-2:] == ["assistant", "tool"]
    [tool] = tracer.named("tool.create_ticket")
    assert tool.inputs == args and tool.parent is None and "1" in tool.outputs["result"]
    assert first.attributes["mlflow.llm.model"] == "offline"
    assert out.cost == Cost(0.0, 0.0)
    if stream:
        assert out.time_to_first_token_ms is not None and out.time_to_first_token_ms >= 0
        assert any("time_to_first_token_ms" in s.attributes for s in models)
    else:
        assert out.time_to_first_token_ms is None
    tags = figures.turn_figures(out)
    assert tags[figures.COST_USD] == "0.00000000"
    assert tags[figures.INPUT_TOKENS] == str(out.usage.input_tokens)
