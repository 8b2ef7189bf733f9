"""The scheduler contract: every ``Scheduler`` (SQLite with its timer's queries, DynamoDB
items with EventBridge Scheduler on moto, the in-memory fake) keeps, lists, records firings
of and deletes schedules alike; the AWS one arms and disarms an EventBridge schedule for
each."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import InMemoryScheduler
from tests.moto_env import mocked_table
from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.adapters.local.sqlite_schedules import SqliteScheduler
from workers.core.model import Schedule
from workers.errors import BadInput

T0 = 1_700_000_000.0
CID = "ticket:4711"
OTHER = "ws:alice:2"
TABLE = "agentworker"
GROUP = "agentworker-schedules"
INGEST = "arn:aws:lambda:us-east-1:123456789012:function:ingest"
ROLE = "arn:aws:iam::123456789012:role/agentworker-scheduler"


@dataclass
class Backend:
    scheduler: Any
    armed: Callable[[str], dict[str, Any] | None]
    """The EventBridge schedule of a schedule id (AWS); elsewhere what is due is armed."""


def due_ever(scheduler: Any) -> Callable[[str], dict[str, Any] | None]:
    """A local scheduler's schedule is armed while its timer would find it due."""

    def armed(schedule_id: str) -> dict[str, Any] | None:
        due = {sid for _, sid, _ in scheduler.due(T0 + 10**9)}
        return {} if schedule_id in due else None

    return armed


