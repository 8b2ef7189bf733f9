"""The support agent's tools: tickets, FAQ search, current time (LangChain tools).

Writes to tickets carry :func:`agentworker.idempotency_key`, so a retried turn opens no ticket
twice and applies no change twice, whatever tool-call ids the model makes up on the retry.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from agentworker import Clock, PermanentError, Ticket, TicketStore, current_turn, idempotency_key

Priority = Literal["low", "normal", "high", "urgent"]
Status = Literal["open", "pending", "resolved", "closed"]


def _show(ticket: Ticket) -> str:
    line = (
        f"Ticket {ticket.ticket_id} '{ticket.subject}' is {ticket.status}"
        f" (priority {ticket.priority})."
    )
    if ticket.comments:
        line += f" Last note: {ticket.comments[-1]}"
    return line


class LookupArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_id: int = Field(ge=1, description="The ticket number.")


class CreateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=200, description="One-line summary.")
    body: str = Field(default="", max_length=20_000, description="Details from the customer.")
    priority: Priority = "normal"


class UpdateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_id: int = Field(ge=1)
    status: Status | None = None
    priority: Priority | None = None
    comment: str | None = Field(default=None, max_length=5000)


def describe_update(args: UpdateArgs) -> str:
    """The approval question of ``update_ticket``, e.g. 'May I set status to closed on
    ticket 3?'."""
    changes = []
    if args.status:
        changes.append(f"set status to {args.status}")
    if args.priority:
        changes.append(f"set priority to {args.priority}")
    if args.comment:
        changes.append("add a note")
    return f"May I {' and '.join(changes) or 'change'} on ticket {args.ticket_id}?"


class FaqArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=2000)
    limit: int = Field(default=2, ge=1, le=5)


class TimeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str = Field(default="UTC", description="IANA zone, e.g. Europe/Berlin.")


@cache
def _faq() -> list[dict[str, str]]:
    text = resources.files(__package__ or "support_agent").joinpath("faq.json").read_text("utf-8")
    entries: list[dict[str, str]] = json.loads(text)
    return entries


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an the i my me to do how is can what where why of for in on it and or".split()  # noqa: SIM905
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def search_faq(query: str, limit: int = 2) -> str:
    """Search the product FAQ."""
    words = _words(query)
    scored = sorted(
        ((len(words & _words(e["question"] + " " + e["answer"])), e) for e in _faq()),
        key=lambda pair: -pair[0],
    )
    hits = [e for score, e in scored[:limit] if score > 0]
    if not hits:
        return "No FAQ entry matches that question."
    return " ".join(f"FAQ: {e['question']} {e['answer']}" for e in hits[:1])


def support_tools(tickets: TicketStore, clock: Clock) -> list[BaseTool]:
    """The tools, bound to this runtime's ticket store and clock."""

    def lookup_ticket(ticket_id: int) -> str:
        # Another customer's ticket does not exist here.
        ticket = tickets.get_ticket(ticket_id, customer=current_turn().customer)
        if ticket is None:
            raise PermanentError(f"Ticket {ticket_id} does not exist.", field="ticket_id")
        return _show(ticket)

    def create_ticket(subject: str, body: str = "", priority: Priority = "normal") -> str:
        args = {"subject": subject, "body": body, "priority": priority}
        ticket = tickets.create_ticket(
            idempotency_key=idempotency_key("create_ticket", args),
            conversation_id=current_turn().conversation_id,
            customer=current_turn().customer,
            subject=subject,
            body=body,
            priority=priority,
            now=clock.now(),
        )
        return f"Opened ticket {ticket.ticket_id}: '{ticket.subject}' (priority {ticket.priority})."

    def update_ticket(
        ticket_id: int,
        status: Status | None = None,
        priority: Priority | None = None,
        comment: str | None = None,
    ) -> str:
        if status is None and priority is None and not comment:
            raise PermanentError("Nothing to change: give a status, a priority or a comment.")
        args = {"ticket_id": ticket_id, "status": status, "priority": priority, "comment": comment}
        ticket = tickets.update_ticket(
            ticket_id,
            customer=current_turn().customer,
            idempotency_key=idempotency_key("update_ticket", args),
            status=status,
            priority=priority,
            comment=comment,
            now=clock.now(),
        )
        return "Updated. " + _show(ticket)

    def current_time(timezone: str = "UTC") -> str:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise PermanentError(f"Unknown time zone {timezone!r}.", field="timezone") from exc
        now = datetime.fromtimestamp(clock.now(), UTC).astimezone(zone)
        return f"It is {now:%A %d %B %Y, %H:%M} ({timezone})."

    def tool(func: object, description: str, schema: type[BaseModel]) -> BaseTool:
        return StructuredTool.from_function(
            func=func,  # type: ignore[arg-type]
            name=func.__name__,  # type: ignore[attr-defined]
            description=description,
            args_schema=schema,
        )

    return [
        tool(lookup_ticket, "Look up a support ticket by number.", LookupArgs),
        tool(create_ticket, "Open a new support ticket.", CreateArgs),
        tool(update_ticket, "Change a ticket's status or priority, or add a note.", UpdateArgs),
        tool(search_faq, "Search the product FAQ.", FaqArgs),
        tool(current_time, "The current date and time.", TimeArgs),
    ]
