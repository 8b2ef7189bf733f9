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
``append_inbox`` 2 (BatchGet meta + dedupe marker, transaction); ``try_acquire_lease``,
``bind_lease``, ``renew_lease``, ``handover_lease``, ``release_lease`` 1 (UpdateItem);
``get_conversation``, ``load_checkpoint`` 1 (GetItem); ``pending_inbox``, ``load_log``,
``pending_outbox``, ``list_connections`` 1 (Query); ``commit_turn`` 2 (GetItem meta,
transaction); ``mark_delivered`` 1 per sequence; ``conversations_to_sweep`` 1 Query per sweep
shard; ``history`` 3; ``add_connection`` 1; ``remove_connection`` 2.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from events.inbound import DoubleTextingPolicy, InboundMessage
from events.outbound import ApprovalRequest, Notice, OutboxPayload
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
from workers.adapters.aws.dynamodb_tickets import DynamoDBTicketStore
from workers.adapters.aws.offload import INLINE_LIMIT_BYTES, S3Offload
from workers.adapters.aws.tables import (
    CHECKPOINT_SK,
    CONNECTION_PK_PREFIX,
    CONNECTION_PREFIX,
    CONVERSATION_PREFIX,
    DEDUPE_PREFIX,
    INBOX_PREFIX,
    LOG_LAST_SK,
    LOG_PREFIX,
    META_SK,
    OUTBOX_PREFIX,
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
    conversation_pk,
    seq_sk,
)
from workers.core.model import (
    AcceptResult,
    ConversationState,
    ConversationStatus,
    History,
    InboxEntry,
    InboxStatus,
    Lease,
    LogEntry,
    OutboxEntry,
    TurnCommit,
)
from workers.core.policies import REJECTED_NOTICE
from workers.core.steps import TurnSuperseded
from workers.errors import LeaseLost, NotFound, PermanentError, RetryableError

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


