"""A ReAct-style graph as LangGraph's docs write one, with what agentworker must keep of it:
compiled with ``interrupt_before=["tools"]`` and a ``name``, a tool that is ``async def``
only, next to a sync model node (so ``ToolNode`` offers a sync path the tool refuses)."""

from __future__ import annotations

from typing import Literal

from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from tests.langgraph_apps.scripted import ScriptedChatModel


@tool
async def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


TOOLS = [get_weather]
model = ScriptedChatModel().bind_tools(TOOLS)


def call_model(state: MessagesState) -> dict[str, list[AIMessage]]:
    return {"messages": [model.invoke(state["messages"])]}


def route(state: MessagesState) -> Literal["tools", "__end__"]:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"


builder = StateGraph(MessagesState)
builder.add_node(call_model)
builder.add_node("tools", ToolNode(TOOLS))
builder.add_edge(START, "call_model")
builder.add_conditional_edges("call_model", route)
builder.add_edge("tools", "call_model")

graph = builder.compile(interrupt_before=["tools"], name="Kitchen sink")
