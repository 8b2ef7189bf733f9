"""Schedules at the boundary: what a caller asks for (``POST .../schedules``, the CLI) and
what it is shown. A schedule is a message posted into a conversation later: once at a time
(``at``, or ``in_seconds`` from now), or on a cron expression in a time zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from events.inbound import ConversationId, MessageText, Metadata, require_text

MAX_SCHEDULE_SECONDS = 366 * 86_400
"""Furthest ahead a one-off schedule may be (a year and a day)."""

_CRON_FIELD = r"[0-9A-Za-z*,/\-]+"
_CRON = re.compile(rf"^{_CRON_FIELD}( {_CRON_FIELD}){{4}}$")


def check_timezone(name: str) -> str:
    """An IANA time zone name (``Europe/Paris``, ``UTC``), as both runtimes know it."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "bad_timezone", "not an IANA time zone name (e.g. 'Europe/Paris', 'UTC')"
        ) from None
    return name


def check_cron(expression: str) -> str:
    """Five fields (minute hour day-of-month month day-of-week) of numbers, ``*``, lists,
    ranges, steps and names (``MON``, ``JAN``); a day of the month and a day of the week
    together are refused (EventBridge Scheduler takes one or the other, so both runtimes
    do)."""
    from croniter import croniter

    expression = " ".join(expression.split())
    if not _CRON.match(expression) or not croniter.is_valid(expression):
        raise PydanticCustomError(
            "bad_cron",
            "a cron expression has five fields: minute hour day-of-month month day-of-week"
            " (e.g. '0 9 * * MON-FRI')",
        )
    fields = expression.split(" ")
    if fields[2] != "*" and fields[4] != "*":
        raise PydanticCustomError(
            "bad_cron",
            "give a day of the month or a day of the week, not both (one of them must be '*')",
        )
    return expression


SCHEDULE_METADATA_KEYS = 32
SCHEDULE_METADATA_BYTES = 8 * 1024


def check_schedule_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """At most 32 keys and 8 KB: a firing's message adds ``schedule_id`` and
    ``scheduled_for`` and must still be a message (64 keys, 16 KB)."""
    size = sum(
        len(k.encode()) + len(v.encode("utf-8", "surrogatepass")) for k, v in metadata.items()
    )
    if len(metadata) > SCHEDULE_METADATA_KEYS or size > SCHEDULE_METADATA_BYTES:
        raise PydanticCustomError(
            "too_large",
            "a schedule's metadata is at most {keys} keys and {size} bytes",
            {"keys": SCHEDULE_METADATA_KEYS, "size": SCHEDULE_METADATA_BYTES},
        )
    return metadata


CronExpression = Annotated[str, Field(max_length=120), AfterValidator(check_cron)]
TimeZoneName = Annotated[str, Field(max_length=64), AfterValidator(check_timezone)]


class ScheduleRequest(BaseModel):
    """``POST /v1/conversations/{id}/schedules``: exactly one of ``at`` (an ISO 8601 time; one
    without an offset is read in ``timezone``), ``in_seconds`` or ``cron``."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[MessageText, AfterValidator(require_text)]
    at: datetime | None = None
    in_seconds: float | None = Field(default=None, gt=0, le=MAX_SCHEDULE_SECONDS)
    cron: CronExpression | None = None
    timezone: TimeZoneName = "UTC"
    metadata: Annotated[Metadata, AfterValidator(check_schedule_metadata)] = Field(
        default_factory=dict
    )
    dedupe_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="The caller's key: the same key from the same caller in the same"
        " conversation makes no second schedule (a retried request after a lost answer).",
    )

    @model_validator(mode="after")
    def _one_time(self) -> ScheduleRequest:
        given = [n for n in ("at", "in_seconds", "cron") if getattr(self, n) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "when",
                "give exactly one of 'at', 'in_seconds' or 'cron' (given: {given})",
                {"given": ", ".join(given) or "none"},
            )
        return self

    def first_time(self, now: float) -> float | None:
        """When a one-off schedule fires (epoch seconds); ``None`` for a cron schedule."""
        if self.in_seconds is not None:
            return now + self.in_seconds
        if self.at is None:
            return None
        at = self.at
        if at.tzinfo is None:
            at = at.replace(tzinfo=ZoneInfo(self.timezone))
        return at.timestamp()


class ScheduleTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    conversation_id: ConversationId
    schedule_id: str = Field(min_length=1, max_length=64)


class ScheduleFiring(BaseModel):
    """What EventBridge Scheduler hands ``ingest`` when a schedule fires (AWS)."""

    model_config = ConfigDict(extra="forbid")

    agentworker_schedule: ScheduleTarget
    scheduled_time: str = Field(max_length=64)


class ScheduleView(BaseModel):
    """A schedule as the API and the CLI show it."""

    type: Literal["schedule"] = "schedule"
    schedule_id: str
    conversation_id: str
    text: str
    kind: Literal["once", "cron"]
    cron: str | None
    timezone: str
    next_fire_at: datetime | None
    created_at: datetime
    created_by: str
    source: Literal["api", "agent"]
    fired: int
    last_fired_at: datetime | None
    last_outcome: str | None
    metadata: dict[str, str]


class ScheduleListView(BaseModel):
    conversation_id: str
    schedules: list[ScheduleView]


def as_datetime(seconds: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (``None`` stays ``None``)."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


RELATIVE = re.compile(
    r"^\s*(?:in\s+)?\+?(\d+(?:\.\d+)?)\s*"
    r"(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|d|days?|w|weeks?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_ISO_DURATION = re.compile(
    r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$", re.IGNORECASE
)


def parse_when(when: str, *, now: float, timezone: str = "UTC") -> float:
    """A follow-up's time: an ISO 8601 time (``2026-12-07T09:00``, read in ``timezone``
    without an offset), an ISO 8601 duration (``PT2H``, ``P1D``) or a relative one
    (``2h``, ``in 30 minutes``, ``1 day``), as epoch seconds. ``ValueError`` saying what is
    accepted for anything else."""
    text = when.strip()
    relative = RELATIVE.match(text)
    if relative:
        return now + float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)[0].lower()]
    duration = _ISO_DURATION.match(text)
    if duration and any(duration.groups()):
        days, hours, minutes, seconds = (float(g or 0) for g in duration.groups())
        return (
            now
            + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
        )
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"when: {when[:80]!r} is not a time: give an ISO 8601 time"
            " ('2026-12-07T09:00:00+01:00'), a duration ('PT2H') or a relative one ('2h',"
            " 'in 30 minutes', '1 day')"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=ZoneInfo(check_timezone(timezone)))
    return at.timestamp()
