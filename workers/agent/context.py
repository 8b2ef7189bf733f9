"""The runtime context a graph with a ``context_schema`` runs with (``runtime.context``,
``get_runtime().context``), as LangGraph hands it to ``stream(..., context=...)``.

Built for each turn from the app's ``context`` setting (``[context]`` in
``agentworker.toml``, or ``AGENTWORKER_CONTEXT``) and the fields the turn's messages set,
of those the app lets callers set (``context_from_callers``; the core refuses the others
when a message is accepted). The schema may be a dataclass (LangGraph's templates use one),
a ``TypedDict`` or a pydantic model: validated by pydantic either way, so a missing field or
a wrong type is one line naming the field. At start, a field the app must set and did not
stops ``serve`` (exit 2); a field only callers may set is checked when their turn runs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from workers.errors import ConfigError, PermanentError


class RuntimeContext:
    """Builds the context of each turn for one graph's ``context_schema``."""

    def __init__(
        self,
        schema: Any,
        app_values: Mapping[str, Any],
        *,
        from_callers: Collection[str] = (),
    ) -> None:
        self.schema = schema
        self.app_values = dict(app_values)
        self._adapter: TypeAdapter[Any] | None = None if schema is None else TypeAdapter(schema)
        self._check_at_start(set(from_callers))

    def _check_at_start(self, from_callers: set[str]) -> None:
        if self._adapter is None:
            return
        try:
            self._adapter.validate_python(self.app_values)
        except ValidationError as exc:
            for error in exc.errors():
                name = ".".join(str(p) for p in error["loc"])
                if error["type"] == "missing" and str(error["loc"][0]) in from_callers:
                    continue  # each message that runs a turn brings it
                raise ConfigError(
                    f"context.{name}: {error['msg']} (the graph's context_schema"
                    f" {_name(self.schema)}; set it in [context] of agentworker.toml or"
                    " AGENTWORKER_CONTEXT, or let callers set it with context_from_callers)"
                ) from None

    def for_turn(self, caller_values: Mapping[str, Any]) -> Any:
        """The context of a turn whose messages set ``caller_values``; ``PermanentError``
        naming the field when they leave it invalid (the turn fails with a notice)."""
        values = {**self.app_values, **caller_values}
        if self._adapter is None:
            return values or None
        try:
            return self._adapter.validate_python(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(p) for p in error["loc"])
            raise PermanentError(
                f"context.{name}: {error['msg']}", field=f"context.{name}"
            ) from None


def _name(schema: Any) -> str:
    return str(getattr(schema, "__qualname__", None) or schema)
