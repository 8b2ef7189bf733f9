"""``kill -9`` of the embedded server right after each store write of the turn contract.

Each fault gets a conversation of its own, driven over HTTP like a client would: send each
batch (resending with the same dedupe key when the server died under the request), wait for
the answers, restart the server whenever it is gone. One conversation is in flight at a time,
so the kill lands exactly after the chosen write and nowhere else. The server records its
commits and sink deliveries in files (``reliability.crashing_server``); the invariants are
checked on those and on the store once the last server stopped cleanly.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from reliability.crashing_server import (
    COMMITS,
    DELIVERIES,
    FIRED,
    SINK,
    WRITES,
    read_lines,
    write_plan,
)
from reliability.plan import WORKLOAD, Result, fault_points
from reliability.probe import PAYLOAD, Commit, Fault, Findings, Ledger, check
from tests.functional.server_process import ServerProcess


class Supervisor:
    """Keeps one crashing server up: restarts it (same state, same port) when it died."""

    def __init__(self, state_dir: Path, plan: Path) -> None:
        self.server = ServerProcess(
            state_dir,
            command=["-m", "reliability.crashing_server", str(plan)],
            env={"AGENTWORKER_SWEEP_INTERVAL_SECONDS": "0.2"},
        )
        self.starts = 0

    def up(self) -> ServerProcess:
        for attempt in range(10):
            proc = self.server.proc
            if proc is not None and proc.poll() is None:
                return self.server
            self.server.proc = None
            self.starts += 1
            try:
                self.server.start()
            except RuntimeError:  # a fault killed it in its start's recovery: start again
                if attempt == 9:
                    raise
        return self.server

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request that survives the server's death: retried on the restarted server."""
        deadline = time.monotonic() + 60
        while True:
            srv = self.up()
            try:
                return httpx.request(
                    method, f"{srv.url}{path}", headers=srv.auth, timeout=10, **kwargs
                )
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def converse(sup: Supervisor, cid: str, ledger: Ledger, workload: Sequence[Sequence[str]]) -> None:
    for batch_no, batch in enumerate(workload):
        ids = []
        for n, text in enumerate(batch):
            body = {"text": text, "dedupe_key": f"{cid}:{batch_no}:{n}"}
            resp = sup.call("POST", f"/v1/conversations/{cid}/messages", json=body)
            if resp.status_code != 202:
                raise AssertionError(f"{cid}: {resp.status_code} {resp.text}")
            ids.append(resp.json()["message_id"])
            ledger.accept(cid, ids[-1])
        wait_answered(sup, cid, ids)


def wait_answered(sup: Supervisor, cid: str, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = sup.call("GET", f"/v1/conversations/{cid}").json()
        answered = {m for r in view.get("replies", []) for m in r["payload"]["in_reply_to"]}
        if set(ids) <= answered:
            return
        time.sleep(0.05)
    raise AssertionError(f"{cid}: {ids} unanswered after {timeout}s")


@contextmanager
def crashing(prefix: str) -> Iterator[tuple[Path, Path, Supervisor]]:
    """A kill -9 case's folder (removed after), its fault plan (empty so far) and the
    supervisor of its crashing server."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        plan = root / "plan.json"
        write_plan(plan, [])
        yield root, plan, Supervisor(root / "state", plan)


def run(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> Result:
    """A clean conversation to learn the writes the server makes, then one conversation per
    fault point (:func:`~reliability.inprocess.fault_points`), then, for writes only a
    restart makes (the sweeper's lease takeover), a conversation that dies twice."""
    result = Result(runtime="embedded server, kill -9")
    started = time.perf_counter()
    with crashing("agentworker-kill9-") as (root, plan, sup):
        ledger = Ledger()
        planned: list[Fault] = []
        try:
            converse(sup, "ws:kill-clean", ledger, WORKLOAD)
            clean = writes_of(root, "ws:kill-clean")
            result.written = set(clean)
            for stage in ("single", "after a restart"):
                faults = _plan(root, clean, planned, every=every, second=stage != "single")
                planned += faults
                write_plan(plan, planned)
                sup.server.stop()  # the next start reads the new plan
                for i, fault in enumerate(faults):
                    converse(sup, fault.conversation_id, ledger, WORKLOAD)
                    progress(f"{stage}: {i + 1}/{len(faults)} {fault.label}")
        finally:
            sup.server.stop()
        settle(root, ledger, planned, result, starts=sup.starts)
    result.seconds = time.perf_counter() - started
    return result


def settle(
    root: Path,
    ledger: Ledger,
    planned: Sequence[Fault],
    result: Result,
    *,
    starts: int,
    extra: Findings | None = None,
) -> None:
    """Once the last server stopped cleanly: the invariants over what the servers' files
    recorded (writes, commits, sink deliveries) and the store's final state, with
    ``extra`` findings of the case's own (its messages are the ledger's already), the
    faults that fired and the restarts, into ``result``."""
    from workers.adapters.local.sqlite_store import SqliteConversationStore

    fired = [Fault(**r) for r in read_lines(root / FIRED)]
    for record in read_lines(root / WRITES):
        ledger.wrote(record["conversation_id"], record["method"], record["token"])
    for record in read_lines(root / COMMITS):
        ledger.commit(Commit(**record))
    for record in read_lines(root / DELIVERIES):
        ledger.deliver(record.pop("sink"), PAYLOAD.validate_python(record))
    store = SqliteConversationStore(root / "state" / "agentworker.db")
    try:
        found = check(ledger, store.get_conversation, sinks=[SINK])
    finally:
        store.close()
    if extra is not None:
        found.add(extra)
        found.messages -= extra.messages
    found.unfired(planned, fired)
    result.findings = found
    result.count(fired)
    result.restarts = starts - 1


def writes_of(root: Path, conversation_id: str) -> dict[str, int]:
    counts: Counter[str] = Counter(
        r["method"] for r in read_lines(root / WRITES) if r["conversation_id"] == conversation_id
    )
    return dict(counts)


def _plan(
    root: Path, clean: dict[str, int], planned: list[Fault], *, every: bool, second: bool
) -> list[Fault]:
    """Faults after the clean conversation's writes, each in a conversation of its own; or
    (``second``) a second death right after each write that only the restarts made."""
    if not second:
        points = fault_points(clean, "", every=every, kind="kill -9")
        return [replace(f, conversation_id=f"ws:kill-{i}") for i, f in enumerate(points)]
    faults: list[Fault] = []
    for first in planned:
        seen = writes_of(root, first.conversation_id)
        for method in sorted(set(seen) - set(clean) - {f.method for f in faults}):
            cid = f"ws:kill-twice-{len(faults)}"
            faults += [replace(first, conversation_id=cid), Fault(method, 1, cid, "kill -9")]
    return faults
