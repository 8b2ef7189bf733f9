"""The store contracts: every backend (SQLite, DynamoDB on moto, the in-memory fakes) must
pass this same suite, for its ``ConversationStore`` and for its ``TicketStore``, both wired
on one storage as the composition root wires them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from events.inbound import ApprovalDecision, InboundMessage
from events.outbound import ApprovalRequest, Notice, Reply
from tests.fakes import InMemoryConversationStore, InMemoryTicketStore
from tests.moto_env import mocked_table
from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.core.model import Access, CallerValues, LogEntry, PendingWork, Ticket, TurnCommit
from workers.errors import LeaseLost, NotFound, TurnSuperseded

T0 = 1_700_000_000.0
CID = "ticket:4711"
TABLE = "agentworker"
BUCKET = "agentworker-blobs"


@dataclass(frozen=True)
class Stores:
    """A backend's conversation store and ticket store on one storage (a SQLite file, a
    DynamoDB table), as the composition root wires them."""

    conversations: Any
    tickets: Any
    open_tickets: Callable[[], Any]
    """Another ticket store on the same storage, opened on its own."""


@pytest.fixture(params=["sqlite", "memory", "dynamodb"])
def stores(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stores]:
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        conversations, alone = SqliteConversationStore(path), SqliteDatabase(path)
        tickets = SqliteTicketStore(conversations.database)
        yield Stores(conversations, tickets, partial(SqliteTicketStore, alone))
        alone.close()
        conversations.close()
    elif request.param == "dynamodb":
        import boto3

        from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore
        from workers.adapters.aws.dynamodb_tickets import DynamoDBTicketStore

        with mocked_table(monkeypatch, TABLE) as dynamodb:
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            store = DynamoDBConversationStore(
                dynamodb=dynamodb, table_name=TABLE, s3=s3, bucket=BUCKET
            )
            open_tickets = partial(DynamoDBTicketStore, dynamodb=dynamodb, table_name=TABLE)
            yield Stores(store, open_tickets(), open_tickets)
    else:
        memory = InMemoryTicketStore()  # nothing to reopen: the same dicts
        yield Stores(InMemoryConversationStore(), memory, lambda: memory)


@pytest.fixture
def store(stores: Stores) -> Any:
    return stores.conversations


@pytest.fixture
def tickets(stores: Stores) -> Any:
    return stores.tickets


def msg(text: str = "hi", key: str | None = None, **kw: Any) -> InboundMessage:
    return InboundMessage(conversation_id=CID, text=text, dedupe_key=key, **kw)


def test_append_dedupes_by_key_and_bumps_sequence(store: Any) -> None:
    a = store.append_inbox(msg("one", "k1"), now=T0, default_policy="enqueue")
    b = store.append_inbox(msg("two", "k2"), now=T0, default_policy="enqueue")
    again = store.append_inbox(msg("one again", "k1"), now=T0 + 1, default_policy="enqueue")
    assert (a.seq, b.seq) == (1, 2)
    assert again.duplicate and again.message_id == a.message_id and again.seq == 1
    assert [e.message.text for e in store.pending_inbox(CID)] == ["one", "two"]
    assert store.get_conversation(CID).inbox_seq == 2


def test_lease_has_monotonic_fencing_tokens(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    first = store.try_acquire_lease(CID, now=T0, ttl=10)
    assert first is not None and first.token == 1
    assert store.try_acquire_lease(CID, now=T0 + 5, ttl=10) is None
    second = store.try_acquire_lease(CID, now=T0 + 11, ttl=10)  # first expired
    assert second is not None and second.token == 2
    with pytest.raises(LeaseLost):
        store.renew_lease(CID, 1, now=T0 + 12, ttl=10)
    state = store.renew_lease(CID, 2, now=T0 + 12, ttl=10)
    assert state.lease_token == 2 and state.lease_expires_at == T0 + 22 and state.inbox_seq == 1


def test_lease_on_unknown_conversation_is_not_found(store: Any) -> None:
    with pytest.raises(NotFound):
        store.try_acquire_lease("nobody", now=T0, ttl=10)


def test_the_first_renewal_binds_and_refuses_a_second_execution(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    state = store.renew_lease(CID, lease.token, now=T0 + 1, ttl=10, bind="exec-a")
    assert state.lease_execution_id == "exec-a" and state.status == "running"
    assert state.lease_expires_at == T0 + 11
    store.renew_lease(CID, lease.token, now=T0, ttl=10, bind="exec-a")  # same execution
    with pytest.raises(LeaseLost, match="already bound"):
        store.renew_lease(CID, lease.token, now=T0, ttl=10, bind="exec-b")
    assert store.get_conversation(CID).lease_execution_id == "exec-a"


def test_an_accept_takes_the_lease_in_the_same_write(store: Any) -> None:
    a = store.append_inbox(msg("a", "a"), now=T0, default_policy="enqueue", lease_ttl=10)
    assert a.lease is not None and (a.lease.token, a.lease.expires_at) == (1, T0 + 10)
    b = store.append_inbox(msg("b", "b"), now=T0 + 1, default_policy="enqueue", lease_ttl=10)
    assert b.lease is None and not b.rejected  # a run holds it: that run sees b
    again = store.append_inbox(msg("a", "a"), now=T0 + 20, default_policy="enqueue", lease_ttl=10)
    assert again.duplicate and again.lease is None
    c = store.append_inbox(msg("c", "c"), now=T0 + 11, default_policy="enqueue", lease_ttl=10)
    assert c.lease is not None and c.lease.token == 2  # the first lease expired
    state = store.get_conversation(CID)
    assert (state.lease_token, state.last_token, state.lease_execution_id) == (2, 2, None)
    with pytest.raises(LeaseLost):
        store.renew_lease(CID, 1, now=T0 + 12, ttl=10)
    rejected = store.append_inbox(
        msg("d", "d", policy="reject"), now=T0 + 12, default_policy="enqueue", lease_ttl=10
    )
    assert rejected.rejected and rejected.lease is None
    assert store.get_conversation(CID).lease_token == 2


def test_commit_is_fenced_and_atomic(store: Any) -> None:
    store.append_inbox(msg("q"), now=T0, default_policy="enqueue")
    stale = store.try_acquire_lease(CID, now=T0, ttl=10)
    fresh = store.try_acquire_lease(CID, now=T0 + 20, ttl=10)
    reply = Reply(conversation_id=CID, turn_id="t", text="a")
    entry = store.pending_inbox(CID)[0]
    with pytest.raises(LeaseLost):
        store.commit_turn(CID, TurnCommit(stale.token, [entry.seq], "idle", b"stale", [], [reply]))
    assert store.load_checkpoint(CID) is None and store.pending_outbox(CID) == []
    assert len(store.pending_inbox(CID)) == 1
    log = [LogEntry("m1", "human", b"q"), LogEntry("m2", "ai", b"a")]
    store.commit_turn(CID, TurnCommit(fresh.token, [entry.seq], "idle", b"ck1", log, [reply]))
    assert store.load_checkpoint(CID) == b"ck1"
    assert store.pending_inbox(CID) == []
    assert [e.payload.text for e in store.pending_outbox(CID)] == ["a"]
    assert [e.message_id for e in store.load_log(CID, limit=10)] == ["m1", "m2"]


def test_a_commit_renews_the_lease_it_holds_so_no_sweep_takes_it_over(store: Any) -> None:
    """A run whose lease ran out while its turn ran (nobody took it over yet) commits and
    renews the lease in the same write: the sweeper cannot start a second run that would
    deliver the same reply before the first marks it."""
    store.append_inbox(msg("q"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    entry = store.pending_inbox(CID)[0]
    reply = Reply(conversation_id=CID, turn_id="t", text="a")
    commit = TurnCommit(lease.token, [entry.seq], "idle", b"ck", [], [reply], lease_until=T0 + 40)
    store.commit_turn(CID, commit)
    assert store.get_conversation(CID).lease_expires_at == T0 + 40
    assert store.try_acquire_lease(CID, now=T0 + 30, ttl=10) is None  # expired at T0+10 before
    assert CID not in store.conversations_to_sweep(now=T0 + 30)
    plain = TurnCommit(lease.token, [], "idle", b"ck2")
    store.commit_turn(CID, plain)  # without lease_until: the expiry stays
    assert store.get_conversation(CID).lease_expires_at == T0 + 40


def test_a_failed_turn_marks_its_messages_failed_with_the_error(store: Any) -> None:
    """A turn that failed for good keeps its messages as ``failed`` with the error (what
    ``agentworker dlq`` lists); a turn that did not, as ``consumed``; a later one stays."""
    for text in ("ok", "bad", "later"):
        store.append_inbox(msg(text, text), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle"))
    notice = Notice(conversation_id=CID, level="error", text="sorry")
    failed = TurnCommit(lease.token, [2], "idle", outbox=[notice], failed="RetryableError: x")
    store.commit_turn(CID, failed)
    inbox = store.history(CID).inbox
    assert [(e.message.text, e.status, e.error) for e in inbox] == [
        ("ok", "consumed", None),
        ("bad", "failed", "RetryableError: x"),
        ("later", "pending", None),
    ]
    assert [e.message.text for e in store.pending_inbox(CID)] == ["later"]
    assert store.get_conversation(CID).pending_count in (1, None)


def test_log_is_append_only_and_windowed(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    for i in range(5):
        entries = [LogEntry(f"m{i}", "human", b"x")]
        store.commit_turn(CID, TurnCommit(lease.token, [], "idle", None, entries))
    # a repeated message id (a resumed turn) is written once
    store.commit_turn(CID, TurnCommit(lease.token, [], "idle", None, [LogEntry("m4", "ai", b"y")]))
    assert [e.message_id for e in store.load_log(CID, limit=3)] == ["m2", "m3", "m4"]
    assert store.load_log(CID, limit=3)[-1].data == b"x"


def test_commit_refused_when_inbox_moved_under_interrupt(store: Any) -> None:
    store.append_inbox(msg("a", "a"), now=T0, default_policy="interrupt")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    seen = store.get_conversation(CID).inbox_seq
    store.append_inbox(msg("b", "b"), now=T0, default_policy="interrupt")
    with pytest.raises(TurnSuperseded):
        store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"x", expect_inbox_seq=seen))
    assert len(store.pending_inbox(CID)) == 2 and store.load_checkpoint(CID) is None


def test_release_is_conditional_on_the_inbox_sequence(store: Any) -> None:
    store.append_inbox(msg("a", "a"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    seen = store.get_conversation(CID).inbox_seq
    store.append_inbox(msg("b", "b"), now=T0, default_policy="enqueue")
    assert store.release_lease(CID, lease.token, seen_inbox_seq=seen, now=T0) is False
    assert store.release_lease(CID, lease.token, seen_inbox_seq=seen + 1, now=T0) is True
    state = store.get_conversation(CID)
    assert state.lease_token is None and state.last_token == lease.token
    with pytest.raises(LeaseLost):
        store.release_lease(CID, lease.token, seen_inbox_seq=seen + 1, now=T0)


def test_handover_gives_a_fresh_token(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    new = store.handover_lease(CID, lease.token, now=T0 + 1, ttl=10)
    assert new.token == lease.token + 1
    with pytest.raises(LeaseLost):
        store.renew_lease(CID, lease.token, now=T0 + 2, ttl=10)


def test_reject_policy_refuses_messages_while_a_run_is_active(store: Any) -> None:
    store.append_inbox(msg("first", "1", policy="reject"), now=T0, default_policy="enqueue")
    store.try_acquire_lease(CID, now=T0, ttl=10)
    second = store.append_inbox(msg("second", "2"), now=T0 + 1, default_policy="enqueue")
    assert second.rejected and not second.duplicate
    assert [e.message.text for e in store.pending_inbox(CID)] == ["first"]
    notices = [e.payload for e in store.pending_outbox(CID)]
    assert notices[0].type == "notice" and notices[0].in_reply_to == [second.message_id]


def test_delivery_marks_are_idempotent(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    replies = [Reply(conversation_id=CID, turn_id="t", text=t) for t in ("a", "b")]
    store.commit_turn(CID, TurnCommit(lease.token, [], "idle", outbox=replies))
    first = store.pending_outbox(CID)[0]
    store.mark_delivered(CID, [first.seq], now=T0)
    store.mark_delivered(CID, [first.seq], now=T0 + 1)
    assert [e.payload.text for e in store.pending_outbox(CID)] == ["b"]
    history = store.history(CID)
    assert [e.delivered for e in history.outbox] == [True, False]


def test_pending_approval_round_trips(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    ask = ApprovalRequest(
        conversation_id=CID,
        turn_id="t",
        interrupt_id="i1",
        tool="update_ticket",
        args={"ticket_id": 1},
        text="ok?",
    )
    store.commit_turn(CID, TurnCommit(lease.token, [1], "awaiting_approval", pending_approval=ask))
    assert store.release_lease(CID, lease.token, seen_inbox_seq=1, now=T0)
    state = store.get_conversation(CID)
    assert state.status == "awaiting_approval" and state.pending_approval == ask
    approval = InboundMessage(
        conversation_id=CID,
        kind="approval",
        approval=ApprovalDecision(interrupt_id="i1", approved=True),
    )
    store.append_inbox(approval, now=T0 + 1, default_policy="enqueue")
    assert store.pending_inbox(CID)[0].message.approval == approval.approval


def test_sweeper_query_finds_expired_conversations_with_pending_messages(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    store.try_acquire_lease(CID, now=T0, ttl=10)
    assert store.conversations_to_sweep(now=T0 + 5) == []
    assert store.conversations_to_sweep(now=T0 + 11) == [CID]


def test_connections(store: Any) -> None:
    store.add_connection("c1", CID, now=T0)
    store.add_connection("c2", CID, now=T0 + 1)
    store.add_connection("c1", "ws:other", now=T0 + 2)
    assert store.list_connections(CID) == ["c1", "c2"]
    store.remove_connection("c1")
    assert store.list_connections(CID) == ["c2"] and store.list_connections("ws:other") == []


# tickets ---------------------------------------------------------------------------------


CUSTOMER = "acme/alice"
OTHER_CUSTOMER = "evil/mallory"


def create(
    tickets: Any, key: str, *, now: float = T0, customer: str = CUSTOMER, **fields: str
) -> Ticket:
    """``create_ticket`` with ``key``; the fields not given are defaults."""
    ticket: Ticket = tickets.create_ticket(
        idempotency_key=key,
        now=now,
        customer=customer,
        **({"conversation_id": CID, "subject": "s", "body": "b", "priority": "high"} | fields),
    )
    return ticket


def update(
    tickets: Any,
    ticket_id: int,
    key: str,
    *,
    now: float = T0,
    customer: str = CUSTOMER,
    **fields: str,
) -> Ticket:
    """``update_ticket`` with ``key``; the fields not given are left as they are."""
    ticket: Ticket = tickets.update_ticket(
        ticket_id,
        idempotency_key=key,
        now=now,
        customer=customer,
        **({"status": None, "priority": None, "comment": None} | fields),
    )
    return ticket


def get(tickets: Any, ticket_id: int, customer: str = CUSTOMER) -> Ticket | None:
    found: Ticket | None = tickets.get_ticket(ticket_id, customer=customer)
    return found


def test_ticket_writes_are_idempotent(tickets: Any) -> None:
    t1, t2 = create(tickets, "k"), create(tickets, "k")
    assert t1.ticket_id == t2.ticket_id
    up = update(tickets, t1.ticket_id, "u", status="closed", comment="done")
    again = update(tickets, t1.ticket_id, "u", status="closed", comment="done")
    assert up.status == "closed" and again.comments == ["done"]
    assert get(tickets, 999) is None
    with pytest.raises(NotFound):
        update(tickets, 999, "x", status="closed")


def test_tickets_are_numbered_from_one_and_read_back_as_written(tickets: Any) -> None:
    a = create(tickets, "a", subject="Printer", body="jammed")
    b = create(tickets, "b", now=T0 + 1, conversation_id="ws:u:1", body="", priority="normal")
    assert a == Ticket(1, CID, "Printer", "jammed", "open", "high", T0, T0, customer=CUSTOMER)
    assert b == Ticket(2, "ws:u:1", "s", "", "open", "normal", T0 + 1, T0 + 1, customer=CUSTOMER)
    assert (get(tickets, 1), get(tickets, 2)) == (a, b)


def test_an_update_changes_what_it_names_and_appends_its_comment(tickets: Any) -> None:
    t = create(tickets, "c", priority="low")
    up = update(tickets, t.ticket_id, "u1", now=T0 + 1, priority="urgent")
    assert (up.status, up.priority, up.comments, up.updated_at) == ("open", "urgent", [], T0 + 1)
    update(tickets, t.ticket_id, "u2", now=T0 + 2, status="closed", comment="fixed")
    last = update(tickets, t.ticket_id, "u3", now=T0 + 3, comment="thanks")
    assert last == Ticket(
        1, CID, "s", "b", "closed", "urgent", T0, T0 + 3, ["fixed", "thanks"], CUSTOMER
    )
    assert get(tickets, 1) == last


def test_another_customers_ticket_does_not_exist(tickets: Any) -> None:
    """A ticket tool of another customer's conversation neither reads nor changes it, and
    is told exactly what it would be told of a ticket that was never opened."""
    t = create(tickets, "a", subject="card 4111 1111 1111 1111")
    assert get(tickets, t.ticket_id, OTHER_CUSTOMER) is None
    with pytest.raises(NotFound) as foreign:
        update(tickets, t.ticket_id, "u", customer=OTHER_CUSTOMER, status="closed")
    with pytest.raises(NotFound) as missing:
        update(tickets, 999, "u2", customer=OTHER_CUSTOMER, status="closed")
    assert str(foreign.value).replace(str(t.ticket_id), "N") == str(missing.value).replace(
        "999", "N"
    )
    assert get(tickets, t.ticket_id) == t  # unchanged
    mine = create(tickets, "b", customer=OTHER_CUSTOMER)
    assert (
        get(tickets, mine.ticket_id, OTHER_CUSTOMER) == mine
        and get(tickets, mine.ticket_id) is None
    )


def test_tickets_beside_conversations_in_one_storage(stores: Stores) -> None:
    """Neither store sees the other's data, and another ticket store opened on the same file
    or table reads the tickets and their applied effects (same tables and keys)."""
    stores.conversations.append_inbox(msg("open a ticket"), now=T0, default_policy="enqueue")
    t = create(stores.tickets, "k")
    other = stores.open_tickets()
    assert get(other, t.ticket_id) == t
    assert create(other, "k") == t and get(stores.tickets, t.ticket_id + 1) is None
    assert [e.message.text for e in stores.conversations.pending_inbox(CID)] == ["open a ticket"]
    assert stores.conversations.conversations_to_sweep(now=T0) == [CID]


def test_a_run_holds_its_lease_while_waiting_for_an_approval(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    store.hold_for_approval(CID, lease.token, "task-token-1", now=T0, ttl=86_400)
    state = store.get_conversation(CID)
    assert state.approval_task_token == "task-token-1" and state.lease_expires_at == T0 + 86_400
    assert store.try_acquire_lease(CID, now=T0 + 3600, ttl=10) is None  # still held
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle"))
    assert store.get_conversation(CID).approval_task_token is None  # the run moved on
    store.hold_for_approval(CID, lease.token, "task-token-2", now=T0, ttl=60)
    assert store.release_lease(CID, lease.token, seen_inbox_seq=1, now=T0)
    assert store.get_conversation(CID).approval_task_token is None
    with pytest.raises(LeaseLost):
        store.hold_for_approval(CID, lease.token, "late", now=T0, ttl=60)


def test_the_sweeper_also_finds_a_run_that_died_holding_its_lease(store: Any) -> None:
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    reply = Reply(conversation_id=CID, turn_id="t", text="never delivered")
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", outbox=[reply]))
    assert store.pending_inbox(CID) == []
    assert store.conversations_to_sweep(now=T0 + 5) == []  # the run may still be alive
    assert store.conversations_to_sweep(now=T0 + 11) == [CID]  # it died after committing
    fresh = store.try_acquire_lease(CID, now=T0 + 11, ttl=10)
    assert store.release_lease(CID, fresh.token, seen_inbox_seq=1, now=T0)
    assert store.conversations_to_sweep(now=T0 + 100) == []  # released: nothing to do


def test_load_pending_reads_the_inbox_the_checkpoint_and_the_log_window(store: Any) -> None:
    store.append_inbox(msg("a", "a"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)

    def load(window: int) -> PendingWork:
        state = store.renew_lease(CID, lease.token, now=T0, ttl=10)
        work: PendingWork = store.load_pending(state, window=window)
        return work

    work = load(5)  # a new conversation
    assert [e.message.text for e in work.inbox] == ["a"]
    assert work.checkpoint is None and work.history == []
    log = [LogEntry(f"m{i}", "human", f"x{i}".encode()) for i in range(3)]
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", None, log))
    store.append_inbox(msg("b", "b"), now=T0, default_policy="enqueue")
    store.append_inbox(msg("c", "c"), now=T0, default_policy="enqueue")
    work = load(2)
    assert [(e.seq, e.message.text) for e in work.inbox] == [(2, "b"), (3, "c")]
    assert work.checkpoint is None and [e.message_id for e in work.history] == ["m1", "m2"]
    store.commit_turn(CID, TurnCommit(lease.token, [2], "idle", b"ck-1"))
    work = load(10)
    assert [e.message.text for e in work.inbox] == ["c"] and work.checkpoint == b"ck-1"
    assert [e.data for e in work.history] == [b"x0", b"x1", b"x2"]
    assert load(0).history == []
    assert [e.message_id for e in store.load_log(CID, limit=10)] == ["m0", "m1", "m2"]
    assert store.load_checkpoint(CID) == b"ck-1"


def test_load_pending_finds_pending_messages_around_rejected_ones(store: Any) -> None:
    store.append_inbox(msg("first", "1", policy="reject"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    assert store.append_inbox(msg("second", "2"), now=T0 + 1, default_policy="enqueue").rejected
    state = store.renew_lease(CID, lease.token, now=T0 + 1, ttl=10)
    assert [e.seq for e in store.load_pending(state, window=5).inbox] == [1]


def test_an_undelivered_count_kept_with_the_state_is_never_wrong(store: Any) -> None:
    """As the pending count: optional, and exact where kept (a turn that sees 0 sends what
    it wrote without reading the outbox, so a wrong 0 would strand an older entry)."""
    store.append_inbox(msg("a", "a", policy="reject"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)

    def count() -> int | None:
        state = store.renew_lease(CID, lease.token, now=T0, ttl=10)
        return None if state.undelivered_count is None else int(state.undelivered_count)

    seen = [count()]
    store.append_inbox(msg("b", "b"), now=T0, default_policy="enqueue")  # rejected: a notice
    seen.append(count())
    replies = [Reply(conversation_id=CID, turn_id="t", text=t) for t in ("x", "y")]
    written = store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", outbox=replies))
    assert [(e.seq, e.payload) for e in written] == [(2, replies[0]), (3, replies[1])]
    seen.append(count())
    store.mark_delivered(CID, [1], now=T0)
    store.mark_delivered(CID, [1], now=T0)  # a repeated mark counts once
    seen.append(count())
    assert store.release_lease(CID, lease.token, seen_inbox_seq=2, now=T0, delivered=[2, 3])
    assert store.pending_outbox(CID) == []
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    seen.append(count())
    assert seen in ([None] * 5, [0, 1, 3, 2, 0])


def test_a_refused_release_still_writes_its_delivery_marks(store: Any) -> None:
    store.append_inbox(msg("a", "a"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    reply = Reply(conversation_id=CID, turn_id="t", text="x")
    [entry] = store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", outbox=[reply]))
    store.append_inbox(msg("b", "b"), now=T0, default_policy="enqueue")
    released = store.release_lease(
        CID, lease.token, seen_inbox_seq=1, now=T0, delivered=[entry.seq]
    )
    assert not released and store.pending_outbox(CID) == []
    assert store.get_conversation(CID).lease_token == lease.token


def test_a_pending_count_kept_with_the_state_is_never_wrong(store: Any) -> None:
    """A store may not keep the count (``None``: claims read the inbox); one that does must
    be exact, or a claim would skip a pending message."""
    store.append_inbox(msg("a", "a"), now=T0, default_policy="enqueue")
    store.append_inbox(msg("b", "b"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)

    def count() -> int | None:
        state = store.renew_lease(CID, lease.token, now=T0, ttl=10)
        return None if state.pending_count is None else int(state.pending_count)

    seen = [count()]
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle"))
    seen.append(count())
    store.commit_turn(CID, TurnCommit(lease.token, [2], "idle"))
    seen.append(count())
    store.append_inbox(msg("c", "c"), now=T0, default_policy="enqueue")
    seen.append(count())
    assert seen in ([None] * 4, [2, 1, 0, 1])


# --- ownership --------------------------------------------------------------------------------

ALICE = Access("acme", frozenset({"alice"}))
MALLORY = Access("evil", frozenset({"mallory"}))
ACME_CHANNEL = Access("acme", frozenset({"bob", "acme:C1"}))


def owned(text: str = "hi", key: str | None = None, owner: str = "alice") -> InboundMessage:
    return InboundMessage(
        conversation_id=CID, text=text, dedupe_key=key, tenant="acme", owner=owner
    )


def test_a_new_conversation_records_its_tenant_and_owner(store: Any) -> None:
    store.append_inbox(owned(), now=T0, default_policy="enqueue", access=ALICE)
    state = store.get_conversation(CID)
    assert (state.tenant, state.owner) == ("acme", "alice")
    assert (store.history(CID).state.tenant, store.history(CID).state.owner) == ("acme", "alice")


def test_a_conversation_refuses_whom_its_access_does_not_admit(store: Any) -> None:
    first = store.append_inbox(owned(key="k1"), now=T0, default_policy="enqueue", access=ALICE)
    # Another tenant: not found, even for a key it guessed (a duplicate would leak an id).
    for key in ("k1", "k2"):
        with pytest.raises(NotFound):
            store.append_inbox(owned(key=key), now=T0 + 1, default_policy="enqueue", access=MALLORY)
    # The same tenant but another owner: not found either.
    with pytest.raises(NotFound):
        store.append_inbox(
            owned(key="k3"),
            now=T0 + 1,
            default_policy="enqueue",
            access=Access("acme", frozenset({"carol"})),
        )
    assert store.get_conversation(CID).inbox_seq == 1
    assert [e.message.message_id for e in store.pending_inbox(CID)] == [first.message_id]
    # Its owner again (the store may predict the conversation from its last accept).
    again = store.append_inbox(owned(key="k4"), now=T0 + 2, default_policy="enqueue", access=ALICE)
    assert again.seq == 2 and not again.duplicate


def test_a_group_owner_admits_every_member_and_a_backend_needs_no_access(store: Any) -> None:
    store.append_inbox(
        owned(key="k1", owner="acme:C1"), now=T0, default_policy="enqueue", access=ACME_CHANNEL
    )
    # bob is in the channel group; alice is not; a backend (access None) may post anyway.
    bob = store.append_inbox(owned(key="k2"), now=T0, default_policy="enqueue", access=ACME_CHANNEL)
    assert bob.seq == 2
    with pytest.raises(NotFound):
        store.append_inbox(owned(key="k3"), now=T0, default_policy="enqueue", access=ALICE)
    backend = store.append_inbox(owned(key="k4"), now=T0, default_policy="enqueue")
    assert backend.seq == 3
    assert store.get_conversation(CID).owner == "acme:C1"  # set once, at creation


def test_an_append_that_may_not_create_finds_nothing_to_create(store: Any) -> None:
    """An id in a namespace the caller may not create in (``Access.create`` false): the
    store refuses to create it in the append's own write, and appends once it exists."""
    no_create = Access("acme", frozenset({"alice"}), create=False)
    with pytest.raises(NotFound):
        store.append_inbox(owned(key="k1"), now=T0, default_policy="enqueue", access=no_create)
    assert store.get_conversation(CID) is None
    store.append_inbox(owned(key="k2"), now=T0, default_policy="enqueue", access=ALICE)
    later = store.append_inbox(owned(key="k3"), now=T0, default_policy="enqueue", access=no_create)
    assert later.seq == 2


