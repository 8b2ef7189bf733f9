"""Chat models by name: ``offline`` (default, shipped) or ``bedrock:<model-id>``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel

from workers.config import parse_model_spec
from workers.errors import PermanentError, RetryableError

_RETRYABLE_CODES = {
    "ThrottlingException",
    "TooManyRequestsException",
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelNotReadyException",
    "ModelTimeoutException",
    "RequestTimeout",
}


@dataclass(frozen=True)
class ModelOptions:
    region: str | None = None
    endpoint_url: str | None = None
    max_tokens: int = 1024
    temperature: float = 0.0


def make_model(spec: str, options: ModelOptions | None = None) -> BaseChatModel:
    """Build the chat model named by ``spec``. Bedrock goes through ``ChatBedrockConverse``."""
    opts = options or ModelOptions()
    kind, arg = parse_model_spec(spec)
    if kind == "offline":
        from workers.agent.offline import OfflineChatModel

        return OfflineChatModel(latency_s=float(arg or 0) / 1000.0)
    from langchain_aws import ChatBedrockConverse

    kwargs: dict[str, Any] = {
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
    """Map a model client's exception to our typed errors (botocore ``ClientError`` codes)."""
    response = getattr(exc, "response", None)
    code = ""
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    name = type(exc).__name__
    if code in _RETRYABLE_CODES or name in {"ReadTimeoutError", "ConnectTimeoutError"}:
        return RetryableError(f"model call failed ({code or name}): {exc}")
    if code in {"ValidationException", "AccessDeniedException", "ResourceNotFoundException"}:
        return PermanentError(f"model call refused ({code}): {exc}")
    return exc
