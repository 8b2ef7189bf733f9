"""LangGraph apps as their authors wrote them (``tests/langgraph_apps``), turn by turn under
agentworker and under LangGraph itself (the same compiled graph with ``InMemorySaver``):
the same replies, the same stops, the same messages, the same streamed text."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command
from pydantic_core import to_jsonable_python

from events.identity import identity_key
from tests.langgraph_apps import kitchen_sink, memory_agent, react_context, supervisor
from tests.turns import Conversation, shape
from workers.agent.runner import GraphTurnAgent, needs_event_loop
from workers.core.model import CallerValues
from workers.errors import ConfigError, PermanentError


@dataclass
class Turn:
    """What one turn showed: the reply, whether it stopped to ask, the streamed text, what
    each node of the root graph returned (``updates``), in order."""

    reply: str | None
    stopped: bool
    streamed: str
    updates: list[tuple[str, Any]]


@dataclass
class Reference:
    """The app's compiled graph under LangGraph: its own options, ``InMemorySaver``."""

    app: CompiledStateGraph[Any, Any, Any, Any]
    graph: Any = None
    thread: dict[str, Any] = field(default_factory=lambda: {"configurable": {"thread_id": "t"}})
    n: int = 0
    store: BaseStore | None = None
    context: Any = None

    def __post_init__(self) -> None:
        self.graph = self.app.copy({"checkpointer": InMemorySaver(), "store": self.store})

    def turn(self, text: str = "", *, resume: Any = None) -> Turn:
        self.n += 1
        graph_input: Any = (
            Command(resume=resume)
            if resume is not None
            else {"messages": [HumanMessage(text, id=f"m{self.n}-0")]}
        )
        before = {m.id for m in self.values().get("messages", [])}
        streamed: list[str] = []
        updates: list[tuple[str, Any]] = []

        async def drive() -> None:
            async for mode, part in self.graph.astream(
                graph_input,
                self.thread,
                stream_mode=["messages", "updates"],
                context=self.context,
            ):
                if mode == "updates":
                    updates.extend(
                        (node, without_ids(to_jsonable_python(update, fallback=str)))
                        for node, update in part.items()
                        if node != "__interrupt__"
                    )
                elif isinstance(part[0], AIMessageChunk) and part[0].text:
                    streamed.append(part[0].text)

        asyncio.run(drive())
        snapshot = self.graph.get_state(self.thread)
        if snapshot.next:
            return Turn(None, True, "".join(streamed), updates)
        fresh = [m for m in snapshot.values["messages"] if m.id not in before]
        texts = [m.text for m in fresh if isinstance(m, AIMessage) and m.text]
        return Turn(texts[-1] if texts else None, False, "".join(streamed), updates)

    def values(self) -> dict[str, Any]:
        return dict(self.graph.get_state(self.thread).values)


def ours_turn(conv: Conversation, text: str = "", *, resume: Any = None) -> Turn:
    conv.chunks.clear()
    conv.updates.clear()
    out = conv.turn(text, resume=resume)
    updates = [(node, without_ids(data)) for node, data in conv.updates]
    return Turn(out.reply_text, out.interrupt is not None, "".join(conv.chunks), updates)


RANDOM = frozenset({"id", "tool_call_id"})
"""The keys of messages whose values differ run to run (ids of AI and tool messages)."""


def without_ids(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: None if k in RANDOM else without_ids(v) for k, v in data.items()}
    if isinstance(data, list):
        return [without_ids(v) for v in data]
    return data


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
    assert [node for node, _ in done.updates] == ["tools", "call_model"]
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
    assert conv.tools == [("get_weather",)]  # said before the breakpoint stopped it


def test_the_tools_a_model_asks_for_are_announced_and_handoffs_are_not() -> None:
    react = Conversation(GraphTurnAgent(react_context.graph))
    react.turn("what is the weather in Rome?")
    assert react.tools == [("get_weather",)]
    handing_over = Conversation(GraphTurnAgent(supervisor.graph))
    handing_over.turn("a math question")
    assert ("transfer_to_math_expert",) in handing_over.tools  # the supervisor's own call
    assert all("transfer_back_to_supervisor" not in t for t in handing_over.tools)


