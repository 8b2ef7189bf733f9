"""The DynamoDB table of the AWS runtime: key names, indexes and TTL, shared with the IaC.

One on-demand table holds everything, keyed by ``pk`` (partition) and ``sk`` (sort):

=========================  ==============================  =====================================
``pk``                     ``sk``                          item
=========================  ==============================  =====================================
``conv#<conversation>``    ``meta``                        policy, status, sequences, lease,
                                                           pending approval, pending count
``conv#<conversation>``    ``in#<seq:012d>``               inbox entry (message JSON, status)
``conv#<conversation>``    ``dedupe#<key>``                dedupe marker (message id, seq)
``conv#<conversation>``    ``out#<seq:012d>``              outbox entry (payload JSON)
``conv#<conversation>``    ``log#<seq:012d>``              message log entry (opaque bytes)
``conv#<conversation>``    ``logid#<message id>``          marker: this message id is logged
``conv#<conversation>``    ``log#~ckpt``                   checkpoint (bytes, or an S3 pointer)
``conv#<conversation>``    ``connection#<connection>``     a WebSocket connection of the conv.
``conn#<connection>``      ``conv#<conversation>``         reverse link, to remove a connection
``ticket#<id>``            ``ticket``                      a support ticket
``counter#tickets``        ``counter``                     atomic counter of ticket ids
``effect#<key>``           ``effect``                      a tool side effect already applied
=========================  ==============================  =====================================

Two indexes keep the hot reads proportional to the work, not to the conversation's length:

- :data:`PENDING_INDEX`, a sparse *local* index on :data:`PENDING_INDEX_SK`: only pending inbox
  entries and undelivered outbox entries carry that attribute, so claiming and delivering read
  just those (strongly consistent, which a global index cannot be).
- :data:`SWEEP_INDEX`, a sparse *global* index: ``meta`` carries :data:`SWEEP_INDEX_PK` (one of
  :data:`SWEEP_SHARDS` shard values) while messages may be pending, sorted by lease expiry, so
  the sweeper queries only conversations whose lease has expired.
- :data:`OWNER_INDEX`, a *global* index of ``meta`` by its tenant and owner
  (:data:`OWNER_INDEX_PK`), most recently active first: a caller's list of conversations.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

TABLE_PK = "pk"
TABLE_SK = "sk"

# Key prefixes and fixed sort keys (the table above).
CONVERSATION_PREFIX = "conv#"
CONNECTION_PK_PREFIX = "conn#"
META_SK = "meta"
FORGOTTEN_PK_PREFIX = "forgotten#"
FORGOTTEN_SK = "forgotten"
"""What an erased conversation leaves for a while: the last fencing token it issued, so a
conversation created again under its id goes on above it (a run cut off by the erasure never
holds the new one's lease). Keyed by a hash of the id: no item names an erased id."""


def forgotten_key(conversation_id: str) -> tuple[str, str]:
    """The key of the tombstone an erasure of ``conversation_id`` leaves."""
    digest = hashlib.sha256(conversation_id.encode("utf-8", "surrogatepass")).hexdigest()
    return FORGOTTEN_PK_PREFIX + digest, FORGOTTEN_SK


INBOX_PREFIX = "in#"
OUTBOX_PREFIX = "out#"
LOG_PREFIX = "log#"
LOG_LAST_SK = LOG_PREFIX + "9" * 12
"""The highest log sort key (``seq_sk`` pads to 12 digits)."""
CHECKPOINT_SK = LOG_PREFIX + "~ckpt"
"""Just after the last log entry ('~' sorts after every digit, and ``log#`` before ``logid#``):
one backwards query reads the checkpoint and the log window together (``load_pending``'s
fallback when no renewal image is at hand)."""
LOG_ID_PREFIX = "logid#"
DEDUPE_PREFIX = "dedupe#"
CONNECTION_PREFIX = "connection#"

PENDING_INDEX = "pending-items"
PENDING_INDEX_SK = "pending_sk"

SWEEP_INDEX = "sweep-pending"
SWEEP_INDEX_PK = "pending_gsi"
SWEEP_INDEX_SK = "lease_expires_at"
"""The lease expiry on ``meta`` (0 while no lease is held: an index key must be present)."""
SWEEP_SHARDS = 16
"""Shards of the sweep index's partition key: every lease renewal of a conversation in the
index writes to it, and one index partition takes about 1,000 writes/s. Changing this number
strands items in shards the sweeper no longer queries: migrate, do not just edit."""

OWNER_INDEX = "by-owner"
OWNER_INDEX_PK = "owner_key"
"""On ``meta``: the conversation's tenant and owner as one key (set at creation; absent for a
conversation a backend created without them, which no principal lists)."""
OWNER_INDEX_SK = "updated_at"
"""``meta``'s last activity: the owner's conversations, the most recently active first."""
OWNER_INDEX_ATTRIBUTES = ("conversation_id", "status", "status_hold", "created_at")
"""What the owner index projects besides its keys: what a list of conversations shows
(and ``caller_values``, the metadata a search matches)."""

PENDING_COUNT = "pending"
"""Number of pending inbox entries, on ``meta``; projected into the sweep index."""
UNDELIVERED_COUNT = "undelivered"
"""Number of outbox entries not delivered yet, on ``meta``: a turn that sees 0 sends what
it wrote without querying the outbox."""

TTL_ATTRIBUTE = "expires_at"
"""Epoch seconds; set on finished inbox, outbox and log items when a retention is configured."""


def conversation_pk(conversation_id: str) -> str:
    """The partition key of a conversation's items."""
    return CONVERSATION_PREFIX + conversation_id


def seq_sk(prefix: str, seq: int) -> str:
    """The sort key of a numbered item: zero-padded so that string order is number order."""
    return f"{prefix}{seq:012d}"


@dataclass(frozen=True)
class DynamoDBTableSpec:
    """The store's table: its ``CreateTable`` request and the TTL setting that goes with it."""

    name: str

    def create_request(self) -> dict[str, Any]:
        """The ``CreateTable`` parameters (on-demand billing, every index)."""
        return {
            "TableName": self.name,
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [
                {"AttributeName": TABLE_PK, "AttributeType": "S"},
                {"AttributeName": TABLE_SK, "AttributeType": "S"},
                {"AttributeName": PENDING_INDEX_SK, "AttributeType": "S"},
                {"AttributeName": SWEEP_INDEX_PK, "AttributeType": "S"},
                {"AttributeName": SWEEP_INDEX_SK, "AttributeType": "N"},
                {"AttributeName": OWNER_INDEX_PK, "AttributeType": "S"},
                {"AttributeName": OWNER_INDEX_SK, "AttributeType": "N"},
            ],
            "KeySchema": [
                {"AttributeName": TABLE_PK, "KeyType": "HASH"},
                {"AttributeName": TABLE_SK, "KeyType": "RANGE"},
            ],
            "LocalSecondaryIndexes": [
                {
                    "IndexName": PENDING_INDEX,
                    "KeySchema": [
                        {"AttributeName": TABLE_PK, "KeyType": "HASH"},
                        {"AttributeName": PENDING_INDEX_SK, "KeyType": "RANGE"},
                    ],
                    # ALL: a claim reads the pending messages' bodies in one query.
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": SWEEP_INDEX,
                    "KeySchema": [
                        {"AttributeName": SWEEP_INDEX_PK, "KeyType": "HASH"},
                        {"AttributeName": SWEEP_INDEX_SK, "KeyType": "RANGE"},
                    ],
                    "Projection": {
                        "ProjectionType": "INCLUDE",
                        "NonKeyAttributes": [PENDING_COUNT],
                    },
                },
                {
                    "IndexName": OWNER_INDEX,
                    "KeySchema": [
                        {"AttributeName": OWNER_INDEX_PK, "KeyType": "HASH"},
                        {"AttributeName": OWNER_INDEX_SK, "KeyType": "RANGE"},
                    ],
                    # not ALL: a lease renewal (which no list shows) writes no index item
                    "Projection": {
                        "ProjectionType": "INCLUDE",
                        "NonKeyAttributes": [*OWNER_INDEX_ATTRIBUTES, "caller_values"],
                    },
                },
            ],
        }

    def ttl_request(self) -> dict[str, Any]:
        """The ``UpdateTimeToLive`` parameters enabling TTL on :data:`TTL_ATTRIBUTE`."""
        return {
            "TableName": self.name,
            "TimeToLiveSpecification": {"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        }

    def create(self, client: Any, *, wait: bool = True) -> None:
        """Create the table with ``client`` (a boto3 DynamoDB client) and enable its TTL.

        For tests and the sandbox; deployed stacks declare the same table in their IaC.
        """
        client.create_table(**self.create_request())
        if wait:
            client.get_waiter("table_exists").wait(TableName=self.name)
        client.update_time_to_live(**self.ttl_request())
