"""What the model stubs share: ``StubHTTPServer`` (the threaded loopback HTTP server),
``StubHandler`` (reading a request, writing JSON and chunked streams) and ``StubServer``
(their lifecycle, the script of outcomes and the log of requests)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

Stub = TypeVar("Stub")
Scripted = TypeVar("Scripted")
Recorded = TypeVar("Recorded")


class StubHTTPServer(ThreadingHTTPServer, Generic[Stub]):
    """Serves ``handler`` for ``stub`` (the handler reaches it as ``server.stub``). A client
    that hangs up is not an error; ``server_close`` also closes kept-alive connections, so a
    stopped stub looks down (connection refused) to SDKs that pool connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], stub: Stub
    ) -> None:
        self.stub = stub
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()  # before binding: a failed bind calls server_close
        super().__init__(address, handler)

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


class StubHandler(BaseHTTPRequestHandler, Generic[Stub]):
    """A stub's request handler: keep-alive HTTP/1.1, the stub it serves, and the plumbing
    of reading a body and writing a JSON answer or a chunked stream."""

    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, as the SDKs expect
    log_name = "stub"

    @property
    def stub(self) -> Stub:
        return cast(StubHTTPServer[Stub], self.server).stub

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger(type(self).__module__).debug(f"{self.log_name}: " + format, *args)

    def request_id_header(self) -> tuple[str, str]:
        """The provider's request id header and a fresh value."""
        raise NotImplementedError

    def _drain(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(*self.request_id_header())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _open_chunked(self, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header(*self.request_id_header())
        self.end_headers()

    def _write_chunks(self, pieces: Iterator[bytes], delay_s: float) -> None:
        """Each piece as one HTTP chunk, ``delay_s`` apart, flushed as it goes."""
        for i, piece in enumerate(pieces):
            if i and delay_s > 0:
                time.sleep(delay_s)
            self.wfile.write(f"{len(piece):X}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Lifecycle:
    """A loopback server used as a context manager: ``start()`` on entry, ``stop()`` on exit."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class StubServer(Lifecycle, Generic[Scripted, Recorded]):
    """A scripted model endpoint on ``host`` (a free port by default), served by a daemon
    thread: use as a context manager, or ``start()``/``stop()``. Scripted outcomes are kept
    first in, first out; every request is recorded. Subclasses say which request handler
    serves them (:meth:`_handler`) and how a request picks its outcome."""

    name = "stub"
    """The serving thread's name prefix."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        known_models: Collection[str] | None = None,
        latency_s: float = 0.0,
        stream_delay_s: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.known_models = frozenset(known_models) if known_models is not None else None
        """If set, requests for other models get the provider's error for an unknown model."""
        self.latency_s = latency_s
        """Seconds before a reply starts (simulates a slow model; errors are not delayed)."""
        self.stream_delay_s = stream_delay_s
        """Seconds between the pieces of a streamed reply."""
        self._lock = threading.Lock()
        self._script: list[Scripted] = []
        self._requests: list[Recorded] = []
        self._httpd: StubHTTPServer[Self] | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        """Bind and serve in a daemon thread. Idempotent."""
        if self._httpd is not None:
            return self
        httpd = StubHTTPServer((self.host, self.port), self._handler(), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket and kept-alive connections. Idempotent."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: the server's root."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running: call start() first")
        return f"http://{self.host}:{self.port}"

    def pending(self) -> int:
        """Scripted outcomes not consumed yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[Recorded]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    def _queue(self, entries: Iterable[Scripted]) -> None:
        with self._lock:
            self._script.extend(entries)


def words(text: str) -> list[str]:
    """``text`` in the pieces a stub streams it in: a word with the spaces around it."""
    return [w for w in re.findall(r"\s*\S+\s*|\s+", text) if w]


def pieces(text: str, size: int) -> list[str]:
    """``text`` in slices of ``size`` characters (at least one, maybe empty)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def token_estimate(prompt: str, answer: str) -> tuple[int, int]:
    """Input and output tokens of a stub's reply at about four characters a token."""
    return max(1, len(prompt) // 4), max(1, len(answer) // 4)
