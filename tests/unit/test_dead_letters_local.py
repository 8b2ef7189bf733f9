"""The embedded runtime's dead letters: a turn that fails for good keeps its messages as
``failed`` with the error; ``agentworker dlq list|redrive`` (``--target local``) lists them and
accepts them again, once."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from events.inbound import InboundMessage
from events.outbound import Notice
from tests.unit.test_steps import CID, World
from workers.adapters.local.dead_letters import (
    REDRIVE_KEY_PREFIX,
    LocalDeadLetters,
    opened,
    redrive_copy,
)
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.cli import main
from workers.config import load_settings
from workers.core.model import TurnCommit
from workers.errors import BadInput, ConfigError, NotFound, PermanentError, RetryableError

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0 + 100

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


# the core marks them -------------------------------------------------------------------------


def test_a_turn_whose_retries_are_spent_keeps_its_message_failed_with_the_error() -> None:
    w = World(retry_attempts=2, retry_base_delay=0.0)
    w.agent.hook = lambda request: (_ for _ in ()).throw(RetryableError("model down"))
    w.send("hello", "k1")
    w.run_all()
    [entry] = w.store.history(CID).inbox  # type: ignore[union-attr]
    assert entry.status == "failed"
    assert entry.error == "RetryableError: model down (after 2 attempts)"
    [notice] = w.sink.sent
    assert isinstance(notice, Notice) and notice.level == "error"
    assert notice.in_reply_to == [entry.message.message_id]


def test_a_permanent_error_keeps_the_message_failed_and_the_next_one_is_answered() -> None:
    w = World()
    w.agent.hook = lambda request: (
        (_ for _ in ()).throw(PermanentError("input too long")) if "bad" in request.texts else None
    )
    w.send("bad", "k1")
    w.send("fine", "k2")
    w.run_all()
    inbox = w.store.history(CID).inbox  # type: ignore[union-attr]
    assert [(e.message.text, e.status, e.error) for e in inbox] == [
        ("bad", "failed", "PermanentError: input too long"),
        ("fine", "consumed", None),
    ]


# listing and redriving on SQLite --------------------------------------------------------------


def fail(store: SqliteConversationStore, cid: str, text: str, *, at: float = T0) -> str:
    """Accept ``text`` in ``cid`` and fail its turn for good, as ``fail_turn`` does."""
    msg = InboundMessage(conversation_id=cid, text=text, sender="erin", tenant="acme", owner="erin")
    accepted = store.append_inbox(msg, now=at, default_policy="enqueue")
    lease = store.try_acquire_lease(cid, now=at, ttl=10)
    assert lease is not None
    notice = Notice(conversation_id=cid, level="error", text="sorry")
    commit = TurnCommit(lease.token, [accepted.seq], "idle", outbox=[notice], failed=f"E: {text}")
    store.commit_turn(cid, commit)
    assert store.release_lease(cid, lease.token, seen_inbox_seq=accepted.seq, now=at)
    return msg.message_id


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteConversationStore(tmp_path / "agentworker.db")
    yield s
    s.close()


def test_the_failed_messages_are_listed_across_conversations(store: Any) -> None:
    a = fail(store, "ws:a:1", "first")
    store.append_inbox(
        InboundMessage(conversation_id="ws:a:1", text="ok"), now=T0, default_policy="enqueue"
    )
    b = fail(store, "ws:b:1", "second")
    dead = LocalDeadLetters(store, clock=Clock())
    listed = dead.failed()
    assert [(f.conversation_id, f.message_id, f.error) for f in listed] == [
        ("ws:a:1", a, "E: first"),
        ("ws:b:1", b, "E: second"),
    ]
    assert [f.message_id for f in dead.failed(conversation_id="ws:b:1")] == [b]


def test_a_redrive_accepts_a_copy_once_and_leaves_the_run_to_the_sweeper(store: Any) -> None:
    failed_id = fail(store, "ws:a:1", "hello")
    other = fail(store, "ws:a:1", "not this one")
    dead = LocalDeadLetters(store, clock=Clock())
    [done] = dead.redrive([failed_id])
    assert not done.already and done.message_id != failed_id
    inbox = store.history("ws:a:1").inbox
    copy = inbox[-1]
    assert copy.status == "pending" and copy.message.message_id == done.message_id
    assert copy.message.effective_dedupe_key == REDRIVE_KEY_PREFIX + failed_id
    assert (copy.message.text, copy.message.sender, copy.message.tenant) == (
        "hello",
        "erin",
        "acme",
    )
    assert [e.status for e in inbox] == ["redriven", "failed", "pending"]
    assert inbox[0].error == "E: hello"  # kept
    # No lease taken: the sweeper (of a running server, or of the next start) runs it.
    assert store.get_conversation("ws:a:1").lease_token is None
    assert store.conversations_to_sweep(now=T0 + 200) == ["ws:a:1"]
    assert [f.message_id for f in dead.failed()] == [other]
    # The same redrive again: reported, nothing new accepted.
    [again] = dead.redrive([failed_id])
    assert again.already and again.message_id == done.message_id
    assert len(store.history("ws:a:1").inbox) == 3


def test_a_redrive_interrupted_before_its_mark_is_completed_by_the_next(store: Any) -> None:
    failed_id = fail(store, "ws:a:1", "hello")
    [entry] = store.failed_inbox()
    store.append_inbox(
        redrive_copy(entry.message, now=entry.message.received_at),
        now=T0,
        default_policy="enqueue",
    )  # the process died here, before marking the original
    [done] = LocalDeadLetters(store, clock=Clock()).redrive([failed_id])
    assert done.already
    assert [e.status for e in store.history("ws:a:1").inbox] == ["redriven", "pending"]


def test_an_unknown_id_moves_nothing(store: Any) -> None:
    known = fail(store, "ws:a:1", "hello")
    dead = LocalDeadLetters(store, clock=Clock())
    with pytest.raises(NotFound, match="'nope'") as raised:
        dead.redrive([known, "nope"])
    assert raised.value.field == "id"
    assert [e.status for e in store.history("ws:a:1").inbox] == ["failed"]
    with pytest.raises(NotFound):
        dead.redrive([known], conversation_id="ws:other:1")


def test_an_id_failed_in_two_conversations_must_be_narrowed(store: Any) -> None:
    for cid in ("ws:a:1", "ws:b:1"):
        msg = InboundMessage(conversation_id=cid, message_id="same", text="hi")
        accepted = store.append_inbox(msg, now=T0, default_policy="enqueue")
        lease = store.try_acquire_lease(cid, now=T0, ttl=10)
        store.commit_turn(cid, TurnCommit(lease.token, [accepted.seq], "idle", failed="E"))
    dead = LocalDeadLetters(store, clock=Clock())
    with pytest.raises(BadInput, match="ws:a:1, ws:b:1"):
        dead.redrive(["same"])
    [done] = dead.redrive(["same"], conversation_id="ws:b:1")
    assert done.failed.conversation_id == "ws:b:1"
    assert [e.status for e in store.history("ws:a:1").inbox] == ["failed"]


def test_a_state_file_from_before_failed_messages_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "agentworker.db"
    store = SqliteConversationStore(path)
    store.append_inbox(
        InboundMessage(conversation_id="ws:a:1", text="old"), now=T0, default_policy="enqueue"
    )
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE inbox DROP COLUMN error")  # the schema before this change
    db.commit()
    db.close()
    store = SqliteConversationStore(path)
    try:
        old = store.history("ws:a:1")
        assert old is not None
        [entry] = old.inbox
        assert entry.status == "pending" and entry.error is None
        assert fail(store, "ws:b:1", "new")
        assert [e.error for e in store.failed_inbox()] == ["E: new"]
    finally:
        store.close()


def test_opening_a_directory_without_state_creates_nothing(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path / "none")
    with pytest.raises(ConfigError, match="no embedded state"), opened(settings):
        pass
    assert not (tmp_path / "none").exists()


# the command ------------------------------------------------------------------------------------


def test_the_command_lists_and_redrives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteConversationStore(tmp_path / "agentworker.db")
    failed_id = fail(store, "ws:a:1", "hello there")
    store.close()
    where = ["--state-dir", str(tmp_path)]
    assert main(["dlq", "list", *where]) == 0
    out = capsys.readouterr().out
    assert "ws:a:1" in out and failed_id in out and "hello there" in out and "E: hello there" in out

    assert main(["dlq", "redrive", "--id", "nope", *where]) == 2
    captured = capsys.readouterr()
    assert "no failed message 'nope'" in captured.err and "nothing was redriven" in captured.err
    assert captured.out == ""

    assert main(["dlq", "redrive", "--id", failed_id, *where]) == 0
    out = capsys.readouterr().out
    assert f"redriven {failed_id} (ws:a:1) as " in out and "next sweep" in out
    assert main(["dlq", "redrive", "--id", failed_id, *where]) == 0
    assert f"already redriven {failed_id}" in capsys.readouterr().out
    assert main(["dlq", "list", *where]) == 0
    assert "no failed messages" in capsys.readouterr().out


def test_the_command_refuses_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq"]) == 2
    with pytest.raises(SystemExit) as usage:
        main(["dlq", "redrive", "--state-dir", str(tmp_path)])  # neither --id nor --all
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        main(["dlq", "redrive", "--all", "--id", "x"])
    capsys.readouterr()
    assert main(["dlq", "list", "--state-dir", str(tmp_path / "none")]) == 2
    assert "no embedded state" in capsys.readouterr().err
