"""Built-in tools for the support use case: tickets, FAQ search, current time."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from workers.agent.tools.base import ToolContext, ToolSpec
from workers.core.model import Ticket
from workers.errors import NotFound, PermanentError

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


def lookup_ticket(ctx: ToolContext, args: LookupArgs) -> str:
    ticket = ctx.tickets.get_ticket(args.ticket_id)
    if ticket is None:
        raise NotFound(f"Ticket {args.ticket_id} does not exist.", field="ticket_id")
    return _show(ticket)


class CreateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=200, description="One-line summary.")
    body: str = Field(default="", max_length=20_000, description="Details from the customer.")
    priority: Priority = "normal"


def create_ticket(ctx: ToolContext, args: CreateArgs) -> str:
    ticket = ctx.tickets.create_ticket(
        idempotency_key=ctx.idempotency_key,
        conversation_id=ctx.conversation_id,
        subject=args.subject,
        body=args.body,
        priority=args.priority,
        now=ctx.clock.now(),
    )
    return f"Opened ticket {ticket.ticket_id}: '{ticket.subject}' (priority {ticket.priority})."


class UpdateArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_id: int = Field(ge=1)
    status: Status | None = None
    priority: Priority | None = None
    comment: str | None = Field(default=None, max_length=5000)


def update_ticket(ctx: ToolContext, args: UpdateArgs) -> str:
    if args.status is None and args.priority is None and not args.comment:
        raise PermanentError("Nothing to change: give a status, a priority or a comment.")
    ticket = ctx.tickets.update_ticket(
        args.ticket_id,
        idempotency_key=ctx.idempotency_key,
        status=args.status,
        priority=args.priority,
        comment=args.comment,
        now=ctx.clock.now(),
    )
    return "Updated. " + _show(ticket)


def _describe_update(args: UpdateArgs) -> str:
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


@cache
def _faq() -> list[dict[str, str]]:
    text = resources.files("workers.agent.tools").joinpath("faq.json").read_text("utf-8")
    entries: list[dict[str, str]] = json.loads(text)
    return entries


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an the i my me to do how is can what where why of for in on it and or".split()  # noqa: SIM905
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def search_faq(ctx: ToolContext, args: FaqArgs) -> str:
    query = _words(args.query)
    scored = sorted(
        ((len(query & _words(e["question"] + " " + e["answer"])), e) for e in _faq()),
        key=lambda pair: -pair[0],
    )
    hits = [e for score, e in scored[: args.limit] if score > 0]
    if not hits:
        return "No FAQ entry matches that question."
    return " ".join(f"FAQ: {e['question']} {e['answer']}" for e in hits[:1])


class TimeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str = Field(default="UTC", description="IANA zone, e.g. Europe/Berlin.")


def current_time(ctx: ToolContext, args: TimeArgs) -> str:
    try:
        zone = ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PermanentError(f"Unknown time zone {args.timezone!r}.", field="timezone") from exc
    now = datetime.fromtimestamp(ctx.clock.now(), UTC).astimezone(zone)
    return f"It is {now:%A %d %B %Y, %H:%M} ({args.timezone})."


SUPPORT_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec("lookup_ticket", "Look up a support ticket by number.", LookupArgs, lookup_ticket),
    ToolSpec("create_ticket", "Open a new support ticket.", CreateArgs, create_ticket),
    ToolSpec(
        "update_ticket",
        "Change a ticket's status or priority, or add a note.",
        UpdateArgs,
        update_ticket,
        _describe_update,
    ),
    ToolSpec("search_faq", "Search the product FAQ.", FaqArgs, search_faq),
    ToolSpec("current_time", "The current date and time.", TimeArgs, current_time),
)
