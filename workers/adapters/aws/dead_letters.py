"""The inbound queue's dead letters (``agentworker dlq --target aws|sandbox``), and the
webhooks queue's (``--webhooks``: deliveries the ``webhooks`` function gave up on, sent back
as they were: the receiver drops a repeat by its ``webhook-id``).

A message ``ingest`` failed ``maxReceiveCount`` times (``QUEUE_MAX_RECEIVES``) lands in the
inbound FIFO queue's dead-letter queue, the one the queue's redrive policy names.
:meth:`SqsDeadLetters.peek` lists them without consuming them: it receives every message
with a short visibility timeout, then makes each visible again at once
(``ChangeMessageVisibility`` 0); SQS counts that as one more receive.
:meth:`SqsDeadLetters.redrive` sends the chosen ones back to the inbound queue (the same body
and message group, a fresh deduplication id) and deletes each from the dead-letter queue only
once its send succeeded.

Each body is parsed as ``ingest`` parses it (:class:`~events.inbound.SqsRecord`): one that no
longer parses is listed with its error and redriven only when forced. ``ingest`` gives a body
that names no dedupe key the SQS message id as one (:func:`~events.inbound.sqs_dedupe_key`),
which a resend would change, so a redrive writes that key into such a body: a message that
was accepted before it failed (``ingest`` died after the accept) is then dropped as a
duplicate, never answered twice.

A FIFO queue hands out no more messages of a group while some are in flight, so a message
group holding more than ten dead letters shows its first ten (:attr:`Peek.total` counts them
all): redrive those, then look again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from events.inbound import InboundMessage, SqsRecord, new_id, sqs_dedupe_key
from events.json_input import parse_json
from events.outbound import validation_problem
from workers.adapters.aws.calls import AwsCalls, Item
from workers.adapters.aws.errors import error_code
from workers.adapters.aws.webhooks import QueuedDelivery
from workers.config import Settings
from workers.errors import BadInput, ConfigError, NotFound, PermanentError, RetryableError
from workers.stack import StackNames

__all__ = [
    "DeadLetter",
    "NotMoved",
    "Peek",
    "RedriveReport",
    "Redriven",
    "SqsDeadLetters",
    "inbound_queue_url",
    "webhooks_queue_url",
]

HOLD_SECONDS = 60
"""How long a look keeps the dead letters invisible at most (they are released at its end;
a process that dies meanwhile leaves them hidden this long)."""
_BATCH = 10
"""SQS's most messages per receive, and entries per batch request."""
_LIMIT = 1000
"""Most dead letters one look receives."""


@dataclass(frozen=True)
class DeadLetter:
    """A message of the dead-letter queue, parsed as ``ingest`` parses it."""

    message_id: str
    body: str
    group_id: str | None
    receive_count: int
    """Receives before this look (SQS's ``ApproximateReceiveCount`` less this look's own;
    earlier looks count)."""
    sent_at: datetime
    message: InboundMessage | None
    """The body as ``ingest`` reads it; ``None`` when it does not parse (or is a webhook
    delivery)."""
    parse_error: str | None = None
    delivery: QueuedDelivery | None = None
    """The body as the ``webhooks`` function reads it (the webhooks' dead-letter queue)."""
    reason: str | None = None
    """Why, when whoever moved it here said (the ``webhooks`` function's ``error``
    attribute: the receiver's last answer, or the dead delivery it was held behind)."""

    @classmethod
    def of(cls, received: Item, *, webhooks: bool = False) -> DeadLetter:
        attributes = received.get("Attributes", {})
        message_id, body = str(received["MessageId"]), str(received["Body"])
        message, delivery, problem = None, None, None
        if webhooks:
            delivery, problem = parse_delivery(body)
        else:
            message, problem = parse_body(message_id, body)
        sent_ms = int(attributes.get("SentTimestamp", 0))
        return cls(
            message_id=message_id,
            body=body,
            group_id=attributes.get("MessageGroupId"),
            receive_count=max(0, int(attributes.get("ApproximateReceiveCount", 1)) - 1),
            sent_at=datetime.fromtimestamp(sent_ms / 1000, UTC),
            message=message,
            parse_error=problem,
            delivery=delivery,
            reason=(received.get("MessageAttributes") or {}).get("error", {}).get("StringValue"),
        )

    @property
    def conversation_id(self) -> str | None:
        if self.delivery is not None:
            return self.delivery.conversation_id
        return None if self.message is None else self.message.conversation_id

    @property
    def shown(self) -> str:
        """What a list shows of it: the message's text, or the delivery's event and
        receiver; the raw body when it does not parse."""
        if self.delivery is not None:
            d = self.delivery
            return f"{d.event} to {d.subscription}: {d.webhook_id}"
        if self.message is not None:
            return self.message.text or f"[{self.message.kind}]"
        return self.body

    @property
    def error(self) -> str:
        """Why it is here, as far as the queue tells: the body's parse error, else how many
        receives failed (``ingest``'s error is in its logs)."""
        if self.parse_error is not None:
            return self.parse_error
        if self.reason:
            return self.reason
        return f"failed {self.receive_count} receives"


