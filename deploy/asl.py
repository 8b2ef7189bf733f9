"""Checks of the Step Functions definitions that name the file and the problem: valid JSON,
every ``Next``/``Default``/``Catch`` target a state, every state reachable, only the
placeholders the stack substitutes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

PLACEHOLDERS = frozenset({"TurnFunctionArn", "DeliverFunctionArn"})
"""``DefinitionSubstitutions`` in serverless.yml; string replacement in the emulator."""


def targets(state: dict[str, Any]) -> set[str]:
    """The states ``state`` can go to."""
    out = {state["Next"]} if "Next" in state else set()
    out |= {c["Next"] for c in state.get("Choices", []) if "Next" in c}
    out |= {c["Next"] for c in state.get("Catch", []) if "Next" in c}
    if "Default" in state:
        out.add(state["Default"])
    return out


def problems(path: Path) -> list[str]:
    """What is wrong with the definition in ``path``, each naming the file."""
    text = path.read_text()
    try:
        definition = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"{path}: not valid JSON: {exc}"]
    states: dict[str, Any] = definition.get("States") or {}
    found: list[str] = []
    start = definition.get("StartAt")
    if start not in states:
        found.append(f"{path}: StartAt {start!r} is not a state")
    for name, state in states.items():
        for target in sorted(targets(state) - set(states)):
            found.append(f"{path}: state {name!r} goes to {target!r}, which is not a state")
    seen: set[str] = set()
    todo = [start] if start in states else []
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(t for t in targets(states[name]) if t in states)
    for name in states:
        if start in states and name not in seen:
            found.append(f"{path}: state {name!r} is never reached from StartAt")
    used = set(re.findall(r"\$\{(\w+)\}", text))
    for name in sorted(used - PLACEHOLDERS):
        found.append(f"{path}: placeholder ${{{name}}} is not substituted by the stack")
    return found
