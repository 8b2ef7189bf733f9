"""In-process fan-out of replies to WebSocket subscribers, safe to call from worker threads."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any, Protocol

from events.outbound import STREAM_FRAME_TYPES, OutboxPayload, StreamChunk

Frame = dict[str, Any]


class Subscriber(Protocol):
    """Where the hub puts a conversation's frames (an ``asyncio.Queue``, or a socket's
    :class:`~workers.adapters.local.server.Follow`), on the event loop's thread."""

    def put_nowait(self, frame: Frame) -> None: ...


class LocalHub:
    """Conversation id -> subscriber queues. ``publish`` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._subs: dict[str, set[Subscriber]] = defaultdict(set)
        self._lock = threading.Lock()
        self._pieces: dict[str, tuple[str, list[Frame]]] = {}
        """Each conversation's turn in progress and the pieces it streamed so far (no store
        keeps them): what a stream that reconnects mid-turn missed. Dropped when the turn's
        answer is published, or the next turn streams."""

    def turn_pieces(self, conversation_id: str) -> list[Frame]:
        """The pieces the conversation's turn in progress streamed so far, in order."""
        with self._lock:
            held = self._pieces.get(conversation_id)
            return list(held[1]) if held else []

    def _hold(self, conversation_id: str, frame: Frame) -> None:
        turn = frame.get("turn_id")
        if frame.get("type") in PIECES and isinstance(turn, str):
            held = self._pieces.get(conversation_id)
            if held is None or held[0] != turn:
                held = self._pieces[conversation_id] = (turn, [])
            if len(held[1]) < MAX_HELD_PIECES:
                held[1].append(frame)
        elif frame.get("type") == FORGOTTEN or (
            turn is not None and self._pieces.get(conversation_id, ("",))[0] == turn
        ):
            self._pieces.pop(conversation_id, None)

    def subscribe(self, conversation_id: str, queue: Subscriber) -> None:
        with self._lock:
            self._subs[conversation_id].add(queue)

    def unsubscribe(self, queue: Subscriber) -> None:
        with self._lock:
            for cid in [cid for cid, subs in self._subs.items() if queue in subs]:
                self._subs[cid].discard(queue)
                if not self._subs[cid]:
                    del self._subs[cid]

    def subscribers(self, conversation_id: str) -> int:
        with self._lock:
            return len(self._subs.get(conversation_id, ()))

    def publish(self, conversation_id: str, frame: Frame) -> None:
        with self._lock:
            self._hold(conversation_id, frame)
            queues = list(self._subs.get(conversation_id, ()))
        for queue in queues:
            self._loop.call_soon_threadsafe(queue.put_nowait, frame)

    def forgotten(self, conversation_id: str) -> None:
        """Tell the conversation's followers it was erased (a ``forgotten`` frame, after
        every frame published before): a socket's follow closes on it, so nothing of a
        conversation created again under the id reaches it, unless its own first message
        creates that one."""
        self.publish(conversation_id, forgotten_frame(conversation_id))


PIECES = STREAM_FRAME_TYPES
"""The frames that are pieces of a turn's stream."""

UPDATE = "update"
"""The ``type`` of a node's update: a piece only the Agent Server API's run streams send
(our own WebSocket and event stream leave it out)."""

MAX_HELD_PIECES = 10_000
"""Most pieces of one turn held for streams that reconnect (the rest still go live)."""

FORGOTTEN = "forgotten"
"""The ``type`` of the frame that ends the follows of an erased conversation."""


def forgotten_frame(conversation_id: str) -> Frame:
    return {"type": FORGOTTEN, "conversation_id": conversation_id}


class LocalReplySink:
    """The ``ReplySink`` of the embedded runtime: pushes to the hub's subscribers. A reply
    with no subscriber is still delivered: it stays in the outbox for history."""

    def __init__(self, hub: LocalHub) -> None:
        self._hub = hub

    def send(self, payload: OutboxPayload) -> None:
        self._hub.publish(payload.conversation_id, payload.model_dump(mode="json"))

    def send_chunk(self, chunk: StreamChunk) -> None:
        self._hub.publish(chunk.conversation_id, chunk.model_dump(mode="json"))


class LocalCancellations:
    """The runs of this process that were cancelled, by conversation and lease token (a
    token is a run's own: a cancelled one never holds the lease again)."""

    def __init__(self) -> None:
        self._cancelled: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def cancel(self, conversation_id: str, token: int) -> None:
        with self._lock:
            self._cancelled.add((conversation_id, token))

    def cancelled(self, conversation_id: str, token: int) -> bool:
        with self._lock:
            return (conversation_id, token) in self._cancelled
