"""An ASGI app behind API Gateway's HTTP API (payload format 2.0): a function's event
becomes one request, the app's response the function's answer (its body whole: the HTTP API
does not stream). The event rides in the scope (``aws.event``), where the app reads the
caller the API's authorizer verified."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from workers.errors import BadInput

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

EVENT_KEY = "aws.event"
"""Where the scope holds the function's event."""


def scope_of(event: dict[str, Any]) -> Scope:
    """The ASGI scope of an HTTP API (2.0) event."""
    http = (event.get("requestContext") or {}).get("http") or {}
    path = str(event.get("rawPath") or http.get("path") or "/")
    headers = [
        (str(k).lower().encode("latin-1"), str(v).encode("latin-1", "replace"))
        for k, v in (event.get("headers") or {}).items()
    ]
    if event.get("cookies"):
        headers.append((b"cookie", "; ".join(event["cookies"]).encode("latin-1", "replace")))
    domain = (event.get("requestContext") or {}).get("domainName") or "localhost"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": str(http.get("method") or "GET").upper(),
        "scheme": "https",
        "path": path,
        "raw_path": path.encode("utf-8", "replace"),
        "root_path": "",
        "query_string": str(event.get("rawQueryString") or "").encode("latin-1", "replace"),
        "headers": headers,
        "client": (str(http.get("sourceIp") or "0.0.0.0"), 0),
        "server": (str(domain), 443),
        EVENT_KEY: event,
    }


def body_of(event: dict[str, Any]) -> bytes:
    """The request's body as sent (``BadInput`` for a base64 body that is not)."""
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return str(body).encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(str(body), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("bad_body", "body: not base64, though the event says so") from None


def serve(app: ASGIApp, event: dict[str, Any]) -> dict[str, Any]:
    """Run ``app`` on the event's request; the HTTP API (2.0) response."""
    return asyncio.run(_serve(app, scope_of(event), body_of(event)))


async def _serve(app: ASGIApp, scope: Scope, body: bytes) -> dict[str, Any]:
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    done = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client stays until the response is whole
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = list(message.get("headers") or [])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body") or b""))
            if not message.get("more_body"):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return response(status, headers, b"".join(chunks))


def response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    out: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(value)
        else:
            out[name] = f"{out[name]},{value}" if name in out else value
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    answer: dict[str, Any] = {
        "statusCode": status,
        "headers": out,
        "body": text,
        "isBase64Encoded": encoded,
    }
    if cookies:
        answer["cookies"] = cookies
    return answer
