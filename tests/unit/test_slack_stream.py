"""A turn's reply streamed into its Slack thread (``workers/adapters/slack_stream.py``),
against a recording Web API and a hand-moved clock: the calls made, their pace, and the
final text, which is always the committed reply."""

from __future__ import annotations

from typing import Any

import pytest

from events.outbound import Notice, Reply, ReplyChunk
from workers.adapters.slack_stream import FLUSH_SECONDS, PART_CHARS, SlackStreams
from workers.errors import PermanentError, SlackRateLimited

DM = "slack:T1:D1:100.1"
CHANNEL = "slack:T1:C1:100.1"


class Web:
    """Slack as far as the streams see it: what each message shows, every call made."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.shown: dict[str, str] = {}
        self.faults: dict[str, list[Exception]] = {}
        self.n = 0

    def __call__(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append((method, body))
        if self.faults.get(method):
            raise self.faults[method].pop(0)
        if method in ("chat.startStream", "chat.postMessage"):
            self.n += 1
            ts = f"200.{self.n}"
            self.shown[ts] = body.get("markdown_text", body.get("text", ""))
            return {"ok": True, "ts": ts}
        if method in ("chat.appendStream", "chat.stopStream"):
            self.shown[body["ts"]] += body.get("markdown_text", "")
        elif method == "chat.update":
            self.shown[body["ts"]] = body["text"]
        elif method == "chat.delete":
            del self.shown[body["ts"]]
        return {"ok": True}

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def text(self) -> str:
        return "".join(self.shown.values())


@pytest.fixture
def web() -> Web:
    return Web()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def piece(text: str, cid: str = DM, turn: str = "t1") -> ReplyChunk:
    return ReplyChunk(conversation_id=cid, turn_id=turn, index=0, delta=text, message_id="m")


def reply(text: str, cid: str = DM, turn: str = "t1") -> Reply:
    return Reply(conversation_id=cid, turn_id=turn, text=text, reply_id=f"r-{turn}")


def test_a_direct_message_streams_at_a_bounded_pace_and_ends_as_the_reply(web: Web) -> None:
    clock = Clock()
    streams = SlackStreams(web, clock=clock)
    streams.piece(piece("Hel"))  # the first piece goes at once
    streams.piece(piece("lo "))
    clock.now += FLUSH_SECONDS
    streams.piece(piece("there"))
    streams.piece(piece(", "))  # within the second: held
    assert web.methods() == ["chat.startStream", "chat.appendStream"]
    assert streams.finish(reply("Hello there, friend."))
    assert web.methods()[-1] == "chat.stopStream"
    assert web.calls[-1][1]["markdown_text"] == ", friend."  # what was held, then the rest
    assert web.calls[-1][1]["metadata"]["event_payload"]["reply_id"] == "r-t1"  # which reply
    assert web.text() == "Hello there, friend."
    assert streams.finish(reply("Hello there, friend."))  # a retried delivery: nothing again
    assert len(web.calls) == 3


def test_a_throttled_append_is_sent_later_with_nothing_lost(web: Web) -> None:
    clock = Clock()
    streams = SlackStreams(web, clock=clock)
    streams.piece(piece("one "))
    web.faults["chat.appendStream"] = [SlackRateLimited("429", retry_after=3)]
    clock.now += FLUSH_SECONDS
    streams.piece(piece("two "))  # 429: held for Retry-After
    clock.now += FLUSH_SECONDS
    streams.piece(piece("three "))  # still within Retry-After: no call
    assert web.methods() == ["chat.startStream", "chat.appendStream"]
    clock.now += 3
    streams.piece(piece("four"))
    sent = {"channel": "D1", "ts": "200.1", "markdown_text": "two three four"}
    assert web.calls[-1] == ("chat.appendStream", sent)
    streams.finish(reply("one two three four"))
    assert web.text() == "one two three four"


def test_a_stream_slack_ended_or_too_long_goes_on_in_a_new_message(web: Web) -> None:
    clock = Clock()
    streams = SlackStreams(web, clock=clock)
    streams.piece(piece("a" * 10))
    ended = PermanentError("Slack chat.appendStream refused (message_not_in_streaming_state)")
    web.faults["chat.appendStream"] = [ended]
    clock.now += FLUSH_SECONDS
    streams.piece(piece("b" * 10))
    ended_then = ["chat.startStream", "chat.appendStream", "chat.stopStream", "chat.startStream"]
    assert web.methods() == ended_then  # stopped (Slack may say it already was), continued
    clock.now += FLUSH_SECONDS
    streams.piece(piece("c" * PART_CHARS))  # past a message's size: closed, continued
    assert web.methods()[-2:] == ["chat.stopStream", "chat.startStream"]
    text = "a" * 10 + "b" * 10 + "c" * PART_CHARS + "d"
    streams.finish(reply(text))
    assert web.text() == text and len(web.shown) == 3


def test_a_reply_that_differs_from_what_streamed_replaces_it(web: Web) -> None:
    """The output guard masked the reply, or a node rewrote it: the reply is what stays."""
    clock = Clock()
    streams = SlackStreams(web, clock=clock, sleep=clock.sleep)
    streams.piece(piece("call me at 555-0100"))
    streams.finish(reply("call me at [phone]"))
    assert web.methods() == ["chat.startStream", "chat.stopStream", "chat.update"]
    assert web.text() == "call me at [phone]"


def test_where_streaming_is_refused_it_posts_and_updates_and_a_channel_waits(web: Web) -> None:
    clock = Clock()
    streams = SlackStreams(web, clock=clock, sleep=clock.sleep)
    web.faults["chat.startStream"] = [PermanentError("Slack refused (not_allowed_token_type)")]
    streams.piece(piece("Hel"))
    clock.now += 0.5
    streams.piece(piece("lo"))  # within the second: held (chat.update: one a second)
    clock.now += 0.5
    streams.piece(piece(" you"))
    assert web.methods() == ["chat.startStream", "chat.postMessage", "chat.update"]
    streams.finish(reply("Hello you & me"))
    assert web.text() == "Hello you &amp; me"  # a text field: Slack's escapes
    assert clock.slept == [1.0]  # the last update waited for Slack's one a second
    calls = len(web.calls)
    in_channel = SlackStreams(web, clock=clock)
    in_channel.piece(piece("Hi", cid=CHANNEL, turn="t2"))  # a channel's stream needs recipients
    assert len(web.calls) == calls and in_channel.finish(reply("Hi", CHANNEL, "t2")) is False


def test_a_question_keeps_what_streamed_and_a_cut_off_turn_leaves_nothing(web: Web) -> None:
    """A turn that stops to ask keeps its text before the question; a turn that failed or
    was cancelled (its notice), or that runs again after a retry (a new turn's first
    piece), kept nothing: what it showed is removed."""
    from events.outbound import ApprovalRequest

    streams = SlackStreams(web, clock=Clock())
    streams.piece(piece("Let me close it."))
    asks = ApprovalRequest(
        conversation_id=DM, turn_id="t1", interrupt_id="i", tool="t", args={}, text="May I?"
    )
    assert streams.finish(asks) is False  # the question is posted as it is
    assert web.methods() == ["chat.startStream", "chat.stopStream"]
    assert web.text() == "Let me close it."

    streams.piece(piece("Opened tick", turn="t2"))
    cancelled = Notice(conversation_id=DM, level="error", text="cancelled")
    assert streams.finish(cancelled) is False
    assert web.methods()[-2:] == ["chat.stopStream", "chat.delete"]
    assert web.text() == "Let me close it."

    streams.piece(piece("Opened tick", turn="t3"))  # the turn failed for now ...
    streams.piece(piece("Opened ticket 1.", turn="t4"))  # ... and its retry streams anew
    assert streams.finish(reply("Opened ticket 1.", turn="t4"))
    assert web.text() == "Let me close it.Opened ticket 1."  # the cut-off one removed
    assert streams.finish(reply("anything", turn="t9")) is False  # no stream for that turn


def test_a_stream_waits_only_for_its_own_slack_calls(web: Web) -> None:
    """One thread's slow Slack call does not hold up another turn's stream."""
    import threading

    entered, gate = threading.Event(), threading.Event()

    def slow(method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("channel") == "D1":
            entered.set()
            gate.wait(5)
        return web(method, body)

    streams = SlackStreams(slow, clock=Clock())
    first = threading.Thread(target=streams.piece, args=(piece("slow"),))
    first.start()
    assert entered.wait(5)
    streams.piece(piece("quick", cid="slack:T1:D2:100.1", turn="t2"))  # not behind D1's call
    assert [b["channel"] for _, b in web.calls] == ["D2"]
    gate.set()
    first.join(5)
    assert sorted(b["channel"] for _, b in web.calls) == ["D1", "D2"]


def test_a_channel_streams_to_the_member_who_asked_and_its_end_names_the_reply(
    web: Web,
) -> None:
    """In a channel the turn's first status says who asked: the stream is addressed to them
    (Slack needs the recipient there); the message that ends a reply carries its metadata
    (a reaction on it is read back as a rating of that reply)."""
    from events.outbound import StatusChunk
    from workers.adapters.slack import SlackReplySink
    from workers.adapters.slack_stream import reply_metadata

    class FakeWeb:
        def call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
            return web(method, body)

        try_call = call

    sink = SlackReplySink(FakeWeb())  # type: ignore[arg-type]
    sink.streams = SlackStreams(web, clock=Clock())
    other = StatusChunk(
        conversation_id=CHANNEL,
        turn_id="t3",
        index=0,
        state="thinking",
        requested_by=["slack:T2:U1", "alice", "slack:T1:U7"],  # the first of this workspace
        text="thinking",
    )
    sink.send_chunk(other)
    sink.send_chunk(piece("Hi", cid=CHANNEL, turn="t3"))
    sink.send(reply("Hi there", CHANNEL, "t3"))
    status = ("assistant.threads.setStatus", {"channel_id": "C1", "thread_ts": "100.1"})
    assert web.calls[0] == (status[0], {**status[1], "status": "is thinking..."})
    assert web.calls[1] == (
        "chat.startStream",
        {
            "channel": "C1",
            "thread_ts": "100.1",
            "recipient_team_id": "T1",
            "recipient_user_id": "U7",
            "markdown_text": "Hi",
        },
    )
    stop = {"channel": "C1", "ts": "200.1", "markdown_text": " there"}
    assert web.calls[2] == (
        "chat.stopStream",
        {**stop, "metadata": reply_metadata(CHANNEL, "r-t3")},
    )
    assert web.text() == "Hi there"

    unaddressed = len(web.calls)  # a turn whose status named nobody here: posted whole
    sink.send_chunk(piece("Yo", cid=CHANNEL, turn="t4"))
    assert len(web.calls) == unaddressed
    sink.send(reply("Yo", CHANNEL, "t4"))
    method, body = web.calls[-1]
    assert method == "chat.postMessage" and body["metadata"] == reply_metadata(CHANNEL, "r-t4")


def test_last_words_slack_will_not_take_into_the_message_go_on_in_a_new_one(web: Web) -> None:
    """The stream stops with the reply's last words, and Slack refuses them there (too long,
    or it ended the stream): the message ends where it is, the words follow in a new one,
    which carries the reply's metadata."""
    for refusal in ("msg_too_long", "message_not_in_streaming_state"):
        web = Web()
        streams = SlackStreams(web, clock=Clock())
        streams.piece(piece("Hello "))
        web.faults["chat.stopStream"] = [PermanentError(f"Slack refused ({refusal})")]
        assert streams.finish(reply("Hello there."))
        assert web.text() == "Hello there." and len(web.shown) == 2
        *_, (method, last) = web.calls
        assert method == "chat.stopStream" and last["metadata"]["event_payload"]["reply_id"]


def test_a_start_slack_finds_too_long_is_sent_in_halves_between_words(web: Web) -> None:
    """Text held back (a 429's wait) can outgrow what Slack takes in one message: the
    start is halved, at a space, until Slack takes it; the rest follows."""
    streams = SlackStreams(web, clock=Clock())
    too_long = PermanentError("Slack chat.startStream refused (msg_too_long)")
    web.faults["chat.startStream"] = [too_long, too_long]
    streams.piece(piece("one two three four five six seven eight "))
    starts = [b["markdown_text"] for m, b in web.calls if m == "chat.startStream"]
    assert starts == [
        "one two three four five six seven eight ",
        "one two three four ",
        "one two ",
    ]
    assert streams.finish(reply("one two three four five six seven eight nine."))
    assert web.text() == "one two three four five six seven eight nine."
