"""Webhooks, what is runtime-neutral: which payloads a subscription takes, the signed
request a receiver verifies with the ``standardwebhooks`` package, the retry schedule."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

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
    reply = Reply(conversation_id="ticket:7", turn_id="t", text="hi")
    [(webhook_id, event, data)] = sub.takes(reply)
    assert (webhook_id, event, data["text"]) == (f"msg_{reply.reply_id}", "reply", "hi")
    assert sub.takes(Reply(conversation_id="ws:me:1", turn_id="t", text="hi")) == []
    assert sub.takes(Notice(conversation_id="ticket:7", text="x")) == []  # not its event


def test_a_tickets_payloads_write_back_its_reply_and_status() -> None:
    from events.outbound import ApprovalRequest, InterruptRequest
    from workers.adapters.webhooks import events_of

    reply = Reply(conversation_id="ticket:HD-7", turn_id="t", text="Reset the printer.")
    (_, kind, _), (reply_id, ticket_reply, said), (status_id, _, status) = events_of(reply)
    assert (kind, ticket_reply, reply_id) == (
        "reply",
        "ticket.reply",
        f"msg_{reply.reply_id}.ticket.reply",
    )
    assert said == {
        "ticket_id": "HD-7",
        "conversation_id": "ticket:HD-7",
        "reply_id": reply.reply_id,
        "text": "Reset the printer.",
        "created_at": reply.model_dump(mode="json")["created_at"],
    }
    assert status_id == f"msg_{reply.reply_id}.ticket.status" and status["status"] == "answered"
    ask = ApprovalRequest(
        conversation_id="ticket:HD-7", turn_id="t", interrupt_id="i", tool="x", args={}, text="?"
    )
    question = InterruptRequest(
        conversation_id="ticket:HD-7", turn_id="t", interrupt_id="i", value="?", text="?"
    )
    failed = Notice(conversation_id="ticket:HD-7", level="error", text="the model is down")
    statuses = [events_of(p)[-1][2]["status"] for p in (ask, question, failed)]
    assert statuses == ["waiting_for_approval", "escalated", "failed"]
    solved = Reply(conversation_id="ticket:HD-7", turn_id="t", text="Done.", status="solved")
    assert events_of(solved)[-1][2]["status"] == "solved"  # what the graph said
    assert [e[1] for e in events_of(Reply(conversation_id="ws:me:1", turn_id="t", text="x"))] == [
        "reply"
    ]


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


def test_the_aws_sink_queues_one_message_per_delivery_and_retries_what_sqs_refused() -> None:
    import json as _json

    from workers.adapters.aws.webhooks import QueuedDelivery, SqsWebhookSink
    from workers.errors import RetryableError

    class Sqs:
        def __init__(self) -> None:
            self.batches: list[list[dict[str, str]]] = []
            self.refuse = False

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> Any:  # noqa: N803
            self.batches.append(Entries)
            failed = (
                [{"Id": e["Id"], "Code": "InternalError"} for e in Entries] if self.refuse else []
            )
            return {"Failed": failed}

    sqs = Sqs()
    subs = [
        WebhookSubscription(name="a", url="https://a.example.com", secret_env="X"),
        WebhookSubscription(
            name="b", url="https://b.example.com", secret_env="X", events=("notice",)
        ),
    ]
    sink = SqsWebhookSink(lambda: sqs, "https://queue", subs)
    reply = Reply(conversation_id="ticket:7", turn_id="t", text="hi")
    sink.send(reply)
    [entries] = sqs.batches  # a: reply, ticket.reply, ticket.status; b takes none of them
    assert len(entries) == 3
    first = QueuedDelivery.model_validate_json(entries[0]["MessageBody"])
    assert (first.subscription, first.webhook_id) == ("a", f"msg_{reply.reply_id}")
    assert _json.loads(first.body)["type"] == "reply"
    assert len({e["MessageGroupId"] for e in entries}) == 1  # one receiver, one conversation
    assert len({e["MessageDeduplicationId"] for e in entries}) == 3
    sqs.refuse = True
    with pytest.raises(RetryableError, match="not queued"):
        sink.send(reply)


def test_a_conversations_webhook_is_posted_to_public_addresses_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The AWS webhooks function resolves the host itself and refuses it when any address
    is not public (a name that resolves inside, or was rebound since the URL was checked),
    before connecting; plain http is refused too."""
    import socket

    from workers.adapters.webhooks import post_public, public_address

    assert public_address("hooks.example.com", ["93.184.215.14"]) == "93.184.215.14"
    for inside in (["127.0.0.1"], ["93.184.215.14", "10.0.0.7"], ["169.254.169.254"], ["::1"]):
        with pytest.raises(ConnectionRefusedError, match="not a public address"):
            public_address("hooks.example.com", inside)
    with pytest.raises(ConnectionRefusedError):
        public_address("hooks.example.com", [])

    asked: list[str] = []

    def resolves_inside(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("connected")

    monkeypatch.setattr(socket, "getaddrinfo", resolves_inside)
    monkeypatch.setattr(socket, "create_connection", never)
    with pytest.raises(ConnectionRefusedError, match="127.0.0.1, not a public address"):
        post_public("https://rebound.example.com/hooks", b"{}", {}, timeout=2)
    assert asked == ["rebound.example.com"]
    with pytest.raises(ConnectionRefusedError, match="https only"):
        post_public("http://hooks.example.com/hooks", b"{}", {}, timeout=2)


def test_the_aws_courier_drops_a_gone_webhooks_deliveries_and_guards_the_rest() -> None:
    """A conversation's own webhook: a delivery for one deleted (or whose conversation is
    someone else's now) is dropped, not retried; one to a URL inside is refused and tried
    again later (the name may resolve elsewhere then), the message's visibility stretched."""
    from workers.adapters.aws.webhooks import QueuedDelivery, QueueRecord, WebhookCourier
    from workers.core.model import ConversationWebhook
    from workers.errors import RetryableError

    hook = ConversationWebhook(
        "whk_1", "ws:alice:1", "https://127.0.0.1/hooks", ("reply",), SECRET, "alice", 0.0
    )

    class Hooks:
        def current(self, conversation_id: str, webhook_id: str) -> ConversationWebhook | None:
            return hook if webhook_id == "whk_1" else None

    class Sqs:
        def __init__(self) -> None:
            self.visibility: list[int] = []

        def change_message_visibility(self, **kw: Any) -> None:
            self.visibility.append(kw["VisibilityTimeout"])

    sqs = Sqs()
    courier = WebhookCourier(sqs, "q", [], timeout=2, base_delay=10, hooks=Hooks())  # type: ignore[arg-type]

    def queued(subscription: str) -> QueueRecord:
        body = QueuedDelivery(
            subscription=subscription,
            webhook_id="msg_1",
            conversation_id="ws:alice:1",
            event="reply",
            body="{}",
            own=True,
        ).model_dump_json()
        return QueueRecord("m1", body, receives=1, receipt_handle="r", group="g")

    courier.deliver(queued("whk_gone"))  # dropped: no raise
    assert sqs.visibility == []
    with pytest.raises(RetryableError, match="not a public address"):
        courier.deliver(queued("whk_1"))
    assert len(sqs.visibility) == 1 and 5 <= sqs.visibility[0] <= 10
