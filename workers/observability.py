"""Logging (with the redaction hook) and reading traces back. The tracer itself is
:mod:`workers.tracing` (spans recorded in memory, exported into MLflow off the turn's path).
MLflow is imported only by the functions that read it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from workers.core.redaction import Redactor

log = logging.getLogger(__name__)


def offline_mlflow_env() -> None:
    """Keep MLflow off the network: no model price list download (it stalls offline) and no
    usage telemetry. Both can still be turned on explicitly by the user's environment."""
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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
    """Redact the record's message and its exception's message.

    A message with nothing to mask is left as it was logged, and one with something to mask
    keeps its ``args`` (each redacted) when they render the same masked message: formatters
    read the args themselves (uvicorn's access lines unpack five of them), so emptying them
    broke every such line. Any other (a card number as ``%d``, a secret split between two
    args) is rendered now, masked, with no args."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to the logging module to report
        return
    redacted = redactor.text(message)
    if redacted != message:
        args = _redacted_args(record, redactor, redacted)
        if args is None:
            record.msg, record.args = redacted, ()
        else:
            record.msg, record.args = args
    if record.exc_info and record.exc_info[1] is not None:
        error = redactor.error(record.exc_info[1])
        record.exc_info = (type(error), error, record.exc_info[2])
        record.exc_text = None


def _redacted_args(
    record: logging.LogRecord, redactor: Redactor, redacted: str
) -> tuple[Any, tuple[Any, ...] | Mapping[str, Any]] | None:
    """(msg, args) with each redacted, keeping the args' shape, when they render exactly
    the ``redacted`` message; else ``None``. An argument whose text needs masking becomes
    that text, masked (``%d`` of a card number, ``%r`` of a list, a secret split between two
    args: ``None``)."""
    msg = redactor.text(record.msg) if isinstance(record.msg, str) else record.msg
    args: tuple[Any, ...] | Mapping[str, Any]
    if isinstance(record.args, Mapping):
        args = {k: _redacted_arg(v, redactor) for k, v in record.args.items()}
    else:
        args = tuple(_redacted_arg(v, redactor) for v in record.args or ())
    try:
        rendered = str(msg) % args if args else str(msg)
    except (TypeError, ValueError, KeyError):
        return None
    return (msg, args) if rendered == redacted else None


def _redacted_arg(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, int | float | bool | None):  # what %d and %f take, printed as is
        return value
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    masked = redactor.text(text)
    return value if masked == text else masked


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


class _QuietSocketLines(logging.Filter):
    """Drops uvicorn's "connection open" and "connection closed" at INFO: every WebSocket
    already has its access line (``"WebSocket /v1/ws" [accepted]``); at DEBUG they stay."""

    QUIET = frozenset({"connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or record.msg not in self.QUIET


def quiet_socket_lines() -> None:
    """Keep a WebSocket to its access line in the server's terminal (after uvicorn has
    configured its loggers)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietSocketLines) for f in logger.filters):
        logger.addFilter(_QuietSocketLines())


def conversation_filter(conversation_id: str) -> str:
    """The MLflow trace filter for a conversation's turn traces (a quote in the id, which
    the filter language cannot escape, is dropped rather than let end the string)."""
    return "tags.conversation_id = '{}'".format(conversation_id.replace("'", ""))


def list_traces(settings: Any, conversation_id: str, *, limit: int) -> list[list[str]]:
    """Rows (id, start, ms, status, tokens, run, turn) of a conversation's turn traces."""
    offline_mlflow_env()
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = MlflowClient().get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    traces = mlflow.search_traces(
        locations=[experiment.experiment_id],
        filter_string=conversation_filter(conversation_id),
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
