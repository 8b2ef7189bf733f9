"""``ConverseStubServer``: a local HTTP server that speaks the Bedrock Runtime Converse API.

Real clients (``ChatBedrockConverse``, a boto3 ``bedrock-runtime`` client) reach it through
``endpoint_url``. It answers ``POST /model/{modelId}/converse`` with a JSON Converse response
and ``POST /model/{modelId}/converse-stream`` with an AWS event stream
(``application/vnd.amazon.eventstream``), so botocore's own parsers, error handling and retries
run exactly as against Bedrock. Tests script replies (text, tool calls, usage), throttling and
failures per server or per model id; with nothing scripted the stub answers like the offline
model (``workers.agent.offline``), tool calls included. Every request is recorded.

Errors are shaped like Bedrock's: the HTTP status of the error in the bedrock-runtime service
model (``ThrottlingException`` 429, ``ValidationException`` 400, ``InternalServerException``
500, ...), ``x-amzn-ErrorType: <Code>:<namespace>`` and a JSON body ``{"message": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from workers.sandbox.stub_http import (
    StubHandler,
    StubServer,
    pieces,
    token_estimate,
    words,
)

logger = logging.getLogger(__name__)

EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_PATH = re.compile(r"^/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream)$")

# Status codes of the bedrock-runtime service model (botocore data/bedrock-runtime/*/service-2).
ERROR_STATUS: Mapping[str, int] = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}

# what a test scripts ------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolUse:
    """A tool call the stub's reply asks for (a Converse ``toolUse`` content block)."""

    name: str
    input: Mapping[str, Any] = field(default_factory=dict)
    tool_use_id: str = ""
    """Empty: derived from the request number and the call's position (deterministic)."""


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    """Input tokens not read from or written to the prompt cache (Bedrock's ``inputTokens``)."""
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def to_json(self) -> dict[str, int]:
        out = {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens,
        }
        if self.cache_read_tokens or self.cache_write_tokens:
            out["cacheReadInputTokens"] = self.cache_read_tokens
            out["cacheWriteInputTokens"] = self.cache_write_tokens
        return out


@dataclass(frozen=True)
class Reply:
    """One model answer: text and/or tool calls."""

    text: str = ""
    tool_calls: tuple[ToolUse, ...] = ()
    usage: Usage | None = None
    """None: estimated from the request and reply (about four characters per token)."""
    stop_reason: str | None = None
    """None: ``tool_use`` when the reply calls tools, else ``end_turn``."""
    trace: Mapping[str, Any] | None = None
    """The response's ``trace`` (a guardrail's assessment), in ``metadata`` when streamed."""


BLOCKED_MESSAGING = "Sorry, the model cannot answer this question."
"""What a Bedrock guardrail answers by default when it blocks a request or an output."""


@dataclass(frozen=True)
class GuardrailRule:
    """A rule of the stub's guardrail, applied to requests that carry ``guardrailConfig``:
    when the text it assesses (``input``: the request's messages; ``output``: the reply)
    contains one of ``words`` (any case; none: always), the guardrail intervenes as
    Bedrock's does: ``stopReason`` ``guardrail_intervened``, ``message`` as the answer, and
    (unless the config turns its trace off) ``trace.guardrail`` with the assessment of a
    denied topic (``policy="topic"``, named ``name``) or of a blocked word (``"word"``)."""

    name: str
    words: tuple[str, ...] = ()
    stage: Literal["input", "output"] = "input"
    policy: Literal["topic", "word"] = "topic"
    message: str = BLOCKED_MESSAGING

    def match(self, text: str) -> str | None:
        """The word of the rule found in ``text`` (the rule's name for a rule without
        words), or None."""
        if not self.words:
            return self.name
        lowered = text.lower()
        return next((w for w in self.words if w.lower() in lowered), None)


@dataclass(frozen=True)
class Failure:
    """An HTTP error answer, shaped like Bedrock's."""

    status: int
    error_type: str
    message: str


@dataclass(frozen=True)
class StreamFailure:
    """A ``converse-stream`` answer that opens with HTTP 200 and then carries an exception event.

    Bedrock reports faults that happen after the stream opened this way; botocore raises
    ``EventStreamError`` whose code is the event name (lower camel case, e.g.
    ``modelStreamErrorException``).
    """

    error_type: str
    message: str
    text_before: str = ""


