"""LangGraph apps as their authors wrote them (``tests/langgraph_apps``), turn by turn under
agentworker and under LangGraph itself (the same compiled graph with ``InMemorySaver``):
the same replies, the same stops, the same messages, the same streamed text."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from tests.langgraph_apps import kitchen_sink
from tests.turns import Conversation, shape
from workers.agent.runner import GraphTurnAgent, needs_event_loop


@dataclass
class Turn:
    """What one turn showed: the reply, whether it stopped to ask, the streamed text."""

    reply: str | None
    stopped: bool
    streamed: str


@dataclass
class Reference:
    """The app's compiled graph under LangGraph: its own options, ``InMemorySaver``."""

    app: CompiledStateGraph[Any, Any, Any, Any]
    graph: Any = None
    thread: dict[str, Any] = field(default_factory=lambda: {"configurable": {"thread_id": "t"}})
    n: int = 0

    def __post_init__(self) -> None:
        self.graph = self.app.copy({"checkpointer": InMemorySaver()})

    def turn(self, text: str = "", *, resume: Any = None) -> Turn:
        self.n += 1
        graph_input: Any = (
            Command(resume=resume)
            if resume is not None
            else {"messages": [HumanMessage(text, id=f"m{self.n}-0")]}
        )
        before = {m.id for m in self.values().get("messages", [])}
        streamed: list[str] = []

        async def drive() -> None:
            async for message, _ in self.graph.astream(
                graph_input, self.thread, stream_mode="messages"
            ):
                if isinstance(message, AIMessageChunk) and message.text:
                    streamed.append(message.text)

        asyncio.run(drive())
        snapshot = self.graph.get_state(self.thread)
        if snapshot.next:
            return Turn(None, True, "".join(streamed))
        fresh = [m for m in snapshot.values["messages"] if m.id not in before]
        texts = [m.text for m in fresh if isinstance(m, AIMessage) and m.text]
        return Turn(texts[-1] if texts else None, False, "".join(streamed))

    def values(self) -> dict[str, Any]:
        return dict(self.graph.get_state(self.thread).values)


def ours_turn(conv: Conversation, text: str = "", *, resume: Any = None) -> Turn:
    conv.chunks.clear()
    out = conv.turn(text, resume=resume)
    return Turn(out.reply_text, out.interrupt is not None, "".join(conv.chunks))


def test_compile_options_are_kept_a_breakpoint_stops_and_any_answer_continues() -> None:
    app = kitchen_sink.graph
    agent = GraphTurnAgent(app)
    assert agent.graph.name == "Kitchen sink"
    assert agent.graph.interrupt_before_nodes == ["tools"]
    ours, theirs = Conversation(agent), Reference(app)

    asked = ours_turn(ours, "what is the weather in Paris?")
    assert asked == theirs.turn("what is the weather in Paris?")
    assert asked.stopped and asked.reply is None
    assert ours.last is not None and ours.last.interrupt is not None
    stop = ours.last.interrupt
    assert stop.value == {"breakpoint": ["tools"], "question": "Paused before tools: continue?"}
    assert stop.interrupt_id.startswith("breakpoint-")

    done = ours_turn(ours, resume="go on")
    assert done == theirs.turn(resume="go on")
    assert done.reply == "scripted: It is sunny in Paris."
    assert ours_turn(ours, "thanks") == theirs.turn("thanks")
    mine, reference = ours.values(), theirs.values()
    assert shape(mine.pop("messages")) == shape(reference.pop("messages"))
    assert mine == reference


def test_an_async_only_tool_runs_next_to_sync_nodes() -> None:
    assert needs_event_loop(kitchen_sink.builder)
    conv = Conversation(GraphTurnAgent(kitchen_sink.graph))
    conv.turn("weather in Oslo")
    out = conv.turn(resume=True)
    assert out.reply_text == "scripted: It is sunny in Oslo."
