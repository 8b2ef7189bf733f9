"""``SpanRecorder``: the core's ``Tracer`` port at the cost of a few dicts per span.

A turn's spans are plain records built in the turn's thread: names, kinds, ``time_ns``
stamps, inputs, outputs, attributes. When the turn's root span ends, the whole trace goes
to a :class:`TraceSink` as one JSON-ready record, and the sink exports it off the turn's
path (the embedded runtime: a spool file that a separate exporter process writes into
MLflow; Lambda: an in-memory buffer flushed before the handler returns). Nothing here
imports MLflow.

The trace id derives from the turn id (:func:`trace_id_of`), so whoever knows a reply's
turn (feedback, evals) knows its trace without searching. A trace holds at most
``max_spans`` spans; the ones past the bound are counted on the root span, never recorded
(a runaway tool loop cannot build a trace the MLflow UI cannot open).

Erasing a conversation (``forget``) drops the traces of its turns still running (they
started before the erasure and end after it) and hands the erasure to the sink, which
deletes what was exported and what waits to be.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from workers.core.ports import Feedback, NullSpan, OpenSpan, SpanHandle

log = logging.getLogger(__name__)

MAX_SPANS = 256
"""Spans per trace by default (``AGENTWORKER_TRACE_MAX_SPANS``)."""
TAG_PREFIX = "mlflow.traceTag."
"""A root-span attribute named so becomes a tag of the trace (MLflow's own convention)."""
DROPPED = "agentworker.spans_dropped"
ERASURES_KEPT = 10_000
"""Erasures a recorder remembers, to drop the traces of turns that ran on past them."""


def trace_id_of(turn_id: str) -> str:
    """The MLflow trace id of the turn ``turn_id``'s trace."""
    return "tr-" + hashlib.sha256(turn_id.encode()).hexdigest()[:32]


class TraceSink(Protocol):
    """Where finished traces (and feedback) go; ``put`` must not block on the export."""

    def put(self, record: dict[str, Any]) -> None: ...

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was put is exported (True) or ``timeout`` passes (False)."""

    def close(self) -> None:
        """Export what is left, then stop."""

    def forget(self, conversation_id: str, before: int) -> int | None:
        """Delete the conversation's traces that started before ``before`` (ns since the
        epoch): exported ones and ones put but not exported yet. How many were deleted from
        the tracking store, or ``None`` when that could not be done now (the sink says
        whether it is done later)."""


class _Trace:
    """The spans of one turn while it runs."""

    def __init__(self, trace_id: str, tags: dict[str, str], max_spans: int) -> None:
        self.trace_id = trace_id
        self.tags = tags
        self.max_spans = max_spans
        self.spans: list[RecordedSpan] = []
        self.dropped = 0
        self.lock = threading.Lock()

    def admit(self, span: RecordedSpan) -> bool:
        with self.lock:
            if len(self.spans) >= self.max_spans:
                self.dropped += 1
                return False
            self.spans.append(span)
            return True


class RecordedSpan:
    """One span: a handful of fields, set in place."""

    __slots__ = (
        "trace",
        "span_id",
        "parent_id",
        "name",
        "kind",
        "start",
        "end_ns",
        "inputs",
        "outputs",
        "attributes",
        "error",
    )

    def __init__(
        self, trace: _Trace, parent_id: str | None, name: str, kind: str, inputs: Any
    ) -> None:
        self.trace = trace
        self.span_id = f"{random.getrandbits(64):016x}"
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start = time.time_ns()
        self.end_ns: int | None = None
        self.inputs = inputs
        self.outputs: Any = None
        self.attributes: dict[str, Any] = {}
        self.error: dict[str, str] | None = None

    def set_outputs(self, outputs: Any) -> None:
        self.outputs = outputs

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.attributes.update(attributes)

    def end(self, error: BaseException | None = None) -> None:
        if self.end_ns is not None:
            return
        if error is not None:
            self.error = {
                "type": type(error).__name__,
                "message": str(error),
                "stacktrace": "".join(traceback.format_exception(error)),
            }
        self.end_ns = time.time_ns()

    def record(self, closing: int) -> dict[str, Any]:
        """The span as plain data (an unfinished span ends at ``closing``)."""
        attributes = self.attributes
        if self.end_ns is None:
            attributes = {**attributes, "agentworker.unfinished": True}
        return {
            "id": self.span_id,
            "parent": self.parent_id,
            "name": self.name,
            "kind": self.kind,
            "start": self.start,
            "end": self.end_ns if self.end_ns is not None else closing,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "attributes": attributes,
            "error": self.error,
        }


_CURRENT: ContextVar[RecordedSpan | None] = ContextVar("agentworker_span", default=None)


@contextmanager
def _entered(span: RecordedSpan) -> Iterator[None]:
    """``span`` is the current span inside the block, and ends with it (failed, with the
    exception that left the block)."""
    token = _CURRENT.set(span)
    try:
        yield
    except BaseException as exc:
        span.end(exc)
        raise
    finally:
        _CURRENT.reset(token)
        span.end()


class SpanRecorder:
    """The ``Tracer`` port: records spans in memory and hands each finished trace to
    ``sink``. Thread-safe: a fan-out's model and tool calls record into the same trace."""

    def __init__(self, sink: TraceSink, *, max_spans: int = MAX_SPANS) -> None:
        self.sink = sink
        self.max_spans = max_spans
        self._erased: OrderedDict[str, int] = OrderedDict()
        """Conversation id -> when it was erased (ns), the latest ``ERASURES_KEPT``."""
        self._erased_lock = threading.Lock()

    @contextmanager
    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Iterator[SpanHandle]:
        turn_id = tags.get("turn_id")
        trace_id = trace_id_of(turn_id) if turn_id else f"tr-{random.getrandbits(128):032x}"
        trace = _Trace(trace_id, dict(tags), self.max_spans)
        root = RecordedSpan(trace, None, name, "AGENT", inputs)
        trace.spans.append(root)
        try:
            with _entered(root):
                yield root
        finally:
            self._emit(trace, root)

    def _emit(self, trace: _Trace, root: RecordedSpan) -> None:
        cid = trace.tags.get("conversation_id")
        with self._erased_lock:
            erased = self._erased.get(cid) if cid is not None else None
        if erased is not None and root.start <= erased:
            log.debug("trace %s dropped: its conversation was erased meanwhile", trace.trace_id)
            return
        closing = root.end_ns or time.time_ns()
        with trace.lock:
            spans = [span.record(closing) for span in trace.spans]
            dropped = trace.dropped
        if dropped:
            spans[0]["attributes"] = {**spans[0]["attributes"], DROPPED: dropped}
            log.warning(
                "trace %s: %d spans past the bound of %d were not recorded",
                trace.trace_id,
                dropped,
                trace.max_spans,
            )
        self.sink.put(
            {"kind": "trace", "trace_id": trace.trace_id, "tags": trace.tags, "spans": spans}
        )

    @contextmanager
    def span(self, name: str, *, kind: str, inputs: Any = None) -> Iterator[SpanHandle]:
        parent = _CURRENT.get()
        if parent is None:
            # Outside a turn (e.g. a retried delivery): no stray one-span trace.
            yield NullSpan()
            return
        span = RecordedSpan(parent.trace, parent.span_id, name, kind, inputs)
        if not parent.trace.admit(span):
            yield NullSpan()
            return
        with _entered(span):
            yield span

    def start_span(
        self, name: str, *, kind: str, inputs: Any = None, parent: OpenSpan | None = None
    ) -> OpenSpan:
        owner = parent if isinstance(parent, RecordedSpan) else _CURRENT.get()
        if owner is None:
            return NullSpan()  # outside a turn: no stray one-span trace
        span = RecordedSpan(owner.trace, owner.span_id, name, kind, inputs)
        return span if owner.trace.admit(span) else NullSpan()

    def forget(self, conversation_id: str) -> int | None:
        """Delete the conversation's traces: the ones of turns still running are dropped
        when they end, the others deleted by the sink (``None``: not done yet)."""
        before = time.time_ns()
        with self._erased_lock:
            self._erased[conversation_id] = before
            self._erased.move_to_end(conversation_id)
            while len(self._erased) > ERASURES_KEPT:
                self._erased.popitem(last=False)
        return self.sink.forget(conversation_id, before)

    def feedback(self, turn_id: str, feedback: Feedback) -> None:
        self.sink.put(
            {
                "kind": "feedback",
                "time": time.time_ns(),
                "conversation_id": feedback.conversation_id,
                "trace_id": trace_id_of(turn_id),
                "name": feedback.name,
                "value": feedback.value,
                "source_id": feedback.source_id,
                "rationale": feedback.rationale,
                "reply_id": feedback.reply_id,
                "withdrawn": feedback.withdrawn,
            }
        )

    def flush(self, timeout: float | None = None) -> bool:
        return self.sink.flush(timeout)

    def close(self) -> None:
        self.sink.close()
