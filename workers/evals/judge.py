"""An LLM judge: the configured chat model reads a case's conversation and its criteria and
answers ``PASS`` or ``FAIL`` with a reason.

MLflow's GenAI judges call their model through their own provider clients (LiteLLM), which
cannot use this project's models (the offline model, a Bedrock endpoint override such as the
Converse stub); this judge calls the model through :func:`workers.agent.models.make_model`,
like the agent. Calls are bounded by a semaphore shared by the whole run and retried on
throttling (and other retryable faults) with exponential backoff and jitter; anything else,
or an answer that is no verdict, is a ``JudgeError``: the case is errored, never passed.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from workers.agent.models import map_model_error
from workers.errors import JudgeError, RetryableError
from workers.evals.scorers import CaseResult

DEFAULT_CRITERIA = (
    "The assistant's replies answer what the user asked, are consistent with the tool results"
    " shown, and never claim an action that was not done."
)
SYSTEM = (
    "You are a strict evaluator of a customer-support assistant. Read the conversation and"
    " the criteria. Answer with one line: 'PASS: <reason>' if the conversation meets every"
    " criterion, else 'FAIL: <reason>'."
)
_VERDICT = re.compile(r"^\W*(PASS|FAIL)\b\W*(.*)", re.I | re.S)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    rationale: str
    retries: int


class Judge:
    """Judges cases with ``model``: at most ``concurrency`` calls at a time, ``attempts``
    tries per case on retryable faults, waiting ``backoff_s`` x 2^n (with jitter) between."""

    def __init__(
        self,
        model: BaseChatModel,
        *,
        name: str,
        concurrency: int = 4,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ) -> None:
        self.model = model
        self.name = name
        self._slots = asyncio.Semaphore(concurrency)
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    async def judge(self, result: CaseResult) -> Verdict:
        """The verdict on ``result``'s conversation; ``JudgeError`` when there is none."""
        messages = [SystemMessage(SYSTEM), HumanMessage(conversation_text(result))]
        retries = 0
        while True:
            try:
                async with self._slots:
                    reply = await asyncio.to_thread(self.model.invoke, messages)
                return parse_verdict(reply.text, retries)
            except JudgeError:
                raise
            except Exception as exc:  # the provider's own errors, mapped below
                mapped = map_model_error(exc)
                if not isinstance(mapped, RetryableError):
                    raise JudgeError(f"judge {self.name}: {type(exc).__name__}: {exc}") from None
                retries += 1
                if retries >= self._attempts:
                    raise JudgeError(
                        f"judge {self.name}: still failing after {retries} attempts: {mapped}"
                    ) from None
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (retries - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))


def parse_verdict(text: str, retries: int = 0) -> Verdict:
    match = _VERDICT.match(text.strip())
    if match is None:
        raise JudgeError(f"the judge's answer is no verdict: {text.strip()[:200]!r}")
    return Verdict(match.group(1).upper() == "PASS", match.group(2).strip()[:1000], retries)


def conversation_text(result: CaseResult) -> str:
    """The conversation as the judge reads it: the user's turns, the tool calls and the
    replies, then the criteria."""
    lines: list[str] = []
    for turn, seen in zip(result.case.turns, result.turns, strict=False):
        if turn.user is not None:
            lines.append(f"USER: {turn.user}")
        elif turn.approve is not None:
            lines.append(f"USER: ({'approves' if turn.approve else 'denies'} the action)")
        else:
            lines.append(f"USER: (answers {turn.answer!r})")
        for call in seen.tool_calls:
            lines.append(f"TOOL CALL: {call.name}({dict(call.args)})")
        lines.append(f"ASSISTANT ({seen.outcome}): {seen.text}")
    criteria = result.case.judge or DEFAULT_CRITERIA
    return "CONVERSATION:\n" + "\n".join(lines) + f"\n\nCRITERIA: {criteria}"