Outcome = Reply | Failure | StreamFailure


@dataclass(frozen=True)
class _Scripted:
    outcome: Outcome
    model_id: str | None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the stub received, for tests to assert on what the client sent."""

    model_id: str
    body: dict[str, Any]
    streaming: bool
    headers: Mapping[str, str]

    @property
    def system_text(self) -> str:
        return "\n".join(str(b["text"]) for b in self.body.get("system", []) if "text" in b)

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages", [])
        return messages if isinstance(messages, list) else []

    @property
    def tool_names(self) -> list[str]:
        tools = self.body.get("toolConfig", {}).get("tools", [])
        return [t["toolSpec"]["name"] for t in tools if "toolSpec" in t]

    @property
    def cache_points(self) -> dict[str, int]:
        """How many ``cachePoint`` blocks the request carries, by where: ``system``,
        ``tools``, ``messages``."""
        tools = self.body.get("toolConfig", {}).get("tools", [])
        return {
            "system": sum("cachePoint" in b for b in self.body.get("system", [])),
            "tools": sum("cachePoint" in t for t in tools),
            "messages": sum("cachePoint" in b for m in self.messages for b in m.get("content", [])),
        }

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                text = _text_of(message)
                if text:
                    return text
        return ""


# the server ---------------------------------------------------------------------------------


class ConverseStubServer(StubServer["_Scripted", "RecordedRequest"]):
    """A scripted Bedrock Converse endpoint on 127.0.0.1 with a free port, in a thread.

    Use as a context manager (or ``start()``/``stop()``) and give ``endpoint_url`` to the
    client. Scripted outcomes are consumed first in, first out; an outcome scripted for a model
    id is only consumed by requests for that model.
    """

    name = "converse-stub"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guardrail_rules: list[GuardrailRule] = []

    @property
    def _prompt_cache(self) -> PromptCache:
        # Made on first use: the base class owns __init__.
        cache: PromptCache | None = self.__dict__.get("_cache")
        if cache is None:
            cache = self.__dict__.setdefault("_cache", PromptCache())
        return cache

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _ConverseHandler

    def guardrail(
        self,
        name: str,
        words: Sequence[str] = (),
        *,
        stage: Literal["input", "output"] = "input",
        policy: Literal["topic", "word"] = "topic",
        message: str = BLOCKED_MESSAGING,
    ) -> GuardrailRule:
        """Add a rule to the stub's guardrail (kept until :meth:`reset`): requests with
        ``guardrailConfig`` whose input (or reply, with ``stage="output"``) contains one of
        ``words`` (none: every such request) get the guardrail's intervention."""
        rule = GuardrailRule(name, tuple(words), stage, policy, message)
        with self._lock:
            self._guardrail_rules.append(rule)
        return rule

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._guardrail_rules.clear()

    # scripting -------------------------------------------------------------------------------

    def script(
        self,
        reply_text: str = "",
        tool_calls: Sequence[ToolUse | Mapping[str, Any]] = (),
        usage: Usage | Mapping[str, int] | None = None,
        *,
        stop_reason: str | None = None,
        model_id: str | None = None,
    ) -> None:
        """Queue one reply. A tool call is a ``ToolUse`` or a mapping with ``name``,
        ``input`` (or ``args``) and optionally ``toolUseId`` (or ``id``); usage is a ``Usage``
        or a mapping with ``inputTokens``/``outputTokens`` (or ``input_tokens``/...)."""
        reply = Reply(
            text=reply_text,
            tool_calls=tuple(_tool_use(c) for c in tool_calls),
            usage=_usage(usage),
            stop_reason=stop_reason,
        )
        self._push(reply, model_id, 1)

    def throttle(
        self, times: int = 1, *, message: str = "Rate exceeded", model_id: str | None = None
    ) -> None:
        """The next ``times`` requests get HTTP 429 ``ThrottlingException``, as Bedrock sends."""
        self.fail(
            ERROR_STATUS["ThrottlingException"], "ThrottlingException", times, message, model_id
        )

    def fail(
        self,
        status: int = 500,
        error_type: str = "InternalServerException",
        times: int = 1,
        message: str | None = None,
        model_id: str | None = None,
    ) -> None:
        """The next ``times`` requests get this HTTP error (code in ``x-amzn-ErrorType``)."""
        text = message or f"{error_type}: scripted failure"
        self._push(Failure(status, error_type, text), model_id, times)

    def fail_stream(
        self,
        error_type: str = "modelStreamErrorException",
        message: str = "The model stream was interrupted.",
        *,
        text_before: str = "",
        model_id: str | None = None,
    ) -> None:
        """The next *streaming* request opens its stream, sends ``text_before`` and then an
        exception event named ``error_type`` (e.g. ``throttlingException``). Non-streaming
        requests pass over this entry."""
        self._push(StreamFailure(error_type, message, text_before), model_id, 1)

    def _push(self, outcome: Outcome, model_id: str | None, times: int) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queue(_Scripted(outcome, model_id) for _ in range(times))

    # request handling (called from handler threads) ------------------------------------------

    def _answer(
        self, model_id: str, body: Any, streaming: bool, headers: Mapping[str, str]
    ) -> tuple[int, Outcome]:
        """Record the request and decide its answer (with the request's serial number).

        In order: an unknown model id; a scripted ``Failure`` (so a test can provoke any error
        with any request); Bedrock's ``ValidationException`` for a malformed request, which
        consumes no scripted reply; the next scripted reply; the default reply.
        """
        problem: str | None = "Request body must be a JSON object."
        if isinstance(body, dict):
            problem = validate_request(body)
        else:
            body = {}
        request = RecordedRequest(model_id, body, streaming, headers)
        with self._lock:
            self._requests.append(request)
            serial = len(self._requests)
            if self.known_models is not None and model_id not in self.known_models:
                return serial, _error(
                    "ValidationException", "The provided model identifier is invalid."
                )
            scripted = self._take(request, failures_only=problem is not None)
        if problem is not None and scripted is None:
            return serial, _error("ValidationException", problem)
        if scripted is None:
            outcome: Outcome = self._prompt_cache.use(model_id, body, default_reply(body))
        elif isinstance(scripted, Reply) and scripted.usage is None:
            outcome = self._prompt_cache.use(model_id, body, scripted)
        else:
            outcome = scripted
        return serial, self._guarded(body, outcome)

    def _guarded(self, body: Mapping[str, Any], outcome: Outcome) -> Outcome:
        """``outcome``, or the guardrail's intervention when the request carries
        ``guardrailConfig`` and a rule matches its input (the model is not called) or the
        reply (the model's output is replaced)."""
        config = body.get("guardrailConfig")
        if not isinstance(config, dict) or not isinstance(outcome, Reply):
            return outcome
        with self._lock:
            rules = list(self._guardrail_rules)
        assessed = "\n".join(_text_of(m) for m in body.get("messages", []) if isinstance(m, dict))
        for rule in rules:
            text = assessed if rule.stage == "input" else outcome.text
            found = rule.match(text)
            if found is not None:
                return guardrail_intervention(rule, found, config, text, outcome)
        return outcome

    def _take(self, request: RecordedRequest, *, failures_only: bool) -> Outcome | None:
        """Remove and return the first scripted outcome meant for ``request`` (lock held)."""
        for i, entry in enumerate(self._script):
            if entry.model_id not in (None, request.model_id):
                continue
            if isinstance(entry.outcome, StreamFailure) and not request.streaming:
                continue
            if failures_only and not isinstance(entry.outcome, Failure):
                return None
            del self._script[i]
            return entry.outcome
        return None


