"""The five steps of the turn contract, shared by the embedded and the AWS runtime.

``accept_message`` -> (``bind_run``) -> ``claim_inbox`` -> ``advance_turn`` -> ``deliver`` ->
``finish_run`` (loop while the inbox has pending messages). ``drive_run`` composes them the
way the Step Functions workflow does, for runtimes that run a whole run in one process.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from events.inbound import DoubleTextingPolicy, InboundMessage, new_id
from events.outbound import ApprovalRequest, Notice, OutboxPayload, Reply, ReplyChunk
from events.workflow import FinishResult, RunRef, StepResult, TurnOutcome, TurnResult
from workers.core.model import (
    AcceptResult,
    ConversationStatus,
    PendingApproval,
    TurnCommit,
    TurnOutput,
    TurnRequest,
)
from workers.core.policies import TurnPlan, backoff_delay, classify_error, plan_turn
from workers.core.ports import (
    Clock,
    ConversationStore,
    NullTracer,
    ReplySink,
    SpanHandle,
    Tracer,
    TurnAgent,
    WorkflowStarter,
)
from workers.errors import LeaseLost, PermanentError, RetryableError

log = logging.getLogger(__name__)


class TurnSuperseded(Exception):
    """The inbox moved during an ``interrupt``-policy turn: discard it and re-claim."""


@dataclass(frozen=True)
class TurnSettings:
    lease_ttl: float = 60.0
    context_window: int = 20
    default_policy: DoubleTextingPolicy = "enqueue"
    max_turns_per_run: int = 50
    max_run_seconds: float | None = None
    approval_wait_seconds: float = 86_400 + 300
    """How long a Standard run holds the lease waiting for an approval (the ASL's
    ``WaitForApproval`` times out after 24 h; the margin covers its last steps)."""
    """Hand over to a fresh run after this long (Express workflows stop at 5 minutes)."""
    retry_attempts: int = 3
    retry_base_delay: float = 0.5
    retry_max_delay: float = 8.0
    stream: bool = True
    price_input_per_mtok: float = 0.0
    price_output_per_mtok: float = 0.0


@dataclass
class Deps:
    """Everything the steps need, built once per process by the composition root."""

    store: ConversationStore
    agent: TurnAgent
    sink: ReplySink
    starter: WorkflowStarter
    clock: Clock
    tracer: Tracer = field(default_factory=NullTracer)
    settings: TurnSettings = field(default_factory=TurnSettings)


# 1. accept ----------------------------------------------------------------------------------


def accept_message(deps: Deps, msg: InboundMessage) -> AcceptResult:
    """Append ``msg`` to its inbox (deduplicated) and start a run if none holds the lease."""
    now = deps.clock.now()
    result = deps.store.append_inbox(msg, now=now, default_policy=deps.settings.default_policy)
    if result.duplicate or result.rejected:
        return result
    lease = deps.store.try_acquire_lease(msg.conversation_id, now=now, ttl=deps.settings.lease_ttl)
    if lease is not None:
        deps.starter.start(RunRef(conversation_id=msg.conversation_id, token=lease.token))
    elif msg.kind == "approval":
        # A Standard run may be waiting inside its execution for exactly this decision.
        state = deps.store.get_conversation(msg.conversation_id)
        if state is not None and state.approval_task_token:
            deps.starter.resume(state.approval_task_token)
    return result


def hold_for_approval(deps: Deps, run: RunRef, task_token: str) -> None:
    """A Standard run waits for the approval inside its execution: keep the lease for the
    approval window and record the token that ``accept_message`` resumes it with."""
    deps.store.hold_for_approval(
        run.conversation_id,
        run.token,
        task_token,
        now=deps.clock.now(),
        ttl=deps.settings.approval_wait_seconds,
    )


def bind_run(deps: Deps, run: RunRef, execution_id: str) -> RunRef:
    """First step of a run: bind the lease to this execution (a duplicate start ends here)
    and set the run's deadline."""
    now = deps.clock.now()
    deps.store.bind_lease(
        run.conversation_id, run.token, execution_id, now=now, ttl=deps.settings.lease_ttl
    )
    limit = deps.settings.max_run_seconds
    deadline = None if limit is None else now + limit
    return run.model_copy(update={"execution_id": execution_id, "deadline": deadline})


