"""``SqliteScheduler``: the embedded runtime's schedules, a table in the conversation store's
file; the runtime's timer asks it which are :meth:`~SqliteScheduler.due` and fires them
(:func:`~workers.core.schedules.fire_schedule`). A firing is recorded after its message is
accepted: a crash between the two fires it again at the next start, and the inbox's dedupe
key drops the repeat. A one-off that fired stays as a done row (``next_fire`` null) for
:data:`~workers.core.model.DONE_KEPT_SECONDS`, so the request that made it, sent again, finds
it instead of making another."""

from __future__ import annotations

import sqlite3

from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.core.model import DONE_KEPT_SECONDS, Schedule
from workers.errors import BadInput

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    next_fire REAL,
    done_at REAL,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS schedules_by_conversation ON schedules (conversation_id);
CREATE INDEX IF NOT EXISTS schedules_by_time ON schedules (next_fire);
"""


def too_many(count: int) -> BadInput:
    return BadInput(
        "too_many_schedules",
        f"conversation_id: it has {count} schedules, the most it may keep; delete one first",
        field="conversation_id",
    )


class SqliteScheduler:
    """``Scheduler`` on ``database`` (it creates its table there)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        database.connection().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._database.connection()

    def add(self, schedule: Schedule, *, limit: int) -> Schedule:
        with self._database.transaction() as tx:
            tx.execute(
                "DELETE FROM schedules WHERE conversation_id = ? AND done_at < ?",
                (schedule.conversation_id, schedule.created_at - DONE_KEPT_SECONDS),
            )
            row = tx.execute(
                "SELECT body FROM schedules WHERE schedule_id = ?", (schedule.schedule_id,)
            ).fetchone()
            if row is not None:
                kept = Schedule.from_json(row[0])
                if kept.conversation_id == schedule.conversation_id:
                    return kept
                raise BadInput("schedule_exists", "schedule_id: taken", field="schedule_id")
            (count,) = tx.execute(
                "SELECT count(*) FROM schedules WHERE conversation_id = ?"
                " AND next_fire IS NOT NULL",
                (schedule.conversation_id,),
            ).fetchone()
            if count >= limit:
                raise too_many(count)
            tx.execute(
                "INSERT INTO schedules (schedule_id, conversation_id, next_fire, body)"
                " VALUES (?, ?, ?, ?)",
                (
                    schedule.schedule_id,
                    schedule.conversation_id,
                    schedule.next_fire,
                    schedule.to_json(),
                ),
            )
        return schedule

    def get(self, conversation_id: str, schedule_id: str) -> Schedule | None:
        row = (
            self._db()
            .execute(
                "SELECT body FROM schedules WHERE schedule_id = ? AND conversation_id = ?",
                (schedule_id, conversation_id),
            )
            .fetchone()
        )
        return None if row is None else Schedule.from_json(row[0])

    def for_conversation(self, conversation_id: str) -> list[Schedule]:
        rows = self._db().execute(
            "SELECT body FROM schedules WHERE conversation_id = ? AND next_fire IS NOT NULL"
            " ORDER BY next_fire, schedule_id",
            (conversation_id,),
        )
        return [Schedule.from_json(body) for (body,) in rows]

    def remove(self, conversation_id: str, schedule_id: str) -> bool:
        with self._database.transaction() as tx:
            gone = tx.execute(
                "DELETE FROM schedules WHERE schedule_id = ? AND conversation_id = ?"
                " AND next_fire IS NOT NULL",
                (schedule_id, conversation_id),
            )
        return gone.rowcount > 0

    def fired(
        self, schedule: Schedule, *, next_fire: float | None, outcome: str, now: float
    ) -> None:
        with self._database.transaction() as tx:
            row = tx.execute(
                "SELECT body FROM schedules WHERE schedule_id = ?", (schedule.schedule_id,)
            ).fetchone()
            if row is None:  # deleted while it fired
                return
            done = Schedule.from_json(row[0]).after_firing(next_fire, outcome, now)
            tx.execute(
                "UPDATE schedules SET next_fire = ?, done_at = ?, body = ? WHERE schedule_id = ?",
                (next_fire, now if next_fire is None else None, done.to_json(), done.schedule_id),
            )

    def forget(self, conversation_id: str) -> int:
        with self._database.transaction() as tx:
            gone = tx.execute("DELETE FROM schedules WHERE conversation_id = ?", (conversation_id,))
        return gone.rowcount

    def due(self, now: float, *, limit: int = 100) -> list[tuple[str, str, float]]:
        """The schedules due at ``now``, the earliest first: (conversation, schedule, the
        time it was due)."""
        rows = self._db().execute(
            "SELECT conversation_id, schedule_id, next_fire FROM schedules"
            " WHERE next_fire IS NOT NULL AND next_fire <= ? ORDER BY next_fire LIMIT ?",
            (now, limit),
        )
        return [(str(c), str(s), float(t)) for c, s, t in rows]
