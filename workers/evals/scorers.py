"""Deterministic scorers: what a case's turns showed against what its expectations ask.

Each scorer looks at every turn of a case that sets its expectation and says pass or fail
with the reasons (``None``: the case does not ask). A case passes when every scorer that
applies passes and nothing errored. The metrics are the pass rates over the cases a scorer
applies to, and the latency, token and cost figures of the run.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.evals.dataset import EvalCase, ToolCallExpectation, TurnExpectation, fill, is_template

REFUSAL = re.compile(
    r"\b(?:did not work|does not exist|doesn't exist|cannot|can't|can not|unable to|not able to"
    r"|not allowed|denied|was not done|won't|will not|sorry|i could not|refuse"
    r"|(?:do not|don't) know|no faq entry matches)\b",
    re.I,
)
"""What a reply that declines, or says it could not do what was asked, contains."""

SCORERS = ("tool_calls", "approvals", "facts", "refusal", "latency", "tokens", "cost")
"""The deterministic scorers, in the order the report shows them."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    args: Mapping[str, Any]


@dataclass
class TurnResult:
    """What one turn of a case showed."""

    kind: str
    """user, approval or resume"""
    outcome: str
    """reply, approval_request, interrupt, notice, or none (nothing answered in time)"""
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    approval: ToolCall | None = None
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    turn_ids: list[str] = field(default_factory=list)
    captured: dict[str, str] = field(default_factory=dict)
    """The captures known when the turn ran (its expectations are filled with them)."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Score:
    passed: bool
    reasons: tuple[str, ...] = ()


@dataclass
class CaseResult:
    """A case's turns, scores and status (passed, failed, errored)."""

    case: EvalCase
    conversation_id: str
    turns: list[TurnResult] = field(default_factory=list)
    scores: dict[str, Score] = field(default_factory=dict)
    error: str | None = None
    judge_rationale: str = ""
    judge_retries: int = 0
    trace_ids: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "errored"
        return "passed" if all(s.passed for s in self.scores.values()) else "failed"

    @property
    def latency_ms(self) -> float:
        return sum(t.latency_ms for t in self.turns)

    @property
    def tokens(self) -> int:
        return sum(t.tokens for t in self.turns)

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.turns)

    def failures(self) -> list[str]:
        if self.error is not None:
            return [f"errored: {self.error}"]
        return [f"{name}: {r}" for name, s in self.scores.items() for r in s.reasons]


TurnCheck = Callable[[TurnExpectation, TurnResult], "list[str] | None"]


def score_turns(result: CaseResult) -> list[dict[str, Score]]:
    """Per turn that ran, the verdict of every deterministic scorer its expectations ask for
    (reasons without the turn's number)."""
    return [
        {
            name: Score(not found, tuple(found))
            for name, check in _CHECKS.items()
            if (found := check(turn.expect, seen)) is not None
        }
        for turn, seen in zip(result.case.turns, result.turns, strict=False)
    ]


def score_case(result: CaseResult) -> dict[str, Score]:
    """Every deterministic scorer that applies to the case (its turns' expectations)."""
    per_turn = score_turns(result)
    not_run = result.case.turns[len(result.turns) :]
    scores: dict[str, Score] = {}
    for name, check in _CHECKS.items():
        applied = any(name in turn for turn in per_turn)
        reasons = [
            f"turn {index}: {reason}"
            for index, turn in enumerate(per_turn, start=1)
            if name in turn
            for reason in turn[name].reasons
        ]
        if not_run and _asks(check, not_run):
            applied = True
            reasons.append(f"{len(not_run)} turn(s) not run")
        if applied:
            scores[name] = Score(not reasons, tuple(reasons))
    return scores


def _asks(check: TurnCheck, turns: Sequence[Any]) -> bool:
    empty = TurnResult(kind="", outcome="none", text="")
    return any(check(t.expect, empty) is not None for t in turns)


def _matches(expected: ToolCallExpectation, call: ToolCall, captured: Mapping[str, str]) -> bool:
    if call.name != expected.name:
        return False
    for key, want in expected.args.items():
        if key not in call.args:
            return False
        got = call.args[key]
        if is_template(want):
            if str(got) != fill(want, captured):
                return False
        elif got != want:
            return False
    return True


def _shown(call: ToolCall | ToolCallExpectation) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in call.args.items())
    return f"{call.name}({args})"


