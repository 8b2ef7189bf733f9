"""Responses of the handlers behind API Gateway's HTTP API (``approve``, ``slack``)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from events.identity import ClaimMapping, Principal, backend
from events.outbound import ErrorBody, ErrorView
from workers.adapters.http_errors import error_headers, error_view
from workers.errors import AgentWorkerError, BadInput, Unauthenticated


def json_response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An HTTP API (payload 2.0) response with a JSON body."""
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


def error_response(
    status: int, code: str, message: str, field: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Our error body (``ErrorView``), as every transport answers errors."""
    body = ErrorView(error=ErrorBody(code=code, message=message, field=field, reason=reason))
    return json_response(status, body.model_dump())


def refused(exc: AgentWorkerError) -> dict[str, Any]:
    """An HTTP API response refusing the request for ``exc``: the status, code, body and
    headers every transport gives that error (``workers.adapters.http_errors``)."""
    status, view = error_view(exc)
    response = json_response(status, view.model_dump())
    response["headers"].update(error_headers(exc))
    return response


def refused_frame(exc: AgentWorkerError) -> dict[str, Any]:
    """A WebSocket route's answer refusing a frame for ``exc`` (the error frame)."""
    status, view = error_view(exc)
    return {"statusCode": status, "body": view.model_dump_json()}


def http_principal(event: dict[str, Any], claims: ClaimMapping) -> Principal:
    """Who called an HTTP API route: a user whose token the API's JWT authorizer verified
    (its claims, mapped by ``claims``; ``Unauthenticated`` if they name no tenant), or a
    backend admitted by IAM."""
    ctx = event.get("requestContext") or {}
    jwt = (ctx.get("authorizer") or {}).get("jwt")
    if isinstance(jwt, dict):
        try:
            return claims.principal(jwt.get("claims") or {})
        except ValueError as exc:
            reason, _, message = str(exc).partition(": ")
            raise Unauthenticated(reason, f"the token's {message}") from None
    return iam_principal(event)


def iam_principal(event: dict[str, Any]) -> Principal:
    """The backend behind an IAM-authorised request (HTTP API payload 2.0 puts its ARN in
    ``requestContext.authorizer.iam``; a REST API in ``requestContext.identity``).
    ``Unauthenticated`` (``missing``) when there is none: a request that reached the function
    without a verified caller (a route without an authorizer, a direct invocation) is nobody,
    never a trusted backend that may act on any conversation."""
    ctx = event.get("requestContext") or {}
    iam = (ctx.get("authorizer") or {}).get("iam") or ctx.get("identity") or {}
    arn = iam.get("userArn") or iam.get("callerId")
    if not isinstance(arn, str) or not arn:
        raise Unauthenticated(
            "missing", "no caller: users send a bearer token, backends sign with IAM"
        )
    return backend(f"iam:{arn}")


def raw_body(event: dict[str, Any]) -> bytes:
    """The request body exactly as sent (a signature covers these bytes), decoded from
    base64 when API Gateway says so; ``BadInput`` when that base64 is not valid."""
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return str(body).encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a str that is not even ASCII
        raise BadInput("bad_request", "body is not valid base64", field="body") from None
