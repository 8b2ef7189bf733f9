"""``DynamoDBConversationStore``: the AWS backend of the core's store port.

Same semantics as :class:`~workers.adapters.local.sqlite_store.SqliteConversationStore` (one
contract suite runs against both), on one DynamoDB table (layout and indexes in
:mod:`workers.adapters.aws.tables`) plus S3 for blobs over the item limit
(:mod:`workers.adapters.aws.offload`: checkpoints, log entries and outbox payloads over
~350 KB are offloaded, never refused).

Every write that must be atomic is one ``UpdateItem`` or one ``TransactWriteItems`` whose
conditions do the fencing (``lease_token = :token``), the deduplication
(``attribute_not_exists``) and the sequencing. A write that needs the next sequence number
reads ``meta`` first and is conditional on what it read; when a condition fails, DynamoDB
returns the old item (``ReturnValuesOnConditionCheckFailure``) and the write is rebuilt from
it, so contention costs a retry, never a wrong answer.

Round trips in the common case (counted in ``store.api_calls``; S3 only for offloaded blobs):
``append_inbox`` 2 (BatchGet meta + dedupe marker, the transaction, which also takes the
lease); ``renew_lease`` (binding on a run's first step), ``try_acquire_lease``,
``handover_lease`` 1 (UpdateItem); ``load_pending`` 1 (BatchGet of the pending inbox, the
checkpoint and the log window, keyed from the renewal's image); ``commit_turn`` 1 (the
transaction, conditional on that image); ``release_lease`` 1 (UpdateItem, or a transaction
with the delivery marks); ``get_conversation``, ``load_checkpoint`` 1 (GetItem);
``pending_inbox``, ``load_log``, ``pending_outbox``, ``list_connections`` 1 (Query);
``mark_delivered`` 1 per sequence; ``conversations_to_sweep`` 1 Query per sweep shard;
``history`` 3; ``add_connection`` 1; ``remove_connection`` 2. A one-message turn: 2 to
accept, 4 for the run.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from events.identity import identity_key
from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import Notice, OutboxPayload, parse_pending_request
from workers.adapters.aws.calls import AwsCalls, ConditionFailed, Item, TransactionCancelled
from workers.adapters.aws.dynamodb_commit import (
    CommitParts,
    check_commit,
    commit_actions,
    lease_lost,
    outbox_blob,
    outbox_item,
)
from workers.adapters.aws.dynamodb_table import (
    MAX_TRANSACTION_ACTIONS,
    DynamoDBTable,
    attempts,
    get_float,
    get_int,
    get_str,
    key,
    key_part,
    number,
    opt_int,
    opt_str,
    string,
)
from workers.adapters.aws.offload import INLINE_LIMIT_BYTES, S3Offload
from workers.adapters.aws.tables import (
    CHECKPOINT_SK,
    CONNECTION_PK_PREFIX,
    CONNECTION_PREFIX,
    CONVERSATION_PREFIX,
    DEDUPE_PREFIX,
    INBOX_PREFIX,
    LOG_ID_PREFIX,
    LOG_LAST_SK,
    LOG_PREFIX,
    META_SK,
    OUTBOX_PREFIX,
    OWNER_INDEX,
    OWNER_INDEX_PK,
    OWNER_INDEX_SK,
    PENDING_COUNT,
    PENDING_INDEX,
    PENDING_INDEX_SK,
    SWEEP_INDEX,
    SWEEP_INDEX_PK,
    SWEEP_INDEX_SK,
    SWEEP_SHARDS,
    TABLE_PK,
    TABLE_SK,
    TTL_ATTRIBUTE,
    UNDELIVERED_COUNT,
    conversation_pk,
    forgotten_key,
    seq_sk,
)
from workers.core.model import (
    AcceptResult,
    Access,
    CallerValues,
    ConversationState,
    ConversationStatus,
    ConversationSummary,
    History,
    InboxEntry,
    InboxStatus,
    Lease,
    LogEntry,
    OutboxEntry,
    PendingWork,
    TurnCommit,
    admitted,
)
from workers.core.policies import AcceptDecision, accept_decision, window_start
from workers.errors import LeaseLost, NotFound, PermanentError, RetryableError, TurnSuperseded

_OUTBOX = TypeAdapter[OutboxPayload](OutboxPayload)
_POLICY = TypeAdapter[DoubleTextingPolicy](DoubleTextingPolicy)
_STATUS = TypeAdapter[ConversationStatus](ConversationStatus)
_INBOX_STATUS = TypeAdapter[InboxStatus](InboxStatus)


_RENEWED_CACHE = 1024
"""Conversations whose last renewal image is kept (a Lambda process serves few at a time)."""

_NEXT_TOKEN = (
    "SET #last_token = #last_token + :one, #lease_token = #last_token + :one,"
    " #lease_expires_at = :expires, #updated_at = :now REMOVE #lease_execution_id"
)
"""A fresh lease with the next fencing token (acquire and handover differ in condition only)."""


class DynamoDBConversationStore:
    """Conversations, inbox, leases, checkpoints, log, outbox and connections on DynamoDB,
    with S3 for blobs too large for an item. Implements ``ConversationStore``; the tickets
    on the same table are :class:`~workers.adapters.aws.dynamodb_tickets.DynamoDBTicketStore`.

    ``dynamodb`` and ``s3`` are boto3 clients built by the composition root. Without ``s3``
    and ``bucket``, a blob over the inline limit is refused with ``PermanentError``.
    ``retention_days`` sets :data:`~workers.adapters.aws.tables.TTL_ATTRIBUTE` on finished
    inbox entries, delivered outbox entries, log entries and dedupe markers (wall-clock
    retention, not the core's clock); pending work never expires.
    """

    def __init__(
        self,
        *,
        dynamodb: Any,
        table_name: str,
        s3: Any | None = None,
        bucket: str | None = None,
        retention_days: int | None = None,
        inline_limit: int = INLINE_LIMIT_BYTES,
    ) -> None:
        self.api_calls = AwsCalls()
        """API calls made so far, by ``service.operation``: round trips for benchmarks."""
        self._table = DynamoDBTable(dynamodb, table_name, self.api_calls)
        self._blobs = S3Offload(s3, bucket, calls=self.api_calls, inline_limit=inline_limit)
        self._retention = None if retention_days is None else retention_days * 86_400
        # The meta image the last lease renewal returned, per conversation: a turn's commit
        # is conditional on it instead of reading meta again (see commit_turn).
        self._renewed: dict[str, Item] = {}
        # What meta will look like when this process accepts the conversation's next message
        # (its run done, the lease released): that accept writes without reading first.
        self._accepted: dict[str, Item] = {}

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
        """Append ``msg`` unless its dedupe key was seen, in one transaction with the
        sequence bump and what :func:`~workers.core.policies.accept_decision` decided on the
        ``meta`` predicted or read (a rejection's notice, or the lease), conditional on the
        ``meta`` it decided on."""
        pk = conversation_pk(msg.conversation_id)
        body = msg.model_dump_json().encode()
        if len(body) > self._blobs.inline_limit:
            raise PermanentError(
                f"message {msg.message_id} is {len(body)} bytes as JSON, over the store's "
                f"{self._blobs.inline_limit} byte limit",
                field="text",
            )
        dedupe_sk = DEDUPE_PREFIX + key_part(msg.effective_dedupe_key)
        # What this process's last accept of the conversation predicts (no read), else a
        # read of meta and the dedupe marker. A wrong prediction only fails the conditions.
        meta = self._accepted.pop(msg.conversation_id, None)
        read = meta is None
        floor = 0
        for _ in attempts():
            marker = None
            if read:
                # The erased conversation's last token, if any, in the same read: a new one
                # goes on above it.
                tombstone = forgotten_key(msg.conversation_id)
                found = self._table.batch_get([(pk, META_SK), (pk, dedupe_sk), tombstone])
                marker = found.get((pk, dedupe_sk))
                meta = found.get((pk, META_SK))
                erased = found.get(tombstone)
                floor = 0 if erased is None else get_int(erased, "last_token")
            if access is not None and not admitted(access, None if meta is None else _owner(meta)):
                if not read:  # a prediction is no proof: the id may be someone else's since
                    read = True
                    continue
                raise NotFound.conversation(msg.conversation_id)
            if marker is not None:
                return _duplicate(marker)
            accept = _Accept.decide(
                msg,
                body,
                dedupe_sk,
                meta,
                now=now,
                default_policy=default_policy,
                lease_ttl=lease_ttl,
                floor=floor,
            )
            try:
                self._table.transact(self._accept_actions(accept))
            except TransactionCancelled as cancelled:
                if cancelled.failed(0) and meta is not None:  # accepted before: its marker
                    marker = cancelled.item(0) or self._table.get(pk, dedupe_sk)
                    if marker is not None:
                        return _duplicate(marker)
                if cancelled.failed(1) and cancelled.item(1) is not None:
                    meta, read = cancelled.item(1), False  # meta moved: here is its image
                else:
                    read = True
                continue
            if len(self._accepted) >= _RENEWED_CACHE:
                self._accepted.clear()
            self._accepted[msg.conversation_id] = accept.predicted_meta()
            return AcceptResult(
                msg.message_id,
                accept.seq,
                duplicate=False,
                rejected=accept.decision.rejected,
                lease=accept.lease,
            )
        raise RetryableError(f"append to {msg.conversation_id}: too much contention")

    def _accept_actions(self, accept: _Accept) -> list[Item]:
        msg, table = accept.msg, self._table
        cid = msg.conversation_id
        pk = conversation_pk(cid)
        expiry = self._expiry()
        marker: Item = {
            **key(pk, accept.dedupe_sk),
            "message_id": string(msg.message_id),
            "seq": number(accept.seq),
            "rejected": {"BOOL": accept.decision.rejected},
            **expiry,
        }
        actions = [table.put(marker, cond="attribute_not_exists(#pk)")]
        if accept.meta is None:
            meta = _new_meta(msg, accept, self._expiry())
            actions.append(table.put(meta, cond="attribute_not_exists(#pk)"))
        else:
            update = _accept_update(accept, self._expiry())
            actions.append(table.update_action(pk, META_SK, **update))
        sk = seq_sk(INBOX_PREFIX, accept.seq)
        entry: Item = {
            **key(pk, sk),
            "seq": number(accept.seq),
            "message_id": string(msg.message_id),
            "dedupe_key": string(msg.effective_dedupe_key),
            "status": string(accept.decision.status),
            "data": {"B": accept.body},
        }
        if accept.decision.rejected:
            entry.update(expiry)  # finished at once; a pending entry never expires
        else:
            entry[PENDING_INDEX_SK] = string(sk)
        actions.append(table.put(entry))
        if accept.decision.notice is not None:
            notice = Notice(
                conversation_id=cid, in_reply_to=[msg.message_id], text=accept.decision.notice
            )
            (placed,) = self._blobs.place(cid, "accept", [outbox_blob(notice)])
            actions.append(table.put(outbox_item(pk, accept.outbox_seq + 1, notice, placed)))
        return actions

    def pending_inbox(self, conversation_id: str, *, limit: int = 100) -> list[InboxEntry]:
        """Pending inbox entries, oldest first (a query of the sparse pending index, so the
        cost does not grow with the conversation's consumed messages)."""
        if limit <= 0:
            return []
        items = self._table.query(
            f"#pk = :pk AND begins_with(#{PENDING_INDEX_SK}, :prefix)",
            {":pk": string(conversation_pk(conversation_id)), ":prefix": string(INBOX_PREFIX)},
            index=PENDING_INDEX,
            limit=limit,
        )
        return [InboxEntry(get_int(i, "seq"), _message(i)) for i in items]

    # leases -----------------------------------------------------------------------------

    def try_acquire_lease(self, conversation_id: str, *, now: float, ttl: float) -> Lease | None:
        """Take the lease with the next fencing token if none is live; else ``None``."""
        try:
            new = self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                _NEXT_TOKEN,
                cond="attribute_exists(#pk)"
                " AND (attribute_not_exists(#lease_token) OR #lease_expires_at <= :now)",
                values={":one": number(1), ":expires": number(now + ttl), ":now": number(now)},
                returns="UPDATED_NEW",
            )
        except ConditionFailed as failed:
            if failed.item is None:
                raise NotFound(
                    f"unknown conversation {conversation_id}", field="conversation_id"
                ) from None
            return None
        return Lease(conversation_id, get_int(new, "lease_token"), now + ttl)

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
        """Extend the lease (and bind it to the execution ``bind``; with ``claim``, mark the
        inbox sequence claimed) and return the state: one ``UpdateItem`` with ``ALL_NEW``.
        The image is kept for this run's next reads and commit (``load_pending``,
        ``commit_turn``)."""
        update = "SET #lease_expires_at = :expires"
        if claim:
            update += ", #claimed_seq = #inbox_seq"
        cond = "#lease_token = :token"
        values = {":expires": number(now + ttl), ":token": number(token)}
        if bind is not None:
            update += ", #lease_execution_id = :execution, #status = :running, #updated_at = :now"
            cond += (
                " AND (attribute_not_exists(#lease_execution_id)"
                " OR #lease_execution_id = :execution)"
            )
            values |= {
                ":execution": string(bind),
                ":running": string("running"),
                ":now": number(now),
            }
        try:
            new = self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                update,
                cond=cond,
                values=values,
                returns="ALL_NEW",
            )
        except ConditionFailed as failed:
            old = failed.item
            if old is not None and opt_int(old, "lease_token") == token:
                bound = opt_str(old, "lease_execution_id")
                raise LeaseLost(f"token {token} is already bound to execution {bound}") from None
            raise lease_lost(conversation_id, token, old) from None
        if len(self._renewed) >= _RENEWED_CACHE:
            self._renewed.clear()
        self._renewed[conversation_id] = new
        return _state(new)

    def hold_for_approval(
        self, conversation_id: str, token: int, task_token: str, *, now: float, ttl: float
    ) -> None:
        """Keep the lease while a Standard run waits for an approval; record its task token."""
        try:
            self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                "SET #lease_expires_at = :expires, #approval_task_token = :task",
                cond="#lease_token = :token",
                values={
                    ":expires": number(now + ttl),
                    ":task": string(task_token),
                    ":token": number(token),
                },
            )
        except ConditionFailed as failed:
            raise lease_lost(conversation_id, token, failed.item) from None

    def handover_lease(self, conversation_id: str, token: int, *, now: float, ttl: float) -> Lease:
        """Swap the lease held by ``token`` for the next token, for a new run."""
        try:
            new = self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                _NEXT_TOKEN,
                cond="#lease_token = :token",
                values={
                    ":one": number(1),
                    ":expires": number(now + ttl),
                    ":now": number(now),
                    ":token": number(token),
                },
                returns="UPDATED_NEW",
            )
        except ConditionFailed as failed:
            raise lease_lost(conversation_id, token, failed.item) from None
        return Lease(conversation_id, get_int(new, "lease_token"), now + ttl)

    def release_lease(
        self,
        conversation_id: str,
        token: int,
        *,
        seen_inbox_seq: int,
        now: float,
        delivered: Sequence[int] = (),
    ) -> bool:
        """Release if ``token`` holds the lease and the inbox is still at ``seen_inbox_seq``;
        ``False`` if it moved. With nothing pending the conversation also leaves the sweep
        index in the same write (conditional on a zero pending count, so a pending message is
        never hidden from the sweeper). The ``delivered`` marks go in the same transaction;
        when the release is refused they are written on their own."""
        pk = conversation_pk(conversation_id)
        marks = [self._mark_action(pk, seq, now) for seq in delivered]
        drain = True
        for _ in attempts():
            update = (
                "SET #status = :idle, #lease_expires_at = :zero"
                " REMOVE #lease_token, #lease_execution_id, #approval_task_token, #claimed_seq"
            )
            cond = "#lease_token = :token AND #inbox_seq = :seen"
            if drain:
                update += f", #{SWEEP_INDEX_PK}"
                cond += f" AND #{PENDING_COUNT} = :zero"
            if marks:
                update += f" ADD #{UNDELIVERED_COUNT} :marked"
            release = self._table.update_action(
                pk,
                META_SK,
                update,
                cond=cond,
                values={
                    ":idle": string("idle"),
                    ":zero": number(0),
                    ":token": number(token),
                    ":seen": number(seen_inbox_seq),
                    ":marked": number(-len(marks)),
                },
            )
            try:
                self._release(release, marks)
            except ConditionFailed as failed:
                old = failed.item
            except TransactionCancelled as cancelled:
                if not cancelled.failed(0):  # a mark's entry is gone: mark alone, release
                    self.mark_delivered(conversation_id, list(delivered), now=now)
                    marks = []
                    continue
                old = cancelled.item(0)
            else:
                return True
            if old is None or opt_int(old, "lease_token") != token:
                raise lease_lost(conversation_id, token, old)
            if get_int(old, "inbox_seq") != seen_inbox_seq:
                if marks:
                    self.mark_delivered(conversation_id, list(delivered), now=now)
                return False
            drain = False  # messages are pending: stay visible to the sweeper
        raise RetryableError(f"release of {conversation_id}: too much contention")

    def _release(self, release: Item, marks: list[Item]) -> None:
        if marks:
            self._table.transact([release, *marks])
        else:
            self._table.apply(release)

    def conversations_to_sweep(self, *, now: float, limit: int = 100) -> list[str]:
        """Conversations that need a run (pending messages, or a lease that expired while
        held): per shard, one query of the sparse sweep index by lease expiry, filtered on
        the pending count or a held lease (a released one has expiry 0).

        A shard whose query fails for now (throttled) is left to the next sweep and the
        others are read: a sweep that gave up at its first failed query never finished while
        the table throttled one call in fifteen, and a run that died holding its lease was
        never taken over. Only when every shard fails is the error raised."""
        found: list[str] = []
        failed: RetryableError | None = None
        for shard in range(SWEEP_SHARDS):
            if len(found) >= limit:
                break
            try:
                items = self._table.query(
                    f"#{SWEEP_INDEX_PK} = :shard AND #{SWEEP_INDEX_SK} <= :now",
                    {
                        ":shard": string(_shard_name(shard)),
                        ":now": number(now),
                        ":zero": number(0),
                    },
                    index=SWEEP_INDEX,
                    filter_expression=f"#{PENDING_COUNT} > :zero OR #{SWEEP_INDEX_SK} > :zero",
                    limit=limit - len(found),
                    consistent=False,  # a global index is eventually consistent only
                )
            except RetryableError as exc:
                failed = exc
                continue
            found.extend(get_str(i, TABLE_PK).removeprefix(CONVERSATION_PREFIX) for i in items)
        if failed is not None and not found:
            raise failed
        return found

    # state ------------------------------------------------------------------------------

    def get_conversation(self, conversation_id: str) -> ConversationState | None:
        """The conversation's state, or ``None`` if it never had a message."""
        meta = self._table.get(conversation_pk(conversation_id), META_SK)
        return None if meta is None else _state(meta)

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
        """``meta`` with no message and no lease (out of the sweep index), put only where
        none is; its last token is the erased conversation's of the id, if any."""
        erased = self._table.get(*forgotten_key(conversation_id))
        floor = 0 if erased is None else get_int(erased, "last_token")
        stored = values.to_json()
        meta = (
            {
                **key(conversation_pk(conversation_id), META_SK),
                "conversation_id": string(conversation_id),
                "policy": string(policy),
                "status": string("idle"),
                "inbox_seq": number(0),
                "outbox_seq": number(0),
                "log_seq": number(0),
                "last_token": number(floor),
                SWEEP_INDEX_SK: number(0),
                PENDING_COUNT: number(0),
                UNDELIVERED_COUNT: number(0),
                "created_at": number(now),
                "updated_at": number(now),
            }
            | _owner_fields(tenant, owner)
            | self._expiry()
        )
        if stored:
            meta["caller_values"] = string(stored)
        try:
            self._table.transact([self._table.put(meta, cond="attribute_not_exists(#pk)")])
        except TransactionCancelled as cancelled:
            if cancelled.failed(0):
                return False
            raise
        return True

    def list_conversations(
        self, tenant: str, owner: str, *, limit: int, offset: int = 0
    ) -> list[ConversationSummary]:
        """One query of the owner index (eventually consistent: a conversation created or
        active a moment ago may show a moment later), reading ``offset`` items past."""
        items = self._table.query(
            f"#{OWNER_INDEX_PK} = :owner",
            {":owner": string(identity_key(tenant, owner))},
            index=OWNER_INDEX,
            limit=offset + limit,
            forward=False,
            consistent=False,
        )
        return [
            ConversationSummary(
                conversation_id=get_str(item, "conversation_id"),
                status=_STATUS.validate_python(
                    opt_str(item, "status_hold") or get_str(item, "status")
                ),
                created_at=get_float(item, "created_at"),
                updated_at=get_float(item, OWNER_INDEX_SK),
                values=CallerValues.from_json(opt_str(item, "caller_values")),
            )
            for item in items[offset:]
        ]

    def set_values(self, conversation_id: str, values: CallerValues, *, now: float) -> bool:
        stored = values.to_json()
        update = "SET #updated_at = :now" + (
            ", #caller_values = :values" if stored else " REMOVE #caller_values"
        )
        extra = {":values": string(stored)} if stored else {}
        try:
            self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                update,
                cond="attribute_exists(#pk)",
                values={":now": number(now), **extra},
            )
        except ConditionFailed:
            return False
        return True

    def load_checkpoint(self, conversation_id: str) -> bytes | None:
        """The last committed checkpoint (following its S3 pointer), or ``None``."""
        item = self._table.get(conversation_pk(conversation_id), CHECKPOINT_SK)
        return None if item is None else self._blobs.read(item)

    def load_log(self, conversation_id: str, *, limit: int) -> list[LogEntry]:
        """The last ``limit`` log entries, oldest first (one backwards query)."""
        if limit <= 0:
            return []
        items = self._table.query(
            "#pk = :pk AND #sk BETWEEN :first AND :last",
            {
                ":pk": string(conversation_pk(conversation_id)),
                ":first": string(LOG_PREFIX),
                ":last": string(LOG_LAST_SK),
            },
            limit=limit,
            forward=False,
        )
        return [self._log_entry(i) for i in reversed(items)]

    def load_pending(
        self, state: ConversationState, *, window: int, limit: int = 100
    ) -> PendingWork:
        """The pending inbox, the checkpoint and the log window in one ``BatchGetItem``.

        The keys come from the image the run's lease renewal returned: the pending entries
        are the last ``pending`` inbox sequences (a claim consumes the oldest first) and the
        window the last log sequences. A rejected message between pending ones breaks that
        run of sequences: then the pending index is queried. Without an image (no renewal
        in this process) it takes two queries."""
        cid = state.conversation_id
        meta = self._renewed.get(cid)
        pending = state.pending_count
        if meta is None or pending is None or get_int(meta, "inbox_seq") != state.inbox_seq:
            return PendingWork(self.pending_inbox(cid, limit=limit), *self._load_turn(cid, window))
        pk = conversation_pk(cid)
        wanted = max(0, min(pending, limit))
        first = state.inbox_seq - pending + 1
        inbox_keys = [seq_sk(INBOX_PREFIX, seq) for seq in range(first, first + wanted)]
        log_seq = get_int(meta, "log_seq")
        log_keys = [
            seq_sk(LOG_PREFIX, seq) for seq in range(max(1, log_seq - window + 1), log_seq + 1)
        ]
        found = self._table.batch_get([(pk, sk) for sk in (CHECKPOINT_SK, *log_keys, *inbox_keys)])
        inbox = [
            InboxEntry(get_int(item, "seq"), _message(item))
            for item in (found.get((pk, sk)) for sk in inbox_keys)
            if item is not None and get_str(item, "status") == "pending"
        ]
        if len(inbox) < wanted:
            inbox = self.pending_inbox(cid, limit=limit)
        ckpt = found.get((pk, CHECKPOINT_SK))
        return PendingWork(
            inbox,
            None if ckpt is None else self._blobs.read(ckpt),
            [self._log_entry(found[(pk, sk)]) for sk in log_keys if (pk, sk) in found],
        )

    def _load_turn(self, conversation_id: str, window: int) -> tuple[bytes | None, list[LogEntry]]:
        """The checkpoint and the last ``window`` log entries in one backwards query: the
        checkpoint's sort key sorts right after the log's."""
        items = self._table.query(
            "#pk = :pk AND #sk BETWEEN :first AND :ckpt",
            {
                ":pk": string(conversation_pk(conversation_id)),
                ":first": string(LOG_PREFIX),
                ":ckpt": string(CHECKPOINT_SK),
            },
            limit=window + 1,
            forward=False,
        )
        checkpoint = None
        if items and get_str(items[0], TABLE_SK) == CHECKPOINT_SK:
            checkpoint = self._blobs.read(items.pop(0))
        return checkpoint, [self._log_entry(i) for i in reversed(items[:window])]

    def _log_entry(self, item: Item) -> LogEntry:
        return LogEntry(get_str(item, "message_id"), get_str(item, "role"), self._blobs.read(item))

    def commit_turn(self, conversation_id: str, commit: TurnCommit) -> list[OutboxEntry]:
        """Apply a turn in one transaction fenced by ``commit.token``: ``LeaseLost`` if it is
        stale, ``TurnSuperseded`` if ``expect_inbox_seq`` is set and the inbox moved.

        The transaction is conditional on the log and outbox sequences of ``meta``: the image
        the run's lease renewal just returned in this process (no read), or a fresh read. An
        image that went stale only fails the conditions, whose answer carries the current
        one, and the commit is rebuilt on it. Blobs over the inline limit go to S3 before the
        transaction; their keys are unique, so a stale run's objects are orphans (deleted when
        its commit is refused) and can never replace the live ones.
        """
        pk = conversation_pk(conversation_id)
        seen = self._renewed.pop(conversation_id, None)
        meta = check_commit(
            conversation_id, commit, seen if seen is not None else self._table.get(pk, META_SK)
        )
        parts = CommitParts.of(commit)
        placed = self._blobs.place(conversation_id, str(commit.token), parts.blobs())
        try:
            meta, parts = self._commit(pk, conversation_id, meta, parts, placed)
        except (LeaseLost, TurnSuperseded, PermanentError):
            # Certainly not written: every object this commit put in S3 is an orphan. Not so
            # after other errors: a transaction that timed out may have been applied.
            self._blobs.discard([S3Offload.s3_key(p) for p in placed])
            raise
        orphans = parts.orphans(placed)
        if commit.checkpoint is not None:
            replaced = opt_str(meta, "ckpt_s3_key")
            if replaced != S3Offload.s3_key(placed[0]):
                orphans.append(replaced)
        self._blobs.discard(orphans)
        first = get_int(meta, "outbox_seq") + 1
        return [OutboxEntry(first + n, payload) for n, payload in enumerate(commit.outbox)]

    def _commit(
        self, pk: str, conversation_id: str, meta: Item, parts: CommitParts, placed: list[Item]
    ) -> tuple[Item, CommitParts]:
        """Run the commit's transaction until it applies; the ``meta`` it was conditional on
        and the parts it wrote."""
        for _ in attempts():
            actions, index = commit_actions(
                self._table,
                pk,
                meta,
                parts,
                placed,
                expiry=self._expiry(),
                retained=self._expiry(),
            )
            try:
                self._table.transact(actions)
            except TransactionCancelled as cancelled:
                if cancelled.failed(0):  # meta moved: its old image is in the answer
                    meta = check_commit(conversation_id, parts.commit, cancelled.item(0))
                else:  # entries consumed or logged already drop out; a conflict retries
                    parts = parts.without([index[i] for i in cancelled.failed_indexes()])
                continue
            return meta, parts
        raise RetryableError(f"commit to {conversation_id}: too much contention")

    # outbox -----------------------------------------------------------------------------

    def pending_outbox(self, conversation_id: str) -> list[OutboxEntry]:
        """Undelivered outbox entries, oldest first (a query of the sparse pending index)."""
        items = self._table.query(
            f"#pk = :pk AND begins_with(#{PENDING_INDEX_SK}, :prefix)",
            {":pk": string(conversation_pk(conversation_id)), ":prefix": string(OUTBOX_PREFIX)},
            index=PENDING_INDEX,
        )
        return [
            OutboxEntry(
                get_int(i, "seq"),
                self._payload(i),
                sinks_done=frozenset(i.get("sinks", {}).get("SS", [])),
            )
            for i in items
        ]

    def mark_sinks(self, conversation_id: str, seq: int, sinks: Collection[str]) -> None:
        """One ``UpdateItem`` adding to the entry's string set (idempotent)."""
        if not sinks:
            return
        try:
            self._table.update(
                conversation_pk(conversation_id),
                seq_sk(OUTBOX_PREFIX, seq),
                "ADD #sinks :sinks",
                cond="attribute_exists(#pk)",
                values={":sinks": {"SS": sorted(set(sinks))}},
            )
        except ConditionFailed:
            return  # forgotten meanwhile: nothing to remember

    def mark_delivered(self, conversation_id: str, seqs: list[int], *, now: float) -> None:
        """Mark entries delivered; idempotent (the first delivery time stays). One
        transaction per sequence (the entry and ``meta``'s undelivered count): not atomic
        across sequences, which re-delivery after a crash tolerates."""
        pk = conversation_pk(conversation_id)
        for seq in seqs:
            # An unknown or already delivered entry has nothing to mark, as in SQLite.
            with contextlib.suppress(TransactionCancelled):
                self._table.transact(
                    [
                        self._mark_action(pk, seq, now),
                        self._table.update_action(
                            pk,
                            META_SK,
                            f"ADD #{UNDELIVERED_COUNT} :minus",
                            values={":minus": number(-1)},
                        ),
                    ]
                )

    def _mark_action(self, pk: str, seq: int, now: float) -> Item:
        """The update marking outbox entry ``seq`` delivered (it leaves the pending index);
        its condition refuses an unknown or already delivered entry, so that ``meta``'s
        count of undelivered entries, updated in the same transaction, stays exact."""
        expiry = self._expiry()
        update = "SET #delivered_at = :now"
        values = {":now": number(now)}
        if expiry:
            update += f", #{TTL_ATTRIBUTE} = :expires"
            values[":expires"] = expiry[TTL_ATTRIBUTE]
        return self._table.update_action(
            pk,
            seq_sk(OUTBOX_PREFIX, seq),
            f"{update} REMOVE #{PENDING_INDEX_SK}",
            cond="attribute_exists(#pk) AND attribute_not_exists(#delivered_at)",
            values=values,
        )

    def history(self, conversation_id: str) -> History | None:
        """State, every inbox entry and every outbox entry, oldest first."""
        state = self.get_conversation(conversation_id)
        if state is None:
            return None
        inbox = [
            InboxEntry(
                get_int(i, "seq"),
                _message(i),
                _INBOX_STATUS.validate_python(get_str(i, "status")),
                opt_str(i, "error"),
            )
            for i in self._items(conversation_id, INBOX_PREFIX)
        ]
        outbox = [
            OutboxEntry(get_int(i, "seq"), self._payload(i), "delivered_at" in i)
            for i in self._items(conversation_id, OUTBOX_PREFIX)
        ]
        return History(state, inbox, outbox)

    def _items(self, conversation_id: str, prefix: str) -> list[Item]:
        return self._table.query(
            "#pk = :pk AND begins_with(#sk, :prefix)",
            {":pk": string(conversation_pk(conversation_id)), ":prefix": string(prefix)},
        )

    def _payload(self, item: Item) -> OutboxPayload:
        return _OUTBOX.validate_json(self._blobs.read(item))

    def spend_quota(
        self, key: str, amount: int, *, limit: int, window_seconds: float, now: float
    ) -> float | None:
        """One conditional ``UpdateItem`` on the window's counter item (its TTL is the
        window's end: counters clean themselves up)."""
        start = window_start(now, window_seconds)
        wait = start + window_seconds - now
        if amount > limit:
            return wait
        try:
            self._table.update(
                f"{QUOTA_PK_PREFIX}{key_part(key)}",
                f"w#{start:.0f}",
                f"ADD #used :amount SET #{TTL_ATTRIBUTE} = :expires",
                cond="attribute_not_exists(#used) OR #used <= :room",
                values={
                    ":amount": number(amount),
                    ":room": number(limit - amount),
                    ":expires": number(int(start + window_seconds) + 60),
                },
            )
        except ConditionFailed:
            return wait
        return None

    def expired_conversations(self, *, before: float, limit: int = 100) -> list[str]:
        """None: DynamoDB's TTL erases idle conversations (``retention_days``) and the
        bucket's lifecycle rule their objects."""
        return []

    def forget(
        self, conversation_id: str, *, idle_before: float | None = None
    ) -> dict[str, int] | None:
        """Every item of the conversation's partition (and the connections' back links) in
        batches, then its S3 objects. ``idle_before`` is checked on the items read (not in
        the deletes' write: the retention here is DynamoDB's TTL, which never calls this)."""
        pk = conversation_pk(conversation_id)
        items = self._table.query("#pk = :pk", {":pk": string(pk)})
        meta = next((i for i in items if get_str(i, TABLE_SK) == META_SK), None)
        if meta is None:
            return None
        if idle_before is not None:
            state = _state(meta)
            woken = state.updated_at >= idle_before or state.lease_live(idle_before)
            if woken or state.pending_count:
                return None
        # First the tombstone (a conversation created again meanwhile, or later, goes on
        # above this one's tokens), then everything else of the partition.
        self._table.update(
            *forgotten_key(conversation_id),
            f"SET #last_token = :token, #{TTL_ATTRIBUTE} = :expires",
            values={
                ":token": number(get_int(meta, "last_token")),
                ":expires": number(int(time.time()) + FORGOTTEN_TTL_SECONDS),
            },
        )
        removed: dict[str, int] = {}
        keys: list[tuple[str, str]] = []
        for item in items:
            sk = get_str(item, TABLE_SK)
            kind = _forget_kind(sk)
            removed[kind] = removed.get(kind, 0) + 1
            keys.append((pk, sk))
            if sk.startswith(CONNECTION_PREFIX):
                keys.append((_connection_pk(get_str(item, "connection_id")), pk))
        self._table.batch_delete(keys)
        self._accepted.pop(conversation_id, None)
        removed["objects"] = self._blobs.forget(conversation_id)
        return removed

    # websocket connections --------------------------------------------------------------

    def add_connection(self, connection_id: str, conversation_id: str, *, now: float) -> None:
        """Subscribe a connection to a conversation: both links in one transaction."""
        pk = conversation_pk(conversation_id)
        link = {**key(pk, _connection_sk(connection_id)), "connection_id": string(connection_id)}
        back = {
            **key(_connection_pk(connection_id), pk),
            "conversation_id": string(conversation_id),
        }
        self._table.transact(
            [self._table.put(link | {"created_at": number(now)}), self._table.put(back)]
        )

    def remove_connection(self, connection_id: str) -> None:
        """Forget a connection in every conversation it subscribed to."""
        links = self._table.query("#pk = :pk", {":pk": string(_connection_pk(connection_id))})
        deletes: list[Item] = []
        for link in links:
            pk = get_str(link, TABLE_SK)
            deletes.append(self._table.delete(pk, _connection_sk(connection_id)))
            deletes.append(self._table.delete(_connection_pk(connection_id), pk))
        for start in range(0, len(deletes), MAX_TRANSACTION_ACTIONS):
            self._table.transact(deletes[start : start + MAX_TRANSACTION_ACTIONS])

    def list_connections(self, conversation_id: str) -> list[str]:
        """Connection ids of a conversation, oldest subscription first."""
        items = self._items(conversation_id, CONNECTION_PREFIX)
        items.sort(key=lambda i: (get_float(i, "created_at"), get_str(i, "connection_id")))
        return [get_str(i, "connection_id") for i in items]

    # helpers ----------------------------------------------------------------------------

    def _expiry(self) -> Item:
        """The TTL attribute of an item finished now, or nothing without a retention. Also
        what ``meta`` and the checkpoint get at every accept and commit: an idle
        conversation goes whole ``retention_days`` after its last activity."""
        if self._retention is None:
            return {}
        return {TTL_ATTRIBUTE: number(int(time.time()) + self._retention)}


