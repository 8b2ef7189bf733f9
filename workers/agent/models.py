"""Chat models by name: ``offline`` (default, shipped) or ``bedrock:<model-id>``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel

from workers.config import parse_model_spec
from workers.errors import PermanentError, RetryableError

# Compared in lower case: errors raised mid-stream carry the event member's name
# ("throttlingException"), errors of the HTTP response the shape's ("ThrottlingException").
_RETRYABLE_CODES = frozenset(
    {
        "throttlingexception",
        "toomanyrequestsexception",
        "serviceunavailableexception",
        "internalserverexception",
        "modelnotreadyexception",
        "modeltimeoutexception",
        "modelstreamerrorexception",
        "modelerrorexception",
        "requesttimeout",
    }
)
_PERMANENT_CODES = frozenset(
    {
        "validationexception",
        "accessdeniedexception",
        "resourcenotfoundexception",
        "servicequotaexceededexception",
    }
)
_RETRYABLE_ERRORS = frozenset(
    {
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectionError",  # langchain-aws: the response stream ended early
    }
)


@dataclass(frozen=True)
class ModelOptions:
    region: str | None = None
    endpoint_url: str | None = None
    max_tokens: int = 1024
    temperature: float = 0.0
    read_timeout: float = 120.0


def make_model(spec: str, options: ModelOptions | None = None) -> BaseChatModel:
    """Build the chat model named by ``spec``. Bedrock goes through ``ChatBedrockConverse``."""
    opts = options or ModelOptions()
    kind, arg = parse_model_spec(spec)
    if kind == "offline":
        from workers.agent.offline import OfflineChatModel

        return OfflineChatModel(latency_s=float(arg or 0) / 1000.0)
    from botocore.config import Config
    from langchain_aws import ChatBedrockConverse

    kwargs: dict[str, Any] = {
        # One quick retry inside the call; the workflow's Retry (backoff, jitter) does the
        # rest, so retries do not multiply. Explicit timeouts: a hung call must end.
        "config": Config(
            retries={"mode": "standard", "total_max_attempts": 2},
            connect_timeout=10,
            read_timeout=opts.read_timeout,
        ),
        "model": arg,
        "max_tokens": opts.max_tokens,
        "temperature": opts.temperature,
    }
    if opts.region:
        kwargs["region_name"] = opts.region
    if opts.endpoint_url:
        kwargs["endpoint_url"] = opts.endpoint_url
    return ChatBedrockConverse(**kwargs)


def map_model_error(exc: Exception) -> Exception:
    """Map a model client's exception to our typed errors (botocore error codes, in the
    HTTP response or in the event stream, and connection failures)."""
    response = getattr(exc, "response", None)
    code = ""
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    name = type(exc).__name__
    if code.lower() in _RETRYABLE_CODES or (not code and name in _RETRYABLE_ERRORS):
        return RetryableError(f"model call failed ({code or name}): {exc}")
    if code.lower() in _PERMANENT_CODES:
        return PermanentError(f"model call refused ({code}): {exc}")
    return exc
