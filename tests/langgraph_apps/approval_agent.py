"""A ReAct agent whose risky tool asks a human first, written as LangGraph's human-in-the-loop
docs write one: a chat model node, a ``ToolNode``, a tool that calls ``interrupt()`` for an
approval, progress notes on the custom stream (``get_stream_writer``).

It imports LangGraph and ``langchain-core`` only, so ``langgraph dev`` (in its own venv) and
``agentworker serve`` serve the very same file: the Agent Server API tests and the
``langgraph-dev`` benchmark run it on both. Its chat model is a deterministic stand-in
written here (no agentworker import): "look up X" calls ``lookup``, "delete X" calls
``delete_record`` (which waits for an approval), a tool's result is answered with it, and
anything else is echoed; replies stream word by word."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt

_LOOKUP = re.compile(r"\blook up (?P<topic>.+)", re.I)
_DELETE = re.compile(r"\bdelete (?P<name>\S+)", re.I)


class RuleChatModel(BaseChatModel):
    """Answers by the rules above; a message's id is derived from what it answers, so a
    replayed turn says the same thing under the same id."""

    @property
    def _llm_type(self) -> str:
        return "rule-chat-model"

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | BaseTool | Any], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        answer = self._answer(messages, kwargs)
        words = re.findall(r"\S+\s*", answer.text) or [""]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            calls = [
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": n}
                for n, c in enumerate(answer.tool_calls)
            ]
            chunk = ChatGenerationChunk(
                message=AIMessageChunk(
                    content=word,
                    id=answer.id,
                    tool_call_chunks=calls if last else [],
                    chunk_position="last" if last else None,
                )
            )
            if run_manager:
                run_manager.on_llm_new_token(word, chunk=chunk)
            yield chunk

    @staticmethod
    def _answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        tools = {t["function"]["name"] for t in kwargs.get("tools", [])}
        last = messages[-1]
        seed = f"{len(messages)}|{last.text}"
        msg_id = "rule-" + hashlib.sha1(seed.encode()).hexdigest()[:16]
        if isinstance(last, ToolMessage):
            return AIMessage(f"Done: {last.text}", id=msg_id)
        lookup, delete = _LOOKUP.search(last.text), _DELETE.search(last.text)
        call: tuple[str, dict[str, str]] | None = None
        if lookup and "lookup" in tools:
            call = ("lookup", {"topic": lookup["topic"].strip().rstrip(".?!")})
        elif delete and "delete_record" in tools:
            call = ("delete_record", {"name": delete["name"].rstrip(".?!")})
        if call is None:
            return AIMessage(f"You said: {last.text}", id=msg_id)
        name, args = call
        return AIMessage(
            "", id=msg_id, tool_calls=[{"name": name, "args": args, "id": "call-" + msg_id[5:]}]
        )


@tool
def lookup(topic: str) -> str:
    """Look a topic up in the handbook."""
    write = get_stream_writer()
    for step in ("searching", "reading"):
        write({"tool": "lookup", "step": step})
    return f"the handbook's page on {topic}"


@tool
def delete_record(name: str) -> str:
    """Delete a record, once a human approved it."""
    answer = interrupt({"tool": "delete_record", "args": {"name": name}, "question": "Delete?"})
    return f"deleted {name}" if answer is True or answer == "yes" else f"kept {name}"


TOOLS = [lookup, delete_record]
model = RuleChatModel().bind_tools(TOOLS)


def agent(state: MessagesState) -> dict[str, list[AIMessage]]:
    reply = model.invoke(state["messages"])
    assert isinstance(reply, AIMessage)
    return {"messages": [reply]}


def route(state: MessagesState) -> Literal["tools", "__end__"]:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"


builder = StateGraph(MessagesState)
builder.add_node(agent)
builder.add_node("tools", ToolNode(TOOLS))
builder.add_edge(START, "agent")
builder.add_conditional_edges("agent", route)
builder.add_edge("tools", "agent")
graph = builder.compile(name="Approval Agent")