def test_a_backends_conversation_admits_only_a_backend_naming_no_one(store: Any) -> None:
    """A conversation created with no tenant (a backend's) admits ``Access(None, None)``
    and no user; a user's conversation does not admit a backend naming no one."""
    backend_access = Access(None, None)
    anyone = InboundMessage(conversation_id=CID, text="ticket", dedupe_key="k1")
    store.append_inbox(anyone, now=T0, default_policy="enqueue", access=backend_access)
    again = anyone.model_copy(update={"dedupe_key": "k2"})
    second = store.append_inbox(again, now=T0, default_policy="enqueue", access=backend_access)
    assert second.seq == 2
    with pytest.raises(NotFound):
        store.append_inbox(owned(key="k3"), now=T0, default_policy="enqueue", access=ALICE)
    other = InboundMessage(conversation_id="ws:keep:1", text="x", tenant="acme", owner="alice")
    store.append_inbox(other, now=T0, default_policy="enqueue", access=ALICE)
    stray = other.model_copy(update={"tenant": None, "owner": None, "dedupe_key": "k9"})
    with pytest.raises(NotFound):
        store.append_inbox(stray, now=T0, default_policy="enqueue", access=backend_access)


# --- forget -----------------------------------------------------------------------------------


def test_tokens_go_on_above_an_erased_conversations(store: Any) -> None:
    """A run cut off by an erasure still holds its token: the conversation created again
    under the id must never issue it again (its commit would land in the new one)."""
    store.append_inbox(msg("q", "k1"), now=T0, default_policy="enqueue")
    old = store.try_acquire_lease(CID, now=T0, ttl=10)
    handed = store.handover_lease(CID, old.token, now=T0 + 1, ttl=10)
    assert store.forget(CID) is not None
    again = store.append_inbox(
        msg("again", "k1"), now=T0 + 2, default_policy="enqueue", lease_ttl=10
    )
    assert not again.duplicate and again.lease is not None
    assert again.lease.token > handed.token
    with pytest.raises(LeaseLost):
        store.renew_lease(CID, handed.token, now=T0 + 3, ttl=10)
    # Erased twice: still above.
    store.release_lease(CID, again.lease.token, seen_inbox_seq=1, now=T0 + 4)
    assert store.forget(CID) is not None
    third = store.append_inbox(
        msg("third", "k1"), now=T0 + 5, default_policy="enqueue", lease_ttl=10
    )
    assert third.lease is not None and third.lease.token > again.lease.token