@dataclass(frozen=True)
class _Accept:
    """One message's acceptance: the core's decision taken on the ``meta`` predicted or read
    before the transaction, and the write that records it (conditional on that ``meta``)."""

    msg: InboundMessage
    body: bytes
    dedupe_sk: str
    meta: Item | None
    now: float
    policy: DoubleTextingPolicy
    seq: int
    outbox_seq: int
    decision: AcceptDecision
    lease: Lease | None
    """The lease this write takes (the decision's ``lease_ttl``, with the next token)."""
    last_token: int
    busy: bool
    """A live lease was seen: what ``decision`` was taken on."""

    @classmethod
    def decide(
        cls,
        msg: InboundMessage,
        body: bytes,
        dedupe_sk: str,
        meta: Item | None,
        *,
        now: float,
        default_policy: DoubleTextingPolicy,
        lease_ttl: float | None,
        floor: int = 0,
    ) -> _Accept:
        if meta is None:
            policy, seq, outbox_seq, busy = msg.policy or default_policy, 1, 0, False
            last_token = floor  # above an erased conversation's of this id, if any
        else:
            policy = msg.policy or _POLICY.validate_python(get_str(meta, "policy"))
            seq, outbox_seq = get_int(meta, "inbox_seq") + 1, get_int(meta, "outbox_seq")
            busy = "lease_token" in meta and get_float(meta, SWEEP_INDEX_SK) > now
            last_token = get_int(meta, "last_token")
        decision = accept_decision(policy, lease_live=busy, lease_ttl=lease_ttl)
        lease = None
        if decision.lease_ttl is not None:
            lease = Lease(msg.conversation_id, last_token + 1, now + decision.lease_ttl)
        return cls(
            msg,
            body,
            dedupe_sk,
            meta,
            now,
            policy,
            seq,
            outbox_seq,
            decision,
            lease,
            last_token,
            busy,
        )

    def predicted_meta(self) -> Item:
        """``meta`` as this accept leaves it once the conversation's run has released the
        lease: what the next accept decides on (the fields its conditions check)."""
        cid = self.msg.conversation_id
        return {
            **key(conversation_pk(cid), META_SK),
            "conversation_id": string(cid),
            "policy": string(self.policy),
            "inbox_seq": number(self.seq),
            "outbox_seq": number(self.outbox_seq + (1 if self.decision.rejected else 0)),
            "last_token": number(self.last_token if self.lease is None else self.lease.token),
        } | _owner_fields(*self.owner)

    @property
    def owner(self) -> tuple[str | None, str | None]:
        """The conversation's tenant and owner: as read, or as this message creates them."""
        if self.meta is not None:
            return _owner(self.meta)
        return self.msg.tenant, self.msg.owner


