"""Access, double-texting policies and retry classification: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, replace
from typing import Literal

from events.identity import ApprovalPolicy, Principal
from events.inbound import (
    DoubleTextingPolicy,
    InboundMessage,
    is_slack_conversation,
    slack_channel_owner,
    slack_tenant,
    slack_thread_of,
)
from events.outbound import ApprovalRequest, InterruptRequest
from workers.core.model import (
    Access,
    CallerValues,
    ConversationState,
    ConversationStatus,
    InboxEntry,
    InboxStatus,
    PendingRequest,
    ResumeRecord,
    TurnInput,
)
from workers.errors import LeaseLost, NotAllowed, PermanentError, RetryableError

SUPERSEDED_REASON = "the user sent a new message instead of answering"
REJECTED_NOTICE = (
    "I'm still working on your previous message, so this one was not processed. "
    "Please send it again once I have answered."
)
"""Told to the user when the ``reject`` policy refuses a message (:class:`AcceptDecision`)."""
STALE_APPROVAL_NOTICE = "That request is no longer pending; nothing was done."
NOT_ALLOWED_NOTICE = "You may not answer this request ({reason}); it is still pending."
NOTHING_PENDING_NOTICE = "There is nothing waiting for approval or an answer; nothing was done."


# quotas ---------------------------------------------------------------------------------


def window_start(now: float, window_seconds: float) -> float:
    """The start of the fixed quota window ``now`` falls in (every store counts alike)."""
    return (now // window_seconds) * window_seconds


# access ---------------------------------------------------------------------------------


def access_for(principal: Principal, tenant_roles: Set[str] = frozenset()) -> Access | None:
    """What a conversation must belong to for ``principal`` to use it: its tenant, and as
    owner the principal or a group it acts for, or any owner for a principal holding one
    of ``tenant_roles`` (supervisors, approvers). ``None`` for a trusted backend (any)."""
    if principal.service:
        return None
    if principal.roles & tenant_roles:
        return Access(principal.tenant, None)
    return Access(principal.tenant, principal.owners)


def append_access(
    principal: Principal, msg: InboundMessage, tenant_roles: Set[str] = frozenset()
) -> Access | None:
    """What the conversation ``msg`` is appended to must belong to, checked by the store in
    the append's own write (``None``: any conversation).

    - A user: their tenant and owners (:func:`access_for`); they may create it only where
      :func:`may_create` lets them.
    - A trusted backend's message for the agent: exactly the tenant and owner the backend
      speaks for (none named: a conversation a backend created without them). A backend
      reaches a user's conversation only by naming its tenant and owner, and never lands
      in one by reusing its id.
    - A trusted backend's answer (an approval or a resume value it decides for the user it
      names) and erasure: any conversation."""
    if principal.service:
        if msg.answers is not None:
            return None
        owners = None if msg.owner is None else frozenset({msg.owner})
        return Access(msg.tenant, owners)
    access = access_for(principal, tenant_roles)
    return access and replace(access, create=may_create(principal, msg.conversation_id))


SLACK_NAMESPACE = "slack:"
"""Conversation ids of Slack threads (``slack:<team>:<channel>:<thread ts>``): created only
by Slack's own entry points, for a member of that channel."""
BACKEND_NAMESPACES = ("ticket:",)
"""Conversation ids that trusted backends create (a helpdesk's ``ticket:<id>``): a user may
use one that was created for them, never create one (nor block it for its real owner),
unless the user has the :data:`HELPDESK_ROLE`."""
HELPDESK_ROLE = "helpdesk"
"""The role of a person who brings a helpdesk's tickets in (``agentworker tickets import``):
they may create ``ticket:<id>`` conversations, theirs. The local server's development token
has it (its holder runs the server); with JWTs, the token's roles claim gives it."""


def may_create(principal: Principal, conversation_id: str) -> bool:
    """Whether ``principal`` may create the conversation ``conversation_id``: anyone in the
    users' namespace (every id but the ones below, first come); a Slack thread's id only a
    member of its workspace and channel (a Slack principal); a backend's namespace only a
    trusted backend, or a person with the :data:`HELPDESK_ROLE`. Predictable ids can so be
    neither squatted nor blocked in advance by anyone else."""
    if principal.service:
        return True
    if conversation_id.startswith(SLACK_NAMESPACE):
        if not is_slack_conversation(conversation_id):
            return False
        team, channel, _ = slack_thread_of(conversation_id)
        in_channel = slack_channel_owner(team, channel) in principal.owners
        return principal.tenant == slack_tenant(team) and in_channel
    if conversation_id.startswith(BACKEND_NAMESPACES):
        return HELPDESK_ROLE in principal.roles
    return True


def may_access(
    principal: Principal, state: ConversationState, tenant_roles: Set[str] = frozenset()
) -> bool:
    """Whether ``principal`` may read, post into, follow or answer the conversation."""
    access = access_for(principal, tenant_roles)
    return access is None or access.admits(state.tenant, state.owner)


