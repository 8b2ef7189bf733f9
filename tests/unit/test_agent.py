"""The support example run by the graph runner with the offline model: tools, approvals,
streaming, flat checkpoints; the model factory and the mapping of model errors."""

from __future__ import annotations

import random
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from events.identity import LOCAL_USER
from tests.fakes import InMemoryConversationStore, InMemoryTicketStore, ManualClock
from tests.turns import Conversation
from workers.agent.models import make_model, map_model_error
from workers.agent.offline import OfflineChatModel
from workers.agent.runner import GraphTurnAgent
from workers.agent.saver import StagedCheckpointSaver
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.errors import ConfigError, PermanentError, RetryableError


def support(
    model: Any = None, *, approval_tools: str | None = None, window: int = 20
) -> tuple[Conversation, InMemoryTicketStore]:
    """The bundled support example, as ``agentworker serve`` builds it by default."""
    tickets = InMemoryTicketStore()
    settings = load_settings(approval_tools=approval_tools)
    agent = build_agent(settings, tickets, ManualClock(), model or OfflineChatModel())
    assert isinstance(agent, GraphTurnAgent)
    return Conversation(agent, window=window, conversation_id="ticket:1"), tickets


def test_plain_answer_with_usage_and_streaming() -> None:
    c, _ = support()
    out = c.turn("hello")
    assert out.reply_text is not None and "You said: hello" in out.reply_text
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0 and out.model_calls == 1
    assert "".join(c.chunks) == out.reply_text
    assert [e.role for e in out.log] == ["human", "ai"]
    assert out.log[0].message_id == "m1-0"  # the inbox message's id


def test_tool_call_creates_a_ticket() -> None:
    c, tickets = support()
    out = c.turn("Please open a ticket about the login page being slow")
    assert out.tool_calls == ["create_ticket"]
    ticket = tickets.get_ticket(1, customer="")
    assert ticket is not None and ticket.subject == "the login page being slow"
    assert ticket.conversation_id == "ticket:1"
    assert out.reply_text == "Opened ticket 1: 'the login page being slow' (priority normal)."


class RandomIdsModel(OfflineChatModel):
    """Like a real model retried after a throttle: new tool-call ids on every call."""

    def _respond(self, messages: list[Any], kwargs: dict[str, Any]) -> AIMessage:
        reply = super()._respond(messages, kwargs)
        calls = [{**c, "id": f"call_{random.getrandbits(64):x}"} for c in reply.tool_calls]
        return AIMessage(
            content=reply.content,
            tool_calls=calls,
            usage_metadata=reply.usage_metadata,
            id=f"run-{random.getrandbits(64):x}",
        )


def test_a_retried_turn_repeats_no_side_effect_though_the_model_makes_new_ids() -> None:
    c, tickets = support(RandomIdsModel())
    first = c.request("open a ticket about X")
    out1 = c.run(first, commit=False)  # e.g. the commit lost the lease, or a throttle later
    out2 = c.run(first)  # the same turn again, from the same checkpoint
    assert out1.reply_text == out2.reply_text == "Opened ticket 1: 'X' (priority normal)."
    assert tickets.get_ticket(2, customer="") is None
    again = c.turn("open a ticket about X")  # a new message asking again is a new effect
    assert again.reply_text == "Opened ticket 2: 'X' (priority normal)."


def test_identical_calls_in_one_turn_are_distinct_effects() -> None:
    from workers.agent.sdk import TurnInfo

    info = TurnInfo("c", "t", "api", ("m1",), "ckpt-1")
    a, b = info.idempotency_key("t", {"x": 1}), info.idempotency_key("t", {"x": 1})
    assert a != b
    again = TurnInfo("c", "t2", "api", ("m1",), "ckpt-1")
    assert again.idempotency_key("t", {"x": 1}) == a  # a retry: another turn id, same keys
    assert TurnInfo("c", "t", "api", ("m2",), "ckpt-1").idempotency_key("t", {"x": 1}) != a
    assert TurnInfo("c", "t", "api", ("m1",), "ckpt-2").idempotency_key("t", {"x": 1}) != a


def test_approval_interrupts_then_resumes_with_command() -> None:
    c, tickets = support()
    c.turn("open a ticket about printers")
    ask = c.turn("close ticket 1")
    assert ask.reply_text is None and ask.interrupt is not None
    approval = ask.interrupt.approval
    assert approval is not None and approval.tool == "update_ticket"
    assert approval.args == {"ticket_id": 1, "status": "closed"}
    assert approval.text == "May I set status to closed on ticket 1?"
    ticket = tickets.get_ticket(1, customer="")
    assert ticket is not None and ticket.status == "open"  # nothing done before approval
    done = c.turn(resume={"approved": True, "reason": ""})
    assert done.reply_text is not None and "is closed" in done.reply_text
    assert [e.role for e in done.log] == ["tool", "ai"]  # earlier messages not logged twice


