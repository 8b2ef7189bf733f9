"""``python -m reliability.crashing_server PLAN.json serve ...``: ``agentworker serve`` whose
SQLite store kills its own process with SIGKILL right after a write the plan names.

Next to the plan it appends, one JSON line each, the faults that fired (so the restarted
server skips them), every commit (conversation, token, checkpoint digests: the fork check)
and every payload its sink sent (the duplicate-delivery check). Appends are single
``write`` calls on ``O_APPEND`` descriptors: a SIGKILL right after loses none of them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from events.outbound import OutboxPayload
from reliability.probe import Commit, Fault, FaultBook, Ledger, StoreProbe

FIRED = "fired.jsonl"
COMMITS = "commits.jsonl"
DELIVERIES = "deliveries.jsonl"
WRITES = "writes.jsonl"
SINK = "hub"
SCHEDULE_ADD = "schedule.add"
SCHEDULE_FIRED = "schedule.fired"
"""The schedules' writes, as the ledger names them."""
WEBHOOK_ADD = "webhook.add"
WEBHOOK_SENT = "webhook.sent"
WEBHOOK_DELIVERED = "webhook.delivered"
"""The webhook queue's writes: a delivery queued (by the reply sink), one marked sent; and
the moment between (the receiver answered 2xx, the mark not written yet)."""


def append_line(path: Path, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_plan(path: Path) -> list[Fault]:
    return [Fault(**f) for f in json.loads(path.read_text())]


def write_plan(path: Path, faults: Sequence[Fault]) -> None:
    path.write_text(json.dumps([asdict(f) for f in faults]))


class FileLedger(Ledger):
    """A ledger that lives in files, so it outlasts a SIGKILL."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def commit(self, record: Commit) -> None:
        append_line(self.directory / COMMITS, asdict(record))

    def wrote(self, conversation_id: str, method: str, token: int | None = None) -> None:
        record = {"conversation_id": conversation_id, "method": method, "token": token}
        append_line(self.directory / WRITES, record)

    def deliver(self, sink: str, payload: OutboxPayload) -> None:
        append_line(self.directory / DELIVERIES, {"sink": sink, **payload.model_dump(mode="json")})


def main(argv: Sequence[str]) -> int:
    plan_path = Path(argv[0])
    directory = plan_path.parent
    fired = {json.dumps(r, sort_keys=True) for r in read_lines(directory / FIRED)}
    faults = [f for f in read_plan(plan_path) if json.dumps(asdict(f), sort_keys=True) not in fired]
    ledger = FileLedger(directory)

    def die(fault: Fault) -> None:
        append_line(directory / FIRED, asdict(fault))
        os.kill(os.getpid(), signal.SIGKILL)

    from workers.adapters.local import hub, sqlite_store

    real_store = sqlite_store.SqliteConversationStore
    real_send = hub.LocalReplySink.send

    book = FaultBook(faults)

    def probed_store(path: Path) -> Any:
        return StoreProbe(real_store(path), ledger, book, stop=die)

    def recorded_send(self: hub.LocalReplySink, payload: OutboxPayload) -> None:
        real_send(self, payload)
        ledger.deliver(SINK, payload)

    from workers.adapters.local import sqlite_schedules
    from workers.core.model import Schedule

    def after(conversation_id: str, method: str) -> None:
        ledger.wrote(conversation_id, method)
        fault = book.count(conversation_id, method)
        if fault is not None:
            die(fault)

    class ProbedScheduler(sqlite_schedules.SqliteScheduler):
        """The schedules' writes count as the store's do: a fault may follow each."""

        def add(self, schedule: Schedule, *, limit: int) -> Schedule:
            kept = super().add(schedule, limit=limit)
            after(schedule.conversation_id, SCHEDULE_ADD)
            return kept

        def fired(
            self, schedule: Schedule, *, next_fire: float | None, outcome: str, now: float
        ) -> None:
            super().fired(schedule, next_fire=next_fire, outcome=outcome, now=now)
            after(schedule.conversation_id, SCHEDULE_FIRED)

    from workers.adapters.local import webhooks

    class ProbedWebhookQueue(webhooks.WebhookQueue):
        """The webhook queue's writes count too (by the delivery's conversation)."""

        def add(
            self, subscription: str, webhook_id: str, conversation_id: str, event: str, body: bytes
        ) -> bool:
            added = super().add(subscription, webhook_id, conversation_id, event, body)
            if added:
                after(conversation_id, WEBHOOK_ADD)
            return added

        def delivered(self, delivery_id: int) -> None:
            with self._lock:
                row = self._conn.execute(
                    "SELECT conversation_id FROM deliveries WHERE id = ?", (delivery_id,)
                ).fetchone()
            after(str(row[0]), WEBHOOK_SENT)  # the receiver took it; not marked yet
            super().delivered(delivery_id)
            after(str(row[0]), WEBHOOK_DELIVERED)

    # bootstrap imports the store class when it builds the runtime: it gets the probe
    sqlite_store.SqliteConversationStore = probed_store  # type: ignore[misc, assignment]
    sqlite_schedules.SqliteScheduler = ProbedScheduler  # type: ignore[misc]
    webhooks.WebhookQueue = ProbedWebhookQueue  # type: ignore[misc]
    hub.LocalReplySink.send = recorded_send  # type: ignore[method-assign]
    from workers.cli import main as cli

    return cli(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
