"""``SqliteConversationStore``: the embedded runtime's state in one SQLite file (WAL).

The file's connections and transactions are a :class:`SqliteDatabase`, which the ticket store
(:class:`~workers.adapters.local.sqlite_tickets.SqliteTicketStore`) shares. Every write that
must be atomic is one of its ``BEGIN IMMEDIATE`` transactions, so dedupe, lease, fencing and
outbox writes are single transactions like their DynamoDB counterparts
(``TransactWriteItems`` with conditions).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from events.identity import LOCAL_TENANT, LOCAL_USER
from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import Notice, OutboxPayload, parse_pending_request
from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.core.model import (
    AcceptResult,
    Access,
    CallerValues,
    ConversationState,
    ConversationSummary,
    History,
    InboxEntry,
    Lease,
    LogEntry,
    OutboxEntry,
    PendingWork,
    TurnCommit,
    admitted,
)
from workers.core.policies import accept_decision, window_start
from workers.errors import LeaseLost, NotFound, TurnSuperseded

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'idle',
    inbox_seq INTEGER NOT NULL DEFAULT 0,
    outbox_seq INTEGER NOT NULL DEFAULT 0,
    log_seq INTEGER NOT NULL DEFAULT 0,
    last_token INTEGER NOT NULL DEFAULT 0,
    lease_token INTEGER,
    lease_expires_at REAL,
    lease_execution_id TEXT,
    pending_approval TEXT,
    approval_task_token TEXT,
    claimed_seq INTEGER,
    tenant TEXT,
    owner TEXT,
    caller_values TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, dedupe_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (conversation_id, seq)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS inbox_failed ON inbox (conversation_id, seq)
    WHERE status = 'failed';
CREATE TABLE IF NOT EXISTS outbox (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    delivered_at REAL,
    sinks TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_undelivered ON outbox (conversation_id, seq)
    WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS log (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    role TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    conversation_id TEXT PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS connections (
    connection_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (connection_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS connections_by_conversation ON connections (conversation_id);
CREATE TABLE IF NOT EXISTS fencing (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    floor INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quotas (
    key TEXT PRIMARY KEY,
    window_start REAL NOT NULL,
    used INTEGER NOT NULL
) WITHOUT ROWID;
"""

_OUTBOX = TypeAdapter[OutboxPayload](OutboxPayload)
_CONVERSATION_TABLES = (
    ("inbox", "inbox"),
    ("outbox", "outbox"),
    ("log", "log"),
    ("checkpoint", "checkpoints"),
    ("connections", "connections"),
    ("conversation", "conversations"),
)
"""Every table holding a conversation's rows: what ``forget`` erases, by kind."""