def test_denial_runs_nothing() -> None:
    c, tickets = support()
    c.turn("open a ticket about printers")
    ask = c.turn("escalate ticket 1")
    assert ask.interrupt is not None
    out = c.turn(resume={"approved": False, "reason": "not now"})
    assert out.reply_text is not None and "denied" in out.reply_text
    ticket = tickets.get_ticket(1, customer="")
    assert ticket is not None and ticket.priority == "normal"


def test_approval_tools_setting_turns_approvals_off_or_on() -> None:
    c, tickets = support(approval_tools="")
    c.turn("open a ticket about printers")
    out = c.turn("close ticket 1")
    assert out.interrupt is None and out.reply_text is not None and "is closed" in out.reply_text
    c, _ = support(approval_tools="create_ticket")
    asked = c.turn("open a ticket about printers")
    assert asked.interrupt is not None and asked.interrupt.approval is not None
    assert asked.interrupt.approval.tool == "create_ticket"


def test_tool_errors_are_answers_not_crashes() -> None:
    c, _ = support()
    out = c.turn("what is the status of ticket 42")
    assert out.reply_text == "That did not work: Ticket 42 does not exist."


def test_faq_and_time_tools() -> None:
    c, _ = support()
    faq = c.turn("How do I reset my password?")
    assert faq.reply_text is not None and "Reset password" in faq.reply_text
    now = c.turn("what time is it")
    assert now.reply_text is not None and now.reply_text.startswith("It is ")


def test_checkpoint_size_does_not_grow_with_the_conversation() -> None:
    c, _ = support()
    sizes = [len(c.turn(f"message {i} about my order").checkpoint) for i in range(60)]
    assert max(sizes[40:]) <= max(sizes[12:20]) + 64
    assert len(c.log) == 120  # the full history is in the log


def test_context_comes_from_the_log_window() -> None:
    c, _ = support(window=20)
    for i in range(5):
        c.turn(f"m{i}")
    out = c.turn("again")
    # 6 user messages visible: 5 from the log window, 1 current
    assert out.reply_text is not None and "[message 6 in" in out.reply_text
    for i in range(10):
        c.turn(f"n{i}")
    out = c.turn("late")
    # the window holds the last 20 logged messages: 10 turns, and the current message
    assert out.reply_text is not None and "[message 11 in" in out.reply_text


def test_a_window_never_starts_with_an_orphan_tool_result() -> None:
    c, _ = support(window=5)
    c.turn("hello")
    c.turn("open a ticket about A")  # human, ai (tool call), tool, ai
    c.turn("hello again")
    # the last 5 logged messages begin with the tool call of "open a ticket": cut away
    first = c.values()["messages"][0]
    assert isinstance(first, HumanMessage) and first.text == "hello again"
    c.window = 3  # no user message in reach: the tool call and its result go too
    first = c.values()["messages"][0]
    assert not isinstance(first, ToolMessage)
    assert not (isinstance(first, AIMessage) and first.tool_calls)


def test_offline_model_is_deterministic() -> None:
    model = OfflineChatModel()
    a = model.invoke([HumanMessage("hi")])
    b = model.invoke([HumanMessage("hi")])
    assert isinstance(a, AIMessage) and a.content == b.content and a.id == b.id


def test_model_specs() -> None:
    assert isinstance(make_model("offline"), OfflineChatModel)
    slow = make_model("offline:250")
    assert isinstance(slow, OfflineChatModel) and slow.latency_s == 0.25
    with pytest.raises(ConfigError, match="AGENTWORKER_MODEL='gpt-9'"):
        make_model("gpt-9")
    with pytest.raises(ConfigError, match="AGENTWORKER_MODEL"):
        load_settings(model="bedrock:")


def test_a_missing_provider_package_names_the_extra() -> None:
    with pytest.raises(ConfigError) as caught:
        make_model("anthropic:claude-sonnet-4-5")
    assert "pip install 'agentworker[anthropic]'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_credential_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="set OPENAI_API_KEY"):
        make_model("openai:gpt-4o-mini")


def test_bedrock_without_a_region_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no AWS region for Bedrock"):
        make_model("bedrock:anthropic.claude-3-5-haiku-20241022-v1:0")


class _ClientError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class _HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


class APITimeoutError(Exception):
    """Named like the openai and anthropic SDKs' timeout error."""


