"""Recorded traces into MLflow: many traces per ``log_spans`` call, off the turn's path.

A record (see :mod:`workers.tracing.recorder`) becomes MLflow span entities: ids in OTel's
encoding, inputs and outputs as ``mlflow.spanInputs``/``mlflow.spanOutputs``, every other
attribute JSON-encoded as MLflow stores it, the trace's tags as root attributes
``mlflow.traceTag.<key>`` and the conversation as ``session.id``. MLflow's tracking store
(SQL or a tracking server, 3.4+) builds the trace from the spans: its state, previews,
token usage, cost, session and tags.

Imported only by the exporter process and on Lambda (``mlflow-tracing`` is enough).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from workers.core.redaction import Redactor, redact_record, url_without_credentials
from workers.observability import conversation_filter
from workers.tracing.recorder import TAG_PREFIX

log = logging.getLogger(__name__)

BATCH_SPANS = 4000
"""Spans per ``log_spans`` call at most (a batch is one transaction of the SQL store)."""
_TRANSIENT = re.compile(
    r"connection|timed out|timeout|max retries|database is locked|temporarily|unavailable"
    r"|\b(?:429|502|503)\b"
)
"""What an unreachable or busy store says. The status codes as whole numbers: a message
that quotes a trace id (hex, ``...a503f...``) is not a 503 to retry forever."""


class StoreUnavailable(Exception):
    """The tracking store cannot be reached now: keep the traces and try again later."""


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=str)


def dump(value: Any) -> str:
    return json.dumps(value, default=_jsonable, ensure_ascii=False)


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def span_dicts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's spans in the dict form ``mlflow.entities.Span.from_dict`` reads."""
    trace_id = str(record["trace_id"])
    otel_trace = _b64(trace_id.removeprefix("tr-"))
    request_id = dump(trace_id)
    tags: dict[str, str] = record.get("tags") or {}
    out = []
    for span in record["spans"]:
        attributes = {"mlflow.traceRequestId": request_id, "mlflow.spanType": dump(span["kind"])}
        if span.get("inputs") is not None:
            attributes["mlflow.spanInputs"] = dump(span["inputs"])
        if span.get("outputs") is not None:
            attributes["mlflow.spanOutputs"] = dump(span["outputs"])
        for key, value in (span.get("attributes") or {}).items():
            attributes[key] = dump(value)
        if span.get("parent") is None:
            for key, value in tags.items():
                attributes[TAG_PREFIX + key] = dump(value)
            if "conversation_id" in tags:
                attributes["session.id"] = dump(tags["conversation_id"])
        error = span.get("error")
        events = []
        if error:
            events.append(
                {
                    "name": "exception",
                    "time_unix_nano": span["end"],
                    "attributes": {
                        "exception.type": error.get("type", ""),
                        "exception.message": error.get("message", ""),
                        "exception.stacktrace": error.get("stacktrace", ""),
                    },
                }
            )
        out.append(
            {
                "trace_id": otel_trace,
                "span_id": _b64(span["id"]),
                "parent_span_id": _b64(span["parent"]) if span.get("parent") else None,
                "name": span["name"],
                "start_time_unix_nano": span["start"],
                "end_time_unix_nano": span["end"],
                "events": events,
                "status": {
                    "code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK",
                    "message": (error or {}).get("message", ""),
                },
                "attributes": attributes,
            }
        )
    return out


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is unreachable or busy (rather than the data bad)."""
    if isinstance(exc, ConnectionError | TimeoutError | StoreUnavailable):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return _TRANSIENT.search(text) is not None


def offline_http_env() -> None:
    """A tracking server that is down costs a few seconds, not MLflow's default minutes of
    retries (both stay overridable by the user's environment)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")


class MlflowExport:
    """Writes recorded traces, feedback and deletions to one MLflow experiment."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        artifact_dir: Path | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """``artifact_dir``: where a new experiment keeps its artifacts (else MLflow's
        default, ``./mlruns``, which the embedded runtime must not use). ``redactor``: the
        redaction hook, applied to every record before MLflow sees it (the turn records
        its spans as they are: redacting them there would cost the turn its time)."""
        self.redactor = redactor
        from workers.observability import offline_mlflow_env

        offline_mlflow_env()
        offline_http_env()
        import mlflow
        from mlflow.tracing.client import TracingClient

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        try:
            self.experiment_id = _experiment(mlflow, experiment, artifact_dir)
        except Exception as exc:
            if transient(exc):
                raise StoreUnavailable(f"{url_without_credentials(tracking_uri)}: {exc}") from exc
            raise
        self._client = TracingClient(tracking_uri)
        self.dropped = 0
        """Records given up on (bad data, or a trace that is not there for feedback)."""

    def traces(self, records: Sequence[dict[str, Any]]) -> int:
        """Log the traces in batches; a trace whose data MLflow rejects is dropped and
        counted. ``StoreUnavailable`` when the store cannot be reached (nothing is lost:
        the caller keeps the records and tries again)."""
        logged = 0
        for batch in _batches(records):
            try:
                self._log(batch)
                logged += len(batch)
            except StoreUnavailable:
                raise
            except Exception as exc:
                log.debug("a batch of %d traces failed (%s); one by one", len(batch), exc)
                logged += self._one_by_one(batch)
        return logged

    def _one_by_one(self, batch: Sequence[dict[str, Any]]) -> int:
        logged = 0
        for record in batch:
            try:
                self._log([record])
                logged += 1
            except StoreUnavailable:
                raise
            except Exception as exc:
                self.dropped += 1
                log.warning("trace %s dropped, MLflow refused it: %s", record.get("trace_id"), exc)
        return logged

    def _redacted(self, record: dict[str, Any]) -> dict[str, Any]:
        return record if self.redactor is None else redact_record(record, self.redactor)

    def _log(self, records: Sequence[dict[str, Any]]) -> None:
        from mlflow.entities import Span

        spans = [
            Span.from_dict(d) for record in records for d in span_dicts(self._redacted(record))
        ]
        try:
            self._client.log_spans(self.experiment_id, spans)
        except Exception as exc:
            if transient(exc):
                raise StoreUnavailable(str(exc)) from exc
            raise

    def feedback(self, record: dict[str, Any]) -> bool:
        """Log a user's feedback on its trace (False: no such trace, dropped and counted);
        a withdrawn one deletes the matching assessments instead."""
        from mlflow.entities import AssessmentSource

        if record.get("withdrawn"):
            return self._withdraw(record)
        record = self._redacted(record)
        metadata = {"reply_id": record["reply_id"]} if record.get("reply_id") else None
        try:
            self._mlflow.log_feedback(
                trace_id=record["trace_id"],
                name=record["name"],
                value=record["value"],
                source=AssessmentSource(source_type="HUMAN", source_id=record["source_id"]),
                rationale=record.get("rationale"),
                metadata=metadata,
            )
        except Exception as exc:
            if transient(exc):
                raise StoreUnavailable(str(exc)) from exc
            self.dropped += 1
            log.warning("feedback on %s dropped: %s", record.get("trace_id"), exc)
            return False
        return True

    def _withdraw(self, record: dict[str, Any]) -> bool:
        """Delete the assessments a withdrawn rating takes back: the trace's of the same
        name, value and source, on the same reply."""
        trace_id = record["trace_id"]
        try:
            trace = self._mlflow.get_trace(trace_id)
            found = [] if trace is None else list(trace.info.assessments or [])
            for assessment in found:
                source = assessment.source
                metadata = assessment.metadata or {}
                value = getattr(assessment, "value", None)
                if (
                    assessment.name == record["name"]
                    and value == record["value"]
                    and source is not None
                    and source.source_id == record["source_id"]
                    and metadata.get("reply_id") == record.get("reply_id")
                ):
                    self._mlflow.delete_assessment(trace_id, assessment.assessment_id)
        except Exception as exc:
            if transient(exc):
                raise StoreUnavailable(str(exc)) from exc
            self.dropped += 1
            log.warning("withdrawn feedback on %s dropped: %s", trace_id, exc)
            return False
        return True

    def forget(self, conversation_id: str, before: int | None = None) -> int:
        """Delete every trace tagged with the conversation (that started before ``before``,
        ns since the epoch: a conversation created again under the id keeps its new ones);
        how many. ``StoreUnavailable`` when the store cannot be reached."""
        from mlflow import MlflowClient

        where = conversation_filter(conversation_id)
        if before is not None:
            where += f" AND timestamp_ms <= {before // 1_000_000}"
        try:
            client = MlflowClient(self.tracking_uri)
            deleted = 0
            while True:
                found = client.search_traces(
                    locations=[self.experiment_id],
                    filter_string=where,
                    max_results=100,
                    include_spans=False,
                )
                ids = [t.info.trace_id for t in found]
                if not ids:
                    return deleted
                deleted += client.delete_traces(self.experiment_id, trace_ids=ids)
        except Exception as exc:
            if transient(exc):
                raise StoreUnavailable(f"{self.tracking_uri}: {exc}") from exc
            raise


def _experiment(mlflow: Any, name: str, artifact_dir: Path | None) -> str:
    if artifact_dir is None:
        # Lambda: the mlflow-tracing package has set_experiment, not create_experiment.
        return str(mlflow.set_experiment(name).experiment_id)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(
            mlflow.create_experiment(name, artifact_location=artifact_dir.resolve().as_uri())
        )
    except Exception:
        # Another process created it meanwhile.
        again = mlflow.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def _batches(records: Iterable[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        n = len(record.get("spans") or ())
        if batch and size + n > BATCH_SPANS:
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += n
    if batch:
        yield batch
