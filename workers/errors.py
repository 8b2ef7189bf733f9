"""The typed errors of agentworker: every exception the code raises on purpose is here.

The Step Functions definitions name some of these classes in ``Retry``/``Catch``
(``ErrorEquals``), so their names are part of the contract: rename one and the workflow stops
matching it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AgentWorkerError(Exception):
    """Base of every error agentworker raises on purpose."""


class RetryableError(AgentWorkerError):
    """A transient fault (throttling, timeout, 5xx): retry the step with backoff and jitter."""


class SlackRateLimited(RetryableError):
    """Slack's Web API is rate limiting the app (HTTP 429 or ``ratelimited``):
    ``retry_after`` seconds before the next call, as Slack's ``Retry-After`` says."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ErasureInProgress(RetryableError):
    """The conversation id is being erased, or a run of the erased conversation is still
    stopping: nothing was written; try again in a moment (HTTP 503)."""


class ModelThrottled(RetryableError):
    """The model provider throttled the call (Bedrock ``ThrottlingException``, HTTP 429):
    retried like any ``RetryableError``, and counted (``model.throttles``)."""


class PermanentError(AgentWorkerError):
    """Bad input or a policy violation: tell the user, end the run cleanly, do not retry."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LeaseLost(AgentWorkerError):
    """A newer run owns the conversation (stale fencing token): stop quietly, write nothing."""


class TurnCancelled(LeaseLost):
    """The turn was cancelled (``POST .../cancel``): the canceller took the lease and failed
    the turn's messages; the run stops where it is, writing nothing."""


class NotRunning(PermanentError):
    """A cancel for a conversation with no turn running: nothing was written (HTTP 409)."""


class ConfigError(AgentWorkerError):
    """A setting is missing or malformed; the message names the setting."""


class NotFound(PermanentError):
    """A referenced conversation, ticket or approval does not exist (or is not the caller's
    to see, which is told the same way)."""

    @classmethod
    def conversation(cls, conversation_id: str) -> NotFound:
        return cls(f"conversation_id: no conversation {conversation_id!r}", field="conversation_id")

    @classmethod
    def ticket(cls, ticket_id: int) -> NotFound:
        return cls(f"ticket {ticket_id} does not exist", field="ticket_id")

    @classmethod
    def schedule(cls, schedule_id: str) -> NotFound:
        return cls(f"schedule_id: no schedule {schedule_id!r}", field="schedule_id")

    @classmethod
    def dead_letters(cls, ids: Sequence[str], *, kind: str, where: str) -> NotFound:
        """Message ids a redrive names that are no ``kind`` ``where`` (nothing was moved)."""
        listed = ", ".join(repr(i) for i in ids)
        return cls(f"id: no {kind} {listed} {where}; nothing was redriven", field="id")


class BadInput(PermanentError, ValueError):
    """Input that is not what an entry point takes (not JSON, nested too deep, a lone UTF-16
    surrogate, a number out of range, not an object): a 400 naming the ``code``, never a
    crash. A ``ValueError`` too, so parsers that catch those catch it."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code


class Unauthenticated(PermanentError):
    """A request without valid credentials (HTTP 401). ``reason`` is a machine code
    (``missing``, ``expired``, ``bad_signature``, ``wrong_audience``, ``wrong_issuer``,
    ``alg_not_allowed``, ``malformed``, ``not_yet_valid``, ``missing_claim``,
    ``unknown_key``, ``jwks_unavailable``); the message never holds the token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, field="authorization")
        self.reason = reason


class NotAllowed(PermanentError):
    """A caller who may see the conversation but not do this (an approval the tool's policy
    does not let them decide): HTTP 403, nothing written."""


class PartialDelivery(RetryableError):
    """Some of a payload's sinks took it, another failed for now: retry only the rest
    (``delivered`` names the sinks that have it, this attempt's and earlier ones)."""

    def __init__(self, message: str, *, delivered: frozenset[str]) -> None:
        super().__init__(message)
        self.delivered = delivered


class AuthorizerRefusal(AgentWorkerError):
    """Raised by the WebSocket authorizer for a refused token: API Gateway answers 401 when
    an authorizer fails with exactly this message."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


class Throttled(PermanentError):
    """A caller over its quota (HTTP 429): ``retry_after`` seconds until it may try again."""

    def __init__(self, message: str, *, retry_after: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class NotWaiting(PermanentError):
    """An answer (approval or resume value) for a conversation that does not wait for it:
    nothing was written (HTTP 409)."""


class OutsideTurn(AgentWorkerError):
    """A turn-scoped helper (``current_turn``, ``idempotency_key``) was called outside a
    turn."""


class VectorSearchUnavailable(PermanentError):
    """``store.search(query=...)`` on a store without a vector index (the settings
    ``store_index_dims``/``store_index_embed`` unset, or a backend without vector search):
    the message names what to set."""


class UnscopedStoreOperation(PermanentError):
    """A memory-store operation that would reach across every customer's partition (a
    search or a listing without a first namespace label): the DynamoDB memory store only
    works within one customer's label, as :class:`~workers.agent.store.TurnScopedStore`
    always asks it to."""


class TurnSuperseded(AgentWorkerError):
    """The inbox moved during an ``interrupt``-policy turn: discard it and re-claim."""


class ApiError(AgentWorkerError):
    """An HTTP API answer other than success: ``status``, a machine ``code`` and the
    message naming the ``field`` at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