# runtime context -----------------------------------------------------------------------------


def same_turns(ours: Conversation, theirs: Reference, *texts: str) -> None:
    for text in texts:
        assert ours_turn(ours, text) == theirs.turn(text), text
    mine, reference = ours.values(), theirs.values()
    assert shape(mine.pop("messages")) == shape(reference.pop("messages"))
    assert mine == reference


def test_the_react_template_reads_its_model_and_prompt_from_the_context() -> None:
    app: dict[str, Any] = {"system_prompt": "Be terse.", "model": "scripted/alpha"}
    agent = GraphTurnAgent(react_context.graph, context=app, context_from_callers=["model"])
    ours = Conversation(agent)
    theirs = Reference(react_context.graph, context=react_context.Context(**app))
    same_turns(ours, theirs, "hi", "what is the weather in Rome?")
    assert ours.last is not None and ours.last.reply_text == "alpha: It is sunny in Rome."
    assert "".join(ours.chunks) == "alpha: It is sunny in Rome."

    ours.caller = CallerValues(context={"model": "scripted/beta"})  # this message's choice
    theirs.context = react_context.Context(system_prompt="Be terse.", model="scripted/beta")
    same_turns(ours, theirs, "and now?")
    assert ours.last is not None and ours.last.reply_text == "[Be terse.] beta heard: and now?"


def test_the_context_defaults_and_the_environment_apply_as_under_langgraph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYSTEM_PROMPT", "From the environment.")
    out = Conversation(GraphTurnAgent(react_context.graph)).turn("hello")
    assert out.reply_text == "[From the environment.] alpha heard: hello"


def test_a_required_field_nobody_sets_stops_the_start_with_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        GraphTurnAgent(react_context.strict_graph())
    assert str(exc.value).startswith("context.user_id: Field required (the graph's")
    assert "\n" not in str(exc.value)
    # set by the app: fine; a wrong type from the app is refused at start too
    assert (
        Conversation(GraphTurnAgent(react_context.strict_graph(), context={"user_id": "u7"}))
        .turn("x")
        .reply_text
        == "plain hello, u7"
    )
    with pytest.raises(ConfigError, match="^context.tone: Input should be a valid string"):
        GraphTurnAgent(react_context.strict_graph(), context={"user_id": "u", "tone": 3})


def test_a_field_only_callers_set_is_checked_when_their_turn_runs() -> None:
    agent = GraphTurnAgent(react_context.strict_graph(), context_from_callers=["user_id"])
    conv = Conversation(agent)
    with pytest.raises(PermanentError, match="^context.user_id: Field required"):
        conv.turn("no user")
    conv.caller = CallerValues(context={"user_id": "ada"})
    assert conv.turn("with one").reply_text == "plain hello, ada"


