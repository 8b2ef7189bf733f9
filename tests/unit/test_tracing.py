"""The span recorder, the record -> MLflow span mapping, the spool writer's bound and
Lambda's in-memory sink, without MLflow or a process."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import ListSink
from workers.core.ports import Feedback, NullSpan
from workers.tracing.direct import DirectSink
from workers.tracing.exporter import read_records
from workers.tracing.mlflow_export import StoreUnavailable, span_dicts, transient
from workers.tracing.recorder import DROPPED, SpanRecorder, trace_id_of
from workers.tracing.spool import CLOSED, OPEN, SpoolSink, segments


def turn_tags(turn: str = "t-1") -> dict[str, str]:
    return {"conversation_id": "c-1", "run_id": "r-1", "turn_id": turn}


def test_a_turn_is_one_record_with_its_spans_nested_as_they_ran() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink)
    with tracer.turn("turn", tags=turn_tags(), inputs={"texts": ["hi"]}) as root:
        with tracer.span("store.commit", kind="UNKNOWN") as commit:
            commit.set_attributes({"rows": 2})
        model = tracer.start_span("model", kind="CHAT_MODEL", inputs={"messages": []})
        tool = tracer.start_span("tool.x", kind="TOOL", inputs={"a": 1}, parent=model)
        tool.set_outputs({"result": "ok"})
        tool.end()
        model.end()
        root.set_outputs({"text": "hello"})
    [record] = sink.records
    assert record["kind"] == "trace" and record["trace_id"] == trace_id_of("t-1")
    assert record["tags"] == turn_tags()
    by_name = {s["name"]: s for s in record["spans"]}
    root_id = by_name["turn"]["id"]
    assert by_name["turn"]["parent"] is None and by_name["turn"]["kind"] == "AGENT"
    assert by_name["store.commit"]["parent"] == root_id
    assert by_name["store.commit"]["attributes"] == {"rows": 2}
    assert by_name["model"]["parent"] == root_id
    assert by_name["tool.x"]["parent"] == by_name["model"]["id"]
    assert by_name["tool.x"]["outputs"] == {"result": "ok"}
    assert by_name["turn"]["outputs"] == {"text": "hello"}
    assert all(s["start"] <= s["end"] for s in record["spans"])
    json.dumps(record)  # plain data all the way down


def test_the_trace_id_is_mlflows_shape_and_a_function_of_the_turn() -> None:
    assert trace_id_of("t-1") == trace_id_of("t-1") != trace_id_of("t-2")
    assert trace_id_of("t-1").startswith("tr-") and len(trace_id_of("t-1")) == 35
    int(trace_id_of("t-1")[3:], 16)


def test_outside_a_turn_nothing_is_recorded() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink)
    with tracer.span("deliver", kind="UNKNOWN") as span:
        assert isinstance(span, NullSpan)
    assert isinstance(tracer.start_span("model", kind="CHAT_MODEL"), NullSpan)
    assert sink.records == []


def test_a_runaway_loop_cannot_grow_a_trace_past_the_bound() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink, max_spans=10)
    with tracer.turn("turn", tags=turn_tags(), inputs=None):
        for i in range(100):
            with tracer.span(f"tool.{i}", kind="TOOL"):
                pass
            tracer.start_span("model", kind="CHAT_MODEL").end()
    [record] = sink.records
    assert len(record["spans"]) == 10
    assert record["spans"][0]["attributes"][DROPPED] == 201 - 10  # root + 200 spans, 10 kept


def test_an_error_is_recorded_on_the_span_and_the_root() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink)
    with (
        pytest.raises(ValueError),
        tracer.turn("turn", tags=turn_tags(), inputs=None),
        tracer.span("tool.x", kind="TOOL"),
    ):
        raise ValueError("bad argument")
    spans = sink.records[0]["spans"]
    assert [s["error"]["type"] for s in spans] == ["ValueError", "ValueError"]
    assert "bad argument" in spans[1]["error"]["stacktrace"]


def test_a_span_left_open_by_a_thread_ends_with_the_turn_and_says_so() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink)
    with tracer.turn("turn", tags=turn_tags(), inputs=None):
        tracer.start_span("model", kind="CHAT_MODEL")
    root, model = sink.records[0]["spans"]
    assert model["attributes"]["agentworker.unfinished"] is True
    assert model["end"] == root["end"]


def test_spans_of_parallel_threads_land_in_the_same_trace() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink)
    with tracer.turn("turn", tags=turn_tags(), inputs=None):
        parent = tracer.start_span("fan-out", kind="CHAIN")

        def call(i: int) -> None:
            tracer.start_span(f"tool.{i}", kind="TOOL", parent=parent).end()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        parent.end()
    spans = sink.records[0]["spans"]
    assert len(spans) == 10
    assert {s["parent"] for s in spans if s["name"].startswith("tool.")} == {spans[1]["id"]}


def test_feedback_goes_to_the_trace_of_the_turn() -> None:
    sink = ListSink()
    rating = Feedback("user_feedback", -1, "alice", "wrong", "r-1", conversation_id="c-1")
    SpanRecorder(sink).feedback("t-9", rating)
    [record] = sink.records
    assert isinstance(record.pop("time"), int)  # when it was given: an erasure drops it
    assert sink.records == [
        {
            "kind": "feedback",
            "conversation_id": "c-1",
            "trace_id": trace_id_of("t-9"),
            "name": "user_feedback",
            "value": -1,
            "source_id": "alice",
            "rationale": "wrong",
            "reply_id": "r-1",
            "withdrawn": False,
        }
    ]


def test_a_record_maps_to_mlflow_span_dicts() -> None:
    sink = ListSink()
    tracer = SpanRecorder(sink)
    with pytest.raises(RuntimeError), tracer.turn("turn", tags=turn_tags(), inputs={"q": "é"}):
        span = tracer.start_span("model", kind="CHAT_MODEL", inputs={"messages": []})
        span.set_attributes({"mlflow.chat.tokenUsage": {"input_tokens": 3}})
        span.end()
        raise RuntimeError("boom")
    root, model = span_dicts(sink.records[0])
    trace_hex = trace_id_of("t-1")[3:]
    assert base64.b64decode(root["trace_id"]).hex() == trace_hex
    assert root["parent_span_id"] is None
    assert base64.b64decode(model["parent_span_id"]) == base64.b64decode(root["span_id"])
    attrs = root["attributes"]
    assert json.loads(attrs["mlflow.traceRequestId"]) == trace_id_of("t-1")
    assert json.loads(attrs["mlflow.spanType"]) == "AGENT"
    assert json.loads(attrs["mlflow.spanInputs"]) == {"q": "é"}
    assert json.loads(attrs["mlflow.traceTag.turn_id"]) == "t-1"
    assert json.loads(attrs["session.id"]) == "c-1"
    assert root["status"]["code"] == "STATUS_CODE_ERROR"
    assert root["events"][0]["attributes"]["exception.message"] == "boom"
    assert model["status"]["code"] == "STATUS_CODE_OK"
    assert json.loads(model["attributes"]["mlflow.chat.tokenUsage"]) == {"input_tokens": 3}
    assert "mlflow.traceTag.turn_id" not in model["attributes"]


def test_unreachable_stores_are_told_apart_from_bad_data() -> None:
    assert transient(ConnectionRefusedError("refused"))
    assert transient(RuntimeError("Max retries exceeded with url: /api/2.0/traces"))
    assert transient(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert transient(RuntimeError("API request failed with status 503"))
    assert not transient(ValueError("invalid span: missing attribute"))
    assert not transient(ValueError("trace tr-4f503a9c0b2e already exists"))


def test_the_spool_rotates_and_reads_back_what_was_written(tmp_path: Path) -> None:
    sink = SpoolSink(tmp_path, max_bytes=2**20, exporter=None, rotate_seconds=60)
    for i in range(3):
        sink.put({"kind": "trace", "trace_id": f"tr-{i}", "spans": []})
    [open_segment] = segments(tmp_path, OPEN)
    assert sink.flush(timeout=0) is False  # rotated, but no exporter took it
    assert segments(tmp_path, OPEN) == []
    [closed] = segments(tmp_path, CLOSED)
    assert closed.stem == open_segment.stem
    records, bad = read_records(closed)
    assert [r["trace_id"] for r in records] == ["tr-0", "tr-1", "tr-2"] and bad == 0
    sink.close()


def test_a_torn_last_line_and_a_garbled_line_are_skipped_not_fatal(tmp_path: Path) -> None:
    segment = tmp_path / f"00000000000000000001-1{CLOSED}"
    segment.write_bytes(b'{"kind":"trace","trace_id":"a"}\nnot json\n{"kind":"tr')
    records, bad = read_records(segment)
    assert [r["trace_id"] for r in records] == ["a"] and bad == 1


def test_a_full_spool_drops_new_traces_and_counts_them(tmp_path: Path) -> None:
    sink = SpoolSink(tmp_path, max_bytes=200, exporter=None, rotate_seconds=0.05)
    big = {"kind": "trace", "trace_id": "tr-x", "spans": [], "pad": "x" * 300}
    sink.put(big)
    deadline = 200
    while sink.dropped == 0 and deadline:
        threading.Event().wait(0.02)
        sink.put(big)
        deadline -= 1
    assert sink.dropped >= 1
    written = sink.written
    sink.put(big)
    assert sink.written == written  # nothing more reaches the disk while it is full
    sink.close()


class FlakyExport:
    def __init__(self) -> None:
        self.down = True
        self.logged: list[str] = []

    def traces(self, records: list[dict[str, Any]]) -> int:
        if self.down:
            raise StoreUnavailable("connection refused")
        self.logged += [r["trace_id"] for r in records]
        return len(records)

    def feedback(self, record: dict[str, Any]) -> bool:
        return True


def test_lambda_keeps_traces_while_the_server_is_down_up_to_a_bound() -> None:
    export = FlakyExport()
    sink = DirectSink(lambda: export, max_records=3)  # type: ignore[arg-type, return-value]
    for i in range(5):
        sink.put({"kind": "trace", "trace_id": f"tr-{i}", "spans": []})
    assert sink.flush() is False
    assert len(sink.buffer) == 3 and sink.dropped == 2
    export.down = False
    assert sink.flush() is True
    assert export.logged == ["tr-2", "tr-3", "tr-4"] and not sink.buffer


def test_the_exporters_redact_every_value_but_not_the_ids() -> None:
    from workers.core.redaction import Redactor, redact_record

    sink = ListSink()
    tracer = SpanRecorder(sink)
    card, mail = "4111 1111 1111 1111", "jane@example.com"
    tags = {**turn_tags(), "conversation_id": "ws:jane@example.com:1"}
    with pytest.raises(ValueError), tracer.turn("turn", tags=tags, inputs={"texts": [card]}):
        span = tracer.start_span("model", kind="CHAT_MODEL", inputs={"messages": [mail]})
        span.set_attributes({"note": f"card {card}"})
        span.set_outputs({"content": mail})
        span.end()
        raise ValueError(f"bad card {card}")
    tracer.feedback("t-1", Feedback("user_feedback", -1, "jane", f"mail me at {mail}"))
    trace, rating = (redact_record(r, Redactor()) for r in sink.records)
    text = json.dumps([trace["spans"], rating["rationale"]])
    assert card not in text and mail not in text and "[CARD]" in text and "[EMAIL]" in text
    assert trace["tags"] == tags  # ids, as they are (the conversation is found by them)
    assert sink.records[0]["spans"][0]["inputs"] == {"texts": [card]}  # the record untouched


def test_the_exporter_waits_for_a_quiet_server_but_never_past_the_lag(tmp_path: Path) -> None:
    import os
    import time

    from workers.tracing.exporter import MAX_LAG, QUIET, Exporter

    exporter = Exporter(tmp_path, export=None, parent=os.getpid())
    closed = tmp_path / f"00000000000000000001-1{CLOSED}"
    writing = tmp_path / f"00000000000000000002-{os.getpid()}{OPEN}"
    closed.write_text("{}\n")
    writing.write_text("{}\n")
    now = time.time()
    os.utime(closed, (now - 1, now - 1))
    assert exporter.busy([closed])  # the server wrote a trace just now: later
    os.utime(writing, (now - QUIET - 1, now - QUIET - 1))
    assert not exporter.busy([closed])  # quiet: now
    os.utime(writing, (now, now))
    os.utime(closed, (now - MAX_LAG - 1, now - MAX_LAG - 1))
    assert not exporter.busy([closed])  # waited long enough: now, busy or not
    os.utime(closed, (now - 1, now - 1))
    (tmp_path / f"stop-{os.getpid()}").touch()
    assert not exporter.busy([closed])  # the server is stopping: everything now
