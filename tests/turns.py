"""Drive a ``GraphTurnAgent`` turn by turn the way the core does (the checkpoint blob and the
log window carried between turns), and the same graph under LangGraph's own
``InMemorySaver``, so tests can compare the two."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph
from langgraph.types import Command

from tests.fakes import InMemoryTicketStore, ManualClock
from workers.agent.runner import GraphTurnAgent
from workers.agent.sdk import BuildContext
from workers.config import load_settings
from workers.core.model import (
    CallerValues,
    CustomData,
    LogEntry,
    MessageStarts,
    NodeUpdate,
    ResumeRecord,
    StreamPart,
    ToolsStarting,
    TurnInput,
    TurnOutput,
    TurnRequest,
)
from workers.core.ports import NullTracer, Tracer


def build_context(model: Any, **settings: Any) -> BuildContext:
    from pathlib import Path

    return BuildContext(
        model=model,
        settings=load_settings(**settings),
        prompt=None,
        approval_tools=None,
        tickets=InMemoryTicketStore(),
        clock=ManualClock(),
        app_dir=Path.cwd(),
    )


@dataclass
class Outcome:
    """What one turn showed the user, comparable across both ways of running a graph."""

    reply: str | None
    interrupt: Any
    pending: int
    """Interrupts pending after the turn."""


class Conversation:
    """A conversation of one ``GraphTurnAgent``: feeds each turn the previous checkpoint and
    the last ``window`` log entries, like the core does."""

    def __init__(
        self,
        agent: GraphTurnAgent,
        *,
        window: int = 1000,
        conversation_id: str = "c1",
        tracer: Tracer | None = None,
        customer: str = "",
    ) -> None:
        self.agent = agent
        self.customer = customer
        """Who the conversation serves (the store's scope)."""
        self.caller = CallerValues()
        """What the next turn's messages ask of the run (context, configurable, metadata)."""
        self.window = window
        self.cid = conversation_id
        self.tracer: Tracer = tracer or NullTracer()
        self.checkpoint: bytes | None = None
        self.log: list[LogEntry] = []
        self.n = 0
        self.chunks: list[str] = []
        """The streamed text of the turns so far."""
        self.custom: list[object] = []
        """What the graph wrote to its custom stream."""
        self.tools: list[tuple[str, ...]] = []
        self.updates: list[tuple[str, object]] = []
        """The tools the turns said they were about to run, in order."""
        self.last: TurnOutput | None = None

    def request(
        self, text: str = "", resume: Any = None, *, texts: list[str] | None = None
    ) -> TurnRequest:
        """The next turn's request: the user's ``texts`` (or ``text``), or ``resume``, the
        answer to the interrupt the last turn stopped at."""
        self.n += 1
        inputs: list[TurnInput] = []
        answer = None
        consumed = [f"answer{self.n}"]
        if resume is not None:
            assert self.last is not None and self.last.interrupt is not None
            answer = ResumeRecord(self.last.interrupt.interrupt_id, resume)
        else:
            inputs = [TurnInput(f"m{self.n}-{i}", t) for i, t in enumerate(texts or [text])]
            consumed = [i.message_id for i in inputs]
        history = self.log[-self.window :] if self.window else []
        return TurnRequest(
            self.cid,
            f"t{self.n}",
            "api",
            inputs,
            answer,
            self.checkpoint,
            history,
            consumed,
            customer=self.customer,
            caller=self.caller,
        )

    def turn(
        self,
        text: str = "",
        *,
        resume: Any = None,
        texts: list[str] | None = None,
        commit: bool = True,
        stream: bool = True,
    ) -> TurnOutput:
        request = self.request(text, resume, texts=texts)
        return self.run(request, commit=commit, stream=stream)

    def run(self, request: TurnRequest, *, commit: bool = True, stream: bool = True) -> TurnOutput:
        out = self.agent.run_turn(
            request, on_chunk=self._streamed if stream else None, tracer=self.tracer
        )
        if commit:
            self.checkpoint = out.checkpoint
            self.log.extend(out.log)
            self.last = out
        return out

    def _streamed(self, part: StreamPart) -> None:
        if isinstance(part, CustomData):
            self.custom.append(part.data)
        elif isinstance(part, ToolsStarting):
            self.tools.append(part.tools)
        elif isinstance(part, NodeUpdate):
            self.updates.append((part.node, part.data))
        elif not isinstance(part, MessageStarts):
            self.chunks.append(part)

    def outcome(self, out: TurnOutput) -> Outcome:
        """``out`` as the user saw it (``pending``: from the graph's state)."""
        value = out.interrupt.value if out.interrupt else None
        return Outcome(out.reply_text, value, self.pending())

    def pending(self) -> int:
        snapshot = self.agent.snapshot(self.checkpoint, self.log[-self.window :])
        return 0 if snapshot is None else len(snapshot.interrupts)

    def messages(self) -> list[BaseMessage]:
        return self.agent.decode_log(self.log)

    def values(self) -> dict[str, Any]:
        """The graph's state after the last turn (``messages`` from the log window)."""
        snapshot = self.agent.snapshot(self.checkpoint, self.log[-self.window :])
        return {} if snapshot is None else dict(snapshot.values)


@dataclass
class PlainConversation:
    """The same graph compiled with LangGraph's ``InMemorySaver``: the reference."""

    graph: StateGraph[Any, Any, Any, Any]
    thread: str = "t"
    compiled: Any = None
    pending: list[Any] = field(default_factory=list)
    n: int = 0

    def __post_init__(self) -> None:
        self.compiled = self.graph.compile(checkpointer=InMemorySaver())

    def turn(
        self, text: str = "", *, resume: Any = None, texts: list[str] | None = None
    ) -> Outcome:
        config = {"configurable": {"thread_id": self.thread}}
        self.n += 1
        graph_input: Any
        if resume is not None:
            graph_input = Command(resume={self.pending[0].id: resume})
        else:
            graph_input = {
                "messages": [
                    HumanMessage(t, id=f"m{self.n}-{i}") for i, t in enumerate(texts or [text])
                ]
            }
        before = {m.id for m in self.values().get("messages", [])}
        # ainvoke drives plain and async nodes alike
        result = asyncio.run(self.compiled.ainvoke(graph_input, config))
        self.pending = list(result.get("__interrupt__", []))
        if self.pending:
            return Outcome(None, self.pending[0].value, len(self.pending))
        fresh = [m for m in result.get("messages", []) if m.id not in before]
        texts_ = [m.text for m in fresh if isinstance(m, AIMessage) and m.text]
        return Outcome(texts_[-1] if texts_ else None, None, 0)

    def values(self) -> dict[str, Any]:
        snapshot = self.compiled.get_state({"configurable": {"thread_id": self.thread}})
        return dict(snapshot.values)


def shape(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    """Messages compared across runs: type and text (ids of AI and tool messages are random)."""
    return [(m.type, m.text) for m in messages]
