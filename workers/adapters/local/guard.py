"""What the local server lets in, so a web page the user visits cannot use it.

- It listens on loopback only: without authentication, any process that reaches its port
  could read and write every conversation (:func:`check_bind` refuses another ``--host``).
- ``Host`` must name the server (its loopback address and port, or ``allowed_hosts``): a
  page that rebinds its own DNS name to 127.0.0.1 sends its own name, and is refused.
- ``Origin``, when a browser sends one, must be the server's own page (or in
  ``allowed_origins``): another site's script is refused, over HTTP and the WebSocket.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from workers.config import Settings
from workers.errors import ConfigError

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
    """``ConfigError`` for an address other machines could reach: nothing authenticates
    requests, so the server must stay on loopback."""
    if not is_loopback(settings.host):
        raise ConfigError(
            f"{settings.source('host')}={settings.host!r}: the local server has no"
            " authentication, so it listens on loopback only (127.0.0.1, ::1, localhost)"
        )


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

    def refusal(self, host: str | None, origin: str | None) -> tuple[str, str] | None:
        """Why a request with these headers is refused (code, message), or ``None``."""
        if (host or "").lower() not in self.hosts:
            return "host_not_allowed", f"host: {host!r} is not this server (allowed_hosts)"
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            return "origin_not_allowed", f"origin: {origin!r} may not use this server"
        return None
