"""Agent tools: small typed functions with pydantic arguments, some needing approval."""

from workers.agent.tools.base import ToolContext, ToolSpec
from workers.agent.tools.support import SUPPORT_TOOLS

__all__ = ["SUPPORT_TOOLS", "ToolContext", "ToolSpec"]