def _accept_update(accept: _Accept, retained: Item) -> dict[str, Any]:
    """``meta``'s update for an accepted message, conditional on everything it decided on;
    with ``retained``, its retention restarts."""
    sets = ["#inbox_seq = :seq", "#policy = :policy", "#updated_at = :now"]
    if retained:
        sets.append(f"#{TTL_ATTRIBUTE} = :retained")
    conds = ["#inbox_seq = :previous"]
    # The owner that was checked (set at creation): not another conversation of that id.
    owner_values: Item = {}
    for name, value in zip(("tenant", "owner"), accept.owner, strict=True):
        if value is None:
            conds.append(f"attribute_not_exists(#{name})")
        else:
            conds.append(f"#{name} = :{name}")
            owner_values[f":{name}"] = string(value)
    if accept.msg.policy is None:
        conds.append("#policy = :policy")  # the stored policy decided
    remove = ""
    if accept.decision.rests_on_lease:
        # The decision rests on the lease: it must still stand.
        conds.append(
            "attribute_exists(#lease_token) AND #lease_expires_at > :now"
            if accept.busy
            else "(attribute_not_exists(#lease_token) OR #lease_expires_at <= :now)"
        )
    if accept.lease is not None:
        sets += ["#last_token = :token", "#lease_token = :token", "#lease_expires_at = :expires"]
        conds.append("#last_token = :last_token")
        remove = " REMOVE #lease_execution_id"
    add = ""
    if accept.decision.rejected:
        sets.append("#outbox_seq = :outbox_seq")
        conds.append("#outbox_seq = :outbox_previous")
        add = f" ADD #{UNDELIVERED_COUNT} :one"
    else:
        # Pending work makes the conversation visible to the sweeper.
        sets.append(f"#{SWEEP_INDEX_PK} = :shard")
        add = f" ADD #{PENDING_COUNT} :one"
    cid = accept.msg.conversation_id
    lease = accept.lease
    return {
        "update": "SET " + ", ".join(sets) + add + remove,
        "cond": " AND ".join(conds),
        "values": {
            ":token": number(accept.last_token + 1),
            ":last_token": number(accept.last_token),
            ":expires": number(0 if lease is None else lease.expires_at),
            ":seq": number(accept.seq),
            ":previous": number(accept.seq - 1),
            ":policy": string(accept.policy),
            ":now": number(accept.now),
            ":shard": string(_sweep_shard(cid)),
            ":one": number(1),
            ":outbox_seq": number(accept.outbox_seq + 1),
            ":outbox_previous": number(accept.outbox_seq),
        }
        | owner_values
        | ({":retained": retained[TTL_ATTRIBUTE]} if retained else {}),
    }


