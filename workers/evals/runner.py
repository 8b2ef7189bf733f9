"""Running golden cases through the real app: the embedded runtime, in this process.

Each group of cases that share a graph gets its own embedded runtime over a temporary state
directory (SQLite), built as ``agentworker serve`` builds it (its tracer included), with the
run's model and app settings; traces go to the tracking URI of the caller's settings and are
all exported when the runtime stops. Every message of a case is
accepted with :meth:`EmbeddedRuntime.accept` and answered by the worker pool through the core
steps, exactly as a served message: approvals and answers to an ``interrupt()`` are inbox
messages that resume the turn. Each case is its own conversation and its own customer (its
tickets are its own); cases run ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.identity import Principal
from events.inbound import ApprovalDecision, InboundMessage, ResumeAnswer
from events.outbound import ApprovalRequest, InterruptRequest, Notice, Reply, TokenUsage
from workers.config import Settings, parse_model_spec
from workers.core import figures
from workers.costs import ModelPrice, cost_of, merged_prices, price_for
from workers.evals.dataset import EvalCase, EvalTurn, fill
from workers.evals.judge import Judge
from workers.evals.scorers import CaseResult, Score, ToolCall, TurnResult, score_case

log = logging.getLogger(__name__)

TRACE_FLUSH_S = 120.0
"""How long an eval waits for its traces to reach MLflow."""
TENANT = "eval"
"""The tenant of every eval conversation (each case is its own owner and customer)."""


@dataclass(frozen=True)
class Prices:
    """The run's model's price in the settings' price table (``None``: it has none)."""

    price: ModelPrice | None

    @classmethod
    def for_settings(cls, settings: Settings) -> Prices:
        provider, model = parse_model_spec(settings.model)
        model_id = "offline" if provider == "offline" else model
        return cls(price_for(model_id, merged_prices(settings.prices)))

    @property
    def known(self) -> bool:
        return self.price is not None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        if self.price is None:
            return 0.0
        usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
        return cost_of(usage, self.price).total_cost


@dataclass(frozen=True)
class RunOptions:
    concurrency: int = 4
    turn_timeout_s: float = 60.0
    graph_override: str | None = None
    """``--graph``: every case runs on this graph (else the case's, else the settings')."""


class _CaseError(Exception):
    """A case cannot go on (nothing to approve, a capture that found nothing)."""


def graph_of(case: EvalCase, settings: Settings, options: RunOptions) -> str | None:
    return options.graph_override or case.graph or settings.graph


def conversation_id(batch: str, case: EvalCase) -> str:
    return f"{figures.EVAL_CONVERSATION_PREFIX}{batch}:{case.id}"


async def run_cases(
    cases: Sequence[EvalCase],
    settings: Settings,
    *,
    options: RunOptions,
    judge: Judge | None = None,
    on_done: Callable[[CaseResult], None] = lambda _r: None,
) -> list[CaseResult]:
    """Run and score ``cases`` (in their order in the result); ``on_done`` after each."""
    batch = uuid.uuid4().hex[:12]
    prices = Prices.for_settings(settings)
    groups: dict[str | None, list[EvalCase]] = {}
    for case in cases:
        groups.setdefault(graph_of(case, settings, options), []).append(case)
    done: dict[str, CaseResult] = {}
    for graph, members in groups.items():
        with tempfile.TemporaryDirectory(prefix="agentworker-eval-") as state:
            group_settings = settings.model_copy(
                update={
                    "state_dir": Path(state),
                    "graph": graph,
                    "workers": max(1, min(options.concurrency, 64)),
                    "mlflow_tracking_uri": settings.tracking_uri,
                }
            )
            results = await _run_group(
                members, group_settings, options, judge, batch, prices, on_done
            )
        done.update((r.case.id, r) for r in results)
    return [done[c.id] for c in cases]


async def _run_group(  # noqa: PLR0917 (one private call site, all of a run's parts)
    cases: Sequence[EvalCase],
    settings: Settings,
    options: RunOptions,
    judge: Judge | None,
    batch: str,
    prices: Prices,
    on_done: Callable[[CaseResult], None],
) -> list[CaseResult]:
    from workers.bootstrap import prepare_embedded

    runtime = prepare_embedded(settings)()
    await runtime.start()
    slots = asyncio.Semaphore(max(1, options.concurrency))

    async def one(case: EvalCase) -> CaseResult:
        async with slots:
            result = await _run_case(runtime, case, batch, prices, options.turn_timeout_s)
            result.scores = score_case(result)
            if judge is not None and result.error is None:
                await _judge(judge, result)
        on_done(result)
        return result

    try:
        results = list(await asyncio.gather(*(one(c) for c in cases)))
        # Every trace in MLflow before the eval run links them (close alone may stop an
        # exporter that has not started exporting yet).
        if not await asyncio.to_thread(runtime.deps.tracer.flush, TRACE_FLUSH_S):
            log.warning("traces not all exported within %.0fs: some are not linked", TRACE_FLUSH_S)
        return results
    finally:
        await runtime.stop()


async def _judge(judge: Judge, result: CaseResult) -> None:
    from workers.errors import JudgeError

    try:
        verdict = await judge.judge(result)
    except JudgeError as exc:
        result.error = str(exc)
        result.scores["judge"] = Score(False, (str(exc),))
        return
    result.judge_retries = verdict.retries
    result.judge_rationale = verdict.rationale
    reasons = () if verdict.passed else (verdict.rationale or "the judge said FAIL",)
    result.scores["judge"] = Score(verdict.passed, reasons)


