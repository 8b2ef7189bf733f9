"""``agentworker tickets import FILE``: a helpdesk's backlog answered by the served agent, one
conversation per ticket (``ticket:<id>``).

The file is a helpdesk export, JSON Lines or CSV (by its extension). Its columns are found
by name (any case): the usual ones of helpdesk exports work as they are (:data:`COLUMNS`),
and the ``ticket_columns`` setting names others (``{"id": "Case Number", ...}``). Each ticket
becomes one message of its conversation, with a dedupe key of its id: importing the file
again (after a crash, a kill, a Ctrl-C) answers nothing twice: tickets already accepted are
duplicates, whose outcome is read from the conversation, and the import goes on with the
others. At most ``--concurrency`` tickets are in flight; the server's quotas are respected
(a 429 waits its ``Retry-After``). The outcome of each ticket:

- ``answered``: the agent replied;
- ``escalated``: the agent handed it to a person (the graph asks, with ``interrupt()``);
- ``waiting for approval``: a tool call waits for someone's approval;
- ``failed``: the row could not be read, the message was refused, or the turn failed (the
  reason is shown).

Tokens are the replies' own usage; the cost is priced with the model the settings name (the
server's, when the import runs where the server does).
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from events.outbound import TokenUsage

COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "ticket_id", "ticket id", "ticket", "number", "key", "case number"),
    "subject": ("subject", "title", "summary"),
    "description": ("description", "body", "comment", "text", "content", "message"),
    "requester": (
        "requester",
        "requester_email",
        "requester email",
        "email",
        "customer",
        "from",
        "reporter",
    ),
    "priority": ("priority", "urgency"),
    "tags": ("tags", "labels"),
}
"""The columns of a ticket and the names helpdesk exports give them (compared in any case)."""
Outcome = Literal["answered", "escalated", "waiting for approval", "failed", "queued"]
OUTCOMES: tuple[Outcome, ...] = ("answered", "escalated", "waiting for approval", "failed")
"""What becomes of a ticket the server answers (``queued``: sent to the AWS runtime's queue,
which answers it in the workflow)."""
DEDUPE_PREFIX = "ticket-import:"
POLL_SECONDS = 0.2


class Ticket(BaseModel):
    """One ticket of the file."""

    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9:._@-]+$")
    subject: str = Field(default="", max_length=1000)
    description: str = Field(default="", max_length=100_000)
    requester: str = Field(default="", max_length=320)
    priority: str = Field(default="", max_length=50)
    tags: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: object) -> object:
        return str(value).strip() if isinstance(value, int | float | str) else value

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_list(cls, value: object) -> object:
        if isinstance(value, str):  # "billing, urgent" or "billing urgent"
            return [t for t in value.replace(",", " ").split() if t]
        return [] if value is None else value

    @property
    def conversation_id(self) -> str:
        return f"ticket:{self.id}"

    @property
    def text(self) -> str:
        return "\n\n".join(p for p in (self.subject.strip(), self.description.strip()) if p)

    def message(self) -> dict[str, Any]:
        """The ``POST .../messages`` body of the ticket."""
        metadata = {
            "ticket_id": self.id,
            "ticket_requester": self.requester,
            "ticket_priority": self.priority,
            "ticket_tags": ",".join(self.tags),
        }
        return {
            "text": self.text,
            "dedupe_key": f"{DEDUPE_PREFIX}{self.id}",
            "metadata": {k: v for k, v in metadata.items() if v},
        }


@dataclass(frozen=True)
class BadRow:
    """A row that is not a ticket: where, and why."""

    line: int
    reason: str


def read_tickets(path: Path, columns: Mapping[str, str] | None = None) -> list[Ticket | BadRow]:
    """The tickets of ``path`` (``.jsonl``/``.ndjson`` JSON Lines, else CSV), in order; a row
    that is not a ticket is a :class:`BadRow` (a ticket id seen before is one too: a file
    lists a ticket once). ``columns``: our field -> the file's column, over the usual names.
    ``ValueError`` for a file that cannot be read at all."""
    rows = _json_lines(path) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv(path)
    seen: set[str] = set()
    found: list[Ticket | BadRow] = []
    for line, row in rows:
        if isinstance(row, BadRow):
            found.append(row)
            continue
        try:
            ticket = Ticket.model_validate(_mapped(row, columns or {}))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "row"
            found.append(BadRow(line, f"{where}: {error['msg']}"))
            continue
        if ticket.id in seen:
            found.append(BadRow(line, f"id: ticket {ticket.id!r} is listed twice"))
            continue
        if not ticket.text:
            found.append(BadRow(line, "subject and description: both empty"))
            continue
        seen.add(ticket.id)
        found.append(ticket)
    return found


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    with path.open(encoding="utf-8-sig") as lines:
        for n, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield n, BadRow(n, f"not JSON: {exc.msg}")
                continue
            yield n, row if isinstance(row, dict) else BadRow(n, "not a JSON object")


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    with path.open(encoding="utf-8-sig", newline="") as text:
        reader = csv.DictReader(text)
        if not reader.fieldnames:
            raise ValueError(f"{path}: no header row")
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _mapped(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """``row``'s values under our field names."""
    by_name = {str(k).strip().lower(): v for k, v in row.items()}
    out: dict[str, Any] = {}
    for ours, names in COLUMNS.items():
        wanted = (columns[ours],) if ours in columns else names
        for name in wanted:
            if name.strip().lower() in by_name:
                out[ours] = by_name[name.strip().lower()]
                break
    return {k: ("" if v is None else v) for k, v in out.items() if k == "tags" or v is not None}