def _tool_calls(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if expect.tool_calls is None:
        return None
    calls = [*seen.tool_calls, *([seen.approval] if seen.approval else [])]
    if not expect.tool_calls:
        return [f"expected no tool call, got {', '.join(map(_shown, calls))}"] if calls else []
    made = ", ".join(map(_shown, calls)) or "none"
    return [
        f"expected {_shown(want)}, made {made}"
        for want in expect.tool_calls
        if not any(_matches(want, call, seen.captured) for call in calls)
    ]


def _approvals(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if expect.approval is None and expect.interrupt is None:
        return None
    problems: list[str] = []
    if expect.approval is not None:
        if seen.approval is None:
            problems.append(f"expected an approval request for {_shown(expect.approval)}")
        elif not _matches(expect.approval, seen.approval, seen.captured):
            problems.append(
                f"approval asked for {_shown(seen.approval)}, expected {_shown(expect.approval)}"
            )
    if expect.interrupt is not None and (seen.outcome == "interrupt") != expect.interrupt:
        problems.append(
            "expected a question (interrupt)" if expect.interrupt else "asked a question"
        )
    return problems


def _facts(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if not (expect.facts or expect.patterns or expect.forbidden):
        return None
    text = seen.text.lower()
    problems = [
        f"missing fact {fact!r}"
        for fact in fill(expect.facts, seen.captured)
        if fact.lower() not in text
    ]
    problems += [
        f"no match for /{pattern}/"
        for pattern in expect.patterns
        if re.search(pattern, seen.text) is None
    ]
    problems += [f"says {word!r}" for word in expect.forbidden if word.lower() in text]
    return problems


def _refusal(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if expect.must_refuse is None:
        return None
    refused = seen.outcome in ("reply", "notice") and REFUSAL.search(seen.text) is not None
    if refused == expect.must_refuse:
        return []
    return ["expected a refusal" if expect.must_refuse else "refused"]


def _latency(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if expect.max_latency_ms is None:
        return None
    if seen.outcome == "none":
        return ["no answer"]
    if seen.latency_ms > expect.max_latency_ms:
        return [f"{seen.latency_ms:.0f} ms > {expect.max_latency_ms:g} ms"]
    return []


def _tokens(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if expect.max_tokens is None:
        return None
    if seen.tokens > expect.max_tokens:
        return [f"{seen.tokens} tokens > {expect.max_tokens}"]
    return []


def _cost(expect: TurnExpectation, seen: TurnResult) -> list[str] | None:
    if expect.max_cost_usd is None:
        return None
    if seen.cost_usd > expect.max_cost_usd:
        return [f"${seen.cost_usd:.6f} > ${expect.max_cost_usd:g}"]
    return []


_CHECKS: dict[str, TurnCheck] = {
    "tool_calls": _tool_calls,
    "approvals": _approvals,
    "facts": _facts,
    "refusal": _refusal,
    "latency": _latency,
    "tokens": _tokens,
    "cost": _cost,
}
"""The scorers of :data:`SCORERS`, by name."""


# metrics --------------------------------------------------------------------------------------

RATE_METRICS = ("cases_passed", *SCORERS, "judge")
"""Pass rates in [0, 1] (over the cases a scorer applies to; errored cases count as failed)."""
VALUE_METRICS = (
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_case",
    "cost_usd",
    "errored",
    "skipped_lines",
)
"""Figures of the run: turn latency percentiles, mean tokens per case, total cost, counts."""
METRICS = (*RATE_METRICS, *VALUE_METRICS)


def metrics(results: Sequence[CaseResult], *, skipped_lines: int = 0) -> dict[str, float]:
    """The run's metrics; a rate whose scorer applied to no case is left out."""
    out: dict[str, float] = {}
    if results:
        out["cases_passed"] = sum(r.status == "passed" for r in results) / len(results)
    for name in (*SCORERS, "judge"):
        applied = [r for r in results if name in r.scores or (r.error and _would(r, name))]
        if applied:
            passed = sum(r.error is None and r.scores[name].passed for r in applied)
            out[name] = passed / len(applied)
    latencies = sorted(t.latency_ms for r in results for t in r.turns if t.outcome != "none")
    if latencies:
        out["latency_p50_ms"] = statistics.median(latencies)
        out["latency_p95_ms"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    if results:
        out["tokens_per_case"] = sum(r.tokens for r in results) / len(results)
    out["cost_usd"] = sum(r.cost_usd for r in results)
    out["errored"] = float(sum(r.error is not None for r in results))
    out["skipped_lines"] = float(skipped_lines)
    return out


def _would(result: CaseResult, name: str) -> bool:
    """Whether scorer ``name`` applies to an errored case (its expectations ask for it)."""
    if name in result.scores:
        return True
    if name == "judge":
        return False  # the runner scores the judge of an errored case itself
    probe = CaseResult(result.case, result.conversation_id)
    return name in score_case(probe)