async def _run_case(
    runtime: Any, case: EvalCase, batch: str, prices: Prices, timeout_s: float
) -> CaseResult:
    principal = Principal(id=f"eval-{case.id}", tenant=TENANT)
    cid = conversation_id(batch, case)
    result = CaseResult(case, cid)
    captured: dict[str, str] = {}
    logged = 0
    for index, turn in enumerate(case.turns, start=1):
        try:
            msg = await _message(runtime, cid, principal, turn, captured)
            started = time.perf_counter()
            await runtime.accept(msg, principal)
            answers = await _answers(runtime, cid, principal, msg.message_id, timeout_s)
            latency_ms = (time.perf_counter() - started) * 1000
            log = await asyncio.to_thread(runtime.store.load_log, cid, limit=100_000)
            calls = _tool_calls(runtime, log, len(log) - logged)
            logged = len(log)
            seen = _turn_result(
                turn, answers, calls, latency_ms=latency_ms, prices=prices, captured=dict(captured)
            )
            result.turns.append(seen)
            _capture(turn, seen, captured)
        except _CaseError as exc:
            result.error = f"turn {index}: {exc}"
            break
        except Exception as exc:  # a turn the runtime could not run: the case errored
            result.error = f"turn {index}: {type(exc).__name__}: {exc}"
            break
    return result


async def _message(
    runtime: Any, cid: str, principal: Principal, turn: EvalTurn, captured: dict[str, str]
) -> InboundMessage:
    if turn.user is not None:
        try:
            text = fill(turn.user, captured)
        except KeyError as exc:
            raise _CaseError(f"nothing captured {exc.args[0]!r} before it is used") from None
        return InboundMessage(conversation_id=cid, text=text, sender=principal.id)
    history = await runtime.history(cid, principal)
    pending = None if history is None else history.state.pending_approval
    if turn.approve is not None:
        if not isinstance(pending, ApprovalRequest):
            raise _CaseError("nothing waits for an approval")
        decision = ApprovalDecision(
            interrupt_id=pending.interrupt_id, approved=turn.approve, reason=turn.reason
        )
        return InboundMessage(
            conversation_id=cid, kind="approval", approval=decision, sender=principal.id
        )
    if not isinstance(pending, InterruptRequest):
        raise _CaseError("no question waits for an answer")
    answer = ResumeAnswer(interrupt_id=pending.interrupt_id, value=turn.answer)
    return InboundMessage(conversation_id=cid, kind="resume", resume=answer, sender=principal.id)


Answer = Reply | ApprovalRequest | InterruptRequest | Notice


async def _answers(
    runtime: Any, cid: str, principal: Principal, message_id: str, timeout_s: float
) -> list[Answer]:
    """What the conversation's outbox holds in reply to ``message_id`` once something does
    (``[]`` after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        history = await runtime.history(cid, principal)
        if history is not None:
            found = [e.payload for e in history.outbox if message_id in e.payload.in_reply_to]
            if found:
                return found
        await asyncio.sleep(0.003)
    return []


def _tool_calls(runtime: Any, log: Sequence[Any], new: int) -> list[ToolCall]:
    """The tool calls whose results the turn logged (its last ``new`` log entries): a call
    asked in an earlier turn and approved now ran in this one."""
    from langchain_core.messages import AIMessage, ToolMessage

    messages = runtime.deps.agent.decode_log(log) if new else []
    asked = {
        str(call["id"]): ToolCall(str(call["name"]), dict(call["args"]))
        for m in messages
        if isinstance(m, AIMessage)
        for call in m.tool_calls
    }
    return [
        asked.get(m.tool_call_id) or ToolCall(str(m.name), {})
        for m in messages[len(messages) - new :]
        if isinstance(m, ToolMessage)
    ]


def _turn_result(
    turn: EvalTurn,
    answers: list[Answer],
    calls: list[ToolCall],
    *,
    latency_ms: float,
    prices: Prices,
    captured: dict[str, str],
) -> TurnResult:
    seen = TurnResult(
        kind=turn.kind,
        outcome="none",
        text="",
        tool_calls=calls,
        latency_ms=latency_ms,
        captured=captured,
    )
    texts: list[str] = []
    for answer in answers:
        texts.append(answer.text)
        seen.outcome = answer.type
        seen.turn_ids += [answer.turn_id] if not isinstance(answer, Notice) else []
        if isinstance(answer, Reply):
            seen.input_tokens += answer.usage.input_tokens
            seen.output_tokens += answer.usage.output_tokens
        elif isinstance(answer, ApprovalRequest):
            seen.approval = ToolCall(answer.tool, dict(answer.args))
    seen.text = "\n".join(texts)
    if not answers:
        seen.text = "(no answer in time)"
    seen.cost_usd = prices.cost(seen.input_tokens, seen.output_tokens)
    return seen


def _capture(turn: EvalTurn, seen: TurnResult, captured: dict[str, str]) -> None:
    for name, pattern in turn.expect.capture.items():
        match = re.search(pattern, seen.text)
        if match is None:
            raise _CaseError(f"capture {name!r}: /{pattern}/ found nothing in {seen.text!r}")
        captured[name] = match.group(1)