def as_sent_by(msg: InboundMessage, principal: Principal, *, owner: str | None) -> InboundMessage:
    """``msg`` as ``principal`` sends it: the sender is the principal, with its roles, and a
    conversation it creates belongs to the principal's tenant and to ``owner`` (default:
    the principal). A trusted backend's message keeps the sender, roles, tenant and owner it
    names, and records the backend as the one who vouches for them."""
    if principal.service:
        return msg.model_copy(update={"vouched_by": principal.id})
    update = {
        "sender": principal.id,
        "sender_roles": sorted(principal.roles),
        "vouched_by": None,
        "tenant": principal.tenant,
        "owner": owner or principal.id,
    }
    return msg.model_copy(update=update)


# answers --------------------------------------------------------------------------------

INTERRUPT_POLICY = "interrupt"
"""The ``approval_policies`` key that governs answers to every ``interrupt()`` that is not a
tool approval (default: anyone who may use the conversation)."""


def answer_policy(
    policies: Mapping[str, ApprovalPolicy], waiting: PendingRequest
) -> ApprovalPolicy | None:
    """The policy of whoever may answer ``waiting``: the tool's for a tool approval, the
    :data:`INTERRUPT_POLICY` for any other interrupt; ``None``: anyone in the conversation."""
    if isinstance(waiting, ApprovalRequest):
        return policies.get(waiting.tool)
    return policies.get(INTERRUPT_POLICY)


def authorize_answer(
    policies: Mapping[str, ApprovalPolicy], waiting: PendingRequest, answer: InboundMessage
) -> None:
    """``NotAllowed`` unless ``answer``'s sender may answer ``waiting``, whatever form the
    answer takes: an approval, a ``resume`` value, a plain message that answers an
    ``interrupt()``, a Slack click. The one place answers are authorized: the core calls
    it when an explicit answer is accepted (a refusal writes nothing) and again when any
    answer is planned into a turn (a refusal consumes it with a notice, the request stays
    pending), on what the message recorded of its sender when it was accepted. A trusted
    backend vouches for the roles of the user it names."""
    policy = answer_policy(policies, waiting)
    if policy is None:
        return
    what = waiting.tool if isinstance(waiting, ApprovalRequest) else "interrupt"
    if policy.not_requester and answer.sender in waiting.requested_by:
        raise NotAllowed(
            f"answer: {answer.sender} asked for this {what} call; the policy wants"
            f" {policy.describe()}",
            field="interrupt_id",
        )
    roles = frozenset(answer.sender_roles)
    if policy.roles is not None and answer.vouched_by is None and not policy.roles & roles:
        raise NotAllowed(
            f"answer: {what} requests are decided by {policy.describe()}",
            field="interrupt_id",
        )


# double texting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptDecision:
    """What a store does with a new (not duplicate) message: every store records this
    result in the write that appends the message, and decides nothing itself."""

    rejected: bool
    """Store the message as rejected (no run will see it) and ``notice`` in the outbox."""
    lease_ttl: float | None
    """Take the lease for this many seconds in the same write; ``None``: do not take it."""
    rests_on_lease: bool
    """Whether the lease's liveness decided anything: a store that reads the lease before
    its write must make that write conditional on the lease still being as it read it."""

    @property
    def status(self) -> InboxStatus:
        """The new inbox entry's status."""
        return "rejected" if self.rejected else "pending"

    @property
    def notice(self) -> str | None:
        """The text told to the user in the same write, if any."""
        return REJECTED_NOTICE if self.rejected else None


def accept_decision(
    policy: DoubleTextingPolicy, *, lease_live: bool, lease_ttl: float | None
) -> AcceptDecision:
    """Decide how a new message is accepted under the conversation's ``policy`` (the
    message's own, else the stored one), given whether a live lease holds the conversation
    (a run is active) as the store's write sees it.

    ``reject`` refuses a message that arrives while a run is active, with
    :data:`REJECTED_NOTICE` to the user; every other policy keeps it pending for the run.
    When the caller asks for the lease (``lease_ttl``) and no run holds it, the same write
    takes it, so the caller starts the run."""
    return AcceptDecision(
        rejected=policy == "reject" and lease_live,
        lease_ttl=None if lease_live else lease_ttl,
        rests_on_lease=policy == "reject" or lease_ttl is not None,
    )


