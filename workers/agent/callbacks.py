"""``TurnCallbacks``: the model and tool calls of any graph, seen through LangChain callbacks.

The app's graph calls its model and tools itself, so the runner cannot wrap those calls. This
handler sees them wherever they happen (any node, subgraphs, tools calling models) and
records, for the turn: one span per model call and per tool call, nested as the calls are;
the token usage (prompt-cache reads and writes included), the cost, the time to the turn's
first streamed token, the throttled calls, and the counts of model and tool calls.

Model spans are in the shape of MLflow's own LangChain autolog, as plain JSON, so the MLflow
UI's chat view renders them: inputs ``{"messages": [chat messages]}``, the tool definitions in
``mlflow.chat.tools``, outputs ``{"choices": [{"message": ...}]}``, ``mlflow.chat.tokenUsage``,
``mlflow.llm.cost`` (MLflow sums it into the trace's cost) and ``mlflow.llm.model``. Message
contents longer than :data:`MAX_CONTENT_CHARS` are cut, with a marker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, GenerationChunk, LLMResult

from events.outbound import TokenUsage
from workers.agent.models import map_model_error
from workers.core.figures import usage_attribute
from workers.core.ports import OpenSpan, Tracer
from workers.costs import DEFAULT_PRICES, UNPRICED, Cost, ModelPrice, cost_of, price_for
from workers.errors import ModelThrottled

MAX_CONTENT_CHARS = 20_000
"""Characters of one message content (or tool argument/result) kept in a span."""

_ROLES: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
    FunctionMessage: "function",
}


class TurnCallbacks(BaseCallbackHandler):
    """One per turn; safe for the parallel model and tool calls of a fan-out."""

    run_inline = True
    """Called in the calling thread and context, so spans nest under the turn's span."""

    def __init__(self, tracer: Tracer, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._tracer = tracer
        self._prices = DEFAULT_PRICES if prices is None else prices
        self._lock = threading.Lock()
        self._spans: dict[UUID, OpenSpan] = {}
        self._started: dict[UUID, float] = {}
        self._models: dict[UUID, str | None] = {}
        self._first_token: set[UUID] = set()
        self._turn_started = time.perf_counter()
        self.usage = TokenUsage()
        self.cost: Cost | None = Cost()
        """The turn's cost; ``None`` once a call of a model without a price was made."""
        self.time_to_first_token_ms: float | None = None
        """From the start of the turn to its first streamed token (``None``: nothing
        streamed)."""
        self.model_calls = 0
        self.model_throttles = 0
        self.tool_calls: list[str] = []

    def _open(
        self, run_id: UUID, parent_run_id: UUID | None, name: str, kind: str, inputs: Any
    ) -> OpenSpan:
        with self._lock:
            parent = self._spans.get(parent_run_id) if parent_run_id else None
        span = self._tracer.start_span(name, kind=kind, inputs=inputs, parent=parent)
        with self._lock:
            self._spans[run_id] = span
            self._started[run_id] = time.perf_counter()
        return span

    def _close(self, run_id: UUID) -> tuple[OpenSpan | None, str | None]:
        with self._lock:
            self._started.pop(run_id, None)
            self._first_token.discard(run_id)
            return self._spans.pop(run_id, None), self._models.pop(run_id, None)

    # model calls -------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        meta = metadata or {}
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        model = _model_id(meta, params, serialized)
        batch = [m for batch in messages for m in batch]
        span = self._open(
            run_id, parent_run_id, "model", "CHAT_MODEL", {"messages": chat_messages(batch)}
        )
        with self._lock:
            self._models[run_id] = model
        attributes: dict[str, Any] = {"mlflow.message.format": "langchain"}
        if model:
            attributes["mlflow.llm.model"] = model
        if meta.get("ls_provider"):
            attributes["mlflow.llm.provider"] = str(meta["ls_provider"])
        tools = chat_tools(params.get("tools") or ())
        if tools:
            attributes["mlflow.chat.tools"] = tools
        span.set_attributes(attributes)

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        now = time.perf_counter()
        with self._lock:
            if run_id in self._first_token:
                return
            self._first_token.add(run_id)
            started = self._started.get(run_id)
            span = self._spans.get(run_id)
            if self.time_to_first_token_ms is None:
                self.time_to_first_token_ms = round((now - self._turn_started) * 1e3, 3)
        if span is not None and started is not None:
            span.set_attributes({"time_to_first_token_ms": round((now - started) * 1e3, 3)})

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        span, model = self._close(run_id)
        reply = _reply_of(response)
        used = usage_of(reply)
        price = price_for(model, self._prices)
        cost = cost_of(used, price) if price is not None else None
        if price is None:
            UNPRICED.warn(model)
        with self._lock:
            self.usage = self.usage + used
            self.model_calls += 1
            self.cost = None if cost is None or self.cost is None else self.cost + cost
        if span is None:
            return
        attributes: dict[str, Any] = {"mlflow.chat.tokenUsage": usage_attribute(used)}
        if cost is not None:
            attributes["mlflow.llm.cost"] = cost.as_attribute()
        span.set_attributes(attributes)
        if reply is not None:
            message = chat_message(reply)
            finish = reply.response_metadata.get("stopReason") or reply.response_metadata.get(
                "finish_reason"
            )
            span.set_outputs({"choices": [{"message": message, "finish_reason": finish}]})
        span.end()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        span, _ = self._close(run_id)
        throttled = isinstance(map_model_error(error), ModelThrottled)
        if throttled:
            with self._lock:
                self.model_throttles += 1
        if span is not None:
            if throttled:
                span.set_attributes({"model.throttles": 1})
            span.end(error)

    # tool calls --------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = str(kwargs.get("name") or (serialized or {}).get("name") or "tool")
        with self._lock:
            self.tool_calls.append(name)
        self._open(run_id, parent_run_id, f"tool.{name}", "TOOL", tool_arguments(inputs, input_str))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span, _ = self._close(run_id)
        if span is None:
            return
        if isinstance(output, ToolMessage):
            key = "error" if output.status == "error" else "result"
            span.set_outputs({key: _bounded(output.text)})
        else:
            span.set_outputs({"result": _bounded(str(output))})
        span.end()

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        span, _ = self._close(run_id)
        if span is not None:
            span.set_outputs({"error": _bounded(str(error))})
            span.end(error)


# chat format ------------------------------------------------------------------------------


def chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """``messages`` in MLflow's chat format (OpenAI's), as plain JSON."""
    return [chat_message(m) for m in messages]


def chat_message(message: BaseMessage) -> dict[str, Any]:
    """One message in MLflow's chat format: ``role``, ``content`` (text, or content parts),
    an assistant's ``tool_calls`` (name and JSON arguments), a tool result's
    ``tool_call_id``."""
    role = (
        message.role
        if isinstance(message, ChatMessage)
        else next((r for t, r in _ROLES.items() if isinstance(message, t)), message.type)
    )
    content = _content(message.content)
    out: dict[str, Any] = {"role": role, "content": content}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["content"] = content or None
        out["tool_calls"] = [
            {
                "id": call.get("id") or "",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": _bounded(json.dumps(call["args"], default=str)),
                },
            }
            for call in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def _content(content: str | list[str | dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text as is (bounded); content blocks as text parts, tool-use blocks dropped (they are
    the message's ``tool_calls``) and other blocks by their type only (an image's bytes do
    not belong in a span)."""
    if isinstance(content, str):
        return _bounded(content)
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            parts.append({"type": "text", "text": _bounded(block)})
        elif block.get("type") == "text" or "text" in block:
            parts.append({"type": "text", "text": _bounded(str(block.get("text", "")))})
        elif block.get("type") not in ("tool_use", "tool_call", "tool_call_chunk"):
            parts.append({"type": "text", "text": f"[{block.get('type') or 'block'}]"})
    if all(p["type"] == "text" for p in parts):
        return _bounded("".join(p["text"] for p in parts))
    return parts


def chat_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tool definitions as a model was bound with them (OpenAI, Bedrock ``toolSpec`` or
    Anthropic shape) in MLflow's ``mlflow.chat.tools`` shape (OpenAI's)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        if isinstance(tool.get("function"), Mapping):
            fn = tool["function"]
            out.append(_tool(fn.get("name"), fn.get("description"), fn.get("parameters")))
        elif isinstance(tool.get("toolSpec"), Mapping):
            spec = tool["toolSpec"]
            schema = (spec.get("inputSchema") or {}).get("json")
            out.append(_tool(spec.get("name"), spec.get("description"), schema))
        elif tool.get("name"):
            out.append(_tool(tool["name"], tool.get("description"), tool.get("input_schema")))
    return [t for t in out if t["function"]["name"]]


def _tool(name: Any, description: Any, parameters: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": str(name or "")}
    if description:
        function["description"] = str(description)
    if isinstance(parameters, Mapping):
        function["parameters"] = json.loads(json.dumps(parameters, default=str))
    return {"type": "function", "function": function}


def tool_arguments(inputs: Mapping[str, Any] | None, input_str: str) -> Any:
    """A tool span's inputs: the parsed arguments (a dict), bounded."""
    if inputs is None:
        try:
            parsed = json.loads(input_str)
        except ValueError:
            return {"input": _bounded(input_str)}
        inputs = parsed if isinstance(parsed, dict) else {"input": parsed}
    plain = json.loads(json.dumps(dict(inputs), default=str))
    return {k: _bounded(v) if isinstance(v, str) else v for k, v in plain.items()}


def _bounded(text: str) -> str:
    if len(text) <= MAX_CONTENT_CHARS:
        return text
    return f"{text[:MAX_CONTENT_CHARS]}... [truncated {len(text) - MAX_CONTENT_CHARS} chars]"


# usage ------------------------------------------------------------------------------------


def usage_of(reply: AIMessage | None) -> TokenUsage:
    """The token usage LangChain reports for ``reply`` (cache reads and writes from
    ``input_token_details``)."""
    usage: Mapping[str, Any] = (reply.usage_metadata if reply is not None else None) or {}
    details: Mapping[str, Any] = usage.get("input_token_details") or {}
    return TokenUsage(
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        cache_read_tokens=int(details.get("cache_read") or 0),
        cache_write_tokens=int(details.get("cache_creation") or 0),
    )


def _model_id(
    metadata: Mapping[str, Any], params: Mapping[str, Any], serialized: Mapping[str, Any] | None
) -> str | None:
    for value in (
        metadata.get("ls_model_name"),
        params.get("model_id"),
        params.get("model"),
        params.get("model_name"),
        (serialized or {}).get("name"),
    ):
        if value:
            return str(value)
    return None


def _reply_of(response: LLMResult) -> AIMessage | None:
    if response.generations and response.generations[0]:
        generation = response.generations[0][0]
        if isinstance(generation, ChatGeneration) and isinstance(generation.message, AIMessage):
            return generation.message
    return None
