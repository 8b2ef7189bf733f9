"""A ReAct agent as LangGraph's ReAct template writes it: a dataclass ``Context`` (the
model's name and the system prompt, each also read from the environment) that the model
node reads through ``runtime.context``, a state dataclass, a tool node, ``is_last_step``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import tool
from langgraph.graph import StateGraph, add_messages
from langgraph.managed import IsLastStep
from langgraph.prebuilt import ToolNode
from langgraph.runtime import Runtime

from tests.langgraph_apps.scripted import ScriptedChatModel


@dataclass(kw_only=True)
class Context:
    """The context: what the caller may change per run."""

    system_prompt: str = field(default="You are a helpful AI assistant.")
    model: str = field(default="scripted/alpha")
    max_search_results: int = field(default=10)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.init and getattr(self, f.name) == f.default:
                setattr(self, f.name, os.environ.get(f.name.upper(), f.default))


@dataclass
class State:
    messages: Annotated[Sequence[AnyMessage], add_messages] = field(default_factory=list)
    is_last_step: IsLastStep = field(default=False)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"It is sunny in {city}."


TOOLS = [get_weather]


def load_chat_model(fully_specified_name: str) -> ScriptedChatModel:
    provider, model = fully_specified_name.split("/", maxsplit=1)
    assert provider == "scripted", provider
    return ScriptedChatModel(name=model)


def call_model(state: State, runtime: Runtime[Context]) -> dict[str, list[AIMessage]]:
    model = load_chat_model(runtime.context.model).bind_tools(TOOLS)
    system = {"role": "system", "content": runtime.context.system_prompt}
    response = model.invoke([system, *state.messages])
    assert isinstance(response, AIMessage)
    if state.is_last_step and response.tool_calls:
        response = AIMessage(id=response.id, content="I could not finish in time.")
    return {"messages": [response]}


def route_model_output(state: State) -> Literal["__end__", "tools"]:
    last = state.messages[-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"


builder = StateGraph(State, input_schema=State, context_schema=Context)
builder.add_node(call_model)
builder.add_node("tools", ToolNode(TOOLS))
builder.add_edge("__start__", "call_model")
builder.add_conditional_edges("call_model", route_model_output)
builder.add_edge("tools", "call_model")

graph = builder.compile(name="ReAct Agent")


@dataclass
class Strict:
    """A context with a field nobody defaulted."""

    user_id: str
    tone: str = "plain"


def strict_graph() -> Any:
    def answer(state: State, runtime: Runtime[Strict]) -> dict[str, list[AIMessage]]:
        return {"messages": [AIMessage(f"{runtime.context.tone} hello, {runtime.context.user_id}")]}

    strict = StateGraph(State, context_schema=Strict)
    strict.add_node(answer)
    strict.add_edge("__start__", "answer")
    return strict.compile()
