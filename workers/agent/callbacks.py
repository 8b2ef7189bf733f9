"""``TurnCallbacks``: the model and tool calls of any graph, seen through LangChain callbacks.

The app's graph calls its model and tools itself, so the runner cannot wrap those calls. This
handler sees them wherever they happen (any node, subgraphs, tools calling models) and
records, for the turn: one span per model call (token usage, time to first token) and per
tool call (arguments and result), nested as the calls are; the token usage and the counts
of model and tool calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, GenerationChunk, LLMResult

from events.outbound import TokenUsage
from workers.core.ports import OpenSpan, Tracer


class TurnCallbacks(BaseCallbackHandler):
    """One per turn; safe for the parallel model and tool calls of a fan-out."""

    run_inline = True
    """Called in the calling thread and context, so spans nest under the turn's span."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._lock = threading.Lock()
        self._spans: dict[UUID, OpenSpan] = {}
        self._started: dict[UUID, float] = {}
        self._first_token: set[UUID] = set()
        self.usage = TokenUsage()
        self.model_calls = 0
        self.tool_calls: list[str] = []

    def _open(
        self, run_id: UUID, parent_run_id: UUID | None, name: str, kind: str, inputs: Any
    ) -> None:
        with self._lock:
            parent = self._spans.get(parent_run_id) if parent_run_id else None
        span = self._tracer.start_span(name, kind=kind, inputs=inputs, parent=parent)
        with self._lock:
            self._spans[run_id] = span
            self._started[run_id] = time.perf_counter()

    def _close(self, run_id: UUID) -> OpenSpan | None:
        with self._lock:
            self._started.pop(run_id, None)
            self._first_token.discard(run_id)
            return self._spans.pop(run_id, None)

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
        model = (metadata or {}).get("ls_model_name") or (serialized or {}).get("name")
        inputs = {"messages": sum(len(batch) for batch in messages), "model": model}
        self._open(run_id, parent_run_id, "model", "CHAT_MODEL", inputs)

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
        with self._lock:
            if run_id in self._first_token:
                return
            self._first_token.add(run_id)
            started = self._started.get(run_id)
            span = self._spans.get(run_id)
        if span is not None and started is not None:
            span.set_attributes({"time_to_first_token_ms": (time.perf_counter() - started) * 1e3})

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._close(run_id)
        reply = _reply_of(response)
        usage: Mapping[str, Any] = (reply.usage_metadata if reply is not None else None) or {}
        used = TokenUsage(
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
        )
        with self._lock:
            self.usage = self.usage + used
            self.model_calls += 1
        if span is None:
            return
        span.set_attributes(
            {
                "mlflow.chat.tokenUsage": {
                    "input_tokens": used.input_tokens,
                    "output_tokens": used.output_tokens,
                    "total_tokens": used.total_tokens,
                }
            }
        )
        if reply is not None:
            span.set_outputs(
                {"text": reply.text, "tool_calls": [c["name"] for c in reply.tool_calls]}
            )
        span.end()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._close(run_id)
        if span is not None:
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
        self._open(run_id, parent_run_id, f"tool.{name}", "TOOL", inputs or input_str)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._close(run_id)
        if span is None:
            return
        if isinstance(output, ToolMessage):
            key = "error" if output.status == "error" else "result"
            span.set_outputs({key: output.text})
        else:
            span.set_outputs({"result": str(output)})
        span.end()

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._close(run_id)
        if span is not None:
            span.set_outputs({"error": str(error)})
            span.end(error)


def _reply_of(response: LLMResult) -> AIMessage | None:
    if response.generations and response.generations[0]:
        generation = response.generations[0][0]
        if isinstance(generation, ChatGeneration) and isinstance(generation.message, AIMessage):
            return generation.message
    return None
