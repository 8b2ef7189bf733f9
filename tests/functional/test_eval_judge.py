"""The LLM judge of ``agentworker eval`` against the Converse stub, through the real Bedrock
client: a throttled judge call is retried and the case judged; a refused call marks the case
errored, never passed; the verdicts are feedback on the cases' traces (the judge's from an
LLM judge, a failed expectation's with its reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functional.eval_env import assessments_of, cases_table, run_id_of, write_cases
from tests.functional.eval_env import eval_state as eval_state  # noqa: PLC0414 (fixture)
from tests.functional.eval_env import mlflow_template as mlflow_template  # noqa: PLC0414
from workers.cli import main
from workers.evals.genai import CASE
from workers.sandbox.converse_stub import ConverseStubServer

JUDGE = "anthropic.claude-3-5-haiku-20241022-v1:0"


def _case(case_id: str, text: str, *facts: str) -> dict[str, object]:
    return {
        "id": case_id,
        "judge": "The assistant repeats what the user said.",
        "turns": [{"user": text, "expect": {"facts": [text, *facts]}}],
    }


def test_the_judge_is_retried_on_throttling_and_a_judge_error_marks_the_case_errored(
    eval_state: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AGENTWORKER_BEDROCK_REGION", "us-east-1")
    data = write_cases(
        tmp_path / "judged.jsonl",
        _case("judged", "Hello judge"),
        _case("refused", "Hi again", "a fact never said"),
    )
    with ConverseStubServer() as stub:
        monkeypatch.setenv("AGENTWORKER_BEDROCK_ENDPOINT_URL", stub.endpoint_url)
        # First case: throttled more often than the client retries by itself, then a verdict.
        stub.throttle(3, model_id=JUDGE)
        stub.script("PASS: it repeats the greeting", model_id=JUDGE)
        # Second case: the judge's call is refused for good.
        stub.fail(400, "ValidationException", message="bad judge request", model_id=JUDGE)
        code = main(["eval", str(data), "--judge", f"bedrock:{JUDGE}", "--concurrency", "1"])
        requests = [r for r in stub.requests if r.model_id == JUDGE]
    out = capsys.readouterr().out
    assert code == 1  # an errored case never passes
    assert len(requests) == 5
    assert "Hello judge" in requests[0].messages[0]["content"][0]["text"]
    assert "repeats what the user said" in requests[0].messages[0]["content"][0]["text"]
    table = cases_table(eval_state, run_id_of(out))
    assert table["judged"]["status"] == "passed" and table["judged"]["judge"] is True
    assert table["judged"]["judge_rationale"] == "it repeats the greeting"
    assert table["refused"]["status"] == "errored" and table["refused"]["judge"] is False
    assert "ValidationException" in table["refused"]["failures"]
    assert "1/2 cases passed, 1 errored" in out
    # Each case's trace carries its verdicts: the judge's from an LLM judge.
    [judged] = table["judged"]["trace_ids"].split(",")
    assert assessments_of(eval_state, judged) == {
        "facts": (True, None, "CODE"),
        "judge": (True, "it repeats the greeting", "LLM_JUDGE"),
        CASE: (True, None, "CODE"),
    }
    [refused] = table["refused"]["trace_ids"].split(",")
    on_refused = assessments_of(eval_state, refused)
    assert on_refused["facts"] == (False, "missing fact 'a fact never said'", "CODE")
    value, rationale, source = on_refused["judge"]
    assert (value, source) == (False, "LLM_JUDGE") and "ValidationException" in str(rationale)
    value, rationale, _ = on_refused[CASE]
    assert value is False and str(rationale).startswith("errored: ")
