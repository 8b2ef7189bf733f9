"""Server-sent events of one conversation (``GET /v1/conversations/{id}/stream``) and the
wait for a message's answer (``POST .../messages?wait=SECONDS``), on the embedded runtime.

Every event's id says where it stands in the conversation, from what the store keeps, so a
client that reconnects with ``Last-Event-ID`` gets each event once, across a restart too:

* a reply, an approval request, an interrupt or a notice (what the outbox keeps):
  ``p.<reply_id>``; the events after it are the outbox entries after it;
* a piece of a turn's stream (a ``chunk``, ``custom`` or ``status`` frame, kept by no store):
  ``c.<reply_id of the last payload before it, or ->.<turn_id>.<index>``; the events after
  it are the outbox entries after that payload, then the turn's pieces after ``index`` that
  the hub still holds (the turn in progress), then what comes live.

A piece of a turn that has committed is not sent again (its reply carries the whole text).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from workers.adapters.local.hub import FORGOTTEN, PIECES, UPDATE, LocalHub
from workers.core.model import History
from workers.errors import ApiError

KEEP_ALIVE_SECONDS = 15.0
"""A comment line this often on a quiet stream, so that proxies keep it open."""

_ID_PART = r"[A-Za-z0-9_-]{1,64}"
_PAYLOAD_ID = re.compile(rf"p\.({_ID_PART})")
_PIECE_ID = re.compile(rf"c\.(-|{_ID_PART})\.({_ID_PART})\.(\d{{1,9}})")


@dataclass(frozen=True)
class Cursor:
    """Where a client stands: after the payload ``reply_id`` (``None``: before the first),
    and within ``turn`` after its piece ``index``."""

    reply_id: str | None
    turn: str | None = None
    index: int = -1


START = "start"
"""``?after=start``: every event the store keeps, from the first."""


def parse_cursor(text: str | None) -> Cursor | None:
    """The cursor of a ``Last-Event-ID`` (or ``?after=``): ``None`` for none (live events
    only), ``Cursor(None)`` for ``start``; 400 ``bad_event_id`` for anything else."""
    if text is None or text == "":
        return None
    if text == START:
        return Cursor(None)
    if match := _PAYLOAD_ID.fullmatch(text):
        return Cursor(match.group(1))
    if match := _PIECE_ID.fullmatch(text):
        reply = match.group(1)
        return Cursor(None if reply == "-" else reply, match.group(2), int(match.group(3)))
    raise ApiError(
        400,
        "bad_event_id",
        "Last-Event-ID: not an id this stream sent (or 'start' for everything)",
        "last_event_id",
    )


def payload_id(reply_id: str) -> str:
    return f"p.{reply_id}"


def piece_id(last_reply: str | None, turn: str, index: int) -> str:
    return f"c.{last_reply or '-'}.{turn}.{index}"


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    """One event as the wire carries it (the JSON on one line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass
class EventStream:
    """What one stream has sent: the payloads (by reply id), the turns that committed
    (their pieces are not sent again), the last piece of each turn, the last payload."""

    conversation_id: str
    last_reply: str | None = None
    sent: set[str] = field(default_factory=set)
    committed_turns: set[str] = field(default_factory=set)
    last_piece: dict[str, int] = field(default_factory=dict)

    def replay(self, history: History, cursor: Cursor | None) -> list[str]:
        """The kept payloads after ``cursor`` (400 ``bad_event_id`` when its payload is not
        this conversation's); none without one (live events only, placed after every kept
        payload, so that their ids resume from there)."""
        payloads = [e.payload for e in sorted(history.outbox, key=lambda e: e.seq)]
        if cursor is None:
            self._mark_sent(payloads)
            return []
        start = 0
        if cursor.reply_id is not None:
            ids = [p.reply_id for p in payloads]
            if cursor.reply_id not in ids:
                raise ApiError(
                    400,
                    "bad_event_id",
                    "Last-Event-ID: no such event in this conversation",
                    "last_event_id",
                )
            start = ids.index(cursor.reply_id) + 1
            self._mark_sent(payloads[:start])
        if cursor.turn is not None:
            self.last_piece[cursor.turn] = cursor.index
        return [e for p in payloads[start:] if (e := self.frame(p.model_dump(mode="json")))]

    def _mark_sent(self, payloads: Iterable[Any]) -> None:
        for p in payloads:
            self.sent.add(p.reply_id)
            if getattr(p, "turn_id", None):
                self.committed_turns.add(p.turn_id)
            self.last_reply = p.reply_id

    def frame(self, frame: dict[str, Any]) -> str | None:
        """``frame`` (from the hub or the store) as an event, or ``None`` when it was sent
        already or its turn has committed since."""
        kind = str(frame.get("type"))
        if kind == UPDATE:
            return None
        if kind in PIECES:
            turn, index = str(frame.get("turn_id")), int(frame.get("index", -1))
            if turn in self.committed_turns or index <= self.last_piece.get(turn, -1):
                return None
            self.last_piece[turn] = index
            return sse(kind, frame, piece_id(self.last_reply, turn, index))
        reply_id = frame.get("reply_id")
        if not isinstance(reply_id, str):
            return sse(kind, frame)
        if reply_id in self.sent:
            return None
        self.sent.add(reply_id)
        self.last_reply = reply_id
        if isinstance(frame.get("turn_id"), str):
            self.committed_turns.add(frame["turn_id"])
        return sse(kind, frame, payload_id(reply_id))


async def follow(
    stream: EventStream,
    hub: LocalHub,
    queue: asyncio.Queue[dict[str, Any]],
    first: list[str],
    *,
    keep_alive: float = KEEP_ALIVE_SECONDS,
) -> AsyncIterator[str]:
    """``first`` (the replay), the pieces of the turn in progress the hub holds, then the
    live events of ``queue`` (subscribed before the replay was read), until the client
    goes or the conversation is erased (a ``forgotten`` event ends the stream)."""
    try:
        for replayed in first:
            yield replayed
        for held in hub.turn_pieces(stream.conversation_id):
            if (event := stream.frame(held)) is not None:
                yield event
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), keep_alive)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if frame.get("type") == FORGOTTEN:
                yield sse(FORGOTTEN, frame)
                return
            if (event := stream.frame(frame)) is not None:
                yield event
    finally:
        hub.unsubscribe(queue)


def answers(frame: dict[str, Any], message_id: str) -> bool:
    """Whether ``frame`` is the answer to the message ``message_id``: a payload the outbox
    keeps (a reply, an approval request, an interrupt, a notice) in reply to it."""
    if frame.get("type") in PIECES:  # a turn's status names what it answers, too
        return False
    in_reply_to = frame.get("in_reply_to")
    return isinstance(in_reply_to, list) and message_id in in_reply_to


def answer_in(history: History, message_id: str) -> dict[str, Any] | None:
    """The payload the conversation's outbox keeps in answer to ``message_id``, if any."""
    for entry in history.outbox:
        payload = entry.payload.model_dump(mode="json")
        if answers(payload, message_id):
            return payload
    return None


async def wait_answer(
    queue: asyncio.Queue[dict[str, Any]], message_id: str, seconds: float
) -> dict[str, Any] | None:
    """The first frame of ``queue`` that answers ``message_id`` within ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            frame = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            return None
        if answers(frame, message_id):
            return frame
    return None
