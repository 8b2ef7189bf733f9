"""``agentworker new NAME``: a runnable app directory.

    NAME/
      agentworker.toml        graph = "NAME.graph:build"
      NAME/__init__.py
      NAME/graph.py           a factory: a model node, a custom channel, an interrupt()
      tests/test_NAME.py      drives the app through real turns (agentworker.testing)

``agentworker serve`` in ``NAME/`` serves it; ``python -m pytest`` there runs its test.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from workers.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

TOML = """\
# The app agentworker serves from this directory (`agentworker serve`).
graph = "{name}.graph:build"
# model = "offline"              # or e.g. "bedrock_converse:<model-id>", "openai:gpt-4o-mini"
# approval_tools = []
# double_texting = "enqueue"     # enqueue, merge, interrupt or reject
# context_window = 20
"""

GRAPH = '''\
"""{name}: an agentworker app. ``build`` gets the configured model and settings."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import interrupt

from agentworker import BuildContext


class State(MessagesState):
    name: str  # a channel of the app's own: persisted across turns by agentworker


def build(ctx: BuildContext) -> StateGraph[State, None, State, State]:
    def ask_name(state: State) -> dict[str, Any]:
        if state.get("name"):
            return {{}}
        # Pauses the turn; the answer (typed in the chat, or sent as JSON) resumes it here.
        return {{"name": str(interrupt({{"question": "Hi! What is your name?"}}))}}

    def answer(state: State) -> dict[str, Any]:
        system = SystemMessage(ctx.prompt or f"Be brief. The user's name is {{state['name']}}.")
        return {{"messages": [ctx.model.invoke([system, *state["messages"]])]}}

    graph = StateGraph(State)
    graph.add_node("ask_name", ask_name)
    graph.add_node("answer", answer)
    graph.add_edge(START, "ask_name")
    graph.add_edge("ask_name", "answer")
    graph.add_edge("answer", END)
    return graph
'''

TEST = '''\
"""{name} through real turns: the embedded runtime, SQLite, the offline model."""

from pathlib import Path

from agentworker.testing import LocalApp

APP = Path(__file__).resolve().parents[1] / "agentworker.toml"


def test_asks_the_name_once_then_answers() -> None:
    with LocalApp(config=APP) as app:
        asked = app.send("chat:1", "hello")
        assert asked.type == "interrupt" and "name" in asked.text
        reply = app.resume("chat:1", "Ada")
        assert reply.type == "reply" and "hello" in reply.text
        state = app.state("chat:1")
        assert state is not None and state.values["name"] == "Ada"
        again = app.send("chat:1", "and now?")
        assert again.type == "reply"  # the name is remembered: no second question
'''


def write_app(name: str, parent: Path) -> Path:
    """Write the app ``name`` under ``parent``; ``ConfigError`` for a name that is not a
    Python package name or a directory that already exists."""
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"new {name!r}: the name becomes a Python package: lower-case letters, digits"
            " and '_', starting with a letter"
        )
    root = parent / name
    if root.exists():
        raise ConfigError(f"new {name!r}: {root} already exists")
    (root / name).mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "agentworker.toml").write_text(TOML.format(name=name))
    (root / name / "__init__.py").write_text(f'"""{name}: an agentworker app."""\n')
    (root / name / "graph.py").write_text(GRAPH.format(name=name))
    (root / "tests" / f"test_{name}.py").write_text(TEST.format(name=name))
    return root