def parse_body(message_id: str, body: str) -> tuple[InboundMessage | None, str | None]:
    """``body`` as ``ingest`` reads it, or its parse error."""
    record = SqsRecord.model_validate({"messageId": message_id, "body": body})
    try:
        return record.to_inbound(), None
    except ValidationError as exc:
        return None, f"does not parse: {validation_problem(exc).message}"
    except ValueError as exc:  # BadInput (not JSON, too deep), not an object
        return None, f"does not parse: {exc}"


def parse_delivery(body: str) -> tuple[QueuedDelivery | None, str | None]:
    """``body`` as the ``webhooks`` function reads it, or its parse error."""
    try:
        return QueuedDelivery.model_validate_json(body), None
    except ValidationError as exc:
        return None, f"does not parse: {validation_problem(exc).message}"


def redrive_body(letter: DeadLetter) -> str:
    """The body sent back: the same, with ``ingest``'s dedupe key of last resort written in
    when it is a JSON object that names none (a resend gets a new SQS message id)."""
    try:
        data = parse_json(letter.body, what="SQS body")
    except BadInput:
        return letter.body
    if letter.delivery is not None:  # the receiver drops a repeat by its webhook-id
        return letter.body
    if not isinstance(data, dict) or data.get("dedupe_key") is not None:
        return letter.body
    return json.dumps({**data, "dedupe_key": sqs_dedupe_key(letter.message_id)})


@dataclass(frozen=True)
class Peek:
    """What a look at the dead-letter queue found."""

    letters: list[DeadLetter]
    total: int
    """Messages in the queue by SQS's approximate count, before the look (more than
    ``letters`` when a FIFO group held more than ten)."""


@dataclass(frozen=True)
class Redriven:
    """A dead letter sent back to the inbound queue."""

    letter: DeadLetter
    sent_id: str
    """Its message id in the inbound queue."""


@dataclass(frozen=True)
class NotMoved:
    """A dead letter left where it was, and why."""

    letter: DeadLetter
    reason: str
    skipped: bool = True
    """Left on purpose (an unparseable body without ``force``); ``False``: a call failed."""


@dataclass(frozen=True)
class RedriveReport:
    moved: list[Redriven] = field(default_factory=list)
    not_moved: list[NotMoved] = field(default_factory=list)


@dataclass(frozen=True)
class _Held:
    letter: DeadLetter
    receipt: str


@dataclass(frozen=True)
class _Look:
    held: list[_Held]
    """What the look received; what it leaves here is released at its end."""
    total: int
    """SQS's approximate count of the queue's messages when the look began."""


