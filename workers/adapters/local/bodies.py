"""Request bodies of the local server: read within a size limit, JSON objects only (a form
or ``text/plain`` body, which a page of another site can post without asking first, is
refused), validated into their models with the first bad field named."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from events.inbound import CONVERSATION_ID_PATTERN
from events.json_input import parse_json
from events.outbound import ErrorBody, ErrorView, validation_problem
from workers.adapters.http_errors import error_headers, error_view
from workers.errors import AgentWorkerError, ApiError

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body read at all; the message text itself is capped at 256 KB."""

M = TypeVar("M", bound=BaseModel)

_CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)


def check_conversation_id(conversation_id: str, field: str = "conversation_id") -> None:
    """422 (naming ``field``) for an id no conversation could have."""
    if not _CONVERSATION_ID.match(conversation_id):
        raise ApiError(
            422,
            "validation_error",
            f"{field}: letters, digits and ':._@-', 1-256 characters, "
            "starting with a letter or digit",
            field,
        )


def validation_error(exc: ValidationError, *, tagged: bool = False) -> ApiError:
    """Map a pydantic error to 413 (text too large) or 422, naming the first bad field."""
    body = validation_problem(exc, tagged=tagged)
    status = 413 if body.code == "too_large" else 422
    return ApiError(status, body.code, body.message, body.field)


def validated(model: type[M], data: Any) -> M:
    """``data`` as ``model``; 413/422 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def json_body(request: Request, model: type[M], *, empty_ok: bool = False) -> M:
    """The request's JSON object body as ``model`` (and what :func:`json_object` refuses
    first); ``empty_ok``: no body at all reads as ``{}`` (what clients send for bodiless
    calls)."""
    return validated(model, await json_object(request, empty_ok=empty_ok))


async def json_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object body: 415 for another media type, 413 over the size limit,
    400 for what is not JSON, 422 for JSON that is not an object."""
    raw = await read_body(request)
    if empty_ok and not raw:
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "content-type: must be application/json")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(422, "validation_error", "body: must be a JSON object", "body")
    return data


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length") or ""
    # More digits than any length we take is too large as it is: never int() thousands of
    # digits (past Python's int-string limit, a ValueError).
    if declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, "too_large", f"body: over {MAX_BODY_BYTES} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"body: over {MAX_BODY_BYTES} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def json_errors(app: FastAPI) -> None:
    """Answer ``app``'s errors in our JSON shape: a typed error with its status, code and
    headers (``workers.adapters.http_errors``), no such route or method alike."""

    @app.exception_handler(AgentWorkerError)
    async def _error(request: Request, exc: AgentWorkerError) -> JSONResponse:
        status, body = error_view(exc)
        return JSONResponse(body.model_dump(), status_code=status, headers=error_headers(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = ErrorBody(code=codes.get(exc.status_code, "http_error"), message=str(exc.detail))
        return JSONResponse(ErrorView(error=body).model_dump(), status_code=exc.status_code)
