"""``OpenAIStubServer``: a local HTTP server that speaks the OpenAI Chat Completions API.

Real clients (``ChatOpenAI``, the ``openai`` SDK) reach it through ``base_url``. It answers
``POST /v1/chat/completions`` (also ``/chat/completions``) with a JSON ``chat.completion``, or,
for ``"stream": true``, with server-sent events of ``chat.completion.chunk`` objects ending in
``data: [DONE]``, so the SDK's own parsers, error classes and retries run exactly as against
OpenAI. Tests script replies (text, tool calls, usage), throttling and failures per server or
per model name; with nothing scripted the stub answers like the offline model
(``workers.agent.offline``), tool calls included. Every request is recorded.

Errors are shaped like OpenAI's: an HTTP status and a JSON body
``{"error": {"message", "type", "param", "code"}}``; throttling is HTTP 429 with a
``retry-after`` header. The reply types ``Reply``, ``ToolUse`` and ``Usage`` are the Converse
stub's, so a test can script both stubs alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import string
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import urlsplit

from workers.sandbox.converse_stub import Reply, ToolUse, Usage, estimate_usage
from workers.sandbox.stub_http import (
    StubHandler,
    StubServer,
    pieces,
    words,
)

logger = logging.getLogger(__name__)

SSE_CONTENT_TYPE = "text/event-stream"
_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
"""The roles OpenAI accepts (``function`` is the deprecated predecessor of ``tool``)."""

# The ``error.type`` of OpenAI's error bodies for these statuses; ``fail`` can set any other.
ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
    500: "server_error",
    502: "server_error",
    503: "server_error",
}

# what a test scripts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """An HTTP error answer, shaped like OpenAI's."""

    status: int
    message: str
    error_type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers (``retry-after`` of a throttle)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class StreamFailure:
    """A streamed answer that opens with HTTP 200, sends ``text_before`` and then breaks.

    ``error`` None: the connection is closed in the middle of the chunked body (the SDK sees
    the peer close early). Otherwise a ``data: {"error": ...}`` event is sent first, as
    OpenAI does for faults after the stream opened (the SDK raises ``openai.APIError``).
    """

    text_before: str = ""
    error: Failure | None = None


Outcome = Reply | Failure | StreamFailure


