"""The event stream's ids and bookkeeping (``workers/adapters/local/sse.py``): what a
reconnecting client is sent again and what never twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from events.outbound import Reply
from workers.adapters.aws.api_runtime import NoPieces
from workers.adapters.local.agent_server import RunPieces, after, event_id, parse_event_id
from workers.adapters.local.hub import LocalHub
from workers.adapters.local.sse import Cursor, EventStream, follow, parse_cursor
from workers.core.model import ConversationState, History, OutboxEntry
from workers.errors import ApiError

CID = "ws:a:1"


def piece(turn: str, index: int) -> dict[str, Any]:
    return {"type": "chunk", "conversation_id": CID, "turn_id": turn, "index": index, "delta": "x"}


def reply(turn: str, rid: str) -> Reply:
    return Reply(reply_id=rid, conversation_id=CID, turn_id=turn, text=f"reply {rid}")


def history(*payloads: Reply) -> History:
    state = ConversationState(CID, "enqueue", "idle", 0, 0, None, None, None, None, 0.0, 0.0)
    outbox = [OutboxEntry(seq=i + 1, payload=p, delivered=True) for i, p in enumerate(payloads)]
    return History(state=state, inbox=[], outbox=outbox)


def test_ids_parse_back_and_anything_else_is_a_400() -> None:
    assert parse_cursor(None) is None and parse_cursor("") is None
    assert parse_cursor("start") == Cursor(None)
    assert parse_cursor("p.r1") == Cursor("r1")
    assert parse_cursor("c.-.t1.3") == Cursor(None, "t1", 3)
    assert parse_cursor("c.r1.t1.0") == Cursor("r1", "t1", 0)
    for bad in ("p.", "p.a.b", "c.r.t", "c.r.t.-1", "c.r.t.1234567890", "q.r", "p." + "a" * 65):
        with pytest.raises(ApiError) as exc:
            parse_cursor(bad)
        assert exc.value.status == 400 and exc.value.code == "bad_event_id"


def test_a_resumed_stream_sends_what_followed_and_nothing_twice() -> None:
    kept = history(reply("t1", "r1"), reply("t2", "r2"))
    stream = EventStream(CID)
    [again] = stream.replay(kept, Cursor("r1", "t2", 1))  # saw t2's pieces 0-1, not r2
    assert again.startswith("id: p.r2\nevent: reply\n")
    assert stream.frame(piece("t2", 2)) is None  # t2 has committed: its reply has the text
    assert stream.frame(reply("t2", "r2").model_dump(mode="json")) is None  # sent already
    first = stream.frame(piece("t3", 0))
    assert first is not None and first.startswith("id: c.r2.t3.0\nevent: chunk\n")
    assert stream.frame(piece("t3", 0)) is None  # live and held by the hub: once
    with pytest.raises(ApiError):
        EventStream(CID).replay(kept, Cursor("gone"))


def test_a_live_stream_starts_after_what_is_kept() -> None:
    stream = EventStream(CID)
    assert stream.replay(history(reply("t1", "r1")), None) == []
    event = stream.frame(piece("t2", 0))
    assert event is not None and "id: c.r1.t2.0\n" in event


def test_a_quiet_stream_keeps_alive_and_an_erasure_ends_it() -> None:
    async def run() -> list[str]:
        hub = LocalHub(asyncio.get_running_loop())
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        hub.subscribe(CID, queue)
        hub.publish(CID, piece("t1", 0))  # held for streams that come later, and live
        out = []
        async for event in follow(EventStream(CID), hub, queue, [], keep_alive=0.01):
            out.append(event)
            if len(out) == 3:
                hub.forgotten(CID)
        assert hub.subscribers(CID) == 0 and hub.turn_pieces(CID) == []
        return out

    out = asyncio.run(run())
    assert out[0].startswith("id: c.-.t1.0\n")  # from the hub's hold; the live copy skipped
    assert ": keep-alive\n\n" in out
    assert out[-1].startswith("event: forgotten\n")


def test_a_run_takes_its_own_turns_pieces_once_and_our_stream_leaves_updates_out() -> None:
    """A run stream (Agent Server API) takes the pieces after the status naming its message,
    each once, though a piece the hub held may come again live (status included); node
    updates count in a sequence of their own, and an event is after another when it is
    further in either; our own event stream sends no node updates."""
    status = {"type": "status", "turn_id": "t2", "index": 0, "in_reply_to": ["m2"]}
    other = {"type": "status", "turn_id": "t1", "index": 0, "in_reply_to": ["m1"]}
    run = RunPieces("m2")
    seen = [run.rank(f) for f in (piece("t1", 3), other, status, piece("t2", 1), piece("t2", 2))]
    assert seen == [None, None, None, (2, "t2", 1, -1), (2, "t2", 2, -1)]
    again = [run.rank(f) for f in (status, piece("t2", 1), piece("t2", 2), piece("t2", 3))]
    assert again == [None, None, None, (2, "t2", 3, -1)]  # held, then live: once
    update = {**piece("t2", 0), "type": "update", "node": "model", "data": {}}
    assert run.rank(update) == (2, "t2", 3, 0)
    assert run.rank(update) is None and run.rank(piece("t2", 4)) == (2, "t2", 4, 0)
    assert run.rank(piece("t3", 5)) is None  # the next turn is another run's
    assert parse_event_id(event_id((2, "t2", 3, 0))) == (2, "t2", 3, 0)
    assert after((2, "t2", 3, 0), (2, "t2", 3, -1)) and after((2, "t2", 4, 0), (2, "t2", 3, 0))
    assert not after((2, "t2", 3, 0), (2, "t2", 4, 0))
    assert EventStream(CID).frame(update) is None


class EndedRun:
    """A runtime whose run has ended (its answer is in the outbox) before the stream looked;
    what the turn streamed waits in the stream's queue, as ``stream`` subscribes it before
    the run's message is accepted."""

    hub = NoPieces()
    poll_seconds = 0.01
    wait_limit_seconds = 1.0

    def __init__(self, answer: Reply) -> None:
        self.answer = answer

    async def history(self, conversation_id: str, principal: Any) -> History:
        return history(self.answer)

    async def graph_state(self, conversation_id: str, principal: Any, **_: Any) -> None:
        return None


