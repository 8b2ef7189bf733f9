"""Bedrock prompt caching end to end: the model ``make_model`` builds puts ``cachePoint``
blocks on the wire (``ChatBedrockConverse`` against the Converse stub), the stub's cache
reports reads and writes, and the turn's spans and cost price them apart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from events.outbound import TokenUsage
from support_agent.graph import system_prompt
from tests.fakes import InMemoryTicketStore, ManualClock, SpanRecordingTracer
from tests.turns import Conversation
from workers.agent.caching import CachingChatBedrockConverse
from workers.agent.models import ModelOptions, make_model, supports_prompt_caching
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.costs import DEFAULT_PRICES, cost_of
from workers.sandbox.converse_stub import ConverseStubServer, ToolUse

MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConverseStubServer]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with ConverseStubServer() as server:
        yield server


def options(stub: ConverseStubServer, *, caching: bool = True) -> ModelOptions:
    return ModelOptions(region="us-east-1", endpoint_url=stub.endpoint_url, prompt_caching=caching)


def test_the_supported_models_are_listed_in_one_place() -> None:
    assert supports_prompt_caching(MODEL_ID)
    assert supports_prompt_caching("us.anthropic.claude-sonnet-4-20250514-v1:0")
    assert supports_prompt_caching("amazon.nova-lite-v1:0")
    assert not supports_prompt_caching("anthropic.claude-3-haiku-20240307-v1:0")
    assert not supports_prompt_caching("meta.llama3-70b-instruct-v1:0")


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_cache_points_go_out_and_cache_tokens_are_priced_apart(
    stub: ConverseStubServer, stream: bool
) -> None:
    model = make_model(f"bedrock:{MODEL_ID}", options(stub))
    assert isinstance(model, CachingChatBedrockConverse)
    tracer = SpanRecordingTracer()
    agent = build_agent(load_settings(), InMemoryTicketStore(), ManualClock(), model)
    conv = Conversation(agent, tracer=tracer, conversation_id="ticket:1")
    stub.script(tool_calls=[ToolUse("create_ticket", {"subject": "Printer", "body": "On fire"})])
    stub.script(reply_text="I opened ticket 1 for you.")

    out = conv.turn("The printer is on fire, please open a ticket", stream=stream)
    again = conv.turn("Thanks! And how long until someone looks at it?", stream=stream)

    first, second, third = stub.requests
    assert first.system_text == system_prompt()
    for request in stub.requests:
        assert request.cache_points["system"] == 1 and request.cache_points["tools"] == 1
        assert request.cache_points["messages"] >= 1
    [m1, m2] = tracer.named("model")[:2]
    u1, u2 = (m.attributes["mlflow.chat.tokenUsage"] for m in (m1, m2))
    # The first call writes its whole prompt; the tool loop's next call reads it back.
    assert u1["cache_creation_input_tokens"] > 0 and u1.get("cache_read_input_tokens", 0) == 0
    assert u2["cache_read_input_tokens"] == u1["cache_creation_input_tokens"]
    assert out.usage.cache_read_tokens == u2["cache_read_input_tokens"]
    price = DEFAULT_PRICES[MODEL_ID]
    expected = cost_of(out.usage, price)
    assert out.cost is not None
    assert out.cost.input_cost == pytest.approx(expected.input_cost)
    assert out.cost.total_cost == pytest.approx(expected.total_cost)
    undiscounted = out.usage.input_tokens * price.input + out.usage.output_tokens * price.output
    assert out.cost.total_cost * 1e6 != pytest.approx(undiscounted)
    assert m2.attributes["mlflow.llm.cost"] == cost_of(conv_usage(u2), price).as_attribute()
    # The next turn starts with the history the last turn cached.
    assert again.usage.cache_read_tokens > 0 and third.streaming == stream


def conv_usage(usage: dict[str, int]) -> TokenUsage:
    return TokenUsage(
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        cache_read_tokens=usage.get("cache_read_input_tokens", 0),
        cache_write_tokens=usage.get("cache_creation_input_tokens", 0),
    )


def test_without_prompt_caching_no_cache_point_goes_out(stub: ConverseStubServer) -> None:
    model = make_model(f"bedrock:{MODEL_ID}", options(stub, caching=False))
    assert not isinstance(model, CachingChatBedrockConverse)
    model.invoke("hello")
    [request] = stub.requests
    assert request.cache_points == {"system": 0, "tools": 0, "messages": 0}
