"""Outbound webhooks: what the agent sends (replies, approval requests, interrupts, notices)
posted to a subscriber's URL, signed as the Standard Webhooks specification says, with the
``standardwebhooks`` package (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``:
``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the subscription's secret).

A delivery's body is ``{"type": <event>, "timestamp": <ISO 8601>, "data": <the payload>}``;
its ``webhook-id`` is ``msg_<reply id>`` (``msg_<reply id>.<event>`` for a ticket's events;
the same for every attempt: a receiver drops a repeat by it). Events: ``reply``,
``approval_request``, ``interrupt``, ``notice`` (the payload as the HTTP API shows it), and
for a ticket's conversation (``ticket:<id>``) the write-back to the helpdesk:
``ticket.reply`` (``{ticket_id, conversation_id, reply_id, text, created_at}``) and
``ticket.status`` (``{ticket_id, conversation_id, reply_id, status}``, status ``answered``
with a reply (or what the graph said with ``set_status``, e.g. ``solved``),
``waiting_for_approval`` with an approval request, ``escalated`` with an ``interrupt()``
question, ``failed`` with an error notice).

What is runtime-neutral lives here (which payload is which event, the signed request, the
retry schedule); the embedded runtime's durable queue and sender are in
:mod:`workers.adapters.local.webhooks`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from events.outbound import OutboxPayload
from events.webhooks import WEBHOOK_EVENTS, WebhookEvent
from workers.core.model import ConversationWebhook
from workers.errors import ConfigError

TICKET_PREFIX = "ticket:"
TICKET_STATUS: dict[str, str] = {
    "reply": "answered",
    "approval_request": "waiting_for_approval",
    "interrupt": "escalated",
}
"""A ticket's status after the agent sent a payload of this type (an error notice: failed)."""
MAX_DELAY_SECONDS = 3600.0
"""The longest wait between two attempts of a delivery."""


class WebhookSubscription(BaseModel):
    """One receiver (``[[webhooks]]`` of ``agentworker.toml``): its URL, the events it takes,
    and the environment variable that holds its secret (``whsec_`` + base64, as Standard
    Webhooks writes them; secrets are never read from the app file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guarded: ClassVar[bool] = False
    """The operator's own receiver: posted to wherever it is (an internal helpdesk too)."""
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: HttpUrl
    events: tuple[WebhookEvent, ...] = WEBHOOK_EVENTS
    secret_env: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    conversations: str = Field(
        default="",
        max_length=256,
        description="Only conversations whose id starts with this (e.g. 'ticket:'); all: ''.",
    )

    @property
    def target(self) -> str:
        return str(self.url)

    def secret(self) -> str:
        """The subscription's secret (``ConfigError`` naming the variable when unset)."""
        value = os.environ.get(self.secret_env, "").strip()
        if not value:
            raise ConfigError(
                f"webhooks {self.name!r}: the environment variable {self.secret_env} (its"
                " secret, whsec_...) is not set"
            )
        return value

    def wants(self, conversation_id: str, event: str) -> bool:
        """Whether this subscription takes ``event`` of the conversation."""
        return conversation_id.startswith(self.conversations) and event in self.events

    def takes(self, payload: OutboxPayload) -> list[tuple[str, WebhookEvent, dict[str, Any]]]:
        """The deliveries ``payload`` makes for this subscription: (``webhook-id``, event,
        data) of each event it takes."""
        return [e for e in events_of(payload) if self.wants(payload.conversation_id, e[1])]


class Receiver(Protocol):
    """Where deliveries go: a subscription of the app file, or a conversation's own."""

    guarded: ClassVar[bool]
    """A caller's URL: posted to public addresses only (:func:`public_only_transport`)."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> str:
        """The URL posted to."""

    def secret(self) -> str: ...

    def wants(self, conversation_id: str, event: str) -> bool: ...


@dataclass(frozen=True)
class HookReceiver:
    """A conversation's own webhook (:class:`~workers.core.model.ConversationWebhook`) as
    the sink and the sender use it: that conversation's events only, to a public address."""

    hook: ConversationWebhook
    guarded: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return self.hook.webhook_id

    @property
    def target(self) -> str:
        return self.hook.url

    def secret(self) -> str:
        return self.hook.secret

    def wants(self, conversation_id: str, event: str) -> bool:
        return conversation_id == self.hook.conversation_id and event in self.hook.events


def deliveries(
    receivers: Sequence[Receiver], payload: OutboxPayload, at: datetime
) -> list[tuple[Receiver, str, WebhookEvent, bytes]]:
    """What ``payload`` makes for ``receivers``: (receiver, ``webhook-id``, event, body) of
    each event each one takes, the payload's events and each event's body made once."""
    if not receivers:
        return []
    cid = payload.conversation_id
    found: list[tuple[Receiver, str, WebhookEvent, bytes]] = []
    for webhook_id, event, data in events_of(payload):
        takers = [r for r in receivers if r.wants(cid, event)]
        if takers:
            body = body_of(event, data, at)
            found.extend((r, webhook_id, event, body) for r in takers)
    return found


