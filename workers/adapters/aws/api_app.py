"""The ``api`` function's app: LangGraph's Agent Server API (the same routes as the embedded
server's, ``workers/adapters/local/agent_server.py``) and the conversations' schedules and
own webhooks (``workers/adapters/schedule_routes.py``) on the AWS runtime. The caller is who
the HTTP API's JWT authorizer admitted (its verified claims, in the event)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request

from events.identity import ClaimMapping, Principal
from workers.adapters import schedule_routes
from workers.adapters.aws.api_runtime import AwsApiRuntime
from workers.adapters.aws.asgi import EVENT_KEY
from workers.adapters.local import agent_server
from workers.adapters.local.bodies import json_errors
from workers.config import Settings
from workers.handlers.http import http_principal


def build_api_app(
    settings: Settings,
    runtime: Callable[[], AwsApiRuntime],
    claims: Callable[[], ClaimMapping],
) -> FastAPI:
    """``runtime`` is asked for once a caller is known (``/ok``, ``/info`` and refusals
    build no AWS clients and no agent)."""
    app = FastAPI(
        title="agentworker",
        version="0.1.0",
        openapi_url=None,
        docs_url=None,
        redirect_slashes=False,  # (a redirect would name the function's host, not the API's)
    )
    json_errors(app)

    async def caller(request: Request) -> Principal:
        event: dict[str, Any] = request.scope.get(EVENT_KEY) or {}
        return http_principal(event, claims())

    agent_server.mount(app, settings, caller, lambda _: runtime())
    schedule_routes.mount(app, caller, lambda _: runtime())
    schedule_routes.mount_webhooks(app, caller, lambda _: runtime())
    return app
