"""Erasure's parts without a server: the recorder drops the trace of a turn that ran past an
erasure; the exporter scrubs an erased conversation's records from the spool even while the
tracking store is down, never exports them, deletes the exported ones once the store
answers, and keeps a conversation created again under the id; a socket's follow closes on
the ``forgotten`` frame, a held one never opens on it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import ListSink
from workers.adapters.local.hub import forgotten_frame
from workers.adapters.local.server import Follow
from workers.tracing.exporter import Exporter, read_records
from workers.tracing.mlflow_export import StoreUnavailable
from workers.tracing.recorder import SpanRecorder
from workers.tracing.spool import CLOSED, SpoolSink, segments, store_down_file, tombstones


def tags(cid: str, turn: str) -> dict[str, str]:
    return {"conversation_id": cid, "run_id": "r", "turn_id": turn}


def test_a_turn_that_runs_past_the_erasure_leaves_no_trace() -> None:
    sink = ListSink(forgets=None)
    tracer = SpanRecorder(sink)
    with tracer.turn("turn", tags=tags("c", "t-1"), inputs={"texts": ["secret"]}):
        assert tracer.forget("c") is None  # erased mid-turn; the sink says "pending"
    with tracer.turn("turn", tags=tags("other", "t-2"), inputs=None):
        pass
    with tracer.turn("turn", tags=tags("c", "t-3"), inputs=None):  # created again: kept
        pass
    assert [r["tags"]["turn_id"] for r in sink.records] == ["t-2", "t-3"]
    [(cid, before)] = sink.forgotten
    assert cid == "c" and before <= sink.records[1]["spans"][0]["start"]


class FakeStore:
    """The tracking store: traces by conversation, down or up."""

    def __init__(self) -> None:
        self.down = True
        self.traces_of: dict[str, dict[str, int]] = {}
        """Conversation -> trace id -> its start."""
        self.feedback_on: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    def traces(self, records: list[dict[str, Any]]) -> int:
        self._check()
        for r in records:
            found = self.traces_of.setdefault(r["tags"]["conversation_id"], {})
            found[r["trace_id"]] = r["spans"][0]["start"]
        return len(records)

    def feedback(self, record: dict[str, Any]) -> bool:
        self._check()
        self.feedback_on.append(record["trace_id"])
        return True

    def forget(self, conversation_id: str, before: int) -> int:
        self._check()
        found = self.traces_of.get(conversation_id, {})
        old = [t for t, start in found.items() if start <= before]
        for trace_id in old:
            del found[trace_id]
        return len(old)


def trace(cid: str, trace_id: str, start: int, text: str = "") -> dict[str, Any]:
    root = {"id": "1", "parent": None, "start": start, "end": start + 1, "inputs": text}
    return {
        "kind": "trace",
        "trace_id": trace_id,
        "tags": {"conversation_id": cid},
        "spans": [root],
    }


def test_the_exporter_honours_erasures_whether_the_store_is_up_or_down(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = False
    spool = SpoolSink(tmp_path, max_bytes=2**20, exporter=None, rotate_seconds=60)
    exporter = Exporter(tmp_path, store, parent=os.getpid())
    spool.put(trace("gone", "tr-1", 10))
    spool.flush(timeout=0)
    exporter.drain_one(segments(tmp_path, CLOSED)[0])  # exported before the erasure
    assert store.traces_of == {"gone": {"tr-1": 10}}
    store.down = True
    spool.put(trace("gone", "tr-2", 20, "the secret"))
    spool.put(trace("kept", "tr-3", 30))
    spool.put({"kind": "feedback", "trace_id": "tr-2", "conversation_id": "gone", "time": 40})
    assert spool.forget("gone", 50, wait=0) is None  # closes the open segment for the scrub
    spool.put(trace("gone", "tr-4", 60))  # the id in use again, after the erasure
    spool.flush(timeout=0)
    exporter.scrub()  # no store needed
    on_disk = b"".join(p.read_bytes() for p in segments(tmp_path, CLOSED))
    assert b"the secret" not in on_disk and b"tr-2" not in on_disk and b"tr-4" in on_disk
    assert exporter.erased == 2
    [stone] = tombstones(tmp_path).pending()
    with pytest.raises(StoreUnavailable):
        exporter.apply_tombstones()
    assert tombstones(tmp_path).pending() == [stone]  # still to do
    store.down = False
    for path in segments(tmp_path, CLOSED):
        exporter.drain_one(path)
    exporter.apply_tombstones()
    assert store.traces_of == {"gone": {"tr-4": 60}, "kept": {"tr-3": 30}}
    assert store.feedback_on == []  # the feedback on the erased turn went with it
    assert tombstones(tmp_path).pending() == []
    assert tombstones(tmp_path).result(stone.path) == 1  # tr-1, deleted from the store


def test_an_erasure_waits_briefly_for_the_exporter_never_for_a_store_found_down(
    tmp_path: Path,
) -> None:
    spool = SpoolSink(tmp_path, max_bytes=2**20, exporter=None, rotate_seconds=60)

    def exporter() -> None:
        while not tombstones(tmp_path).pending():
            time.sleep(0.01)
        [stone] = tombstones(tmp_path).pending()
        tombstones(tmp_path).done(stone, 3)

    applying = threading.Thread(target=exporter)
    applying.start()
    assert spool.forget("c", time.time_ns(), wait=10) == 3  # how many the exporter deleted
    applying.join()
    store_down_file(tmp_path).touch()
    started = time.monotonic()
    assert spool.forget("d", time.time_ns(), wait=30) is None  # pending, at once
    assert time.monotonic() - started < 1
    spool.close()


def test_a_scrubbed_segment_keeps_its_line_numbers(tmp_path: Path) -> None:
    """An export that stopped in the middle of a segment resumes at the same record."""
    spool = SpoolSink(tmp_path, max_bytes=2**20, exporter=None, rotate_seconds=60)
    for i, cid in enumerate(["a", "gone", "b"]):
        spool.put(trace(cid, f"tr-{i}", 10 + i))
    spool.forget("gone", 100, wait=0)
    exporter = Exporter(tmp_path, FakeStore(), parent=os.getpid())
    exporter.scrub()
    [segment] = segments(tmp_path, CLOSED)
    records, bad = read_records(segment)
    assert [r.get("trace_id") for r in records] == ["tr-0", None, "tr-2"] and bad == 0
    spool.close()


def test_a_follow_closes_on_the_forgotten_frame() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    follow = Follow(queue, open_=True)
    follow.put_nowait({"type": "reply", "text": "mine"})
    follow.put_nowait(forgotten_frame("c"))
    follow.put_nowait({"type": "reply", "text": "someone else's, same id"})
    assert not follow.open
    assert [queue.get_nowait()["type"] for _ in range(queue.qsize())] == ["reply", "forgotten"]
    # The caller's own first message creates it again for them: it opens.
    follow.hold()
    follow.release(admit=True)
    follow.put_nowait({"type": "reply", "text": "mine again"})
    assert queue.get_nowait()["text"] == "mine again"


def test_a_follow_held_for_a_message_of_the_erased_conversation_stays_closed() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    follow = Follow(queue, open_=False)
    follow.hold()  # the caller's message is being accepted...
    follow.put_nowait({"type": "reply_chunk", "text": "of the erased conversation"})
    follow.put_nowait(forgotten_frame("c"))  # ...into the conversation being erased
    follow.release(admit=True)
    follow.put_nowait({"type": "reply", "text": "someone else's, same id"})
    assert not follow.open
    assert [queue.get_nowait()["type"] for _ in range(queue.qsize())] == ["forgotten"]
