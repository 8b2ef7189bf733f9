"""API Gateway's HTTP API on loopback, for the sandbox and the tests: each request becomes a
payload-2.0 event for a function's handler (``api``), behind a JWT authorizer as the stack
configures it (``Authorization: Bearer <token>``; no token or a refused one is API Gateway's
401 ``{"message": "Unauthorized"}``, before any function runs). Public routes skip it."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from workers.sandbox.emulator import LambdaContextStub
from workers.sandbox.stub_http import Lifecycle

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
Authorize = Callable[[str], dict[str, Any] | None]
"""A bearer token's verified claims, or ``None`` (refused)."""


class HttpApiStandIn(Lifecycle):
    """Serves ``handler`` at ``url`` until closed."""

    def __init__(
        self,
        handler: Handler,
        authorize: Authorize,
        *,
        public: Collection[str] = ("/ok", "/info"),
        function: str = "api",
    ) -> None:
        self.handler = handler
        self.authorize = authorize
        self.public = frozenset(public)
        self.context = LambdaContextStub(
            function, f"arn:aws:lambda:us-east-1:123456789012:function:{function}"
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def event(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Any:
        """The HTTP API's event for a request (with the authorizer's claims), or the 401 it
        answers itself."""
        parts = urlsplit(target)
        context: dict[str, Any] = {
            "accountId": "123456789012",
            "apiId": "sandbox",
            "domainName": "sandbox.execute-api.us-east-1.amazonaws.com",
            "http": {
                "method": method,
                "path": parts.path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": f"r-{time.monotonic_ns()}",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        }
        if parts.path not in self.public:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            claims = self.authorize(token) if scheme.lower() == "bearer" and token else None
            if claims is None:
                return None
            context["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
        try:
            text, encoded = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": parts.path,
            "rawQueryString": parts.query,
            "headers": headers,
            "requestContext": context,
            "body": text,
            "isBase64Encoded": encoded,
        }


def _handler_class(api: HttpApiStandIn) -> type[BaseHTTPRequestHandler]:
    class _Request(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            return None

        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            event = api.event(self.command, self.path, headers, body)
            if event is None:
                self._answer(
                    401, {"content-type": "application/json"}, b'{"message":"Unauthorized"}'
                )
                return
            result = api.handler(event, api.context)
            data = str(result.get("body") or "")
            raw = base64.b64decode(data) if result.get("isBase64Encoded") else data.encode()
            self._answer(int(result.get("statusCode", 200)), result.get("headers") or {}, raw)

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

    return _Request