def test_configurable_and_metadata_reach_the_graph() -> None:
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import START, MessagesState, StateGraph

    seen: list[RunnableConfig] = []

    def node(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        seen.append(config)
        return {"messages": [("ai", str(config["configurable"].get("tone")))]}

    builder = StateGraph(MessagesState)
    builder.add_node(node)
    builder.add_edge(START, "node")
    agent = GraphTurnAgent(builder, configurable={"tone": "dry", "region": "eu"})
    conv = Conversation(agent)
    conv.caller = CallerValues(configurable={"tone": "warm"}, metadata={"ticket": "77"})
    assert conv.turn("hi").reply_text == "warm"
    [config] = seen
    assert config["configurable"]["region"] == "eu"
    assert config["configurable"]["thread_id"] == "c1"
    assert config["metadata"]["ticket"] == "77"


# the store -------------------------------------------------------------------------------------


def test_the_memory_template_remembers_across_conversations_of_one_customer_only() -> None:
    context = {"user_id": "u1"}
    agent = GraphTurnAgent(memory_agent.graph, context=context)
    alice = identity_key("acme", "alice")
    reference_store = InMemoryStore()

    first = Conversation(agent, conversation_id="c1", customer=alice)
    theirs = Reference(
        memory_agent.graph, store=reference_store, context=memory_agent.Context(**context)
    )
    same_turns(first, theirs, "remember: I like dark mode", "thanks")
    assert first.last is not None

    second = Conversation(agent, conversation_id="c2", customer=alice)
    theirs_again = Reference(
        memory_agent.graph,
        store=reference_store,
        context=memory_agent.Context(**context),
        thread={"configurable": {"thread_id": "t2"}},
    )
    same_turns(second, theirs_again, "what do I like?")
    assert second.last is not None and "I like dark mode" in (second.last.reply_text or "")

    # another customer with the same user_id in its context: none of alice's memories
    bob = Conversation(agent, conversation_id="c3", customer=identity_key("acme", "bob"))
    reply = bob.turn("what do I like?").reply_text or ""
    assert "dark mode" not in reply and reply.endswith("memo heard: what do I like?")


# what streams is what is committed -------------------------------------------------------------


def reference_stream(app: Any, text: str) -> tuple[list[str], list[Any], list[Any]]:
    """LangGraph's own stream of one turn: the AI texts by message, the custom data, the
    messages in the state after it."""
    graph = app.copy({"checkpointer": InMemorySaver()})
    config = {"configurable": {"thread_id": "t"}}
    texts: dict[str, str] = {}
    custom: list[Any] = []

    async def drive() -> None:
        async for _, mode, payload in graph.astream(
            {"messages": [HumanMessage(text, id="m1-0")]},
            config,
            stream_mode=["messages", "custom"],
            subgraphs=True,
        ):
            if mode == "custom":
                custom.append(payload)
            elif isinstance(payload[0], AIMessage) and payload[0].text:
                message = payload[0]
                if message.response_metadata.get("__is_handoff_back"):
                    continue
                if isinstance(message, AIMessageChunk):
                    texts[str(message.id)] = texts.get(str(message.id), "") + message.text
                else:
                    texts.setdefault(str(message.id), message.text)

    asyncio.run(drive())
    return list(texts.values()), custom, graph.get_state(config).values["messages"]


def test_a_supervisor_turn_replies_what_streamed_and_no_handoff_bookkeeping() -> None:
    question = "a math question: 2+2?"
    conv = Conversation(GraphTurnAgent(supervisor.graph))
    out = conv.turn(question)
    texts, custom, messages = reference_stream(supervisor.graph, question)
    assert texts == [
        f"math heard: {question}",
        "supervisor: Successfully transferred back to supervisor",
    ]
    streamed = "".join(conv.chunks)
    assert streamed == "\n\n".join(texts) == out.reply_text
    assert "Transferring back" not in streamed
    # the state keeps every message, the handoff's bookkeeping included, as under LangGraph
    assert shape(conv.messages()) == shape(messages)
    assert (
        conv.custom
        == custom
        == [
            {"node": "supervisor"},
            {"node": "math_expert"},
            {"node": "supervisor"},
        ]
    )


def test_the_reply_is_the_same_whether_or_not_a_client_streams() -> None:
    conv = Conversation(GraphTurnAgent(supervisor.graph))
    quiet = conv.turn("a history question: who?", stream=False)
    assert conv.chunks == [] and conv.custom == []
    loud = Conversation(GraphTurnAgent(supervisor.graph)).turn("a history question: who?")
    assert quiet.reply_text == loud.reply_text
    assert quiet.reply_text is not None and quiet.reply_text.startswith("history heard: ")


def test_a_checkpointer_that_keeps_state_elsewhere_is_refused_at_start(tmp_path: Any) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    with (
        SqliteSaver.from_conn_string(str(tmp_path / "cp.db")) as saver,
        pytest.raises(ConfigError, match="^the graph is compiled with checkpointer=SqliteSaver"),
    ):
        GraphTurnAgent(kitchen_sink.builder.compile(checkpointer=saver))
    # an in-memory one (an app's own tests compile so) is replaced
    agent = GraphTurnAgent(kitchen_sink.builder.compile(checkpointer=InMemorySaver()))
    assert agent.graph.checkpointer is agent.saver
