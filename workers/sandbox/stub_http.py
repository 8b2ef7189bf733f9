"""``StubHTTPServer``: the threaded loopback HTTP server under the model stubs."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

Stub = TypeVar("Stub")


class StubHTTPServer(ThreadingHTTPServer, Generic[Stub]):
    """Serves ``handler`` for ``stub`` (the handler reaches it as ``server.stub``). A client
    that hangs up is not an error; ``server_close`` also closes kept-alive connections, so a
    stopped stub looks down (connection refused) to SDKs that pool connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], stub: Stub
    ) -> None:
        super().__init__(address, handler)
        self.stub = stub
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._open_lock:
                self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (tests drop streams and time out on purpose)
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
