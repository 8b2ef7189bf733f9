"""Webhooks, what is runtime-neutral: which payloads a subscription takes, the signed
request a receiver verifies with the ``standardwebhooks`` package, the retry schedule."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from events.outbound import Notice, Reply
from workers.adapters.webhooks import (
    MAX_DELAY_SECONDS,
    WebhookSubscription,
    body_of,
    next_delay,
    signed_headers,
)
from workers.errors import ConfigError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_subscription_takes_its_events_of_its_conversations() -> None:
    sub = WebhookSubscription(
        name="helpdesk",
        url="https://helpdesk.example.com/hooks",
        secret_env="HELPDESK_SECRET",
        events=("reply",),
        conversations="ticket:",
    )
    assert sub.takes(Reply(conversation_id="ticket:7", turn_id="t", text="hi")) == "reply"
    assert sub.takes(Reply(conversation_id="ws:me:1", turn_id="t", text="hi")) is None
    assert sub.takes(Notice(conversation_id="ticket:7", text="x")) is None  # not its event


def test_a_missing_secret_is_named() -> None:
    sub = WebhookSubscription(
        name="h",
        url="https://x.example.com",
        secret_env="NOT_SET_ANYWHERE_42",
    )
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE_42"):
        sub.secret()


def test_the_request_verifies_with_standard_webhooks_and_a_tampered_one_does_not() -> None:
    at = datetime.now(UTC)
    reply = Reply(conversation_id="ticket:7", turn_id="t", text="Done.")
    body = body_of("reply", reply.model_dump(mode="json"), at)
    headers = signed_headers(SECRET, f"msg_{reply.reply_id}", body, at)
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "reply" and event["data"]["text"] == "Done."
    assert json.loads(body)["timestamp"] == at.isoformat()
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"Done.", b"Paid."), headers)
    with pytest.raises(ConfigError):
        signed_headers("whsec_!!!", "msg_1", body, at)


def test_retries_back_off_exponentially_with_jitter_up_to_an_hour() -> None:
    rng = random.Random(7)
    waits = [next_delay(n, 2.0, rng) for n in range(1, 6)]
    for n, wait in enumerate(waits, start=1):
        assert 2.0 * 2 ** (n - 1) / 2 <= wait <= 2.0 * 2 ** (n - 1)
    assert next_delay(40, 2.0, rng) <= MAX_DELAY_SECONDS
