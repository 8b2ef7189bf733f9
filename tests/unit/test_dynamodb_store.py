"""What the store contracts do not cover for the DynamoDB backend: S3 offload, round trips,
error mapping, the sweep index, TTL, the optimistic retries and the tickets' item keys (moto,
in process)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from events.outbound import Reply
from tests.fakes import ManualClock, RecordingSink, RecordingStarter, ScriptedAgent
from tests.moto_env import mocked_table
from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore
from workers.adapters.aws.dynamodb_tickets import DynamoDBTicketStore
from workers.adapters.aws.tables import (
    CHECKPOINT_SK,
    SWEEP_INDEX_PK,
    TTL_ATTRIBUTE,
    conversation_pk,
)
from workers.core.model import AcceptResult, Access, LogEntry, TurnCommit
from workers.core.steps import Deps, accept_message, drive_run
from workers.errors import LeaseLost, NotFound, PermanentError, RetryableError

T0 = 1_700_000_000.0
CID = "ticket:4711"
TABLE = "agentworker-test"
BUCKET = "agentworker-test-blobs"
BIG = 420_000  # over DynamoDB's 400 KB item limit


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    with mocked_table(monkeypatch, TABLE) as dynamodb:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        yield dynamodb, s3


@pytest.fixture
def store(aws: tuple[Any, Any]) -> DynamoDBConversationStore:
    dynamodb, s3 = aws
    return DynamoDBConversationStore(dynamodb=dynamodb, table_name=TABLE, s3=s3, bucket=BUCKET)


def msg(text: str = "hi", key: str | None = None, cid: str = CID, **kw: Any) -> InboundMessage:
    return InboundMessage(conversation_id=cid, text=text, dedupe_key=key, **kw)


def started(store: DynamoDBConversationStore, cid: str = CID) -> int:
    """A conversation with one pending message and a lease; returns the token."""
    store.append_inbox(msg(cid=cid), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(cid, now=T0, ttl=10)
    assert lease is not None
    return lease.token


def raw(aws: tuple[Any, Any], cid: str, sk: str) -> dict[str, Any]:
    item: dict[str, Any] = aws[0].get_item(
        TableName=TABLE, Key={"pk": {"S": conversation_pk(cid)}, "sk": {"S": sk}}
    )["Item"]
    return item


def s3_keys(aws: tuple[Any, Any]) -> list[str]:
    listing = aws[1].list_objects_v2(Bucket=BUCKET)
    return sorted(o["Key"] for o in listing.get("Contents", []))


class RacingClient:
    """A DynamoDB client that runs ``race`` once just before the first call of ``operation``
    (another writer slipping in between a read and a conditional write)."""

    def __init__(self, client: Any, operation: str, race: Callable[[], None]) -> None:
        self._client, self._operation = client, operation
        self._race: Callable[[], None] | None = race

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name == self._operation and self._race is not None:
            race, self._race = self._race, None
            race()
        return attribute


# S3 offload -----------------------------------------------------------------------------------


def test_a_large_checkpoint_round_trips_through_encrypted_s3(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    token = started(store)
    big = bytes(range(256)) * (BIG // 256)
    store.commit_turn(CID, TurnCommit(token, [1], "idle", big))
    assert store.load_checkpoint(CID) == big
    (key,) = s3_keys(aws)
    assert key.startswith(f"conversations/{CID}/checkpoint/{token}-")
    assert aws[1].head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
    pointer = raw(aws, CID, CHECKPOINT_SK)
    assert "data" not in pointer and pointer["data_s3_key"]["S"] == key
    # A small checkpoint replaces it inline and the object it replaced is deleted.
    store.commit_turn(CID, TurnCommit(token, [], "idle", b"small"))
    assert store.load_checkpoint(CID) == b"small" and s3_keys(aws) == []


def test_a_run_that_loses_its_lease_mid_commit_leaves_no_object_behind(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    token = started(store)
    store.commit_turn(CID, TurnCommit(token, [], "idle", b"x" * BIG))
    live = s3_keys(aws)

    def take_over() -> None:  # the lease expired; a new run takes it mid-commit
        assert store.try_acquire_lease(CID, now=T0 + 20, ttl=10) is not None

    slow = DynamoDBConversationStore(
        dynamodb=RacingClient(aws[0], "transact_write_items", take_over),
        table_name=TABLE,
        s3=aws[1],
        bucket=BUCKET,
    )
    with pytest.raises(LeaseLost):
        slow.commit_turn(CID, TurnCommit(token, [1], "idle", b"y" * BIG))
    assert slow.api_calls.counts["s3.put_object"] == 1  # written before the transaction...
    assert s3_keys(aws) == live  # ...and deleted when it was refused
    assert store.load_checkpoint(CID) == b"x" * BIG


def test_large_log_entries_and_replies_are_offloaded_too(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    token = started(store)
    reply = Reply(conversation_id=CID, turn_id="t", text="r" * BIG)
    log = [LogEntry("m1", "tool", b"t" * BIG), LogEntry("m2", "ai", b"small")]
    store.commit_turn(CID, TurnCommit(token, [1], "idle", b"ck", log, [reply]))
    assert [e.data for e in store.load_log(CID, limit=5)] == [b"t" * BIG, b"small"]
    assert store.pending_outbox(CID)[0].payload == reply
    assert [k.split("/")[2] for k in s3_keys(aws)] == ["log", "outbox"]
    # A resumed turn repeating the big entry writes nothing new and leaves no orphan.
    store.commit_turn(
        CID, TurnCommit(token, [], "idle", None, [LogEntry("m1", "tool", b"t" * BIG)])
    )
    assert len(s3_keys(aws)) == 2 and len(store.load_log(CID, limit=5)) == 2


def test_forget_deletes_the_partition_the_back_links_and_every_object(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    token = started(store)
    reply = Reply(conversation_id=CID, turn_id="t", text="r" * BIG)
    log = [LogEntry("m1", "tool", b"t" * BIG)]
    store.commit_turn(CID, TurnCommit(token, [1], "idle", b"c" * BIG, log, [reply]))
    store.add_connection("conn-9", CID, now=T0)
    orphan = f"conversations/{CID}/checkpoint/orphan"
    aws[1].put_object(Bucket=BUCKET, Key=orphan, Body=b"left by a crash")
    assert len(s3_keys(aws)) == 4
    removed = store.forget(CID)
    assert removed is not None and removed["objects"] == 4 and removed["connections"] == 1
    assert s3_keys(aws) == []
    left = aws[0].scan(TableName=TABLE)["Items"]
    assert not [i for i in left if CID in json.dumps(i)]  # no item names it any more


def test_without_a_bucket_a_large_blob_is_refused(aws: tuple[Any, Any]) -> None:
    store = DynamoDBConversationStore(dynamodb=aws[0], table_name=TABLE)
    token = started(store)
    with pytest.raises(PermanentError, match="S3 bucket"):
        store.commit_turn(CID, TurnCommit(token, [1], "idle", b"x" * BIG))
    assert store.load_checkpoint(CID) is None and len(store.pending_inbox(CID)) == 1


# round trips ----------------------------------------------------------------------------------


def test_round_trips_of_a_typical_turn(store: DynamoDBConversationStore) -> None:
    counts: dict[str, int] = {}

    def measure(name: str, call: Callable[[], Any]) -> Any:
        before = store.api_calls.total
        result = call()
        counts[name] = counts.get(name, 0) + store.api_calls.total - before
        return result

    def turn(text: str, key: str) -> None:
        accepted = measure(
            "append_inbox",
            lambda: store.append_inbox(
                msg(text, key), now=T0, default_policy="enqueue", lease_ttl=60
            ),
        )
        token = accepted.lease.token  # taken by the accept's own write
        state = measure(
            "renew_lease", lambda: store.renew_lease(CID, token, now=T0, ttl=60, bind=f"x{token}")
        )
        work = measure("load_pending", lambda: store.load_pending(state, window=20))
        assert [e.message.text for e in work.inbox] == [text]
        seq = work.inbox[0].seq
        log = [LogEntry(f"u{seq}", "human", text.encode()), LogEntry(f"a{seq}", "ai", b"ok")]
        reply = Reply(conversation_id=CID, turn_id="t", text="ok")
        commit = TurnCommit(token, [seq], "idle", f"ck{seq}".encode(), log, [reply])
        [entry] = measure("commit_turn", lambda: store.commit_turn(CID, commit))
        released = measure(
            "release_lease",
            lambda: store.release_lease(
                CID, token, seen_inbox_seq=state.inbox_seq, now=T0, delivered=[entry.seq]
            ),
        )
        assert released

    turn("first", "1")
    turn("second", "2")  # reads the first turn's checkpoint and log in the same call
    assert store.load_checkpoint(CID) == b"ck2" and store.pending_outbox(CID) == []
    assert len(store.load_log(CID, limit=10)) == 4
    # The first accept reads meta and the dedupe marker; the second writes at once, on what
    # the first predicted (the run done, the lease released): a transaction that also takes
    # the lease.
    assert counts.pop("append_inbox") == 2 + 1
    assert {k: v / 2 for k, v in counts.items()} == {
        "renew_lease": 1,  # binds the run on its first step
        "load_pending": 1,  # one BatchGetItem: inbox, checkpoint, log window
        "commit_turn": 1,  # conditional on the image the renewal returned: no read
        "release_lease": 1,  # with the delivery mark in the same transaction
    }
    assert store.api_calls.counts["dynamodb.transact_write_items"] == 6
    assert not any(name.startswith("s3.") for name in store.api_calls.counts)


def test_an_accept_on_a_wrong_prediction_costs_one_more_call_and_is_right(
    store: DynamoDBConversationStore,
) -> None:
    def calls(text: str, key: str, now: float = T0) -> tuple[int, AcceptResult]:
        before = store.api_calls.total
        result = store.append_inbox(msg(text, key), now=now, default_policy="enqueue", lease_ttl=60)
        return store.api_calls.total - before, result

    assert calls("a", "a")[0] == 2  # nothing predicted in this process yet: read, write
    # The run still holds the lease (double texting): the prediction "released" is wrong,
    # the refused transaction returns meta's image, the retry is right.
    n, second = calls("b", "b")
    assert n == 2 and second.lease is None and not second.duplicate
    n, again = calls("a", "a")  # a duplicate: the refused marker write returns the marker
    assert n == 1 and again.duplicate and again.seq == 1
    n, late = calls("c", "c", now=T0 + 61)  # the lease expired: taken by the accept
    assert n == 2 and late.lease is not None and late.lease.token == 2
    assert [e.seq for e in store.pending_inbox(CID)] == [1, 2, 3]


def test_a_prediction_that_refuses_is_checked_by_a_read(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    """A warm process predicted Alice's conversation from its last accept; another erased
    it and Bob made one under the id: Bob's message is accepted, not refused on the guess."""
    dynamodb, s3 = aws
    other = DynamoDBConversationStore(dynamodb=dynamodb, table_name=TABLE, s3=s3, bucket=BUCKET)
    alice, bob = Access("acme", frozenset({"alice"})), Access("acme", frozenset({"bob"}))

    def owned(owner: str, key: str) -> InboundMessage:
        return msg(key, key, tenant="acme", owner=owner)

    store.append_inbox(owned("alice", "a"), now=T0, default_policy="enqueue", access=alice)
    assert other.forget(CID) is not None
    made = other.append_inbox(owned("bob", "b"), now=T0, default_policy="enqueue", access=bob)
    again = store.append_inbox(owned("bob", "c"), now=T0, default_policy="enqueue", access=bob)
    assert again.seq == made.seq + 1 and not again.duplicate
    with pytest.raises(NotFound):  # and Alice, read this time, is refused
        store.append_inbox(owned("alice", "d"), now=T0, default_policy="enqueue", access=alice)


