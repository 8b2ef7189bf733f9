"""``SlackWebStub`` and ``SocketModeStub``: Slack's Web API and Socket Mode on loopback, for
tests that drive the real ``slack_sdk`` clients.

``slack_sdk.WebClient(token=BOT_TOKEN, base_url=stub.url)`` talks to :class:`SlackWebStub`
(``stub.url`` ends in ``/api/``: WebClient joins the method name onto ``base_url`` with
``urljoin``, so without the trailing slash the ``api`` segment would be replaced). The stub
reads JSON and ``application/x-www-form-urlencoded`` bodies (and query strings), checks the
token as Slack does, records every call in arrival order (one lock serialises the calls, so
the log order is the order in which the stub answered them) and keeps the messages it was
sent, so a test can read what a user would finally see (:meth:`SlackWebStub.final_text`).
``apps.connections.open`` (app-level ``xapp-`` token) answers the URL of a
:class:`SocketModeStub`, a loopback WebSocket server that ``slack_sdk``'s
``SocketModeClient`` connects to: it greets with ``hello``, pushes envelopes
(:meth:`SocketModeStub.send_event`), records acks with their latency and can ask the client
to reconnect (``disconnect``).

Errors have Slack's shape: HTTP 200 with ``{"ok": false, "error": "<code>"}``, except
throttling, which is HTTP 429 with a ``Retry-After`` header (whole seconds) and
``{"ok": false, "error": "ratelimited"}``.

Limits enforced, their defaults and where they come from
-----------------------------------------------------------
Sources: Slack's method reference as mirrored in ``slack-ruby/slack-api-ref``
(``methods/chat/chat.{start,append,stop}Stream.json``, argument descriptions and error
lists), Slack's rate limits page (``api.slack.com/apis/rate-limits``), and
``slack_sdk`` 3.48.0 (``web/chat_stream.py``, ``web/base_client.py``,
``http_retry/builtin_handlers.py``, ``socket_mode/client.py``) with the SDK's own test server
(``tests/slack_sdk/socket_mode/mock_socket_mode_server.py`` in ``slackapi/python-slack-sdk``).

- ``markdown_text`` of one ``chat.startStream`` / ``appendStream`` / ``stopStream`` call, or
  one ``markdown_text`` chunk: at most ``max_markdown_chars`` = 12,000 characters (the
  argument's description: "Limit this field to 12,000 characters"). The error code is not in
  those methods' error lists; the stub answers ``msg_too_long``, ``chat.postMessage``'s
  documented code for too long a text, which third-party clients also report for stream
  chunks.
- A streamed message's total markdown: unbounded by default (``max_stream_chars=None``):
  Slack documents no total; set it to test a cap (answered with ``msg_too_long``).
- A stream's lifetime: ``stream_ttl_s`` = 300 s after ``chat.startStream``; later appends and
  stops answer ``message_not_in_streaming_state`` (the documented code for "the message is
  not in the streaming state"). The reference documents no lifetime: 300 s is what
  third-party integrations report (about five minutes; appends do not extend it).
- Appending to, or stopping, a stopped stream: ``message_not_in_streaming_state``
  (documented for both methods); an unknown ``ts``: ``message_not_found`` (documented); an
  append with neither ``markdown_text`` nor ``chunks``: ``no_text`` (documented).
- ``chat.startStream`` outside a DM (a channel id not starting with ``D``) needs
  ``recipient_team_id`` and ``recipient_user_id`` ("Required when streaming to channels"):
  ``missing_recipient_team_id`` / ``missing_recipient_user_id`` (documented).
- ``chat.appendStream`` rate: ``append_rate`` = 100 calls per 60 s per stream. The method is
  Tier 4 ("100+ per minute", per method per app per workspace); the stub counts per stream,
  which is the same for one stream at a time and stricter with several.
- ``chat.update`` rate: ``update_rate`` = 1 call per 1 s per channel, after the "one message
  per second per channel" that the rate limits page gives for posting (``chat.update``
  itself is Tier 3, 50+ per minute per workspace). ``chat.postMessage``: ``post_rate``, off
  by default (Slack allows short bursts of unstated size).
- A throttled call is answered before the method's other checks, is not counted, and
  ``Retry-After`` is the whole seconds until the window admits a call again (at least 1).
- Not in the reference and not emitted: ``streaming_state_conflict`` and ``stopped_by_user``
  (seen only in third-party code). A workspace that refuses streaming
  (:meth:`SlackWebStub.refuse_streaming`) answers ``not_allowed_token_type`` by default, a
  documented ``chat.startStream`` code; Slack documents no "streaming disabled" code, so
  callers should fall back on any ``chat.startStream`` error.
- Socket Mode acks: ``ack_deadline_s`` = 3 s (the three seconds Slack gives an ack). The
  ``hello`` and ``disconnect`` frames copy the shape of the SDK's test server.
  The stub does not redeliver unacked envelopes by itself: ``send_event(retry_attempt=...)``
  sends a redelivery when a test wants one.
- ``assistant.threads.setStatus`` (its reference page, ``docs.slack.dev``): a reply from the
  app in the thread (``chat.postMessage`` or ``chat.startStream``) clears the status, and so
  does ``status_ttl_s`` = 120 s without one ("A two minute timeout applies").
"""

