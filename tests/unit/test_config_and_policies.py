"""Settings validation and the double-texting planner."""

from __future__ import annotations

import pytest

from events.inbound import ApprovalDecision, DoubleTextingPolicy, InboundMessage
from events.outbound import ApprovalRequest
from workers.config import load_settings
from workers.core.model import ConversationState, InboxEntry
from workers.core.policies import backoff_delay, classify_error, plan_turn
from workers.errors import ConfigError, LeaseLost, PermanentError, RetryableError


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
    monkeypatch.setenv("AGENTWORKER_APPROVAL_TOOLS", "update_ticket, create_ticket")
    assert load_settings().approval_tools == ["update_ticket", "create_ticket"]


def _state(
    policy: DoubleTextingPolicy = "enqueue", waiting: ApprovalRequest | None = None
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
    assert plan.resume.approved is False and plan.seqs == [1]


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