class _ConverseHandler(StubHandler[ConverseStubServer]):
    server_version = "ConverseStub/1"
    log_name = "converse stub"

    def request_id_header(self) -> tuple[str, str]:
        return "x-amzn-RequestId", str(uuid.uuid4())

    def do_GET(self) -> None:
        self._drain()
        self._send_error(_error("UnknownOperationException", "Unknown operation", status=404))

    def do_POST(self) -> None:
        raw = self._drain()
        match = _PATH.match(urlsplit(self.path).path)
        if match is None:
            self._send_error(_error("UnknownOperationException", "Unknown operation", status=404))
            return
        model_id = unquote(match["model"])
        streaming = match["op"] == "converse-stream"
        try:
            body: Any = json.loads(raw or b"{}")
        except ValueError:
            self._send_error(_error("SerializationException", "Request body is not valid JSON."))
            return
        started = time.monotonic()
        try:
            serial, outcome = self.stub._answer(model_id, body, streaming, dict(self.headers))
        except Exception as exc:
            # A request the default reply cannot handle is the stub's fault: answer like a
            # Bedrock 500 instead of dropping the connection, and keep the traceback in the log.
            logger.exception("converse stub: no answer for a request to %s", model_id)
            self._send_error(_error("InternalServerException", f"Converse stub error: {exc}"))
            return
        try:
            if isinstance(outcome, Failure):
                self._send_error(outcome)
                return
            if self.stub.latency_s > 0:
                time.sleep(self.stub.latency_s)
            if isinstance(outcome, StreamFailure):
                self._send_stream(_broken_stream_events(outcome))
                return
            events = reply_events(_with_ids(outcome, serial), body, started)
            if streaming:
                self._send_stream(_encoded(events))
            else:
                self._send_json(200, converse_response(events))
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("converse stub: client went away during request %d", serial)

    # plumbing --------------------------------------------------------------------------------

    def _send_error(self, failure: Failure) -> None:
        self._send_json(
            failure.status,
            {"message": failure.message},
            {"x-amzn-ErrorType": f"{failure.error_type}:{_ERROR_NAMESPACE}"},
        )

    def _send_stream(self, events: Iterator[bytes]) -> None:
        self._open_chunked(EVENT_STREAM_CONTENT_TYPE)
        self._write_chunks(events, self.stub.stream_delay_s)
        self._end_chunks()


