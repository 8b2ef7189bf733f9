"""The embedded runtime's outbound webhooks: a durable queue in the state directory
(``webhooks.db``, owner-only) and a sender that drains it.

- :class:`WebhookSink` is one of the runtime's reply sinks: a payload a subscription takes is
  written to the queue (one SQLite insert, idempotent on the subscription and the
  ``webhook-id``); it never calls a receiver, so a slow or failing receiver costs a turn
  nothing.
- :class:`WebhookSender` posts what is due, signed (:mod:`workers.adapters.webhooks`), in
  order per subscription and conversation (the next one waits for the one before it), many
  conversations at once. A failure (no answer, a timeout, anything but 2xx) is tried again
  after an exponential backoff with jitter; after ``webhook_attempts`` it is dead: listed by
  ``agentworker dlq list --webhooks``, sent again by ``agentworker dlq redrive --webhooks``,
  and the conversation's next deliveries go on. The queue survives a crash or a restart.
- An erased conversation's deliveries are deleted with it; delivered ones keep no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from events.outbound import OutboxPayload, StreamChunk
from workers.adapters.webhooks import (
    HookReceiver,
    Receiver,
    WebhookSubscription,
    deliveries,
    next_delay,
    public_only_transport,
    signed_headers,
)
from workers.core.model import ConversationWebhook
from workers.errors import BadInput, RetryableError
from workers.statedir import private_file

log = logging.getLogger(__name__)

WEBHOOKS_DB = "webhooks.db"
CONCURRENCY = 8
"""Conversations whose deliveries are sent at once."""
IDLE_POLL_SECONDS = 1.0
KEEP_DELIVERED_SECONDS = 7 * 24 * 3600.0
"""How long a delivered delivery's row (no body) is kept: a repeat of its payload within it
is recognised and not sent again."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    UNIQUE (subscription, webhook_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (subscription, conversation_id, id);
CREATE TABLE IF NOT EXISTS hooks (
    webhook_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    tenant TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS hooks_by_conversation ON hooks (conversation_id);
"""


@dataclass(frozen=True)
class Delivery:
    id: int
    subscription: str
    webhook_id: str
    conversation_id: str
    event: str
    body: bytes
    status: str
    attempts: int
    next_at: float
    last_error: str | None
    created_at: float


class WebhookQueue:
    """The deliveries, in ``<state_dir>/webhooks.db``; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        private_file(path)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(hooks)")}
        for added in ("tenant", "owner"):  # a state directory of an earlier version
            if added not in columns:
                self._conn.execute(f"ALTER TABLE hooks ADD COLUMN {added} TEXT")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(
        self, subscription: str, webhook_id: str, conversation_id: str, event: str, body: bytes
    ) -> bool:
        """Queue a delivery; ``False`` if this subscription has it already."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO deliveries (subscription, webhook_id, conversation_id,"
                " event, body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (subscription, webhook_id, conversation_id, event, body, now, now),
            )
            return cur.rowcount == 1

    def due(self, now: float, limit: int) -> list[Delivery]:
        """The next delivery of each subscription and conversation, when it is due; none of
        one whose first undelivered is dead (held behind it until it is redriven: a
        conversation's deliveries never overtake one another)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM deliveries d WHERE d.status = 'pending' AND d.next_at <= ?"
                " AND d.id = (SELECT MIN(e.id) FROM deliveries e"
                " WHERE e.status IN ('pending', 'dead') AND e.subscription = d.subscription"
                " AND e.conversation_id = d.conversation_id)"
                " ORDER BY d.next_at, d.id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def held(self, conversation_id: str | None = None) -> int:
        """Deliveries waiting behind a dead one of their subscription and conversation."""
        where, args = "", tuple[str, ...]()
        if conversation_id:
            where, args = "AND d.conversation_id = ?", (conversation_id,)
        with self._lock:
            (count,) = self._conn.execute(
                "SELECT count(*) FROM deliveries d WHERE d.status = 'pending' AND EXISTS"
                " (SELECT 1 FROM deliveries e WHERE e.status = 'dead' AND e.id < d.id"
                " AND e.subscription = d.subscription AND e.conversation_id = d.conversation_id)"
                f" {where}",
                args,
            ).fetchone()
        return int(count)

    def delivered(self, delivery_id: int) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE deliveries SET status = 'delivered', body = x'', attempts = attempts + 1,"
                " last_error = NULL WHERE id = ?",
                (delivery_id,),
            )

    def failed(self, delivery_id: int, error: str, *, retry_at: float | None) -> None:
        """An attempt failed: tried again at ``retry_at``, or dead (``None``)."""
        status = "dead" if retry_at is None else "pending"
        with self._lock:
            self._conn.execute(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?,"
                " next_at = ? WHERE id = ?",
                (status, error[:500], retry_at or time.time(), delivery_id),
            )

    def dead(self, conversation_id: str | None = None) -> list[Delivery]:
        where, args = (
            ("AND conversation_id = ?", (conversation_id,)) if conversation_id else ("", ())
        )
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM deliveries WHERE status = 'dead' {where} ORDER BY id", args
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def redrive(self, ids: Sequence[int] | None, conversation_id: str | None = None) -> list[int]:
        """Dead deliveries pending again (``None``: every one, of ``conversation_id``)."""
        chosen = [d.id for d in self.dead(conversation_id) if ids is None or d.id in ids]
        with self._lock:
            self._conn.executemany(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_at = ?"
                " WHERE id = ? AND status = 'dead'",
                [(time.time(), i) for i in chosen],
            )
        return chosen

    # a conversation's own webhooks (the core's ConversationWebhooks) -------------------

    def add_webhook(self, hook: ConversationWebhook, *, limit: int) -> ConversationWebhook:
        with self._lock:
            (count,) = self._conn.execute(
                "SELECT count(*) FROM hooks WHERE conversation_id = ?", (hook.conversation_id,)
            ).fetchone()
            if count >= limit:
                raise BadInput(
                    "too_many_webhooks",
                    f"conversation_id: it has {count} webhooks, the most it may keep",
                    field="conversation_id",
                )
            self._conn.execute(
                "INSERT INTO hooks (webhook_id, conversation_id, url, events, secret,"
                " created_by, created_at, tenant, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hook.webhook_id,
                    hook.conversation_id,
                    hook.url,
                    ",".join(hook.events),
                    hook.secret,
                    hook.created_by,
                    hook.created_at,
                    hook.tenant,
                    hook.owner,
                ),
            )
        return hook

    def webhooks_of(self, conversation_id: str) -> list[ConversationWebhook]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_HOOK} FROM hooks WHERE conversation_id = ? ORDER BY created_at",
                (conversation_id,),
            ).fetchall()
        return [_hook(row) for row in rows]

    def webhook(self, conversation_id: str, webhook_id: str) -> ConversationWebhook | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_HOOK} FROM hooks WHERE webhook_id = ? AND conversation_id = ?",
                (webhook_id, conversation_id),
            ).fetchone()
        return None if row is None else _hook(row)

    def remove_webhook(self, conversation_id: str, webhook_id: str) -> bool:
        with self._lock:
            gone = self._conn.execute(
                "DELETE FROM hooks WHERE webhook_id = ? AND conversation_id = ?",
                (webhook_id, conversation_id),
            ).rowcount
            if gone:
                self._conn.execute(
                    "DELETE FROM deliveries WHERE subscription = ? AND status != 'delivered'",
                    (webhook_id,),
                )
        return gone > 0

    def forget_webhooks(self, conversation_id: str) -> int:
        with self._lock:
            return self._conn.execute(
                "DELETE FROM hooks WHERE conversation_id = ?", (conversation_id,)
            ).rowcount

    def forget(self, conversation_id: str) -> int:
        """Delete the conversation's deliveries (its erasure); how many."""
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM deliveries WHERE conversation_id = ?", (conversation_id,)
            )
            return cur.rowcount

    def prune(self, before: float) -> None:
        with self._lock:
            self._conn.execute(
                "DELETE FROM deliveries WHERE status = 'delivered' AND created_at < ?", (before,)
            )


