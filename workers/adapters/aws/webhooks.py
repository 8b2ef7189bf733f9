"""Outbound webhooks on AWS: a reply sink that queues each delivery on the stack's webhooks
queue (SQS FIFO), and what the ``webhooks`` function does with one.

- :class:`SqsWebhookSink`: for each subscription that takes a payload (the app file's
  ``[[webhooks]]``, as the stack's ``webhooks`` parameter gives every function, and the
  conversation's own, items of the table: :mod:`~workers.adapters.aws.dynamodb_webhooks`),
  one message:
  its group is the subscription and the conversation (FIFO keeps a conversation's deliveries
  to a receiver in order, and one held back holds back only its own), its deduplication id
  the subscription and the ``webhook-id`` (a payload queued again within five minutes is
  dropped; later, the receiver drops it by its ``webhook-id``). Never calls a receiver: a
  slow or dead one costs a turn nothing.
- :func:`post_delivery`: the ``webhooks`` function signs a delivery as Standard Webhooks says
  and posts it (a conversation's own webhook: to a public address only, and only while it
  and its conversation are still there); anything but a 2xx in time raises, and the
  function leaves the message on the queue with its visibility stretched to the next
  backoff (exponential, jitter); after its attempts :class:`WebhookCourier` moves it to the
  webhooks' dead-letter queue, and the ones behind it follow it there (:class:`DeadGroups`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.outbound import OutboxPayload, StreamChunk
from workers.adapters.aws.calls import AwsCalls, ConditionFailed
from workers.adapters.aws.dynamodb_table import (
    DynamoDBTable,
    expressions,
    key,
    number,
    opt_str,
    string,
)
from workers.adapters.aws.dynamodb_webhooks import DynamoDBWebhooks
from workers.adapters.aws.errors import map_aws_error
from workers.adapters.aws.tables import TTL_ATTRIBUTE
from workers.adapters.webhooks import (
    HookReceiver,
    Receiver,
    WebhookSubscription,
    deliveries,
    post_public,
    signed_headers,
)
from workers.errors import PermanentError, RetryableError

log = logging.getLogger(__name__)

BATCH = 10
"""Entries of one ``SendMessageBatch``."""


class QueuedDelivery(BaseModel):
    """A webhooks queue message: one delivery to one subscription."""

    model_config = ConfigDict(extra="forbid")

    subscription: str = Field(min_length=1, max_length=64)
    webhook_id: str = Field(min_length=1, max_length=300)
    conversation_id: str = Field(min_length=1, max_length=256)
    event: str = Field(min_length=1, max_length=64)
    body: str
    own: bool = False
    """For the conversation's own webhook ``subscription`` (its id), not the app file's."""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class SqsWebhookSink:
    """A reply sink: each payload a subscription takes, queued for the ``webhooks``
    function. ``sqs`` makes the SQS client at the first delivery."""

    def __init__(
        self,
        sqs: Callable[[], Any],
        queue_url: str,
        subscriptions: Sequence[WebhookSubscription],
        hooks: DynamoDBWebhooks | None = None,
    ) -> None:
        self._make_client = sqs
        self._client: Any = None
        self._url = queue_url
        self.subscriptions = tuple(subscriptions)
        self.hooks = hooks
        """The conversations' own webhooks (read once per payload), if the stack keeps any."""

    def send(self, payload: OutboxPayload) -> None:
        at = datetime.now(UTC)
        cid = payload.conversation_id
        own = [] if self.hooks is None else self.hooks.webhooks_of(cid)
        receivers: list[Receiver] = [*self.subscriptions, *(HookReceiver(h) for h in own)]
        entries: list[dict[str, str]] = []
        for sub, webhook_id, event, body in deliveries(receivers, payload, at):
            delivery = QueuedDelivery(
                subscription=sub.name,
                webhook_id=webhook_id,
                conversation_id=cid,
                event=event,
                body=body.decode(),
                own=sub.guarded,
            )
            entries.append(
                {
                    "Id": str(len(entries)),
                    "MessageBody": delivery.model_dump_json(),
                    "MessageGroupId": _digest(sub.name, payload.conversation_id)[:64],
                    "MessageDeduplicationId": _digest(sub.name, webhook_id),
                }
            )
        if not entries:
            return
        if self._client is None:
            self._client = self._make_client()
        for start in range(0, len(entries), BATCH):
            chunk = entries[start : start + BATCH]
            try:
                answer = self._client.send_message_batch(QueueUrl=self._url, Entries=chunk)
            except Exception as exc:
                raise map_aws_error(exc, "sqs.send_message_batch") from exc
            failed = answer.get("Failed") or []
            if failed:  # the whole payload is sent again; the queue drops what it took
                codes = [f.get("Code") for f in failed]
                raise RetryableError(f"webhooks: {len(failed)} not queued ({codes[:3]})")

    def send_chunk(self, chunk: StreamChunk) -> None:
        return None  # webhooks take whole payloads, not a turn's pieces


