"""The eval's pieces without I/O: the case schema and loader, the deterministic scorers and
metrics, thresholds, the judge's verdicts and retries, ``--since``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import ValidationError

from workers.errors import ConfigError, JudgeError
from workers.evals import CaseResult, EvalCase, TurnResult, load_datasets, metrics, score_case
from workers.evals.genai import CASE, CODE_SOURCE, trace_verdicts
from workers.evals.judge import Judge, parse_verdict
from workers.evals.report import read_thresholds
from workers.evals.scorers import Score, ToolCall, score_turns
from workers.evals.tracking import since_ms


def case(*turns: dict[str, Any]) -> EvalCase:
    return EvalCase.model_validate({"id": "c1", "turns": list(turns)})


def reply(text: str, *calls: ToolCall, **kw: Any) -> TurnResult:
    return TurnResult(kind="user", outcome="reply", text=text, tool_calls=list(calls), **kw)


def scored(c: EvalCase, *turns: TurnResult) -> CaseResult:
    result = CaseResult(c, "eval:x:c1", list(turns))
    result.scores = score_case(result)
    return result


def test_a_turn_has_exactly_one_action() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        case({"user": "hi", "approve": True})
    with pytest.raises(ValidationError, match="exactly one of"):
        case({"expect": {}})
    assert case({"answer": {"category": "billing"}}).turns[0].kind == "resume"
    assert case({"approve": False}).turns[0].kind == "approval"


def test_captures_need_one_group_and_patterns_must_compile() -> None:
    with pytest.raises(ValidationError, match="exactly one group"):
        case({"user": "x", "expect": {"capture": {"t": r"ticket \d+"}}})
    with pytest.raises(ValidationError, match="not a regular expression"):
        case({"user": "x", "expect": {"patterns": ["("]}})


def test_loader_skips_bad_lines_and_keeps_reviews_apart(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = {"id": "a", "turns": [{"user": "hi"}]}
    draft = {"id": "b", "review": True, "turns": [{"user": "hi"}]}
    path.write_text("\n".join([json.dumps(good), "[1,", "", json.dumps(draft), '{"id": "!"}']))
    data = load_datasets([path])
    assert [c.id for c in data.cases] == ["a"] and [c.id for c in data.in_review] == ["b"]
    assert [(s.line, s.reason.split(":")[0]) for s in data.skipped] == [
        (2, "not JSON"),
        (5, "invalid case"),
    ]
    with pytest.raises(ConfigError, match="missing.jsonl"):
        load_datasets([tmp_path / "missing.jsonl"])


def test_tool_calls_match_names_and_an_argument_subset_with_captures() -> None:
    c = case(
        {"user": "open", "expect": {"capture": {"t": r"ticket (\d+)"}}},
        {
            "user": "close ticket {t}",
            "expect": {"tool_calls": [{"name": "update_ticket", "args": {"ticket_id": "{t}"}}]},
        },
    )
    first = reply("Opened ticket 7")
    close = ToolCall("update_ticket", {"ticket_id": 7, "status": "closed"})
    good = scored(c, first, reply("ok", close, captured={"t": "7"}))
    assert good.scores["tool_calls"].passed and good.status == "passed"
    wrong = ToolCall("update_ticket", {"ticket_id": 8, "status": "closed"})
    bad = scored(c, first, reply("ok", wrong, captured={"t": "7"}))
    assert bad.status == "failed"
    assert (
        "expected update_ticket(ticket_id='{t}'), made update_ticket(ticket_id=8"
        in (bad.scores["tool_calls"].reasons[0])
    )


def test_no_tool_call_expected_and_an_approval_request_counts_as_a_call() -> None:
    c = case({"user": "hi", "expect": {"tool_calls": []}})
    assert scored(c, reply("hello")).status == "passed"
    asked = TurnResult("user", "approval_request", "May I?", approval=ToolCall("update_ticket", {}))
    assert scored(c, asked).scores["tool_calls"].reasons == (
        "turn 1: expected no tool call, got update_ticket()",
    )


def test_facts_refusal_and_limits() -> None:
    c = case(
        {
            "user": "q",
            "expect": {
                "facts": ["30 Minutes"],
                "forbidden": ["ticket"],
                "must_refuse": False,
                "max_latency_ms": 100,
                "max_tokens": 50,
                "max_cost_usd": 0.001,
            },
        }
    )
    fine = reply("valid for 30 minutes", latency_ms=20, input_tokens=30, output_tokens=10)
    assert scored(c, fine).status == "passed"
    slow = reply("That did not work: valid 30 minutes", latency_ms=150, input_tokens=60)
    slow.cost_usd = 0.01
    result = scored(c, slow)
    assert {n for n, s in result.scores.items() if not s.passed} == {
        "refusal",
        "latency",
        "tokens",
        "cost",
    }


def test_turns_not_run_fail_the_scorers_that_asked_for_them() -> None:
    c = case({"user": "a"}, {"user": "b", "expect": {"facts": ["x"]}})
    result = scored(c, reply("a"))
    assert result.scores["facts"].reasons == ("1 turn(s) not run",)


def test_metrics_count_errored_cases_as_failed() -> None:
    c = case({"user": "q", "expect": {"facts": ["yes"]}})
    ok = scored(c, reply("yes", latency_ms=10))
    broken = CaseResult(c, "eval:x:c2", [], error="turn 1: boom")
    figures = metrics([ok, broken], skipped_lines=2)
    assert figures["facts"] == 0.5 and figures["cases_passed"] == 0.5
    assert figures["errored"] == 1 and figures["skipped_lines"] == 2
    assert "judge" not in figures and "tool_calls" not in figures


def test_thresholds_name_known_metrics_only(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[min]\nfacts = 0.95\n[max]\nerrored = 0\n")
    t = read_thresholds(path)
    assert t.check({"facts": 0.9, "errored": 0}) == {"errored": "ok", "facts": "FAIL"}
    assert t.check({})["facts"] == "not measured"
    for text, message in [
        ("[min]\naccuracy = 1\n", "unknown metric 'accuracy'"),
        ("facts = 1\n", "unknown key 'facts'"),
        ("[min]\nfacts = 'high'\n", "is no number"),
        ("[min\n", "thresholds"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_thresholds(path)


def test_verdicts() -> None:
    assert parse_verdict("PASS: fine").passed
    assert parse_verdict("**FAIL** - claims a change").rationale == "claims a change"
    with pytest.raises(JudgeError, match="no verdict"):
        parse_verdict("(offline model) You said: ...")


class _Throttle(Exception):
    response = {"Error": {"Code": "ThrottlingException"}}  # noqa: RUF012


class _FakeJudgeModel:
    """Raises ``failures`` one after the other, then answers ``answer``."""

    def __init__(self, failures: list[Exception], answer: str = "PASS: ok") -> None:
        self.failures = failures
        self.answer = answer
        self.calls = 0

    def invoke(self, _messages: Any) -> AIMessage:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return AIMessage(self.answer)


def _judge(model: _FakeJudgeModel, attempts: int = 5) -> Judge:
    fake = cast(BaseChatModel, model)
    return Judge(fake, name="fake", attempts=attempts, backoff_s=0.001, max_backoff_s=0.002)


def test_the_judge_retries_throttling_and_gives_up_on_other_errors() -> None:
    result = CaseResult(case({"user": "hi"}), "eval:x:c1", [reply("hello")])
    model = _FakeJudgeModel([_Throttle(), _Throttle()])
    verdict = asyncio.run(_judge(model).judge(result))
    assert verdict.passed and verdict.retries == 2 and model.calls == 3
    spent = _FakeJudgeModel([_Throttle()] * 3)
    with pytest.raises(JudgeError, match="after 3 attempts"):
        asyncio.run(_judge(spent, attempts=3).judge(result))
    refused = _FakeJudgeModel([ValueError("bad request")])
    with pytest.raises(JudgeError, match="ValueError: bad request"):
        asyncio.run(_judge(refused).judge(result))
    assert refused.calls == 1


def test_since() -> None:
    assert since_ms("2h", now=10_000.0) == (10_000 - 7200) * 1000
    assert since_ms("2026-01-31") == 1_769_817_600_000
    assert since_ms(None) == 0
    with pytest.raises(ConfigError, match="--since 'soon'"):
        since_ms("soon")


def test_each_turn_trace_gets_its_turns_verdicts_and_the_last_the_case_and_judge() -> None:
    c = case(
        {"user": "hello", "expect": {"facts": ["hello"]}},
        {
            "user": "look up ticket 3",
            "expect": {"tool_calls": [{"name": "lookup_ticket", "args": {"ticket_id": 4}}]},
        },
        {"user": "thanks", "expect": {"must_refuse": False}},
    )
    lookup = ToolCall("lookup_ticket", {"ticket_id": 3})
    result = scored(
        c, reply("hello there", turn_ids=["t1"]), reply("Ticket 3 is open", lookup, turn_ids=["t2"])
    )
    result.scores["judge"] = Score(False, ("the judge said FAIL",))
    result.judge_rationale = "it looked up the wrong ticket"
    assert [set(t) for t in score_turns(result)] == [{"facts"}, {"tool_calls"}]
    verdicts = trace_verdicts([result], {"t1": "tr-1", "t2": "tr-2"}, judge="bedrock:j")
    assert set(verdicts) == {"tr-1", "tr-2"}
    facts = verdicts["tr-1"]["facts"]
    assert (facts.passed, facts.rationale, facts.source, facts.source_id) == (
        True,
        "",
        "CODE",
        CODE_SOURCE,
    )
    second = verdicts["tr-2"]
    assert set(second) == {"tool_calls", CASE, "judge"}
    assert not second["tool_calls"].passed
    assert second["tool_calls"].rationale == (
        "expected lookup_ticket(ticket_id=4), made lookup_ticket(ticket_id=3)"
    )
    # The third turn never ran: the case verdict says so (the turn has no trace).
    assert not second[CASE].passed and "refusal: 1 turn(s) not run" in second[CASE].rationale
    judge = second["judge"]
    assert (judge.passed, judge.rationale, judge.source, judge.source_id) == (
        False,
        "it looked up the wrong ticket",
        "LLM_JUDGE",
        "bedrock:j",
    )
    # A turn whose trace was not found carries nothing; a case with no trace has no verdict.
    assert set(trace_verdicts([result], {"t2": "tr-2"}, judge=None)) == {"tr-2"}
    assert trace_verdicts([result], {}, judge=None) == {}
