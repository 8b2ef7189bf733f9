"""Reading a helpdesk export for ``agentworker tickets import``: the usual column names of
helpdesk exports work as they are, ``ticket_columns`` names others, and a row that is not a
ticket is named with its line and why; and the outcome of a ticket read from its
conversation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.tickets import BadRow, Ticket, _settled, read_tickets


def test_a_csv_export_with_its_own_column_names_is_read(tmp_path: Path) -> None:
    export = tmp_path / "zendesk.csv"
    export.write_text(
        "\ufeffTicket ID,Subject,Description,Requester,Priority,Tags\n"
        '42,Printer jams,"It jams, every page",ana@example.com,high,"hardware, printers"\n'
        ",No id,whatever,,,\n"
        "43,,,bo@example.com,low,\n"
        "42,Again,the same ticket,,,\n"
        "44 4,Bad id,spaces are not in ids,,,\n",
        encoding="utf-8",
    )
    first, no_id, empty, twice, bad_id = read_tickets(export)
    assert first == Ticket(
        id="42",
        subject="Printer jams",
        description="It jams, every page",
        requester="ana@example.com",
        priority="high",
        tags=["hardware", "printers"],
    )
    assert isinstance(first, Ticket) and first.text == "Printer jams\n\nIt jams, every page"
    assert first.message() == {
        "text": "Printer jams\n\nIt jams, every page",
        "dedupe_key": "ticket-import:42",
        "metadata": {
            "ticket_id": "42",
            "ticket_requester": "ana@example.com",
            "ticket_priority": "high",
            "ticket_tags": "hardware,printers",
        },
    }
    assert no_id == BadRow(3, no_id.reason) and no_id.reason.startswith("id:")  # type: ignore[union-attr]
    assert isinstance(empty, BadRow) and "both empty" in empty.reason
    assert isinstance(twice, BadRow) and "listed twice" in twice.reason and twice.line == 5
    assert isinstance(bad_id, BadRow) and bad_id.reason.startswith("id:")


def test_json_lines_and_named_columns(tmp_path: Path) -> None:
    export = tmp_path / "cases.jsonl"
    rows = [
        {"Case Number": 7, "Title": "Refund", "Details": "Charged twice", "labels": ["billing"]},
        "not an object",
    ]
    export.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n\n")
    named = {"id": "Case Number", "description": "Details"}
    ticket, not_object, broken = read_tickets(export, named)
    assert isinstance(ticket, Ticket)
    assert (ticket.id, ticket.subject, ticket.description) == ("7", "Refund", "Charged twice")
    assert ticket.tags == ["billing"] and ticket.conversation_id == "ticket:7"
    assert not_object == BadRow(2, "not a JSON object")
    assert isinstance(broken, BadRow) and broken.line == 3 and "not JSON" in broken.reason


def _view(status: str, replies: list[Any], **more: object) -> dict[str, object]:
    message = {
        "message_id": "m1",
        "status": more.pop("message_status", "consumed"),
        "error": more.pop("error", None),
    }
    return {"status": status, "messages": [message], "replies": replies, **more}


def test_an_outcome_is_read_from_the_conversation() -> None:
    usage = {"input_tokens": 10, "output_tokens": 3}
    reply = {"payload": {"type": "reply", "in_reply_to": ["m1"], "text": "Done", "usage": usage}}
    answered = _settled("42", "m1", _view("idle", [reply]))
    assert answered is not None and answered.outcome == "answered"
    assert answered.usage.input_tokens == 10
    ask = {"payload": {"type": "approval_request", "in_reply_to": ["m1"], "text": "Close?"}}
    pending = {"type": "approval_request", "text": "Close?"}
    waiting = _settled("42", "m1", _view("awaiting_approval", [ask], pending_approval=pending))
    assert waiting is not None and waiting.outcome == "waiting for approval"
    question = {"type": "interrupt", "text": "Which printer?"}
    escalated = _settled("42", "m1", _view("awaiting_approval", [], pending_approval=question))
    assert escalated is not None and escalated.outcome == "escalated"
    failed = _settled("42", "m1", _view("idle", [], message_status="failed", error="boom"))
    assert failed is not None and (failed.outcome, failed.reason) == ("failed", "boom")
    notice = {"payload": {"type": "notice", "level": "error", "in_reply_to": ["m1"], "text": "x"}}
    told = _settled("42", "m1", _view("idle", [notice]))
    assert told is not None and told.outcome == "failed"
    assert _settled("42", "m1", _view("running", [], message_status="pending")) is None


class FlakyQueue:
    """``SendMessageBatch`` that does not take some entries the first time (SQS's own
    fault, then fine), refuses one for good (the sender's), and fails one whole call."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.queued: list[dict[str, Any]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:  # noqa: N803
        self.calls.append(Entries)
        if len(self.calls) == 2:
            raise ConnectionError("reset by peer")
        failed = []
        for entry in Entries:
            body = json.loads(entry["MessageBody"])
            first_time = len(self.calls) == 1 and body["conversation_id"] in (
                "ticket:2",
                "ticket:3",
            )
            if body["conversation_id"] == "ticket:5":
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": "Invalid"})
            elif first_time:
                failed.append({"Id": entry["Id"], "SenderFault": False, "Code": "InternalError"})
            else:
                self.queued.append(entry)
        return {"Failed": failed}


def test_tickets_are_queued_in_batches_and_what_sqs_did_not_take_is_sent_again() -> None:
    from workers.tickets import send_batches

    tickets = [Ticket(id=str(n), subject=f"Printer {n}") for n in range(1, 13)]
    sqs, naps = FlakyQueue(), list[float]()
    results = send_batches(sqs, "https://queue", tickets, lambda r: None, sleep=naps.append)
    outcomes = {r.ticket: r.outcome for r in results}
    assert outcomes == {str(n): "failed" if n == 5 else "queued" for n in range(1, 13)}
    assert [len(c) for c in sqs.calls] == [10, 2, 2, 2]  # a batch, its retries, the last two
    assert sorted(json.loads(e["MessageBody"])["conversation_id"] for e in sqs.queued) == sorted(
        f"ticket:{n}" for n in range(1, 13) if n != 5
    )
    entry = sqs.queued[0]
    body = json.loads(entry["MessageBody"])
    assert entry["MessageGroupId"] == body["conversation_id"] == "ticket:1"
    assert body["dedupe_key"] == "ticket-import:1" and body["channel"] == "ticket"
    assert len(naps) == 2 and naps[0] < naps[1]  # backoff between the tries
