"""Schedules: messages posted into a conversation later, by its owner (``POST
.../schedules``, ``agentworker schedule``) or by its agent (the SDK's ``schedule_followup``).

A schedule belongs to its conversation: whoever may use the conversation may list and delete
it, and erasing the conversation erases it. When one fires (the embedded runtime's timer,
EventBridge Scheduler on AWS), :func:`fire_schedule` accepts its text as an ordinary inbox
message, sent by who made it, with a dedupe key of the schedule and the occurrence: a firing
repeated (a crash before it was recorded, an invocation delivered twice) is dropped, so each
occurrence posts once. A recurring schedule that missed several occurrences (the server was
down) fires once for them, then goes on from now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from events.identity import Principal, backend
from events.inbound import InboundMessage
from events.schedules import MAX_SCHEDULE_SECONDS, ScheduleRequest
from workers.core.model import Schedule
from workers.core.ports import Clock, ConversationStore, Scheduler
from workers.core.steps import Deps, accept_message, message_bytes, spend_quotas, usable
from workers.errors import BadInput, NotFound, PermanentError, Throttled

log = logging.getLogger(__name__)

SCHEDULER = backend("agentworker:schedule")
"""Who posts a schedule's message (for the sender who made it, into its conversation only)."""
AGENT = "agent"
"""``created_by`` of a follow-up the conversation's agent planned."""


def next_cron(cron: str, timezone: str, after: float) -> float:
    """The first time after ``after`` (epoch seconds) that ``cron`` names in ``timezone``
    (daylight saving time as the zone has it)."""
    from croniter import croniter

    start = datetime.fromtimestamp(after, ZoneInfo(timezone))
    return float(croniter(cron, start).get_next(float))


def _scheduler(deps: Deps) -> Scheduler:
    if deps.scheduler is None:
        raise BadInput("no_schedules", "this runtime keeps no schedules")
    return deps.scheduler


def _check_time(first: float, now: float, field: str) -> float:
    if first <= now:
        raise BadInput("in_the_past", f"{field}: that time has passed", field=field)
    if first - now > MAX_SCHEDULE_SECONDS:
        raise BadInput(
            "too_far", f"{field}: at most {MAX_SCHEDULE_SECONDS // 86_400} days ahead", field=field
        )
    return first


def create_schedule(
    deps: Deps, conversation_id: str, principal: Principal, request: ScheduleRequest
) -> Schedule:
    """Schedule ``request``'s text into the conversation, for a principal who may use it
    (``NotFound`` otherwise, as for an unknown one). Making one spends a message of the
    principal's quota; each firing spends one more, when it fires."""
    scheduler = _scheduler(deps)
    state = usable(deps, conversation_id, principal)
    now = deps.clock.now()
    first = request.first_time(now)
    if first is not None:
        next_fire = _check_time(first, now, "in_seconds" if request.in_seconds else "at")
    else:
        assert request.cron is not None
        next_fire = next_cron(request.cron, request.timezone, now)
    size = len(request.text.encode("utf-8", "surrogatepass"))
    spend_quotas(deps, principal, messages=1, size=size)
    schedule = Schedule(
        schedule_id=_schedule_id(conversation_id, principal, request.dedupe_key),
        conversation_id=conversation_id,
        text=request.text,
        next_fire=next_fire,
        created_at=now,
        created_by=principal.id,
        creator_tenant=principal.tenant,
        creator_roles=tuple(sorted(principal.roles)),
        creator_service=principal.service,
        tenant=state.tenant,
        owner=state.owner,
        cron=request.cron,
        timezone=request.timezone,
        source="api",
        metadata=dict(request.metadata),
    )
    return scheduler.add(schedule, limit=deps.settings.schedules_per_conversation)


def _schedule_id(conversation_id: str, principal: Principal, dedupe_key: str | None) -> str:
    """A new id, or with a dedupe key one derived from it, the caller and the conversation:
    the same request sent again finds the schedule the first one made."""
    if dedupe_key is None:
        return f"sch_{uuid.uuid4().hex[:24]}"
    material = json.dumps([principal.tenant, principal.id, conversation_id, dedupe_key])
    return f"sch_{hashlib.sha256(material.encode()).hexdigest()[:24]}"


def list_schedules(deps: Deps, conversation_id: str, principal: Principal) -> list[Schedule]:
    """The conversation's schedules, for a principal who may use it (``NotFound``
    otherwise)."""
    scheduler = _scheduler(deps)
    usable(deps, conversation_id, principal)
    return scheduler.for_conversation(conversation_id)


