"""Settings validation and the double-texting planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.identity import ApprovalPolicy
from events.inbound import ApprovalDecision, DoubleTextingPolicy, InboundMessage, ResumeAnswer
from events.outbound import ApprovalRequest, InterruptRequest
from workers.config import DEFAULT_SUGGESTED_PROMPTS, load_settings
from workers.core.model import ConversationState, InboxEntry
from workers.core.policies import (
    REJECTED_NOTICE,
    AcceptDecision,
    accept_decision,
    backoff_delay,
    classify_error,
    plan_turn,
)
from workers.errors import ConfigError, LeaseLost, PermanentError, RetryableError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_defaults() -> None:
    s = load_settings()
    assert s.model == "offline" and s.host == "127.0.0.1" and s.double_texting == "enqueue"
    assert s.tracking_uri.startswith("sqlite:///") and s.tracking_uri.endswith("mlflow.db")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("AGENTWORKER_WORKERS", "many"),
        ("AGENTWORKER_PORT", "70000"),
        ("AGENTWORKER_MODEL", "gpt-9"),
        ("AGENTWORKER_DOUBLE_TEXTING", "sometimes"),
        ("AGENTWORKER_LEASE_TTL_SECONDS", "-1"),
    ],
)
def test_bad_settings_fail_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=env):
        load_settings()


def test_approval_tools_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().approval_tools is None  # the app's own default
    monkeypatch.setenv("AGENTWORKER_APPROVAL_TOOLS", "update_ticket, create_ticket")
    assert load_settings().approval_tools == ["update_ticket", "create_ticket"]
    monkeypatch.setenv("AGENTWORKER_APPROVAL_TOOLS", "")
    assert load_settings().approval_tools == []


def test_suggested_prompts_one_or_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().prompts_to_suggest == list(DEFAULT_SUGGESTED_PROMPTS)  # support
    assert load_settings(graph="mine.graph:build").prompts_to_suggest == []  # none of its own
    monkeypatch.setenv("AGENTWORKER_SUGGESTED_PROMPTS", "Hello, who are you?")
    assert load_settings(graph="mine.graph:build").prompts_to_suggest == ["Hello, who are you?"]
    monkeypatch.setenv("AGENTWORKER_SUGGESTED_PROMPTS", '["a, b", "c"]')
    assert load_settings().prompts_to_suggest == ["a, b", "c"]
    monkeypatch.setenv("AGENTWORKER_SUGGESTED_PROMPTS", "")
    assert load_settings().prompts_to_suggest == []  # the support example's, switched off
    monkeypatch.setenv("AGENTWORKER_SUGGESTED_PROMPTS", json.dumps(["x"] * 9))
    with pytest.raises(ConfigError, match="AGENTWORKER_SUGGESTED_PROMPTS"):
        load_settings()


def test_the_bundled_apps_suggest_their_own_prompts() -> None:
    support = load_settings(config=EXAMPLES / "support" / "agentworker.toml")
    assert support.suggested_prompts == list(DEFAULT_SUGGESTED_PROMPTS)  # served by default
    triage = load_settings(config=EXAMPLES / "triage" / "agentworker.toml")
    assert triage.prompts_to_suggest and not set(triage.prompts_to_suggest) & set(
        DEFAULT_SUGGESTED_PROMPTS
    )


@pytest.mark.parametrize(
    ("graph", "name"),
    [
        (None, "Support agent"),
        ("triage_bot.graph:build", "Triage bot"),
        ("greeter.graph:build", "Greeter"),
        ("apps/my-bot.py:graph", "My bot"),
    ],
)
def test_the_app_is_named_after_its_package(graph: str | None, name: str) -> None:
    assert load_settings(graph=graph).app_name == name


@pytest.mark.parametrize(
    "spec",
    ["bedrock:anthropic.claude-3-5-haiku-20241022-v1:0", "openai:gpt-4o-mini", "ollama:llama3.1"],
)
def test_provider_model_specs_are_accepted(spec: str) -> None:
    assert load_settings(model=spec).model == spec


def test_app_file_sets_the_app_keys_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "agentworker.toml"
    app.write_text(
        'graph = "myapp.graph:build"\nmodel = "offline:5"\ncontext_window = 7\n'
        'approval_tools = ["a", "b"]\nprompt = "prompts/p.md"\n'
    )
    monkeypatch.chdir(tmp_path)
    s = load_settings()  # ./agentworker.toml
    assert (s.graph, s.model, s.context_window, s.approval_tools) == (
        "myapp.graph:build",
        "offline:5",
        7,
        ["a", "b"],
    )
    assert s.prompt == tmp_path / "prompts" / "p.md" and s.import_dir == tmp_path
    assert s.source("graph") == f"graph in {app.name}"
    monkeypatch.setenv("AGENTWORKER_CONTEXT_WINDOW", "9")
    assert load_settings().context_window == 9  # the environment wins over the file
    assert load_settings(graph="other:g").graph == "other:g"  # and a flag over both


def test_app_file_problems_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text('graph = "x:y"\nworkers = 3\n')
    with pytest.raises(ConfigError, match=r"a.toml: unknown key 'workers'"):
        load_settings(config=bad)
    bad.write_text("graph = \n")
    with pytest.raises(ConfigError, match="a.toml"):
        load_settings(config=bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(config=tmp_path / "missing.toml")
    bad.write_text("context_window = -3\n")
    with pytest.raises(ConfigError, match=r"context_window in .*a.toml"):
        load_settings(config=bad)


def _state(
    policy: DoubleTextingPolicy = "enqueue",
    waiting: ApprovalRequest | InterruptRequest | None = None,
) -> ConversationState:
    return ConversationState(
        conversation_id="c",
        policy=policy,
        status="awaiting_approval" if waiting else "running",
        inbox_seq=3,
        last_token=1,
        lease_token=1,
        lease_expires_at=99.0,
        lease_execution_id=None,
        pending_approval=waiting,
        created_at=0.0,
        updated_at=0.0,
    )


def _entries(*texts: str) -> list[InboxEntry]:
    return [
        InboxEntry(i, InboundMessage(conversation_id="c", text=t)) for i, t in enumerate(texts, 1)
    ]


def _approval(seq: int, interrupt_id: str, approved: bool = True) -> InboxEntry:
    decision = ApprovalDecision(interrupt_id=interrupt_id, approved=approved)
    return InboxEntry(seq, InboundMessage(conversation_id="c", kind="approval", approval=decision))


@pytest.mark.parametrize("policy", ["enqueue", "merge", "interrupt", "reject"])
@pytest.mark.parametrize("lease_ttl", [None, 30.0])
def test_a_message_is_refused_only_under_reject_while_a_run_holds_the_lease(
    policy: DoubleTextingPolicy, lease_ttl: float | None
) -> None:
    idle = accept_decision(policy, lease_live=False, lease_ttl=lease_ttl)
    busy = accept_decision(policy, lease_live=True, lease_ttl=lease_ttl)
    # No run: the message waits for the run that its write starts (when asked to).
    assert (idle.rejected, idle.status, idle.notice, idle.lease_ttl) == (
        False,
        "pending",
        None,
        lease_ttl,
    )
    # A run holds the lease: that run sees the message, or reject refuses it with a notice.
    refused = policy == "reject"
    assert (busy.rejected, busy.lease_ttl) == (refused, None)
    assert busy.status == ("rejected" if refused else "pending")
    assert busy.notice == (REJECTED_NOTICE if refused else None)


def test_an_accept_rests_on_the_lease_when_the_policy_or_a_lease_asked_for_needs_it() -> None:
    """What a store that reads the lease before its write must make the write conditional on."""
    rests = {
        (policy, lease_ttl): accept_decision(
            policy, lease_live=live, lease_ttl=lease_ttl
        ).rests_on_lease
        for policy in ("enqueue", "reject")
        for lease_ttl in (None, 30.0)
        for live in (False, True)
    }
    assert rests == {
        ("enqueue", None): False,
        ("enqueue", 30.0): True,
        ("reject", None): True,
        ("reject", 30.0): True,
    }
    assert accept_decision("merge", lease_live=True, lease_ttl=None) == AcceptDecision(
        rejected=False, lease_ttl=None, rests_on_lease=False
    )


def test_idle_when_nothing_pending() -> None:
    assert plan_turn(_state(), []) is None


def test_enqueue_takes_one() -> None:
    plan = plan_turn(_state(), _entries("a", "b"))
    assert plan is not None and plan.kind == "turn" and plan.texts == ["a"] and plan.seqs == [1]


@pytest.mark.parametrize("policy", ["merge", "interrupt"])
def test_merge_and_interrupt_fold_until_an_approval(policy: DoubleTextingPolicy) -> None:
    pending = [*_entries("a", "b"), _approval(3, "i")]
    plan = plan_turn(_state(policy), pending)
    assert plan is not None and plan.texts == ["a", "b"] and plan.inbox_seq == 3


def test_matching_approval_resumes() -> None:
    ask = ApprovalRequest(
        conversation_id="c", turn_id="t", interrupt_id="i", tool="x", args={}, text="?"
    )
    plan = plan_turn(_state(waiting=ask), [_approval(1, "i", approved=False)])
    assert plan is not None and plan.kind == "resume" and plan.resume is not None
    assert plan.resume.value == {"approved": False, "reason": ""} and plan.seqs == [1]


def _interrupt(interrupt_id: str = "i") -> InterruptRequest:
    return InterruptRequest(
        conversation_id="c", turn_id="t", interrupt_id=interrupt_id, value={"q": 1}, text="q?"
    )


def _resume(seq: int, interrupt_id: str, value: object) -> InboxEntry:
    answer = ResumeAnswer(interrupt_id=interrupt_id, value=value)
    return InboxEntry(seq, InboundMessage(conversation_id="c", kind="resume", resume=answer))


def test_a_resume_answers_its_interrupt_with_its_json_value() -> None:
    plan = plan_turn(_state(waiting=_interrupt()), [_resume(1, "i", {"category": ["a", 1]})])
    assert plan is not None and plan.kind == "resume" and plan.resume is not None
    assert plan.resume.value == {"category": ["a", 1]} and plan.seqs == [1]
    assert plan.inputs == []


def test_a_plain_message_answers_a_free_form_interrupt_with_its_text() -> None:
    plan = plan_turn(_state(waiting=_interrupt()), _entries("the mobile app", "later"))
    assert plan is not None and plan.kind == "resume" and plan.resume is not None
    assert plan.resume.value == "the mobile app" and plan.seqs == [1]


def test_a_plain_message_denies_a_pending_tool_approval_and_waits() -> None:
    ask = ApprovalRequest(
        conversation_id="c", turn_id="t", interrupt_id="i", tool="x", args={}, text="?"
    )
    plan = plan_turn(_state(waiting=ask), _entries("never mind"))
    assert plan is not None and plan.kind == "resume" and plan.resume is not None
    assert plan.resume.value["approved"] is False  # type: ignore[index]
    assert plan.seqs == []  # the message is the next turn's


def test_a_resume_for_another_interrupt_or_none_is_skipped() -> None:
    plan = plan_turn(_state(waiting=_interrupt()), [_resume(1, "other", 1)])
    assert plan is not None and plan.kind == "skip"
    plan = plan_turn(_state(), [_resume(1, "i", 1)])
    assert plan is not None and plan.kind == "skip"


def test_mismatched_approval_is_skipped() -> None:
    ask = ApprovalRequest(
        conversation_id="c", turn_id="t", interrupt_id="i", tool="x", args={}, text="?"
    )
    plan = plan_turn(_state(waiting=ask), [_approval(1, "other")])
    assert plan is not None and plan.kind == "skip"


def test_error_classification_and_backoff() -> None:
    assert classify_error(LeaseLost()) == "lease_lost"
    assert classify_error(PermanentError("x")) == "permanent"
    assert classify_error(RetryableError()) == "retry"
    assert classify_error(KeyError()) == "retry"
    delays = [backoff_delay(n, base=0.5, cap=4.0, jitter=0.0) for n in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(2, base=0.5, cap=4.0, jitter=0.99) < 1.0


def test_the_app_file_names_each_tools_approval_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "agentworker.toml").write_text(
        '[approval_policies]\nupdate_ticket = "not_requester"\nrefund = { roles = ["ops"] }\n'
        'lookup = "anyone"\n'
    )
    monkeypatch.chdir(tmp_path)
    policies = load_settings().approval_policies
    assert policies["update_ticket"] == ApprovalPolicy(not_requester=True)
    assert policies["refund"] == ApprovalPolicy(roles=frozenset({"ops"}))
    assert policies["lookup"] == ApprovalPolicy()
    (tmp_path / "agentworker.toml").write_text('[approval_policies]\nrefund = "managers"\n')
    with pytest.raises(ConfigError, match="approval_policies in .*'managers'"):
        load_settings()