_HOOK = "webhook_id, conversation_id, url, events, secret, created_by, created_at, tenant, owner"


def _hook(row: Sequence[Any]) -> ConversationWebhook:
    webhook_id, cid, url, events, secret, created_by, created_at, tenant, owner = row
    return ConversationWebhook(
        webhook_id,
        cid,
        url,
        tuple(str(events).split(",")),
        secret,
        created_by,
        created_at,
        tenant=tenant,
        owner=owner,
    )


class WebhookSink:
    """A reply sink: each payload a subscription takes, queued for it (never sent here)."""

    def __init__(
        self,
        queue: WebhookQueue,
        subscriptions: Sequence[WebhookSubscription],
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue = queue
        self.subscriptions = tuple(subscriptions)
        self.wake = wake

    def send(self, payload: OutboxPayload) -> None:
        """Queue ``payload`` for each subscription that takes it; ``RetryableError`` when
        the queue cannot be written (the delivery is tried again, the turn is done)."""
        added = False
        at = datetime.now(UTC)
        try:
            own = [HookReceiver(h) for h in self.queue.webhooks_of(payload.conversation_id)]
        except sqlite3.Error as exc:
            raise RetryableError(f"webhooks: the queue was not read: {exc}") from exc
        receivers: list[Receiver] = [*self.subscriptions, *own]
        cid = payload.conversation_id
        for sub, webhook_id, event, body in deliveries(receivers, payload, at):
            try:
                added |= self.queue.add(sub.name, webhook_id, cid, event, body)
            except sqlite3.Error as exc:
                raise RetryableError(f"webhooks: the queue was not written: {exc}") from exc
        if added:
            self.wake()

    def send_chunk(self, chunk: StreamChunk) -> None:
        return None  # webhooks take whole payloads, not a turn's pieces


class WebhookSender:
    """Posts the queue's due deliveries while the runtime runs (:meth:`run`, a task)."""

    def __init__(
        self,
        queue: WebhookQueue,
        subscriptions: Sequence[WebhookSubscription],
        *,
        attempts: int,
        base_delay: float,
        timeout: float,
        client: Any = None,
        private_urls: bool = False,
    ) -> None:
        self.queue = queue
        self.by_name = {s.name: s for s in subscriptions}
        self.attempts = attempts
        self.base_delay = base_delay
        self.timeout = timeout
        self._client = client
        self._guarded: Any = None
        """The client of the conversations' own webhooks (public addresses only)."""
        self.private_urls = private_urls
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Something was queued (from any thread): look now rather than at the next poll."""
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        import httpx

        self._loop, self._event = asyncio.get_running_loop(), asyncio.Event()
        client = self._client or httpx.AsyncClient(timeout=self.timeout)
        if not self.private_urls:
            transport = public_only_transport()
            self._guarded = httpx.AsyncClient(timeout=self.timeout, transport=transport)
        pruned = 0.0
        try:
            while True:
                now = time.time()
                if now - pruned > 3600:
                    await asyncio.to_thread(self.queue.prune, now - KEEP_DELIVERED_SECONDS)
                    pruned = now
                due = await asyncio.to_thread(self.queue.due, now, CONCURRENCY)
                if due:
                    await asyncio.gather(*(self._attempt(client, d) for d in due))
                    continue
                self._event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), IDLE_POLL_SECONDS)
        finally:
            if self._client is None:
                await client.aclose()
            if self._guarded is not None:
                await self._guarded.aclose()

    def _receiver(self, delivery: Delivery) -> Receiver | None:
        sub = self.by_name.get(delivery.subscription)
        if sub is not None:
            return sub
        hook = self.queue.webhook(delivery.conversation_id, delivery.subscription)
        return None if hook is None else HookReceiver(hook)

    async def _attempt(self, client: Any, delivery: Delivery) -> None:
        try:
            sub = await asyncio.to_thread(self._receiver, delivery)
            if sub is None:
                raise LookupError(f"no subscription {delivery.subscription!r} any more")
            at = datetime.now(UTC)
            headers = signed_headers(sub.secret(), delivery.webhook_id, delivery.body, at)
            post = (self._guarded or client).post if sub.guarded else client.post
            resp = await post(sub.target, content=delivery.body, headers=headers)
            if 200 <= resp.status_code < 300:
                await asyncio.to_thread(self.queue.delivered, delivery.id)
                return
            error = f"HTTP {resp.status_code}"
        except Exception as exc:  # no answer, a timeout, a bad secret: tried again or dead
            error = f"{type(exc).__name__}: {exc}"
        attempt = delivery.attempts + 1
        retry = None
        if attempt < self.attempts:
            retry = time.time() + next_delay(attempt, self.base_delay)
        else:
            log.warning(
                "webhook %s of %s to %s: dead after %d attempts (%s)",
                delivery.webhook_id,
                delivery.conversation_id,
                delivery.subscription,
                attempt,
                error,
            )
        await asyncio.to_thread(self.queue.failed, delivery.id, error, retry_at=retry)
