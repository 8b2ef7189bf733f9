"""The graph contract: any graph with a ``messages`` channel behaves under agentworker exactly
as under LangGraph's own ``InMemorySaver``: the same replies, the same interrupts (asked one
per turn), the same state after every script, other channels included. Run on test-only
graphs (custom state, async nodes, a subgraph that interrupts, a ``Send`` fan-out with one
interrupting branch, two parallel interrupts) and on both bundled examples."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from langgraph.graph import StateGraph

from events.identity import LOCAL_USER
from tests import graphs
from tests.fakes import InMemoryTicketStore, ManualClock
from tests.turns import Conversation, PlainConversation, build_context, shape
from workers.agent.offline import OfflineChatModel
from workers.agent.runner import GraphTurnAgent
from workers.core.ports import NullSpan, NullTracer
from workers.errors import PermanentError

Step = str | dict[str, Any]
"""A user message, or ``{"resume": value}`` (answers the first pending interrupt), or
``{"texts": [...]}`` (several messages in one turn, as the ``merge`` policy sends them)."""


def compare(factory: Callable[[], StateGraph[Any, Any, Any, Any]], script: list[Step]) -> None:
    ours = Conversation(GraphTurnAgent(factory()))
    plain = PlainConversation(factory())
    for n, step in enumerate(script, 1):
        kwargs: dict[str, Any] = step if isinstance(step, dict) else {"text": step}
        assert ours.outcome(ours.turn(**kwargs)) == plain.turn(**kwargs), f"turn {n}: {step}"
    mine, theirs = ours.values(), plain.values()
    assert shape(mine.pop("messages", [])) == shape(theirs.pop("messages", []))
    assert mine == theirs


def test_custom_channels_persist_across_turns() -> None:
    compare(graphs.custom_state_graph, ["hi", "there", {"texts": ["a", "b"]}, "again"])


def test_async_nodes_run() -> None:
    compare(graphs.async_graph, ["x", "y", "z"])


def test_a_subgraph_that_interrupts_resumes_inside() -> None:
    compare(graphs.subgraph_interrupt_graph, ["q1", {"resume": "ann"}, "q2", {"resume": "bob"}])


def test_a_send_fan_out_keeps_the_finished_branches_while_one_waits() -> None:
    compare(graphs.send_fanout_graph, ["a askb c askd", {"resume": 1}, {"resume": 2}, "e f"])


def test_parallel_interrupts_are_answered_one_per_turn() -> None:
    compare(graphs.parallel_interrupts_graph, ["go", {"resume": "A"}, {"resume": {"b": [1]}}])


def _support() -> StateGraph[Any, Any, Any, Any]:
    from support_agent.graph import build

    return build(build_context(OfflineChatModel()))


def _triage() -> StateGraph[Any, Any, Any, Any]:
    from triage_bot.graph import build

    return build(build_context(OfflineChatModel()))


def test_the_support_example() -> None:
    compare(
        _support,
        [
            "hello",
            "Please open a ticket about the wifi",
            "close ticket 1",
            {"resume": {"approved": True, "reason": ""}},
            "escalate ticket 1",
            {"resume": {"approved": False, "reason": "no"}},
            "what time is it",
        ],
    )


def test_the_triage_example() -> None:
    compare(
        _triage,
        [
            "Hello there",
            {"resume": "it is about my invoice"},
            "The app crashes at login, urgent!",
            "and it is slow",
            "one more thing",
        ],
    )


def test_a_node_of_the_apps_own_streams_its_model_output() -> None:
    agent = GraphTurnAgent(graphs.model_node_graph(OfflineChatModel()))
    conv = Conversation(agent)
    out = conv.turn("tell me something")
    assert out.reply_text is not None and out.reply_text.startswith("(offline model) You said")
    assert len(conv.chunks) > 3 and "".join(conv.chunks) == out.reply_text
    assert out.model_calls == 1 and out.usage.output_tokens > 0
    assert conv.values()["drafts"] == 1


def test_a_node_that_raises_propagates_and_leaves_the_state_as_it_was() -> None:
    conv = Conversation(GraphTurnAgent(graphs.failing_graph()))
    conv.turn("hello")
    before = conv.checkpoint
    with pytest.raises(ValueError, match="blew up"):
        conv.turn("boom")
    assert conv.checkpoint == before
    assert conv.turn("fine now").reply_text == "fine"


def test_an_interrupt_value_that_is_not_json_names_the_node() -> None:
    conv = Conversation(GraphTurnAgent(graphs.bad_interrupt_graph()))
    with pytest.raises(PermanentError, match="node 'asker' called interrupt.. with a value"):
        conv.turn("hi")


def test_a_runaway_loop_stops_at_the_recursion_limit() -> None:
    from langchain_core.messages import AIMessage
    from langgraph.graph import MessagesState

    def again(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage("again")]}

    graph = StateGraph(MessagesState)
    graph.add_node("again", again)
    graph.add_edge("__start__", "again")
    graph.add_edge("again", "again")
    conv = Conversation(GraphTurnAgent(graph, recursion_limit=5))
    with pytest.raises(PermanentError, match="more than 5 steps"):
        conv.turn("go")


def test_custom_state_bytes_stay_flat_while_the_conversation_grows() -> None:
    conv = Conversation(GraphTurnAgent(_triage()), window=40)
    sizes = {}
    for n in range(1, 121):
        conv.turn(f"my invoice number {n} is wrong")
        sizes[n] = len(conv.checkpoint or b"")
    # flat once the log window (40 messages: 20 turns) and the bounded channels are full
    assert sizes[120] <= sizes[30] * 1.05, sizes
    routing = conv.values()["routing"]
    assert routing[-1] == "billing:keywords" and len(routing) == 10  # its own reducer


def test_the_tickets_of_the_support_example_are_written_once_per_turn() -> None:
    tickets = InMemoryTicketStore()
    from support_agent.graph import build

    ctx = build_context(OfflineChatModel())
    ctx = type(ctx)(**{**ctx.__dict__, "tickets": tickets, "clock": ManualClock()})
    conv = Conversation(GraphTurnAgent(build(ctx)))
    request = conv.request("open a ticket about the fan")
    conv.run(request, commit=False)
    conv.run(request)
    assert (
        tickets.get_ticket(1, customer="") is not None
        and tickets.get_ticket(2, customer="") is None
    )


def test_a_graph_that_ends_without_a_reply_still_tells_the_sender() -> None:
    from langgraph.graph import MessagesState

    from events.inbound import InboundMessage
    from tests.fakes import InMemoryConversationStore, RecordingSink, RecordingStarter
    from workers.core.steps import NO_REPLY_NOTICE, Deps, accept_message, drive_run

    def silent(state: MessagesState) -> dict[str, Any]:
        return {}

    graph = StateGraph(MessagesState)
    graph.add_node("silent", silent)
    graph.add_edge("__start__", "silent")
    store, sink, starter = InMemoryConversationStore(), RecordingSink(), RecordingStarter()
    deps = Deps(store, GraphTurnAgent(graph), sink, starter, ManualClock())
    accepted = accept_message(deps, InboundMessage(conversation_id="c", text="anyone?"), LOCAL_USER)
    drive_run(deps, starter.runs.pop())
    [notice] = sink.sent
    assert notice.type == "notice" and notice.text == NO_REPLY_NOTICE
    assert notice.in_reply_to == [accepted.message_id]


class ExceptionRecordingTracer(NullTracer):
    """A ``Tracer`` that keeps what a turn's trace would record as its exception."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    @contextmanager
    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Iterator[Any]:
        try:
            yield NullSpan()
        except BaseException as exc:
            self.errors.append(exc)
            raise

    @contextmanager
    def span(self, name: str, *, kind: str, inputs: Any = None) -> Iterator[Any]:
        yield NullSpan()

    def start_span(self, name: str, *, kind: str, inputs: Any = None, parent: Any = None) -> Any:
        return NullSpan()


