"""Payloads passed between workflow states: references only, never history.

Step Functions caps a payload at 256 KB; these stay a few hundred bytes whatever the length
of the conversation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from events.inbound import ConversationId


class RunRef(BaseModel):
    """Identifies one run of a conversation: the lease's fencing token makes it unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: ConversationId
    token: int = Field(ge=1, description="fencing token of the lease this run holds")
    execution_id: str | None = Field(default=None, description="bound on the first step")
    turns: int = Field(default=0, ge=0, description="turns done by this run so far")
    deadline: float | None = Field(
        default=None, description="epoch seconds after which the run hands over (Express limit)"
    )

    @property
    def run_id(self) -> str:
        return run_name(self.conversation_id, self.token)

    def after_turn(self) -> RunRef:
        """This run, one turn further."""
        return self.model_copy(update={"turns": self.turns + 1})


def run_name(conversation_id: str, token: int) -> str:
    """A workflow execution name unique per (conversation, token), safe for Step Functions."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in conversation_id)
    return f"{safe[:60]}-{token}"


TurnOutcome = Literal["replied", "awaiting_approval", "skipped", "rejected", "interrupted", "idle"]


class TurnResult(BaseModel):
    """Output of the claim+advance step: what happened and whether more work is pending."""

    model_config = ConfigDict(extra="forbid")

    run: RunRef
    outcome: TurnOutcome
    turn_id: str | None = None
    consumed: list[str] = Field(default_factory=list)


class StepResult(BaseModel):
    """Output of one workflow step (``run_step``): a turn was taken and delivered (step
    again), a turn was taken but its delivery failed (``deliver``, then step again), more is
    pending (step again), or the run ended (released or handed over; ``turn`` says whether
    a turn was taken in the same step)."""

    model_config = ConfigDict(extra="forbid")

    run: RunRef
    outcome: Literal["turn", "deliver", "more_pending", "released", "handover"]
    turn: TurnOutcome | None = None
    status: Literal["idle", "awaiting_approval"] | None = None
    guardrail_interventions: int = Field(0, ge=0)
    """Interventions of the guardrails in the step's turn (counted as a metric)."""


class FinishResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: RunRef
    released: bool
    status: Literal["idle", "awaiting_approval", "more_pending", "handover"]
