"""``agentworker eval`` end to end in this process: the golden sets of ``evals/`` through the
embedded runtime with the offline model (the release gate ``make test`` runs), a broken
expectation that fails the gate, malformed lines, bad flags, one MLflow run per eval linked
to the turn traces, ``--compare`` and ``--from-feedback``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.functional.eval_env import (
    DATASETS,
    THRESHOLDS,
    assessments_of,
    cases_table,
    eval_run,
    run_id_of,
    write_cases,
)
from tests.functional.eval_env import eval_state as eval_state  # noqa: PLC0414 (fixture)
from tests.functional.eval_env import mlflow_template as mlflow_template  # noqa: PLC0414
from workers.cli import main
from workers.evals import load_datasets
from workers.evals.genai import CASE
from workers.evals.tracking import TRACE_TAG


def test_the_golden_sets_pass_the_offline_gate_and_the_run_links_their_traces(
    eval_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    started = time.perf_counter()
    code = main(["eval", *DATASETS, "--thresholds", THRESHOLDS])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0, out
    assert "gate ok" in out
    cases = load_datasets(Path(p) for p in DATASETS).cases
    assert len(cases) >= 40
    run_id = run_id_of(out)
    run = eval_run(eval_state, run_id)
    assert run.data.metrics["cases_passed"] == 1.0
    assert run.data.params["model"] == "offline"
    assert "triage_bot.graph:build" in run.data.params["graph"]
    table = cases_table(eval_state, run_id)
    assert set(table) == {c.id for c in cases}
    assert {row["status"] for row in table.values()} == {"passed"}
    # One trace per turn of every case, tagged with the eval run.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{eval_state / 'mlflow.db'}")
    for case in cases:
        ids = table[case.id]["trace_ids"].split(",")
        assert len(ids) == len(case.turns), case.id
    last = client.get_trace(ids[-1]).info.tags
    assert (
        last[TRACE_TAG] == run_id and last["conversation_id"] == table[case.id]["conversation_id"]
    )
    turns = sum(len(c.turns) for c in cases)
    assert f"traces: {turns} tagged {TRACE_TAG}={run_id}," in out
    # The run is MLflow's evaluation of those traces: linked, each carrying its verdicts.
    assert run.data.tags["mlflow.runType"] == "genai_evaluate"
    assert run.data.metrics[f"{CASE}/mean"] == 1.0
    linked = mlflow.search_traces(
        locations=[run.info.experiment_id], run_id=run_id, return_type="list"
    )
    assert len(linked) == turns
    close = next(c for c in cases if c.id == "ticket-close-approved")
    first, *_, last = table[close.id]["trace_ids"].split(",")
    assert assessments_of(eval_state, first) == {"tool_calls": (True, None, "CODE")}
    # The last turn expects a tool call, facts and no refusal; the case's verdict is there too.
    names = ("tool_calls", "facts", "refusal", CASE)
    assert assessments_of(eval_state, last) == dict.fromkeys(names, (True, None, "CODE"))
    print(f"offline gate: {len(cases)} cases, {turns} turns in {elapsed:.1f}s")


def test_a_broken_expectation_fails_the_gate(
    eval_state: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AGENTWORKER_TRACING", "false")
    broken = write_cases(
        tmp_path / "broken.jsonl",
        {
            "id": "lookup-wrong-arg",
            "turns": [
                {
                    "user": "What is the status of ticket 3?",
                    "expect": {"tool_calls": [{"name": "lookup_ticket", "args": {"ticket_id": 4}}]},
                }
            ],
        },
    )
    code = main(["eval", str(broken), "--thresholds", THRESHOLDS])
    out = capsys.readouterr().out
    assert code == 1
    assert "lookup-wrong-arg" in out and "lookup_ticket(ticket_id=3)" in out
    assert "FAILED: cases_passed, tool_calls" in out


def test_malformed_lines_are_named_skipped_and_counted(
    eval_state: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AGENTWORKER_TRACING", "false")
    data = write_cases(
        tmp_path / "mixed.jsonl",
        {"id": "hello", "turns": [{"user": "Hello", "expect": {"facts": ["You said: Hello"]}}]},
        "{not json",
        {"id": "no-action", "turns": [{"expect": {}}]},
        {"id": "hello", "turns": [{"user": "again"}]},
    )
    code = main(["eval", str(data)])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert f"{data}:2: not JSON" in captured.err
    assert f"{data}:3: invalid case: turns.0" in captured.err
    assert f"{data}:4: case id 'hello' already at {data}:1" in captured.err
    assert "1/1 cases passed, 0 errored, 3 dataset line(s) skipped" in captured.out
    assert "tracing is off" in captured.out
    assert eval_run(eval_state, run_id_of(captured.out)).data.metrics["skipped_lines"] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "nosuchprovider:some-model"], "AGENTWORKER_MODEL='nosuchprovider:some-model'"),
        (["--model", "gpt"], "expected 'offline' or '<provider>:<model>'"),
        (["--judge", "anthropic:claude"], "AGENTWORKER_MODEL='anthropic:claude': "),
        (["--thresholds", "bad.toml"], "unknown metric 'accuracy'"),
        (["--concurrency", "0"], "must be at least 1"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    eval_state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    (tmp_path / "bad.toml").write_text("[min]\naccuracy = 0.9\n")
    code = main(["eval", DATASETS[0], *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_compare_prints_the_deltas_of_two_runs(
    eval_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{eval_state / 'mlflow.db'}")
    mlflow.set_experiment("compared")
    ids = []
    for model, facts in (("offline", 0.9), ("bedrock:some-model", 1.0)):
        with mlflow.start_run() as run:
            mlflow.log_params({"model": model})
            mlflow.log_metrics({"facts": facts, "latency_p50_ms": 20.0})
            ids.append(run.info.run_id)
    assert main(["eval", "--compare", *ids]) == 0
    out = capsys.readouterr().out
    assert "model: offline -> bedrock:some-model" in out
    facts_line = next(x for x in out.splitlines() if x.startswith("facts"))
    assert facts_line.split() == ["facts", "0.900", "1.000", "+0.1"]
    assert next(x for x in out.splitlines() if x.startswith("latency_p50_ms")).split()[-1] == "+0"
    assert main(["eval", "--compare", ids[0], "0" * 32]) == 2
    assert f"run {'0' * 32!r}: no such MLflow run" in capsys.readouterr().err


def test_negative_feedback_becomes_a_draft_case_for_review(
    eval_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow
    from mlflow.entities import AssessmentSource

    mlflow.set_tracking_uri(f"sqlite:///{eval_state / 'mlflow.db'}")
    mlflow.set_experiment("agentworker")
    cid = "ws:alice:chat1"
    turns = [
        ({"texts": ["Hello", "I cannot log in"]}, "(offline model) You said: Hello"),
        ({"resume": {"approved": False, "reason": "no"}, "interrupt_id": "i1"}, "Not done."),
        ({"texts": ["How do I reset my password?"]}, "No idea, sorry."),
        ({"texts": ["later message"]}, "after the rated one"),
    ]
    trace_ids = []
    for n, (inputs, reply) in enumerate(turns):
        with mlflow.start_span(name="turn", span_type="AGENT") as span:
            span.set_inputs(inputs)
            mlflow.update_current_trace(tags={"conversation_id": cid, "turn_id": f"turn{n}"})
            span.set_outputs({"reply": reply})
            trace_ids.append(span.trace_id)
        time.sleep(0.01)  # distinct timestamps: the order of the turns
    mlflow.flush_trace_async_logging()
    human = AssessmentSource(source_type="HUMAN", source_id="alice")
    mlflow.log_feedback(
        trace_id=trace_ids[2], name="user_feedback", value=-1, source=human, rationale="wrong"
    )
    mlflow.log_feedback(trace_id=trace_ids[0], name="user_feedback", value=1, source=human)
    out_file = tmp_path / "drafts.jsonl"
    assert main(["eval", "--from-feedback", str(out_file), "--since", "1h"]) == 0
    assert "wrote 1 draft case(s)" in capsys.readouterr().out
    [draft] = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert draft["review"] is True and draft["id"] == "feedback-turn2"
    assert draft["turns"] == [
        {"user": "Hello"},
        {"user": "I cannot log in"},
        {"approve": False, "reason": "no"},
        {"user": "How do I reset my password?"},
    ]
    assert draft["notes"]["rated_reply"] == "No idea, sorry."
    assert draft["notes"]["comment"] == "wrong" and draft["notes"]["rated_by"] == "alice"
    loaded = load_datasets([out_file])
    assert [c.id for c in loaded.in_review] == ["feedback-turn2"] and not loaded.cases
    # Feedback older than --since is left out.
    later = ["eval", "--from-feedback", str(tmp_path / "none.jsonl"), "--since", "2999-01-01"]
    assert main(later) == 0
    assert "wrote 0 draft case(s)" in capsys.readouterr().out
