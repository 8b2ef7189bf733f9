"""Loading the app's graph from the ``graph`` setting: the forms it takes, and one clear line
for each way it can be wrong."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import InMemoryTicketStore, ManualClock
from tests.turns import Conversation
from workers.agent.offline import OfflineChatModel
from workers.agent.runner import GraphTurnAgent
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.errors import ConfigError

GRAPHS = """
from typing import Annotated, Any, TypedDict
from langchain_core.messages import AIMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.message import add_messages


def node(state: Any) -> dict[str, Any]:
    return {"messages": [AIMessage("from the app")]}


def _graph(schema: Any) -> StateGraph:
    graph = StateGraph(schema)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    return graph


graph = _graph(MessagesState)
compiled = _graph(MessagesState).compile()


def factory(ctx):
    assert ctx.model is not None and ctx.tickets is not None
    return _graph(MessagesState)


def broken_factory(ctx):
    raise RuntimeError("no database")


def not_a_graph_factory(ctx):
    return 42


number = 7


class NoMessages(TypedDict):
    count: int


no_messages = _graph(NoMessages)


class PlainList(TypedDict):
    messages: list


plain_list = _graph(PlainList)


def _concat(state, writes):
    return [*state, *[w for batch in writes for w in batch]]


class Deltas(TypedDict):
    messages: Annotated[list, add_messages]
    events: Annotated[list, DeltaChannel(_concat)]


deltas = _graph(Deltas)
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the app's directory goes first
    for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
        monkeypatch.delitem(sys.modules, name)
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "graphs.py").write_text(textwrap.dedent(GRAPHS))
    (tmp_path / "loose.py").write_text(textwrap.dedent(GRAPHS))
    (package / "broken.py").write_text("import not_a_module_anywhere\n")
    return tmp_path


def agent(app_dir: Path, graph: str, **settings: Any) -> Any:
    s = load_settings(graph=graph, app_dir=app_dir, **settings)
    return build_agent(s, InMemoryTicketStore(), ManualClock(), OfflineChatModel())


@pytest.mark.parametrize(
    "ref",
    [
        "myapp.graphs:graph",
        "myapp.graphs:compiled",
        "myapp.graphs:factory",
        "loose.py:graph",
    ],
)
def test_the_forms_a_graph_setting_takes(app_dir: Path, ref: str) -> None:
    served = agent(app_dir, ref)
    assert isinstance(served, GraphTurnAgent)
    out = Conversation(served).turn("hi")
    assert out.reply_text == "from the app"


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("myapp.nowhere:graph", "cannot import 'myapp.nowhere': ModuleNotFoundError"),
        ("myapp.broken:graph", "cannot import 'myapp.broken': ModuleNotFoundError"),
        ("myapp.graphs:missing", "module 'myapp.graphs' has no attribute 'missing'"),
        ("myapp.graphs:number", "found a builtins.int, expected a StateGraph or a factory"),
        ("myapp.graphs:broken_factory", "the factory raised RuntimeError: no database"),
        ("myapp.graphs:not_a_graph_factory", "the factory returned a builtins.int"),
        ("myapp.graphs:no_messages", "its state has no 'messages' channel (channels: count)"),
        ("myapp.graphs:plain_list", "its 'messages' channel is a LastValue without a reducer"),
        ("myapp.graphs:deltas", "channel 'events' is a DeltaChannel"),
        ("myapp.graphs", "expected 'package.module:attribute'"),
        ("missing.py:graph", "missing.py not found"),
    ],
)
def test_a_graph_that_cannot_be_served_is_one_line_naming_the_setting(
    app_dir: Path, ref: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        agent(app_dir, ref)
    message = str(caught.value)
    assert message.startswith(f"graph {ref!r} (--graph): "), message
    assert problem in message and "\n" not in message


def test_the_app_file_names_itself_as_the_source(app_dir: Path) -> None:
    (app_dir / "agentworker.toml").write_text('graph = "myapp.graphs:number"\n')
    settings = load_settings(config=app_dir / "agentworker.toml")
    with pytest.raises(ConfigError, match=r"\(graph in .*agentworker.toml\): found"):
        build_agent(settings, InMemoryTicketStore(), ManualClock(), OfflineChatModel())


PROMPTS: list[list[Any]] = []


class RecordingModel(OfflineChatModel):
    def _respond(self, messages: list[Any], kwargs: dict[str, Any]) -> Any:
        PROMPTS.append(list(messages))
        return super()._respond(messages, kwargs)


def test_the_app_file_sets_the_prompt_the_factory_gets(tmp_path: Path) -> None:
    (tmp_path / "prompt.md").write_text("You are terse.\n")
    (tmp_path / "agentworker.toml").write_text('prompt = "prompt.md"\n')
    settings = load_settings(config=tmp_path / "agentworker.toml")
    support = build_agent(settings, InMemoryTicketStore(), ManualClock(), RecordingModel())
    conv = Conversation(support)
    conv.turn("hello")
    assert PROMPTS[-1][0].text == "You are terse."  # the support example's
    assert conv.values()["messages"][0].text == "hello"  # the system prompt is not state
    bad = load_settings(prompt=tmp_path / "nope.md")
    with pytest.raises(ConfigError, match="nope.md"):
        build_agent(bad, InMemoryTicketStore(), ManualClock(), OfflineChatModel())