def delete_schedule(
    deps: Deps, conversation_id: str, schedule_id: str, principal: Principal
) -> None:
    """Delete one of the conversation's schedules (``NotFound`` for a conversation the
    principal may not use, or no such schedule in it)."""
    scheduler = _scheduler(deps)
    usable(deps, conversation_id, principal)
    if not scheduler.remove(conversation_id, schedule_id):
        raise NotFound.schedule(schedule_id)


def fire_schedule(deps: Deps, conversation_id: str, schedule_id: str, occurrence: float) -> str:
    """Post the schedule's text for its ``occurrence`` (epoch seconds it was due) and record
    it; what happened: ``accepted``, ``duplicate`` (this occurrence posted before),
    ``rejected`` (the double-texting policy), ``throttled: ...`` (its maker's quota: it
    fires again when the quota allows), ``refused: ...``, or ``gone`` (no such schedule, or its
    conversation is not the one it was made for any more: it is deleted). A store fault
    raises, and whatever fires it tries again."""
    scheduler = _scheduler(deps)
    schedule = scheduler.get(conversation_id, schedule_id)
    if schedule is None or schedule.next_fire is None:  # deleted, erased, or done
        return "gone"
    now = deps.clock.now()
    next_fire = None
    if schedule.cron is not None:
        next_fire = next_cron(schedule.cron, schedule.timezone, max(now, occurrence))
    try:
        msg = _firing_message(schedule, occurrence)
    except ValidationError as exc:  # kept from before a limit; never a poison firing
        scheduler.fired(schedule, next_fire=next_fire, outcome=f"refused: {exc}", now=now)
        return "refused"
    try:
        if deps.store.get_conversation(conversation_id) is None:
            raise NotFound.conversation(conversation_id)
        if not schedule.creator_service:
            maker = Principal(
                id=schedule.created_by,
                tenant=schedule.creator_tenant,
                roles=frozenset(schedule.creator_roles),
            )
            spend_quotas(deps, maker, messages=1, size=message_bytes(msg))
        result = accept_message(deps, msg, SCHEDULER)
    except NotFound:
        scheduler.remove(conversation_id, schedule_id)
        log.info("schedule %s of %s is gone with its conversation", schedule_id, conversation_id)
        return "gone"
    except Throttled as exc:  # tried again when its maker's quota allows
        outcome = f"throttled: {exc}"
        next_fire = now + max(1.0, exc.retry_after)
    except PermanentError as exc:
        outcome = f"refused: {exc}"
    else:
        outcome = "duplicate" if result.duplicate else "rejected" if result.rejected else "accepted"
        recorded = schedule.next_fire is not None and schedule.next_fire > occurrence
        if result.duplicate and recorded:  # an invocation repeated after its record
            return outcome
    scheduler.fired(schedule, next_fire=next_fire, outcome=outcome, now=now)
    log.info("schedule %s of %s fired: %s", schedule_id, conversation_id, outcome)
    return outcome


def _firing_message(schedule: Schedule, occurrence: float) -> InboundMessage:
    """The inbox message of ``schedule``'s firing at ``occurrence``."""
    return InboundMessage(
        conversation_id=schedule.conversation_id,
        dedupe_key=schedule.dedupe_key(occurrence),
        text=schedule.text,
        channel="schedule",
        sender=schedule.created_by,
        sender_roles=list(schedule.creator_roles),
        tenant=schedule.tenant,
        owner=schedule.owner,
        metadata={
            **schedule.metadata,
            "schedule_id": schedule.schedule_id,
            "scheduled_for": datetime.fromtimestamp(occurrence, UTC).isoformat(),
        },
    )


@dataclass(frozen=True)
class FollowUps:
    """What the SDK's ``schedule_followup`` tool plans with: a one-off schedule in the
    current conversation, made by its agent (no user's quota), its id derived from the
    tool call's idempotency key so a retried turn plans it once."""

    scheduler: Scheduler
    store: ConversationStore
    clock: Clock
    limit: int = 20

    def plan(self, conversation_id: str, *, key: str, when: float, text: str) -> Schedule:
        state = self.store.get_conversation(conversation_id)
        if state is None:
            raise NotFound.conversation(conversation_id)
        now = self.clock.now()
        schedule = Schedule(
            schedule_id=f"sch_{key.removeprefix('aw1-')[:24]}",
            conversation_id=conversation_id,
            text=text,
            next_fire=_check_time(when, now, "when"),
            created_at=now,
            created_by=AGENT,
            creator_tenant=SCHEDULER.tenant,
            creator_service=True,
            tenant=state.tenant,
            owner=state.owner,
            source="agent",
        )
        return self.scheduler.add(schedule, limit=self.limit)