def test_a_whole_run_through_the_core(store: DynamoDBConversationStore) -> None:
    sink, starter = RecordingSink(), RecordingStarter()
    deps = Deps(store, ScriptedAgent(), sink, starter, ManualClock(T0))
    accept_message(deps, msg("one", "1", cid="ws:4711"), LOCAL_USER)
    accept_message(deps, msg("two", "2", cid="ws:4711"), LOCAL_USER)
    store.api_calls.reset()
    summary = drive_run(deps, starter.runs[0])
    assert summary.turns == 2 and summary.ended == "idle"
    assert [p.text for p in sink.sent if isinstance(p, Reply)] == ["echo one", "echo two"]
    # Per turn: renew (the first binds), one read of inbox + checkpoint + log, the commit;
    # then the first turn marks its reply delivered (a message is still pending) and the
    # second releases the lease with its mark in the same write. No idle step.
    assert store.api_calls.total == 2 * 3 + 1 + 1
    assert store.conversations_to_sweep(now=T0 + 3600) == []


# error mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("ProvisionedThroughputExceededException", 400, RetryableError),
        ("ThrottlingException", 400, RetryableError),
        ("InternalServerError", 500, RetryableError),
        ("ValidationException", 400, PermanentError),
    ],
)
def test_aws_errors_map_to_ours(
    store: DynamoDBConversationStore, aws: tuple[Any, Any], code: str, status: int, error: type
) -> None:
    with Stubber(aws[0]) as stub:
        stub.add_client_error("get_item", service_error_code=code, http_status_code=status)
        with pytest.raises(error, match=code):
            store.get_conversation(CID)


