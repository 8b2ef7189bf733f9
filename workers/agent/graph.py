"""The agent graph: model node, tool node, conditional edges, approval via ``interrupt()``.

The graph's checkpointed state holds only the current turn's messages. Earlier turns live in
the store's append-only message log and reach the model through the run context (not
checkpointed), so the bytes written per turn do not grow with the conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import ValidationError

from events.outbound import TokenUsage
from workers.agent.models import map_model_error
from workers.agent.tools.base import ToolContext, ToolSpec
from workers.core.ports import Clock, TicketStore, Tracer
from workers.errors import AgentWorkerError, PermanentError


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


@dataclass
class TurnContext:
    """Per-turn run context (LangGraph ``context``): never checkpointed."""

    conversation_id: str
    turn_key: str
    history: list[BaseMessage]
    tickets: TicketStore
    clock: Clock
    tracer: Tracer
    on_chunk: Callable[[str], None] | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    streamed: bool = False
    """Text was already streamed this turn: the next model call's text starts a new
    paragraph, exactly as :func:`reply_text` joins them."""
    model_calls: int = 0
    tool_calls: list[str] = field(default_factory=list)


def build_graph(
    model: BaseChatModel,
    tools: Sequence[ToolSpec],
    *,
    system_prompt: str,
    approval_tools: frozenset[str],
    checkpointer: BaseCheckpointSaver[Any],
) -> CompiledStateGraph[AgentState, TurnContext, AgentState, AgentState]:
    """Compile the agent graph once per process; each turn brings its own context."""
    by_name = {t.name: t for t in tools}
    bound = model.bind_tools([t.schema() for t in tools])
    system = SystemMessage(system_prompt)

    def call_model(state: AgentState, runtime: Runtime[TurnContext]) -> dict[str, list[AIMessage]]:
        ctx = runtime.context
        current = state["messages"]
        seen = {m.id for m in current}
        prompt = [system, *(m for m in ctx.history if m.id not in seen), *current]
        with ctx.tracer.span("model", kind="CHAT_MODEL", inputs={"messages": len(prompt)}) as span:
            try:
                reply = _invoke(bound, prompt, _paragraphs(ctx))
            except AgentWorkerError:
                raise
            except Exception as exc:
                raise map_model_error(exc) from exc
            usage = reply.usage_metadata or {"input_tokens": 0, "output_tokens": 0}
            ctx.usage = ctx.usage + TokenUsage(
                input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]
            )
            ctx.model_calls += 1
            span.set_attributes(
                {
                    "mlflow.chat.tokenUsage": {
                        "input_tokens": usage["input_tokens"],
                        "output_tokens": usage["output_tokens"],
                        "total_tokens": usage["input_tokens"] + usage["output_tokens"],
                    }
                }
            )
            span.set_outputs(
                {"text": reply.text, "tool_calls": [c["name"] for c in reply.tool_calls]}
            )
        return {"messages": [reply]}

    def call_tools(
        state: AgentState, runtime: Runtime[TurnContext]
    ) -> dict[str, list[ToolMessage]]:
        ctx = runtime.context
        last = state["messages"][-1]
        calls = last.tool_calls if isinstance(last, AIMessage) else []
        # Ask every approval first: a resumed node re-runs from the top, and no side effect
        # may happen before the last interrupt() has its answer.
        decisions: dict[str, dict[str, Any]] = {}
        for call in calls:
            spec = by_name.get(call["name"])
            if spec is not None and spec.name in approval_tools:
                try:
                    question = spec.question(call["args"])
                except ValidationError:
                    continue  # invalid args fail below without asking anyone
                decisions[str(call["id"])] = interrupt(
                    {"tool": spec.name, "args": call["args"], "text": question}
                )
        results = []
        for call in calls:
            decision = decisions.get(str(call["id"]))
            results.append(_run_tool(ctx, by_name.get(call["name"]), call, decision))
        return {"messages": results}

    def route(state: AgentState) -> Literal["tools", "__end__"]:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"

    graph = StateGraph(AgentState, context_schema=TurnContext)
    graph.add_node("model", call_model)
    graph.add_node("tools", call_tools)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    return graph.compile(checkpointer=checkpointer)


REPLY_SEPARATOR = "\n\n"


def reply_text(messages: Sequence[BaseMessage]) -> str:
    """The turn's reply: the text of each of its model calls, one paragraph each (what a
    tool-calling model says before its call belongs to the reply, as it was streamed)."""
    return REPLY_SEPARATOR.join(m.text for m in messages if isinstance(m, AIMessage) and m.text)


def _paragraphs(ctx: TurnContext) -> Callable[[str], None] | None:
    """``ctx.on_chunk``, starting a new paragraph for a model call after streamed text."""
    on_chunk = ctx.on_chunk
    if on_chunk is None:
        return None
    first = True

    def emit(delta: str) -> None:
        nonlocal first
        if first and ctx.streamed:
            on_chunk(REPLY_SEPARATOR)
        first = False
        ctx.streamed = True
        on_chunk(delta)

    return emit


def _invoke(
    model: Any, prompt: list[BaseMessage], on_chunk: Callable[[str], None] | None
) -> AIMessage:
    if on_chunk is None:
        reply = model.invoke(prompt)
        assert isinstance(reply, AIMessage)
        return reply
    acc: AIMessageChunk | None = None
    for chunk in model.stream(prompt):
        if chunk.text:
            on_chunk(chunk.text)
        acc = chunk if acc is None else acc + chunk
    if acc is None:
        raise PermanentError("the model returned an empty stream")
    return AIMessage(
        content=acc.content,
        tool_calls=acc.tool_calls,
        usage_metadata=acc.usage_metadata,
        id=acc.id,
        response_metadata=acc.response_metadata,
    )


def _run_tool(
    ctx: TurnContext,
    spec: ToolSpec | None,
    call: Any,
    decision: dict[str, Any] | None,
) -> ToolMessage:
    call_id = str(call["id"])
    name = call["name"]

    def result(text: str, status: Literal["success", "error"] = "success") -> ToolMessage:
        return ToolMessage(text, tool_call_id=call_id, name=name, status=status)

    if spec is None:
        return result(f"Unknown tool {name!r}.", "error")
    if decision is not None and not decision.get("approved"):
        reason = decision.get("reason") or "no reason given"
        return result(f"The user denied this action ({reason}); it was not done.", "error")
    with ctx.tracer.span(f"tool.{name}", kind="TOOL", inputs=call["args"]) as span:
        ctx.tool_calls.append(name)
        try:
            args = spec.args.model_validate(call["args"])
            tool_ctx = ToolContext(
                conversation_id=ctx.conversation_id,
                idempotency_key=f"{ctx.turn_key}:{call_id}",
                tickets=ctx.tickets,
                clock=ctx.clock,
            )
            text = spec.run(tool_ctx, args)
        except ValidationError as exc:
            text = f"Invalid arguments: {_first_error(exc)}"
            span.set_outputs({"error": text})
            return result(text, "error")
        except PermanentError as exc:
            span.set_outputs({"error": str(exc)})
            return result(str(exc), "error")
        span.set_outputs({"result": text})
    return result(text)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "arguments"
    return f"{where}: {err['msg']}"


def human(text: str, message_id: str) -> HumanMessage:
    return HumanMessage(text, id=message_id)