def _new_meta(msg: InboundMessage, accept: _Accept, expiry: Item) -> Item:
    """``meta`` of a conversation created by its first (pending) message ``msg`` (its tenant
    and owner), with the accept's lease and its tokens' floor."""
    conversation_id = msg.conversation_id
    lease = accept.lease
    held = _owner_fields(msg.tenant, msg.owner) | expiry
    if lease is not None:
        held |= {"lease_token": number(lease.token), SWEEP_INDEX_SK: number(lease.expires_at)}
    policy, now = accept.policy, accept.now
    return {
        **key(conversation_pk(conversation_id), META_SK),
        "conversation_id": string(conversation_id),
        "policy": string(policy),
        "status": string("idle"),
        "inbox_seq": number(1),
        "outbox_seq": number(0),
        "log_seq": number(0),
        "last_token": number(accept.last_token if lease is None else lease.token),
        SWEEP_INDEX_SK: number(0),  # no lease yet; the sweep index's key must be present
        PENDING_COUNT: number(1),
        UNDELIVERED_COUNT: number(0),
        SWEEP_INDEX_PK: string(_sweep_shard(conversation_id)),
        "created_at": number(now),
        "updated_at": number(now),
    } | held


def _state(meta: Item) -> ConversationState:
    token = opt_int(meta, "lease_token")
    approval = opt_str(meta, "pending_approval")
    # status_hold (awaiting_approval) outlives runs; status is idle or running by the lease.
    status = opt_str(meta, "status_hold") or get_str(meta, "status")
    return ConversationState(
        conversation_id=get_str(meta, "conversation_id"),
        policy=_POLICY.validate_python(get_str(meta, "policy")),
        status=_STATUS.validate_python(status),
        inbox_seq=get_int(meta, "inbox_seq"),
        last_token=get_int(meta, "last_token"),
        lease_token=token,
        lease_expires_at=None if token is None else get_float(meta, SWEEP_INDEX_SK),
        lease_execution_id=opt_str(meta, "lease_execution_id"),
        pending_approval=None if approval is None else parse_pending_request(approval),
        created_at=get_float(meta, "created_at"),
        updated_at=get_float(meta, "updated_at"),
        approval_task_token=opt_str(meta, "approval_task_token"),
        pending_count=opt_int(meta, PENDING_COUNT),
        undelivered_count=opt_int(meta, UNDELIVERED_COUNT),
        tenant=opt_str(meta, "tenant"),
        owner=opt_str(meta, "owner"),
        claimed_seq=opt_int(meta, "claimed_seq"),
        values=CallerValues.from_json(opt_str(meta, "caller_values")),
    )