# prompt caching -----------------------------------------------------------------------------


class PromptCache:
    """Bedrock's prompt cache, as far as usage shows it: the prefix before each ``cachePoint``
    (tools, then system, then messages, Bedrock's order) is cached per model; a request
    starting with a cached prefix reads it (``cacheReadInputTokens``, the longest one) and
    writes the rest up to its last cache point (``cacheWriteInputTokens``). Scripted usage is
    kept as scripted; tokens at about four characters each. No expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefixes: set[tuple[str, str]] = set()

    def use(self, model_id: str, body: Mapping[str, Any], reply: Reply) -> Reply:
        """``reply`` with its usage split into uncached input, cache reads and writes."""
        segments, points = _cache_segments(body)
        if not points:
            return reply
        running, prefixes = hashlib.sha256(), [""]
        for segment in segments:
            running.update(segment.encode() + b"\0")
            prefixes.append(running.hexdigest())
        with self._lock:
            hit = max(
                (n for n, key in enumerate(prefixes) if n and (model_id, key) in self._prefixes),
                default=0,
            )
            self._prefixes.update((model_id, prefixes[p]) for p in points)
        estimate = reply.usage or estimate_usage("".join(segments), reply)
        read = _tokens("".join(segments[:hit]))
        write = _tokens("".join(segments[: points[-1]])) - read if hit < points[-1] else 0
        uncached = max(1, estimate.input_tokens - read - write)
        return replace(reply, usage=Usage(uncached, estimate.output_tokens, read, write))


def _cache_segments(body: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    """The request's blocks in Bedrock's cache order as text, and the positions of its
    cache points (the number of blocks before each)."""
    blocks: list[Any] = [*body.get("toolConfig", {}).get("tools", []), *body.get("system", [])]
    for message in body.get("messages", []):
        blocks.extend(message.get("content", []) if isinstance(message, dict) else [])
    segments: list[str] = []
    points: list[int] = []
    for block in blocks:
        if isinstance(block, dict) and "cachePoint" in block:
            points.append(len(segments))
        else:
            segments.append(json.dumps(block, sort_keys=True))
    return segments, points


def _tokens(text: str) -> int:
    return len(text) // 4


# the wire format ----------------------------------------------------------------------------


def encode_event_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total length, headers length, CRC32), string
    headers, payload, CRC32 of everything before it."""
    encoded = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _encode_header(name: str, value: str) -> bytes:
    key, data = name.encode(), value.encode()
    return struct.pack(">B", len(key)) + key + b"\x07" + struct.pack(">H", len(data)) + data


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A Converse stream event (``:message-type`` event) with a JSON payload."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_event_message(headers, json.dumps(payload).encode())