@dataclass(frozen=True)
class TurnPlan:
    """What the next turn of a run does, decided from the inbox and the policy. It carries
    the conversation state it was planned from, so later steps need not read it again."""

    kind: Literal["turn", "resume", "skip"]
    consumed: list[InboxEntry]
    state: ConversationState
    resume: ResumeRecord | None = None
    notice: str | None = None

    @property
    def inputs(self) -> list[TurnInput]:
        """The user messages a ``turn`` hands the graph (none for a resume or a skip)."""
        if self.kind != "turn":
            return []
        return [
            TurnInput(e.message.message_id, e.message.text, e.message.sender) for e in self.consumed
        ]

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.inputs]

    @property
    def caller_values(self) -> CallerValues:
        """The consumed messages' ``context``, ``configurable`` and ``metadata``, merged."""
        context: dict[str, object] = {}
        configurable: dict[str, object] = {}
        metadata: dict[str, str] = {}
        for entry in self.consumed:
            context.update(entry.message.context or {})
            configurable.update(entry.message.configurable or {})
            metadata.update(entry.message.metadata)
        return CallerValues(context, configurable, metadata)

    @property
    def requesters(self) -> list[str]:
        """Who asked for this turn's work: the senders of its messages. A resumed turn
        continues the request it answers, so its requesters stay; whoever answered an
        ``interrupt()`` shaped what follows, so they join them (neither may then approve a
        four-eyes tool call the turn asks for)."""
        senders = [e.message.sender for e in self.consumed]
        if self.kind == "resume" and isinstance(self.waiting, ApprovalRequest):
            return list(self.waiting.requested_by)
        if self.kind == "resume" and isinstance(self.waiting, InterruptRequest):
            return list(dict.fromkeys([*self.waiting.requested_by, *senders]))
        return list(dict.fromkeys(senders))

    @property
    def answered_by(self) -> list[str]:
        """Who gave the answer a resumed turn continues with (the approver)."""
        if self.kind != "resume":
            return []
        return [e.message.sender for e in self.consumed if e.message.answers is not None]

    @property
    def inbox_seq(self) -> int:
        return self.state.inbox_seq

    @property
    def waiting(self) -> PendingRequest | None:
        """The request pending when the turn was planned (kept by turns that skip)."""
        return self.state.pending_approval if self.state.status == "awaiting_approval" else None

    @property
    def status_if_unchanged(self) -> ConversationStatus:
        return "awaiting_approval" if self.waiting is not None else "idle"

    @property
    def message_ids(self) -> list[str]:
        return [e.message.message_id for e in self.consumed]

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.consumed]


def plan_turn(
    state: ConversationState,
    pending: list[InboxEntry],
    policies: Mapping[str, ApprovalPolicy] | None = None,
) -> TurnPlan | None:
    """Decide the next turn from the pending inbox (oldest first), or ``None`` if idle.

    ``enqueue`` and ``reject`` take one message per turn (``reject`` refuses messages at
    accept time while a run is active). ``merge`` and ``interrupt`` fold every pending user
    message up to the next answer into one turn; ``interrupt`` also has the turn's commit
    refused when a message arrives mid-turn, so the run restarts with all of them.

    While the conversation waits for a human (a tool approval or an ``interrupt()``), the
    answer to exactly that request resumes the turn, if its sender may give it under
    ``policies`` (:func:`authorize_answer`; otherwise it is consumed with a notice and the
    request stays pending). A plain message instead denies a pending tool approval (the
    message stays for the next turn: whoever may use the conversation may withdraw a
    request) or, for any other interrupt, is its answer: the graph's ``interrupt()``
    returns the message's text.
    """
    if not pending:
        return None
    first = pending[0]
    waiting = state.pending_approval if state.status == "awaiting_approval" else None
    answers = first.message.answers
    if waiting is not None:
        if answers is None and isinstance(waiting, ApprovalRequest):
            # The user moved on: deny the pending tool call, keep the message for the next turn.
            denial = {"approved": False, "reason": SUPERSEDED_REASON}
            return TurnPlan("resume", [], state, resume=ResumeRecord(waiting.interrupt_id, denial))
        if answers is not None and answers != waiting.interrupt_id:
            return TurnPlan("skip", [first], state, notice=STALE_APPROVAL_NOTICE)
        try:
            authorize_answer(policies or {}, waiting, first.message)
        except NotAllowed as refused:
            reason = str(refused).partition(": ")[2]
            return TurnPlan("skip", [first], state, notice=NOT_ALLOWED_NOTICE.format(reason=reason))
        value = first.message.text if answers is None else answer_of(first.message)
        return TurnPlan("resume", [first], state, resume=ResumeRecord(waiting.interrupt_id, value))
    if answers is not None:
        return TurnPlan("skip", [first], state, notice=NOTHING_PENDING_NOTICE)
    if state.policy in ("merge", "interrupt"):
        batch: list[InboxEntry] = []
        for entry in pending:
            if entry.message.answers is not None:
                break
            batch.append(entry)
        return TurnPlan("turn", batch, state)
    return TurnPlan("turn", [first], state)


def answer_of(message: InboundMessage) -> object:
    """The value an answer message resumes its interrupt with: ``{"approved", "reason"}``
    for an approval, the JSON value of a ``resume``."""
    if message.approval is not None:
        return {"approved": message.approval.approved, "reason": message.approval.reason}
    if message.resume is not None:
        return message.resume.value
    raise ValueError(f"message {message.message_id} answers no interrupt")


ErrorClass = Literal["retry", "permanent", "lease_lost"]


def classify_error(exc: BaseException) -> ErrorClass:
    """Map an exception to what the workflow does with it. Unknown errors are retried:
    a bug must not silently consume the user's message."""
    if isinstance(exc, LeaseLost):
        return "lease_lost"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, RetryableError):
        return "retry"
    return "retry"


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff for ``attempt`` (1-based), with ``jitter`` in [0, 1) as a fraction."""
    delay: float = min(cap, base * (2 ** (attempt - 1)))
    return delay * (1.0 - 0.5 * jitter)
