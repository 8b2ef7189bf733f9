"""``OfflineChatModel``: a deterministic chat model shipped with agentworker.

It needs no network and no key. It answers plainly, calls the support tools when the text asks
for them ("open a ticket about ...", "status of ticket 3", "close ticket 3", "what time is
it", "how do I ..."), summarises tool results, streams word by word and reports token usage
(about four characters per token), so the whole pipeline runs and is testable offline.
Tool-call ids are derived from the input, so a retried turn makes the same calls (and the
tools' idempotency keys catch the repeat).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

# Every rule runs on the user's text, up to a whole 256 KB message: each is linear in it. A
# rule is a keyword, then (for some) what must follow it: searched for once, from the first
# keyword that can have it, rather than ``keyword.*?tail``, which scans the rest of the text
# again from every keyword (quadratic in "close close close ...").
_TICKET_NO = re.compile(r"(?:ticket|case)\s*+(?:#\s*+)?(\d{1,18})(?!\d)", re.I)


@dataclass(frozen=True)
class _Rule:
    intent: str
    keyword: re.Pattern[str]
    tail: re.Pattern[str] | None = None
    """What must follow the keyword: it starts after it, on the same line unless
    ``across_lines`` (it may go on past the line's end)."""
    across_lines: bool = False

    def search(self, text: str) -> re.Match[str] | None:
        """The match that ``keyword.*?tail`` would find (the tail's match)."""
        pos = 0
        tail: re.Match[str] | None = None
        while (keyword := self.keyword.search(text, pos)) is not None:
            if self.tail is None:
                return keyword
            # the first tail after a keyword is the first after any earlier one, unless it
            # started before this keyword: search again only then (each stretch of the text
            # is searched once)
            if tail is None or tail.start() < keyword.end():
                tail = self.tail.search(text, keyword.end())
                if tail is None:
                    return None
            end = text.find("\n", keyword.end())
            if self.across_lines or end < 0 or tail.start() <= end:
                return tail
            pos = end + 1  # a later keyword of this line could only do worse
        return None


_RULES: list[_Rule] = [
    _Rule(
        "create_ticket",
        re.compile(r"\b(?:open|create|file|raise|log)\b", re.I),
        re.compile(
            r"\bticket\b(?:\s+(?:about|for|on|regarding))?\s*:?\s*(?P<rest>.*)", re.I | re.S
        ),
        across_lines=True,
    ),
    _Rule("close_ticket", re.compile(r"\b(?:close|resolve)\b", re.I), _TICKET_NO),
    _Rule("escalate_ticket", re.compile(r"\b(?:escalate|urgent)\b", re.I), _TICKET_NO),
    _Rule(
        "lookup_ticket",
        re.compile(r"\b(?:status|look ?up|check|show|what about)\b", re.I),
        _TICKET_NO,
    ),
    _Rule(
        "current_time",
        re.compile(
            r"\b(?:what time|current time|what(?:'s| is) the (?:time|date)|today's date)\b", re.I
        ),
    ),
    _Rule(
        "search_faq",
        re.compile(r"^\s*(?:how|can i|where|what|why|do you|is there)\b.*\?\s*$", re.I | re.S),
    ),
]


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _text_of(message: BaseMessage) -> str:
    return message.text if isinstance(message.text, str) else str(message.content)


class OfflineChatModel(BaseChatModel):
    """Deterministic, dependency-free stand-in for a real chat model."""

    latency_s: float = 0.0
    """Simulated model latency per call (benchmarks use it to model a real model)."""

    @property
    def _llm_type(self) -> str:
        return "agentworker-offline"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # The model id traces and the price table know it by.
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = "offline"
        return params

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
        if self.latency_s:
            time.sleep(self.latency_s)
        return ChatResult(generations=[ChatGeneration(message=self._respond(messages, kwargs))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.latency_s:
            time.sleep(self.latency_s)
        reply = self._respond(messages, kwargs)
        words = re.findall(r"\S+\s*", _text_of(reply)) or [""]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk = AIMessageChunk(
                content=word,
                id=reply.id,
                tool_call_chunks=[
                    {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": n}
                    for n, c in enumerate(reply.tool_calls)
                ]
                if last
                else [],
                usage_metadata=reply.usage_metadata if last else None,
                chunk_position="last" if last else None,
            )
            if run_manager:
                run_manager.on_llm_new_token(word, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    # the deterministic "reasoning" ------------------------------------------------------

    def _respond(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        tools = {t["function"]["name"] for t in kwargs.get("tools", [])}
        prompt_tokens = sum(_tokens(_text_of(m)) for m in messages)
        last = messages[-1] if messages else HumanMessage("")
        tool_results = _trailing_tool_results(messages)
        if tool_results:
            text = " ".join(_summarise(m) for m in tool_results)
            return _ai(text, [], prompt_tokens, seed=text)
        user_text = "\n\n".join(_text_of(m) for m in _trailing_user_messages(messages)) or (
            _text_of(last)
        )
        call = _tool_call(user_text, tools)
        if call is not None:
            name, args = call
            call_id = "call_" + hashlib.sha1(f"{user_text}|{name}".encode()).hexdigest()[:16]
            return _ai("", [{"name": name, "args": args, "id": call_id}], prompt_tokens, user_text)
        turns = sum(isinstance(m, HumanMessage) for m in messages)
        text = (
            f"(offline model) You said: {user_text.strip()[:500]}"
            f" [message {turns} in this conversation's context]"
        )
        return _ai(text, [], prompt_tokens, seed=user_text)


def _json(args: dict[str, Any]) -> str:
    import json

    return json.dumps(args)


def _ai(text: str, calls: list[dict[str, Any]], prompt_tokens: int, seed: str) -> AIMessage:
    usage = UsageMetadata(
        input_tokens=prompt_tokens,
        output_tokens=_tokens(text + "".join(str(c["args"]) for c in calls)),
        total_tokens=0,
    )
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    msg_id = "offline-" + hashlib.sha1(f"{seed}|{len(calls)}".encode()).hexdigest()[:16]
    return AIMessage(
        content=text,
        tool_calls=[{**c, "type": "tool_call"} for c in calls],
        usage_metadata=usage,
        id=msg_id,
    )


def _trailing_tool_results(messages: list[BaseMessage]) -> list[ToolMessage]:
    out: list[ToolMessage] = []
    for m in reversed(messages):
        if not isinstance(m, ToolMessage):
            break
        out.append(m)
    return list(reversed(out))


def _trailing_user_messages(messages: list[BaseMessage]) -> list[HumanMessage]:
    """The user messages at the end of the chat: one turn may bring several (merged)."""
    out: list[HumanMessage] = []
    for m in reversed(messages):
        if not isinstance(m, HumanMessage):
            break
        out.append(m)
    return list(reversed(out))


def _summarise(result: ToolMessage) -> str:
    text = _text_of(result)
    if result.status == "error":
        return f"That did not work: {text}"
    return text


def _tool_call(text: str, tools: set[str]) -> tuple[str, dict[str, Any]] | None:
    for rule in _RULES:
        match = rule.search(text)
        if match is None:
            continue
        intent = rule.intent
        if intent == "create_ticket" and "create_ticket" in tools:
            subject = (match.group("rest") or text).strip().rstrip(".!") or "Support request"
            return "create_ticket", {"subject": subject[:120], "body": text.strip()}
        if intent == "close_ticket" and "update_ticket" in tools:
            return "update_ticket", {"ticket_id": int(match.group(1)), "status": "closed"}
        if intent == "escalate_ticket" and "update_ticket" in tools:
            return "update_ticket", {"ticket_id": int(match.group(1)), "priority": "urgent"}
        if intent == "lookup_ticket" and "lookup_ticket" in tools:
            return "lookup_ticket", {"ticket_id": int(match.group(1))}
        if intent == "current_time" and "current_time" in tools:
            return "current_time", {}
        if intent == "search_faq" and "search_faq" in tools:
            return "search_faq", {"query": text.strip()}
    return None
