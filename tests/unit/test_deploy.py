"""make validate's own checks: bad input fails naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deploy import asl, layers, params

ROOT = Path(__file__).parents[2]


def write_params(tmp_path: Path, **changes: dict[str, object]) -> Path:
    doc = params.load(ROOT / "serverless.yml")
    for stage, values in changes.items():
        doc["params"].setdefault(stage, {}).update(values)
    path = tmp_path / "serverless.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_stacks_params_are_valid_for_every_stage() -> None:
    for stage in ("dev", "staging", "prod"):
        assert params.check(ROOT / "serverless.yml", stage) == []


def test_a_missing_stage_is_named(tmp_path: Path) -> None:
    path = write_params(tmp_path)
    [problem] = params.check(path, "qa")
    assert problem.startswith(f"{path}: stage 'qa' has no params (stages: dev, prod, staging)")


def test_a_malformed_parameter_is_named_with_its_stage(tmp_path: Path) -> None:
    path = write_params(tmp_path, prod={"workflow": "expres", "bedrockRegion": "moon"})
    found = params.check(path, "dev")
    assert any(p.startswith(f"{path}: params.prod.workflow:") for p in found), found
    assert any(p.startswith(f"{path}: params.prod.bedrockRegion:") for p in found), found
    assert not any("params.dev" in p for p in found)


def test_parameters_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    path = write_params(tmp_path, staging={"leaseTtlSeconds": 60, "turnTimeout": 120})
    [problem] = params.check(path)
    assert "params.staging" in problem and "leaseTtlSeconds must exceed turnTimeout" in problem


def test_an_unknown_or_missing_parameter_is_refused(tmp_path: Path) -> None:
    doc = params.load(ROOT / "serverless.yml")
    del doc["params"]["default"]["bedrockModelId"]
    doc["params"]["dev"]["bedrockModelID"] = "typo"
    path = tmp_path / "serverless.yml"
    path.write_text(yaml.safe_dump(doc))
    found = params.check(path, "dev")
    assert any("params.dev.bedrockModelId: Field required" in p for p in found), found
    assert any("params.dev.bedrockModelID: Extra inputs" in p for p in found), found


def test_a_dangling_next_is_named_with_the_file(tmp_path: Path) -> None:
    definition = json.loads((ROOT / "statemachine" / "conversation.asl.json").read_text())
    definition["States"]["Deliver"]["Next"] = "Nowhere"
    path = tmp_path / "broken.asl.json"
    path.write_text(json.dumps(definition))
    found = asl.problems(path)
    assert f"{path}: state 'Deliver' goes to 'Nowhere', which is not a state" in found
    path.write_text("{not json")
    assert asl.problems(path)[0].startswith(f"{path}: not valid JSON")


def test_a_function_over_the_size_limit_is_named() -> None:
    mb = 1024 * 1024
    [problem] = layers.check_sizes({"turn": 251 * mb, "ingest": 11 * mb})
    assert problem == (
        "serverless.yml: function turn with its layers is 251.0 MB unzipped, "
        "over Lambda's 250 MB limit"
    )


def test_layers_leave_out_the_runtimes_sdk_and_the_turn_exclusions() -> None:
    reqs = layers.requirements()
    names = {r.split("==")[0] for layer in reqs.values() for r in layer}
    assert not names & layers.RUNTIME_PROVIDED
    assert "numpy" not in names and "langgraph" in {r.split("==")[0] for r in reqs["agent"]}
    assert {"pydantic", "aws-lambda-powertools"} <= {r.split("==")[0] for r in reqs["light"]}


def test_packaging_a_stage_without_params_stops_before_building(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from deploy import package

    assert package.main(["--stage", "qa"]) == 1
    assert "serverless.yml: stage 'qa' has no params" in capsys.readouterr().err


def test_an_app_file_must_agree_with_the_stack_on_approval_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions are accepted by ingest, approve and slack, which do not load the app: the
    stage parameter must say what the app file says."""
    from deploy.app import check_stack_params
    from workers.config import load_settings

    app = tmp_path / "agentworker.toml"
    app.write_text('[approval_policies]\nupdate_ticket = "not_requester"\n')
    monkeypatch.delenv("AGENTWORKER_APPROVAL_POLICIES", raising=False)
    settings = load_settings(config=app)
    base = {"doubleTexting": "enqueue"}
    [problem] = check_stack_params(settings, base | {"approvalPolicies": "{}"})
    assert "approvalPolicies" in problem and "not_requester" in problem
    agreeing = '{"update_ticket": "not_requester"}'
    assert check_stack_params(settings, base | {"approvalPolicies": agreeing}) == []
    with pytest.raises(ValueError, match="not JSON"):
        check_stack_params(settings, base | {"approvalPolicies": "{oops"})


def test_an_app_file_must_agree_with_the_stack_on_suggested_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new assistant thread is opened in the slack function, which does not load the app:
    the stage parameter must say what the app file suggests."""
    from deploy.app import check_stack_params
    from workers.config import load_settings

    app = tmp_path / "agentworker.toml"
    app.write_text('suggested_prompts = ["Where is my order?", "Cancel it"]\n')
    monkeypatch.delenv("AGENTWORKER_SUGGESTED_PROMPTS", raising=False)
    settings = load_settings(config=app)
    base = {"doubleTexting": "enqueue"}
    [problem] = check_stack_params(settings, base)
    assert "suggestedPrompts" in problem and "Where is my order?" in problem
    agreeing = '["Where is my order?", "Cancel it"]'
    assert check_stack_params(settings, base | {"suggestedPrompts": agreeing}) == []
    with pytest.raises(ValueError, match="suggestedPrompts"):
        check_stack_params(settings, base | {"suggestedPrompts": '["ok", ""]'})
