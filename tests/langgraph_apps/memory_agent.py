"""A memory agent as LangGraph's memory agent template writes it: memories kept in
``runtime.store`` under ``("memories", user_id)`` (the user from ``runtime.context``),
searched by the conversation's last words before each model call, saved by an
``upsert_memory`` tool the model calls; async nodes throughout."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessage
from langgraph.graph import END, MessagesState, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from tests.langgraph_apps.scripted import ScriptedChatModel


@dataclass(kw_only=True)
class Context:
    user_id: str = "default"
    system_prompt: str = "You are a helpful and friendly chatbot. {user_info}"


async def upsert_memory(
    content: str,
    context: str,
    *,
    memory_id: str | None = None,
    user_id: str,
    store: BaseStore,
) -> str:
    """Upsert a memory in the database."""
    mem_id = memory_id or str(uuid.uuid4())
    await store.aput(
        ("memories", user_id), key=mem_id, value={"content": content, "context": context}
    )
    return f"Stored memory {mem_id}"


UPSERT_SCHEMA = {
    "type": "function",
    "function": {
        "name": "upsert_memory",
        "description": "Upsert a memory in the database.",
        "parameters": {
            "type": "object",
            "properties": {
                "content": {"type": "string"},
                "context": {"type": "string"},
                "memory_id": {"type": "string"},
            },
            "required": ["content", "context"],
        },
    },
}
llm = ScriptedChatModel(name="memo")


async def call_model(state: MessagesState, runtime: Runtime[Context]) -> dict[str, Any]:
    assert runtime.store is not None
    memories = await runtime.store.asearch(
        ("memories", runtime.context.user_id),
        query=str([m.content for m in state["messages"][-3:]]),
        limit=10,
    )
    formatted = "\n".join(
        f"[{m.key}]: {m.value['content']}" for m in sorted(memories, key=lambda m: m.key)
    )
    if formatted:
        formatted = f"<memories>\n{formatted}\n</memories>"
    system = runtime.context.system_prompt.format(user_info=formatted)
    msg = await llm.bind_tools([UPSERT_SCHEMA]).ainvoke(
        [{"role": "system", "content": system}, *state["messages"]]
    )
    return {"messages": [msg]}


async def store_memory(state: MessagesState, runtime: Runtime[Context]) -> dict[str, Any]:
    assert runtime.store is not None
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    saved = await asyncio.gather(
        *(
            upsert_memory(**tc["args"], user_id=runtime.context.user_id, store=runtime.store)
            for tc in last.tool_calls
        )
    )
    return {
        "messages": [
            {"role": "tool", "content": mem, "tool_call_id": tc["id"]}
            for tc, mem in zip(last.tool_calls, saved, strict=True)
        ]
    }


def route_message(state: MessagesState) -> Literal["store_memory", "__end__"]:
    last = state["messages"][-1]
    return "store_memory" if isinstance(last, AIMessage) and last.tool_calls else "__end__"


builder = StateGraph(MessagesState, context_schema=Context)
builder.add_node(call_model)
builder.add_node(store_memory)
builder.add_edge("__start__", "call_model")
builder.add_conditional_edges("call_model", route_message, ["store_memory", END])
builder.add_edge("store_memory", "call_model")
graph = builder.compile()
graph.name = "MemoryAgent"
