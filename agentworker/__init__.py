"""agentworker's API for apps: what a graph (and its factory, nodes and tools) may use.

    from agentworker import BuildContext, idempotency_key, request_approval, tool_node
    from agentworker import schedule_followup  # a tool: the agent plans its own follow-up

See the README's "Bring your own agent".
"""

from workers.agent.sdk import (
    BuildContext,
    Decision,
    TurnInfo,
    current_turn,
    idempotency_key,
    request_approval,
    schedule_followup,
    set_status,
    tool_node,
)
from workers.core.model import Ticket
from workers.core.ports import Clock, TicketStore
from workers.errors import PermanentError, RetryableError

__all__ = [
    "BuildContext",
    "Clock",
    "Decision",
    "PermanentError",
    "RetryableError",
    "Ticket",
    "TicketStore",
    "TurnInfo",
    "current_turn",
    "idempotency_key",
    "request_approval",
    "schedule_followup",
    "set_status",
    "tool_node",
]