def test_forget_erases_everything_of_the_conversation_and_only_it(store: Any) -> None:
    store.append_inbox(msg("q", "k1"), now=T0, default_policy="enqueue")
    other = InboundMessage(conversation_id="ws:keep:1", text="other")
    store.append_inbox(other, now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    [entry] = store.pending_inbox(CID)
    reply = Reply(conversation_id=CID, turn_id="t", text="a")
    log = [LogEntry("m1", "human", b"q"), LogEntry("m2", "ai", b"a")]
    store.commit_turn(CID, TurnCommit(lease.token, [entry.seq], "idle", b"ck", log, [reply]))
    store.append_inbox(msg("again", "k2"), now=T0 + 1, default_policy="enqueue")
    store.add_connection("conn-1", CID, now=T0)
    store.add_connection("conn-1", "ws:keep:1", now=T0)

    removed = store.forget(CID)
    assert removed is not None
    assert removed["conversation"] == 1 and removed["inbox"] == 2 and removed["outbox"] == 1
    assert removed["checkpoint"] == 1 and removed["connections"] == 1 and removed["log"] >= 2
    assert store.get_conversation(CID) is None and store.history(CID) is None
    assert store.pending_inbox(CID) == [] and store.load_checkpoint(CID) is None
    assert store.load_log(CID, limit=10) == [] and store.list_connections(CID) == []
    assert CID not in store.conversations_to_sweep(now=T0 + 100)
    assert store.forget(CID) is None  # nothing left to forget
    # The other conversation is untouched.
    assert store.list_connections("ws:keep:1") == ["conn-1"]
    assert [e.message.text for e in store.pending_inbox("ws:keep:1")] == ["other"]
    # The id is free again: a new conversation, a new owner, no old dedupe key.
    fresh = store.append_inbox(owned(key="k1"), now=T0 + 2, default_policy="enqueue", access=ALICE)
    assert not fresh.duplicate and fresh.seq == 1
    assert store.get_conversation(CID).owner == "alice"


def test_only_idle_conversations_expire(store: Any) -> None:
    """Pending work or a live lease keeps a conversation; an idle one is listed, unless the
    store expires conversations itself (DynamoDB's TTL)."""
    store.append_inbox(msg("q"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    assert store.expired_conversations(before=T0 + 5) == []  # pending, and leased
    [entry] = store.pending_inbox(CID)
    store.commit_turn(CID, TurnCommit(lease.token, [entry.seq], "idle", b"ck"))
    assert store.expired_conversations(before=T0 + 5) == []  # the lease still holds it
    assert store.release_lease(CID, lease.token, seen_inbox_seq=1, now=T0 + 1)
    later = InboundMessage(conversation_id="ws:later:1", text="x")
    store.append_inbox(later, now=T0 + 50, default_policy="enqueue")
    expired = store.expired_conversations(before=T0 + 20)
    if type(store).__name__ == "DynamoDBConversationStore":
        assert expired == []  # its TTL does it
    else:
        assert expired == [CID]


def test_the_retention_erases_a_conversation_only_while_it_is_idle(store: Any) -> None:
    """The retention lists the idle conversations, then erases them one by one: one that a
    message woke up in between is kept (the store checks again as it erases), and erased
    once it is idle again."""
    store.append_inbox(msg("q", "k1"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"ck"))
    assert store.release_lease(CID, lease.token, seen_inbox_seq=1, now=T0 + 1)
    store.append_inbox(msg("woke", "k2"), now=T0 + 30, default_policy="enqueue")
    assert store.forget(CID, idle_before=T0 + 20) is None  # listed idle before T0 + 20
    assert [e.message.text for e in store.pending_inbox(CID)] == ["woke"]
    lease = store.try_acquire_lease(CID, now=T0 + 30, ttl=10)
    store.commit_turn(CID, TurnCommit(lease.token, [2], "idle", b"ck2"))
    assert store.forget(CID, idle_before=T0 + 35) is None  # its lease holds it (to T0 + 40)
    assert store.release_lease(CID, lease.token, seen_inbox_seq=2, now=T0 + 31)
    removed = store.forget(CID, idle_before=T0 + 100)
    assert removed is not None and removed["conversation"] == 1
    assert store.get_conversation(CID) is None


# --- quotas -----------------------------------------------------------------------------------


def test_a_quota_counts_within_its_window_and_refuses_past_its_limit(store: Any) -> None:
    def spend(key: str, amount: int, now: float) -> float | None:
        wait: float | None = store.spend_quota(key, amount, limit=3, window_seconds=60, now=now)
        return wait

    start = 1_700_000_040.0  # a window boundary (a multiple of 60)
    assert [spend("a", 1, start + 1) for _ in range(3)] == [None, None, None]
    assert spend("a", 1, start + 10) == pytest.approx(50.0)  # refused: 50 s left
    assert spend("b", 3, start + 10) is None  # another key counts apart
    assert spend("b", 4, start + 10) == pytest.approx(50.0)  # more than the limit at once
    assert spend("a", 2, start + 61) is None  # the next window starts from zero
    assert spend("a", 2, start + 62) == pytest.approx(58.0)  # refused, nothing added...
    assert spend("a", 1, start + 63) is None  # ...so one more still fits


# --- the claim mark ---------------------------------------------------------------------------


def test_a_claim_is_marked_until_its_commit_or_release(store: Any) -> None:
    store.append_inbox(msg("a", "k1"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    assert store.renew_lease(CID, lease.token, now=T0, ttl=10, claim=False).claimed_seq is None
    assert store.renew_lease(CID, lease.token, now=T0, ttl=10).claimed_seq == 1
    store.append_inbox(msg("b", "k2"), now=T0, default_policy="enqueue")
    # A look without claiming says what the last claim saw (the worker died: which ones).
    assert store.renew_lease(CID, lease.token, now=T0, ttl=10, claim=False).claimed_seq == 1
    assert store.get_conversation(CID).claimed_seq == 1
    store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"ck"))
    assert store.get_conversation(CID).claimed_seq is None  # it committed
    assert store.renew_lease(CID, lease.token, now=T0, ttl=10).claimed_seq == 2
    store.commit_turn(CID, TurnCommit(lease.token, [2], "idle", b"ck2"))
    assert store.renew_lease(CID, lease.token, now=T0, ttl=10).claimed_seq == 2
    assert store.release_lease(CID, lease.token, seen_inbox_seq=2, now=T0)
    assert store.get_conversation(CID).claimed_seq is None  # released


def test_an_entry_remembers_which_sinks_took_it(store: Any) -> None:
    store.append_inbox(msg("q"), now=T0, default_policy="enqueue")
    lease = store.try_acquire_lease(CID, now=T0, ttl=10)
    reply = Reply(conversation_id=CID, turn_id="t", text="a")
    [entry] = store.commit_turn(CID, TurnCommit(lease.token, [1], "idle", b"ck", [], [reply]))
    assert store.pending_outbox(CID)[0].sinks_done == frozenset()
    store.mark_sinks(CID, entry.seq, ["slack"])
    store.mark_sinks(CID, entry.seq, ["slack", "sns"])  # idempotent, cumulative
    [pending] = store.pending_outbox(CID)
    assert pending.sinks_done == {"slack", "sns"} and not pending.delivered
    store.mark_sinks(CID, 999, ["slack"])  # no such entry: nothing happens
    store.mark_delivered(CID, [entry.seq], now=T0)
    assert store.pending_outbox(CID) == []


def test_a_conversations_own_values_are_kept_replaced_and_cleared(store: Any) -> None:
    assert store.set_values(CID, CallerValues(context={"a": 1}), now=T0) is False  # none yet
    store.append_inbox(msg(), now=T0, default_policy="enqueue")
    assert store.get_conversation(CID).values == CallerValues()
    values = CallerValues({"user_id": "u1"}, {"temperature": 0.2}, {"source": {"app": "web"}})
    assert store.set_values(CID, values, now=T0 + 5) is True
    state = store.get_conversation(CID)
    assert state.values == values and state.updated_at == T0 + 5
    assert store.history(CID).state.values == values
    assert store.set_values(CID, CallerValues(metadata={"x": "y"}), now=T0 + 6)
    assert store.get_conversation(CID).values == CallerValues(metadata={"x": "y"})
    assert store.set_values(CID, CallerValues(), now=T0 + 7)
    assert store.get_conversation(CID).values == CallerValues()
    store.forget(CID)
    assert store.set_values(CID, values, now=T0 + 8) is False


def test_an_owners_conversations_are_listed_most_recently_active_first(store: Any) -> None:
    def say(cid: str, owner: str, at: float) -> None:
        message = InboundMessage(conversation_id=cid, text="hi", tenant="acme", owner=owner)
        store.append_inbox(message, now=at, default_policy="enqueue")

    say("ws:acme:a1", "alice", T0)
    say("ws:acme:a2", "alice", T0 + 1)
    say("ws:acme:b1", "bob", T0 + 2)
    say("ws:acme:a3", "alice", T0 + 3)
    say("ws:acme:a1", "alice", T0 + 4)  # active again
    store.set_values("ws:acme:a2", CallerValues(metadata={"topic": "billing"}), now=T0 + 5)
    listed = store.list_conversations("acme", "alice", limit=10)
    assert [c.conversation_id for c in listed] == ["ws:acme:a2", "ws:acme:a1", "ws:acme:a3"]
    assert [c.updated_at for c in listed] == [T0 + 5, T0 + 4, T0 + 3]
    assert listed[0].values.metadata == {"topic": "billing"} and listed[0].created_at == T0 + 1
    assert {c.status for c in listed} == {"idle"}
    page = store.list_conversations("acme", "alice", limit=2, offset=1)
    assert [c.conversation_id for c in page] == ["ws:acme:a1", "ws:acme:a3"]
    assert store.list_conversations("acme", "alice", limit=5, offset=3) == []
    assert [c.conversation_id for c in store.list_conversations("acme", "bob", limit=5)] == [
        "ws:acme:b1"
    ]
    assert store.list_conversations("evil", "alice", limit=5) == []
    store.forget("ws:acme:a3")
    assert "ws:acme:a3" not in [
        c.conversation_id for c in store.list_conversations("acme", "alice", limit=5)
    ]


def test_a_conversation_created_before_its_first_message_takes_it_as_any_other(
    store: Any,
) -> None:
    values = CallerValues(metadata={"source": "sdk"})
    args = {"tenant": "acme", "owner": "alice", "policy": "enqueue", "values": values}
    assert store.create_conversation(CID, **args, now=T0) is True
    assert store.create_conversation(CID, **args, now=T0 + 1) is False  # one per id
    state = store.get_conversation(CID)
    assert (state.status, state.inbox_seq, state.lease_token) == ("idle", 0, None)
    assert (state.tenant, state.owner, state.values) == ("acme", "alice", values)
    assert state.created_at == T0 and store.pending_inbox(CID) == []
    assert [c.conversation_id for c in store.list_conversations("acme", "alice", limit=5)] == [CID]
    assert store.conversations_to_sweep(now=T0 + 10) == []  # nothing to do for the sweeper
    bob = Access(tenant="acme", owners=frozenset({"bob"}))
    with pytest.raises(NotFound):  # someone else's already
        store.append_inbox(msg("hi"), now=T0 + 2, default_policy="enqueue", access=bob)
    alice = Access(tenant="acme", owners=frozenset({"alice"}))
    accepted = store.append_inbox(msg("hi"), now=T0 + 2, default_policy="enqueue", access=alice)
    assert accepted.seq == 1 and not accepted.duplicate
    lease = store.try_acquire_lease(CID, now=T0 + 3, ttl=30)
    assert lease is not None and lease.token == 1
    store.release_lease(CID, lease.token, seen_inbox_seq=0, now=T0 + 4)

    store.forget(CID)  # created again: its tokens go on above the erased one's
    assert store.create_conversation(CID, **args, now=T0 + 5) is True
    again = store.try_acquire_lease(CID, now=T0 + 6, ttl=30)
    assert again is not None and again.token > lease.token
