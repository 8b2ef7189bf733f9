"""Identity keys that cannot be confused (issue 17.12): tenant and owner joined into one key
(tickets' customers, quotas), and tokens that cannot pass for another authenticator's
principals (a JWT whose ``sub`` is a Slack channel)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from events.identity import ClaimMapping, Principal, identity_key
from events.inbound import InboundMessage
from tests.fakes import InMemoryConversationStore, ManualClock, RecordingSink, RecordingStarter
from tests.fakes import ScriptedAgent as Agent
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.core.model import ConversationState
from workers.core.steps import Deps, TurnSettings, accept_message
from workers.errors import NotFound, Throttled


def state(tenant: str | None, owner: str | None, cid: str = "ws:1") -> ConversationState:
    return ConversationState(
        conversation_id=cid,
        policy="enqueue",
        status="idle",
        inbox_seq=0,
        last_token=0,
        lease_token=None,
        lease_expires_at=None,
        lease_execution_id=None,
        pending_approval=None,
        created_at=0.0,
        updated_at=0.0,
        tenant=tenant,
        owner=owner,
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("acme/team", "bob"), ("acme", "team/bob")),
        (("acme%2Fteam", "bob"), ("acme/team", "bob")),
        (("conversation", "ticket:1"), ("", "ticket:1")),
    ],
)
def test_different_parts_never_make_the_same_key(a: tuple[str, str], b: tuple[str, str]) -> None:
    assert identity_key(*a) != identity_key(*b)


def test_customers_of_different_owners_differ_and_plain_ones_read_as_before() -> None:
    """The issue's case: ``acme/team`` + ``bob`` was the customer ``acme`` + ``team/bob``
    (the same tickets); a backend's conversation was the customer of a tenant named
    "conversation"."""
    assert state("acme/team", "bob").customer != state("acme", "team/bob").customer
    backends = state(None, None, "ticket:77").customer
    assert backends != state("conversation", "ticket:77", "ticket:77").customer
    assert backends == "/ticket:77"
    assert state("local", "local").customer == "local/local"  # stored keys stay valid
    assert state("slack:T1", "slack:T1:C1").customer == "slack:T1/slack:T1:C1"


def test_principals_whose_ids_join_alike_spend_separate_quotas() -> None:
    deps = Deps(
        InMemoryConversationStore(),
        Agent(),
        RecordingSink(),
        RecordingStarter(),
        ManualClock(),
        settings=TurnSettings(quota_messages_per_minute=1),
    )
    first = Principal(id="bob", tenant="acme/team")
    second = Principal(id="team/bob", tenant="acme")
    accept_message(deps, InboundMessage(conversation_id="ws:a", text="hi"), first)
    accept_message(deps, InboundMessage(conversation_id="ws:b", text="hi"), second)
    with pytest.raises(Throttled):
        accept_message(deps, InboundMessage(conversation_id="ws:a", text="again"), first)


@pytest.mark.parametrize(
    ("sub", "tenant"),
    [
        ("slack:T1:C1", "slack:T1"),  # the issue: read the Slack thread of channel C1
        ("slack:T1:U1", "acme"),
        ("alice", "slack:T1"),
        ("iam:arn:aws:iam::1:role/x", "acme"),
        ("alice", "local"),  # the development token's user
        ("local", "local"),
        ("alice", "system"),
        ("alice", "anonymous"),
        ("alice", "eval"),
    ],
)
def test_a_token_cannot_claim_another_authenticators_principal(sub: str, tenant: str) -> None:
    with pytest.raises(ValueError, match="^bad_claim: "):
        ClaimMapping().principal({"sub": sub, "tenant": tenant})


def test_a_token_user_finds_nothing_of_a_slack_thread() -> None:
    deps = Deps(
        InMemoryConversationStore(), Agent(), RecordingSink(), RecordingStarter(), ManualClock()
    )
    member = Principal(id="slack:T1:U1", tenant="slack:T1", groups=frozenset({"slack:T1:C1"}))
    thread = "slack:T1:C1:1700000000.0001"
    msg = InboundMessage(conversation_id=thread, text="hi")
    accept_message(deps, msg, member, owner="slack:T1:C1")
    # What a token claiming the channel would have been, had the claims been taken:
    with pytest.raises(ValueError):
        ClaimMapping().principal({"sub": "slack:T1:C1", "tenant": "slack:T1"})
    impostor = ClaimMapping(default_tenant="acme").principal({"sub": "slack-T1-C1"})
    with pytest.raises(NotFound):
        accept_message(deps, InboundMessage(conversation_id=thread, text="x"), impostor)


def test_old_backend_ticket_customers_are_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "agentworker.db"
    store = SqliteConversationStore(path)
    SqliteTicketStore(store.database)
    store.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM ticket_migrations")  # a file from before the change
    db.execute(
        "INSERT INTO tickets (conversation_id, customer, subject, body, status, priority,"
        " created_at, updated_at) VALUES"
        " ('ticket:6', 'conversation/ticket:6', 's', 'b', 'open', 'normal', 0, 0),"
        " ('ws:1', 'local/local', 's', 'b', 'open', 'normal', 0, 0)"
    )
    db.commit()
    db.close()
    store = SqliteConversationStore(path)
    try:
        tickets = SqliteTicketStore(store.database)
        assert tickets.get_ticket(1, customer="/ticket:6") is not None
        assert tickets.get_ticket(1, customer="conversation/ticket:6") is None
        assert tickets.get_ticket(2, customer="local/local") is not None
    finally:
        store.close()