class SqsDeadLetters:
    """The dead letters of one queue (the inbound one, or with ``webhooks`` the webhooks'
    queue, whose bodies are deliveries), through an injected boto3 SQS client."""

    def __init__(
        self,
        sqs: Any,
        *,
        queue_url: str,
        dlq_url: str,
        wait_seconds: int = 1,
        calls: AwsCalls | None = None,
        webhooks: bool = False,
    ) -> None:
        """``wait_seconds``: how long a look's last receive waits when short polls found
        fewer messages than SQS counts (they may miss some)."""
        self._sqs = sqs
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self._wait = wait_seconds
        self._calls = calls or AwsCalls()
        self.webhooks = webhooks

    @classmethod
    def of_queue(
        cls,
        sqs: Any,
        queue_url: str,
        *,
        wait_seconds: int = 1,
        calls: AwsCalls | None = None,
        webhooks: bool = False,
    ) -> SqsDeadLetters:
        """The dead letters of the queue at ``queue_url``: its redrive policy names the
        dead-letter queue (``ConfigError`` when it has none)."""
        calls = calls or AwsCalls()
        attributes = _call(
            calls, sqs, "get_queue_attributes", QueueUrl=queue_url, AttributeNames=["All"]
        )["Attributes"]
        policy = attributes.get("RedrivePolicy")
        if not policy:
            raise ConfigError(f"queue {queue_url} has no dead-letter queue (no redrive policy)")
        arn = str(json.loads(policy)["deadLetterTargetArn"])
        account, name = arn.split(":")[4], arn.split(":")[5]
        dlq_url = _call(
            calls, sqs, "get_queue_url", QueueName=name, QueueOwnerAWSAccountId=account
        )["QueueUrl"]
        return cls(
            sqs,
            queue_url=queue_url,
            dlq_url=str(dlq_url),
            wait_seconds=wait_seconds,
            calls=calls,
            webhooks=webhooks,
        )

    # a look ---------------------------------------------------------------------------

    def peek(self, *, conversation_id: str | None = None) -> Peek:
        """The dead letters (of one conversation, when given), oldest first; every one is
        visible again when this returns."""
        with self._holding() as look:
            letters = [h.letter for h in look.held]
        if conversation_id is not None:
            letters = [d for d in letters if d.conversation_id == conversation_id]
        return Peek(letters, look.total)

    def redrive(
        self,
        message_ids: Sequence[str] | None = None,
        *,
        conversation_id: str | None = None,
        force: bool = False,
    ) -> RedriveReport:
        """Send back the dead letters ``message_ids`` (``None``: every one, or every one of
        ``conversation_id``), oldest first. An id the queue does not hold is ``NotFound``
        before anything moves. A body that does not parse is skipped unless ``force``; a
        message whose send or delete fails is reported and stays (or, sent but not deleted,
        is dropped as a duplicate by ``ingest`` when sent again)."""
        report = RedriveReport()
        with self._holding() as look:
            held = look.held
            chosen = self._choose(held, message_ids, conversation_id)
            for item in chosen:
                letter = item.letter
                if letter.parse_error is not None and not force:
                    reason = f"{letter.parse_error}; --force sends it as it is"
                    report.not_moved.append(NotMoved(letter, reason))
                    continue
                try:
                    sent = self._send_back(letter)
                    self._delete(item)
                except (PermanentError, RetryableError) as exc:
                    report.not_moved.append(NotMoved(letter, str(exc), skipped=False))
                    continue
                held.remove(item)
                report.moved.append(Redriven(letter, sent))
        return report

    def _choose(
        self, held: list[_Held], message_ids: Sequence[str] | None, conversation_id: str | None
    ) -> list[_Held]:
        held = [h for h in held if conversation_id in (None, h.letter.conversation_id)]
        if message_ids is None:
            return held
        by_id = {h.letter.message_id: h for h in held}
        wanted = list(dict.fromkeys(message_ids))
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise NotFound.dead_letters(missing, kind="message", where="in the dead-letter queue")
        return [by_id[i] for i in wanted]

    def _send_back(self, letter: DeadLetter) -> str:
        group = letter.group_id or letter.conversation_id or "redrive"
        sent = self._call(
            "send_message",
            QueueUrl=self.queue_url,
            MessageBody=redrive_body(letter),
            MessageGroupId=group,
            MessageDeduplicationId=new_id(),
        )
        return str(sent["MessageId"])

    def _delete(self, held: _Held) -> None:
        try:
            self._call("delete_message", QueueUrl=self.dlq_url, ReceiptHandle=held.receipt)
        except (PermanentError, RetryableError) as exc:
            raise PermanentError(f"sent, but still in the dead-letter queue: {exc}") from exc

    # receiving and releasing ----------------------------------------------------------

    @contextmanager
    def _holding(self) -> Iterator[_Look]:
        """Every dead letter, received and kept invisible for the block (oldest first);
        those the block leaves in the list are made visible again when it ends.

        Short polls until SQS's count of messages is reached; a short poll may miss some (it
        asks a subset of SQS's servers), so one that comes back empty below the count is
        followed by a long poll of ``wait_seconds``."""
        look = _Look([], self._approximate_count())
        try:
            while len(look.held) < _LIMIT:
                got = self._receive(0)
                if not got and len(look.held) < look.total:
                    got = self._receive(self._wait)
                if not got:
                    break
                look.held.extend(
                    _Held(DeadLetter.of(m, webhooks=self.webhooks), m["ReceiptHandle"]) for m in got
                )
            look.held.sort(key=lambda h: h.letter.sent_at)
            yield look
        finally:
            self._release(look.held)

    def _receive(self, wait_seconds: int) -> list[Item]:
        got: list[Item] = self._call(
            "receive_message",
            QueueUrl=self.dlq_url,
            MaxNumberOfMessages=_BATCH,
            VisibilityTimeout=HOLD_SECONDS,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        return got

    def _release(self, held: list[_Held]) -> None:
        for start in range(0, len(held), _BATCH):
            entries = [
                {"Id": str(n), "ReceiptHandle": h.receipt, "VisibilityTimeout": 0}
                for n, h in enumerate(held[start : start + _BATCH])
            ]
            self._call("change_message_visibility_batch", QueueUrl=self.dlq_url, Entries=entries)

    def _approximate_count(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self._call(
            "get_queue_attributes", QueueUrl=self.dlq_url, AttributeNames=names
        )["Attributes"]
        return sum(int(attributes.get(n, 0)) for n in names)

    def _call(self, operation: str, **params: Any) -> Item:
        return _call(self._calls, self._sqs, operation, **params)


def _call(calls: AwsCalls, sqs: Any, operation: str, **params: Any) -> Item:
    """One SQS call; an AWS error that :class:`AwsCalls` does not map (a missing queue,
    access denied) is a ``PermanentError`` naming it."""
    try:
        return calls(sqs, "sqs", operation, **params)
    except ClientError as exc:
        raise PermanentError(f"sqs.{operation} refused ({error_code(exc)}): {exc}") from exc


def webhooks_queue_url(sqs: Any, settings: Settings) -> str:
    """``AGENTWORKER_WEBHOOKS_QUEUE_URL``, else the URL of the stack's webhooks queue, named
    after ``AGENTWORKER_TABLE_NAME`` (the stack's prefix: ``StackNames``)."""
    if settings.webhooks_queue_url:
        return settings.webhooks_queue_url
    name = StackNames(prefix=settings.table_name).webhooks_queue
    return _named_queue(sqs, settings, name, "AGENTWORKER_WEBHOOKS_QUEUE_URL")


def inbound_queue_url(sqs: Any, settings: Settings) -> str:
    """``AGENTWORKER_QUEUE_URL``, else the URL of the stack's inbound queue, named after
    ``AGENTWORKER_TABLE_NAME`` (the stack's prefix: ``StackNames``)."""
    if settings.queue_url:
        return settings.queue_url
    name = StackNames(prefix=settings.table_name).queue
    return _named_queue(sqs, settings, name, "AGENTWORKER_QUEUE_URL")


def _named_queue(sqs: Any, settings: Settings, name: str, variable: str) -> str:
    try:
        found = _call(AwsCalls(), sqs, "get_queue_url", QueueName=name)
    except PermanentError as exc:
        raise ConfigError(
            f"{variable} is not set and there is no queue {name!r} (named after"
            f" {settings.source('table_name')}={settings.table_name!r}): {exc}"
        ) from exc
    return str(found["QueueUrl"])