def test_a_node_that_raises_tells_the_sender_and_the_conversation_goes_on() -> None:
    from events.inbound import InboundMessage
    from tests.fakes import InMemoryConversationStore, RecordingSink, RecordingStarter
    from workers.core.steps import Deps, TurnSettings, accept_message, drive_run

    store, sink, starter = InMemoryConversationStore(), RecordingSink(), RecordingStarter()
    tracer = ExceptionRecordingTracer()
    settings = TurnSettings(retry_base_delay=0.0)
    agent = GraphTurnAgent(graphs.failing_graph())
    deps = Deps(store, agent, sink, starter, ManualClock(), tracer, settings)
    boom = accept_message(deps, InboundMessage(conversation_id="c", text="boom"), LOCAL_USER)
    drive_run(deps, starter.runs.pop())
    [notice] = sink.sent
    assert notice.type == "notice" and notice.level == "error"
    assert notice.in_reply_to == [boom.message_id]
    assert [str(e) for e in tracer.errors] == ["the node blew up"] * settings.retry_attempts
    assert store.pending_inbox("c") == []  # consumed: not retried forever
    fine = accept_message(deps, InboundMessage(conversation_id="c", text="and now?"), LOCAL_USER)
    drive_run(deps, starter.runs.pop())
    assert sink.sent[-1].type == "reply" and sink.sent[-1].in_reply_to == [fine.message_id]
