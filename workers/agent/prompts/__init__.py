"""Versioned system prompts (``system_<version>.md``)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from workers.errors import ConfigError


@cache
def load_system_prompt(version: str) -> str:
    """The system prompt of ``version`` (e.g. ``v1``), from this package's files."""
    path = resources.files(__name__).joinpath(f"system_{version}.md")
    if not path.is_file():
        raise ConfigError(
            f"AGENTWORKER_PROMPT_VERSION={version!r}: no prompt file system_{version}.md"
        )
    return path.read_text("utf-8").strip()
