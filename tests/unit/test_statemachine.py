"""The Step Functions definitions: valid references, errors that exist, Express and Standard
in agreement."""

from __future__ import annotations

import json
from collections.abc import Callable
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


# every error a task's function raises is named by that task's rules -------------------------

FUNCTIONS = {"${TurnFunctionArn}": "turn", "${DeliverFunctionArn}": "deliver"}
"""The functions the workflow invokes, by the ASL's placeholder."""
EXPLICIT_RULES = {"RetryableError", "PermanentError", "LeaseLost"}


def _tasks(definition: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    """(state, function, the error names its Retry and Catch name, ``States.ALL`` aside)."""
    found = []
    for name, state in definition["States"].items():
        function = state.get("Parameters", {}).get("FunctionName")
        if state["Type"] == "Task":
            assert function in FUNCTIONS, f"{name} invokes {function}, which no test covers"
            rules = state.get("Retry", []) + state.get("Catch", [])
            named = {n for rule in rules for n in rule["ErrorEquals"] if n != "States.ALL"}
            found.append((name, FUNCTIONS[function], named))
    return found


def _our_errors() -> list[type[errors.AgentWorkerError]]:
    return [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.AgentWorkerError)
    ]


def _an(cls: type[errors.AgentWorkerError]) -> errors.AgentWorkerError:
    """An instance of ``cls`` (a new class with another signature needs a line here)."""
    made: dict[type[errors.AgentWorkerError], Callable[[], errors.AgentWorkerError]] = {
        errors.PartialDelivery: lambda: errors.PartialDelivery("sns down", delivered=frozenset()),
        errors.BadInput: lambda: errors.BadInput("bad_json", "not JSON"),
        errors.Unauthenticated: lambda: errors.Unauthenticated("expired", "expired"),
        errors.Throttled: lambda: errors.Throttled("quota", retry_after=1.0),
        errors.SlackRateLimited: lambda: errors.SlackRateLimited("slow", retry_after=1.0),
        errors.ApiError: lambda: errors.ApiError(503, "unavailable", "down"),
        errors.AuthorizerRefusal: errors.AuthorizerRefusal,
        errors.ConditionFailed: lambda: errors.ConditionFailed(None),
        errors.TransactionCancelled: lambda: errors.TransactionCancelled([{"Code": "X"}]),
    }
    return made.get(cls, lambda: cls("boom"))()


def _reported(function: str, exc: Exception, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``errorType`` the workflow sees when the function's core step raises ``exc``."""
    from tests.unit.test_steps import World
    from workers import bootstrap
    from workers.handlers import deliver, turn
    from workers.sandbox.emulator import invoke_handler

    def fail(*_: Any, **__: Any) -> Any:
        raise exc

    deps = World().deps
    monkeypatch.setattr(bootstrap, "aws_deps", lambda **_: deps)
    monkeypatch.setattr(turn, "execute", fail)
    monkeypatch.setattr(deliver, "deliver_run", fail)
    cid = "ticket:1"
    event: dict[str, Any] = {"op": "step"} if function == "turn" else {"conversation_id": cid}
    event["run"] = {"conversation_id": cid, "token": 1}
    handler = turn.handler if function == "turn" else deliver.handler
    data, failed = invoke_handler(handler, function, function, json.dumps(event))
    assert failed, data
    return str(json.loads(data)["errorType"])


def test_the_deliver_function_reports_a_partial_delivery_as_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step Functions matches names exactly: ``PartialDelivery`` under its own name fell to
    ``States.ALL`` (2 quick retries) instead of the ``RetryableError`` rule (4, backoff)."""
    partial = errors.PartialDelivery("sns failed for now", delivered=frozenset({"slack"}))
    assert _reported("deliver", partial, monkeypatch) == "RetryableError"


@pytest.mark.parametrize("definition", [EXPRESS, STANDARD], ids=["express", "standard"])
@pytest.mark.parametrize("cls", _our_errors(), ids=lambda cls: cls.__name__)
def test_every_error_a_task_raises_is_named_by_the_tasks_rules(
    definition: dict[str, Any],
    cls: type[errors.AgentWorkerError],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any of our errors, raised in any function a task invokes, reaches the workflow as its
    family (``RetryableError``, ``PermanentError``, ``LeaseLost``), which every task's
    rules name: none falls to ``States.ALL``, the rule for bugs."""
    reported = {f: _reported(f, _an(cls), monkeypatch) for f in set(FUNCTIONS.values())}
    for state, function, named in _tasks(definition):
        assert reported[function] in EXPLICIT_RULES, (function, cls.__name__)
        assert reported[function] in named, (state, reported[function])
