"""Reply sinks of the AWS runtime: SNS, API Gateway WebSocket connections, and both."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

from events.outbound import OutboxPayload, StreamChunk, UpdateChunk
from workers.adapters.aws.errors import error_code, map_aws_error
from workers.core.ports import ConversationStore

log = logging.getLogger(__name__)


MESSAGE_GROUP_LIMIT = 128
"""SNS FIFO's limit on a ``MessageGroupId`` (a conversation id may be longer)."""


def message_group(conversation_id: str) -> str:
    """The conversation's message group on a FIFO topic: its id, or a digest of a longer
    one (the characters of an id are all allowed in a group id)."""
    if len(conversation_id) <= MESSAGE_GROUP_LIMIT:
        return conversation_id
    return "sha256-" + hashlib.sha256(conversation_id.encode()).hexdigest()


class SnsReplySink:
    """Publishes each outbox payload to the reply topic, with attributes subscribers can
    filter on (conversation, type) and dedupe by (``reply_id``). Chunks are not streamed
    through SNS.

    On a FIFO topic (the stack's: its name ends in ``.fifo``) the payload's ``reply_id`` is
    also the ``MessageDeduplicationId``: SNS itself drops a second publish of the same
    payload within five minutes, whoever sends it (the workflow retrying a step killed
    between its send and its delivery mark, a run that lost its lease while it was sending
    and the run that took over). The conversation is the message group: its replies keep
    their order."""

    def __init__(self, client: Any, topic_arn: str) -> None:
        self._client = client
        self._topic = topic_arn
        self._fifo = topic_arn.endswith(".fifo")

    def send(self, payload: OutboxPayload) -> None:
        attributes = {
            "conversation_id": {"DataType": "String", "StringValue": payload.conversation_id},
            "type": {"DataType": "String", "StringValue": payload.type},
            "reply_id": {"DataType": "String", "StringValue": payload.reply_id},
        }
        fifo: dict[str, str] = {}
        if self._fifo:
            fifo = {
                "MessageGroupId": message_group(payload.conversation_id),
                "MessageDeduplicationId": payload.reply_id,
            }
        try:
            self._client.publish(
                TopicArn=self._topic,
                Message=payload.model_dump_json(),
                MessageAttributes=attributes,
                **fifo,
            )
        except Exception as exc:
            raise map_aws_error(exc, "SNS Publish") from exc

    def send_chunk(self, chunk: StreamChunk) -> None:
        return None


class WebSocketReplySink:
    """Posts payloads and streamed chunks to every WebSocket connection of the conversation
    through the API Gateway management API. A gone connection is removed, not retried.

    A turn's chunks go to the connections listed at its first chunk (one store query per
    turn, not per chunk); a connection that subscribes mid-turn gets the final payload,
    which is always sent to the connections listed at that moment."""

    _TURNS_KEPT = 64

    def __init__(self, client: Any, store: ConversationStore) -> None:
        self._client = client
        self._store = store
        self._lock = threading.Lock()
        self._chunk_targets: dict[str, list[str]] = {}

    def send(self, payload: OutboxPayload) -> None:
        connections = self._store.list_connections(payload.conversation_id)
        self._post(connections, payload.model_dump(mode="json"), best_effort=False)

    def send_chunk(self, chunk: StreamChunk) -> None:
        if isinstance(chunk, UpdateChunk):
            return  # not part of the WebSocket protocol (a post per node would cost)
        with self._lock:
            connections = self._chunk_targets.get(chunk.turn_id)
            if connections is None:
                if len(self._chunk_targets) >= self._TURNS_KEPT:
                    self._chunk_targets.clear()
                connections = self._store.list_connections(chunk.conversation_id)
                self._chunk_targets[chunk.turn_id] = connections
        self._post(connections, chunk.model_dump(mode="json"), best_effort=True)

    def _post(self, connections: list[str], frame: dict[str, Any], *, best_effort: bool) -> None:
        data = json.dumps(frame).encode()
        for connection_id in list(connections):
            try:
                self._client.post_to_connection(ConnectionId=connection_id, Data=data)
            except Exception as exc:
                if error_code(exc) == "GoneException":
                    log.info("connection %s is gone; removing it", connection_id)
                    self._store.remove_connection(connection_id)
                    with self._lock:
                        for targets in self._chunk_targets.values():
                            if connection_id in targets:
                                targets.remove(connection_id)
                elif not best_effort:
                    raise map_aws_error(exc, "PostToConnection") from exc


WRITE_BACK_SOURCE = "agentworker"
"""``source`` of a ticket's write-back on the stack's event bus."""
WRITE_BACK_PREFIX = "agentworker."
"""Its ``detail-type`` is ``agentworker.ticket.reply`` / ``agentworker.ticket.status``: not the
``ticket.`` the bus's rule hands ``ingest`` as inbound tickets (no loop)."""


class TicketWriteBack:
    """A ticket's write-back to the helpdesk on AWS: for a ``ticket:<id>`` conversation's
    payloads, the same ``ticket.reply`` and ``ticket.status`` events the embedded runtime's
    webhooks send (:func:`~workers.adapters.webhooks.events_of`), put on the stack's event
    bus (``source`` ``agentworker``, ``detail-type`` ``agentworker.ticket.reply|status``,
    ``detail`` the event's data with its ``id``, the ``webhook-id`` a webhook would carry:
    EventBridge delivers at least once, a consumer drops a repeat by it). Other payloads
    are not its business. ``events`` makes the EventBridge client at the first event."""

    def __init__(self, events: Any, bus_name: str) -> None:
        self._make_client = events
        self._client: Any = None
        self._bus = bus_name

    def send(self, payload: OutboxPayload) -> None:
        from workers.adapters.webhooks import TICKET_PREFIX, events_of

        if not payload.conversation_id.startswith(TICKET_PREFIX):
            return
        entries = [
            {
                "Source": WRITE_BACK_SOURCE,
                "DetailType": WRITE_BACK_PREFIX + event,
                "Detail": json.dumps({"id": webhook_id, **data}, separators=(",", ":")),
                "EventBusName": self._bus,
            }
            for webhook_id, event, data in events_of(payload)
            if event.startswith("ticket.")
        ]
        if not entries:
            return
        if self._client is None:
            self._client = self._make_client()
        try:
            answer = self._client.put_events(Entries=entries)
        except Exception as exc:
            raise map_aws_error(exc, "events.put_events") from exc
        if answer.get("FailedEntryCount"):
            from workers.errors import RetryableError

            failed = [e.get("ErrorCode") for e in answer.get("Entries", []) if e.get("ErrorCode")]
            raise RetryableError(f"events.put_events: {len(failed)} not taken ({failed[:3]})")

    def send_chunk(self, chunk: StreamChunk) -> None:
        return None  # the helpdesk takes whole replies
