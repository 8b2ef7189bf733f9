"""``SqliteTicketStore``: the support tickets the agent's tools write, idempotent by key.

A ticket is a row of ``tickets`` (ids from ``AUTOINCREMENT``); an applied side effect is a
row of ``tool_effects`` (idempotency key, ticket id), written in the same transaction as the
ticket, so a replayed tool call (a retried turn) finds it and changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.core.model import Ticket
from workers.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    comments TEXT NOT NULL DEFAULT '[]',
    customer TEXT NOT NULL DEFAULT 'local/local',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ticket_migrations (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tool_effects (
    idempotency_key TEXT PRIMARY KEY,
    ticket_id INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SqliteTicketStore:
    """``TicketStore`` on ``database`` (in the embedded runtime, the conversation store's
    file); it creates its tables there. Closing the database is its opener's business."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        db = database.connection()
        db.executescript(_SCHEMA)
        if "customer" not in {row[1] for row in db.execute("PRAGMA table_info(tickets)")}:
            # Tickets from before customers were the local user's (no auth then).
            db.execute(
                "ALTER TABLE tickets ADD COLUMN customer TEXT NOT NULL DEFAULT 'local/local'"
            )
        with database.transaction() as tx:
            done = tx.execute(
                "INSERT OR IGNORE INTO ticket_migrations (name) VALUES ('customer_keys')"
            )
            if done.rowcount:
                # A backend's conversation's customer was ``conversation/<id>``, which a
                # tenant named "conversation" could have been too: it is now ``/<id>`` (no
                # tenant is empty). Once: a later tenant "conversation" keeps its tickets.
                tx.execute(
                    "UPDATE tickets SET customer = substr(customer, 13)"
                    " WHERE customer = 'conversation/' || conversation_id"
                )

    def create_ticket(
        self,
        *,
        idempotency_key: str,
        conversation_id: str,
        customer: str,
        subject: str,
        body: str,
        priority: str,
        now: float,
    ) -> Ticket:
        """Create ``customer``'s ticket once per ``idempotency_key``; a replay returns the
        first ticket."""
        with self._database.transaction() as db:
            done = _applied(db, idempotency_key)
            if done is not None:
                return _read_ticket(db, done, customer)
            cur = db.execute(
                "INSERT INTO tickets (conversation_id, customer, subject, body, status, priority,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'open', ?, ?, ?)",
                (conversation_id, customer, subject, body, priority, now, now),
            )
            ticket_id = int(cur.lastrowid or 0)
            _record_applied(db, idempotency_key, ticket_id)
            return _read_ticket(db, ticket_id, customer)

    def get_ticket(self, ticket_id: int, *, customer: str) -> Ticket | None:
        """``customer``'s ticket, or ``None`` if it does not exist or is someone else's."""
        try:
            return _read_ticket(self._database.connection(), ticket_id, customer)
        except NotFound:
            return None

    def update_ticket(
        self,
        ticket_id: int,
        *,
        customer: str,
        idempotency_key: str,
        status: str | None,
        priority: str | None,
        comment: str | None,
        now: float,
    ) -> Ticket:
        """Apply an update once per ``idempotency_key``; ``NotFound`` for an unknown ticket
        or another customer's."""
        with self._database.transaction() as db:
            ticket = _read_ticket(db, ticket_id, customer)
            if _applied(db, idempotency_key) is not None:
                return ticket
            comments = [*ticket.comments, comment] if comment else ticket.comments
            db.execute(
                "UPDATE tickets SET status = ?, priority = ?, comments = ?, updated_at = ?"
                " WHERE ticket_id = ?",
                (
                    status or ticket.status,
                    priority or ticket.priority,
                    json.dumps(comments),
                    now,
                    ticket_id,
                ),
            )
            _record_applied(db, idempotency_key, ticket_id)
            return _read_ticket(db, ticket_id, customer)


def _applied(db: sqlite3.Connection, idempotency_key: str) -> int | None:
    """The ticket the tool call ``idempotency_key`` was applied to, if it was."""
    row = db.execute(
        "SELECT ticket_id FROM tool_effects WHERE idempotency_key = ?", (idempotency_key,)
    ).fetchone()
    return None if row is None else int(row[0])


def _record_applied(db: sqlite3.Connection, idempotency_key: str, ticket_id: int) -> None:
    """Record the tool call ``idempotency_key`` as applied to ``ticket_id``, in the caller's
    transaction (the one that applied it)."""
    db.execute(
        "INSERT INTO tool_effects (idempotency_key, ticket_id) VALUES (?, ?)",
        (idempotency_key, ticket_id),
    )


def _read_ticket(db: sqlite3.Connection, ticket_id: int, customer: str) -> Ticket:
    """``customer``'s ticket; ``NotFound`` if there is none or it is someone else's."""
    row = db.execute(
        "SELECT ticket_id, conversation_id, subject, body, status, priority, created_at,"
        " updated_at, comments, customer FROM tickets WHERE ticket_id = ?",
        (ticket_id,),
    ).fetchone()
    ticket = None if row is None else _ticket(row).of(customer)
    if ticket is None:
        raise NotFound.ticket(ticket_id)
    return ticket


def _ticket(row: tuple[Any, ...]) -> Ticket:
    return Ticket(
        ticket_id=row[0],
        conversation_id=row[1],
        subject=row[2],
        body=row[3],
        status=row[4],
        priority=row[5],
        created_at=row[6],
        updated_at=row[7],
        comments=json.loads(row[8]),
        customer=row[9],
    )
