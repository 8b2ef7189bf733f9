"""Pydantic v2 models of everything that crosses a boundary of agentworker."""