def test_a_run_that_ended_before_its_stream_looked_still_streams_its_pieces() -> None:
    from events.identity import LOCAL_USER
    from workers.adapters.local.agent_server import Views, run_events
    from workers.config import Settings

    answer = reply("t1", "r1").model_copy(update={"in_reply_to": ["m1"], "text": "ab"})
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    status = {"type": "status", "turn_id": "t1", "index": 0, "in_reply_to": ["m1"]}
    for frame in (status, {**piece("t1", 1), "message_id": "a1", "delta": "a"}):
        queue.put_nowait(frame)
    queue.put_nowait({**piece("t1", 2), "message_id": "a1", "delta": "b"})
    queue.put_nowait(answer.model_dump(mode="json"))

    async def events() -> list[str]:
        stream = run_events(
            Views(Settings()),
            EndedRun(answer),  # type: ignore[arg-type]
            queue=queue,
            thread_id=CID,
            message_id="m1",
            principal=LOCAL_USER,
            modes={"messages-tuple"},
            text="hi",
        )
        return [e async for e in stream]

    sent = asyncio.run(events())
    said = [e for e in sent if "\nevent: messages\n" in e]
    assert len(said) == 2 and '"content":"a"' in said[0] and '"content":"b"' in said[1]


def test_a_run_is_over_once_its_turn_lets_the_thread_go() -> None:
    """``wait``/``join`` answer once the run that answered has let the thread go (its answer
    is sent before its lease is), not while it still holds it; a later run's claim, or an
    idle thread, ends the wait at once."""
    from dataclasses import replace

    from events.identity import LOCAL_USER
    from events.inbound import InboundMessage
    from workers.adapters.local.agent_server import settled
    from workers.core.model import InboxEntry

    message = InboundMessage(conversation_id=CID, text="hi", message_id="m1")
    base = history()
    running = replace(base.state, status="running", claimed_seq=1)

    class Releasing:
        poll_seconds = 0.01

        def __init__(self, states: list[ConversationState]) -> None:
            self.states = states
            self.reads = 0

        async def history(self, conversation_id: str, principal: Any) -> History:
            self.reads += 1
            state = self.states[min(self.reads - 1, len(self.states) - 1)]
            return replace(base, state=state, inbox=[InboxEntry(1, message, "consumed")])

    between = replace(running, claimed_seq=None)  # committed, the lease not yet let go
    releasing = Releasing([running, between, base.state])
    asyncio.run(settled(releasing, CID, "m1", LOCAL_USER))  # type: ignore[arg-type]
    assert releasing.reads == 3  # waited while the run held the thread
    later = Releasing([replace(running, claimed_seq=2)])
    asyncio.run(settled(later, CID, "m1", LOCAL_USER))  # type: ignore[arg-type]
    assert later.reads == 1  # a later run's: this one is over