# 2. claim -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """The next turn (``plan``), or ``None`` when idle; ``inbox_seq`` is the inbox sequence
    seen before the inbox was read, the condition for releasing the lease."""

    plan: TurnPlan | None
    inbox_seq: int
    status: ConversationStatus


def claim_inbox(deps: Deps, run: RunRef) -> Claim:
    """Renew the lease (the lease check; it returns the conversation's state) and plan the
    next turn from the pending inbox."""
    state = deps.store.renew_lease(
        run.conversation_id, run.token, now=deps.clock.now(), ttl=deps.settings.lease_ttl
    )
    # A message arriving after the renewal moves the inbox sequence: the release then fails.
    pending = [] if state.pending_count == 0 else deps.store.pending_inbox(run.conversation_id)
    plan = plan_turn(state, pending)
    return Claim(plan, state.inbox_seq, state.status)


# 3. advance ---------------------------------------------------------------------------------


def advance_turn(
    deps: Deps, run: RunRef, plan: TurnPlan, *, deliver_now: bool = False
) -> TurnResult:
    """Run the agent for ``plan`` and commit its checkpoint, log and outbox, fenced by the
    run's token. A stale run gets ``LeaseLost`` and has written nothing. With
    ``deliver_now`` what the turn wrote is also delivered, inside the turn's trace."""
    cid = run.conversation_id
    turn_id = new_id()
    tags = {
        "conversation_id": cid,
        "run_id": run.run_id,
        "turn_id": turn_id,
        "message_ids": ",".join(plan.message_ids),
        "channel": _channel(plan),
    }
    with deps.tracer.turn("turn", tags=tags, inputs={"texts": plan.texts}) as span:
        outcome = _advance(deps, run, plan, turn_id, span)
        if deliver_now and outcome != "interrupted":
            deliver(deps, cid)
    return _result(run, outcome, turn_id, plan)


def _channel(plan: TurnPlan) -> str:
    return plan.consumed[0].message.channel if plan.consumed else "api"


def _advance(
    deps: Deps, run: RunRef, plan: TurnPlan, turn_id: str, span: SpanHandle
) -> TurnOutcome:
    cid = run.conversation_id
    if plan.kind == "skip":
        notice = Notice(conversation_id=cid, in_reply_to=plan.message_ids, text=plan.notice or "")
        _commit_unchanged(deps, run, plan, notice)
        return "skipped"
    with deps.tracer.span("store.load", kind="RETRIEVER"):
        checkpoint, history = deps.store.load_turn(cid, window=deps.settings.context_window)
    request = TurnRequest(
        conversation_id=cid,
        turn_id=turn_id,
        channel=_channel(plan),
        texts=plan.texts,
        resume=plan.resume,
        checkpoint=checkpoint,
        history=history,
    )
    try:
        output = deps.agent.run_turn(
            request, on_chunk=_chunk_streamer(deps, cid, turn_id), tracer=deps.tracer
        )
    except PermanentError as exc:
        span.set_attributes({"error": str(exc)})
        fail_turn(deps, run, plan, f"Sorry, I could not process that: {exc}")
        return "replied"
    with deps.tracer.span("store.commit", kind="UNKNOWN"):
        try:
            deps.store.commit_turn(cid, _turn_commit(run, plan, turn_id, output))
        except TurnSuperseded:
            span.set_attributes({"superseded": True})
            return "interrupted"
    span.set_attributes(
        {
            "mlflow.chat.tokenUsage": {
                "input_tokens": output.usage.input_tokens,
                "output_tokens": output.usage.output_tokens,
                "total_tokens": output.usage.total_tokens,
            },
            "tool_calls": output.tool_calls,
            "cost_usd": _cost(deps.settings, output),
        }
    )
    span.set_outputs(
        {"reply": output.reply_text, "approval": output.approval.tool if output.approval else None}
    )
    return "awaiting_approval" if output.approval else "replied"


def _cost(settings: TurnSettings, output: TurnOutput) -> float:
    usage = output.usage
    return (
        usage.input_tokens * settings.price_input_per_mtok
        + usage.output_tokens * settings.price_output_per_mtok
    ) / 1_000_000


def fail_turn(deps: Deps, run: RunRef, plan: TurnPlan, text: str) -> None:
    """Tell the user a turn failed for good and consume its messages (fenced). A failed
    resume leaves the approval pending, so the user can answer it again."""
    notice = Notice(
        conversation_id=run.conversation_id, level="error", in_reply_to=plan.message_ids, text=text
    )
    _commit_unchanged(deps, run, plan, notice)


def _commit_unchanged(deps: Deps, run: RunRef, plan: TurnPlan, notice: Notice) -> None:
    """Consume the plan's messages and send ``notice``; the graph and any pending approval
    stay as they were."""
    commit = TurnCommit(
        run.token,
        plan.seqs,
        plan.status_if_unchanged,
        outbox=[notice],
        pending_approval=plan.waiting,
    )
    deps.store.commit_turn(run.conversation_id, commit)


def _turn_commit(run: RunRef, plan: TurnPlan, turn_id: str, output: TurnOutput) -> TurnCommit:
    cid = run.conversation_id
    outbox: list[OutboxPayload] = []
    approval: ApprovalRequest | None = None
    if output.reply_text is not None:
        outbox.append(
            Reply(
                conversation_id=cid,
                turn_id=turn_id,
                in_reply_to=plan.message_ids,
                text=output.reply_text,
                usage=output.usage,
            )
        )
    if output.approval is not None:
        approval = _approval_request(cid, turn_id, plan.message_ids, output.approval)
        outbox.append(approval)
    return TurnCommit(
        token=run.token,
        consumed=plan.seqs,
        status="awaiting_approval" if approval else "idle",
        checkpoint=output.checkpoint,
        log=output.log,
        outbox=outbox,
        pending_approval=approval,
        expect_inbox_seq=plan.inbox_seq if plan.state.policy == "interrupt" else None,
    )


def _approval_request(
    cid: str, turn_id: str, message_ids: list[str], pending: PendingApproval
) -> ApprovalRequest:
    return ApprovalRequest(
        conversation_id=cid,
        turn_id=turn_id,
        in_reply_to=message_ids,
        interrupt_id=pending.interrupt_id,
        tool=pending.tool,
        args=dict(pending.args),
        text=pending.text,
    )


def _chunk_streamer(deps: Deps, cid: str, turn_id: str) -> Callable[[str], None] | None:
    if not deps.settings.stream:
        return None
    counter = itertools.count()

    def on_chunk(delta: str) -> None:
        deps.sink.send_chunk(
            ReplyChunk(conversation_id=cid, turn_id=turn_id, index=next(counter), delta=delta)
        )

    return on_chunk


def _result(run: RunRef, outcome: TurnOutcome, turn_id: str, plan: TurnPlan) -> TurnResult:
    return TurnResult(
        run=run.after_turn(),
        outcome=outcome,
        turn_id=turn_id,
        consumed=plan.message_ids,
    )


# 4. deliver ---------------------------------------------------------------------------------


def deliver(deps: Deps, conversation_id: str) -> int:
    """Send undelivered outbox entries in order and mark each delivered; returns the count.
    Re-delivering an already-delivered entry never happens: marks are checked first."""
    sent = 0
    for entry in deps.store.pending_outbox(conversation_id):
        with deps.tracer.span("deliver", kind="UNKNOWN", inputs={"type": entry.payload.type}):
            deps.sink.send(entry.payload)
            deps.store.mark_delivered(conversation_id, [entry.seq], now=deps.clock.now())
        sent += 1
    return sent


# 5. finish ----------------------------------------------------------------------------------


def finish_run(deps: Deps, run: RunRef, claim: Claim) -> FinishResult:
    """End the run after ``claim``: with work still planned (the turn budget is spent) hand
    over to a fresh run; otherwise release the lease, conditional on the inbox sequence the
    claim saw. A message that arrived meanwhile makes the release fail and the run loop."""
    cid = run.conversation_id
    if claim.plan is not None:
        lease = deps.store.handover_lease(
            cid, run.token, now=deps.clock.now(), ttl=deps.settings.lease_ttl
        )
        deps.starter.start(RunRef(conversation_id=cid, token=lease.token))
        return FinishResult(run=run, released=True, status="handover")
    if not deps.store.release_lease(cid, run.token, seen_inbox_seq=claim.inbox_seq):
        return FinishResult(run=run, released=False, status="more_pending")
    status: Literal["idle", "awaiting_approval"] = (
        "awaiting_approval" if claim.status == "awaiting_approval" else "idle"
    )
    return FinishResult(run=run, released=True, status=status)


# the sweeper --------------------------------------------------------------------------------


def sweep(deps: Deps, *, now: float | None = None) -> list[RunRef]:
    """Start runs for conversations with pending messages and no live lease (a crashed run
    never strands a message). ``now`` may be pushed forward to take over leases early."""
    at = deps.clock.now() if now is None else now
    started: list[RunRef] = []
    for cid in deps.store.conversations_to_sweep(now=at):
        lease = deps.store.try_acquire_lease(cid, now=at, ttl=deps.settings.lease_ttl)
        if lease is None:
            continue
        run = RunRef(conversation_id=cid, token=lease.token)
        deps.starter.start(run)
        started.append(run)
    return started


# one workflow step, and a whole run in one process ------------------------------------------


def run_step(deps: Deps, run: RunRef, *, deliver_now: bool = False) -> StepResult:
    """One step of a run, the body of the workflow's loop: claim, then either advance one
    turn or, when the inbox is drained or the run's budget is spent, finish the run."""
    claim = claim_inbox(deps, run)
    if claim.plan is not None and not _budget_spent(deps, run):
        result = advance_turn(deps, run, claim.plan, deliver_now=deliver_now)
        return StepResult(run=result.run, outcome="turn", turn=result.outcome)
    deliver(deps, run.conversation_id)  # e.g. notices of messages rejected meanwhile
    finish = finish_run(deps, run, claim)
    if not finish.released:
        return StepResult(run=run, outcome="more_pending")
    if finish.status == "handover":
        return StepResult(run=run, outcome="handover")
    ended: Literal["idle", "awaiting_approval"] = (
        "awaiting_approval" if finish.status == "awaiting_approval" else "idle"
    )
    return StepResult(run=run, outcome="released", status=ended)


def _budget_spent(deps: Deps, run: RunRef) -> bool:
    if run.turns >= deps.settings.max_turns_per_run:
        return True
    return run.deadline is not None and deps.clock.now() >= run.deadline


def fail_pending_turn(deps: Deps, run: RunRef, text: str) -> StepResult:
    """Tell the user the next turn failed for good (retries spent, a permanent error that
    escaped the turn) and consume its messages, so the run can go on."""
    claim = claim_inbox(deps, run)
    if claim.plan is None:
        return StepResult(run=run, outcome="more_pending")
    fail_turn(deps, run, claim.plan, text)
    return StepResult(run=run.after_turn(), outcome="turn")


@dataclass
class RunSummary:
    run: RunRef
    turns: int = 0
    outcomes: list[str] = field(default_factory=list)
    ended: str = "idle"


def drive_run(deps: Deps, run: RunRef, execution_id: str | None = None) -> RunSummary:
    """Run the workflow loop in-process: bind, then ``run_step`` until the run ends.

    Retryable errors are retried with backoff and jitter like the workflow's ``Retry``; when
    the attempts are spent the user is told and the message consumed. ``LeaseLost`` ends the
    run quietly.
    """
    summary = RunSummary(run=run)
    try:
        run = bind_run(deps, run, execution_id or f"{run.run_id}-{new_id()[:8]}")
        while True:
            step = _step_with_retry(deps, run)
            run = step.run
            if step.outcome == "turn":
                summary.turns += 1
                summary.outcomes.append(step.turn or "replied")
            elif step.outcome != "more_pending":
                summary.ended = step.status or step.outcome
                break
    except LeaseLost as exc:
        log.info("run %s stopped: %s", run.run_id, exc)
        summary.ended = "lease_lost"
    summary.run = run
    return summary


def _step_with_retry(deps: Deps, run: RunRef) -> StepResult:
    attempt = 0
    while True:
        attempt += 1
        try:
            return run_step(deps, run, deliver_now=True)
        except (LeaseLost, PermanentError):
            raise
        except Exception as exc:  # retry classification decides, nothing is swallowed
            if classify_error(exc) != "retry":
                raise
            if attempt >= deps.settings.retry_attempts:
                log.warning(
                    "turn of %s failed after %d attempts",
                    run.conversation_id,
                    attempt,
                    exc_info=not isinstance(exc, RetryableError),  # a bug: keep the traceback
                )
                step = fail_pending_turn(deps, run, retry_exhausted_text(exc))
                deliver(deps, run.conversation_id)
                return step
            delay = backoff_delay(
                attempt,
                base=deps.settings.retry_base_delay,
                cap=deps.settings.retry_max_delay,
                jitter=random.random(),
            )
            log.info("turn attempt %d failed (%s); retrying in %.2fs", attempt, exc, delay)
            deps.clock.sleep(delay)


def retry_exhausted_text(exc: BaseException) -> str:
    """What the user is told when a turn's retries are spent."""
    if isinstance(exc, RetryableError):
        return f"Sorry, the assistant is temporarily unavailable ({exc}). Please try again."
    return "Sorry, something went wrong while answering; the team has been notified."
