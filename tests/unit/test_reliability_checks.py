"""The reliability suite's checks catch what they claim to: each invariant's violation,
fabricated, is counted (so a clean report means something)."""

from __future__ import annotations

from events.inbound import InboundMessage
from events.outbound import Notice, Reply
from reliability.concurrency import order_violations
from reliability.plan import fault_points, second_order
from reliability.probe import Commit, Fault, FaultBook, Ledger, check, forks, stale_writes
from workers.core.model import ConversationState, History, InboxEntry, OutboxEntry


def state(cid: str, *, lease: int | None = None, status: str = "idle") -> ConversationState:
    return ConversationState(
        conversation_id=cid,
        policy="enqueue",
        status=status,  # type: ignore[arg-type]
        inbox_seq=1,
        last_token=1,
        lease_token=lease,
        lease_expires_at=None,
        lease_execution_id=None,
        pending_approval=None,
        created_at=0.0,
        updated_at=0.0,
    )


def reply(cid: str, *ids: str, reply_id: str | None = None) -> Reply:
    extra = {"reply_id": reply_id} if reply_id else {}
    return Reply(conversation_id=cid, turn_id="t", in_reply_to=list(ids), text="ok", **extra)


def test_a_clean_ledger_has_no_violations() -> None:
    ledger = Ledger()
    ledger.accept("c", "m1")
    ledger.deliver("a", reply("c", "m1", reply_id="r1"))
    found = check(ledger, state, sinks=["a"])
    assert found.ok and found.messages == 1


def test_each_violation_is_counted() -> None:
    ledger = Ledger()
    for m in ("m1", "m2", "m3", "m4"):
        ledger.accept("c", m)
    ledger.deliver("a", reply("c", "m1", reply_id="r1"))
    ledger.deliver("a", reply("c", "m1", reply_id="r1"))  # the same payload twice
    ledger.deliver("a", reply("c", "m2", reply_id="r2"))
    ledger.deliver("a", reply("c", "m2", reply_id="r3"))  # a second answer
    ledger.deliver("b", reply("c", "m3", reply_id="r4"))  # never reached sink a
    ledger.commit(Commit("c", 1, None, "x"))
    ledger.commit(Commit("c", 2, None, "y"))  # started from nothing again: a fork
    ledger.wrote("c", "renew_lease", 2)
    ledger.wrote("c", "commit_turn", 1)  # a taken-over run wrote
    found = check(ledger, lambda cid: state(cid, lease=2), sinks=["a"])
    assert found.as_dict() | {"details": 0} == {
        "messages": 4,
        "failure_notices": 0,
        "unfired_faults": 0,
        "lost": 2,  # m4 never answered, m3's answer missing at a
        "answered_twice": 1,
        "duplicate_deliveries": 1,
        "forked_histories": 1,
        "stranded_leases": 1,
        "stale_writes": 1,
        "details": 0,
    }
    assert not found.ok and len(found.details) >= 7


def test_failure_notices_count_as_answers_not_violations() -> None:
    ledger = Ledger()
    ledger.accept("c", "m1")
    notice = Notice(conversation_id="c", level="error", in_reply_to=["m1"], text="sorry")
    ledger.deliver("a", notice)
    found = check(ledger, state, sinks=["a"])
    assert found.ok and found.failure_notices == 1


def test_a_gone_conversation_loses_its_messages() -> None:
    ledger = Ledger()
    ledger.accept("c", "m1")
    assert check(ledger, lambda cid: None, sinks=[]).lost == 1


def test_forks_and_stale_writes() -> None:
    details: list[str] = []
    linear = [Commit("c", 1, None, "a"), Commit("c", 1, None, None), Commit("c", 2, "a", "b")]
    assert forks(linear, details) == set()
    assert forks([*linear, Commit("c", 3, "a", "z")], details) == {"c"}
    assert stale_writes([("c", "renew_lease", 1), ("c", "commit_turn", 2)], details) == 0
    assert stale_writes([("c", "commit_turn", 2), ("d", "commit_turn", 1)], details) == 0
    assert stale_writes([("c", "commit_turn", 2), ("c", "release_lease", 1)], details) == 1


def test_a_fault_fires_once_after_the_named_write() -> None:
    book = FaultBook([Fault("commit_turn", 2, "c")])
    assert book.count("c", "commit_turn") is None
    assert book.count("d", "commit_turn") is None  # another conversation counts apart
    assert book.count("c", "commit_turn") == Fault("commit_turn", 2, "c")
    assert book.count("c", "commit_turn") is None
    assert book.counts("c") == {"commit_turn": 3}


def test_fault_points_and_second_order() -> None:
    counts = {"commit_turn": 3, "append_inbox": 1, "release_lease": 2}
    points = fault_points(counts, "c", every=False)  # first and last take turns, by name
    assert [(f.method, f.occurrence) for f in points] == [
        ("append_inbox", 1),
        ("commit_turn", 3),
        ("release_lease", 1),
    ]
    assert len(fault_points({"commit_turn": 3}, "c", every=True)) == 3
    seen = {"0": {"commit_turn": 1, "try_acquire_lease": 1}, "1": {"commit_turn": 2}}
    planned = [Fault("commit_turn", 1, "0"), Fault("commit_turn", 2, "1")]
    twice = second_order({"commit_turn": 2}, planned, seen.__getitem__, name="x{}".format)
    assert twice == [Fault("commit_turn", 1, "x0"), Fault("try_acquire_lease", 1, "x0")]


def history(policy_answers: list[list[int]], *, refused: tuple[int, ...] = ()) -> History:
    inbox = [
        InboxEntry(seq, InboundMessage(conversation_id="c", message_id=f"m{seq}", text="x"))
        for seq in range(1, 7)
    ]
    outbox = []
    for n, seqs in enumerate(policy_answers, start=1):
        ids = [f"m{s}" for s in seqs]
        outbox.append(OutboxEntry(n, reply("c", *ids)))
    from workers.core.policies import REJECTED_NOTICE

    for s in refused:
        notice = Notice(conversation_id="c", in_reply_to=[f"m{s}"], text=REJECTED_NOTICE)
        outbox.append(OutboxEntry(len(outbox) + 1, notice))
    return History(state("c"), inbox, outbox)


def test_order_violations_per_policy() -> None:
    details: list[str] = []
    assert order_violations("enqueue", history([[1], [2], [3]]), details) == 0
    assert order_violations("enqueue", history([[1], [3], [2]]), details) == 1
    assert order_violations("enqueue", history([[1, 2]]), details) == 1
    assert order_violations("merge", history([[1, 2], [3, 4, 5]]), details) == 0
    assert order_violations("merge", history([[1, 3]]), details) == 1
    assert order_violations("interrupt", history([[2, 3], [1]]), details) == 1
    assert order_violations("reject", history([[1], [4]], refused=(2, 3)), details) == 0
