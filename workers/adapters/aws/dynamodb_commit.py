"""The transaction of a turn's commit, built from the ``meta`` item it is conditional on.

One ``TransactWriteItems``: ``meta`` (fencing token, sequences, status, pending count), the
consumed inbox entries (still pending), the log entries with their ``logid#`` markers (not
logged yet), the outbox entries and the checkpoint. When DynamoDB cancels it, the reasons say
which action's condition failed; :meth:`CommitParts.without` drops what turned out to be
done already (SQLite's ``INSERT OR IGNORE``) and the caller rebuilds the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from events.outbound import OutboxPayload
from workers.adapters.aws.calls import Item
from workers.adapters.aws.dynamodb_table import (
    DynamoDBTable,
    get_int,
    key,
    key_part,
    number,
    opt_int,
    string,
)
from workers.adapters.aws.offload import Blob, S3Offload
from workers.adapters.aws.tables import (
    CHECKPOINT_SK,
    INBOX_PREFIX,
    LOG_ID_PREFIX,
    LOG_PREFIX,
    META_SK,
    OUTBOX_PREFIX,
    PENDING_COUNT,
    PENDING_INDEX_SK,
    TTL_ATTRIBUTE,
    UNDELIVERED_COUNT,
    seq_sk,
)
from workers.core.model import LogEntry, TurnCommit
from workers.errors import LeaseLost, TurnSuperseded

Action = tuple[str, Any]
"""What one action of the transaction writes: ``("consumed", seq)``, ``("log", message_id)``."""


@dataclass(frozen=True)
class CommitParts:
    """What a commit still has to write; ``placed`` are the blobs' item attributes, in the
    order of :meth:`blobs` (checkpoint, every log entry, outbox payloads)."""

    commit: TurnCommit
    consumed: list[int]
    all_log: list[LogEntry]
    log_positions: list[int]
    """Indexes into ``all_log`` of the entries still to write."""

    @classmethod
    def of(cls, commit: TurnCommit) -> CommitParts:
        unique: dict[str, LogEntry] = {}
        for entry in commit.log:
            unique.setdefault(entry.message_id, entry)  # the first of a repeated id wins
        log = list(unique.values())
        return cls(commit, sorted(set(commit.consumed)), log, list(range(len(log))))

    @property
    def log(self) -> list[LogEntry]:
        return [self.all_log[p] for p in self.log_positions]

    def blobs(self) -> list[Blob]:
        """Checkpoint, log entries, outbox payloads: what goes inline or to S3."""
        checkpoint = self.commit.checkpoint
        head = [] if checkpoint is None else [Blob("checkpoint", checkpoint)]
        return [
            *head,
            *(Blob("log", e.data) for e in self.all_log),
            *(outbox_blob(p) for p in self.commit.outbox),
        ]

    def without(self, done: list[Action]) -> CommitParts:
        """These parts less the consumed entries and log ids DynamoDB found done."""
        consumed = {v for kind, v in done if kind == "consumed"}
        logged = {v for kind, v in done if kind == "log"}
        return replace(
            self,
            consumed=[s for s in self.consumed if s not in consumed],
            log_positions=[
                p for p in self.log_positions if self.all_log[p].message_id not in logged
            ],
        )

    def orphans(self, placed: list[Item]) -> list[str | None]:
        """S3 keys of log entries that were not written (their id was logged before)."""
        offset = 0 if self.commit.checkpoint is None else 1
        written = set(self.log_positions)
        return [
            S3Offload.s3_key(placed[offset + p])
            for p in range(len(self.all_log))
            if p not in written
        ]


def check_commit(conversation_id: str, commit: TurnCommit, meta: Item | None) -> Item:
    """``meta`` if ``commit`` may apply to it: ``LeaseLost`` for a stale token,
    ``TurnSuperseded`` if the inbox moved past ``expect_inbox_seq``."""
    if meta is None or opt_int(meta, "lease_token") != commit.token:
        raise lease_lost(conversation_id, commit.token, meta)
    seq = get_int(meta, "inbox_seq")
    if commit.expect_inbox_seq is not None and seq != commit.expect_inbox_seq:
        raise TurnSuperseded(f"inbox moved from {commit.expect_inbox_seq} to {seq} during the turn")
    return meta


def lease_lost(conversation_id: str, token: int, meta: Item | None) -> LeaseLost:
    holder = None if meta is None else opt_int(meta, "lease_token")
    return LeaseLost(f"token {token} no longer holds {conversation_id} (lease token: {holder})")


def commit_actions(
    table: DynamoDBTable,
    pk: str,
    meta: Item,
    parts: CommitParts,
    placed: list[Item],
    *,
    expiry: Item,
    retained: Item | None = None,
) -> tuple[list[Item], list[Action]]:
    """The transaction of ``parts`` on top of ``meta``, and what each action is. ``expiry``:
    the TTL of what this commit finishes; ``retained``: the TTL restarted on meta and the
    checkpoint (the conversation was used now)."""
    commit = parts.commit
    retained = retained or {}
    log_seq, outbox_seq = get_int(meta, "log_seq"), get_int(meta, "outbox_seq")
    update = _meta_update(commit, parts, meta, placed)
    if retained:
        update["update"] = update["update"].replace(
            "SET ", f"SET #{TTL_ATTRIBUTE} = :retained, ", 1
        )
        update["values"][":retained"] = retained[TTL_ATTRIBUTE]
    actions = [table.update_action(pk, META_SK, **update)]
    index: list[Action] = [("meta", None)]
    consume = "SET #status = :consumed" + (", #expires_at = :expires" if expiry else "")
    marks = {":consumed": string("consumed")}
    if commit.failed is not None:  # failed for good: kept with its error
        consume += ", #error = :error"
        marks = {":consumed": string("failed"), ":error": string(commit.failed)}
    for seq in parts.consumed:
        actions.append(
            table.update_action(
                pk,
                seq_sk(INBOX_PREFIX, seq),
                f"{consume} REMOVE #{PENDING_INDEX_SK}",
                cond="#status = :pending",
                values=marks | {":pending": string("pending")} | _expires_value(expiry),
            )
        )
        index.append(("consumed", seq))
    offset = 0 if commit.checkpoint is None else 1
    for n, position in enumerate(parts.log_positions, start=log_seq + 1):
        entry = parts.all_log[position]
        marker = {**key(pk, LOG_ID_PREFIX + key_part(entry.message_id)), "seq": number(n)}
        actions.append(table.put(marker | expiry, cond="attribute_not_exists(#pk)"))
        index.append(("log", entry.message_id))
        item = {
            **key(pk, seq_sk(LOG_PREFIX, n)),
            "seq": number(n),
            "message_id": string(entry.message_id),
            "role": string(entry.role),
            **placed[offset + position],
            **expiry,
        }
        actions.append(table.put(item))
        index.append(("log-entry", entry.message_id))
    first_outbox = offset + len(parts.all_log)
    for n, payload in enumerate(commit.outbox):
        item = outbox_item(pk, outbox_seq + n + 1, payload, placed[first_outbox + n])
        actions.append(table.put(item))
        index.append(("outbox", n))
    if commit.checkpoint is not None:
        checkpoint = {
            **key(pk, CHECKPOINT_SK),
            "token": number(commit.token),
            **placed[0],
            **retained,
        }
        actions.append(table.put(checkpoint))
        index.append(("checkpoint", None))
    return actions, index


def _meta_update(
    commit: TurnCommit, parts: CommitParts, meta: Item, placed: list[Item]
) -> dict[str, Any]:
    log_seq, outbox_seq = get_int(meta, "log_seq"), get_int(meta, "outbox_seq")
    values: Item = {
        ":token": number(commit.token),
        ":running": string("running"),
        ":hold": string("awaiting_approval"),
        ":expect": number(commit.expect_inbox_seq or 0),
        ":log_seq": number(log_seq + len(parts.log_positions)),
        ":log_seq0": number(log_seq),
        ":outbox_seq": number(outbox_seq + len(commit.outbox)),
        ":outbox_seq0": number(outbox_seq),
        ":drained": number(-len(parts.consumed)),
        ":written": number(len(commit.outbox)),
    }
    # While the lease is held the status is 'running'; awaiting_approval is a hold that
    # outlives the run (the SQLite store's CASE expressions, without a read).
    sets, removes, conds = ["#status = :running"], [], ["#lease_token = :token"]
    if commit.expect_inbox_seq is not None:
        conds.append("#inbox_seq = :expect")
    if commit.lease_until is not None:
        sets.append("#lease_expires_at = :lease_until")
        values[":lease_until"] = number(commit.lease_until)
    # The new items' sort keys derive from the sequences read: the write depends on them.
    if parts.log_positions:
        sets.append("#log_seq = :log_seq")
        conds.append("#log_seq = :log_seq0")
    if commit.outbox:
        sets.append("#outbox_seq = :outbox_seq")
        conds.append("#outbox_seq = :outbox_seq0")
    if commit.pending_approval is not None:
        sets.append("#pending_approval = :approval")
        values[":approval"] = string(commit.pending_approval.model_dump_json())
    else:
        removes.append("#pending_approval")
    if commit.status == "awaiting_approval":
        sets.append("#status_hold = :hold")
    else:
        removes.append("#status_hold")
    removes.append("#approval_task_token")  # a waiting run, if any, has moved on
    removes.append("#claimed_seq")  # the claimed turn committed
    if commit.checkpoint is not None:
        # The pointer on meta too: the next commit deletes the object it replaces.
        s3_key = S3Offload.s3_key(placed[0])
        if s3_key is None:
            removes.append("#ckpt_s3_key")
        else:
            sets.append("#ckpt_s3_key = :ckpt_key")
            values[":ckpt_key"] = string(s3_key)
    update = "SET " + ", ".join(sets)
    if removes:
        update += " REMOVE " + ", ".join(removes)
    adds = []
    if parts.consumed:
        adds.append(f"#{PENDING_COUNT} :drained")
    if commit.outbox:
        adds.append(f"#{UNDELIVERED_COUNT} :written")
    if adds:
        update += " ADD " + ", ".join(adds)
    return {"update": update, "cond": " AND ".join(conds), "values": values}


def _expires_value(expiry: Item) -> Item:
    return {":expires": expiry[TTL_ATTRIBUTE]} if expiry else {}


def outbox_blob(payload: OutboxPayload) -> Blob:
    return Blob("outbox", payload.model_dump_json().encode())


def outbox_item(pk: str, seq: int, payload: OutboxPayload, placed: Item) -> Item:
    """An undelivered outbox entry; ``placed`` holds its payload (inline or S3 pointer)."""
    sk = seq_sk(OUTBOX_PREFIX, seq)
    # pending_sk puts the entry in the sparse pending index until it is delivered.
    return {
        **key(pk, sk),
        "seq": number(seq),
        "type": string(payload.type),
        PENDING_INDEX_SK: string(sk),
        **placed,
    }