@contextmanager
def opened(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if kind == "sqlite":
        database = SqliteDatabase(tmp_path / "state.db")
        local = SqliteScheduler(database)
        yield Backend(local, due_ever(local))
        database.close()
    elif kind == "memory":
        fake = InMemoryScheduler()
        yield Backend(fake, due_ever(fake))
    else:
        import boto3

        from workers.adapters.aws.eventbridge_scheduler import AwsScheduler, schedule_name

        with mocked_table(monkeypatch, TABLE) as dynamodb:
            events = boto3.client("scheduler")
            events.create_schedule_group(Name=GROUP)

            def armed(schedule_id: str) -> dict[str, Any] | None:
                try:
                    found: dict[str, Any] = events.get_schedule(
                        Name=schedule_name(schedule_id), GroupName=GROUP
                    )
                except events.exceptions.ResourceNotFoundException:
                    return None
                return found

            scheduler = AwsScheduler(
                dynamodb=dynamodb,
                table_name=TABLE,
                scheduler=lambda: events,
                group=GROUP,
                target_arn=INGEST,
                role_arn=ROLE,
            )
            yield Backend(scheduler, armed)


@pytest.fixture(params=["sqlite", "memory", "aws"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    with opened(request.param, tmp_path, monkeypatch) as made:
        yield made


@pytest.fixture
def aws_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    with opened("aws", tmp_path, monkeypatch) as made:
        yield made


def schedule(sid: str, *, cid: str = CID, at: float = T0 + 60, cron: str | None = None) -> Schedule:
    return Schedule(
        schedule_id=sid,
        conversation_id=cid,
        text=f"text of {sid}",
        next_fire=at,
        created_at=T0,
        created_by="alice",
        creator_tenant="acme",
        creator_roles=("agent",),
        tenant="acme",
        owner="alice",
        cron=cron,
        timezone="Europe/Paris" if cron else "UTC",
        metadata={"ticket": "4711"},
    )


def test_schedules_are_kept_as_made_and_listed_next_first(backend: Backend) -> None:
    s = backend.scheduler
    late, early = schedule("sch_b", at=T0 + 600), schedule("sch_a", at=T0 + 60)
    assert s.add(late, limit=5) == late
    assert s.add(early, limit=5) == early
    s.add(schedule("sch_c", cid=OTHER), limit=5)
    assert s.for_conversation(CID) == [early, late]
    assert s.get(CID, "sch_a") == early
    assert s.get(OTHER, "sch_a") is None  # another conversation's id is no schedule of this
    assert backend.armed("sch_a") is not None


def test_adding_again_returns_what_is_kept_and_the_limit_holds(backend: Backend) -> None:
    s = backend.scheduler
    first = schedule("sch_a")
    s.add(first, limit=2)
    assert s.add(replace(first, text="planned again"), limit=2) == first
    s.add(schedule("sch_b"), limit=2)
    with pytest.raises(BadInput) as refused:
        s.add(schedule("sch_c"), limit=2)
    assert refused.value.code == "too_many_schedules"
    assert s.add(schedule("sch_c", cid=OTHER), limit=2).conversation_id == OTHER
    assert backend.armed("sch_c") is not None and backend.armed("sch_b") is not None


def test_a_one_off_that_fired_is_gone_and_a_recurring_one_goes_on(backend: Backend) -> None:
    s = backend.scheduler
    once, daily = schedule("sch_once"), schedule("sch_daily", cron="0 9 * * *")
    s.add(once, limit=5)
    s.add(daily, limit=5)
    s.fired(once, next_fire=None, outcome="accepted", now=T0 + 61)
    done = s.get(CID, "sch_once")  # kept a while, done: made again, it is found, not made
    assert done is not None and done.next_fire is None and done.fired == 1
    assert s.add(once, limit=5) == done
    assert [x.schedule_id for x in s.for_conversation(CID)] == ["sch_daily"]
    assert s.remove(CID, "sch_once") is False
    s.fired(daily, next_fire=T0 + 86_400, outcome="duplicate", now=T0 + 61)
    kept = s.get(CID, "sch_daily")
    assert kept is not None and kept.next_fire == T0 + 86_400
    assert (kept.fired, kept.last_fired_at, kept.last_outcome) == (1, T0 + 61, "duplicate")


def test_a_throttled_one_off_is_kept_for_later(backend: Backend) -> None:
    s = backend.scheduler
    once = schedule("sch_once")
    s.add(once, limit=5)
    s.fired(once, next_fire=T0 + 120, outcome="throttled: quota", now=T0 + 61)
    kept = s.get(CID, "sch_once")
    assert kept is not None and kept.next_fire == T0 + 120
    assert backend.armed("sch_once") is not None


def test_removed_and_forgotten_schedules_are_disarmed(backend: Backend) -> None:
    s = backend.scheduler
    for sid in ("sch_a", "sch_b"):
        s.add(schedule(sid), limit=5)
    s.add(schedule("sch_c", cid=OTHER), limit=5)
    assert s.remove(CID, "sch_a") is True
    assert s.remove(CID, "sch_a") is False
    assert s.remove(CID, "sch_c") is False  # another conversation's
    assert backend.armed("sch_a") is None
    assert s.forget(CID) == 1
    assert s.for_conversation(CID) == [] and backend.armed("sch_b") is None
    assert [x.schedule_id for x in s.for_conversation(OTHER)] == ["sch_c"]


def test_the_aws_schedules_invoke_ingest_with_the_firing(aws_backend: Backend) -> None:
    backend = aws_backend
    backend.scheduler.add(schedule("sch_once", at=T0 + 60), limit=5)
    backend.scheduler.add(schedule("sch_cron", cron="*/15 9-17 * * 1-5"), limit=5)
    once, cron = backend.armed("sch_once"), backend.armed("sch_cron")
    assert once is not None and cron is not None
    assert once["ScheduleExpression"] == "at(2023-11-14T22:14:20)"
    assert once["ScheduleExpressionTimezone"] == "UTC"
    assert once["ActionAfterCompletion"] == "DELETE"
    assert cron["ScheduleExpression"] == "cron(0/15 9-17 ? * MON,TUE,WED,THU,FRI *)"
    assert cron["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert once["Target"]["Arn"] == INGEST and once["Target"]["RoleArn"] == ROLE
    assert json.loads(once["Target"]["Input"]) == {
        "agentworker_schedule": {"conversation_id": CID, "schedule_id": "sch_once"},
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }
