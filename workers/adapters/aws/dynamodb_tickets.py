"""``DynamoDBTicketStore``: the support tickets the agent's tools write, idempotent by key.

A ticket is ``pk=ticket#<id>``; ids come from an atomic counter item; an applied side effect
is ``pk=effect#<idempotency key>``, written in the same transaction as the ticket, so a
replayed tool call (a retried turn) finds it and changes nothing. These keys share the
conversation store's table (layout in :mod:`workers.adapters.aws.tables`) without meeting its
``conv#`` and ``conn#`` items.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from workers.adapters.aws.calls import AwsCalls, Item, TransactionCancelled
from workers.adapters.aws.dynamodb_table import (
    DynamoDBTable,
    attempts,
    get_float,
    get_int,
    get_str,
    get_str_list,
    key,
    key_part,
    number,
    opt_str,
    string,
    string_list,
)
from workers.core.model import Ticket
from workers.errors import NotFound, RetryableError

TICKET = "ticket"
EFFECT = "effect"
TICKET_COUNTER_PK = "counter#tickets"


class DynamoDBTicketStore:
    """``TicketStore`` on the DynamoDB table ``table_name`` (the conversation store's table
    in the composition root). ``dynamodb`` is a boto3 client built by the composition root."""

    def __init__(self, *, dynamodb: Any, table_name: str) -> None:
        self.api_calls = AwsCalls()
        """API calls made so far, by ``service.operation``: round trips for benchmarks."""
        self._table = DynamoDBTable(dynamodb, table_name, self.api_calls)

    def create_ticket(
        self,
        *,
        idempotency_key: str,
        conversation_id: str,
        customer: str,
        subject: str,
        body: str,
        priority: str,
        now: float,
    ) -> Ticket:
        """Create ``customer``'s ticket once per ``idempotency_key``; a replay returns the
        first ticket. Three round trips: effect check, id counter, transaction."""
        effect_pk = _effect_pk(idempotency_key)
        done = self._table.get(effect_pk, EFFECT)
        if done is not None:
            return self._existing(get_int(done, "ticket_id"), customer)
        counter = self._table.update(
            TICKET_COUNTER_PK,
            "counter",
            "ADD #value :one",
            values={":one": number(1)},
            returns="UPDATED_NEW",
        )
        ticket = Ticket(
            ticket_id=get_int(counter, "value"),
            conversation_id=conversation_id,
            subject=subject,
            body=body,
            status="open",
            priority=priority,
            created_at=now,
            updated_at=now,
            customer=customer,
        )
        effect = {**key(effect_pk, EFFECT), "ticket_id": number(ticket.ticket_id)}
        try:
            self._table.transact(
                [
                    self._table.put(effect, cond="attribute_not_exists(#pk)"),
                    self._table.put(_ticket_item(ticket), cond="attribute_not_exists(#pk)"),
                ]
            )
        except TransactionCancelled as cancelled:
            if not cancelled.failed(0):
                raise RetryableError(f"ticket creation conflicted: {cancelled}") from None
            # A concurrent replay of the same effect won (its id is used, ours is skipped).
            winner = self._table.get(effect_pk, EFFECT)
            if winner is None:
                raise RetryableError("ticket effect vanished while being created") from None
            return self._existing(get_int(winner, "ticket_id"), customer)
        return ticket

    def get_ticket(self, ticket_id: int, *, customer: str) -> Ticket | None:
        """``customer``'s ticket, or ``None`` if it does not exist or is someone else's."""
        item = self._table.get(_ticket_pk(ticket_id), TICKET)
        return None if item is None else _ticket(item).of(customer)

    def update_ticket(
        self,
        ticket_id: int,
        *,
        customer: str,
        idempotency_key: str,
        status: str | None,
        priority: str | None,
        comment: str | None,
        now: float,
    ) -> Ticket:
        """Apply an update once per ``idempotency_key``; ``NotFound`` for an unknown ticket
        or another customer's.
        Two round trips: ticket and effect read together, then a transaction conditional on
        the ticket's version."""
        pk, effect_pk = _ticket_pk(ticket_id), _effect_pk(idempotency_key)
        for _ in attempts():
            found = self._table.batch_get([(pk, TICKET), (effect_pk, EFFECT)])
            item = found.get((pk, TICKET))
            ticket = None if item is None else _ticket(item).of(customer)
            if item is None or ticket is None:
                raise NotFound.ticket(ticket_id)
            if (effect_pk, EFFECT) in found:
                return ticket
            updated = replace(
                ticket,
                status=status or ticket.status,
                priority=priority or ticket.priority,
                comments=[*ticket.comments, comment] if comment else ticket.comments,
                updated_at=now,
            )
            effect = {**key(effect_pk, EFFECT), "ticket_id": number(ticket_id)}
            change = self._table.update_action(
                pk,
                TICKET,
                "SET #status = :status, #priority = :priority, #comments = :comments,"
                " #updated_at = :now, #version = #version + :one",
                cond="#version = :version",
                values={
                    ":status": string(updated.status),
                    ":priority": string(updated.priority),
                    ":comments": string_list(updated.comments),
                    ":now": number(now),
                    ":one": number(1),
                    ":version": item["version"],
                },
            )
            try:
                self._table.transact(
                    [self._table.put(effect, cond="attribute_not_exists(#pk)"), change]
                )
            except TransactionCancelled:
                continue  # a replay won (the re-read returns its ticket) or the ticket moved
            return updated
        raise RetryableError(f"update of ticket {ticket_id}: too much contention")

    def _existing(self, ticket_id: int, customer: str) -> Ticket:
        ticket = self.get_ticket(ticket_id, customer=customer)
        if ticket is None:
            raise NotFound.ticket(ticket_id)
        return ticket


def _ticket_pk(ticket_id: int) -> str:
    return f"ticket#{ticket_id}"


def _effect_pk(idempotency_key: str) -> str:
    return f"effect#{key_part(idempotency_key)}"


def _ticket_item(ticket: Ticket) -> Item:
    return {
        **key(_ticket_pk(ticket.ticket_id), TICKET),
        "ticket_id": number(ticket.ticket_id),
        "conversation_id": string(ticket.conversation_id),
        "customer": string(ticket.customer),
        "subject": string(ticket.subject),
        "body": string(ticket.body),
        "status": string(ticket.status),
        "priority": string(ticket.priority),
        "comments": string_list(ticket.comments),
        "created_at": number(ticket.created_at),
        "updated_at": number(ticket.updated_at),
        "version": number(0),
    }


def _ticket(item: Item) -> Ticket:
    return Ticket(
        ticket_id=get_int(item, "ticket_id"),
        conversation_id=get_str(item, "conversation_id"),
        subject=get_str(item, "subject"),
        body=get_str(item, "body"),
        status=get_str(item, "status"),
        priority=get_str(item, "priority"),
        created_at=get_float(item, "created_at"),
        updated_at=get_float(item, "updated_at"),
        comments=get_str_list(item, "comments"),
        customer=opt_str(item, "customer") or "",
    )
