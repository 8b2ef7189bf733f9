"""Lambda's trace sink: traces kept in memory and exported before the handler returns.

A Lambda process may be frozen or ended as soon as the handler returns, so nothing can be
left to a background thread: the handler calls ``flush`` last, after the reply went out, and
its time is the one cost of tracing there (the ``TraceFlushMs`` metric). A tracking server that is
down does not fail the handler: the traces stay in memory for the next invocation of the
same process, up to ``max_records``; older ones are dropped past it, counted, with a warning.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from workers.tracing.mlflow_export import MlflowExport, StoreUnavailable
from workers.tracing.tombstones import erased_record

log = logging.getLogger(__name__)


class DirectSink:
    def __init__(self, connect: Callable[[], MlflowExport], *, max_records: int = 1000) -> None:
        self._connect = connect
        self._export: MlflowExport | None = None
        self.max_records = max_records
        self.buffer: deque[dict[str, Any]] = deque()
        self.dropped = 0

    def put(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        while len(self.buffer) > self.max_records:
            self.buffer.popleft()
            self.dropped += 1
            log.warning(
                "trace buffer full (%d records; is the tracking server down?): %d dropped",
                self.max_records,
                self.dropped,
            )

    def store(self) -> MlflowExport:
        if self._export is None:
            self._export = self._connect()
        return self._export

    def flush(self, timeout: float | None = None) -> bool:
        """Export what is buffered; False (and the records kept) if the store is down."""
        if not self.buffer:
            return True
        pending = list(self.buffer)
        try:
            export = self.store()
            traces = [r for r in pending if r.get("kind") == "trace"]
            export.traces(traces)
            for record in pending:
                if record.get("kind") == "feedback":
                    export.feedback(record)
        except StoreUnavailable as exc:
            log.warning("tracking server unavailable, %d trace(s) kept: %s", len(pending), exc)
            return False
        for _ in pending:
            self.buffer.popleft()
        return True

    def forget(self, conversation_id: str, before: int) -> int | None:
        """Drop the conversation's buffered traces and delete its exported ones; ``None``
        (and a warning) when the tracking server cannot be reached: the caller says so and
        tries again later (what other processes buffer is theirs to export)."""
        kept = [r for r in self.buffer if not erased_record(r, {conversation_id: before})]
        self.buffer = deque(kept)
        try:
            return self.store().forget(conversation_id, before)
        except StoreUnavailable as exc:
            log.warning("traces of %s not deleted (tracking server down): %s", conversation_id, exc)
            return None

    def close(self) -> None:
        self.flush()
