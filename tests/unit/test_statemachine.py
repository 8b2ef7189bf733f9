"""The Step Functions definitions: valid references, errors that exist, Express and Standard
in agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploy import asl
from workers import errors

ROOT = Path(__file__).parents[2] / "statemachine"
EXPRESS = json.loads((ROOT / "conversation.asl.json").read_text())
STANDARD = json.loads((ROOT / "conversation-standard.asl.json").read_text())
STANDARD_ONLY = {"AwaitingApproval", "WaitForApproval"}


def _error_names(definition: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for state in definition["States"].values():
        for rule in state.get("Retry", []) + state.get("Catch", []):
            names.update(rule["ErrorEquals"])
    return names


@pytest.mark.parametrize("definition", [EXPRESS, STANDARD], ids=["express", "standard"])
def test_every_error_named_is_one_of_ours_or_a_service_error(definition: dict[str, Any]) -> None:
    for name in _error_names(definition):
        if name.startswith(("States.", "Lambda.")):
            continue
        cls = getattr(errors, name, None)
        assert isinstance(cls, type) and issubclass(cls, errors.AgentWorkerError), name
    assert {"RetryableError", "LeaseLost"} <= _error_names(definition)


@pytest.mark.parametrize("name", ["conversation.asl.json", "conversation-standard.asl.json"])
def test_every_target_exists_and_every_state_is_reachable(name: str) -> None:
    assert asl.problems(ROOT / name) == []


def test_express_and_standard_share_their_states() -> None:
    """They differ in two ways only: after a turn Standard goes through its approval wait,
    and its turn tasks ask to keep the lease while a turn awaits approval."""
    assert EXPRESS["StartAt"] == STANDARD["StartAt"]
    assert set(STANDARD["States"]) - set(EXPRESS["States"]) == STANDARD_ONLY
    for name, state in EXPRESS["States"].items():
        mine, other = (
            json.loads(json.dumps(state)),
            json.loads(json.dumps(STANDARD["States"][name])),
        )
        if name == "Deliver":
            assert other.pop("Next") == "AwaitingApproval" and mine.pop("Next") == "Step"
        if name == "Route":
            turn = [c for c in other["Choices"] if c["StringEquals"] == "turn"]
            assert turn[0]["Next"] == "AwaitingApproval"
            turn[0]["Next"] = "Step"
        if name in ("Step", "TellUser"):
            assert other["Parameters"]["Payload"].pop("hold_approvals") is True
            assert "hold_approvals" not in mine["Parameters"]["Payload"]
        assert other == mine, name


def test_the_first_step_binds_the_run_to_its_execution() -> None:
    for definition in (EXPRESS, STANDARD):
        assert definition["StartAt"] == "Step"
        payload = definition["States"]["Step"]["Parameters"]["Payload"]
        assert payload["execution_id.$"] == "$$.Execution.Id"
        assert payload["run.$"] == "$.run"


@pytest.mark.parametrize("definition", [EXPRESS, STANDARD], ids=["express", "standard"])
def test_payloads_carry_references_only(definition: dict[str, Any]) -> None:
    allowed = {
        "op",
        "run.$",
        "execution_id.$",
        "hold_approvals",
        "error.$",
        "task_token.$",
        "conversation_id.$",
    }
    for state in definition["States"].values():
        payload = state.get("Parameters", {}).get("Payload", {})
        assert set(payload) <= allowed
        assert set(state.get("ResultSelector", {})) <= {"run.$", "outcome.$", "turn.$"}


def test_standard_waits_for_approval_with_a_timeout() -> None:
    wait = STANDARD["States"]["WaitForApproval"]
    assert wait["Resource"].endswith(".waitForTaskToken")
    assert wait["Parameters"]["Payload"]["task_token.$"] == "$$.Task.Token"
    assert 0 < wait["TimeoutSeconds"] <= 7 * 86400


def test_a_failed_wait_for_approval_goes_back_to_step_not_out_of_the_execution() -> None:
    """The wait's task holds the lease for a day (``hold_for_approval``): if it failed out
    of the execution, the conversation would stay leased that long and the approval would
    wake nobody (found by the reliability suite: a Lambda error after that write). Every
    error is caught and goes back to ``Step``, which releases the lease while the
    conversation waits; the approval then starts a new run. A timeout is not retried."""
    wait = STANDARD["States"]["WaitForApproval"]
    catches = {name: rule["Next"] for rule in wait["Catch"] for name in rule["ErrorEquals"]}
    assert catches == {"LeaseLost": "Quiet", "States.ALL": "Step"}
    never = next(r for r in wait["Retry"] if r["MaxAttempts"] == 0)
    assert {"LeaseLost", "PermanentError", "States.Timeout"} <= set(never["ErrorEquals"])
    retried = [n for r in wait["Retry"] if r["MaxAttempts"] > 0 for n in r["ErrorEquals"]]
    assert "RetryableError" in retried and retried[-1] == "States.ALL"
