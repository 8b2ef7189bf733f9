"""The support agent's graph: a model node and a tool node in a loop.

``build`` is the app's factory (``graph = "support_agent.graph:build"``): it binds the tools to
the configured model and asks approval before the tools of ``approval_tools`` run (default:
``update_ticket``). The state is LangGraph's ``MessagesState``: agentworker supplies the
conversation's earlier messages from its log and persists the new ones.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from langchain_core.messages import AIMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from agentworker import BuildContext, tool_node
from support_agent.tools import describe_update, support_tools

DEFAULT_APPROVAL_TOOLS = frozenset({"update_ticket"})


def system_prompt(version: str = "v1") -> str:
    """The bundled system prompt ``prompts/system_<version>.md``."""
    files = resources.files(__package__ or "support_agent").joinpath("prompts")
    return files.joinpath(f"system_{version}.md").read_text("utf-8").strip()


def build(ctx: BuildContext) -> StateGraph[MessagesState, None, MessagesState, MessagesState]:
    tools = support_tools(ctx.tickets, ctx.clock)
    model = ctx.model.bind_tools(tools)
    system = SystemMessage(ctx.prompt or system_prompt())
    approvals = DEFAULT_APPROVAL_TOOLS if ctx.approval_tools is None else ctx.approval_tools

    def call_model(state: MessagesState) -> dict[str, list[AIMessage]]:
        reply = model.invoke([system, *state["messages"]])
        assert isinstance(reply, AIMessage)
        return {"messages": [reply]}

    def route(state: MessagesState) -> Literal["tools", "__end__"]:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node(
        "tools",
        tool_node(tools, approval_tools=approvals, questions={"update_ticket": describe_update}),
    )
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    return graph
