"""How every transport answers an error: the local server (HTTP and WebSocket frames) and
the Lambda handlers behind API Gateway (HTTP API routes and WebSocket routes) give the same
status, code, body and headers for the same error (:func:`workers.errors.http_error`)."""

from __future__ import annotations

import math

from events.outbound import ErrorBody, ErrorView
from workers.errors import AgentWorkerError, Throttled, Unauthenticated, http_error


def error_view(exc: AgentWorkerError) -> tuple[int, ErrorView]:
    """The HTTP status and body of an error (:func:`~workers.errors.http_error`), naming the
    field at fault and, for a refused token, the reason."""
    status, code = http_error(exc)
    reason = exc.reason if isinstance(exc, Unauthenticated) else None
    body = ErrorBody(code=code, message=str(exc), field=getattr(exc, "field", None), reason=reason)
    return status, ErrorView(error=body)


def error_headers(exc: AgentWorkerError) -> dict[str, str]:
    """The headers an error answer carries: the scheme to authenticate with, when to retry."""
    if isinstance(exc, Unauthenticated):
        return {
            "www-authenticate": f'Bearer error="invalid_token", error_description="{exc.reason}"'
        }
    if isinstance(exc, Throttled):
        return {"retry-after": str(max(1, math.ceil(exc.retry_after)))}
    return {}
