"""``CachingChatBedrockConverse``: ``ChatBedrockConverse`` with Bedrock prompt caching on.

Every call asks langchain-aws for its cache points (the ``cache_control`` call option of
``ChatBedrockConverse``), so an app's graph gets them without a change: a ``cachePoint`` block
after the system prompt, after the tool definitions (not on Nova, which does not cache tools),
on the last message (the prefix the next call of the turn's tool loop, or the next turn,
starts with) and, on Claude, on the message before it (the history before the newest
message). Bedrock allows four per request; points the app set itself count against them.
Cache reads and writes come back in the usage (``input_token_details``) and are priced apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_aws import ChatBedrockConverse
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

CACHE_CONTROL: dict[str, Any] = {"type": "ephemeral"}
"""The call option that turns langchain-aws's cache points on (default 5-minute TTL)."""


class CachingChatBedrockConverse(ChatBedrockConverse):
    """``ChatBedrockConverse`` whose every call carries cache points (unless the caller
    passed its own ``cache_control``)."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        kwargs.setdefault("cache_control", CACHE_CONTROL)
        return super()._generate(messages, stop, run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        kwargs.setdefault("cache_control", CACHE_CONTROL)
        return super()._stream(messages, stop, run_manager, **kwargs)
