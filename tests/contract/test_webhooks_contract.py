"""The conversation webhooks contract: every ``ConversationWebhooks`` (the embedded runtime's
SQLite queue, DynamoDB items on moto, the in-memory fake) keeps a conversation's own
subscriptions as made, lists them oldest first, finds one only under its own conversation,
refuses one over the limit, deletes one and forgets them all with the conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import InMemoryWebhooks
from tests.moto_env import mocked_table
from workers.adapters.local.webhooks import WebhookQueue
from workers.core.model import ConversationWebhook
from workers.errors import BadInput

T0 = 1_700_000_000.0
CID = "ticket:4711"
OTHER = "ws:alice:2"
TABLE = "agentworker"


@pytest.fixture(params=["sqlite", "memory", "aws"])
def hooks(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    if request.param == "sqlite":
        queue = WebhookQueue(tmp_path / "webhooks.db")
        yield queue
        queue.close()
        return
    if request.param == "memory":
        yield InMemoryWebhooks()
        return
    from workers.adapters.aws.dynamodb_webhooks import DynamoDBWebhooks

    with mocked_table(monkeypatch, TABLE) as dynamodb:
        yield DynamoDBWebhooks(dynamodb=dynamodb, table_name=TABLE)


def hook(webhook_id: str, *, cid: str = CID, at: float = T0) -> ConversationWebhook:
    return ConversationWebhook(
        webhook_id=webhook_id,
        conversation_id=cid,
        url=f"https://hooks.example.com/{webhook_id}",
        events=("reply", "ticket.status"),
        secret="whsec_" + "A" * 44,
        created_by="alice",
        created_at=at,
        tenant="acme",
        owner="alice",
    )


def test_subscriptions_are_kept_as_made_and_listed_oldest_first(hooks: Any) -> None:
    late, early = hook("whk_b", at=T0 + 60), hook("whk_a", at=T0)
    assert hooks.add_webhook(late, limit=5) == late
    assert hooks.add_webhook(early, limit=5) == early
    hooks.add_webhook(hook("whk_c", cid=OTHER), limit=5)
    assert hooks.webhooks_of(CID) == [early, late]
    assert hooks.webhook(CID, "whk_b") == late
    assert hooks.webhook(OTHER, "whk_b") is None  # only under its own conversation
    assert hooks.webhooks_of("ws:nobody:1") == []


def test_the_limit_is_per_conversation(hooks: Any) -> None:
    for n in range(3):
        hooks.add_webhook(hook(f"whk_{n}"), limit=3)
    with pytest.raises(BadInput) as refused:
        hooks.add_webhook(hook("whk_3"), limit=3)
    assert refused.value.code == "too_many_webhooks"
    assert hooks.add_webhook(hook("whk_x", cid=OTHER), limit=3).conversation_id == OTHER


def test_one_is_deleted_and_all_are_forgotten_with_the_conversation(hooks: Any) -> None:
    for n in range(3):
        hooks.add_webhook(hook(f"whk_{n}", at=T0 + n), limit=5)
    kept = hooks.add_webhook(hook("whk_o", cid=OTHER), limit=5)
    assert hooks.remove_webhook(OTHER, "whk_0") is False  # not that conversation's
    assert hooks.remove_webhook(CID, "whk_0") is True
    assert hooks.remove_webhook(CID, "whk_0") is False
    assert [h.webhook_id for h in hooks.webhooks_of(CID)] == ["whk_1", "whk_2"]
    assert hooks.forget_webhooks(CID) == 2
    assert hooks.webhooks_of(CID) == [] and hooks.webhook(CID, "whk_1") is None
    assert hooks.webhooks_of(OTHER) == [kept]
