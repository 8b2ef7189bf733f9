"""What the local server lets in, so a web page the user visits cannot use it.

- Every ``/v1`` request and WebSocket carries a bearer token: a JWT when an identity
  provider is configured, else the development token printed at start (Jupyter's way).
- Without an identity provider it listens on loopback only (:func:`check_bind` refuses
  another ``--host``): the development token proves no identity.
- ``Host`` must name the server (its loopback address and port, or ``allowed_hosts``): a
  page that rebinds its own DNS name to 127.0.0.1 sends its own name, and is refused.
- ``Origin``, when a browser sends one, must be the server's own page (or in
  ``allowed_origins``): another site's script is refused, over HTTP and the WebSocket.
- A page on an allowed origin may read what it is answered (CORS, :meth:`Guard.cross_origin`
  and :meth:`Guard.preflight`): the answer names that origin, never ``*``; a refused origin
  gets no CORS header, only the refusal.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from workers.config import Settings
from workers.errors import ConfigError
from workers.statedir import private_dir, write_private

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """``ConfigError`` for an address other machines could reach while no identity provider
    is configured (the development token proves no identity): loopback only then."""
    if not is_loopback(settings.host) and not settings.auth_configured:
        raise ConfigError(
            f"{settings.source('host')}={settings.host!r}: without authentication"
            " (AGENTWORKER_AUTH_JWKS_URL or AGENTWORKER_AUTH_JWT_SECRET) the local server"
            " listens on loopback only (127.0.0.1, ::1, localhost)"
        )


_BIND_ERRORS = {
    errno.EADDRINUSE: "the address is in use (another program listens there; stop it or pass"
    " --port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; pass --port)",
    errno.EADDRNOTAVAIL: "this machine has no such address (pass --host)",
}


def listen(settings: Settings) -> socket.socket:
    """A socket bound to the settings' host and port and listening, before anything is
    printed or written: a taken port is a ``ConfigError`` naming it (and the development
    token of the server that has it stays as it was)."""
    where = f"{settings.host}:{settings.port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host.strip("[]"),
            settings.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = _BIND_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
        raise ConfigError(f"cannot listen on {where}: {reason}") from None
    sock.set_inheritable(True)
    return sock


DEV_TOKEN_FILE = "dev-token"
"""In the state directory: the running server's development token, for the CLI."""


def with_dev_token(settings: Settings, *, rotate: bool = False) -> Settings:
    """Without an identity provider: ``settings`` with the development token its callers
    must present, written to the state directory (owner-only) for the CLI. The token is
    ``dev_token`` when set, else the one the state directory keeps, so a restarted server
    still accepts the page and the CLI it gave a token to; a new random one the first time,
    with ``rotate``, or when the kept one could have been read by others. With an identity
    provider, ``settings`` unchanged."""
    if settings.auth_configured:
        return settings
    path = private_dir(settings.state_dir) / DEV_TOKEN_FILE
    token = settings.dev_token
    if token is None and not rotate:
        kept = _kept_token(path)
        token = SecretStr(kept) if kept else None
    if token is None:
        token = SecretStr(secrets.token_urlsafe(24))
    write_private(path, token.get_secret_value())
    updated = settings.model_copy(update={"dev_token": token})
    updated.keep_sources(settings)
    return updated


MIN_TOKEN_CHARS = 16


def _kept_token(path: Path) -> str | None:
    """The token a former start kept in ``path``: ``None`` when there is none, it is too
    short to be one of ours, or others could read the file (then it may be known: the log
    says a new one is made)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text().strip()
    except OSError:
        return None
    if mode & 0o077:
        log.warning("%s was readable by others (%04o): a new development token is made", path, mode)
        return None
    return text if len(text) >= MIN_TOKEN_CHARS else None


def read_dev_token(state_dir: Path) -> str | None:
    """The development token a server on ``state_dir`` wrote, if any."""
    try:
        return (state_dir / DEV_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


CORS_METHODS = "GET, POST, PATCH, DELETE"
"""The methods of the API's routes, as a preflight allows them."""
CORS_REQUEST_HEADERS = "authorization, x-api-key, content-type, last-event-id, accept, prefer"
"""The request headers a page on an allowed origin may send: the token (bearer or LangGraph's
``x-api-key``), a JSON body, a stream's resume point, ``Prefer: return=minimal``."""
CORS_EXPOSED_HEADERS = "content-location, location, retry-after, www-authenticate"
"""The response headers such a page may read besides the safelisted ones (``Content-Type``):
where a run is and where its stream resumes (LangGraph's client reads both), and an
error's."""
CORS_MAX_AGE_SECONDS = 600
"""How long a browser may keep a preflight's answer."""


@dataclass(frozen=True)
class Guard:
    """The ``Host`` and ``Origin`` values the server accepts."""

    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def for_settings(cls, settings: Settings) -> Guard:
        port = settings.port
        names = {*LOOPBACK_NAMES, settings.host.lower()}
        hosts = {f"{n}:{port}" for n in names}
        if port == 80:
            hosts |= names
        for extra in settings.allowed_hosts:
            hosts |= {extra.lower(), f"{extra.lower()}:{port}"}
        origins = {f"http://{n}:{port}" for n in names}
        origins |= {o.rstrip("/").lower() for o in settings.allowed_origins}
        return cls(frozenset(hosts), frozenset(origins))

    def cross_origin(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a page on ``origin`` (an allowed one: the request
        passed :meth:`refusal`): it may read the answer and the headers LangGraph's client
        reads (``Content-Location``, ``Location``) or an error's (``Retry-After``,
        ``WWW-Authenticate``). None without an ``Origin`` or for one not allowed."""
        if origin is None or origin.rstrip("/").lower() not in self.origins:
            return {}
        return {
            "access-control-allow-origin": origin,
            "access-control-expose-headers": CORS_EXPOSED_HEADERS,
        }

    def preflight(self, origin: str | None) -> dict[str, str]:
        """The headers of the answer to a browser's preflight (``OPTIONS`` with
        ``Access-Control-Request-Method``) from ``origin``, before any authentication (a
        browser sends no credentials with it): the methods and request headers the API and
        LangGraph's clients use, cached for :data:`CORS_MAX_AGE_SECONDS`. None for an origin
        not allowed."""
        if not (allowed := self.cross_origin(origin)):
            return {}
        return {
            **allowed,
            "access-control-allow-methods": CORS_METHODS,
            "access-control-allow-headers": CORS_REQUEST_HEADERS,
            "access-control-max-age": str(CORS_MAX_AGE_SECONDS),
        }

    def refusal(self, host: str | None, origin: str | None) -> tuple[str, str] | None:
        """Why a request with these headers is refused (code, message), or ``None``."""
        if (host or "").lower() not in self.hosts:
            return "host_not_allowed", f"host: {host!r} is not this server (allowed_hosts)"
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            return "origin_not_allowed", f"origin: {origin!r} may not use this server"
        return None
