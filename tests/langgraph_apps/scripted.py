"""A deterministic chat model for the apps: it calls a bound tool when the user asks for
what the tool does ("weather in Paris" -> ``get_weather``), answers a tool's result with it,
and otherwise echoes the user under its system prompt, so a test sees which prompt (and so
which runtime context) a turn ran with. Streams word by word, reports token usage."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from workers.agent.offline import OfflineChatModel, _ai

_WEATHER = re.compile(r"weather in (\w+)", re.I)
_HANDOFF = re.compile(r"\b(math|history)\b", re.I)


class ScriptedChatModel(OfflineChatModel):
    """``name``: shown in its answers (which model a context chose)."""

    name: str = "scripted"

    def _respond(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        tools = {t["function"]["name"] for t in kwargs.get("tools", [])}
        system = next((m.text for m in messages if isinstance(m, SystemMessage)), "")
        last = messages[-1] if messages else HumanMessage("")
        tokens = sum(len(m.text) for m in messages) // 4 + 1
        if last.type == "tool":
            text = f"{self.name}: {last.text}"
            return _ai(text, [], tokens, seed=text)
        user = last.text
        weather = _WEATHER.search(user)
        if weather and "get_weather" in tools:
            return self._call("get_weather", {"city": weather.group(1)}, user, tokens)
        handoff = _HANDOFF.search(user)
        if handoff:
            target = f"transfer_to_{handoff.group(1).lower()}_expert"
            if target in tools:
                return self._call(target, {}, user, tokens)
        if user.lower().startswith("remember:") and "upsert_memory" in tools:
            content = user.split(":", 1)[1].strip()
            memory_id = "mem-" + hashlib.sha1(content.encode()).hexdigest()[:8]
            args = {"content": content, "context": "the user said so", "memory_id": memory_id}
            return self._call("upsert_memory", args, user, tokens)
        prefix = f"[{system}] " if system else ""
        text = f"{prefix}{self.name} heard: {user}"
        return _ai(text, [], tokens, seed=text + str(len(messages)))

    @staticmethod
    def _call(name: str, args: dict[str, Any], seed: str, tokens: int) -> AIMessage:
        call_id = "call_" + hashlib.sha1(f"{seed}|{name}".encode()).hexdigest()[:12]
        return _ai("", [{"name": name, "args": args, "id": call_id}], tokens, seed)