from __future__ import annotations

import copy
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from workers.sandbox.stub_http import Lifecycle, StubHandler, StubServer

logger = logging.getLogger(__name__)

BOT_TOKEN = "xoxb-0000000000-0000000000000-stubbottoken"
APP_TOKEN = "xapp-1-A0STUBAPP-0000000000000-stubapptoken"
TEAM_ID = "T0STUBTEAM"
APP_ID = "A0STUBAPP"
BOT_ID = "B0STUBBOT"
BOT_USER_ID = "U0STUBBOT"
USER_ID = "U0STUBUSER"
"""The user who speaks to the bot in events built by :func:`message_event` and friends."""

MAX_MARKDOWN_CHARS = 12_000
STREAM_TTL_S = 300.0
STATUS_TTL_S = 120.0
ACK_DEADLINE_S = 3.0

EnvelopeKind = Literal["events_api", "interactive", "slash_commands"]
StreamState = Literal["streaming", "stopped"]


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` calls in any ``period_s`` seconds (a sliding window)."""

    calls: int
    period_s: float


APPEND_RATE = RateLimit(calls=100, period_s=60.0)
"""``chat.appendStream`` per stream: Tier 4, 100+ per minute."""
UPDATE_RATE = RateLimit(calls=1, period_s=1.0)
"""``chat.update`` per channel: about one per second."""


# what the stub records ----------------------------------------------------------------------


@dataclass(frozen=True)
class SlackCall:
    """One Web API call as the stub answered it."""

    method: str
    args: Mapping[str, Any]
    """The arguments, JSON-decoded where Slack takes JSON (``chunks``, ``blocks``, ...); the
    token is kept apart in :attr:`token`."""
    at: float
    """The stub's clock (``time.monotonic`` unless injected) when the call arrived."""
    token: str | None
    status: int
    """The HTTP status answered (200, or 429 when throttled)."""
    response: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.response.get("ok") is True

    @property
    def error(self) -> str | None:
        error = self.response.get("error")
        return error if isinstance(error, str) else None


@dataclass
class SlackMessage:
    """A message as a user would see it. Streamed messages accumulate their markdown in
    :attr:`text`; ``chat.update`` replaces it. Snapshots: the stub hands out copies."""

    channel: str
    ts: str
    text: str
    user: str = BOT_USER_ID
    thread_ts: str | None = None
    blocks: list[Any] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    """Every chunk streamed into the message, in order (markdown, task and plan updates)."""
    stream_state: StreamState | None = None
    """``None`` for a posted message; ``"streaming"`` until stopped or expired."""
    started_at: float = 0.0
    updates: int = 0
    """How many ``chat.update`` calls changed it."""
    metadata: dict[str, Any] | None = None
    """Its message metadata (``event_type``, ``event_payload``), as the app last set it."""

    @property
    def from_bot(self) -> bool:
        return self.user == BOT_USER_ID

    def to_json(self, *, with_metadata: bool = False) -> dict[str, Any]:
        """The message object of Slack's answers (``message`` of ``chat.postMessage``);
        its metadata only ``with_metadata`` (``include_all_metadata`` of the history
        methods)."""
        data: dict[str, Any] = {"type": "message", "text": self.text, "user": self.user}
        if with_metadata and self.metadata is not None:
            data["metadata"] = self.metadata
        data |= {"ts": self.ts}
        if self.from_bot:
            data |= {"bot_id": BOT_ID, "app_id": APP_ID, "team": TEAM_ID}
        if self.thread_ts is not None:
            data["thread_ts"] = self.thread_ts
        if self.blocks:
            data["blocks"] = self.blocks
        return data


@dataclass
class AssistantThread:
    """What the app set on an assistant thread (``assistant.threads.*``)."""

    status: str = ""
    """The status now: ``""`` when cleared (by the app, its reply, or the timeout)."""
    status_set_at: float = 0.0
    statuses: list[str] = field(default_factory=list)
    """Every status the app set, in order."""
    prompts: list[dict[str, Any]] = field(default_factory=list)
    prompts_title: str | None = None
    title: str | None = None
    loading_messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Fault:
    method: str
    status: int
    error: str
    retry_after: int | None


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def _ok(**fields: Any) -> _Answer:
    return _Answer(200, {"ok": True, **fields})


def _fail(error: str) -> _Answer:
    return _Answer(200, {"ok": False, "error": error})


def _throttled(retry_after: int) -> _Answer:
    return _Answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)})


class _Window:
    """Sliding windows of call times, one per key."""

    def __init__(self, limit: RateLimit | None) -> None:
        self.limit = limit
        self._times: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float) -> int | None:
        """``None`` and the call counted, or the whole seconds until one is admitted."""
        if self.limit is None:
            return None
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.limit.period_s:
            times.popleft()
        if len(times) >= self.limit.calls:
            return max(1, math.ceil(times[0] + self.limit.period_s - now))
        times.append(now)
        return None

    def clear(self) -> None:
        self._times.clear()


# the Web API --------------------------------------------------------------------------------

_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
_JSON_ARGS = frozenset(
    {"chunks", "blocks", "prompts", "attachments", "metadata", "loading_messages"}
)


class SlackWebStub(StubServer[_Fault, SlackCall]):
    """Slack's Web API at ``http://127.0.0.1:<port>/api/`` (see the module docstring for the
    limits). A context manager; starts its own :class:`SocketModeStub` unless given one."""

    name = "slack-web-stub"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        append_rate: RateLimit | None = APPEND_RATE,
        update_rate: RateLimit | None = UPDATE_RATE,
        post_rate: RateLimit | None = None,
        max_markdown_chars: int = MAX_MARKDOWN_CHARS,
        max_stream_chars: int | None = None,
        stream_ttl_s: float | None = STREAM_TTL_S,
        status_ttl_s: float | None = STATUS_TTL_S,
        socket_mode: SocketModeStub | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host=host, port=port)
        self.bot_token = bot_token
        self.app_token = app_token
        self.max_markdown_chars = max_markdown_chars
        self.max_stream_chars = max_stream_chars
        self.stream_ttl_s = stream_ttl_s
        self.status_ttl_s = status_ttl_s
        self._owns_socket_mode = socket_mode is None
        self.socket_mode = socket_mode if socket_mode is not None else SocketModeStub(host=host)
        self._clock = clock
        self._changed = threading.Condition(self._lock)
        self._append_window = _Window(append_rate)
        self._update_window = _Window(update_rate)
        self._post_window = _Window(post_rate)
        self._messages: dict[str, SlackMessage] = {}
        self._threads: dict[tuple[str, str], AssistantThread] = {}
        self._reactions: dict[tuple[str, str], list[str]] = {}
        self._streaming_refused: str | None = None
        self._last_ts = 0.0
        self._methods: dict[str, Callable[[dict[str, Any], float], _Answer]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "assistant.threads.setStatus": self._set_status,
            "assistant.threads.setSuggestedPrompts": self._set_suggested_prompts,
            "assistant.threads.setTitle": self._set_title,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "conversations.replies": self._replies,
            "apps.connections.open": self._connections_open,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _SlackApiHandler

    # lifecycle

    def start(self) -> Self:
        if self._owns_socket_mode:
            self.socket_mode.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._owns_socket_mode:
            self.socket_mode.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/api/``: ``base_url`` for ``slack_sdk.WebClient``."""
        return f"{self.endpoint_url}/api/"

    # what tests script

    def fail(
        self,
        method: str,
        *,
        times: int = 1,
        status: int = 429,
        error: str = "ratelimited",
        retry_after: int | None = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with ``error`` at HTTP ``status``
        (with ``Retry-After: retry_after`` unless None) instead of serving them."""
        self._queue(_Fault(method, status, error, retry_after) for _ in range(times))

    def refuse_streaming(self, error: str = "not_allowed_token_type") -> None:
        """Make ``chat.startStream`` answer ``error`` until :meth:`allow_streaming`."""
        with self._lock:
            self._streaming_refused = error

    def allow_streaming(self) -> None:
        with self._lock:
            self._streaming_refused = None

    def seed_message(
        self, channel: str, text: str, *, user: str = USER_ID, thread_ts: str | None = None
    ) -> str:
        """Add a message from ``user`` (a user's question the bot replies to); its ``ts``."""
        with self._lock:
            ts = self._next_ts()
            self._messages[ts] = SlackMessage(channel, ts, text, user=user, thread_ts=thread_ts)
            return ts

    def reset(self) -> None:
        """Forget calls, faults, messages, threads and throttling windows."""
        super().reset()
        with self._lock:
            self._messages.clear()
            self._threads.clear()
            self._reactions.clear()
            for window in (self._append_window, self._update_window, self._post_window):
                window.clear()

    # what tests read

    def calls(self, method: str | None = None) -> list[SlackCall]:
        """Every call (of ``method``, if given), oldest first."""
        with self._lock:
            return [c for c in self._requests if method is None or c.method == method]

    def wait_calls(self, method: str, n: int = 1, timeout: float = 5.0) -> list[SlackCall]:
        """The calls of ``method`` once there are at least ``n``; AssertionError after
        ``timeout`` seconds."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: len([c for c in self._requests if c.method == method]) >= n, timeout
            )
            calls = [c for c in self._requests if c.method == method]
        if not found:
            raise AssertionError(f"{n} {method} calls expected within {timeout}s, got {len(calls)}")
        return calls

    def message(self, ts: str) -> SlackMessage:
        """A copy of the message ``ts``; KeyError if the stub has none."""
        with self._lock:
            return copy.deepcopy(self._messages[ts])

    def final_text(self, ts: str) -> str:
        """What a user sees in message ``ts``: the posted text, the last update, or the
        stream's accumulated markdown."""
        return self.message(ts).text

    def thread_messages(self, channel: str, thread_ts: str) -> list[SlackMessage]:
        """The replies in thread ``thread_ts`` of ``channel`` (not its parent), oldest first."""
        with self._lock:
            replies = [
                copy.deepcopy(m)
                for m in self._messages.values()
                if m.channel == channel and m.thread_ts == thread_ts and m.ts != thread_ts
            ]
        return sorted(replies, key=lambda m: float(m.ts))

    def assistant_thread(self, channel: str, thread_ts: str) -> AssistantThread:
        """What the app set on the thread (an empty record if nothing)."""
        with self._lock:
            thread = copy.deepcopy(self._threads.get((channel, thread_ts), AssistantThread()))
            now = self._clock()
        if self.status_ttl_s is not None and now - thread.status_set_at > self.status_ttl_s:
            thread.status = ""
        return thread

    def reactions(self, channel: str, ts: str) -> list[str]:
        """The bot's reactions on message ``ts``, in the order added."""
        with self._lock:
            return list(self._reactions.get((channel, ts), []))

    # serving (under the lock: one call at a time, recorded in the order answered)

    def _serve(self, method: str, args: dict[str, Any], token: str | None) -> _Answer:
        with self._changed:
            now = self._clock()
            handler = self._methods.get(method)
            if handler is None:
                answer = _fail("unknown_method")
            elif (error := self._auth_error(method, token)) is not None:
                answer = _fail(error)
            elif (fault := self._take_fault(method)) is not None:
                headers = (
                    {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                )
                answer = _Answer(fault.status, {"ok": False, "error": fault.error}, headers)
            else:
                answer = handler(args, now)
            self._requests.append(SlackCall(method, args, now, token, answer.status, answer.body))
            self._changed.notify_all()
        return answer

    def _auth_error(self, method: str, token: str | None) -> str | None:
        if not token:
            return "not_authed"
        wanted, other = (
            (self.app_token, ("xoxb-", "xoxp-"))
            if method in _APP_TOKEN_METHODS
            else (self.bot_token, ("xapp-",))
        )
        if token == wanted:
            return None
        return "not_allowed_token_type" if token.startswith(other) else "invalid_auth"

    def _take_fault(self, method: str) -> _Fault | None:
        for i, fault in enumerate(self._script):
            if fault.method == method:
                return self._script.pop(i)
        return None

    def _next_ts(self) -> str:
        """A Slack ``ts`` (seconds.microseconds), unique and increasing."""
        self._last_ts = max(time.time(), self._last_ts + 1e-6)
        return f"{self._last_ts:.6f}"

    def _clear_status(self, channel: str, thread_ts: str | None) -> None:
        thread = self._threads.get((channel, thread_ts)) if thread_ts else None
        if thread is not None:
            thread.status = ""

    def _find(self, args: Mapping[str, Any], ts_arg: str = "ts") -> SlackMessage | None:
        message = self._messages.get(str(args.get(ts_arg, "")))
        if message is None or message.channel != args.get("channel"):
            return None
        return message

    def _too_long(self, message: SlackMessage | None, args: Mapping[str, Any]) -> bool:
        pieces = _markdown_pieces(args)
        if any(len(p) > self.max_markdown_chars for p in pieces):
            return True
        if self.max_stream_chars is None:
            return False
        total = sum(len(p) for p in pieces) + (len(message.text) if message else 0)
        return total > self.max_stream_chars

    def _expire(self, message: SlackMessage, now: float) -> None:
        if (
            message.stream_state == "streaming"
            and self.stream_ttl_s is not None
            and now - message.started_at > self.stream_ttl_s
        ):
            message.stream_state = "stopped"

    # the methods

    def _auth_test(self, args: dict[str, Any], now: float) -> _Answer:
        return _ok(
            url="https://stub-workspace.slack.com/",
            team="Stub Workspace",
            user="stubbot",
            team_id=TEAM_ID,
            user_id=BOT_USER_ID,
            bot_id=BOT_ID,
            is_enterprise_install=False,
        )

    def _post_message(self, args: dict[str, Any], now: float) -> _Answer:
        channel = args.get("channel")
        if not isinstance(channel, str) or not channel:
            return _fail("channel_not_found")
        if (retry := self._post_window.admit(channel, now)) is not None:
            return _throttled(retry)
        text = args.get("text") or args.get("markdown_text") or ""
        if not text and not args.get("blocks") and not args.get("attachments"):
            return _fail("no_text")
        thread_ts = args.get("thread_ts") or None
        message = SlackMessage(
            channel, self._next_ts(), str(text), thread_ts=thread_ts, blocks=_list(args, "blocks")
        )
        message.metadata = _metadata(args, None)
        self._messages[message.ts] = message
        self._clear_status(channel, thread_ts)
        return _ok(channel=channel, ts=message.ts, message=message.to_json())

    def _update(self, args: dict[str, Any], now: float) -> _Answer:
        channel = str(args.get("channel", ""))
        if (retry := self._update_window.admit(channel, now)) is not None:
            return _throttled(retry)
        message = self._find(args)
        if message is None:
            return _fail("message_not_found")
        if not message.from_bot:
            return _fail("cant_update_message")
        text = args.get("text") or args.get("markdown_text")
        if text is None and "blocks" not in args:
            return _fail("no_text")
        if text is not None:
            message.text = str(text)
        if "blocks" in args:
            message.blocks = _list(args, "blocks")
        message.metadata = _metadata(args, message.metadata)
        message.updates += 1
        return _ok(channel=channel, ts=message.ts, text=message.text, message=message.to_json())

    def _start_stream(self, args: dict[str, Any], now: float) -> _Answer:
        if self._streaming_refused is not None:
            return _fail(self._streaming_refused)
        channel = args.get("channel")
        thread_ts = args.get("thread_ts")
        if not isinstance(channel, str) or not channel:
            return _fail("channel_not_found")
        if not isinstance(thread_ts, str) or not thread_ts:
            return _fail("invalid_arguments")
        if not channel.startswith("D"):
            for needed in ("recipient_team_id", "recipient_user_id"):
                if not args.get(needed):
                    return _fail(f"missing_{needed}")
        if self._too_long(None, args):
            return _fail("msg_too_long")
        message = SlackMessage(
            channel,
            self._next_ts(),
            "",
            thread_ts=thread_ts,
            stream_state="streaming",
            started_at=now,
        )
        _append(message, args)
        self._messages[message.ts] = message
        self._clear_status(channel, thread_ts)
        return _ok(channel=channel, ts=message.ts)

    def _append_stream(self, args: dict[str, Any], now: float) -> _Answer:
        if (retry := self._append_window.admit(str(args.get("ts", "")), now)) is not None:
            return _throttled(retry)
        message = self._find(args)
        if message is None:
            return _fail("message_not_found")
        self._expire(message, now)
        if message.stream_state != "streaming":
            return _fail("message_not_in_streaming_state")
        if not args.get("markdown_text") and not args.get("chunks"):
            return _fail("no_text")
        if self._too_long(message, args):
            return _fail("msg_too_long")
        _append(message, args)
        return _ok(channel=message.channel, ts=message.ts)

    def _stop_stream(self, args: dict[str, Any], now: float) -> _Answer:
        message = self._find(args)
        if message is None:
            return _fail("message_not_found")
        self._expire(message, now)
        if message.stream_state != "streaming":
            return _fail("message_not_in_streaming_state")
        if self._too_long(message, args):
            return _fail("msg_too_long")
        _append(message, args)
        if "blocks" in args:
            message.blocks = _list(args, "blocks")
        message.metadata = _metadata(args, message.metadata)
        message.stream_state = "stopped"
        return _ok(channel=message.channel, ts=message.ts, message=message.to_json())

    def _assistant_thread(self, args: Mapping[str, Any]) -> AssistantThread | None:
        channel, thread_ts = args.get("channel_id"), args.get("thread_ts")
        if not isinstance(channel, str) or not channel:
            return None
        if not isinstance(thread_ts, str) or not thread_ts:
            return None
        return self._threads.setdefault((channel, thread_ts), AssistantThread())

    def _set_status(self, args: dict[str, Any], now: float) -> _Answer:
        thread = self._assistant_thread(args)
        if thread is None or "status" not in args:
            return _fail("invalid_arguments")
        thread.status = str(args["status"])
        thread.status_set_at = now
        thread.statuses.append(thread.status)
        thread.loading_messages = [str(m) for m in _list(args, "loading_messages")]
        return _ok()

    def _set_suggested_prompts(self, args: dict[str, Any], now: float) -> _Answer:
        thread = self._assistant_thread(args)
        prompts = _list(args, "prompts")
        if thread is None or not prompts:
            return _fail("invalid_arguments")
        thread.prompts = prompts
        thread.prompts_title = args.get("title")
        return _ok()

    def _set_title(self, args: dict[str, Any], now: float) -> _Answer:
        thread = self._assistant_thread(args)
        if thread is None or not args.get("title"):
            return _fail("invalid_arguments")
        thread.title = str(args["title"])
        return _ok()

    def _reaction_key(self, args: Mapping[str, Any]) -> tuple[str, str] | None:
        channel, ts = args.get("channel"), args.get("timestamp")
        if isinstance(channel, str) and channel and isinstance(ts, str) and ts:
            return channel, ts
        return None

    def _reactions_add(self, args: dict[str, Any], now: float) -> _Answer:
        key, name = self._reaction_key(args), args.get("name")
        if key is None or not isinstance(name, str) or not name:
            return _fail("invalid_arguments")
        names = self._reactions.setdefault(key, [])
        if name in names:
            return _fail("already_reacted")
        names.append(name)
        return _ok()

    def _reactions_remove(self, args: dict[str, Any], now: float) -> _Answer:
        key, name = self._reaction_key(args), args.get("name")
        if key is None or not isinstance(name, str):
            return _fail("invalid_arguments")
        names = self._reactions.get(key, [])
        if name not in names:
            return _fail("no_reaction")
        names.remove(name)
        return _ok()

    def _replies(self, args: dict[str, Any], now: float) -> _Answer:
        """A thread (``ts``: its parent or any message in it; the parent first, as Slack
        answers), narrowed by ``oldest``/``latest``/``inclusive``; metadata only with
        ``include_all_metadata``."""
        channel, ts = args.get("channel"), args.get("ts")
        named = self._messages.get(str(ts))
        if named is None or named.channel != channel:
            return _fail("thread_not_found")
        root = named.thread_ts or named.ts
        thread = sorted(
            (
                m
                for m in self._messages.values()
                if m.channel == channel and root in (m.ts, m.thread_ts)
            ),
            key=lambda m: float(m.ts),
        )
        inclusive = args.get("inclusive") in (True, "true", "1", 1)
        oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or "inf")

        def kept(m: SlackMessage) -> bool:
            at = float(m.ts)
            if inclusive:
                return oldest <= at <= latest
            return oldest < at < latest

        shown = [thread[0], *(m for m in thread[1:] if kept(m))]
        metadata = args.get("include_all_metadata") in (True, "true", "1", 1)
        return _ok(messages=[m.to_json(with_metadata=metadata) for m in shown], has_more=False)

    def _connections_open(self, args: dict[str, Any], now: float) -> _Answer:
        return _ok(url=self.socket_mode.issue_url())


def _metadata(args: Mapping[str, Any], kept: dict[str, Any] | None) -> dict[str, Any] | None:
    """The message metadata a call sets (``kept`` when it sets none)."""
    value = args.get("metadata")
    return value if isinstance(value, dict) else kept


def _list(args: Mapping[str, Any], name: str) -> list[Any]:
    value = args.get(name)
    return list(value) if isinstance(value, list) else []


def _markdown_pieces(args: Mapping[str, Any]) -> list[str]:
    """The markdown a stream call adds: ``markdown_text``, then each markdown chunk."""
    pieces = [str(args["markdown_text"])] if args.get("markdown_text") else []
    for chunk in _list(args, "chunks"):
        if isinstance(chunk, dict) and chunk.get("type") == "markdown_text":
            pieces.append(str(chunk.get("text", "")))
    return pieces


def _append(message: SlackMessage, args: Mapping[str, Any]) -> None:
    message.text += "".join(_markdown_pieces(args))
    if args.get("markdown_text"):
        message.chunks.append({"type": "markdown_text", "text": str(args["markdown_text"])})
    message.chunks.extend(c for c in _list(args, "chunks") if isinstance(c, dict))


def _parse_args(query: str, raw: bytes, content_type: str) -> dict[str, Any] | str:
    """The call's arguments (query string, then body), or the error code for a bad body."""
    args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query).items()}
    media_type = content_type.split(";", maxsplit=1)[0].strip().lower()
    if raw and media_type == "application/json":
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "invalid_json"
        if not isinstance(body, dict):
            return "invalid_json"
        args.update(body)
    elif raw and media_type == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return "invalid_form_data"
        args.update({k: v[-1] for k, v in form.items()})
        # form bodies carry Slack's JSON arguments as JSON strings
        for name in _JSON_ARGS & args.keys():
            try:
                args[name] = json.loads(args[name])
            except json.JSONDecodeError:
                return "invalid_arguments"
    elif raw:
        return "invalid_form_data"  # multipart (file uploads) is not served
    return args


class _SlackApiHandler(StubHandler[SlackWebStub]):
    log_name = "slack"

    def request_id_header(self) -> tuple[str, str]:
        return "x-slack-req-id", secrets.token_hex(16)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._drain())

    def _answer(self, raw: bytes) -> None:
        split = urlsplit(self.path)
        if not split.path.startswith("/api/"):
            self._send_json(404, {"ok": False, "error": "unknown_method"})
            return
        parsed = _parse_args(split.query, raw, self.headers.get("Content-Type", ""))
        if isinstance(parsed, str):
            self._send_json(200, {"ok": False, "error": parsed})
            return
        token = parsed.pop("token", None)
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        method = split.path.removeprefix("/api/")
        answer = self.stub._serve(method, parsed, token if isinstance(token, str) else None)
        self._send_json(answer.status, answer.body, answer.headers)


# Socket Mode --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """An envelope the stub sent."""

    envelope_id: str
    kind: EnvelopeKind
    payload: Mapping[str, Any]
    sent_at: float
    connection_id: int


@dataclass(frozen=True)
class Ack:
    """The client's acknowledgement of an envelope."""

    envelope_id: str
    payload: Any
    """The ``payload`` the client answered with (slash commands, some interactions)."""
    received_at: float
    sent_at: float | None
    """When the envelope went out; None for an ack of an envelope the stub never sent."""
    connection_id: int
    deadline_s: float = ACK_DEADLINE_S

    @property
    def latency_s(self) -> float | None:
        return None if self.sent_at is None else self.received_at - self.sent_at

    @property
    def in_time(self) -> bool:
        """Whether the ack came within Slack's deadline (3 s)."""
        return self.latency_s is not None and self.latency_s <= self.deadline_s


@dataclass
class _Link:
    connection_id: int
    connection: ServerConnection
    opened_at: float


class SocketModeStub(Lifecycle):
    """Slack's Socket Mode server on ``ws://127.0.0.1:<port>/link/``: accepts connections
    whose ``ticket`` came from :meth:`issue_url` (``apps.connections.open``), greets each with
    ``hello``, sends envelopes to the newest connection and records acks. A context manager,
    or ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = APP_ID,
        ack_deadline_s: float = ACK_DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.app_id = app_id
        self.ack_deadline_s = ack_deadline_s
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tickets: set[str] = set()
        self._links: dict[int, _Link] = {}
        self._opened = 0
        self._envelopes: dict[str, Envelope] = {}
        self._acks: list[Ack] = []
        self._other: list[str] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind and serve in a daemon thread. Idempotent."""
        if self._server is not None:
            return self
        server = serve(
            self._serve_connection,
            self.host,
            self.port,
            process_request=self._check_ticket,
            compression=None,
            ping_interval=None,  # the client pings; Slack's pings are not what tests check
            close_timeout=1.0,
        )
        self.port = server.socket.getsockname()[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"slack-socket-mode:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        self.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    def issue_url(self) -> str:
        """A new connection URL, as ``apps.connections.open`` answers it."""
        if self._server is None:
            raise RuntimeError("SocketModeStub is not running: call start() first")
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"

    # what tests do

    def send_event(
        self,
        payload: Mapping[str, Any],
        kind: EnvelopeKind = "events_api",
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        envelope_id: str | None = None,
        timeout: float = 5.0,
    ) -> str:
        """Send an envelope carrying ``payload`` on the newest connection (waiting up to
        ``timeout`` s for one); its ``envelope_id``. ``accepts_response_payload`` defaults
        to Slack's: true for slash commands only."""
        envelope_id = envelope_id or str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "payload": dict(payload),
            "type": kind,
            "accepts_response_payload": (
                kind == "slash_commands"
                if accepts_response_payload is None
                else accepts_response_payload
            ),
        }
        if kind == "events_api":
            envelope |= {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._links), timeout):
                raise AssertionError(f"no Socket Mode connection within {timeout}s")
            link = self._links[max(self._links)]
            self._envelopes[envelope_id] = Envelope(
                envelope_id, kind, envelope["payload"], self._clock(), link.connection_id
            )
        link.connection.send(json.dumps(envelope))
        return envelope_id

    def disconnect(
        self, reason: str = "refresh_requested", close_after_s: float | None = None
    ) -> int:
        """Send ``{"type": "disconnect", "reason": ...}`` on every open connection (Slack's
        request to reconnect) and return how many. Slack closes the old connection some
        time later; ``close_after_s`` does that too. The builtin ``SocketModeClient`` needs
        that close: it reads one connection at a time, and its read of the old one blocks
        until the close or its 3 s receive timeout, so envelopes on the new connection wait
        meanwhile (and their acks can miss the deadline)."""
        with self._lock:
            links = list(self._links.values())
        message = json.dumps(
            {
                "type": "disconnect",
                "reason": reason,
                "num_connections": len(links),
                "debug_info": {"host": "applink-stub"},
                "connection_info": {"app_id": self.app_id},
            }
        )
        for link in links:
            try:
                link.connection.send(message)
            except ConnectionClosed:
                continue
        if close_after_s is not None:
            timer = threading.Timer(close_after_s, self._close, [links])
            timer.daemon = True
            timer.start()
        return len(links)

    def drop_connections(self) -> None:
        """Close every open connection (a close frame, as when Slack's side goes away)."""
        with self._lock:
            links = list(self._links.values())
        self._close(links)

    # what tests read

    def wait_connections(self, opened: int, timeout: float = 5.0) -> None:
        """Wait until ``opened`` connections have opened in all and one is open now."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: self._opened >= opened and bool(self._links), timeout
            )
            seen = self._opened
        if not done:
            raise AssertionError(f"{opened} Socket Mode connections expected, {seen} opened")

    def wait_ack(self, envelope_id: str, timeout: float = ACK_DEADLINE_S + 2.0) -> Ack:
        """The first ack of ``envelope_id``; AssertionError if none within ``timeout``
        (longer than the deadline by default, so a late ack is seen and reported by
        :attr:`Ack.in_time`)."""
        with self._changed:
            self._changed.wait_for(lambda: self._ack(envelope_id) is not None, timeout)
            ack = self._ack(envelope_id)
        if ack is None:
            raise AssertionError(f"no ack of envelope {envelope_id} within {timeout}s")
        return ack

    @property
    def acks(self) -> list[Ack]:
        """Every ack received, in order (duplicates included)."""
        with self._lock:
            return list(self._acks)

    @property
    def envelopes(self) -> list[Envelope]:
        """Every envelope sent, in order."""
        with self._lock:
            return list(self._envelopes.values())

    @property
    def other_messages(self) -> list[str]:
        """What clients sent that was not an ack."""
        with self._lock:
            return list(self._other)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    @property
    def opened_connections(self) -> int:
        """Connections opened since start, closed ones included."""
        with self._lock:
            return self._opened

    # serving

    def _ack(self, envelope_id: str) -> Ack | None:
        return next((a for a in self._acks if a.envelope_id == envelope_id), None)

    def _check_ticket(self, connection: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        tickets = parse_qs(split.query).get("ticket", [])
        with self._lock:
            known = bool(tickets) and tickets[0] in self._tickets
        if split.path.rstrip("/") != "/link" or not known:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid ticket\n")
        return None

    def _hello(self, num_connections: int) -> str:
        return json.dumps(
            {
                "type": "hello",
                "num_connections": num_connections,
                "debug_info": {
                    "host": "applink-stub",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        )

    def _serve_connection(self, connection: ServerConnection) -> None:
        with self._lock:
            self._opened += 1
            connection_id = self._opened
            open_after = len(self._links) + 1
        try:
            connection.send(self._hello(open_after))  # before any envelope can use it
            with self._changed:
                self._links[connection_id] = _Link(connection_id, connection, self._clock())
                self._changed.notify_all()
            for raw in connection:
                text = raw.decode() if isinstance(raw, bytes) else raw
                self._receive(connection_id, text)
        except ConnectionClosed:
            pass  # the client went away: SocketModeClient closes the old socket on reconnect
        finally:
            with self._changed:
                self._links.pop(connection_id, None)
                self._changed.notify_all()

    def _receive(self, connection_id: int, text: str) -> None:
        now = self._clock()
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            message = None
        with self._changed:
            if isinstance(message, dict) and isinstance(message.get("envelope_id"), str):
                envelope = self._envelopes.get(message["envelope_id"])
                ack = Ack(
                    message["envelope_id"],
                    message.get("payload"),
                    now,
                    envelope.sent_at if envelope else None,
                    connection_id,
                    self.ack_deadline_s,
                )
                self._acks.append(ack)
                if not ack.in_time:
                    logger.warning("late or unknown Socket Mode ack: %s", ack)
            else:
                self._other.append(text)
            self._changed.notify_all()

    @staticmethod
    def _close(links: list[_Link]) -> None:
        for link in links:
            link.connection.close()


# Events API payloads ------------------------------------------------------------------------


def events_api_payload(
    event: Mapping[str, Any], *, team_id: str = TEAM_ID, api_app_id: str = APP_ID
) -> dict[str, Any]:
    """The ``event_callback`` body that carries ``event`` (an ``events_api`` payload)."""
    return {
        "token": "stub-verification-token",
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{event.get('type', 'event')}-{team_id}",
    }


def _event_ts() -> str:
    return f"{time.time():.6f}"


def message_event(
    text: str,
    *,
    channel: str,
    user: str = USER_ID,
    ts: str | None = None,
    thread_ts: str | None = None,
    event_type: Literal["message", "app_mention"] = "message",
) -> dict[str, Any]:
    """A ``message`` (``channel_type`` from the id: ``D`` is a DM) or ``app_mention`` event."""
    ts = ts or _event_ts()
    event: dict[str, Any] = {
        "type": event_type,
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        "team": TEAM_ID,
        "client_msg_id": str(uuid.uuid4()),
    }
    if event_type == "message":
        event["channel_type"] = "im" if channel.startswith("D") else "channel"
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def reaction_event(
    kind: Literal["reaction_added", "reaction_removed"],
    *,
    reaction: str,
    channel: str,
    ts: str,
    user: str = USER_ID,
    item_user: str = BOT_USER_ID,
) -> dict[str, Any]:
    """A ``reaction_added`` / ``reaction_removed`` event on message ``ts`` in ``channel``."""
    return {
        "type": kind,
        "user": user,
        "reaction": reaction,
        "item_user": item_user,
        "item": {"type": "message", "channel": channel, "ts": ts},
        "event_ts": _event_ts(),
    }


__all__ = [
    "APP_TOKEN",
    "BOT_TOKEN",
    "Ack",
    "AssistantThread",
    "Envelope",
    "RateLimit",
    "SlackCall",
    "SlackMessage",
    "SlackWebStub",
    "SocketModeStub",
    "events_api_payload",
    "message_event",
    "reaction_event",
]
