"""Test-only graphs for the graph contract: custom state, async nodes, a subgraph that
interrupts, a ``Send`` fan-out with one interrupting branch, two parallel interrupts, a node
that calls a model itself, and one that fails during an outage. Each is a factory returning
an uncompiled ``StateGraph``."""

from __future__ import annotations

import asyncio
import operator
import os
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send, interrupt


def _last_human(messages: list[AnyMessage]) -> str:
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            return m.text
    return ""


class CustomState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    counter: int
    notes: Annotated[list[str], operator.add]
    profile: dict[str, Any]


def custom_state_graph() -> StateGraph[Any, Any, Any, Any]:
    """Channels beyond ``messages``: a counter, an append-only list, a dict."""

    def count(state: CustomState) -> dict[str, Any]:
        n = state.get("counter", 0) + 1
        text = _last_human(state["messages"])
        profile = {**state.get("profile", {}), "turns": n, "last": text}
        return {"counter": n, "notes": [f"{n}:{text}"], "profile": profile}

    def reply(state: CustomState) -> dict[str, Any]:
        seen = sum(isinstance(m, HumanMessage) for m in state["messages"])
        text = f"turn {state['counter']}, {seen} user messages, notes {len(state['notes'])}"
        return {"messages": [AIMessage(text)]}

    graph = StateGraph(CustomState)
    graph.add_node("count", count)
    graph.add_node("reply", reply)
    graph.add_edge(START, "count")
    graph.add_edge("count", "reply")
    graph.add_edge("reply", END)
    return graph


def async_graph() -> StateGraph[Any, Any, Any, Any]:
    """``async def`` nodes beside a plain one."""

    class State(MessagesState):
        steps: Annotated[list[str], operator.add]

    async def think(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"steps": ["think"]}

    def plan(state: State) -> dict[str, Any]:
        return {"steps": ["plan"]}

    async def answer(state: State) -> dict[str, Any]:
        await asyncio.sleep(0)
        text = f"async answer to {_last_human(state['messages'])!r} after {len(state['steps'])}"
        return {"messages": [AIMessage(text)], "steps": ["answer"]}

    graph = StateGraph(State)
    graph.add_node("think", think)
    graph.add_node("plan", plan)
    graph.add_node("answer", answer)
    graph.add_edge(START, "think")
    graph.add_edge("think", "plan")
    graph.add_edge("plan", "answer")
    graph.add_edge("answer", END)
    return graph


class SubState(MessagesState):
    names: Annotated[list[str], operator.add]


def subgraph_interrupt_graph() -> StateGraph[Any, Any, Any, Any]:
    """A compiled subgraph as a node, interrupting inside."""

    def ask(state: SubState) -> dict[str, Any]:
        name = interrupt({"question": f"Who is asking about {_last_human(state['messages'])!r}?"})
        return {"names": [str(name)]}

    def greet(state: SubState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"Hello {state['names'][-1]} ({len(state['names'])})")]}

    sub = StateGraph(SubState)
    sub.add_node("ask", ask)
    sub.add_node("greet", greet)
    sub.add_edge(START, "ask")
    sub.add_edge("ask", "greet")
    sub.add_edge("greet", END)

    def prep(state: SubState) -> dict[str, Any]:
        return {"names": []}

    graph = StateGraph(SubState)
    graph.add_node("prep", prep)
    graph.add_node("sub", sub.compile())
    graph.add_edge(START, "prep")
    graph.add_edge("prep", "sub")
    graph.add_edge("sub", END)
    return graph


class FanState(MessagesState):
    items: list[str]
    results: Annotated[list[str], operator.add]


class WorkItem(TypedDict):
    item: str