def test_a_throttled_transaction_is_retryable(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    token = started(store)
    meta = raw(aws, CID, "meta")
    with Stubber(aws[0]) as stub:
        stub.add_response("get_item", {"Item": meta})
        stub.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            http_status_code=400,
            modeled_fields={"CancellationReasons": [{"Code": "None"}, {"Code": "ThrottlingError"}]},
        )
        with pytest.raises(RetryableError, match="throttled"):
            store.commit_turn(CID, TurnCommit(token, [1], "idle", b"ck"))


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("ResourceNotFoundException", 400, PermanentError),  # refused: a retry fails alike
        ("NonExistentQueue", 400, PermanentError),
        ("KMSThrottlingException", 400, RetryableError),
        ("SomethingNew", 429, RetryableError),
        ("SomethingNew", 503, RetryableError),
        ("502", 502, RetryableError),  # a proxy's HTML page: botocore names it by status
    ],
)
def test_an_unknown_code_is_judged_by_its_status(
    store: DynamoDBConversationStore, aws: tuple[Any, Any], code: str, status: int, error: type
) -> None:
    """Before, an unknown code passed through as botocore's ``ClientError``: the workflow
    saw a name it does not handle (issue 17, item 16)."""
    with Stubber(aws[0]) as stub:
        stub.add_client_error("get_item", service_error_code=code, http_status_code=status)
        with pytest.raises(error, match=code):
            store.get_conversation(CID)


