"""A support agent that promises to come back, as an app would plan it with agentworker's
SDK: asked "check on <what> in <when>", its model (a scripted stand-in) calls the
``schedule_followup`` tool, which the SDK's ``tool_node`` runs; when the follow-up arrives
as a message, the agent answers it ("Checked: ..."). Told "thanks, it works", it says the
matter is solved (``set_status``)."""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from agentworker import schedule_followup, set_status, tool_node

ASK = re.compile(r"^check on (.+) in (\S+)$")


def model(state: MessagesState) -> dict[str, Any]:
    last = state["messages"][-1]
    if isinstance(last, ToolMessage):
        return {"messages": [AIMessage(f"Planned. {last.text}")]}
    if last.text.startswith("thanks"):
        set_status("solved")
        return {"messages": [AIMessage("Glad it works.")]}
    asked = ASK.match(last.text)
    if asked is None:
        return {"messages": [AIMessage(f"Checked: {last.text}")]}
    call = {
        "name": "schedule_followup",
        "args": {"when": asked.group(2), "text": f"Follow up on {asked.group(1)}"},
        "id": "call_followup",
        "type": "tool_call",
    }
    return {"messages": [AIMessage("", tool_calls=[call])]}


def route(state: MessagesState) -> str:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else END


builder = StateGraph(MessagesState)
builder.add_node(model)
builder.add_node("tools", tool_node([schedule_followup]))
builder.add_edge(START, "model")
builder.add_conditional_edges("model", route, ["tools", END])
builder.add_edge("tools", "model")
graph = builder.compile()