def send_fanout_graph() -> StateGraph[Any, Any, Any, Any]:
    """``Send`` fan-out over the words of the message; words starting with ``ask`` interrupt
    in their branch, the others finish at once."""

    def split(state: FanState) -> dict[str, Any]:
        return {"items": _last_human(state["messages"]).split()}

    def fan(state: FanState) -> list[Send]:
        return [Send("work", {"item": item}) for item in state["items"]]

    def work(task: WorkItem) -> dict[str, Any]:
        item = task["item"]
        if item.startswith("ask"):
            answer = interrupt({"item": item})
            return {"results": [f"{item}={answer}"]}
        return {"results": [item.upper()]}

    def join(state: FanState) -> dict[str, Any]:
        return {"messages": [AIMessage(", ".join(sorted(state["results"])))], "results": []}

    graph = StateGraph(FanState)
    graph.add_node("split", split)
    worker: Any = work  # takes a Send's payload, not the graph's state
    graph.add_node("work", worker)
    graph.add_node("join", join)
    graph.add_edge(START, "split")
    graph.add_conditional_edges("split", fan, ["work"])
    graph.add_edge("work", "join")
    graph.add_edge("join", END)
    return graph


class PairState(MessagesState):
    a: str
    b: str


def parallel_interrupts_graph() -> StateGraph[Any, Any, Any, Any]:
    """Two branches that each interrupt in the same step: answered one per turn."""

    def ask_a(state: PairState) -> dict[str, Any]:
        return {"a": str(interrupt({"question": "a?"}))}

    def ask_b(state: PairState) -> dict[str, Any]:
        return {"b": str(interrupt({"question": "b?"}))}

    def join(state: PairState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"a={state['a']}, b={state['b']}")]}

    graph = StateGraph(PairState)
    graph.add_node("ask_a", ask_a)
    graph.add_node("ask_b", ask_b)
    graph.add_node("join", join)
    graph.add_edge(START, "ask_a")
    graph.add_edge(START, "ask_b")
    graph.add_edge(["ask_a", "ask_b"], "join")
    graph.add_edge("join", END)
    return graph


def model_node_graph(model: BaseChatModel) -> StateGraph[Any, Any, Any, Any]:
    """A node of the app's own (not the bundled one) that calls a model."""

    class State(MessagesState):
        drafts: int

    def draft(state: State) -> dict[str, Any]:
        reply = model.invoke(state["messages"])
        return {"messages": [reply], "drafts": state.get("drafts", 0) + 1}

    graph = StateGraph(State)
    graph.add_node("draft", draft)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", END)
    return graph


def failing_graph() -> StateGraph[Any, Any, Any, Any]:
    """A node that raises when the message says ``boom``."""

    def node(state: MessagesState) -> dict[str, Any]:
        if "boom" in _last_human(state["messages"]):
            raise ValueError("the node blew up")
        return {"messages": [AIMessage("fine")]}

    graph = StateGraph(MessagesState)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    return graph


OUTAGE_FILE = "AGENTWORKER_TEST_OUTAGE_FILE"
"""The variable naming the file whose presence makes :func:`outage_graph` fail."""


def outage_graph(ctx: object = None) -> StateGraph[Any, Any, Any, Any]:
    """Answers ``fine: <text>``, except while the file ``$AGENTWORKER_TEST_OUTAGE_FILE``
    exists (an outage of what the node depends on): then its node raises. A factory, for
    ``--graph tests.graphs:outage_graph``."""

    def node(state: MessagesState) -> dict[str, Any]:
        if Path(os.environ[OUTAGE_FILE]).exists():
            raise RuntimeError("the model is down")
        return {"messages": [AIMessage(f"fine: {_last_human(state['messages'])}")]}

    graph = StateGraph(MessagesState)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    return graph


def bad_interrupt_graph() -> StateGraph[Any, Any, Any, Any]:
    """Interrupts with a value that is not JSON."""

    def asker(state: MessagesState) -> dict[str, Any]:
        interrupt({"when": object()})
        return {}

    graph = StateGraph(MessagesState)
    graph.add_node("asker", asker)
    graph.add_edge(START, "asker")
    graph.add_edge("asker", END)
    return graph
