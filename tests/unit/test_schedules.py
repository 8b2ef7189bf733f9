"""Schedules in the core (in-memory store and scheduler, a manual clock): who may make, see
and delete them, what bad requests get, and that each occurrence posts once whatever
repeats (a crash between the firing and its record, a repeated invocation)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from events.identity import LOCAL_USER, Principal
from events.inbound import InboundMessage
from events.schedules import ScheduleRequest, parse_when
from tests.fakes import (
    InMemoryConversationStore,
    InMemoryScheduler,
    ManualClock,
    RecordingSink,
    RecordingStarter,
    ScriptedAgent,
)
from workers.core.schedules import (
    FollowUps,
    create_schedule,
    delete_schedule,
    fire_schedule,
    list_schedules,
    next_cron,
)
from workers.core.steps import Deps, TurnSettings, accept_message, drive_run, forget_conversation
from workers.errors import BadInput, NotFound, RetryableError

CID = "ws:alice:chat1"
ALICE = Principal(id="alice", tenant="acme")
BOB = Principal(id="bob", tenant="acme")
# 2023-11-14T22:13:20Z, a Tuesday
START = 1_700_000_000.0


class World:
    def __init__(self, **settings: Any) -> None:
        self.store = InMemoryConversationStore()
        self.scheduler = InMemoryScheduler()
        self.starter = RecordingStarter()
        self.clock = ManualClock(START)
        self.deps = Deps(
            store=self.store,
            agent=ScriptedAgent(),
            sink=RecordingSink(),
            starter=self.starter,
            clock=self.clock,
            settings=TurnSettings(**settings),
            scheduler=self.scheduler,
        )
        self.send("hello")

    def send(self, text: str, principal: Principal = ALICE) -> Any:
        msg = InboundMessage(conversation_id=CID, text=text)
        result = accept_message(self.deps, msg, principal)
        while self.starter.runs:
            drive_run(self.deps, self.starter.runs.pop(0))
        return result

    def schedule(self, principal: Principal = ALICE, **request: Any) -> Any:
        body = ScheduleRequest.model_validate({"text": "check on ticket 4", **request})
        return create_schedule(self.deps, CID, principal, body)

    def fire_due(self) -> list[str]:
        outcomes = []
        for cid, sid, at in self.scheduler.due(self.clock.now()):
            outcomes.append(fire_schedule(self.deps, cid, sid, at))
        while self.starter.runs:
            drive_run(self.deps, self.starter.runs.pop(0))
        return outcomes

    def texts(self) -> list[str]:
        history = self.store.history(CID)
        assert history is not None
        return [e.message.text for e in history.inbox]


def test_a_one_off_fires_once_as_its_makers_message_then_is_gone() -> None:
    w = World()
    made = w.schedule(in_seconds=60)
    assert made.next_fire == START + 60 and made.created_by == "alice"
    assert [s.schedule_id for s in list_schedules(w.deps, CID, ALICE)] == [made.schedule_id]
    assert w.fire_due() == []  # not yet
    w.clock.t += 61
    assert w.fire_due() == ["accepted"]
    entry = w.store.history(CID).inbox[-1].message  # type: ignore[union-attr]
    assert entry.text == "check on ticket 4" and entry.sender == "alice"
    assert entry.metadata["schedule_id"] == made.schedule_id
    assert entry.metadata["scheduled_for"] == datetime.fromtimestamp(START + 60, UTC).isoformat()
    assert list_schedules(w.deps, CID, ALICE) == []
    w.clock.t += 3600
    assert w.fire_due() == []
    assert w.texts() == ["hello", "check on ticket 4"]


def test_a_firing_repeated_after_a_crash_before_its_record_posts_once() -> None:
    w = World()
    made = w.schedule(in_seconds=5)
    w.clock.t += 10
    w.scheduler.fail_fired = 1
    with pytest.raises(RetryableError):
        w.fire_due()
    assert w.fire_due() == ["duplicate"]  # the timer's next look: the inbox had it
    # and EventBridge Scheduler invoking twice for one occurrence
    assert fire_schedule(w.deps, CID, made.schedule_id, START + 5) == "gone"
    assert w.texts() == ["hello", "check on ticket 4"]


def test_a_cron_schedule_fires_each_occurrence_once_and_coalesces_missed_ones() -> None:
    w = World()
    made = w.schedule(cron="0 9 * * MON-FRI", timezone="Europe/Paris")
    wednesday_9_paris = datetime(2023, 11, 15, 8, 0, tzinfo=UTC).timestamp()
    assert made.next_fire == wednesday_9_paris
    w.clock.t = wednesday_9_paris + 1
    assert w.fire_due() == ["accepted"]
    kept = list_schedules(w.deps, CID, ALICE)[0]
    assert kept.next_fire == datetime(2023, 11, 16, 8, 0, tzinfo=UTC).timestamp()
    assert kept.fired == 1 and kept.last_outcome == "accepted"
    # down from Thursday to the next Tuesday: one firing for the missed ones, then on
    w.clock.t = datetime(2023, 11, 21, 12, 0, tzinfo=UTC).timestamp()
    assert w.fire_due() == ["accepted"]
    assert w.fire_due() == []
    kept = list_schedules(w.deps, CID, ALICE)[0]
    assert kept.next_fire == datetime(2023, 11, 22, 8, 0, tzinfo=UTC).timestamp()
    assert w.texts().count("check on ticket 4") == 2


def test_cron_follows_the_zones_daylight_saving_time() -> None:
    # New York went back to standard time on 2023-11-05: 9:00 there is 14:00 UTC after it
    before = datetime(2023, 11, 3, 12, 0, tzinfo=UTC).timestamp()
    friday = next_cron("0 9 * * *", "America/New_York", before)
    assert datetime.fromtimestamp(friday, UTC).hour == 13
    monday = next_cron("0 9 * * *", "America/New_York", friday + 3 * 86_400)
    assert datetime.fromtimestamp(monday, UTC).hour == 14


def test_schedules_are_the_conversations_and_nobody_elses() -> None:
    w = World()
    made = w.schedule(in_seconds=60)
    for call in (
        lambda: w.schedule(BOB, in_seconds=60),
        lambda: list_schedules(w.deps, CID, BOB),
        lambda: delete_schedule(w.deps, CID, made.schedule_id, BOB),
        lambda: list_schedules(w.deps, "ws:nobody", ALICE),
    ):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotFound):  # an id of another conversation is no schedule of this one
        delete_schedule(w.deps, CID, "sch_unknown", ALICE)
    delete_schedule(w.deps, CID, made.schedule_id, ALICE)
    assert list_schedules(w.deps, CID, ALICE) == []


def test_erasing_the_conversation_erases_its_schedules() -> None:
    w = World()
    w.schedule(in_seconds=60)
    w.schedule(cron="*/5 * * * *")
    erasure = forget_conversation(w.deps, CID, ALICE)
    assert erasure.removed["schedules"] == 2
    assert w.scheduler.kept == {}


def test_a_schedule_never_fires_into_a_conversation_made_again_by_someone_else() -> None:
    w = World()
    made = w.schedule(in_seconds=60)
    kept = w.scheduler.kept[made.schedule_id]
    forget_conversation(w.deps, CID, ALICE)
    w.scheduler.kept[made.schedule_id] = kept  # as if its disarm had failed
    bob = InboundMessage(conversation_id=CID, text="mine now")
    accept_message(w.deps, bob, BOB)
    w.clock.t += 61
    assert w.fire_due() == ["gone"]
    history = w.store.history(CID)
    assert history is not None and [e.message.text for e in history.inbox] == ["mine now"]
    assert w.scheduler.kept == {}


def test_a_schedule_spends_its_makers_quota_and_fires_when_the_quota_allows() -> None:
    w = World(quota_messages_per_minute=2)  # "hello" spent one, at 20 s into a minute
    w.schedule(in_seconds=30)  # two: the last of this minute
    w.clock.t += 31
    [throttled] = w.fire_due()
    assert throttled.startswith("throttled: quota: alice may send 2 messages per minute")
    kept = list_schedules(w.deps, CID, ALICE)[0]
    assert kept.next_fire == START + 40 and kept.last_outcome == throttled
    w.clock.t = START + 40
    assert w.fire_due() == ["accepted"]
    assert w.texts() == ["hello", "check on ticket 4"]
    assert list_schedules(w.deps, CID, ALICE) == []


def test_bad_requests_say_what_is_wrong() -> None:
    w = World(schedules_per_conversation=2)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "when"),
        ({"at": "2030-01-01T00:00:00Z", "cron": "* * * * *"}, "when"),
        ({"cron": "61 * * * *"}, "bad_cron"),
        ({"cron": "0 9 * *"}, "bad_cron"),
        ({"cron": "0 9 1 * MON"}, "bad_cron"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "bad_timezone"),
        ({"in_seconds": -1}, "greater_than"),
        ({"in_seconds": 60, "text": "  "}, "missing"),
        ({"in_seconds": 60, "extra": 1}, "extra_forbidden"),
    ]
    for body, code in cases:
        with pytest.raises(ValidationError) as info:
            ScheduleRequest.model_validate({"text": "x", **body})
        assert info.value.errors()[0]["type"] == code, body
    with pytest.raises(BadInput) as past:
        w.schedule(at="2020-01-01T00:00:00Z")
    assert past.value.code == "in_the_past"
    with pytest.raises(BadInput) as far:
        w.schedule(at="2030-01-01T00:00:00Z")
    assert far.value.code == "too_far"
    w.schedule(in_seconds=60)
    w.schedule(in_seconds=120)
    with pytest.raises(BadInput) as many:
        w.schedule(in_seconds=180)
    assert many.value.code == "too_many_schedules"


def test_an_agents_follow_up_is_planned_once_per_tool_call_and_fires_as_the_agent() -> None:
    w = World()
    followups = FollowUps(w.scheduler, w.store, w.clock)
    first = followups.plan(CID, key="aw1-" + "a" * 40, when=START + 90, text="did it work?")
    again = followups.plan(CID, key="aw1-" + "a" * 40, when=START + 95, text="did it work?")
    assert again == first and len(w.scheduler.kept) == 1  # a retried turn plans nothing new
    assert first.source == "agent" and first.created_by == "agent"
    w.clock.t += 100
    assert w.fire_due() == ["accepted"]
    history = w.store.history(CID)
    assert history is not None and history.inbox[-1].message.sender == "agent"


def test_when_reads_times_durations_and_relative_times() -> None:
    now = START
    assert parse_when("2h", now=now) == now + 7200
    assert parse_when("in 30 minutes", now=now) == now + 1800
    assert parse_when("1 day", now=now) == now + 86_400
    assert parse_when("PT1H30M", now=now) == now + 5400
    assert (
        parse_when("2023-11-15T09:00:00+01:00", now=now)
        == datetime(2023, 11, 15, 8, tzinfo=UTC).timestamp()
    )
    assert (
        parse_when("2023-11-15T09:00", now=now, timezone="UTC")
        == datetime(2023, 11, 15, 9, tzinfo=UTC).timestamp()
    )
    for bad in ("tomorrow-ish", "", "P", "in two hours"):
        with pytest.raises(ValueError, match="not a time"):
            parse_when(bad, now=now)


def test_local_user_can_schedule_into_its_own_conversation() -> None:
    w = World()
    accept_message(w.deps, InboundMessage(conversation_id="ws:local:1", text="hi"), LOCAL_USER)
    body = ScheduleRequest(text="later", in_seconds=10)
    assert create_schedule(w.deps, "ws:local:1", LOCAL_USER, body).created_by == "local"


def test_a_request_sent_again_with_its_dedupe_key_makes_one_schedule() -> None:
    w = World()
    first = w.schedule(in_seconds=60, dedupe_key="reminder-1")
    again = w.schedule(in_seconds=90, dedupe_key="reminder-1")
    other = w.schedule(in_seconds=60, dedupe_key="reminder-2")
    assert again == first and other.schedule_id != first.schedule_id
    assert len(list_schedules(w.deps, CID, ALICE)) == 2


def test_a_schedules_metadata_leaves_room_for_the_firings_own_keys() -> None:
    w = World()
    many = {f"k{i}": "v" for i in range(33)}
    with pytest.raises(ValidationError) as refused:
        w.schedule(in_seconds=60, metadata=many)
    assert refused.value.errors()[0]["type"] == "too_large"
    made = w.schedule(in_seconds=60, metadata={f"k{i}": "v" for i in range(32)})
    w.clock.t += 61
    assert w.fire_due() == ["accepted"]
    entry = w.store.history(CID).inbox[-1].message  # type: ignore[union-attr]
    assert len(entry.metadata) == 34 and entry.metadata["schedule_id"] == made.schedule_id