def test_an_answer_that_is_not_the_services_is_retryable(
    store: DynamoDBConversationStore, aws: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load balancer's text page with a 500: botocore cannot parse it and says further
    retries may succeed (``ResponseParserError``, no status, no code)."""
    from botocore.parsers import ResponseParserError

    def garbled(**_: Any) -> Any:
        raise ResponseParserError("Unable to parse response, invalid XML received: b'oops'")

    monkeypatch.setattr(aws[0], "get_item", garbled)
    with pytest.raises(RetryableError, match="invalid XML"):
        store.get_conversation(CID)


# the sweep index ------------------------------------------------------------------------------


def test_sweeper_query_reads_the_sparse_index(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    cids = [f"ws:user{i}:chat" for i in range(6)]
    tokens = {cid: started(store, cid) for cid in cids}
    # 0: lease live. 1: crashed run, message pending. 2: turn committed, then crashed.
    # 3: released with a message still pending. 4: released, nothing pending. 5: never leased.
    store.renew_lease(cids[0], tokens[cids[0]], now=T0 + 50, ttl=60)
    store.commit_turn(cids[2], TurnCommit(tokens[cids[2]], [1], "idle"))
    store.append_inbox(msg("more", cid=cids[3]), now=T0, default_policy="enqueue")
    assert store.release_lease(cids[3], tokens[cids[3]], seen_inbox_seq=2, now=T0)
    store.commit_turn(cids[4], TurnCommit(tokens[cids[4]], [1], "idle"))
    assert store.release_lease(cids[4], tokens[cids[4]], seen_inbox_seq=1, now=T0)
    store.append_inbox(msg(cid="ws:user5:chat"), now=T0, default_policy="enqueue")
    # 2 is swept too: its reply may never have been delivered, and its lease is still held.
    assert sorted(store.conversations_to_sweep(now=T0 + 20)) == [
        cids[1],
        cids[2],
        cids[3],
        cids[5],
    ]
    assert len(store.conversations_to_sweep(now=T0 + 20, limit=2)) == 2
    # Only conversations that may have work stay in the index.
    assert SWEEP_INDEX_PK not in raw(aws, cids[4], "meta")
    assert SWEEP_INDEX_PK in raw(aws, cids[3], "meta")
    queries = store.api_calls.counts["dynamodb.query"]
    store.conversations_to_sweep(now=T0 + 20)
    assert store.api_calls.counts["dynamodb.query"] - queries == 16  # one per shard


def test_a_throttled_shard_does_not_cost_the_others_their_sweep(
    store: DynamoDBConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads 16 shards; it gave up at the first throttled query, so while the table
    throttled one call in fifteen (the reliability suite's dependency storm) no sweep ever
    finished and a run that died holding its lease was never taken over. A shard that fails
    for now is left to the next sweep; only when all fail is the error raised."""
    cids = [f"ws:user{i}:chat" for i in range(12)]
    for cid in cids:
        started(store, cid)  # leases expire at T0 + 10
    real = store._table.query
    calls: list[int] = []

    def every_other_throttled(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) % 2:
            raise RetryableError("dynamodb.query failed (ProvisionedThroughputExceeded)")
        return real(*args, **kwargs)

    monkeypatch.setattr(store._table, "query", every_other_throttled)
    half = store.conversations_to_sweep(now=T0 + 20)
    assert 0 < len(half) < len(cids) and len(calls) == 16
    monkeypatch.setattr(store._table, "query", real)
    assert set(half) < set(store.conversations_to_sweep(now=T0 + 20)) == set(cids)

    def always_throttled(*_: Any, **__: Any) -> Any:
        raise RetryableError("dynamodb.query failed (ProvisionedThroughputExceeded)")

    monkeypatch.setattr(store._table, "query", always_throttled)
    with pytest.raises(RetryableError):
        store.conversations_to_sweep(now=T0 + 20)


# retention, keys, limits, contention ----------------------------------------------------------


def test_table_spec_enables_ttl_and_finished_items_carry_it(aws: tuple[Any, Any]) -> None:
    ttl = aws[0].describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == TTL_ATTRIBUTE and ttl["TimeToLiveStatus"] == "ENABLED"
    store = DynamoDBConversationStore(
        dynamodb=aws[0], table_name=TABLE, s3=aws[1], bucket=BUCKET, retention_days=30
    )
    token = started(store)
    store.append_inbox(msg("later", "k2"), now=T0, default_policy="enqueue")
    assert TTL_ATTRIBUTE not in raw(aws, CID, "in#000000000001")  # pending work never expires
    reply = Reply(conversation_id=CID, turn_id="t", text="a")
    store.commit_turn(
        CID, TurnCommit(token, [1], "idle", b"ck", [LogEntry("m", "ai", b"a")], [reply])
    )
    consumed, pending = raw(aws, CID, "in#000000000001"), raw(aws, CID, "in#000000000002")
    assert TTL_ATTRIBUTE in consumed and TTL_ATTRIBUTE not in pending
    assert TTL_ATTRIBUTE in raw(aws, CID, "log#000000000001")
    assert TTL_ATTRIBUTE not in raw(aws, CID, "out#000000000001")
    store.mark_delivered(CID, [1], now=T0)
    expires = int(raw(aws, CID, "out#000000000001")[TTL_ATTRIBUTE]["N"])
    assert expires > T0 + 29 * 86_400
    # What lives as long as the conversation is used restarts its retention at every
    # accept and commit: an idle conversation goes whole (meta, checkpoint).
    month = time.time() + 30 * 86_400
    for sk in ("meta", "log#~ckpt"):
        assert abs(int(raw(aws, CID, sk)[TTL_ATTRIBUTE]["N"]) - month) < 120, sk
    store.append_inbox(msg("new", cid="ws:fresh:1"), now=T0, default_policy="enqueue")
    assert abs(int(raw(aws, "ws:fresh:1", "meta")[TTL_ATTRIBUTE]["N"]) - month) < 120


def test_long_dedupe_keys_are_hashed_and_still_dedupe(store: DynamoDBConversationStore) -> None:
    key = "slack:" + "é" * 500  # 1,006 bytes: too long for a sort key as is
    first = store.append_inbox(msg("a", key), now=T0, default_policy="enqueue")
    again = store.append_inbox(msg("b", key), now=T0, default_policy="enqueue")
    assert again.duplicate and again.seq == first.seq == 1


def test_a_commit_over_the_transaction_limit_is_refused(store: DynamoDBConversationStore) -> None:
    token = started(store)
    log = [LogEntry(f"m{i}", "ai", b"x") for i in range(60)]  # two actions each
    with pytest.raises(PermanentError, match="100"):
        store.commit_turn(CID, TurnCommit(token, [1], "idle", b"ck", log))
    assert store.load_log(CID, limit=100) == [] and len(store.pending_inbox(CID)) == 1


def test_a_repeated_commit_changes_nothing_twice(store: DynamoDBConversationStore) -> None:
    token = started(store)
    store.append_inbox(msg("two", "k2"), now=T0, default_policy="enqueue")
    commit = TurnCommit(token, [1], "idle", b"ck", [LogEntry("m1", "ai", b"a")])
    store.commit_turn(CID, commit)
    store.commit_turn(CID, commit)  # e.g. a retried turn whose first commit went through
    assert [e.seq for e in store.pending_inbox(CID)] == [2]
    assert [e.message_id for e in store.load_log(CID, limit=10)] == ["m1"]
    assert not store.release_lease(CID, token, seen_inbox_seq=1, now=T0)
    assert store.release_lease(CID, token, seen_inbox_seq=2, now=T0)
    # The pending count was decremented once: message 2 keeps the conversation sweepable.
    assert store.conversations_to_sweep(now=T0) == [CID]


def test_a_commit_retries_when_a_rejected_notice_takes_its_outbox_slot(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    store.append_inbox(msg("first", "1", policy="reject"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    assert lease is not None

    def reject_one() -> None:
        other = store.append_inbox(msg("second", "2"), now=T0 + 1, default_policy="enqueue")
        assert other.rejected

    racing = DynamoDBConversationStore(
        dynamodb=RacingClient(aws[0], "transact_write_items", reject_one),
        table_name=TABLE,
        s3=aws[1],
        bucket=BUCKET,
    )
    reply = Reply(conversation_id=CID, turn_id="t", text="answer")
    racing.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"ck", outbox=[reply]))
    entries = store.pending_outbox(CID)
    assert [(e.seq, e.payload.type) for e in entries] == [(1, "notice"), (2, "reply")]
    assert racing.api_calls.counts["dynamodb.transact_write_items"] == 2
    assert racing.api_calls.counts["dynamodb.get_item"] == 1  # the retry used the old image


def test_an_accept_retries_when_another_message_takes_its_sequence(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    store.append_inbox(msg("zero", "0"), now=T0, default_policy="enqueue")

    def sneak_in() -> None:
        store.append_inbox(msg("one", "1"), now=T0, default_policy="enqueue")

    racing = DynamoDBConversationStore(
        dynamodb=RacingClient(aws[0], "transact_write_items", sneak_in), table_name=TABLE
    )
    result = racing.append_inbox(msg("two", "2"), now=T0, default_policy="enqueue")
    assert result.seq == 3 and not result.duplicate
    assert [e.message.text for e in store.pending_inbox(CID)] == ["zero", "one", "two"]


def test_a_commit_on_a_stale_renewal_image_is_rebuilt_not_lost(
    store: DynamoDBConversationStore,
) -> None:
    """Between the renewal and the commit another writer moved meta: a message rejected
    under the reject policy wrote a notice to the outbox. The commit's conditions fail on
    the stale image and it is rebuilt on the current one."""
    store.append_inbox(msg("first", policy="reject"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=60)
    assert lease is not None
    store.renew_lease(CID, lease.token, now=T0, ttl=60)
    late = store.append_inbox(msg("second"), now=T0 + 1, default_policy="enqueue")
    assert late.rejected  # its notice took outbox seq 1
    reply = Reply(conversation_id=CID, turn_id="t", text="answer")
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"ck", [], [reply]))
    outbox = [e.payload.text for e in store.pending_outbox(CID)]
    assert outbox[-1] == "answer" and len(outbox) == 2


def test_a_commit_after_losing_the_lease_writes_nothing_even_with_a_renewal_image(
    store: DynamoDBConversationStore,
) -> None:
    store.append_inbox(msg("hi"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    assert lease is not None
    store.renew_lease(CID, lease.token, now=T0, ttl=10)  # the image says: token holds
    assert store.try_acquire_lease(CID, now=T0 + 60, ttl=10) is not None  # taken over
    reply = Reply(conversation_id=CID, turn_id="t", text="stale")
    with pytest.raises(LeaseLost):
        store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"stale", [], [reply]))
    assert store.load_checkpoint(CID) is None and store.pending_outbox(CID) == []


def test_tickets_keep_their_items_on_the_conversation_table(
    store: DynamoDBConversationStore, aws: tuple[Any, Any]
) -> None:
    """The ticket store reads and writes the same items as when the conversation store held
    the tickets (tickets written before stay readable), in the round trips it documents."""
    started(store)
    tickets = DynamoDBTicketStore(dynamodb=aws[0], table_name=TABLE)
    ticket = tickets.create_ticket(
        idempotency_key="k",
        conversation_id=CID,
        customer="acme/alice",
        subject="s",
        body="b",
        priority="low",
        now=T0,
    )
    assert tickets.api_calls.total == 3  # effect check, id counter, transaction
    tickets.update_ticket(
        1,
        customer="acme/alice",
        idempotency_key="u",
        status="closed",
        priority=None,
        comment=None,
        now=T0,
    )
    assert tickets.api_calls.total == 3 + 2  # ticket and effect read together, transaction
    items = aws[0].scan(TableName=TABLE)["Items"]
    keys = {(i["pk"]["S"], i["sk"]["S"]) for i in items if not i["pk"]["S"].startswith("conv#")}
    assert keys == {
        ("ticket#1", "ticket"),
        ("counter#tickets", "counter"),
        ("effect#k", "effect"),
        ("effect#u", "effect"),
    }
    assert ticket.ticket_id == 1 and store.get_conversation(CID) is not None
