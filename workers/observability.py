"""Tracing (MLflow), logging and cost. MLflow is imported only when tracing is configured.

Embedded runtime: full ``mlflow`` with a SQLite backend under the state directory. Lambda:
``mlflow-tracing`` to a remote tracking URI, flushed before the handler returns.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workers.core.ports import Feedback, NullSpan, OpenSpan, SpanHandle
from workers.core.redaction import Redactor

log = logging.getLogger(__name__)


def offline_mlflow_env() -> None:
    """Keep MLflow off the network: no model price list download (it stalls offline) and no
    usage telemetry. Both can still be turned on explicitly by the user's environment."""
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class _MlflowSpan:
    def __init__(self, span: Any) -> None:
        self.span = span

    def set_outputs(self, outputs: Any) -> None:
        self.span.set_outputs(outputs)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.span.set_attributes(attributes)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.span.record_exception(error)
        self.span.end()


class MlflowTracer:
    """The core's ``Tracer`` port on MLflow: one trace per turn, child spans inside it."""

    def __init__(
        self, tracking_uri: str, experiment: str, *, artifact_dir: Path | None = None
    ) -> None:
        """``artifact_dir``: where a new experiment keeps its artifacts (else MLflow's default,
        ``./mlruns`` under the current directory, which the embedded runtime must not use)."""
        offline_mlflow_env()
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        if artifact_dir is None:
            # Lambda: the mlflow-tracing package has set_experiment, not create_experiment.
            self.experiment_id: str = mlflow.set_experiment(experiment).experiment_id
            return
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_dir.resolve().as_uri()
            self.experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        mlflow.set_experiment(experiment_id=self.experiment_id)

    @contextmanager
    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Iterator[SpanHandle]:
        with self._mlflow.start_span(name=name, span_type="AGENT") as span:
            span.set_inputs(inputs)
            self._mlflow.update_current_trace(tags=tags, session_id=tags.get("conversation_id"))
            yield _MlflowSpan(span)

    @contextmanager
    def span(self, name: str, *, kind: str, inputs: Any = None) -> Iterator[SpanHandle]:
        if self._mlflow.get_current_active_span() is None:
            # Outside a turn (e.g. a retried delivery): no stray one-span trace.
            yield NullSpan()
            return
        with self._mlflow.start_span(name=name, span_type=kind) as span:
            if inputs is not None:
                span.set_inputs(inputs)
            yield _MlflowSpan(span)

    def start_span(
        self, name: str, *, kind: str, inputs: Any = None, parent: OpenSpan | None = None
    ) -> OpenSpan:
        parent_span = (
            parent.span
            if isinstance(parent, _MlflowSpan)
            else self._mlflow.get_current_active_span()
        )
        if parent_span is None:
            return NullSpan()  # outside a turn: no stray one-span trace
        span = self._mlflow.start_span_no_context(
            name, span_type=kind, parent_span=parent_span, inputs=inputs
        )
        return _MlflowSpan(span)

    def forget(self, conversation_id: str) -> int:
        """Delete every trace tagged with the conversation (after exporting pending ones)."""
        self.flush()
        from mlflow import MlflowClient

        client = MlflowClient()
        safe = conversation_id.replace("'", "")
        deleted = 0
        while True:
            found = client.search_traces(
                locations=[self.experiment_id],
                filter_string=f"tags.conversation_id = '{safe}'",
                max_results=100,
                include_spans=False,
            )
            ids = [t.info.trace_id for t in found]
            if not ids:
                return deleted
            deleted += client.delete_traces(self.experiment_id, trace_ids=ids)

    def feedback(self, turn_id: str, feedback: Feedback) -> None:
        """Log the feedback as an assessment on the turn's trace (found by its tag)."""
        self.flush()
        from mlflow.entities import AssessmentSource

        safe = turn_id.replace("'", "")
        found = self._mlflow.search_traces(
            locations=[self.experiment_id],
            filter_string=f"tags.turn_id = '{safe}'",
            max_results=1,
            return_type="list",
            include_spans=False,
        )
        if not found:
            log.warning("no trace for turn %s: feedback not recorded", turn_id)
            return
        self._mlflow.log_feedback(
            trace_id=found[0].info.trace_id,
            name=feedback.name,
            value=feedback.value,
            source=AssessmentSource(source_type="HUMAN", source_id=feedback.source_id),
            rationale=feedback.rationale,
            metadata={"reply_id": feedback.reply_id} if feedback.reply_id else None,
        )

    def flush(self) -> None:
        """Wait for traces exported in the background (before a Lambda handler returns)."""
        flush = getattr(self._mlflow, "flush_trace_async_logging", None)
        if flush is not None:
            flush()


_REDACTOR: list[Redactor] = []
"""The redactor applied to every log record, once :func:`install_redaction` ran."""
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_base_factory = logging.getLogRecordFactory()


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    if _REDACTOR:
        redact_record(record, _REDACTOR[0])
    return record


def redact_record(record: logging.LogRecord, redactor: Redactor) -> None:
    """Render the record's message now, redacted, and redact its exception's message."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to the logging module to report
        return
    record.msg, record.args = redactor.text(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        error = redactor.error(record.exc_info[1])
        record.exc_info = (type(error), error, record.exc_info[2])
        record.exc_text = None


class RedactExtras(logging.Filter):
    """Redacts the ``extra`` fields of a record (Powertools logs them as JSON keys); they
    are set after the record is made, so the record factory cannot see them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _REDACTOR:
            for name, value in list(vars(record).items()):
                if name not in _STANDARD_ATTRIBUTES and isinstance(value, str | dict | list):
                    setattr(record, name, _REDACTOR[0].value(value))
        return True


def install_redaction(redactor: Redactor | None, *loggers: Any) -> None:
    """From now on, every log record of this process has its message and exception
    redacted before any handler sees it (``None``: stop). ``loggers`` (the handlers'
    Powertools logger) also get their ``extra`` fields redacted."""
    _REDACTOR[:] = [] if redactor is None else [redactor]
    if logging.getLogRecordFactory() is not _redacting_factory:
        logging.setLogRecordFactory(_redacting_factory)
    for target in loggers:
        if not any(isinstance(f, RedactExtras) for f in target.filters):
            target.addFilter(RedactExtras())


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def list_traces(settings: Any, conversation_id: str, *, limit: int) -> list[list[str]]:
    """Rows (id, start, ms, status, tokens, run, turn) of a conversation's turn traces."""
    offline_mlflow_env()
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = MlflowClient().get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    safe = conversation_id.replace("'", "")
    traces = mlflow.search_traces(
        locations=[experiment.experiment_id],
        filter_string=f"tags.conversation_id = '{safe}'",
        max_results=limit,
        order_by=["timestamp_ms ASC"],
        return_type="list",
        include_spans=False,
    )
    rows = []
    for trace in traces:
        info = trace.info
        usage = info.token_usage or {}
        rows.append(
            [
                info.trace_id,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.request_time / 1000)),
                str(info.execution_duration or 0),
                str(info.state.value if hasattr(info.state, "value") else info.state),
                f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}",
                info.tags.get("run_id", ""),
                info.tags.get("turn_id", ""),
            ]
        )
    return rows
