"""The tool abstraction: a name, a pydantic argument model, a function, an approval flag."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from workers.core.ports import Clock, TicketStore


@dataclass(frozen=True)
class ToolContext:
    """What a tool may touch. ``idempotency_key`` is derived from (thread, checkpoint,
    tool_call_id), so a retried turn repeats no side effect."""

    conversation_id: str
    idempotency_key: str
    tickets: TicketStore
    clock: Clock


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[ToolContext, Any], str]
    describe: Callable[[Any], str] | None = None
    """Human-readable question for an approval request, e.g. 'Close ticket 3?'."""

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema, accepted by every LangChain chat model."""
        params = self.args.model_json_schema()
        params.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }

    def question(self, args: dict[str, Any]) -> str:
        parsed = self.args.model_validate(args)
        if self.describe is not None:
            return self.describe(parsed)
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return f"Allow {self.name}({shown})?"