@dataclass
class Result:
    """What became of one ticket (or of a row that was not one)."""

    ticket: str
    outcome: Outcome
    reason: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    duplicate: bool = False
    """Accepted by an earlier import (this one read its outcome)."""


@dataclass
class Summary:
    results: list[Result]
    seconds: float
    cost_usd: float | None = None
    """``None``: the model has no price."""

    def counts(self) -> Counter[str]:
        return Counter(r.outcome for r in self.results)

    def usage(self) -> TokenUsage:
        return sum((r.usage for r in self.results), TokenUsage())

    def to_json(self) -> dict[str, Any]:
        counts = self.counts()
        usage = self.usage()
        return {
            "tickets": len(self.results),
            **{o.replace(" ", "_"): counts.get(o, 0) for o in (*OUTCOMES, "queued")},
            "resumed": sum(r.duplicate for r in self.results),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_usd": self.cost_usd,
            "seconds": round(self.seconds, 1),
            "failures": [
                {"ticket": r.ticket, "reason": r.reason}
                for r in self.results
                if r.outcome == "failed"
            ],
        }


class Refused(Exception):
    """The server refused the ticket's message for good (4xx): the ticket failed."""


class ServerGone(Exception):
    """The server cannot be reached: the import stops (run it again to go on)."""


async def outcome_of(client: Any, ticket: Ticket, timeout: float) -> Result:
    """Send ``ticket`` (or find it sent) and wait for its outcome."""
    import httpx

    cid = ticket.conversation_id
    path = f"/v1/conversations/{cid}"
    while True:
        try:
            resp = await client.post(f"{path}/messages", json=ticket.message())
        except httpx.TransportError as exc:
            raise ServerGone(str(exc)) from exc
        if resp.status_code == 429:  # a quota: wait as the server says
            await asyncio.sleep(_retry_after(resp))
            continue
        if resp.status_code != 202:
            return Result(ticket.id, "failed", _error(resp))
        break
    accepted = resp.json()
    message_id, duplicate = accepted["message_id"], bool(accepted.get("duplicate"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = await client.get(path)
        except httpx.TransportError as exc:
            raise ServerGone(str(exc)) from exc
        if view.status_code == 200:
            result = _settled(ticket.id, message_id, view.json())
            if result is not None:
                result.duplicate = duplicate
                return result
        await asyncio.sleep(POLL_SECONDS)
    return Result(ticket.id, "failed", f"no answer within {timeout:.0f} s", duplicate=duplicate)


def _settled(ticket: str, message_id: str, view: Mapping[str, Any]) -> Result | None:
    """The ticket's outcome from its conversation, once its message's turn is over."""
    message = next((m for m in view["messages"] if m["message_id"] == message_id), None)
    if message is None:
        return None
    if message["status"] == "failed":
        return Result(ticket, "failed", message.get("error") or "its turn failed")
    answers = [
        e["payload"] for e in view["replies"] if message_id in e["payload"].get("in_reply_to", [])
    ]
    usage = TokenUsage()
    for payload in answers:
        if isinstance(payload.get("usage"), dict):
            usage = TokenUsage.model_validate(payload["usage"])
    pending = view.get("pending_approval")
    if view["status"] == "awaiting_approval" and pending is not None:
        asked = pending.get("type")
        outcome: Outcome = "escalated" if asked == "interrupt" else "waiting for approval"
        return Result(ticket, outcome, pending.get("text"), usage)
    if not answers or view["status"] == "running" or message["status"] == "pending":
        return None
    last = answers[-1]
    if last["type"] == "notice" and last.get("level") == "error":
        return Result(ticket, "failed", last.get("text"), usage)
    return Result(ticket, "answered", None, usage)


def _retry_after(resp: Any) -> float:
    try:
        return max(0.5, min(float(resp.headers.get("retry-after", "1")), 60.0))
    except ValueError:
        return 1.0


def _error(resp: Any) -> str:
    try:
        err = resp.json()["error"]
        return f"{resp.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"


async def import_tickets(
    rows: list[Ticket | BadRow],
    client: Any,
    *,
    concurrency: int,
    timeout: float,
    done: Callable[[Result], None],
) -> list[Result]:
    """Every row's result, at most ``concurrency`` tickets in flight; ``done`` is told of
    each as it settles. ``ServerGone`` when the server cannot be reached."""
    gate = asyncio.Semaphore(concurrency)

    async def one(row: Ticket | BadRow) -> Result:
        if isinstance(row, BadRow):
            result = Result(f"line {row.line}", "failed", row.reason)
        else:
            async with gate:
                result = await outcome_of(client, row, timeout)
        done(result)
        return result

    tasks = [asyncio.ensure_future(one(row)) for row in rows]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def run(
    path: Path,
    *,
    url: str,
    token: str | None,
    concurrency: int,
    timeout: float,
    columns: Mapping[str, str],
    price: Callable[[TokenUsage], float | None],
    as_json: bool,
) -> int:
    """The command: read ``path``, import its tickets into the server at ``url`` with a
    progress bar, print the summary (a table, or JSON). Exit code 0 when every ticket was
    answered, escalated or waits for approval; 1 when some failed; 2 for a file that cannot
    be read; 3 when the server went away (run it again to go on)."""
    import httpx

    rows = _readable(path, columns)
    if rows is None:
        return 2
    started = time.monotonic()
    progress, done = _progress(len(rows))

    headers = {"authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=concurrency * 2 + 2)

    async def main() -> list[Result]:
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=30.0, limits=limits
        ) as client:
            return await import_tickets(
                rows, client, concurrency=max(1, concurrency), timeout=timeout, done=done
            )

    try:
        with progress:
            results = asyncio.run(main())
    except ServerGone as exc:
        print(
            f"agentworker: tickets import: no server at {url} ({exc}); start it, then run the"
            " same command again: it goes on where it stopped",
            file=sys.stderr,
        )
        return 3
    summary = Summary(results, time.monotonic() - started)
    summary.cost_usd = price(summary.usage())
    return _summarized(summary, as_json)


def run_to_queue(
    path: Path, sqs: Any, queue_url: str, *, columns: Mapping[str, str], as_json: bool
) -> int:
    """The command with ``--target aws|sandbox``: the tickets queued on the AWS runtime's
    inbound queue (``queue_url``), with a progress bar and the summary (queued, failed).
    Exit codes as :func:`run`'s."""
    rows = _readable(path, columns)
    if rows is None:
        return 2
    started = time.monotonic()
    progress, done = _progress(len(rows))
    results: list[Result] = []
    with progress:
        for row in rows:
            if isinstance(row, BadRow):
                results.append(Result(f"line {row.line}", "failed", row.reason))
                done(results[-1])
        tickets = [r for r in rows if isinstance(r, Ticket)]
        results += send_batches(sqs, queue_url, tickets, done)
    return _summarized(Summary(results, time.monotonic() - started), as_json)


def _readable(path: Path, columns: Mapping[str, str]) -> list[Ticket | BadRow] | None:
    """The rows of ``path``; ``None`` (said on stderr) for a file that cannot be read."""
    try:
        return read_tickets(path, columns)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        print(f"agentworker: tickets import: {exc}", file=sys.stderr)
        return None


def _progress(total: int) -> tuple[Any, Callable[[Result], None]]:
    """A progress bar on stderr over ``total`` tickets, and what advances it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]tickets[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = progress.add_task("", total=total)
    seen: Counter[str] = Counter()

    def done(result: Result) -> None:
        seen[result.outcome] += 1
        said = " · ".join(f"{o} {seen[o]}" for o in (*OUTCOMES, "queued") if seen[o])
        progress.update(task, advance=1, description=said)

    return progress, done


def _summarized(summary: Summary, as_json: bool) -> int:
    from rich.console import Console

    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print_summary(summary, Console())
    return 1 if summary.counts().get("failed") else 0


def print_summary(summary: Summary, console: Any) -> None:
    """The summary table, then each failure and why."""
    from rich.table import Table

    counts, usage = summary.counts(), summary.usage()
    table = Table(title=f"{len(summary.results)} tickets")  # (the time: on the progress bar)
    table.add_column("outcome")
    table.add_column("tickets", justify="right")
    queued = "queued" in counts
    for outcome in ("queued", "failed") if queued else OUTCOMES:
        table.add_row(outcome, str(counts.get(outcome, 0)))
    table.add_section()
    table.add_row("input tokens", f"{usage.input_tokens:,}")
    table.add_row("output tokens", f"{usage.output_tokens:,}")
    cost = "no price for the model" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    table.add_row("cost", cost)
    console.print(table)
    resumed = sum(r.duplicate for r in summary.results)
    if resumed:
        console.print(f"{resumed} were accepted by an earlier import: their outcome is read back")
    for r in summary.results:
        if r.outcome == "failed":
            console.print(f"failed: {r.ticket}: {r.reason}", markup=False, highlight=False)


# --- to a queue (--target aws | sandbox) ---------------------------------------------------

BATCH_SIZE = 10
"""SQS ``SendMessageBatch``'s limit."""
SEND_ATTEMPTS = 5
"""Tries of an entry SQS did not take (throttled, an internal error) before it is failed."""


def queue_body(ticket: Ticket) -> str:
    """The inbound queue's message of ``ticket`` (``ingest`` reads it as a backend's)."""
    from events.inbound import InboundMessage

    body = ticket.message()
    message = InboundMessage(
        conversation_id=ticket.conversation_id,
        dedupe_key=body["dedupe_key"],
        text=body["text"],
        channel="ticket",
        sender=ticket.requester or "customer",
        metadata=body["metadata"],
    )
    return message.model_dump_json(exclude_none=True)


def send_batches(
    sqs: Any,
    queue_url: str,
    tickets: list[Ticket],
    done: Callable[[Result], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Result]:
    """Queue ``tickets`` with ``SendMessageBatch`` (ten at a time; the conversation is the
    message group, a hash of the ticket's dedupe key the deduplication id, so a file sent
    again within SQS's five minutes is dropped by SQS and later by the dedupe key). Entries
    SQS did not take are sent again with backoff (:data:`SEND_ATTEMPTS`), unless SQS says
    the fault is the sender's; a ticket is ``queued`` once SQS took it (its turn runs in the
    workflow)."""
    import hashlib

    results: list[Result] = []
    waiting = list(tickets)
    while waiting:
        batch, waiting = waiting[:BATCH_SIZE], waiting[BATCH_SIZE:]
        pending = {str(i): t for i, t in enumerate(batch)}
        for attempt in range(1, SEND_ATTEMPTS + 1):
            entries = [
                {
                    "Id": key,
                    "MessageBody": queue_body(t),
                    "MessageGroupId": t.conversation_id,
                    "MessageDeduplicationId": hashlib.sha256(
                        t.message()["dedupe_key"].encode()
                    ).hexdigest(),
                }
                for key, t in pending.items()
            ]
            try:
                answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except Exception as exc:  # throttled, unreachable: the whole batch again
                failed = {k: (False, f"{type(exc).__name__}: {exc}") for k in pending}
            else:
                failed = {
                    f["Id"]: (bool(f.get("SenderFault")), f"{f.get('Code')}: {f.get('Message')}")
                    for f in answer.get("Failed", [])
                }
            for key, ticket in list(pending.items()):
                if key not in failed:
                    result = Result(ticket.id, "queued")
                    results.append(result)
                    done(result)
                    del pending[key]
                elif failed[key][0] or attempt == SEND_ATTEMPTS:
                    result = Result(ticket.id, "failed", f"not queued: {failed[key][1]}")
                    results.append(result)
                    done(result)
                    del pending[key]
            if not pending:
                break
            sleep(min(0.2 * 2**attempt, 5.0))
    return results
