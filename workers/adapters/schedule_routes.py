"""A conversation's schedules and own webhooks over HTTP. The schedules' routes, served alike
by the embedded server and the AWS ``api`` function:

- ``POST /v1/conversations/{id}/schedules`` (a :class:`~events.schedules.ScheduleRequest`):
  201 with the schedule;
- ``GET /v1/conversations/{id}/schedules``: the conversation's schedules, next first;
- ``DELETE /v1/conversations/{id}/schedules/{schedule_id}``: 200 ``{"deleted": true}``.

A conversation the caller may not use is a 404, as one that does not exist. The webhooks'
routes (:func:`mount_webhooks`) are served by both too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from events.identity import Principal
from events.schedules import ScheduleListView, ScheduleRequest, ScheduleView, as_datetime
from events.webhooks import WebhookListView, WebhookRequest, WebhookView
from workers.adapters.core_calls import CoreCalls
from workers.adapters.local.bodies import check_conversation_id, json_body
from workers.core.model import ConversationWebhook, Schedule
from workers.errors import BadInput

SCHEDULE_ID_LIMIT = 64


def schedule_view(schedule: Schedule) -> ScheduleView:
    return ScheduleView(
        schedule_id=schedule.schedule_id,
        conversation_id=schedule.conversation_id,
        text=schedule.text,
        kind="once" if schedule.cron is None else "cron",
        cron=schedule.cron,
        timezone=schedule.timezone,
        next_fire_at=as_datetime(schedule.next_fire),
        created_at=datetime.fromtimestamp(schedule.created_at, UTC),
        created_by=schedule.created_by,
        source=schedule.source,
        fired=schedule.fired,
        last_fired_at=as_datetime(schedule.last_fired_at),
        last_outcome=schedule.last_outcome,
        metadata=dict(schedule.metadata),
    )


def mount(
    app: FastAPI,
    caller: Callable[[Request], Awaitable[Principal]],
    runtime: Callable[[Request], CoreCalls],
) -> None:
    """Add the schedules' routes to ``app`` (``caller``: who calls; ``runtime``: the steps)."""

    @app.post("/v1/conversations/{conversation_id}/schedules", status_code=201)
    async def post_schedule(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        body = await json_body(request, ScheduleRequest)
        schedule = await runtime(request).create_schedule(conversation_id, principal, body)
        return _json(schedule_view(schedule), 201)

    @app.get("/v1/conversations/{conversation_id}/schedules")
    async def get_schedules(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        found = await runtime(request).list_schedules(conversation_id, principal)
        view = ScheduleListView(
            conversation_id=conversation_id, schedules=[schedule_view(s) for s in found]
        )
        return _json(view, 200)

    @app.delete("/v1/conversations/{conversation_id}/schedules/{schedule_id}")
    async def delete_schedule(
        conversation_id: str, schedule_id: str, request: Request
    ) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        if not schedule_id or len(schedule_id) > SCHEDULE_ID_LIMIT:
            raise BadInput("bad_schedule_id", "schedule_id: not a schedule id", field="schedule_id")
        await runtime(request).delete_schedule(conversation_id, schedule_id, principal)
        body = {"conversation_id": conversation_id, "schedule_id": schedule_id, "deleted": True}
        return JSONResponse(body)


def _json(view: Any, status: int) -> JSONResponse:
    return JSONResponse(view.model_dump(mode="json"), status_code=status)


def webhook_view(hook: ConversationWebhook, *, with_secret: bool = False) -> WebhookView:
    return WebhookView(
        webhook_id=hook.webhook_id,
        conversation_id=hook.conversation_id,
        url=hook.url,
        events=list(hook.events),
        created_by=hook.created_by,
        created_at=datetime.fromtimestamp(hook.created_at, UTC),
        secret=hook.secret if with_secret else None,
    )


def mount_webhooks(
    app: FastAPI,
    caller: Callable[[Request], Awaitable[Principal]],
    runtime: Callable[[Request], CoreCalls],
) -> None:
    """A conversation's own webhooks: ``POST /v1/conversations/{id}/webhooks`` (201 with
    the secret, shown this once), ``GET`` (without secrets), ``DELETE .../{webhook_id}``."""

    @app.post("/v1/conversations/{conversation_id}/webhooks", status_code=201)
    async def post_webhook(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        body = await json_body(request, WebhookRequest)
        hook = await runtime(request).create_webhook(conversation_id, principal, body)
        return _json(webhook_view(hook, with_secret=True), 201)

    @app.get("/v1/conversations/{conversation_id}/webhooks")
    async def get_webhooks(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        found = await runtime(request).list_webhooks(conversation_id, principal)
        view = WebhookListView(
            conversation_id=conversation_id, webhooks=[webhook_view(h) for h in found]
        )
        return _json(view, 200)

    @app.delete("/v1/conversations/{conversation_id}/webhooks/{webhook_id}")
    async def delete_webhook(
        conversation_id: str, webhook_id: str, request: Request
    ) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        if not webhook_id or len(webhook_id) > SCHEDULE_ID_LIMIT:
            raise BadInput("bad_webhook_id", "webhook_id: not a webhook id", field="webhook_id")
        await runtime(request).delete_webhook(conversation_id, webhook_id, principal)
        body = {"conversation_id": conversation_id, "webhook_id": webhook_id, "deleted": True}
        return JSONResponse(body)
