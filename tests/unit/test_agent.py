"""The LangGraph agent with the offline model: tools, approvals, small checkpoints."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from tests.fakes import InMemoryConversationStore, ManualClock
from workers.agent.models import make_model, map_model_error
from workers.agent.offline import OfflineChatModel
from workers.agent.prompts import load_system_prompt
from workers.agent.runner import LangGraphTurnAgent
from workers.agent.tools import SUPPORT_TOOLS
from workers.core.model import ApprovalDecisionRecord, LogEntry, TurnOutput, TurnRequest
from workers.core.ports import NullTracer
from workers.errors import ConfigError, PermanentError, RetryableError

CID = "ticket:1"


class Conversation:
    """Feeds each turn the previous checkpoint and log, like the core does."""

    def __init__(self, approval_tools: frozenset[str] = frozenset({"update_ticket"})) -> None:
        self.tickets = InMemoryConversationStore()
        self.agent = LangGraphTurnAgent(
            OfflineChatModel(),
            SUPPORT_TOOLS,
            system_prompt=load_system_prompt("v1"),
            approval_tools=approval_tools,
            tickets=self.tickets,
            clock=ManualClock(),
        )
        self.checkpoint: bytes | None = None
        self.log: list[LogEntry] = []
        self.n = 0
        self.chunks: list[str] = []

    def turn(
        self, text: str = "", resume: ApprovalDecisionRecord | None = None, *, commit: bool = True
    ) -> TurnOutput:
        self.n += 1
        request = TurnRequest(
            CID,
            f"t{self.n}",
            "api",
            [text] if text else [],
            resume,
            self.checkpoint,
            self.log[-20:],
        )
        out = self.agent.run_turn(request, on_chunk=self.chunks.append, tracer=NullTracer())
        if commit:
            self.checkpoint = out.checkpoint
            self.log.extend(out.log)
        return out


def test_plain_answer_with_usage_and_streaming() -> None:
    c = Conversation()
    out = c.turn("hello")
    assert out.reply_text is not None and "You said: hello" in out.reply_text
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    assert "".join(c.chunks) == out.reply_text
    assert [e.role for e in out.log] == ["human", "ai"]


def test_tool_call_creates_a_ticket() -> None:
    c = Conversation()
    out = c.turn("Please open a ticket about the login page being slow")
    assert out.tool_calls == ["create_ticket"]
    ticket = c.tickets.get_ticket(1)
    assert ticket is not None and ticket.subject == "the login page being slow"
    assert out.reply_text == "Opened ticket 1: 'the login page being slow' (priority normal)."


def test_a_retried_turn_repeats_no_side_effect() -> None:
    c = Conversation()
    c.turn("open a ticket about X", commit=False)  # e.g. the commit lost the lease
    c.n = 0  # same turn again, from the same checkpoint
    c.turn("open a ticket about X")
    assert c.tickets.get_ticket(2) is None


def test_approval_interrupts_then_resumes_with_command() -> None:
    c = Conversation()
    c.turn("open a ticket about printers")
    ask = c.turn("close ticket 1")
    assert ask.reply_text is None and ask.approval is not None
    assert ask.approval.tool == "update_ticket"
    assert ask.approval.args == {"ticket_id": 1, "status": "closed"}
    assert ask.approval.text == "May I set status to closed on ticket 1?"
    ticket = c.tickets.get_ticket(1)
    assert ticket is not None and ticket.status == "open"  # nothing done before approval
    done = c.turn(resume=ApprovalDecisionRecord(ask.approval.interrupt_id, True, ""))
    assert done.reply_text is not None and "is closed" in done.reply_text
    assert [e.role for e in done.log] == ["tool", "ai"]  # earlier messages not logged twice


def test_denial_runs_nothing() -> None:
    c = Conversation()
    c.turn("open a ticket about printers")
    ask = c.turn("escalate ticket 1")
    assert ask.approval is not None
    out = c.turn(resume=ApprovalDecisionRecord(ask.approval.interrupt_id, False, "not now"))
    assert out.reply_text is not None and "denied" in out.reply_text
    ticket = c.tickets.get_ticket(1)
    assert ticket is not None and ticket.priority == "normal"


def test_tool_errors_are_answers_not_crashes() -> None:
    c = Conversation()
    out = c.turn("what is the status of ticket 42")
    assert out.reply_text == "That did not work: Ticket 42 does not exist."


def test_faq_and_time_tools() -> None:
    c = Conversation()
    faq = c.turn("How do I reset my password?")
    assert faq.reply_text is not None and "Reset password" in faq.reply_text
    now = c.turn("what time is it")
    assert now.reply_text is not None and now.reply_text.startswith("It is ")


def test_checkpoint_size_does_not_grow_with_the_conversation() -> None:
    c = Conversation()
    sizes = [len(c.turn(f"message {i} about my order").checkpoint) for i in range(60)]
    assert max(sizes[40:]) <= max(sizes[:10]) + 64
    assert len(c.log) == 120  # the full history is in the log


def test_context_comes_from_the_log_window() -> None:
    c = Conversation()
    for i in range(5):
        c.turn(f"m{i}")
    out = c.turn("again")
    # 6 user messages visible: 5 from the log window, 1 current
    assert out.reply_text is not None and "[message 6 in" in out.reply_text


def test_log_window_never_starts_with_an_orphan_tool_result() -> None:
    c = Conversation()
    c.turn("open a ticket about A")
    entries = c.log[2:]  # starts at the tool call's AI message: cut mid-turn
    decoded = c.agent.decode_log(entries)
    assert decoded == [] or isinstance(decoded[0], HumanMessage)


def test_offline_model_is_deterministic() -> None:
    model = OfflineChatModel()
    a = model.invoke([HumanMessage("hi")])
    b = model.invoke([HumanMessage("hi")])
    assert isinstance(a, AIMessage) and a.content == b.content and a.id == b.id


def test_model_specs() -> None:
    assert isinstance(make_model("offline"), OfflineChatModel)
    slow = make_model("offline:250")
    assert isinstance(slow, OfflineChatModel) and slow.latency_s == 0.25
    with pytest.raises(ConfigError, match="AGENTWORKER_MODEL"):
        make_model("gpt-9")


class _ClientError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


def test_model_errors_map_to_typed_errors() -> None:
    assert isinstance(map_model_error(_ClientError("ThrottlingException")), RetryableError)
    assert isinstance(map_model_error(_ClientError("ValidationException")), PermanentError)
    other = ValueError("x")
    assert map_model_error(other) is other


def test_unknown_prompt_version_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="AGENTWORKER_PROMPT_VERSION"):
        load_system_prompt("v999")


def test_bedrock_spec_builds_a_converse_client_without_calling_it() -> None:
    from langchain_aws import ChatBedrockConverse

    from workers.agent.models import ModelOptions

    model = make_model(
        "bedrock:anthropic.claude-3-5-haiku-20241022-v1:0",
        ModelOptions(region="us-east-1", endpoint_url="http://127.0.0.1:9"),
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


def test_streamed_text_is_exactly_the_stored_reply() -> None:
    c = Conversation()
    c.agent = LangGraphTurnAgent(
        _TalkativeModel(),
        SUPPORT_TOOLS,
        system_prompt=load_system_prompt("v1"),
        approval_tools=frozenset(),
        tickets=c.tickets,
        clock=ManualClock(),
    )
    out = c.turn("open a ticket about the wifi")
    assert (
        out.reply_text
        == "Let me open that for you.\n\nOpened ticket 1: 'the wifi' (priority normal)."
    )
    assert "".join(c.chunks) == out.reply_text