@dataclass(frozen=True)
class _Scripted:
    outcome: Outcome
    model: str | None
    new_ids: bool | None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stub received, for tests to assert on what the client sent."""

    model: str
    body: dict[str, Any]
    streaming: bool
    headers: Mapping[str, str]
    path: str = "/v1/chat/completions"

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive, as HTTP header names are)."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header (``Bearer <api key>``), or ``""``."""
        return self.header("Authorization") or ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages", [])
        return messages if isinstance(messages, list) else []

    @property
    def system_text(self) -> str:
        """The text of the system (and developer) messages, joined by newlines."""
        return "\n".join(
            _content_text(m.get("content"))
            for m in self.messages
            if isinstance(m, dict) and m.get("role") in ("system", "developer")
        )

    @property
    def tool_names(self) -> list[str]:
        tools = self.body.get("tools") or []
        return [
            str(t["function"]["name"])
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") == "user":
                text = _content_text(message.get("content"))
                if text:
                    return text
        return ""

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the usage chunk of a stream."""
        return _include_usage(self.body)


# the server ---------------------------------------------------------------------------------


class OpenAIStubServer(StubServer["_Scripted", "RecordedRequest"]):
    """A scripted OpenAI Chat Completions endpoint on 127.0.0.1 with a free port, in a thread.

    Use as a context manager (or ``start()``/``stop()``) and give ``base_url`` to the client.
    Scripted outcomes are consumed first in, first out; an outcome scripted for a model name is
    only consumed by requests for that model.
    """

    name = "openai-stub"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        known_models: Collection[str] | None = None,
        api_key: str | None = None,
        new_ids: bool = False,
        latency_s: float = 0.0,
        stream_delay_s: float = 0.0,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            known_models=known_models,
            latency_s=latency_s,
            stream_delay_s=stream_delay_s,
        )
        self.api_key = api_key
        """If set, a request without ``Authorization: Bearer <api_key>`` gets OpenAI's 401."""
        self.new_ids = new_ids
        """Give every tool call of every answer a fresh random id (``call_...``), scripted ids
        and the default reply's deterministic ones included: a model whose ids change on each
        call, as a real model's do when a turn is retried."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _ChatCompletionsHandler

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what ``base_url``/``OPENAI_BASE_URL`` take."""
        return f"{self.endpoint_url}/v1"

    # scripting -------------------------------------------------------------------------------

    def script(
        self,
        reply_text: str = "",
        tool_calls: Sequence[ToolUse | Mapping[str, Any]] = (),
        usage: Usage | Mapping[str, int] | None = None,
        *,
        finish_reason: str | None = None,
        new_ids: bool | None = None,
        model: str | None = None,
    ) -> None:
        """Queue one reply. A tool call is a ``ToolUse`` or a mapping with ``name``,
        ``arguments`` (a dict or a JSON string; also ``args`` or ``input``) and optionally
        ``id``; a tool call without an id gets a deterministic ``call_...`` id. Usage is a
        ``Usage`` or a mapping with ``prompt_tokens``/``completion_tokens`` (or
        ``input_tokens``/``output_tokens``); None estimates it. ``finish_reason`` None:
        ``tool_calls`` when the reply calls tools, else ``stop``. ``new_ids`` overrides the
        server's ``new_ids`` for this reply."""
        reply = Reply(
            text=reply_text,
            tool_calls=tuple(_tool_use(c) for c in tool_calls),
            usage=_usage(usage),
            stop_reason=finish_reason,
        )
        self._push(reply, model, 1, new_ids)

    def throttle(
        self,
        times: int = 1,
        *,
        message: str = "Rate limit reached for requests. Please try again in 1s.",
        retry_after: float | None = 1,
        code: str = "rate_limit_exceeded",
        model: str | None = None,
    ) -> None:
        """The next ``times`` requests get HTTP 429 with OpenAI's rate-limit body and, unless
        ``retry_after`` is None, a ``retry-after`` header of that many seconds (the SDK's
        own retries honour it). ``code="insufficient_quota"`` gives OpenAI's quota error."""
        headers = {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        }
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        error_type = "insufficient_quota" if code == "insufficient_quota" else "requests"
        failure = Failure(429, message, error_type, None, code, headers)
        self._push(failure, model, times, None)

    def fail(
        self,
        status: int = 500,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        model: str | None = None,
    ) -> None:
        """The next ``times`` requests get HTTP ``status`` with OpenAI's error body
        (``error_type`` None: the type OpenAI sends with that status)."""
        failure = Failure(
            status,
            message or _default_message(status),
            error_type
            or ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            param,
            code,
            dict(headers or {}),
        )
        self._push(failure, model, times, None)

    def bad_request(
        self,
        message: str = "Invalid request.",
        *,
        param: str | None = None,
        code: str | None = None,
        times: int = 1,
        model: str | None = None,
    ) -> None:
        """The next ``times`` requests get HTTP 400 ``invalid_request_error``."""
        self.fail(400, message, param=param, code=code, times=times, model=model)

    def fail_stream(
        self,
        text_before: str = "",
        *,
        error_message: str | None = None,
        error_type: str = "server_error",
        code: str | None = None,
        model: str | None = None,
    ) -> None:
        """The next *streaming* request opens its stream, sends ``text_before`` (word by
        word) and then, with ``error_message`` None, has its connection closed mid-body;
        otherwise gets an in-stream ``{"error": ...}`` event first. Non-streaming requests
        pass over this entry."""
        error = None
        if error_message is not None:
            error = Failure(200, error_message, error_type, None, code)
        self._push(StreamFailure(text_before, error), model, 1, None)

    def _push(self, outcome: Outcome, model: str | None, times: int, new_ids: bool | None) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queue(_Scripted(outcome, model, new_ids) for _ in range(times))

    # request handling (called from handler threads) ------------------------------------------

    def _answer(
        self, body: Any, headers: Mapping[str, str], path: str
    ) -> tuple[int, Outcome, bool]:
        """Record the request and decide its answer, with the request's serial number and
        whether its tool calls get fresh random ids.

        In order: a wrong API key; an unknown model; a scripted ``Failure`` (so a test can
        provoke any error with any request); OpenAI's 400 for a malformed request, which
        consumes no scripted reply; the next scripted reply; the default reply.
        """
        problem: Failure | None = _bad(
            "We could not parse the JSON body of your request: expected a JSON object."
        )
        if isinstance(body, dict):
            problem = validate_request(body)
        else:
            body = {}
        model = str(body.get("model") or "")
        request = RecordedRequest(model, body, body.get("stream") is True, headers, path)
        with self._lock:
            self._requests.append(request)
            serial = len(self._requests)
            if self.api_key is not None and request.authorization != f"Bearer {self.api_key}":
                return serial, _invalid_api_key(request.authorization), False
            if self.known_models is not None and problem is None and model not in self.known_models:
                return serial, _model_not_found(model), False
            scripted = self._take(request, failures_only=problem is not None)
            new_ids = self.new_ids
        if scripted is not None:
            fresh = new_ids if scripted.new_ids is None else scripted.new_ids
            return serial, scripted.outcome, fresh
        if problem is not None:
            return serial, problem, False
        return serial, default_reply(body), new_ids

    def _take(self, request: RecordedRequest, *, failures_only: bool) -> _Scripted | None:
        """Remove and return the first scripted outcome meant for ``request`` (lock held)."""
        for i, entry in enumerate(self._script):
            if entry.model not in (None, request.model):
                continue
            if isinstance(entry.outcome, StreamFailure) and not request.streaming:
                continue
            if failures_only and not isinstance(entry.outcome, Failure):
                return None
            del self._script[i]
            return entry
        return None


class _ChatCompletionsHandler(StubHandler[OpenAIStubServer]):
    server_version = "OpenAIStub/1"
    log_name = "openai stub"

    def request_id_header(self) -> tuple[str, str]:
        return "x-request-id", f"req_{uuid.uuid4().hex}"

    def do_GET(self) -> None:
        self._drain()
        self._send_error(_invalid_url("GET", self.path))

    def do_POST(self) -> None:
        raw = self._drain()
        path = urlsplit(self.path).path.rstrip("/")
        if path not in _PATHS:
            self._send_error(_invalid_url("POST", self.path))
            return
        try:
            body: Any = json.loads(raw or b"{}")
        except ValueError:
            self._send_error(
                _bad("We could not parse the JSON body of your request: it is not valid JSON.")
            )
            return
        try:
            serial, outcome, fresh = self.stub._answer(body, dict(self.headers), path)
        except Exception as exc:
            # A request the default reply cannot handle is the stub's fault: answer like an
            # OpenAI 500 instead of dropping the connection, and keep the traceback in the log.
            logger.exception("openai stub: cannot answer %s", self.path)
            self._send_error(
                Failure(
                    500,
                    f"The server had an error while processing your request. (OpenAI stub"
                    f" error: {type(exc).__name__}: {exc})",
                    "server_error",
                )
            )
            return
        try:
            if isinstance(outcome, Failure):
                self._send_error(outcome)
                return
            if self.stub.latency_s > 0:
                time.sleep(self.stub.latency_s)
            request = cast(dict[str, Any], body)  # a Reply is only decided for a valid body
            if isinstance(outcome, StreamFailure):
                self._send_broken_stream(outcome, request)
                return
            chunks = reply_chunks(_with_ids(outcome, serial, fresh), request)
            if request.get("stream") is True:
                self._send_stream(_sse(chunks, include_usage=_include_usage(request)))
            else:
                self._send_json(200, completion_response(chunks))
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("openai stub: client went away during request %d", serial)

    # plumbing --------------------------------------------------------------------------------

    def _send_error(self, failure: Failure) -> None:
        self._send_json(failure.status, failure.to_json(), failure.headers)

    def _open_stream(self) -> None:
        self._open_chunked(SSE_CONTENT_TYPE, {"Cache-Control": "no-cache"})

    def _send_stream(self, events: Iterator[bytes]) -> None:
        self._open_stream()
        self._write_chunks(events, self.stub.stream_delay_s)
        self._end_chunks()

    def _send_broken_stream(self, failure: StreamFailure, body: Mapping[str, Any]) -> None:
        self._open_stream()
        chunks = reply_chunks(Reply(failure.text_before), body)
        # Everything up to the finish chunk: the reply is cut before it says it is complete.
        self._write_chunks(
            _events(c for c in chunks if not _is_finish(c)), self.stub.stream_delay_s
        )
        if failure.error is not None:
            # OpenAI ends such a stream properly after the error event; the SDK raises on it.
            self._write_chunks(_events(iter([failure.error.to_json()])), 0.0)
            self._end_chunks()
        # Else no terminating zero-length chunk: closing now ends the body early, as a dropped
        # connection does.
        self.close_connection = True


# the wire format ----------------------------------------------------------------------------


def reply_chunks(reply: Reply, request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects for ``reply``, in OpenAI's order: the role, the
    text word by word, each tool call (id, type and name in its first fragment, the arguments
    JSON in pieces), the chunk with ``finish_reason`` and last a usage chunk with no choices
    (always made, for the non-streaming response; a stream sends it only when the request
    asks with ``stream_options.include_usage``, and then every other chunk carries
    ``"usage": null``, as OpenAI's do)."""
    completion_id = "chatcmpl-" + _random_id(29)
    created = int(time.time())
    model = str(request.get("model") or "")
    include_usage = _include_usage(request)

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_openai_stub",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            out["usage"] = None
        return out

    # OpenAI opens a reply of tool calls only with null content, a text reply with "".
    opening = None if reply.tool_calls and not reply.text else ""
    yield chunk({"role": "assistant", "content": opening, "refusal": None})
    for piece in words(reply.text):
        yield chunk({"content": piece})
    for index, call in enumerate(reply.tool_calls):
        first = {
            "index": index,
            "id": call.tool_use_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield chunk({"tool_calls": [first]})
        for piece in pieces(json.dumps(dict(call.input)), 16):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, reply.stop_reason or ("tool_calls" if reply.tool_calls else "stop"))
    yield {
        **chunk({}),
        "choices": [],
        "usage": usage_json(
            reply.usage
            or estimate_usage(
                json.dumps(request.get("messages", [])) + json.dumps(request.get("tools", [])),
                reply,
            )
        ),
    }


def completion_response(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Fold stream chunks into the non-streaming ``chat.completion``, so both paths agree."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    response: dict[str, Any] = {}
    finish_reason = "stop"
    for chunk in chunks:
        response.setdefault("id", chunk["id"])
        response.setdefault("created", chunk["created"])
        response.setdefault("model", chunk["model"])
        if chunk.get("usage"):
            response["usage"] = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text.append(delta.get("content") or "")
            for fragment in delta.get("tool_calls", []):
                call = calls.setdefault(
                    fragment["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = fragment.get("id") or call["id"]
                function = fragment.get("function", {})
                call["function"]["name"] += function.get("name", "")
                call["function"]["arguments"] += function.get("arguments", "")
            finish_reason = choice["finish_reason"] or finish_reason
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content when the reply is only tool calls.
        "content": "".join(text) or (None if calls else ""),
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": response["id"],
        "object": "chat.completion",
        "created": response["created"],
        "model": response["model"],
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": response.get("usage"),
        "service_tier": "default",
        "system_fingerprint": "fp_openai_stub",
    }


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object for ``usage``."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _sse(chunks: Iterator[dict[str, Any]], *, include_usage: bool) -> Iterator[bytes]:
    """The server-sent events of a stream: ``chunks`` (the usage chunk only when
    ``include_usage``), then ``data: [DONE]``."""
    yield from _events(c for c in chunks if include_usage or not _is_usage(c))
    yield b"data: [DONE]\n\n"


def _events(chunks: Iterator[Mapping[str, Any]]) -> Iterator[bytes]:
    for chunk in chunks:
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _is_usage(chunk: Mapping[str, Any]) -> bool:
    return not chunk.get("choices") and chunk.get("usage") is not None


def _is_finish(chunk: Mapping[str, Any]) -> bool:
    return _is_usage(chunk) or any(c.get("finish_reason") for c in chunk.get("choices", []))


def _include_usage(request: Mapping[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


# request validation -------------------------------------------------------------------------


def validate_request(body: Mapping[str, Any]) -> Failure | None:
    """OpenAI's 400 for the first rule ``body`` breaks, in OpenAI's words where known; else
    None.

    Checked: ``model`` given; ``messages`` a non-empty list of objects with a known role;
    every assistant ``tool_calls`` answered by the ``tool`` messages right after it and every
    ``tool`` message answering a call of that assistant message (by ``tool_call_id``);
    ``tools`` of type ``function`` with a name; ``stream_options`` only with ``stream``;
    ``max_tokens``/``max_completion_tokens`` at least 1; ``temperature`` in [0, 2].
    """
    if not body.get("model"):
        return _bad("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        return _bad(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list):
        return _bad(
            f"Invalid type for 'messages': expected an array, but got {_json_type(messages)}"
            " instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        return _bad(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got"
            " an empty array instead.",
            "messages",
            "empty_array",
        )
    problem = _check_messages(messages)
    if problem is not None:
        return problem
    problem = _check_tools(body.get("tools"))
    if problem is not None:
        return problem
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return _bad(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            return _bad(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but"
                f" got {value} instead.",
                name,
                "integer_below_min_value",
            )
    return _check_temperature(body.get("temperature"))


def _check_temperature(value: Any) -> Failure | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _bad(
            f"Invalid type for 'temperature': expected a decimal, but got {_json_type(value)}"
            " instead.",
            "temperature",
            "invalid_type",
        )
    if value < 0:
        return _bad(
            f"Invalid 'temperature': decimal below minimum value. Expected a value >= 0, but"
            f" got {value} instead.",
            "temperature",
            "decimal_below_min_value",
        )
    if value > 2:
        return _bad(
            f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but"
            f" got {value} instead.",
            "temperature",
            "decimal_above_max_value",
        )
    return None


def _check_messages(messages: list[Any]) -> Failure | None:
    # The tool calls of the last assistant message not answered yet; None: tool messages are
    # not allowed here (no assistant message with tool calls right before).
    open_calls: list[str] | None = None
    open_at = 0
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            return _bad(
                f"Invalid type for 'messages[{n}]': expected an object, but got"
                f" {_json_type(message)} instead.",
                f"messages[{n}]",
                "invalid_type",
            )
        role = message.get("role")
        if role not in ROLES:
            return _bad(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user',"
                " 'function', 'tool', and 'developer'.",
                f"messages[{n}].role",
                "invalid_value",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not call_id:
                return _bad(
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have a"
                    " 'tool_call_id'.",
                    f"messages.[{n}].tool_call_id",
                )
            if open_calls is None or call_id not in open_calls:
                # (sic) "preceeding": OpenAI's own spelling of this message
                return _bad(
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceeding message with 'tool_calls'.",
                    f"messages.[{n}].role",
                )
            open_calls.remove(call_id)
            continue
        if open_calls:
            return _unanswered(open_at, open_calls)
        open_calls = None
        if role == "assistant" and message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not all(
                isinstance(c, dict) and c.get("id") and isinstance(c.get("function"), dict)
                for c in calls
            ):
                return _bad(
                    f"Invalid 'messages[{n}].tool_calls': each tool call needs an 'id' and a"
                    " 'function'.",
                    f"messages[{n}].tool_calls",
                    "invalid_value",
                )
            open_calls = [str(c["id"]) for c in calls]
            open_at = n
    if open_calls:
        return _unanswered(open_at, open_calls)
    return None


def _check_tools(tools: Any) -> Failure | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        return _bad(
            f"Invalid type for 'tools': expected an array, but got {_json_type(tools)} instead.",
            "tools",
            "invalid_type",
        )
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return _bad(
                f"Invalid value for 'tools[{n}].type': expected 'function'.",
                f"tools[{n}].type",
                "invalid_value",
            )
        function = tool.get("function")
        if not isinstance(function, dict) or not function.get("name"):
            return _bad(
                f"Missing required parameter: 'tools[{n}].function.name'.",
                f"tools[{n}].function.name",
                "missing_required_parameter",
            )
    return None


def _unanswered(at: int, ids: list[str]) -> Failure:
    return _bad(
        "An assistant message with 'tool_calls' must be followed by tool messages responding"
        " to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(ids),
        f"messages.[{at}].role",
    )


# the default answer: the offline model ------------------------------------------------------


def default_reply(body: Mapping[str, Any]) -> Reply:
    """Answer as ``OfflineChatModel`` would, given the same conversation and tools."""
    from workers.agent.offline import OfflineChatModel

    model = OfflineChatModel()
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    runnable = model.bind_tools(tools) if tools else model
    answer = runnable.invoke(to_langchain_messages(body.get("messages", [])))
    usage = answer.usage_metadata
    return Reply(
        text=answer.text,
        tool_calls=tuple(ToolUse(c["name"], c["args"], str(c["id"])) for c in answer.tool_calls),
        usage=Usage(usage["input_tokens"], usage["output_tokens"]) if usage else None,
    )


def to_langchain_messages(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """OpenAI chat messages as LangChain messages (tool-call arguments parsed from JSON)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    out: list[Any] = []
    for message in messages:
        role = message.get("role")
        text = _content_text(message.get("content"))
        if role in ("system", "developer"):
            out.append(SystemMessage(text))
        elif role == "assistant":
            calls = [
                {
                    "name": c["function"]["name"],
                    "args": _arguments(c["function"].get("arguments")),
                    "id": str(c["id"]),
                }
                for c in message.get("tool_calls") or []
            ]
            out.append(AIMessage(text, tool_calls=calls))
        elif role in ("tool", "function"):
            call_id = str(message.get("tool_call_id") or message.get("name") or "")
            out.append(ToolMessage(text, tool_call_id=call_id))
        else:
            out.append(HumanMessage(text))
    return out


# small helpers ------------------------------------------------------------------------------


def _bad(message: str, param: str | None = None, code: str | None = None) -> Failure:
    return Failure(400, message, "invalid_request_error", param, code)


def _invalid_api_key(authorization: str) -> Failure:
    key = authorization.removeprefix("Bearer ").strip()
    shown = f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"
    return Failure(
        401,
        f"Incorrect API key provided: {shown}. You can find your API key at"
        " https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def _model_not_found(model: str) -> Failure:
    return Failure(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        None,
        "model_not_found",
    )


def _invalid_url(method: str, path: str) -> Failure:
    return Failure(404, f"Invalid URL ({method} {path})", "invalid_request_error")


def _default_message(status: int) -> str:
    if status == 503:
        return "The engine is currently overloaded, please try again later."
    if status >= 500:
        return "The server had an error while processing your request. Sorry about that!"
    return f"Scripted failure (HTTP {status})."


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "null"


def _content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of parts (``text`` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _tool_use(call: ToolUse | Mapping[str, Any]) -> ToolUse:
    if isinstance(call, ToolUse):
        return call
    raw = call.get("arguments", call.get("args", call.get("input", {})))
    return ToolUse(
        name=str(call["name"]),
        input=_arguments(raw),
        tool_use_id=str(call.get("id", "") or ""),
    )


def _usage(usage: Usage | Mapping[str, int] | None) -> Usage | None:
    if usage is None or isinstance(usage, Usage):
        return usage
    return Usage(
        int(usage.get("prompt_tokens", usage.get("input_tokens", 0))),
        int(usage.get("completion_tokens", usage.get("output_tokens", 0))),
    )


_ID_ALPHABET = string.ascii_letters + string.digits


def _random_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _with_ids(reply: Reply, serial: int, fresh: bool) -> Reply:
    """Give tool calls OpenAI-like ids (``call_...``): random ones for every call when
    ``fresh``, else deterministic ones for the calls scripted without an id."""
    if not fresh and all(c.tool_use_id for c in reply.tool_calls):
        return reply

    def call_id(n: int, call: ToolUse) -> str:
        if fresh:
            return "call_" + _random_id(24)
        if call.tool_use_id:
            return call.tool_use_id
        return "call_" + hashlib.sha1(f"{serial}|{n}|{call.name}".encode()).hexdigest()[:24]

    calls = tuple(ToolUse(c.name, c.input, call_id(n, c)) for n, c in enumerate(reply.tool_calls))
    return Reply(reply.text, calls, reply.usage, reply.stop_reason)


__all__ = [
    "ERROR_TYPES",
    "ROLES",
    "Failure",
    "OpenAIStubServer",
    "RecordedRequest",
    "Reply",
    "StreamFailure",
    "ToolUse",
    "Usage",
    "completion_response",
    "default_reply",
    "reply_chunks",
    "to_langchain_messages",
    "usage_json",
    "validate_request",
]