def public_address(host: str, addresses: Sequence[str]) -> str:
    """The address to connect to for ``host``, which resolved to ``addresses``: the first,
    when every one is public; ``ConnectionRefusedError`` when one is a loopback, private,
    link-local or otherwise non-global address (or there are none)."""
    import ipaddress

    inside = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_global]
    if not addresses or inside:
        raise ConnectionRefusedError(
            f"{host} resolves to {inside[0] if inside else 'nothing'}, not a public address:"
            " a conversation's webhook is posted to public addresses only"
        )
    return addresses[0]


def post_public(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> int:
    """POST ``body`` to ``url`` (https) and the answer's status, connecting only to a public
    address: the host is resolved here, refused (``ConnectionRefusedError``) if any address
    it has is not public (:func:`public_address`), and the connection made to the address
    checked, TLS verifying the host's name. No redirect is followed (a 3xx is not a 2xx).
    The blocking twin of :func:`public_only_transport`, for the AWS ``webhooks`` function."""
    import http.client
    import socket
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" or not host:
        raise ConnectionRefusedError(f"{url}: a conversation's webhook is posted to https only")
    port = parts.port or 443
    context = ssl.create_default_context()

    class Public(http.client.HTTPSConnection):
        def connect(self) -> None:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            address = public_address(host, [str(info[4][0]) for info in found])
            raw = socket.create_connection((address, port), timeout)
            self.sock = context.wrap_socket(raw, server_hostname=host)

    connection = Public(host, port, timeout=timeout, context=context)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body, {**headers})
        return int(connection.getresponse().status)
    finally:
        connection.close()


def public_only_transport(**options: Any) -> Any:
    """An httpx transport that connects only to public addresses: it resolves each host
    itself and refuses (``httpx.ConnectError``) one that resolves to a loopback, private,
    link-local or otherwise non-global address, then connects to the address it checked
    (no second lookup a DNS rebinding could answer differently); TLS still verifies the
    host's name."""
    import asyncio
    import socket

    import httpcore
    import httpx

    class PublicOnly(httpcore.AsyncNetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore.AnyIOBackend()

        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Any = None,
        ) -> httpcore.AsyncNetworkStream:
            loop = asyncio.get_running_loop()
            try:
                found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise httpcore.ConnectError(f"{host}: {exc}") from exc
            try:
                address = public_address(host, [str(info[4][0]) for info in found])
            except ConnectionRefusedError as exc:
                raise httpcore.ConnectError(str(exc)) from None
            return await self._inner.connect_tcp(
                address,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )

        async def connect_unix_socket(
            self, path: str, timeout: float | None = None, socket_options: Any = None
        ) -> httpcore.AsyncNetworkStream:
            raise httpcore.ConnectError("no unix sockets for a conversation's webhook")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    transport = httpx.AsyncHTTPTransport(**options)
    # httpx builds its connection pool without a network backend of our choosing: the same
    # pool, connecting through the check.
    transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001
        ssl_context=httpx.create_ssl_context(), network_backend=PublicOnly()
    )
    return transport


def events_of(payload: OutboxPayload) -> list[tuple[str, WebhookEvent, dict[str, Any]]]:
    """The webhook events of ``payload``: its own type's, and a ticket's write-back."""
    data = payload.model_dump(mode="json")
    found: list[tuple[str, WebhookEvent, dict[str, Any]]] = []
    kind = payload.type
    if kind in ("reply", "approval_request", "interrupt", "notice"):
        found.append((f"msg_{payload.reply_id}", kind, data))
    cid = payload.conversation_id
    if not cid.startswith(TICKET_PREFIX):
        return found
    ticket = {"ticket_id": cid.removeprefix(TICKET_PREFIX), "conversation_id": cid}
    if kind == "reply":
        reply = {"reply_id": payload.reply_id, "text": data["text"]}
        found.append(
            (
                f"msg_{payload.reply_id}.ticket.reply",
                "ticket.reply",
                {**ticket, **reply, "created_at": data["created_at"]},
            )
        )
    failed = kind == "notice" and data.get("level") == "error"
    told = data.get("status") if kind == "reply" else None  # the graph's set_status
    status = "failed" if failed else told or TICKET_STATUS.get(kind)
    if status is not None:
        said = {**ticket, "reply_id": payload.reply_id, "status": status}
        found.append((f"msg_{payload.reply_id}.ticket.status", "ticket.status", said))
    return found


def body_of(event: WebhookEvent, payload: Mapping[str, Any], at: datetime) -> bytes:
    """A delivery's body: Standard Webhooks' ``{type, timestamp, data}``."""
    data = {"type": event, "timestamp": at.astimezone(UTC).isoformat(), "data": dict(payload)}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def signed_headers(secret: str, webhook_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of ``body`` (``ConfigError`` for a malformed secret)."""
    from standardwebhooks.webhooks import Webhook

    try:
        signer = Webhook(secret)
    except Exception as exc:  # not base64, empty
        raise ConfigError(f"a webhook secret is not whsec_ + base64: {exc}") from None
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signer.sign(webhook_id, at, body),
        "content-type": "application/json",
        "user-agent": "agentworker-webhooks",
    }


def next_delay(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: exponential (``base * 2**(attempt-1)``), with
    full jitter between half and all of it, at most :data:`MAX_DELAY_SECONDS`."""
    ceiling = min(base * 2.0 ** max(attempt - 1, 0), MAX_DELAY_SECONDS)
    draw: float = (rng or random).random()
    return ceiling * (0.5 + 0.5 * draw)
