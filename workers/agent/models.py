"""Chat models by name: ``offline`` (the default, shipped), or ``<provider>:<model>`` through
LangChain's ``init_chat_model`` (``bedrock_converse:<id>``, ``openai:<model>``,
``anthropic:<model>``, ``ollama:<model>``, ...); ``bedrock:<id>`` is an alias of
``bedrock_converse:<id>``.

Before a model is built, :func:`check_provider` turns what would fail later (a provider
package not installed, a missing credential or region) into one ``ConfigError`` line naming
what to install or set. :func:`map_model_error` maps every provider's throttling, timeouts
and 5xx to ``RetryableError`` (throttling to its subclass ``ModelThrottled``) and its
refusals of the request to ``PermanentError``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.exceptions import ModelError
from langchain_core.language_models import BaseChatModel

from workers.config import parse_model_spec
from workers.costs import base_model_id
from workers.errors import ConfigError, ModelThrottled, PermanentError, RetryableError

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
_THROTTLING_CODES = frozenset({"throttlingexception", "toomanyrequestsexception"})
_THROTTLING_STATUS = frozenset({429, 529})
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
        # botocore
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectionError",  # langchain-aws: the response stream ended early
        # openai, anthropic (the SDKs' own timeout and connection errors)
        "APITimeoutError",
        "APIConnectionError",
        # httpx, which those SDKs and ollama use
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "ConnectError",
        "ReadError",
        "RemoteProtocolError",
    }
)
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
"""HTTP statuses worth a retry (529: Anthropic's "overloaded")."""


@dataclass(frozen=True)
class Provider:
    """What a provider needs before a model can be built."""

    module: str
    """The integration package's import name."""
    install: str
    """What to install: an agentworker extra, or the package."""
    credentials: tuple[str, ...] = ()
    """Environment variables of which at least one must be set."""


PROVIDERS: dict[str, Provider] = {
    "bedrock_converse": Provider("langchain_aws", "agentworker (Bedrock is in the base install)"),
    "openai": Provider("langchain_openai", "agentworker[openai]", ("OPENAI_API_KEY",)),
    "azure_openai": Provider(
        "langchain_openai", "agentworker[openai]", ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY")
    ),
    "anthropic": Provider("langchain_anthropic", "agentworker[anthropic]", ("ANTHROPIC_API_KEY",)),
    "ollama": Provider("langchain_ollama", "agentworker[ollama]"),
    "google_genai": Provider(
        "langchain_google_genai", "langchain-google-genai", ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    ),
    "mistralai": Provider("langchain_mistralai", "langchain-mistralai", ("MISTRAL_API_KEY",)),
    "groq": Provider("langchain_groq", "langchain-groq", ("GROQ_API_KEY",)),
}
"""Providers checked before use. Any other provider ``init_chat_model`` knows works too; its
problems are reported when the model is built."""


@dataclass(frozen=True)
class ModelOptions:
    region: str | None = None
    endpoint_url: str | None = None
    max_tokens: int = 1024
    temperature: float = 0.0
    read_timeout: float = 120.0
    guardrail: Mapping[str, str] | None = None
    """Bedrock Guardrails: the Converse ``guardrailConfig`` sent with every call."""
    prompt_caching: bool = True
    """Bedrock prompt caching on the models that have it (:func:`supports_prompt_caching`)."""


PROMPT_CACHING_MODELS = re.compile(
    r"^(?:"
    r"anthropic\.claude-3-5-haiku|anthropic\.claude-3-7-sonnet"
    r"|anthropic\.claude-(?:sonnet|opus|haiku)-4"
    r"|amazon\.nova-(?:micro|lite|pro|premier))"
)
"""The Bedrock models with prompt caching (Claude 3.5 Haiku, 3.7 Sonnet and the Claude 4
family; Amazon Nova), cross-region inference profiles (``us.``, ``eu.``, ...) included."""


def supports_prompt_caching(model_id: str) -> bool:
    """Whether Bedrock caches prompts of ``model_id`` (``cachePoint`` blocks are accepted)."""
    return PROMPT_CACHING_MODELS.match(base_model_id(model_id)) is not None


def make_model(spec: str, options: ModelOptions | None = None) -> BaseChatModel:
    """Build the chat model named by ``spec`` (``ConfigError`` naming what is missing)."""
    opts = options or ModelOptions()
    provider, name = parse_model_spec(spec)
    if provider == "offline":
        from workers.agent.offline import OfflineChatModel

        return OfflineChatModel(latency_s=float(name or 0) / 1000.0)
    if opts.guardrail is not None and provider != "bedrock_converse":
        raise ConfigError(
            f"AGENTWORKER_GUARDRAIL_ID is set, but Bedrock Guardrails apply to Bedrock models"
            f" only, not AGENTWORKER_MODEL={spec!r} (the guard step works with any model)"
        )
    check_provider(spec, provider, opts)
    from langchain.chat_models import init_chat_model

    try:
        if provider == "bedrock_converse" and opts.prompt_caching and supports_prompt_caching(name):
            from workers.agent.caching import CachingChatBedrockConverse

            return CachingChatBedrockConverse(model_id=name, **_options(provider, opts))
        model = init_chat_model(name, model_provider=provider, **_options(provider, opts))
    except ImportError as exc:
        raise ConfigError(f"AGENTWORKER_MODEL={spec!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"AGENTWORKER_MODEL={spec!r}: {first}") from None
    if not isinstance(model, BaseChatModel):
        raise ConfigError(f"AGENTWORKER_MODEL={spec!r}: not a chat model ({type(model).__name__})")
    return model


def check_provider(spec: str, provider: str, options: ModelOptions) -> None:
    """Fail with one line, before anything is served, when ``provider`` cannot work here."""
    known = PROVIDERS.get(provider)
    if known is None:
        return
    if importlib.util.find_spec(known.module) is None:
        raise ConfigError(
            f"AGENTWORKER_MODEL={spec!r}: the {provider} provider needs the package"
            f" {known.module.replace('_', '-')}: pip install '{known.install}'"
        )
    if known.credentials and not any(os.environ.get(v) for v in known.credentials):
        raise ConfigError(
            f"AGENTWORKER_MODEL={spec!r}: set {' or '.join(known.credentials)}"
            f" (the {provider} provider's credentials)"
        )
    if provider == "bedrock_converse":
        _check_aws(spec, options)


def _check_aws(spec: str, options: ModelOptions) -> None:
    import boto3

    session = boto3.session.Session()
    if not (options.region or session.region_name):
        raise ConfigError(
            f"AGENTWORKER_MODEL={spec!r}: no AWS region for Bedrock: set"
            " AGENTWORKER_BEDROCK_REGION or AWS_REGION"
        )
    if session.get_credentials() is None:
        raise ConfigError(
            f"AGENTWORKER_MODEL={spec!r}: no AWS credentials for Bedrock: set AWS_PROFILE,"
            " or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )


def _options(provider: str, opts: ModelOptions) -> dict[str, Any]:
    """Per provider: explicit timeouts (a hung call must end) and one quick retry inside
    the call at most; the workflow's retry (backoff, jitter) does the rest, so retries do
    not multiply."""
    if provider == "bedrock_converse":
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "config": Config(
                retries={"mode": "standard", "total_max_attempts": 2},
                connect_timeout=10,
                read_timeout=opts.read_timeout,
            ),
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
        }
        if opts.region:
            kwargs["region_name"] = opts.region
        if opts.endpoint_url:
            kwargs["endpoint_url"] = opts.endpoint_url
        if opts.guardrail is not None:
            # ChatBedrockConverse sends it as the request's guardrailConfig, streaming or not
            kwargs["guardrail_config"] = dict(opts.guardrail)
        return kwargs
    if provider in ("openai", "azure_openai"):
        return {
            "max_retries": 1,
            "timeout": opts.read_timeout,
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
            "stream_usage": True,
        }
    if provider == "anthropic":
        return {
            "max_retries": 1,
            "timeout": opts.read_timeout,
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
        }
    if provider == "ollama":
        return {"temperature": opts.temperature, "num_predict": opts.max_tokens}
    return {"temperature": opts.temperature}


def map_model_error(exc: BaseException) -> BaseException:
    """Map a model client's exception to our typed errors. In order: LangChain's
    provider-neutral ``ModelError`` (which says whether a retry may succeed), botocore error
    codes (in the HTTP response or in the event stream), the HTTP status of a provider SDK's
    error, and timeouts, connection failures and errors reported inside a stream (by class,
    through the exception's bases). Anything else is returned as is."""
    name = type(exc).__name__
    if getattr(exc, "code", None) == "insufficient_quota":
        return PermanentError(f"model call refused (quota exhausted, {name}): {exc}")
    if isinstance(exc, ModelError):
        if exc.is_retryable:
            return RetryableError(f"model call failed ({name}): {exc}")
        return PermanentError(f"model call refused ({name}): {exc}")
    response = getattr(exc, "response", None)
    code = ""
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    kinds = {k.__name__ for k in type(exc).__mro__}
    if code.lower() in _THROTTLING_CODES:
        return ModelThrottled(f"model call throttled ({code}): {exc}")
    if code.lower() in _RETRYABLE_CODES or (not code and kinds & _RETRYABLE_ERRORS):
        return RetryableError(f"model call failed ({code or name}): {exc}")
    if code.lower() in _PERMANENT_CODES:
        return PermanentError(f"model call refused ({code}): {exc}")
    status = _status_of(exc)
    if status in _THROTTLING_STATUS:
        return ModelThrottled(f"model call throttled (HTTP {status}, {name}): {exc}")
    if status in _RETRYABLE_STATUS or (status is not None and status >= 500):
        return RetryableError(f"model call failed (HTTP {status}, {name}): {exc}")
    if status is not None and 400 <= status < 500:
        return PermanentError(f"model call refused (HTTP {status}, {name}): {exc}")
    if status is None and "APIError" in kinds:
        # openai/anthropic: an error event inside a stream that had started (no status)
        return RetryableError(f"model stream failed ({name}): {exc}")
    return exc


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status of an SDK error (``status_code`` of openai/anthropic/ollama errors,
    or of an httpx response)."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


# token usage of OpenAI-compatible servers ------------------------------------------------------

_ASK_STREAM_USAGE: ContextVar[bool] = ContextVar("agentworker_stream_usage", default=False)


@contextmanager
def stream_usage_asked(ask: bool = True) -> Iterator[None]:
    """While a turn runs, every ``ChatOpenAI`` (also one the app builds itself) that was
    not told either way asks for the token usage of its streams. LangChain leaves it off
    for any base URL but OpenAI's (not every compatible server reports it), so a turn
    through ``OPENAI_BASE_URL`` would cost zero tokens. A model built with
    ``stream_usage=False`` keeps it off; outside turns LangChain's default is untouched."""
    _install_stream_usage()
    token = _ASK_STREAM_USAGE.set(ask)
    try:
        yield
    finally:
        _ASK_STREAM_USAGE.reset(token)


def _install_stream_usage() -> None:
    try:
        from langchain_openai.chat_models import base
    except ImportError:  # the openai extra is not installed: no such model
        return
    cls: Any = base.BaseChatOpenAI
    original = cls._should_stream_usage
    if getattr(original, "agentworker", False):
        return

    def should_stream_usage(self: Any, stream_usage: bool | None = None, **kwargs: Any) -> bool:
        told = (
            stream_usage,
            kwargs.get("stream_options", {}).get("include_usage"),
            (self.model_kwargs or {}).get("stream_options", {}).get("include_usage"),
            self.stream_usage,
        )
        if _ASK_STREAM_USAGE.get() and not any(isinstance(t, bool) for t in told):
            return True
        return bool(original(self, stream_usage, **kwargs))

    should_stream_usage.agentworker = True  # type: ignore[attr-defined]
    cls._should_stream_usage = should_stream_usage
