"""``api``: LangGraph's Agent Server API on the AWS runtime (HTTP API routes ``/threads``,
``/runs``, ``/assistants``, ``/ok``, ``/info``; users through the API's JWT authorizer).
Threads, runs that wait (up to 25 s: the HTTP API's limit is 30), runs in the background,
their state, join and cancel; a run stream is answered whole when the run ends (the HTTP API
does not stream: the turn's pieces stream over the WebSocket API)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from workers import bootstrap
from workers.adapters.aws.asgi import serve
from workers.errors import BadInput
from workers.handlers.http import refused
from workers.handlers.observability import logger


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        return serve(bootstrap.api_app(), event)
    except BadInput as exc:
        return refused(exc)
