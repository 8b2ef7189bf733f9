"""The typed errors of agentworker.

The Step Functions definitions name these classes in ``Retry``/``Catch`` (``ErrorEquals``), so
their names are part of the contract: rename one and the workflow stops matching it.
"""

from __future__ import annotations


class AgentWorkerError(Exception):
    """Base of every error agentworker raises on purpose."""


class RetryableError(AgentWorkerError):
    """A transient fault (throttling, timeout, 5xx): retry the step with backoff and jitter."""


class PermanentError(AgentWorkerError):
    """Bad input or a policy violation: tell the user, end the run cleanly, do not retry."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LeaseLost(AgentWorkerError):
    """A newer run owns the conversation (stale fencing token): stop quietly, write nothing."""


class ConfigError(AgentWorkerError):
    """A setting is missing or malformed; the message names the setting."""


class NotFound(PermanentError):
    """A referenced conversation, ticket or approval does not exist."""