def test_model_errors_map_to_typed_errors() -> None:
    assert isinstance(map_model_error(_ClientError("ThrottlingException")), RetryableError)
    assert isinstance(map_model_error(_ClientError("ValidationException")), PermanentError)
    for status in (429, 500, 503, 529):
        assert isinstance(map_model_error(_HttpError(status)), RetryableError), status
    for status in (400, 401, 404):
        assert isinstance(map_model_error(_HttpError(status)), PermanentError), status
    assert isinstance(map_model_error(APITimeoutError("slow")), RetryableError)
    other = ValueError("x")
    assert map_model_error(other) is other


def test_bedrock_spec_builds_a_converse_client_without_calling_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from langchain_aws import ChatBedrockConverse

    from workers.agent.models import ModelOptions

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for spec in (
        "bedrock:anthropic.claude-3-5-haiku-20241022-v1:0",
        "bedrock_converse:anthropic.claude-3-5-haiku-20241022-v1:0",
    ):
        model = make_model(
            spec, ModelOptions(region="us-east-1", endpoint_url="http://127.0.0.1:9")
        )
        assert isinstance(model, ChatBedrockConverse)
        assert model.model_id == "anthropic.claude-3-5-haiku-20241022-v1:0"
        assert model.endpoint_url == "http://127.0.0.1:9"


class _TalkativeModel(OfflineChatModel):
    """Says something before calling a tool, like Claude often does."""

    def _respond(self, messages: list[Any], kwargs: dict[str, Any]) -> AIMessage:
        reply = super()._respond(messages, kwargs)
        if reply.tool_calls:
            return AIMessage(
                content="Let me open that for you.",
                tool_calls=reply.tool_calls,
                usage_metadata=reply.usage_metadata,
                id=reply.id,
            )
        return reply


def test_every_model_call_streams_and_the_reply_is_what_streamed() -> None:
    c, _ = support(_TalkativeModel())
    out = c.turn("open a ticket about the wifi")
    assert out.reply_text == (
        "Let me open that for you.\n\nOpened ticket 1: 'the wifi' (priority normal)."
    )
    assert "".join(c.chunks) == out.reply_text
    assert out.model_calls == 2 and out.tool_calls == ["create_ticket"]


def test_no_stream_no_chunks() -> None:
    c, _ = support()
    out = c.turn("hello", stream=False)
    assert out.reply_text is not None and c.chunks == []


def test_checkpoints_of_the_old_format_are_read_with_the_log_window() -> None:
    import ormsgpack

    saver = StagedCheckpointSaver()
    old = ormsgpack.unpackb(support()[0].turn("hi").checkpoint)
    old["v"] = 1  # as written before messages became references: inline, current turn only
    ns = old["ns"][""]
    history = [HumanMessage("earlier", id="e1"), AIMessage("answer", id="e2")]
    checkpoint = saver.serde.loads_typed((ns["c"][0], ns["c"][1]))
    checkpoint["channel_values"]["messages"] = [HumanMessage("hi", id="h")]
    ns["c"] = list(saver.serde.dumps_typed(checkpoint))
    del ns["msgs"]
    saver.stage("k", ormsgpack.packb(old), history)
    assert [m.id for m in saver.messages("k")] == ["e1", "e2", "h"]


THROTTLED: list[str] = []


class ThrottledAfterTheTool(RandomIdsModel):
    """Throttled once, on the call after a tool ran: the workflow retries the whole turn,
    and the retried model makes up new tool-call ids."""

    def _respond(self, messages: list[Any], kwargs: dict[str, Any]) -> AIMessage:
        if isinstance(messages[-1], ToolMessage) and not THROTTLED:
            THROTTLED.append(messages[-1].tool_call_id)
            raise RetryableError("ThrottlingException: slow down")
        return super()._respond(messages, kwargs)


def test_a_turn_retried_by_the_run_after_a_throttle_opens_one_ticket() -> None:
    from events.inbound import InboundMessage
    from tests.fakes import RecordingSink, RecordingStarter
    from workers.core.steps import Deps, TurnSettings, accept_message, drive_run

    THROTTLED.clear()
    store, tickets = InMemoryConversationStore(), InMemoryTicketStore()
    clock = ManualClock()
    agent = build_agent(load_settings(), tickets, clock, ThrottledAfterTheTool())
    sink, starter = RecordingSink(), RecordingStarter()
    deps = Deps(store, agent, sink, starter, clock, settings=TurnSettings(retry_base_delay=0.0))
    accept_message(
        deps, InboundMessage(conversation_id="ws:9", text="open a ticket about X"), LOCAL_USER
    )
    summary = drive_run(deps, starter.runs.pop())
    assert THROTTLED and summary.turns == 1
    assert [p.text for p in sink.sent] == ["Opened ticket 1: 'X' (priority normal)."]
    assert (
        tickets.get_ticket(1, customer="local/local") is not None  # the local user's
        and tickets.get_ticket(2, customer="local/local") is None
    )
