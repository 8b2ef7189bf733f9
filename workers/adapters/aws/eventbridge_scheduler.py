"""``AwsScheduler``: schedules on AWS. Each is an item of the conversation store's table
(``pk=schedules#<conversation>``, ``sk=<schedule id>``: what the API lists, what a firing
reads) and an EventBridge Scheduler schedule ``aw-<schedule id>`` in the stack's group,
which invokes the ``ingest`` function at its times with
``{"agentworker_schedule": {...}, "scheduled_time": <aws.scheduler.scheduled-time>}``.

The item is the truth: a firing whose item is gone or done does nothing (a schedule deleted,
or erased with its conversation, while EventBridge still held it). A one-off that ran stays a
while as a done item (DynamoDB's TTL removes it after
:data:`~workers.core.model.DONE_KEPT_SECONDS`): the request that made it, sent again, finds
it. A one-off is ``at(...)`` in
UTC and deletes itself after it ran (``ActionAfterCompletion``); a recurring one is the same
cron in the same time zone (:func:`eventbridge_expression`). EventBridge Scheduler retries an
invocation that failed (up to a day) and may invoke twice: the inbox's dedupe key of the
schedule and the occurrence posts it once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from workers.adapters.aws.calls import AwsCalls, ConditionFailed
from workers.adapters.aws.dynamodb_table import DynamoDBTable, get_str, key, number, string
from workers.adapters.aws.errors import error_code
from workers.adapters.aws.tables import TTL_ATTRIBUTE
from workers.core.model import DONE_KEPT_SECONDS, Schedule
from workers.errors import BadInput, PermanentError

SCHEDULES = "schedules#"
FIRING_KEY = "agentworker_schedule"
"""The key of the event EventBridge Scheduler hands ``ingest``."""
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
"""Replaced by EventBridge Scheduler with the occurrence's time (ISO 8601, UTC)."""
RETRY_POLICY = {"MaximumEventAgeInSeconds": 86_400, "MaximumRetryAttempts": 185}


def schedule_name(schedule_id: str) -> str:
    """The EventBridge Scheduler name of a schedule (64 characters at most)."""
    return f"aw-{schedule_id}"[:64]