QUOTA_PK_PREFIX = "quota#"
"""Partition of a principal's quota counters (one item per window; not a conversation's)."""
_FORGET_KINDS = (
    (INBOX_PREFIX, "inbox"),
    (OUTBOX_PREFIX, "outbox"),
    (LOG_ID_PREFIX, "log"),
    (LOG_PREFIX, "log"),
    (DEDUPE_PREFIX, "dedupe"),
    (CONNECTION_PREFIX, "connections"),
)


FORGOTTEN_TTL_SECONDS = 2 * 86_400
"""How long an erased conversation's tombstone (its last token) is kept: longer than any run
may still hold its lease (a Standard run waits 24 h for an approval)."""


def _forget_kind(sk: str) -> str:
    """What an item of a conversation's partition is, as ``forget`` reports it."""
    if sk == META_SK:
        return "conversation"
    if sk == CHECKPOINT_SK:
        return "checkpoint"
    return next((kind for prefix, kind in _FORGET_KINDS if sk.startswith(prefix)), "other")


def _owner(meta: Item) -> tuple[str | None, str | None]:
    """The tenant and owner ``meta`` records (set once, at creation)."""
    return opt_str(meta, "tenant"), opt_str(meta, "owner")


def _owner_fields(tenant: str | None, owner: str | None) -> Item:
    """``meta``'s attributes for a tenant and an owner (absent when ``None``), and the key
    the owner index lists the conversation under."""
    fields = {"tenant": tenant, "owner": owner}
    item = {name: string(value) for name, value in fields.items() if value is not None}
    if tenant is not None and owner is not None:
        item[OWNER_INDEX_PK] = string(identity_key(tenant, owner))
    return item


def _duplicate(marker: Item) -> AcceptResult:
    return AcceptResult(
        get_str(marker, "message_id"),
        get_int(marker, "seq"),
        duplicate=True,
        rejected=bool(marker.get("rejected", {}).get("BOOL", False)),
    )


def _message(item: Item) -> InboundMessage:
    return InboundMessage.model_validate_json(bytes(item["data"]["B"]))


def _connection_pk(connection_id: str) -> str:
    return CONNECTION_PK_PREFIX + key_part(connection_id)


def _connection_sk(connection_id: str) -> str:
    return CONNECTION_PREFIX + key_part(connection_id)


def _shard_name(shard: int) -> str:
    return f"pending#{shard:02d}"


def _sweep_shard(conversation_id: str) -> str:
    # crc32, not hash(): the shard must be the same in every process.
    return _shard_name(zlib.crc32(conversation_id.encode()) % SWEEP_SHARDS)
