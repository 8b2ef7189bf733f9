"""Golden datasets: one JSON case per line of ``evals/*.jsonl``, validated by :class:`EvalCase`.

A case is a conversation: user messages, approval decisions and answers to an
``interrupt()``, each with what the turn must show (tool calls and their arguments, facts in
the reply, a refusal, limits on latency, tokens and cost). A line that is not a valid case is
reported with its file and line number and skipped; the others still run.

Values captured from a reply (``capture``: a regular expression with one group) can be used
as ``{name}`` in later turns' texts, facts and expected arguments: a ticket's number is known
only once the ticket is opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ToolCallExpectation(BaseModel):
    """A tool call the turn must make: its name and a subset of its arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    args: dict[str, JsonValue] = Field(
        default_factory=dict, description="Arguments the call must have (others may be there)."
    )


class TurnExpectation(BaseModel):
    """What one turn must show. Unset fields are not checked."""

    model_config = ConfigDict(extra="forbid")

    tool_calls: list[ToolCallExpectation] | None = Field(
        None, description="Calls the turn must make ([]: no tool call at all)."
    )
    approval: ToolCallExpectation | None = Field(
        None, description="The turn stops and asks a human to approve this call."
    )
    interrupt: bool | None = Field(
        None, description="The turn stops with a free-form question (an interrupt())."
    )
    facts: list[str] = Field(
        default_factory=list, description="Substrings the reply must contain (any case)."
    )
    patterns: list[str] = Field(
        default_factory=list, description="Regular expressions the reply must match."
    )
    forbidden: list[str] = Field(
        default_factory=list, description="Substrings the reply must not contain (any case)."
    )
    must_refuse: bool | None = Field(
        None, description="True: the reply declines or reports it could not do it; false: not."
    )
    max_latency_ms: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, ge=0)
    capture: dict[str, str] = Field(
        default_factory=dict,
        description="name -> regular expression with one group, read from the reply.",
    )

    @model_validator(mode="after")
    def _compiles(self) -> TurnExpectation:
        for pattern in [*self.patterns, *self.capture.values()]:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
            if pattern in self.capture.values() and compiled.groups != 1:
                raise ValueError(f"capture {pattern!r} must have exactly one group")
        return self


class EvalTurn(BaseModel):
    """One thing the user does: send a message (``user``), approve or deny the pending tool
    call (``approve``), or answer the pending question (``answer``, any JSON value)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, min_length=1, max_length=20_000)
    approve: bool | None = None
    reason: str = Field("", max_length=2000, description="Why, for approve.")
    answer: JsonValue = None
    expect: TurnExpectation = Field(default_factory=TurnExpectation)

    @model_validator(mode="after")
    def _one_action(self) -> EvalTurn:
        given = [
            name
            for name in ("user", "approve", "answer")
            if name in self.model_fields_set and getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("a turn has exactly one of 'user', 'approve', 'answer'")
        return self

    @property
    def kind(self) -> str:
        if self.user is not None:
            return "user"
        return "approval" if self.approve is not None else "resume"


class EvalCase(BaseModel):
    """One golden conversation."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
    graph: str | None = Field(
        None, description="The app's graph (default: the run's graph, else the support agent)."
    )
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    turns: list[EvalTurn] = Field(min_length=1, max_length=50)
    judge: str | None = Field(
        None, description="What an LLM judge checks in this conversation (with --judge)."
    )
    review: bool = Field(
        False, description="A draft (from feedback) whose expectations a human must fill in."
    )
    notes: dict[str, JsonValue] = Field(default_factory=dict)


@dataclass(frozen=True)
class SkippedLine:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Dataset:
    """The cases of one or more files, in order, and the lines that were skipped."""

    cases: list[EvalCase] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)
    in_review: list[EvalCase] = field(default_factory=list)
    """Cases marked ``review``: drafts, not run."""
    sources: list[str] = field(default_factory=list)


def load_datasets(paths: Iterable[Path]) -> Dataset:
    """Read every line of ``paths``: a malformed line is skipped and recorded, a case id
    seen before is skipped as well. A file that cannot be read is a ``ConfigError``."""
    from workers.errors import ConfigError

    data = Dataset()
    seen: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"dataset {path}: {exc}") from None
        data.sources.append(str(path))
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            case, problem = _parse_line(line)
            if case is None:
                data.skipped.append(SkippedLine(path, number, problem))
                continue
            where = f"{path}:{number}"
            if case.id in seen:
                data.skipped.append(
                    SkippedLine(path, number, f"case id {case.id!r} already at {seen[case.id]}")
                )
                continue
            seen[case.id] = where
            (data.in_review if case.review else data.cases).append(case)
    return data


def _parse_line(line: str) -> tuple[EvalCase | None, str]:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} (column {exc.colno})"
    try:
        return EvalCase.model_validate(raw), ""
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "case"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return None, f"invalid case: {where}: {err['msg']}{more}"


def fill(value: Any, captured: Mapping[str, str]) -> Any:
    """``value`` with ``{name}`` replaced by what was captured (strings, in lists and dicts);
    ``KeyError`` names a placeholder nothing captured."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: captured[m.group(1)], value)
    if isinstance(value, list):
        return [fill(v, captured) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, captured) for k, v in value.items()}
    return value


def is_template(value: Any) -> bool:
    return isinstance(value, str) and _PLACEHOLDER.search(value) is not None
