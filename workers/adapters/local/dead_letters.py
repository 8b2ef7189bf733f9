"""The embedded runtime's dead letters: messages whose turn failed for good (retries spent, a
permanent error), kept in the inbox as ``failed`` with their error. ``agentworker dlq list``
and ``agentworker dlq redrive`` (``--target local``) work on them here.

A redrive accepts the message again as a new inbox message of its conversation, from the
same sender (it keeps the original's sender, tenant and owner), with a dedupe key derived
from the original's id (:func:`redrive_copy`): running the same redrive twice accepts it
once, and the original is marked ``redriven`` so it is listed no more.

These functions open the state directory's SQLite file directly, whether a server runs on
it or not: SQLite in WAL mode lets this process write while the server holds its lock on the
directory, and the write is the one ``accept`` makes, a pending inbox entry, without taking
the lease. A running server's sweeper starts the conversation's run at its next sweep
(``AGENTWORKER_SWEEP_INTERVAL_SECONDS``), or the run already live sees the message (its
release fails on the moved inbox sequence, so it loops); a stopped server's next start
sweeps it. The server's HTTP API would work only while a server runs, and would need an
operators' API that its users must not reach.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from events.inbound import DoubleTextingPolicy, InboundMessage, new_id
from workers.adapters.clock import SystemClock
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.config import Settings
from workers.core.model import InboxEntry
from workers.core.ports import Clock
from workers.errors import BadInput, ConfigError, NotFound

__all__ = [
    "REDRIVE_KEY_PREFIX",
    "FailedMessage",
    "LocalDeadLetters",
    "Redriven",
    "opened",
    "redrive_copy",
]

REDRIVE_KEY_PREFIX = "redrive:"
"""The dedupe key of a redriven message: this prefix and the failed message's id."""


@dataclass(frozen=True)
class FailedMessage:
    """A message whose turn failed for good (``redriven``: accepted again since)."""

    seq: int
    message: InboundMessage
    error: str
    redriven: bool = False

    @classmethod
    def of(cls, entry: InboxEntry) -> FailedMessage:
        return cls(entry.seq, entry.message, entry.error or "", entry.status == "redriven")

    @property
    def conversation_id(self) -> str:
        return self.message.conversation_id

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def received_at(self) -> datetime:
        return self.message.received_at


@dataclass(frozen=True)
class Redriven:
    """What a redrive did with one failed message."""

    failed: FailedMessage
    message_id: str
    """The id of its copy in the inbox."""
    already: bool = False
    """It had been redriven before: nothing new was accepted."""
    rejected: bool = False
    """The conversation's double-texting policy (``reject``, a run live) refused the copy:
    the sender got its notice; redrive it again later."""


def redrive_copy(msg: InboundMessage, *, now: datetime) -> InboundMessage:
    """``msg`` as a new inbox message: a fresh id and receipt time, the dedupe key
    ``redrive:<its id>``, the same conversation, sender, tenant, owner and content. It does
    not set the conversation's policy again (the policy may have changed since)."""
    return msg.model_copy(
        update={
            "message_id": new_id(),
            "dedupe_key": REDRIVE_KEY_PREFIX + msg.message_id,
            "received_at": now,
            "policy": None,
            "metadata": {**msg.metadata, "redrive_of": msg.message_id},
        }
    )


class LocalDeadLetters:
    """The failed messages of one embedded state (its SQLite store)."""

    def __init__(
        self,
        store: SqliteConversationStore,
        *,
        default_policy: DoubleTextingPolicy = "enqueue",
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._default_policy = default_policy
        self._clock = clock or SystemClock()

    def failed(self, *, conversation_id: str | None = None) -> list[FailedMessage]:
        """The messages failed for good and not redriven, across conversations (or of
        one), oldest first."""
        entries = self._store.failed_inbox(conversation_id=conversation_id)
        return sorted((FailedMessage.of(e) for e in entries), key=lambda f: f.received_at)

    def redrive(
        self, message_ids: Sequence[str] | None = None, *, conversation_id: str | None = None
    ) -> list[Redriven]:
        """Accept again the failed messages ``message_ids`` (``None``: every one, or every
        one of ``conversation_id``). An id that names no failed message is ``NotFound``, an
        id failed in several conversations ``BadInput`` (name one): both before anything is
        accepted. A message redriven before is reported ``already``, not accepted twice."""
        if message_ids is None:
            chosen = self.failed(conversation_id=conversation_id)
        else:
            chosen = self._named(list(dict.fromkeys(message_ids)), conversation_id)
        return [self._redrive(failed) for failed in chosen]

    def _named(self, ids: list[str], conversation_id: str | None) -> list[FailedMessage]:
        entries = self._store.failed_inbox(
            conversation_id=conversation_id, message_ids=ids, redriven=True
        )
        found: dict[str, list[FailedMessage]] = {}
        for entry in entries:
            failed = FailedMessage.of(entry)
            found.setdefault(failed.message_id, []).append(failed)
        missing = [i for i in ids if i not in found]
        if missing:
            where = "in the state directory"
            if conversation_id is not None:
                where = f"in conversation {conversation_id!r}"
            raise NotFound.dead_letters(missing, kind="failed message", where=where)
        for message_id, matches in found.items():
            if len(matches) > 1:
                conversations = ", ".join(sorted({m.conversation_id for m in matches}))
                raise BadInput(
                    "ambiguous_id",
                    f"id: message {message_id!r} failed in several conversations"
                    f" ({conversations}); name one with --conversation",
                    field="id",
                )
        return [found[i][0] for i in ids]

    def _redrive(self, failed: FailedMessage) -> Redriven:
        now = self._clock.now()
        copy = redrive_copy(failed.message, now=datetime.fromtimestamp(now, UTC))
        # Not the lease: a running server's sweeper, or its next start, runs it.
        result = self._store.append_inbox(
            copy, now=now, default_policy=self._default_policy, lease_ttl=None
        )
        # After the copy: a crash between the two leaves it failed, and the next redrive
        # finds the copy by its dedupe key and marks it then.
        self._store.mark_redriven(failed.conversation_id, failed.seq)
        return Redriven(
            failed, result.message_id, already=result.duplicate, rejected=result.rejected
        )


@contextmanager
def opened(settings: Settings) -> Iterator[LocalDeadLetters]:
    """The failed messages of the state directory ``settings`` name, its database open for
    the block (``ConfigError`` when it holds no embedded state: nothing is created)."""
    if not settings.db_path.is_file():
        raise ConfigError(
            f"{settings.source('state_dir')}={settings.state_dir}: no embedded state there"
            f" ({settings.db_path.name} is missing)"
        )
    store = SqliteConversationStore(settings.db_path)
    try:
        yield LocalDeadLetters(store, default_policy=settings.double_texting)
    finally:
        store.close()