class SqliteConversationStore:
    """Conversations, inbox, leases, checkpoints, log, outbox and connections, in the SQLite
    file at ``path`` (opened here, closed by :meth:`close`)."""

    def __init__(self, path: Path) -> None:
        self.database = SqliteDatabase(path)
        """The file's connections: other stores kept in the same file take it."""
        self._conn().executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a state file written by an earlier version up to this schema."""
        db = self._conn()
        columns = {row[1] for row in db.execute("PRAGMA table_info(conversations)")}
        if "approval_task_token" not in columns:
            db.execute("ALTER TABLE conversations ADD COLUMN approval_task_token TEXT")
        outbox = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
        if "sinks" not in outbox:
            db.execute("ALTER TABLE outbox ADD COLUMN sinks TEXT NOT NULL DEFAULT '[]'")
        if "claimed_seq" not in columns:
            db.execute("ALTER TABLE conversations ADD COLUMN claimed_seq INTEGER")
        if "tenant" not in columns:
            # Conversations from before ownership were the local user's (no auth then).
            db.execute(f"ALTER TABLE conversations ADD COLUMN tenant TEXT DEFAULT '{LOCAL_TENANT}'")
            db.execute(f"ALTER TABLE conversations ADD COLUMN owner TEXT DEFAULT '{LOCAL_USER.id}'")
        if "caller_values" not in columns:
            db.execute("ALTER TABLE conversations ADD COLUMN caller_values TEXT")
        db.execute(  # after the owner's columns exist: a file from before has them now
            "CREATE INDEX IF NOT EXISTS conversations_by_owner"
            " ON conversations (tenant, owner, updated_at)"
        )
        inbox = {row[1] for row in db.execute("PRAGMA table_info(inbox)")}
        if "error" not in inbox:
            # Messages failed before were marked consumed: they stay so.
            db.execute("ALTER TABLE inbox ADD COLUMN error TEXT")

    # connections and transactions: the database's, shared with the ticket store --------

    def _conn(self) -> sqlite3.Connection:
        return self.database.connection()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.database.transaction()

    def close(self) -> None:
        """Close the database (the connections of every store sharing it)."""
        self.database.close()

    # inbox ------------------------------------------------------------------------------

    def append_inbox(
        self,
        msg: InboundMessage,
        *,
        now: float,
        default_policy: DoubleTextingPolicy,
        lease_ttl: float | None = None,
        access: Access | None = None,
    ) -> AcceptResult:
        cid = msg.conversation_id
        with self._tx() as db:
            conv = db.execute(
                "SELECT policy, inbox_seq, lease_token, lease_expires_at, tenant, owner"
                " FROM conversations WHERE conversation_id = ?",
                (cid,),
            ).fetchone()
            owned = None if conv is None else (conv[4], conv[5])
            if access is not None and not admitted(access, owned):
                raise NotFound.conversation(cid)
            row = db.execute(
                "SELECT message_id, seq, status FROM inbox"
                " WHERE conversation_id = ? AND dedupe_key = ?",
                (cid, msg.effective_dedupe_key),
            ).fetchone()
            if row is not None:
                return AcceptResult(row[0], row[1], duplicate=True, rejected=row[2] == "rejected")
            if conv is None:
                policy = msg.policy or default_policy
                # Tokens go on from the erased conversations' (a run of one erased
                # mid-turn must not find its token valid again under the same id).
                db.execute(
                    "INSERT INTO conversations"
                    " (conversation_id, policy, tenant, owner, created_at, updated_at, last_token)"
                    " VALUES (?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(floor), 0) FROM fencing))",
                    (cid, policy, msg.tenant, msg.owner, now, now),
                )
                seq, busy = 1, False
            else:
                policy = msg.policy or conv[0]
                seq = conv[1] + 1
                busy = conv[2] is not None and (conv[3] or 0.0) > now
            decision = accept_decision(policy, lease_live=busy, lease_ttl=lease_ttl)
            db.execute(
                "UPDATE conversations SET inbox_seq = ?, policy = ?, updated_at = ?"
                " WHERE conversation_id = ?",
                (seq, policy, now, cid),
            )
            db.execute(
                "INSERT INTO inbox (conversation_id, seq, message_id, dedupe_key, status, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    cid,
                    seq,
                    msg.message_id,
                    msg.effective_dedupe_key,
                    decision.status,
                    msg.model_dump_json(),
                ),
            )
            if decision.notice is not None:
                notice = Notice(
                    conversation_id=cid, in_reply_to=[msg.message_id], text=decision.notice
                )
                self._append_outbox(db, cid, [notice])
            lease = None
            if decision.lease_ttl is not None:
                lease = self._take_lease(db, cid, now, decision.lease_ttl)
            return AcceptResult(
                msg.message_id, seq, duplicate=False, rejected=decision.rejected, lease=lease
            )

    def pending_inbox(self, conversation_id: str, *, limit: int = 100) -> list[InboxEntry]:
        rows = self._conn().execute(
            "SELECT seq, body FROM inbox WHERE conversation_id = ? AND status = 'pending'"
            " ORDER BY seq LIMIT ?",
            (conversation_id, limit),
        )
        return [InboxEntry(seq, InboundMessage.model_validate_json(body)) for seq, body in rows]

    # leases -----------------------------------------------------------------------------

    def try_acquire_lease(self, conversation_id: str, *, now: float, ttl: float) -> Lease | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT last_token, lease_token, lease_expires_at FROM conversations"
                " WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"unknown conversation {conversation_id}", field="conversation_id")
            _, lease_token, expires = row
            if lease_token is not None and (expires or 0.0) > now:
                return None
            return self._take_lease(db, conversation_id, now, ttl)

    @staticmethod
    def _take_lease(db: sqlite3.Connection, conversation_id: str, now: float, ttl: float) -> Lease:
        """A fresh lease with the next fencing token (inside the caller's transaction)."""
        db.execute(
            "UPDATE conversations SET last_token = last_token + 1, lease_token = last_token + 1,"
            " lease_expires_at = ?, lease_execution_id = NULL, updated_at = ?"
            " WHERE conversation_id = ?",
            (now + ttl, now, conversation_id),
        )
        (token,) = db.execute(
            "SELECT lease_token FROM conversations WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        return Lease(conversation_id, token, now + ttl)

    def _holding(self, db: sqlite3.Connection, conversation_id: str, token: int) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT lease_token, lease_execution_id, inbox_seq, last_token FROM conversations"
            " WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None or row[0] != token:
            holder = None if row is None else row[0]
            raise LeaseLost(
                f"token {token} no longer holds {conversation_id} (lease token: {holder})"
            )
        return tuple(row)

    def renew_lease(
        self,
        conversation_id: str,
        token: int,
        *,
        now: float,
        ttl: float,
        bind: str | None = None,
        claim: bool = True,
    ) -> ConversationState:
        with self._tx() as db:
            _, bound, _, _ = self._holding(db, conversation_id, token)
            claimed = ", claimed_seq = inbox_seq" if claim else ""
            db.execute(
                f"UPDATE conversations SET lease_expires_at = ?{claimed} WHERE conversation_id = ?",
                (now + ttl, conversation_id),
            )
            if bind is not None:
                if bound is not None and bound != bind:
                    raise LeaseLost(f"token {token} is already bound to execution {bound}")
                db.execute(
                    "UPDATE conversations SET lease_execution_id = ?,"
                    " status = CASE WHEN status = 'idle' THEN 'running' ELSE status END,"
                    " updated_at = ? WHERE conversation_id = ?",
                    (bind, now, conversation_id),
                )
            state = self._state(db, conversation_id)
            assert state is not None  # _holding found the row in this transaction
            return state

    def handover_lease(self, conversation_id: str, token: int, *, now: float, ttl: float) -> Lease:
        with self._tx() as db:
            _, _, _, last_token = self._holding(db, conversation_id, token)
            new_token = last_token + 1
            db.execute(
                "UPDATE conversations SET last_token = ?, lease_token = ?, lease_expires_at = ?,"
                " lease_execution_id = NULL, updated_at = ? WHERE conversation_id = ?",
                (new_token, new_token, now + ttl, now, conversation_id),
            )
            return Lease(conversation_id, new_token, now + ttl)

    def hold_for_approval(
        self, conversation_id: str, token: int, task_token: str, *, now: float, ttl: float
    ) -> None:
        with self._tx() as db:
            self._holding(db, conversation_id, token)
            db.execute(
                "UPDATE conversations SET lease_expires_at = ?, approval_task_token = ?"
                " WHERE conversation_id = ?",
                (now + ttl, task_token, conversation_id),
            )

    def release_lease(
        self,
        conversation_id: str,
        token: int,
        *,
        seen_inbox_seq: int,
        now: float,
        delivered: Sequence[int] = (),
    ) -> bool:
        with self._tx() as db:
            _, _, inbox_seq, _ = self._holding(db, conversation_id, token)
            self._mark_delivered(db, conversation_id, delivered, now)
            if inbox_seq != seen_inbox_seq:
                return False
            db.execute(
                "UPDATE conversations SET lease_token = NULL, lease_expires_at = NULL,"
                " lease_execution_id = NULL, approval_task_token = NULL, claimed_seq = NULL,"
                " status = CASE WHEN status = 'running' THEN 'idle' ELSE status END"
                " WHERE conversation_id = ?",
                (conversation_id,),
            )
            return True

    def expire_leases(self, *, now: float) -> int:
        """Expire every live lease (embedded start-up: the state directory's lock proves the
        process that held them is gone). Returns how many were taken over."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE conversations SET lease_expires_at = ? WHERE lease_token IS NOT NULL"
                " AND lease_expires_at > ?",
                (now, now),
            )
            return cur.rowcount

    def conversations_to_sweep(self, *, now: float, limit: int = 100) -> list[str]:
        rows = self._conn().execute(
            "SELECT c.conversation_id FROM conversations c"
            " WHERE (c.lease_token IS NOT NULL AND c.lease_expires_at <= ?)"
            " OR (c.lease_token IS NULL AND EXISTS (SELECT 1 FROM inbox i"
            " WHERE i.conversation_id = c.conversation_id AND i.status = 'pending')) LIMIT ?",
            (now, limit),
        )
        return [r[0] for r in rows]

    # state ------------------------------------------------------------------------------

    def get_conversation(self, conversation_id: str) -> ConversationState | None:
        return self._state(self._conn(), conversation_id)

    @staticmethod
    def _state(db: sqlite3.Connection, conversation_id: str) -> ConversationState | None:
        row = db.execute(
            "SELECT conversation_id, policy, status, inbox_seq, last_token, lease_token,"
            " lease_expires_at, lease_execution_id, pending_approval, created_at, updated_at,"
            " approval_task_token, (SELECT COUNT(*) FROM inbox i WHERE i.conversation_id = ?"
            " AND i.status = 'pending'), (SELECT COUNT(*) FROM outbox o"
            " WHERE o.conversation_id = ? AND o.delivered_at IS NULL), tenant, owner, claimed_seq,"
            " caller_values FROM conversations WHERE conversation_id = ?",
            (conversation_id, conversation_id, conversation_id),
        ).fetchone()
        if row is None:
            return None
        approval = parse_pending_request(row[8]) if row[8] else None
        return ConversationState(
            conversation_id=row[0],
            policy=row[1],
            status=row[2],
            inbox_seq=row[3],
            last_token=row[4],
            lease_token=row[5],
            lease_expires_at=row[6],
            lease_execution_id=row[7],
            pending_approval=approval,
            created_at=row[9],
            updated_at=row[10],
            approval_task_token=row[11],
            pending_count=row[12],
            undelivered_count=row[13],
            tenant=row[14],
            owner=row[15],
            claimed_seq=row[16],
            values=CallerValues.from_json(row[17]),
        )

    def create_conversation(
        self,
        conversation_id: str,
        *,
        tenant: str,
        owner: str,
        policy: DoubleTextingPolicy,
        values: CallerValues,
        now: float,
    ) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO conversations (conversation_id, policy, tenant, owner,"
                " caller_values, created_at, updated_at, last_token)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(floor), 0) FROM fencing))",
                (conversation_id, policy, tenant, owner, values.to_json(), now, now),
            )
            return cur.rowcount == 1

    def list_conversations(
        self, tenant: str, owner: str, *, limit: int, offset: int = 0
    ) -> list[ConversationSummary]:
        rows = (
            self._conn()
            .execute(
                "SELECT conversation_id, status, created_at, updated_at, caller_values"
                " FROM conversations WHERE tenant = ? AND owner = ?"
                " ORDER BY updated_at DESC, conversation_id LIMIT ? OFFSET ?",
                (tenant, owner, limit, offset),
            )
            .fetchall()
        )
        return [
            ConversationSummary(row[0], row[1], row[2], row[3], CallerValues.from_json(row[4]))
            for row in rows
        ]

    def set_values(self, conversation_id: str, values: CallerValues, *, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE conversations SET caller_values = ?, updated_at = ?"
                " WHERE conversation_id = ?",
                (values.to_json(), now, conversation_id),
            )
            return cur.rowcount == 1

    def load_checkpoint(self, conversation_id: str) -> bytes | None:
        row = (
            self._conn()
            .execute("SELECT data FROM checkpoints WHERE conversation_id = ?", (conversation_id,))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def load_pending(
        self, state: ConversationState, *, window: int, limit: int = 100
    ) -> PendingWork:
        # Three local reads cost microseconds here; DynamoDB does it in one round trip.
        cid = state.conversation_id
        return PendingWork(
            self.pending_inbox(cid, limit=limit),
            self.load_checkpoint(cid),
            self.load_log(cid, limit=window),
        )

    def load_log(self, conversation_id: str, *, limit: int) -> list[LogEntry]:
        rows = (
            self._conn()
            .execute(
                "SELECT message_id, role, data FROM log WHERE conversation_id = ?"
                " ORDER BY seq DESC LIMIT ?",
                (conversation_id, limit),
            )
            .fetchall()
        )
        return [LogEntry(m, r, bytes(d)) for m, r, d in reversed(rows)]

    def commit_turn(self, conversation_id: str, commit: TurnCommit) -> list[OutboxEntry]:
        with self._tx() as db:
            _, _, inbox_seq, _ = self._holding(db, conversation_id, commit.token)
            if commit.expect_inbox_seq is not None and inbox_seq != commit.expect_inbox_seq:
                raise TurnSuperseded(
                    f"inbox moved from {commit.expect_inbox_seq} to {inbox_seq} during the turn"
                )
            if commit.consumed:
                status = "consumed" if commit.failed is None else "failed"
                db.executemany(
                    "UPDATE inbox SET status = ?, error = ? WHERE conversation_id = ? AND seq = ?"
                    " AND status = 'pending'",
                    [(status, commit.failed, conversation_id, s) for s in commit.consumed],
                )
            if commit.checkpoint is not None:
                db.execute(
                    "INSERT INTO checkpoints (conversation_id, data) VALUES (?, ?)"
                    " ON CONFLICT (conversation_id) DO UPDATE SET data = excluded.data",
                    (conversation_id, commit.checkpoint),
                )
            if commit.log:
                (log_seq,) = db.execute(
                    "SELECT log_seq FROM conversations WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchone()
                rows = [
                    (conversation_id, log_seq + i, e.message_id, e.role, e.data)
                    for i, e in enumerate(commit.log, start=1)
                ]
                db.executemany(
                    "INSERT OR IGNORE INTO log (conversation_id, seq, message_id, role, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute(
                    "UPDATE conversations SET log_seq = ? WHERE conversation_id = ?",
                    (log_seq + len(rows), conversation_id),
                )
            written = self._append_outbox(db, conversation_id, commit.outbox)
            approval = (
                commit.pending_approval.model_dump_json() if commit.pending_approval else None
            )
            status = commit.status if commit.status != "idle" else "running"
            db.execute(
                "UPDATE conversations SET status = ?, pending_approval = ?,"
                " approval_task_token = NULL, claimed_seq = NULL,"
                " lease_expires_at = COALESCE(?, lease_expires_at) WHERE conversation_id = ?",
                (status, approval, commit.lease_until, conversation_id),
            )
            return written

    # outbox -----------------------------------------------------------------------------

    def _append_outbox(
        self, db: sqlite3.Connection, conversation_id: str, payloads: Sequence[OutboxPayload]
    ) -> list[OutboxEntry]:
        if not payloads:
            return []
        (seq,) = db.execute(
            "SELECT outbox_seq FROM conversations WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        entries = [OutboxEntry(seq + i, p) for i, p in enumerate(payloads, start=1)]
        db.executemany(
            "INSERT INTO outbox (conversation_id, seq, type, body) VALUES (?, ?, ?, ?)",
            [
                (conversation_id, e.seq, e.payload.type, e.payload.model_dump_json())
                for e in entries
            ],
        )
        db.execute(
            "UPDATE conversations SET outbox_seq = ? WHERE conversation_id = ?",
            (seq + len(payloads), conversation_id),
        )
        return entries

    def pending_outbox(self, conversation_id: str) -> list[OutboxEntry]:
        rows = self._conn().execute(
            "SELECT seq, body, sinks FROM outbox WHERE conversation_id = ?"
            " AND delivered_at IS NULL ORDER BY seq",
            (conversation_id,),
        )
        return [
            OutboxEntry(seq, _OUTBOX.validate_json(body), sinks_done=frozenset(json.loads(sinks)))
            for seq, body, sinks in rows
        ]

    def mark_sinks(self, conversation_id: str, seq: int, sinks: Collection[str]) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT sinks FROM outbox WHERE conversation_id = ? AND seq = ?",
                (conversation_id, seq),
            ).fetchone()
            if row is None:
                return
            done = sorted(set(json.loads(row[0])) | set(sinks))
            db.execute(
                "UPDATE outbox SET sinks = ? WHERE conversation_id = ? AND seq = ?",
                (json.dumps(done), conversation_id, seq),
            )

    def mark_delivered(self, conversation_id: str, seqs: list[int], *, now: float) -> None:
        with self._tx() as db:
            self._mark_delivered(db, conversation_id, seqs, now)

    @staticmethod
    def _mark_delivered(
        db: sqlite3.Connection, conversation_id: str, seqs: Sequence[int], now: float
    ) -> None:
        db.executemany(
            "UPDATE outbox SET delivered_at = ? WHERE conversation_id = ? AND seq = ?"
            " AND delivered_at IS NULL",
            [(now, conversation_id, s) for s in seqs],
        )

    def history(self, conversation_id: str) -> History | None:
        state = self.get_conversation(conversation_id)
        if state is None:
            return None
        db = self._conn()
        inbox = [
            InboxEntry(seq, InboundMessage.model_validate_json(body), status, error)
            for seq, body, status, error in db.execute(
                "SELECT seq, body, status, error FROM inbox WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            )
        ]
        outbox = [
            OutboxEntry(seq, _OUTBOX.validate_json(body), delivered is not None)
            for seq, body, delivered in db.execute(
                "SELECT seq, body, delivered_at FROM outbox WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            )
        ]
        return History(state, inbox, outbox)

    # failed messages (``agentworker dlq``) -----------------------------------------------

    def failed_inbox(
        self,
        *,
        conversation_id: str | None = None,
        message_ids: Collection[str] | None = None,
        redriven: bool = False,
        limit: int = 1000,
    ) -> list[InboxEntry]:
        """Inbox entries whose turn failed for good, across conversations (or of one), by
        conversation and sequence; ``message_ids`` narrows them to those ids; with
        ``redriven``, the ones already redriven too."""
        statuses = ("failed", "redriven") if redriven else ("failed",)
        where = [f"status IN ({', '.join('?' for _ in statuses)})"]
        params: list[Any] = list(statuses)
        if conversation_id is not None:
            where.append("conversation_id = ?")
            params.append(conversation_id)
        if message_ids is not None:
            where.append(f"message_id IN ({', '.join('?' for _ in message_ids)})")
            params.extend(message_ids)
        rows = self._conn().execute(
            f"SELECT seq, body, status, error FROM inbox WHERE {' AND '.join(where)}"
            " ORDER BY conversation_id, seq LIMIT ?",
            (*params, limit),
        )
        return [
            InboxEntry(seq, InboundMessage.model_validate_json(body), status, error)
            for seq, body, status, error in rows
        ]

    def mark_redriven(self, conversation_id: str, seq: int) -> None:
        """Mark a failed entry ``redriven`` (its copy is in the inbox); a no-op for one that
        is not ``failed``."""
        with self._tx() as db:
            db.execute(
                "UPDATE inbox SET status = 'redriven' WHERE conversation_id = ? AND seq = ?"
                " AND status = 'failed'",
                (conversation_id, seq),
            )

    def spend_quota(
        self, key: str, amount: int, *, limit: int, window_seconds: float, now: float
    ) -> float | None:
        start = window_start(now, window_seconds)
        with self._tx() as db:
            row = db.execute(
                "SELECT window_start, used FROM quotas WHERE key = ?", (key,)
            ).fetchone()
            used = row[1] if row is not None and row[0] == start else 0
            if used + amount > limit:
                return start + window_seconds - now
            db.execute(
                "INSERT OR REPLACE INTO quotas (key, window_start, used) VALUES (?, ?, ?)",
                (key, start, used + amount),
            )
            return None

    def expired_conversations(self, *, before: float, limit: int = 100) -> list[str]:
        rows = self._conn().execute(
            "SELECT conversation_id FROM conversations c WHERE updated_at < ?"
            " AND (lease_token IS NULL OR lease_expires_at <= ?)"
            " AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.conversation_id = c.conversation_id"
            " AND i.status = 'pending') ORDER BY updated_at LIMIT ?",
            (before, before, limit),
        )
        return [row[0] for row in rows]

    def forget(
        self, conversation_id: str, *, idle_before: float | None = None
    ) -> dict[str, int] | None:
        """Every row of the conversation, in one transaction (with ``idle_before``, only if
        it is still idle: checked in the same transaction). The text leaves the files too:
        the database zeroes what it frees (``secure_delete``) and the write-ahead log, which
        still holds the old pages, is checkpointed into the database and emptied. The
        conversation's last fencing token becomes the floor of every new conversation's, so
        a run cut off mid-turn cannot write into one created again under the id."""
        with self._tx() as db:
            state = self._state(db, conversation_id)
            if state is None:
                return None
            if idle_before is not None and (
                state.updated_at >= idle_before
                or state.lease_live(idle_before)
                or state.pending_count
            ):
                return None
            removed = {}
            for kind, table in _CONVERSATION_TABLES:
                cur = db.execute(
                    f"DELETE FROM {table} WHERE conversation_id = ?", (conversation_id,)
                )
                removed[kind] = cur.rowcount
            db.execute(
                "INSERT INTO fencing (id, floor) VALUES (0, ?)"
                " ON CONFLICT (id) DO UPDATE SET floor = MAX(floor, excluded.floor)",
                (state.last_token,),
            )
        self.database.checkpoint()
        return removed

    # websocket connections --------------------------------------------------------------

    def add_connection(self, connection_id: str, conversation_id: str, *, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO connections (connection_id, conversation_id, created_at)"
                " VALUES (?, ?, ?)",
                (connection_id, conversation_id, now),
            )

    def remove_connection(self, connection_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM connections WHERE connection_id = ?", (connection_id,))

    def list_connections(self, conversation_id: str) -> list[str]:
        rows = self._conn().execute(
            "SELECT connection_id FROM connections WHERE conversation_id = ? ORDER BY created_at",
            (conversation_id,),
        )
        return [r[0] for r in rows]

    def clear_connections(self) -> None:
        """Forget every connection (the embedded server's sockets died with its process)."""
        with self._tx() as db:
            db.execute("DELETE FROM connections")