def eventbridge_expression(schedule: Schedule) -> str:
    """``at(...)`` (UTC) for a one-off, else the cron in EventBridge Scheduler's six fields:
    ``?`` for the day not given, days of the week by name (EventBridge counts them from 1),
    ``*/n`` as ``start/n``."""
    if schedule.cron is None:
        assert schedule.next_fire is not None
        at = datetime.fromtimestamp(schedule.next_fire, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"at({at})"
    from croniter import croniter

    minute, hour, dom, month, dow = schedule.cron.split(" ")
    starts = (0, 0, 1, 1)
    minute, hour, dom, month = (
        f"{start}/{field[2:]}" if field.startswith("*/") else field
        for field, start in zip((minute, hour, dom, month), starts, strict=True)
    )
    if dow == "*":
        dow = "?"
    else:
        days = croniter.expand(schedule.cron)[0][4]
        dow = ",".join(_DAYS[int(d) % 7] for d in sorted({int(d) % 7 for d in days}))
        dom = "?"
    return f"cron({minute} {hour} {dom} {month} {dow} *)"


_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


class AwsScheduler:
    """``Scheduler`` on the table ``table_name`` and the EventBridge Scheduler group
    ``group``, whose schedules invoke ``target_arn`` (``ingest``) as ``role_arn``.
    ``scheduler`` makes the EventBridge Scheduler client, at its first use (most
    invocations of a function never need it)."""

    def __init__(
        self,
        *,
        dynamodb: Any,
        table_name: str,
        scheduler: Callable[[], Any],
        group: str,
        target_arn: str,
        role_arn: str,
    ) -> None:
        self.api_calls = AwsCalls()
        self._table = DynamoDBTable(dynamodb, table_name, self.api_calls)
        self._make_client = scheduler
        self._client: Any = None
        self._group = group
        self._target_arn = target_arn
        self._role_arn = role_arn

    # the table -------------------------------------------------------------------------

    def _item(self, schedule: Schedule, *, done_at: float | None = None) -> dict[str, Any]:
        item = {
            **key(SCHEDULES + schedule.conversation_id, schedule.schedule_id),
            "body": string(schedule.to_json()),
        }
        if done_at is not None:  # DynamoDB's TTL deletes it a while after
            item[TTL_ATTRIBUTE] = number(int(done_at + DONE_KEPT_SECONDS))
        return item

    def get(self, conversation_id: str, schedule_id: str) -> Schedule | None:
        item = self._table.get(SCHEDULES + conversation_id, schedule_id)
        return None if item is None else Schedule.from_json(get_str(item, "body"))

    def for_conversation(self, conversation_id: str) -> list[Schedule]:
        items = self._table.query("pk = :pk", {":pk": string(SCHEDULES + conversation_id)})
        found = [Schedule.from_json(get_str(item, "body")) for item in items]
        armed = [s for s in found if s.next_fire is not None]
        return sorted(armed, key=lambda s: (s.next_fire or 0.0, s.schedule_id))

    def add(self, schedule: Schedule, *, limit: int) -> Schedule:
        kept = self.get(schedule.conversation_id, schedule.schedule_id)
        if kept is not None:
            return kept
        count = len(self.for_conversation(schedule.conversation_id))  # the armed ones
        if count >= limit:
            raise BadInput(
                "too_many_schedules",
                f"conversation_id: it has {count} schedules, the most it may keep;"
                " delete one first",
                field="conversation_id",
            )
        put = self._table.put(self._item(schedule), cond="attribute_not_exists(pk)")["Put"]
        try:
            self._table.call("put_item", **put)
        except ConditionFailed:  # planned at the same moment by a retried turn
            return self.get(schedule.conversation_id, schedule.schedule_id) or schedule
        try:
            self._arm(schedule, create=True)
        except BaseException:
            self._delete_item(schedule.conversation_id, schedule.schedule_id)
            raise
        return schedule

    def _delete_item(self, conversation_id: str, schedule_id: str) -> bool:
        gone = self._table.call(
            "delete_item",
            TableName=self._table.name,
            Key=key(SCHEDULES + conversation_id, schedule_id),
            ReturnValues="ALL_OLD",
        )
        return bool(gone.get("Attributes"))

    def remove(self, conversation_id: str, schedule_id: str) -> bool:
        kept = self.get(conversation_id, schedule_id)
        if kept is None or kept.next_fire is None:  # none, or done: kept for its dedupe
            return False
        self._delete_item(conversation_id, schedule_id)
        self._disarm(schedule_id)
        return True

    def fired(
        self, schedule: Schedule, *, next_fire: float | None, outcome: str, now: float
    ) -> None:
        kept = self.get(schedule.conversation_id, schedule.schedule_id)
        if kept is None:  # deleted while it fired
            return
        done = kept.after_firing(next_fire, outcome, now)
        item = self._item(done, done_at=now if next_fire is None else None)
        # (a one-off that ran: EventBridge Scheduler deletes its own schedule)
        self._table.call("put_item", TableName=self._table.name, Item=item)
        if kept.cron is None and next_fire is not None:
            self._arm(done, create=False)  # tried again later (its maker's quota)

    def forget(self, conversation_id: str) -> int:
        items = self._table.query("pk = :pk", {":pk": string(SCHEDULES + conversation_id)})
        found = [Schedule.from_json(get_str(item, "body")) for item in items]
        for schedule in found:
            if schedule.next_fire is not None:
                self._disarm(schedule.schedule_id)
            self._delete_item(conversation_id, schedule.schedule_id)
        return len(found)

    # EventBridge Scheduler ---------------------------------------------------------------

    @property
    def _scheduler(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _arm(self, schedule: Schedule, *, create: bool) -> None:
        firing = {
            FIRING_KEY: {
                "conversation_id": schedule.conversation_id,
                "schedule_id": schedule.schedule_id,
            },
            "scheduled_time": SCHEDULED_TIME,
        }
        params: dict[str, Any] = {
            "Name": schedule_name(schedule.schedule_id),
            "GroupName": self._group,
            "ScheduleExpression": eventbridge_expression(schedule),
            "ScheduleExpressionTimezone": "UTC" if schedule.cron is None else schedule.timezone,
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Target": {
                "Arn": self._target_arn,
                "RoleArn": self._role_arn,
                "Input": json.dumps(firing, separators=(",", ":")),
                "RetryPolicy": RETRY_POLICY,
            },
        }
        if schedule.cron is None:
            params["ActionAfterCompletion"] = "DELETE"
        if not create:
            try:
                self.api_calls(self._scheduler, "scheduler", "update_schedule", **params)
                return
            except PermanentError as exc:
                if not _missing(exc):
                    raise
        self.api_calls(self._scheduler, "scheduler", "create_schedule", **params)

    def _disarm(self, schedule_id: str) -> None:
        try:
            self.api_calls(
                self._scheduler,
                "scheduler",
                "delete_schedule",
                Name=schedule_name(schedule_id),
                GroupName=self._group,
            )
        except PermanentError as exc:  # ran and deleted itself, or never armed
            if not _missing(exc):
                raise


def _missing(exc: PermanentError) -> bool:
    """Whether EventBridge Scheduler refused because there is no such schedule."""
    cause = exc.__cause__
    return cause is not None and error_code(cause) == "ResourceNotFoundException"


def firing_time(value: str) -> float:
    """The occurrence EventBridge Scheduler names (``2026-12-07T09:00:00Z``) as epoch
    seconds; ``BadInput`` for anything else (the placeholder left as it was)."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(
            "bad_scheduled_time",
            f"scheduled_time: {value[:60]!r} is not a time (EventBridge Scheduler fills"
            f" {SCHEDULED_TIME} in)",
            field="scheduled_time",
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()