def encode_exception(exception_type: str, message: str) -> bytes:
    """An exception message inside an open stream (``:message-type`` exception)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_event_message(headers, json.dumps({"message": message}).encode())


@dataclass(frozen=True)
class StreamEvent:
    """One Converse stream event: its ``:event-type`` and JSON payload."""

    kind: str
    payload: dict[str, Any]


def reply_events(reply: Reply, request: Mapping[str, Any], started: float) -> Iterator[StreamEvent]:
    """The Converse stream events for ``reply``, in Bedrock's order. Text arrives word by word
    without a ``contentBlockStart`` (as Bedrock sends it); a tool call opens with
    ``contentBlockStart`` and streams its input JSON in pieces."""
    yield StreamEvent("messageStart", {"role": "assistant"})
    index = 0
    if reply.text:
        for piece in words(reply.text):
            yield StreamEvent(
                "contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": index}
            )
        yield StreamEvent("contentBlockStop", {"contentBlockIndex": index})
        index += 1
    for call in reply.tool_calls:
        start = {"toolUse": {"toolUseId": call.tool_use_id, "name": call.name}}
        yield StreamEvent("contentBlockStart", {"start": start, "contentBlockIndex": index})
        for piece in pieces(json.dumps(dict(call.input)), 16):
            delta = {"toolUse": {"input": piece}}
            yield StreamEvent("contentBlockDelta", {"delta": delta, "contentBlockIndex": index})
        yield StreamEvent("contentBlockStop", {"contentBlockIndex": index})
        index += 1
    stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
    yield StreamEvent("messageStop", {"stopReason": stop})
    usage = reply.usage or estimate_usage(
        json.dumps(request.get("system", [])) + json.dumps(request.get("messages", [])), reply
    )
    latency_ms = int((time.monotonic() - started) * 1000)
    metadata: dict[str, Any] = {"usage": usage.to_json(), "metrics": {"latencyMs": latency_ms}}
    if reply.trace is not None:
        metadata["trace"] = dict(reply.trace)
    yield StreamEvent("metadata", metadata)


def converse_response(events: Iterator[StreamEvent]) -> dict[str, Any]:
    """Fold stream events into the non-streaming Converse response, so both paths agree."""
    blocks: dict[int, dict[str, Any]] = {}
    raw_inputs: dict[int, str] = {}
    response: dict[str, Any] = {}
    for event in events:
        p = event.payload
        if event.kind == "contentBlockStart":
            blocks[p["contentBlockIndex"]] = {"toolUse": dict(p["start"]["toolUse"])}
            raw_inputs[p["contentBlockIndex"]] = ""
        elif event.kind == "contentBlockDelta":
            i, delta = p["contentBlockIndex"], p["delta"]
            if "text" in delta:
                block = blocks.setdefault(i, {"text": ""})
                block["text"] += delta["text"]
            else:
                raw_inputs[i] += delta["toolUse"]["input"]
        elif event.kind == "messageStop":
            response["stopReason"] = p["stopReason"]
        elif event.kind == "metadata":
            response.update(p)
    for i, raw in raw_inputs.items():
        blocks[i]["toolUse"]["input"] = json.loads(raw or "{}")
    content = [blocks[i] for i in sorted(blocks)]
    return {"output": {"message": {"role": "assistant", "content": content}}, **response}


def _broken_stream_events(failure: StreamFailure) -> Iterator[bytes]:
    yield encode_event("messageStart", {"role": "assistant"})
    if failure.text_before:
        delta = {"delta": {"text": failure.text_before}, "contentBlockIndex": 0}
        yield encode_event("contentBlockDelta", delta)
    yield encode_exception(failure.error_type, failure.message)


def _encoded(events: Iterator[StreamEvent]) -> Iterator[bytes]:
    for event in events:
        yield encode_event(event.kind, event.payload)


# request validation -------------------------------------------------------------------------


def validate_request(body: Mapping[str, Any]) -> str | None:
    """The first Converse rule ``body`` breaks, in Bedrock's words where known; else None.

    Checked: ``messages`` present and non-empty, roles ``user``/``assistant`` alternating,
    no empty content, every ``toolResult`` answering a ``toolUse`` of the turn before and
    every ``toolUse`` answered in the next turn, ``toolConfig`` present when either is used.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "The messages field is required and must contain at least one message."
    previous: dict[str, Any] | None = None
    uses_tools = False
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{n}.role: must be one of [user, assistant]."
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return (
                f"The content field in the Message object at messages.{n} is empty. Add a "
                "ContentBlock object to the content field and try again."
            )
        if previous is not None and previous["role"] == role:
            return (
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        asked = _ids(previous, "toolUse") if previous is not None else []
        answered = _ids(message, "toolResult")
        if len(answered) > len(asked):
            return (
                f"The number of toolResult blocks at messages.{n}.content exceeds the number "
                "of toolUse blocks of previous turn."
            )
        if asked and set(asked) - set(answered):
            missing = ", ".join(sorted(set(asked) - set(answered)))
            return (
                f"Expected toolResult blocks at messages.{n}.content for the following Ids: "
                f"{missing}"
            )
        uses_tools = uses_tools or bool(answered) or bool(_ids(message, "toolUse"))
        previous = message
    if previous is not None and previous["role"] == "assistant" and _ids(previous, "toolUse"):
        missing = ", ".join(_ids(previous, "toolUse"))
        return (
            f"Expected toolResult blocks at messages.{len(messages)}.content for the following "
            f"Ids: {missing}"
        )
    if uses_tools and not body.get("toolConfig"):
        return (
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    return None


def _ids(message: Mapping[str, Any], kind: str) -> list[str]:
    return [
        str(block[kind].get("toolUseId", ""))
        for block in message.get("content", [])
        if isinstance(block, dict) and kind in block
    ]


# the default answer: the offline model ------------------------------------------------------


def default_reply(body: Mapping[str, Any]) -> Reply:
    """Answer as ``OfflineChatModel`` would, given the same conversation and tools."""
    from workers.agent.offline import OfflineChatModel

    model = OfflineChatModel()
    specs = body.get("toolConfig", {}).get("tools", [])
    tools = [_openai_tool(t["toolSpec"]) for t in specs if "toolSpec" in t]
    runnable = model.bind_tools(tools) if tools else model
    answer = runnable.invoke(_to_langchain(body))
    usage = answer.usage_metadata
    return Reply(
        text=answer.text,
        tool_calls=tuple(ToolUse(c["name"], c["args"], str(c["id"])) for c in answer.tool_calls),
        usage=Usage(usage["input_tokens"], usage["output_tokens"]) if usage else None,
    )


def _openai_tool(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": spec["name"],
            "description": spec.get("description", ""),
            "parameters": spec.get("inputSchema", {}).get("json", {}),
        },
    }


def _to_langchain(body: Mapping[str, Any]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    out: list[Any] = []
    system = "\n".join(str(b["text"]) for b in body.get("system", []) if "text" in b)
    if system:
        out.append(SystemMessage(system))
    for message in body.get("messages", []):
        blocks = [b for b in message.get("content", []) if isinstance(b, dict)]
        if message.get("role") == "assistant":
            calls = [
                {
                    "name": b["toolUse"]["name"],
                    "args": b["toolUse"].get("input") or {},
                    "id": b["toolUse"]["toolUseId"],
                }
                for b in blocks
                if "toolUse" in b
            ]
            out.append(AIMessage(_text_of(message), tool_calls=calls))
            continue
        for block in blocks:
            if "toolResult" in block:
                result = block["toolResult"]
                status = "error" if result.get("status") == "error" else "success"
                out.append(
                    ToolMessage(
                        _text_of({"content": result.get("content", [])}),
                        tool_call_id=str(result.get("toolUseId", "")),
                        status=status,
                    )
                )
        text = _text_of(message)
        if text:
            out.append(HumanMessage(text))
    return out


# small helpers ------------------------------------------------------------------------------


def _error(error_type: str, message: str, *, status: int | None = None) -> Failure:
    return Failure(status or ERROR_STATUS.get(error_type, 400), error_type, message)


def _text_of(message: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for block in message.get("content", []):
        if isinstance(block, dict) and "text" in block:
            parts.append(str(block["text"]))
        elif isinstance(block, dict) and "json" in block:
            parts.append(json.dumps(block["json"]))
    return "".join(parts)


def _tool_use(call: ToolUse | Mapping[str, Any]) -> ToolUse:
    if isinstance(call, ToolUse):
        return call
    return ToolUse(
        name=str(call["name"]),
        input=dict(call.get("input", call.get("args", {}))),
        tool_use_id=str(call.get("toolUseId", call.get("id", "")) or ""),
    )


def _usage(usage: Usage | Mapping[str, int] | None) -> Usage | None:
    if usage is None or isinstance(usage, Usage):
        return usage
    return Usage(
        int(usage.get("inputTokens", usage.get("input_tokens", 0))),
        int(usage.get("outputTokens", usage.get("output_tokens", 0))),
        int(usage.get("cacheReadInputTokens", usage.get("cache_read_tokens", 0))),
        int(usage.get("cacheWriteInputTokens", usage.get("cache_write_tokens", 0))),
    )


def _with_ids(reply: Reply, serial: int) -> Reply:
    """Give unnamed tool calls a deterministic Bedrock-like id (``tooluse_...``)."""
    if all(c.tool_use_id for c in reply.tool_calls):
        return reply
    calls = tuple(
        c
        if c.tool_use_id
        else ToolUse(
            c.name,
            c.input,
            "tooluse_" + hashlib.sha1(f"{serial}|{n}|{c.name}".encode()).hexdigest()[:22],
        )
        for n, c in enumerate(reply.tool_calls)
    )
    return replace(reply, tool_calls=calls)


def guardrail_intervention(
    rule: GuardrailRule,
    found: str,
    config: Mapping[str, Any],
    assessed: str,
    reply: Reply,
) -> Reply:
    """The answer of a Bedrock guardrail that intervened by ``rule`` (``found`` in the
    ``assessed`` text): its canned message, ``stopReason`` ``guardrail_intervened`` and,
    unless ``config["trace"]`` is ``disabled``, the ``trace.guardrail`` assessment keyed by
    the guardrail's identifier (``outputAssessments`` with the blocked ``modelOutput`` for an
    output). An input intervention calls no model: no tokens."""
    if rule.policy == "topic":
        topic = {"name": rule.name, "type": "DENY", "action": "BLOCKED", "detected": True}
        policy: dict[str, Any] = {"topicPolicy": {"topics": [topic]}}
    else:
        word = {"match": found, "action": "BLOCKED", "detected": True}
        policy = {"wordPolicy": {"customWords": [word], "managedWordLists": []}}
    assessment = {**policy, "invocationMetrics": _guardrail_metrics(rule, assessed)}
    guardrail_id = str(config.get("guardrailIdentifier", ""))
    guardrail: dict[str, Any]
    if rule.stage == "input":
        guardrail = {"inputAssessment": {guardrail_id: assessment}}
    else:
        guardrail = {"modelOutput": [reply.text], "outputAssessments": {guardrail_id: [assessment]}}
    traced = config.get("trace", "disabled") != "disabled"
    usage = Usage(0, 0) if rule.stage == "input" else reply.usage
    return Reply(
        text=rule.message,
        usage=usage,
        stop_reason="guardrail_intervened",
        trace={"guardrail": guardrail} if traced else None,
    )


def _guardrail_metrics(rule: GuardrailRule, assessed: str) -> dict[str, Any]:
    units = max(1, -(-len(assessed) // 1000))  # a text unit is up to 1,000 characters
    usage = {
        "topicPolicyUnits": units if rule.policy == "topic" else 0,
        "contentPolicyUnits": 0,
        "wordPolicyUnits": units if rule.policy == "word" else 0,
        "sensitiveInformationPolicyUnits": 0,
        "sensitiveInformationPolicyFreeUnits": 0,
        "contextualGroundingPolicyUnits": 0,
    }
    characters = {"guarded": len(assessed), "total": len(assessed)}
    return {
        "guardrailProcessingLatency": 1,
        "usage": usage,
        "guardrailCoverage": {"textCharacters": characters},
    }


def estimate_usage(prompt: str, reply: Reply) -> Usage:
    """The usage of ``reply`` to ``prompt`` (the request's text, as the provider sees it)
    when nothing was scripted: about four characters a token."""
    answer = reply.text + "".join(json.dumps(dict(c.input)) for c in reply.tool_calls)
    return Usage(*token_estimate(prompt, answer))


__all__ = [
    "BLOCKED_MESSAGING",
    "ERROR_STATUS",
    "ConverseStubServer",
    "Failure",
    "GuardrailRule",
    "PromptCache",
    "RecordedRequest",
    "Reply",
    "StreamEvent",
    "StreamFailure",
    "ToolUse",
    "Usage",
    "converse_response",
    "default_reply",
    "estimate_usage",
    "guardrail_intervention",
    "encode_event",
    "encode_event_message",
    "encode_exception",
    "reply_events",
    "validate_request",
]
