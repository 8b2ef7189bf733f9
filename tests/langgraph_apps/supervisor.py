"""A supervisor with two experts, as LangGraph's multi-agent docs build one by hand: the
supervisor's model hands over with a ``transfer_to_<expert>`` tool call, the expert (its own
compiled subgraph) answers with its model and hands back with the bookkeeping pair
``langgraph-supervisor`` adds (an AI message and a tool message marked
``__is_handoff_back``), then the supervisor's model speaks last. Every node writes to the
custom stream what it is doing."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command

from tests.langgraph_apps.scripted import ScriptedChatModel

EXPERTS = ("math", "history")
HANDOFF_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"transfer_to_{name}_expert",
            "description": f"Ask the {name} expert.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name in EXPERTS
]
BACK = {"__is_handoff_back": True}


def supervisor(
    state: MessagesState,
) -> Command[Literal["math_expert", "history_expert", "__end__"]]:
    get_stream_writer()({"node": "supervisor"})
    reply = ScriptedChatModel(name="supervisor").bind_tools(HANDOFF_TOOLS).invoke(state["messages"])
    assert isinstance(reply, AIMessage)
    if not reply.tool_calls:
        return Command(goto="__end__", update={"messages": [reply]})
    call = reply.tool_calls[0]
    expert = call["name"].removeprefix("transfer_to_")
    done = ToolMessage(f"Successfully transferred to {expert}", tool_call_id=str(call["id"]))
    return Command(goto=expert, update={"messages": [reply, done]})  # type: ignore[arg-type]


def expert(name: str) -> Any:
    def answer(state: MessagesState) -> dict[str, Any]:
        get_stream_writer()({"node": f"{name}_expert"})
        question = next(m for m in reversed(state["messages"]) if m.type == "human")
        said = ScriptedChatModel(name=name).invoke([question])
        back = AIMessage(
            "Transferring back to supervisor",
            name=f"{name}_expert",
            response_metadata=BACK,
            tool_calls=[{"name": "transfer_back_to_supervisor", "args": {}, "id": f"back-{name}"}],
        )
        note = ToolMessage(
            "Successfully transferred back to supervisor",
            tool_call_id=f"back-{name}",
            response_metadata=BACK,
        )
        return {"messages": [said, back, note]}

    sub = StateGraph(MessagesState)
    sub.add_node("answer", answer)
    sub.add_edge(START, "answer")
    return sub.compile(name=f"{name}_expert")


builder = StateGraph(MessagesState)
builder.add_node(
    "supervisor", supervisor, destinations=("math_expert", "history_expert", "__end__")
)
for _name in EXPERTS:
    builder.add_node(f"{_name}_expert", expert(_name))
    builder.add_edge(f"{_name}_expert", "supervisor")
builder.add_edge(START, "supervisor")
graph = builder.compile(name="Supervisor")