class DynamoDBConversationStore(DynamoDBTicketStore):
    """Conversations, inbox, leases, checkpoints, log, outbox, connections and tickets on
    DynamoDB, with S3 for blobs too large for an item. Implements ``ConversationStore`` and
    ``TicketStore``.

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

    # inbox ------------------------------------------------------------------------------

    def append_inbox(
        self, msg: InboundMessage, *, now: float, default_policy: DoubleTextingPolicy
    ) -> AcceptResult:
        """Append ``msg`` unless its dedupe key was seen, in one transaction with the
        sequence bump (and, under ``reject`` while a run is live, the notice)."""
        pk = conversation_pk(msg.conversation_id)
        body = msg.model_dump_json().encode()
        if len(body) > self._blobs.inline_limit:
            raise PermanentError(
                f"message {msg.message_id} is {len(body)} bytes as JSON, over the store's "
                f"{self._blobs.inline_limit} byte limit",
                field="text",
            )
        dedupe_sk = DEDUPE_PREFIX + key_part(msg.effective_dedupe_key)
        for _ in attempts():
            found = self._table.batch_get([(pk, META_SK), (pk, dedupe_sk)])
            marker = found.get((pk, dedupe_sk))
            if marker is not None:
                return _duplicate(marker)
            meta = found.get((pk, META_SK))
            accept = _Accept.decide(
                msg, body, dedupe_sk, meta, now=now, default_policy=default_policy
            )
            try:
                self._table.transact(self._accept_actions(accept))
            except TransactionCancelled as cancelled:
                if cancelled.failed(0):  # the same key was accepted since we looked
                    marker = self._table.get(pk, dedupe_sk)
                    if marker is not None:
                        return _duplicate(marker)
                continue  # meta moved (another message, a lease change): read it again
            return AcceptResult(
                msg.message_id, accept.seq, duplicate=False, rejected=accept.rejected
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
            "rejected": {"BOOL": accept.rejected},
            **expiry,
        }
        actions = [table.put(marker, cond="attribute_not_exists(#pk)")]
        if accept.meta is None:
            meta = _new_meta(cid, accept.policy, accept.now)
            actions.append(table.put(meta, cond="attribute_not_exists(#pk)"))
        else:
            actions.append(table.update_action(pk, META_SK, **_accept_update(accept)))
        sk = seq_sk(INBOX_PREFIX, accept.seq)
        entry: Item = {
            **key(pk, sk),
            "seq": number(accept.seq),
            "message_id": string(msg.message_id),
            "dedupe_key": string(msg.effective_dedupe_key),
            "status": string("rejected" if accept.rejected else "pending"),
            "data": {"B": accept.body},
        }
        if accept.rejected:
            entry.update(expiry)  # finished at once; a pending entry never expires
        else:
            entry[PENDING_INDEX_SK] = string(sk)
        actions.append(table.put(entry))
        if accept.rejected:
            notice = Notice(conversation_id=cid, in_reply_to=[msg.message_id], text=REJECTED_NOTICE)
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

    def bind_lease(
        self, conversation_id: str, token: int, execution_id: str, *, now: float, ttl: float
    ) -> Lease:
        """Bind the lease to a run's execution; ``LeaseLost`` if the token is stale or the
        lease is bound to another execution (a duplicate start)."""
        try:
            self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                "SET #lease_execution_id = :execution, #lease_expires_at = :expires,"
                " #status = :running, #updated_at = :now",
                cond="#lease_token = :token AND (attribute_not_exists(#lease_execution_id)"
                " OR #lease_execution_id = :execution)",
                values={
                    ":execution": string(execution_id),
                    ":expires": number(now + ttl),
                    ":running": string("running"),
                    ":now": number(now),
                    ":token": number(token),
                },
            )
        except ConditionFailed as failed:
            old = failed.item
            if old is not None and opt_int(old, "lease_token") == token:
                bound = opt_str(old, "lease_execution_id")
                raise LeaseLost(f"token {token} is already bound to execution {bound}") from None
            raise lease_lost(conversation_id, token, old) from None
        return Lease(conversation_id, token, now + ttl, execution_id)

    def renew_lease(
        self, conversation_id: str, token: int, *, now: float, ttl: float
    ) -> ConversationState:
        """Extend the lease and return the state: one ``UpdateItem`` with ``ALL_NEW``."""
        try:
            new = self._table.update(
                conversation_pk(conversation_id),
                META_SK,
                "SET #lease_expires_at = :expires",
                cond="#lease_token = :token",
                values={":expires": number(now + ttl), ":token": number(token)},
                returns="ALL_NEW",
            )
        except ConditionFailed as failed:
            raise lease_lost(conversation_id, token, failed.item) from None
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

    def release_lease(self, conversation_id: str, token: int, *, seen_inbox_seq: int) -> bool:
        """Release if ``token`` holds the lease and the inbox is still at ``seen_inbox_seq``;
        ``False`` if it moved. With nothing pending the conversation also leaves the sweep
        index in the same write (conditional on a zero pending count, so a pending message is
        never hidden from the sweeper)."""
        drain = True
        for _ in attempts():
            update = (
                "SET #status = :idle, #lease_expires_at = :zero"
                " REMOVE #lease_token, #lease_execution_id, #approval_task_token"
            )
            cond = "#lease_token = :token AND #inbox_seq = :seen"
            if drain:
                update += f", #{SWEEP_INDEX_PK}"
                cond += f" AND #{PENDING_COUNT} = :zero"
            try:
                self._table.update(
                    conversation_pk(conversation_id),
                    META_SK,
                    update,
                    cond=cond,
                    values={
                        ":idle": string("idle"),
                        ":zero": number(0),
                        ":token": number(token),
                        ":seen": number(seen_inbox_seq),
                    },
                )
            except ConditionFailed as failed:
                old = failed.item
                if old is None or opt_int(old, "lease_token") != token:
                    raise lease_lost(conversation_id, token, old) from None
                if get_int(old, "inbox_seq") != seen_inbox_seq:
                    return False
                drain = False  # messages are pending: stay visible to the sweeper
                continue
            return True
        raise RetryableError(f"release of {conversation_id}: too much contention")

    def conversations_to_sweep(self, *, now: float, limit: int = 100) -> list[str]:
        """Conversations that need a run (pending messages, or a lease that expired while
        held): per shard, one query of the sparse sweep index by lease expiry, filtered on
        the pending count or a held lease (a released one has expiry 0)."""
        found: list[str] = []
        for shard in range(SWEEP_SHARDS):
            if len(found) >= limit:
                break
            items = self._table.query(
                f"#{SWEEP_INDEX_PK} = :shard AND #{SWEEP_INDEX_SK} <= :now",
                {":shard": string(_shard_name(shard)), ":now": number(now), ":zero": number(0)},
                index=SWEEP_INDEX,
                filter_expression=f"#{PENDING_COUNT} > :zero OR #{SWEEP_INDEX_SK} > :zero",
                limit=limit - len(found),
                consistent=False,  # a global index is eventually consistent only
            )
            found.extend(get_str(i, TABLE_PK).removeprefix(CONVERSATION_PREFIX) for i in items)
        return found

    # state ------------------------------------------------------------------------------

    def get_conversation(self, conversation_id: str) -> ConversationState | None:
        """The conversation's state, or ``None`` if it never had a message."""
        meta = self._table.get(conversation_pk(conversation_id), META_SK)
        return None if meta is None else _state(meta)

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

    def load_turn(
        self, conversation_id: str, *, window: int
    ) -> tuple[bytes | None, list[LogEntry]]:
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

    def commit_turn(self, conversation_id: str, commit: TurnCommit) -> None:
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

    def _commit(
        self, pk: str, conversation_id: str, meta: Item, parts: CommitParts, placed: list[Item]
    ) -> tuple[Item, CommitParts]:
        """Run the commit's transaction until it applies; the ``meta`` it was conditional on
        and the parts it wrote."""
        for _ in attempts():
            actions, index = commit_actions(
                self._table, pk, meta, parts, placed, expiry=self._expiry()
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
        return [OutboxEntry(get_int(i, "seq"), self._payload(i)) for i in items]

    def mark_delivered(self, conversation_id: str, seqs: list[int], *, now: float) -> None:
        """Mark entries delivered; idempotent (the first delivery time stays). One write per
        sequence: not atomic across sequences, which re-delivery after a crash tolerates."""
        expiry = self._expiry()
        update = "SET #delivered_at = if_not_exists(#delivered_at, :now)"
        values = {":now": number(now)}
        if expiry:
            update += f", #{TTL_ATTRIBUTE} = if_not_exists(#{TTL_ATTRIBUTE}, :expires)"
            values[":expires"] = expiry[TTL_ATTRIBUTE]
        for seq in seqs:
            # An unknown sequence has nothing to mark, as in SQLite; the condition only keeps
            # the update from creating a stray item.
            with contextlib.suppress(ConditionFailed):
                self._table.update(
                    conversation_pk(conversation_id),
                    seq_sk(OUTBOX_PREFIX, seq),
                    f"{update} REMOVE #{PENDING_INDEX_SK}",
                    cond="attribute_exists(#pk)",
                    values=values,
                )

    def history(self, conversation_id: str) -> History | None:
        """State, every inbox entry and every outbox entry, oldest first."""
        state = self.get_conversation(conversation_id)
        if state is None:
            return None
        inbox = [
            InboxEntry(
                get_int(i, "seq"), _message(i), _INBOX_STATUS.validate_python(get_str(i, "status"))
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
        """The TTL attribute of an item finished now, or nothing without a retention."""
        if self._retention is None:
            return {}
        return {TTL_ATTRIBUTE: number(int(time.time()) + self._retention)}


@dataclass(frozen=True)
class _Accept:
    """One message's acceptance, decided from the ``meta`` read before the transaction."""

    msg: InboundMessage
    body: bytes
    dedupe_sk: str
    meta: Item | None
    now: float
    policy: DoubleTextingPolicy
    seq: int
    outbox_seq: int
    rejected: bool

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
    ) -> _Accept:
        if meta is None:
            policy, seq, outbox_seq, busy = msg.policy or default_policy, 1, 0, False
        else:
            policy = msg.policy or _POLICY.validate_python(get_str(meta, "policy"))
            seq, outbox_seq = get_int(meta, "inbox_seq") + 1, get_int(meta, "outbox_seq")
            busy = _state(meta).lease_live(now)
        rejected = policy == "reject" and busy
        return cls(msg, body, dedupe_sk, meta, now, policy, seq, outbox_seq, rejected)


def _accept_update(accept: _Accept) -> dict[str, Any]:
    """``meta``'s update for an accepted message, conditional on everything it decided on."""
    sets = ["#inbox_seq = :seq", "#policy = :policy", "#updated_at = :now"]
    conds = ["#inbox_seq = :previous"]
    if accept.policy == "reject":  # the decision rests on the lease: it must still stand
        conds.append(
            "attribute_exists(#lease_token) AND #lease_expires_at > :now"
            if accept.rejected
            else "(attribute_not_exists(#lease_token) OR #lease_expires_at <= :now)"
        )
    add = ""
    if accept.rejected:
        sets.append("#outbox_seq = :outbox_seq")
        conds.append("#outbox_seq = :outbox_previous")
    else:
        # Pending work makes the conversation visible to the sweeper.
        sets.append(f"#{SWEEP_INDEX_PK} = :shard")
        add = f" ADD #{PENDING_COUNT} :one"
    cid = accept.msg.conversation_id
    return {
        "update": "SET " + ", ".join(sets) + add,
        "cond": " AND ".join(conds),
        "values": {
            ":seq": number(accept.seq),
            ":previous": number(accept.seq - 1),
            ":policy": string(accept.policy),
            ":now": number(accept.now),
            ":shard": string(_sweep_shard(cid)),
            ":one": number(1),
            ":outbox_seq": number(accept.outbox_seq + 1),
            ":outbox_previous": number(accept.outbox_seq),
        },
    }


def _new_meta(conversation_id: str, policy: str, now: float) -> Item:
    """``meta`` of a conversation created by its first (pending) message."""
    return {
        **key(conversation_pk(conversation_id), META_SK),
        "conversation_id": string(conversation_id),
        "policy": string(policy),
        "status": string("idle"),
        "inbox_seq": number(1),
        "outbox_seq": number(0),
        "log_seq": number(0),
        "last_token": number(0),
        SWEEP_INDEX_SK: number(0),  # no lease yet; the sweep index's key must be present
        PENDING_COUNT: number(1),
        SWEEP_INDEX_PK: string(_sweep_shard(conversation_id)),
        "created_at": number(now),
        "updated_at": number(now),
    }


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
        pending_approval=None if approval is None else _approval(approval),
        created_at=get_float(meta, "created_at"),
        updated_at=get_float(meta, "updated_at"),
        approval_task_token=opt_str(meta, "approval_task_token"),
        pending_count=opt_int(meta, PENDING_COUNT),
    )


def _approval(raw: str) -> ApprovalRequest:
    return ApprovalRequest.model_validate_json(raw)


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
