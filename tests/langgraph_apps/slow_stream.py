"""A graph that works a while and says so on the custom stream, as LangGraph's docs write
progress updates with ``get_stream_writer``: six steps a fraction of a second apart, then
its answer. What a client that drops mid-turn must get the rest of."""

from __future__ import annotations

import os
import time
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph

STEPS = 6
PAUSE_S = float(os.environ.get("SLOW_STREAM_PAUSE_S", "0.25"))


def work(state: MessagesState) -> dict[str, Any]:
    write = get_stream_writer()
    for step in range(STEPS):
        write({"step": step})
        time.sleep(PAUSE_S)
    return {"messages": [AIMessage(f"done after {STEPS} steps: {state['messages'][-1].text}")]}


builder = StateGraph(MessagesState)
builder.add_node(work)
builder.add_edge(START, "work")
graph = builder.compile()