class InvalidSlackSignature(PermanentError):
    """A request that Slack did not sign with our signing secret, or signed too long ago."""


class SandboxNotRunning(AgentWorkerError):
    """No sandbox answers at the state directory's ``sandbox.json``."""


class PromptRegistryError(AgentWorkerError):
    """The MLflow prompt registry could not be read or written (the tracking server is down,
    the database is unusable); an unknown prompt, version or alias is a ``ConfigError``."""


Item = dict[str, Any]
"""A DynamoDB item in the low-level client's typed form (``{"name": {"S": "value"}}``)."""


class ConditionFailed(AgentWorkerError):
    """A single-item DynamoDB write's condition was false; ``item`` is the old item, if any.
    Not a failure for the store: an answer ("the lease is not free", "this key was seen")."""

    def __init__(self, item: Item | None) -> None:
        super().__init__("conditional check failed")
        self.item = item


class TransactionCancelled(RetryableError):
    """A ``TransactWriteItems`` was cancelled by conditions or conflicts (nothing written).

    Callers that read the reasons catch it; where none does, a conflict is worth a retry.
    """

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        super().__init__("transaction cancelled: " + ", ".join(r.get("Code", "?") for r in reasons))
        self.reasons = reasons

    def failed(self, index: int) -> bool:
        """Whether the condition of the ``index``-th action was false."""
        return self.code(index) == "ConditionalCheckFailed"

    def item(self, index: int) -> Item | None:
        """The old item of the ``index``-th action (asked with ``ALL_OLD``), if it existed."""
        if index >= len(self.reasons):
            return None
        item: Item | None = self.reasons[index].get("Item")
        return item

    def failed_indexes(self) -> list[int]:
        return [i for i in range(len(self.reasons)) if self.failed(i)]

    def code(self, index: int) -> str:
        """The cancellation code of the ``index``-th action (``""`` past the end)."""
        if index >= len(self.reasons):
            return ""
        return str(self.reasons[index].get("Code", ""))


_RETRIED_AS_WELL = (TurnSuperseded, ConditionFailed, PromptRegistryError)
"""Errors outside the ``RetryableError`` family that a retry can still cure: a turn
superseded by a newer message (the retry re-claims), a store condition that raced, the
prompt registry unreachable for now."""


def as_workflow_error(exc: AgentWorkerError) -> AgentWorkerError:
    """``exc`` as the workflow's Retry/Catch rules name it: Step Functions matches the exact
    error name, so every error is reported as one of the three names the ASL handles,
    ``RetryableError`` (retried with backoff), ``PermanentError`` (the user is told) or
    ``LeaseLost`` (the run stops quietly), never under its own name (which only
    ``States.ALL``, the rule for bugs, would catch). ``tests/unit/test_statemachine.py``
    checks every class of this module against the ASL."""
    if isinstance(exc, LeaseLost):
        return exc if type(exc) is LeaseLost else LeaseLost(str(exc))
    if isinstance(exc, _RETRIED_AS_WELL):
        return RetryableError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, RetryableError):
        return exc if type(exc) is RetryableError else RetryableError(str(exc))
    if isinstance(exc, PermanentError):
        return exc if type(exc) is PermanentError else PermanentError(str(exc), field=exc.field)
    # A misconfiguration, an app's misuse of a turn helper: a retry would fail the same way.
    return PermanentError(f"{type(exc).__name__}: {exc}")


def http_error(exc: AgentWorkerError) -> tuple[int, str]:
    """The HTTP status and the machine code every transport answers ``exc`` with (the
    local server, the Lambda handlers, WebSocket error frames): an ``ApiError`` as it says;
    404 ``not_found`` for what does not exist (or is not the caller's), 409 ``not_waiting``
    for an answer nobody waits for, 409 ``not_running`` for a cancel with no turn running,
    403 ``not_allowed``, 429 ``throttled``, 401 ``unauthenticated``, 422/400 for bad input
    (its own code), 400 ``bad_request`` for other refusals, 503 ``unavailable`` for a
    transient fault, 500 ``internal_error`` otherwise."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code
    if isinstance(exc, BadInput):
        return (422 if exc.code == "validation_error" else 400), exc.code
    for kind, status, code in _HTTP_ERRORS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


_HTTP_ERRORS: tuple[tuple[type[AgentWorkerError], int, str], ...] = (
    (Unauthenticated, 401, "unauthenticated"),
    (Throttled, 429, "throttled"),
    (NotAllowed, 403, "not_allowed"),
    (NotFound, 404, "not_found"),
    (NotWaiting, 409, "not_waiting"),
    (NotRunning, 409, "not_running"),
    (InvalidSlackSignature, 401, "invalid_signature"),
    (PermanentError, 400, "bad_request"),
    (ErasureInProgress, 503, "erasure_in_progress"),
    (RetryableError, 503, "unavailable"),
)


class JudgeError(AgentWorkerError):
    """The LLM judge of ``agentworker eval`` gave no verdict (a refused or failed call, retries
    spent, an answer that is no verdict): the case is errored, never passed."""
