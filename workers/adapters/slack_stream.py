"""A turn's reply streamed into its Slack thread while the turn runs.

Direct messages (assistant threads) stream, and so do channel threads once the turn's status
said who asked (a channel's stream is addressed to that member: ``recipient_user_id`` and
``recipient_team_id``); a turn that did not say is posted whole. The text goes out as a
streamed message: ``chat.startStream``, then ``chat.appendStream`` with what came since, at
most once per :data:`FLUSH_SECONDS` (``appendStream`` is rate limited per workspace; a 429
holds the text back for Slack's ``Retry-After`` and sends it with the next flush, nothing
lost); the final payload stops the stream. Where a workspace refuses streaming:
``chat.postMessage`` with the first text, then ``chat.update`` at most once per
:data:`FLUSH_SECONDS` (Slack's one message per second per channel).

A streamed message nearing Slack's limits is closed and continued in a new message: over
:data:`PART_CHARS` characters, or older than :data:`PART_SECONDS` (Slack ends a stream about
five minutes after it started), or when Slack says it is no longer streaming.

**Which reply a message is:** the message that ends a reply (the stream's last part, or the
posted message) carries Slack message metadata ``{"event_type": "agentworker_reply",
"event_payload": {"conversation_id", "reply_id"}}`` (:func:`reply_metadata`): a reaction on it
is read back as feedback on that reply (:mod:`workers.adapters.slack_events`).

**The final text is the committed reply.** When the reply is delivered, what was streamed is
compared with the reply's text: what is missing is appended as the stream stops; a reply that
differs from what streamed (the output guard masked it, a node rewrote it) replaces it
(``chat.update`` of the first message, the others deleted).

**How a stream is keyed:** by the turn's id, in the process that runs the turn (its pieces
and its final payload are sent by the same process: the ``turn`` function's step, or the
local worker). A payload delivered for a turn with no stream here is posted as a new message
(``chat.postMessage``). A reply already finalized here (its ``reply_id``) is not sent again
by a retried delivery in this process; one retried in another process (the AWS ``deliver``
function) finds it in the thread by its metadata (``SlackReplySink.shown``). A turn cut off
after it streamed (it failed, was cancelled, or runs again after a retry) kept nothing, and
neither does the thread: its notice, or the next turn's first piece, removes what it showed
(``chat.delete``). Slack errors while streaming never fail the turn: the text falls back to
the final payload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from events.inbound import slack_thread_of
from events.outbound import Notice, OutboxPayload, Reply, ReplyChunk
from workers.errors import AgentWorkerError, PermanentError, RetryableError, SlackRateLimited

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
"""At most one Slack call per stream this often (after the first, which goes at once)."""
PART_CHARS = 10_000
"""A streamed message is closed and continued past this many characters (Slack takes
12,000 per call and documents no total)."""
PART_SECONDS = 240.0
"""A streamed message is closed and continued this long after it started (Slack ends a
stream about five minutes after it started)."""
NOT_STREAMING = frozenset({"message_not_in_streaming_state", "msg_too_long"})
"""What Slack answers an append it will not take into this message: continue in a new one."""
FINAL_WAIT_SECONDS = 3.0
"""How long the reply's last update may wait for the stream's pace (one call a second, a
429's ``Retry-After``) rather than be refused and sent again later."""
MAX_STREAMS = 256
"""Streams kept per process (the oldest is forgotten past it)."""
REPLY_EVENT = "agentworker_reply"
"""The ``event_type`` of the metadata on the messages that show a reply."""
DIRECT_MESSAGE = "D"
"""How a direct message's channel id starts (where assistant threads are)."""


def reply_metadata(conversation_id: str, reply_id: str) -> dict[str, Any]:
    """The Slack message metadata of a message that shows the reply ``reply_id``."""
    payload = {"conversation_id": conversation_id, "reply_id": reply_id}
    return {"event_type": REPLY_EVENT, "event_payload": payload}


def reply_of(message: Any) -> tuple[str, str] | None:
    """The (conversation, reply) a Web API message object shows, read from its metadata
    (:func:`reply_metadata`); ``None`` for any other message."""
    metadata = message.get("metadata") if isinstance(message, dict) else None
    if not isinstance(metadata, dict) or metadata.get("event_type") != REPLY_EVENT:
        return None
    payload = metadata.get("event_payload")
    if not isinstance(payload, dict):
        return None
    conversation_id, reply_id = payload.get("conversation_id"), payload.get("reply_id")
    if not isinstance(conversation_id, str) or not isinstance(reply_id, str):
        return None
    return conversation_id, reply_id


def recipient_of(team: str, requested_by: list[str]) -> tuple[str, str] | None:
    """The member of workspace ``team`` a channel's stream is addressed to: the first of
    the turn's requesters that is one of its members (``slack:<team>:<user>``)."""
    prefix = f"slack:{team}:"
    for who in requested_by:
        user = who.removeprefix(prefix)
        if who.startswith(prefix) and user and ":" not in user:
            return team, user
    return None


def escape(text: str) -> str:
    """Slack's three control characters in message text (``text`` fields, not markdown)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _first_half(text: str) -> str:
    """About the first half of ``text``, ending after a space where there is one."""
    half = len(text) // 2
    cut = text.rfind(" ", 0, half + 1) + 1
    return text[: cut or half]


@dataclass
class _Part:
    ts: str
    text: str
    started: float


@dataclass
class _Stream:
    conversation_id: str
    channel: str
    thread_ts: str
    streaming: bool
    """A streamed message (``chat.*Stream``), else a posted one kept up to date."""
    recipient: tuple[str, str] | None = None
    """(team, user) a channel's stream is addressed to."""
    parts: list[_Part] = field(default_factory=list)
    pending: str = ""
    last_call: float = float("-inf")
    blocked_until: float = 0.0
    open: bool = True
    """The last part is still a live stream."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held while the stream's text goes to Slack (one call at a time per stream)."""

    @property
    def shown(self) -> str:
        return "".join(p.text for p in self.parts)


Call = Callable[[str, dict[str, Any]], dict[str, Any] | None]
"""A Web API call (method, JSON body): the answer, a typed error, ``None`` without a token."""


class SlackStreams:
    """The turns streaming into Slack threads in this process."""

    def __init__(
        self,
        call: Call,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.call = call
        self.clock = clock
        self.sleep = sleep
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._recipients: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._finalized: deque[str] = deque(maxlen=1024)
        self._lock = threading.Lock()
        """Held while the streams are looked up, added or taken (never during a call)."""

    # a turn's pieces --------------------------------------------------------------------

    def address(self, turn_id: str, recipient: tuple[str, str]) -> None:
        """Whom the turn's stream in a channel is addressed to (team, user)."""
        with self._lock:
            self._recipients[turn_id] = recipient
            while len(self._recipients) > MAX_STREAMS:
                self._recipients.popitem(last=False)

    def piece(self, chunk: ReplyChunk) -> None:
        """Add a piece of the reply; send what waits when a call is due. A channel's turn
        streams once it is addressed (:meth:`address`); otherwise its final payload is
        posted as it is. Streams wait only for their own Slack calls."""
        _, channel, thread_ts = slack_thread_of(chunk.conversation_id)
        cut_off: list[_Stream] = []
        with self._lock:
            recipient = self._recipients.get(chunk.turn_id)
            if not channel.startswith(DIRECT_MESSAGE) and recipient is None:
                return
            stream = self._streams.get(chunk.turn_id)
            if stream is None:
                cut_off = self._take(lambda s: s.conversation_id == chunk.conversation_id)
                stream = _Stream(
                    chunk.conversation_id, channel, thread_ts, streaming=True, recipient=recipient
                )
                self._streams[chunk.turn_id] = stream
                while len(self._streams) > MAX_STREAMS:
                    self._streams.popitem(last=False)
        for old in cut_off:  # an earlier turn's, cut off: gone
            self._discard(old)
        with stream.lock:
            stream.pending += chunk.delta
            try:
                self._flush(stream, final=False)
            except AgentWorkerError as exc:  # the final payload will carry the text
                log.info("slack stream of turn %s held back: %s", chunk.turn_id, exc)

    def _take(self, which: Callable[[_Stream], bool]) -> list[_Stream]:
        """Remove the streams ``which`` names from this process's (under ``_lock``)."""
        turns = [t for t, s in self._streams.items() if which(s)]
        return [self._streams.pop(t) for t in turns]

    def _discard(self, stream: _Stream) -> None:
        """Remove what an unfinished stream showed: its turn was cut off (it failed, was
        cancelled, or a retry runs it again), and kept nothing."""
        with stream.lock:
            try:
                stream.pending = ""
                self._close(stream)
                for part in stream.parts:
                    self.call("chat.delete", {"channel": stream.channel, "ts": part.ts})
            except AgentWorkerError as exc:
                log.info(
                    "slack: a cut-off stream of %s not removed: %s", stream.conversation_id, exc
                )

    def _flush(self, stream: _Stream, *, final: bool) -> None:
        now = self.clock()
        due = now - stream.last_call >= FLUSH_SECONDS and now >= stream.blocked_until
        if not stream.pending or not (due or final):
            return
        try:
            if stream.streaming:
                self._stream_text(stream, now)
            else:
                self._update_text(stream)
        except SlackRateLimited as exc:
            stream.blocked_until = now + exc.retry_after
            if final:
                raise
        finally:
            stream.last_call = now

    def _stream_text(self, stream: _Stream, now: float) -> None:
        part = stream.parts[-1] if stream.parts and stream.open else None
        if part is not None and (
            len(part.text) + len(stream.pending) > PART_CHARS or now - part.started > PART_SECONDS
        ):
            self._close(stream)
            part = None
        text = stream.pending
        if part is None:
            start = {"channel": stream.channel, "thread_ts": stream.thread_ts}
            if stream.recipient is not None:
                team, user = stream.recipient
                start |= {"recipient_team_id": team, "recipient_user_id": user}
            while True:
                try:
                    answer = self.call("chat.startStream", {**start, "markdown_text": text})
                    break
                except PermanentError as exc:
                    if "msg_too_long" in str(exc) and len(text) > 1:
                        text = _first_half(text)  # (the rest waits for the next call)
                        continue
                    log.info("slack streaming refused (%s): posting and updating", exc)
                    stream.streaming = False  # refused here: post and update instead
                    self._update_text(stream)
                    return
            if answer is None:
                return
            stream.parts.append(_Part(str(answer["ts"]), text, now))
            stream.open = True
            stream.pending = stream.pending[len(text) :]
            return
        else:
            try:
                self.call(
                    "chat.appendStream",
                    {"channel": stream.channel, "ts": part.ts, "markdown_text": text},
                )
            except PermanentError as exc:
                if not any(code in str(exc) for code in NOT_STREAMING):
                    raise
                self._close(stream)  # Slack will not take more here: continue in a new one
                self._stream_text(stream, now)
                return
            part.text += text
        stream.pending = ""

    def _close(
        self, stream: _Stream, text: str = "", metadata: dict[str, Any] | None = None
    ) -> None:
        """Stop the live streamed message (with ``text``, the reply's last words; with
        ``metadata``, the reply it ends)."""
        if not (stream.parts and stream.open):
            return
        part = stream.parts[-1]
        body: dict[str, Any] = {"channel": stream.channel, "ts": part.ts}
        if text:
            body["markdown_text"] = text
        if metadata is not None:
            body["metadata"] = metadata
        stream.open = False
        try:
            self.call("chat.stopStream", body)
        except PermanentError as exc:
            if not any(code in str(exc) for code in NOT_STREAMING) or text:
                raise
            return  # Slack had ended it already
        part.text += text

    def _update_text(self, stream: _Stream, metadata: dict[str, Any] | None = None) -> None:
        text = stream.shown + stream.pending
        extra = {} if metadata is None else {"metadata": metadata}
        if not stream.parts:
            answer = self.call(
                "chat.postMessage",
                {
                    "channel": stream.channel,
                    "thread_ts": stream.thread_ts,
                    "text": escape(text),
                    **extra,
                },
            )
            if answer is None:
                return
            stream.parts.append(_Part(str(answer["ts"]), text, self.clock()))
        else:
            where = {"channel": stream.channel, "ts": stream.parts[0].ts}
            self.call("chat.update", {**where, "text": escape(text), **extra})
            stream.parts[0].text = text
        stream.open = False
        stream.pending = ""

    # the turn's end -----------------------------------------------------------------------

    def finish(self, payload: OutboxPayload) -> bool:
        """End the streams of ``payload``'s turn in this process: a reply becomes their final
        text (``True``: delivered, nothing else to post); anything else (a question, a
        notice, which names no turn: every stream of its conversation) stops them where
        they are (``False``: post the payload)."""
        if isinstance(payload, Reply) and payload.reply_id in self._finalized:
            return True
        turn = getattr(payload, "turn_id", None)
        with self._lock:
            if isinstance(turn, str) and isinstance(payload, Reply):
                self._recipients.pop(turn, None)
            if isinstance(turn, str):
                ended = [self._streams.pop(turn)] if turn in self._streams else []
            else:
                ended = self._take(lambda s: s.conversation_id == payload.conversation_id)
        if not ended:
            return False
        if isinstance(payload, Reply):
            [stream] = ended
            try:
                with stream.lock:
                    self._final(stream, payload)
            except BaseException:
                with self._lock:  # kept for the retried delivery
                    self._streams.setdefault(payload.turn_id, stream)
                raise
            self._finalized.append(payload.reply_id)
            return True
        for stream in ended:
            if isinstance(payload, Notice):  # the turn failed or was cancelled: kept nothing
                self._discard(stream)
            else:  # a question: what streamed before it stays
                with stream.lock:
                    stream.pending = ""
                    self._close(stream)
        return False

    def _paced(self, stream: _Stream) -> None:
        """Wait for the stream's pace before the reply's last update (Slack takes one
        ``chat.update`` a second in a channel), at most :data:`FINAL_WAIT_SECONDS`."""
        wait = max(stream.last_call + FLUSH_SECONDS, stream.blocked_until) - self.clock()
        if wait > 0:
            self.sleep(min(wait, FINAL_WAIT_SECONDS))

    def _final(self, stream: _Stream, payload: Reply) -> None:
        reply = payload.text
        metadata = reply_metadata(payload.conversation_id, payload.reply_id)
        stream.pending = ""
        shown = stream.shown
        if stream.streaming and reply.startswith(shown):
            rest = reply[len(shown) :]
            if stream.parts and stream.open and len(rest) <= PART_CHARS:
                try:
                    self._close(stream, rest, metadata)  # the last words as the stream stops
                    return
                except PermanentError as exc:
                    if not any(code in str(exc) for code in NOT_STREAMING):
                        raise
                    # Slack will not take them into this message: it ends where it is and
                    # the last words go on in a new one.
                    stream.open = True
                    self._close(stream)
            stream.pending = rest
            while stream.pending and stream.streaming:
                self._stream_text(stream, self.clock())
            if stream.streaming:  # (a refusal on the way posted it instead)
                self._close(stream, metadata=metadata)
                return
            shown = stream.shown
        if not stream.parts:
            stream.pending = reply  # nothing reached Slack yet: the reply is its first text
            self._update_text(stream, metadata)
            return
        self._close(stream)  # what Slack shows differs from the reply: the reply replaces it
        self._paced(stream)
        first, *others = stream.parts
        if shown != reply or not stream.streaming:  # (a posted message: its metadata too)
            where = {"channel": stream.channel, "ts": first.ts}
            self.call("chat.update", {**where, "text": escape(reply), "metadata": metadata})
        for part in others:
            try:
                self.call("chat.delete", {"channel": stream.channel, "ts": part.ts})
            except RetryableError as exc:
                log.info("slack: a streamed part not deleted: %s", exc)