def post_delivery(
    delivery: QueuedDelivery, receiver: Receiver, *, timeout: float, private_urls: bool
) -> None:
    """Sign and post one delivery to ``receiver``; ``RetryableError`` for anything but a
    2xx in time. A conversation's own webhook is posted to a public address only (unless
    ``private_urls``, for development): :func:`post_public`."""
    body = delivery.body.encode()
    headers = signed_headers(receiver.secret(), delivery.webhook_id, body, datetime.now(UTC))
    try:
        if receiver.guarded and not private_urls:
            status = post_public(receiver.target, body, headers, timeout=timeout)
        else:
            request = urllib.request.Request(
                receiver.target, data=body, headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the app file's URL
                    status = int(answer.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, reset, timed out
        raise RetryableError(f"webhooks: {receiver.name}: {exc}") from exc
    if not 200 <= status < 300:
        raise RetryableError(f"webhooks: {receiver.name} answered HTTP {status}")


def load_secrets(secret_json: str, subscriptions: Sequence[WebhookSubscription]) -> dict[str, str]:
    """The subscriptions' secrets from the stack's webhook secret (JSON: variable name ->
    ``whsec_...``), by the variable each subscription names."""
    try:
        values = json.loads(secret_json)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"webhooks: the webhook secret is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise PermanentError("webhooks: the webhook secret is not a JSON object")
    return {
        s.secret_env: str(values[s.secret_env]) for s in subscriptions if s.secret_env in values
    }


MAX_VISIBILITY_SECONDS = 12 * 3600
"""SQS's longest visibility timeout."""


class DeadGroups:
    """The message groups of the webhooks queue (a receiver and a conversation) whose head
    delivery is dead: one item each in the conversation store's table
    (``pk=webhookdead#<group>``), naming that delivery's ``webhook-id``, until it is
    delivered (redriven) or the dead-letter queue's retention has passed."""

    PREFIX = "webhookdead#"
    KEPT_SECONDS = 14 * 86_400
    """SQS's longest retention: the dead one is gone from the dead-letter queue by then."""

    def __init__(self, *, dynamodb: Any, table_name: str) -> None:
        self._table = DynamoDBTable(dynamodb, table_name, AwsCalls())

    def head(self, group: str) -> str | None:
        """The ``webhook-id`` of the group's dead delivery, if it has one."""
        item = self._table.get(self.PREFIX + group, "dead")
        return None if item is None else opt_str(item, "webhook_id")

    def block(self, group: str, webhook_id: str) -> None:
        item = {
            **key(self.PREFIX + group, "dead"),
            "webhook_id": string(webhook_id),
            TTL_ATTRIBUTE: number(int(time.time() + self.KEPT_SECONDS)),
        }
        self._table.call("put_item", TableName=self._table.name, Item=item)

    def unblock(self, group: str, webhook_id: str) -> None:
        """The dead one was delivered: the group goes on (unless another died since)."""
        with contextlib.suppress(ConditionFailed):
            self._table.call(
                "delete_item",
                TableName=self._table.name,
                Key=key(self.PREFIX + group, "dead"),
                **expressions({":id": string(webhook_id)}, ConditionExpression="#webhook_id = :id"),
            )


class WebhookCourier:
    """What the ``webhooks`` function does with each queued delivery: post it (see
    :func:`post_delivery`); when that fails, make its message visible again after the next
    backoff (exponential with jitter, from ``base_delay``) and raise, so the function reports
    it failed and the queue keeps it. After ``attempts`` it is dead: moved to the dead-letter
    queue (``dlq_url``) with why, and its group marked (:class:`DeadGroups`): the deliveries
    behind it follow it there as they come, so none overtakes it; ``agentworker dlq redrive
    --webhooks`` sends them back in order, and the group goes on once the dead one is
    delivered."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        subscriptions: Sequence[WebhookSubscription],
        *,
        timeout: float,
        base_delay: float,
        attempts: int = 8,
        dlq_url: str | None = None,
        dead: DeadGroups | None = None,
        hooks: DynamoDBWebhooks | None = None,
        private_urls: bool = False,
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self.by_name = {s.name: s for s in subscriptions}
        self.timeout = timeout
        self.base_delay = base_delay
        self.attempts = attempts
        self.dlq_url = dlq_url
        self.dead = dead
        self.hooks = hooks
        self.private_urls = private_urls

    def receiver(self, delivery: QueuedDelivery) -> Receiver | None:
        """Whom ``delivery`` goes to; ``None`` for a conversation's own webhook that is gone
        (deleted, or erased with its conversation: its deliveries are dropped);
        ``PermanentError`` for a subscription the stack no longer has (it is tried, and
        dies, as a failing receiver's)."""
        if delivery.own:
            if self.hooks is None:
                return None
            hook = self.hooks.current(delivery.conversation_id, delivery.subscription)
            return None if hook is None else HookReceiver(hook)
        sub = self.by_name.get(delivery.subscription)
        if sub is None:
            raise PermanentError(f"webhooks: no subscription {delivery.subscription!r} any more")
        return sub

    def deliver(self, record: QueueRecord) -> None:
        """Post one delivery; on failure, retry it after the next backoff and raise (after
        its attempts: dead-letter it and return)."""
        from workers.adapters.webhooks import next_delay

        try:
            delivery = QueuedDelivery.model_validate_json(record.body)
        except ValueError as exc:  # nothing to post: no attempt would change that
            self._dead_letter(record, f"does not parse: {exc}")
            return
        dead_head = None if self.dead is None else self.dead.head(record.group)
        if dead_head is not None and dead_head != delivery.webhook_id:
            self._dead_letter(record, f"held behind {dead_head}, which is dead")
            return
        try:
            receiver = self.receiver(delivery)
            if receiver is None:
                log.info(
                    "webhooks: %s of %s dropped: its webhook %s is gone",
                    delivery.webhook_id,
                    delivery.conversation_id,
                    delivery.subscription,
                )
            else:
                post_delivery(
                    delivery, receiver, timeout=self.timeout, private_urls=self.private_urls
                )
        except Exception as exc:
            if record.receives >= self.attempts and self.dlq_url is not None:
                if self.dead is not None:  # first: a crash after it leaves the group held
                    self.dead.block(record.group, delivery.webhook_id)
                self._dead_letter(record, str(exc))
                return
            wait = next_delay(record.receives, self.base_delay)
            self._visible_in(record.receipt_handle, min(MAX_VISIBILITY_SECONDS, math.ceil(wait)))
            raise
        if dead_head is not None and self.dead is not None:
            self.dead.unblock(record.group, delivery.webhook_id)

    def deliver_batch(self, records: Sequence[QueueRecord]) -> list[str]:
        """A batch from the queue, in order: the message ids that failed. A record after a
        failed one of its group (the same subscription and conversation) is not tried: it
        goes back at once, still behind the failed one (SQS FIFO returns none of a group
        while one of it is in flight), so the receiver gets a conversation in order."""
        failed: list[str] = []
        held: set[str] = set()
        for record in records:
            if record.group in held:
                self._visible_in(record.receipt_handle, 0)
                failed.append(record.message_id)
                continue
            try:
                self.deliver(record)
            except Exception as exc:
                log.warning(
                    "webhooks: %s failed (receive %d): %s", record.message_id, record.receives, exc
                )
                held.add(record.group)
                failed.append(record.message_id)
        return failed

    def _dead_letter(self, record: QueueRecord, why: str) -> None:
        """Move ``record`` to the dead-letter queue (the function then reports it handled,
        and the event source mapping deletes it), saying why; ``RetryableError`` when the
        queue refused it (it stays where it is)."""
        if self.dlq_url is None:
            raise PermanentError(f"webhooks: {why} (and no dead-letter queue to move it to)")
        log.warning("webhooks: %s dead (receive %d): %s", record.message_id, record.receives, why)
        try:
            self._sqs.send_message(
                QueueUrl=self.dlq_url,
                MessageBody=record.body,
                MessageGroupId=record.group or "webhooks",
                MessageDeduplicationId=_digest(record.message_id, str(record.receives)),
                MessageAttributes={"error": {"DataType": "String", "StringValue": why[:1000]}},
            )
        except Exception as exc:
            raise map_aws_error(exc, "sqs.send_message") from exc

    def _visible_in(self, receipt_handle: str, seconds: int) -> None:
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except Exception as exc:  # the queue's own visibility timeout applies instead
            log.warning("webhooks: visibility not changed: %s", map_aws_error(exc, "sqs"))


@dataclass(frozen=True)
class QueueRecord:
    """What the courier needs of one SQS record."""

    message_id: str
    body: str
    receives: int
    receipt_handle: str
    group: str
