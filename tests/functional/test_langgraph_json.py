"""A project laid out for ``langgraph dev`` (``langgraph.json``, a ``src/`` package whose
graph imports its own modules, an ``.env``) served by agentworker unchanged."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import InMemoryTicketStore, ManualClock
from tests.functional.server_process import ServerProcess
from tests.turns import Conversation
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.errors import ConfigError

GRAPH = '''\
"""An echo agent, as a template would write it."""
import os

from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph

from lg_echo.prompts import PREFIX  # its own package, absolute
from .tools import shout  # and relative


def respond(state: MessagesState) -> dict:
    text = f"{PREFIX} {os.environ['ECHO_GREETING']}: {shout(state['messages'][-1].text)}"
    return {"messages": [AIMessage(text)]}


builder = StateGraph(MessagesState)
builder.add_node(respond)
builder.add_edge(START, "respond")
graph = builder.compile(name="Echo")
quiet = builder.compile(name="Quiet")
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "proj"
    package = root / "src" / "lg_echo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "graph.py").write_text(GRAPH)
    (package / "prompts.py").write_text('PREFIX = "[echo]"\n')
    (package / "tools.py").write_text("def shout(text: str) -> str:\n    return text.upper()\n")
    (root / ".env").write_text("ECHO_GREETING=hello from .env\n")
    config = {
        "dependencies": ["."],
        "graphs": {
            "echo": "./src/lg_echo/graph.py:graph",
            "quiet": "./src/lg_echo/graph.py:quiet",
        },
        "env": ".env",
        "python_version": "3.12",
        "http": {"cors": {}},
    }
    (root / "langgraph.json").write_text(json.dumps(config))
    monkeypatch.chdir(root)
    monkeypatch.delenv("ECHO_GREETING", raising=False)
    monkeypatch.delenv("AGENTWORKER_GRAPH", raising=False)
    monkeypatch.delenv("AGENTWORKER_CONFIG", raising=False)
    yield root
    for name in [m for m in sys.modules if m == "lg_echo" or m.startswith("lg_echo.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not p.startswith(str(root))]


def test_a_project_with_several_graphs_names_them_until_one_is_picked(project: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == "langgraph.json: graphs echo, quiet: pick one with --graph NAME"
    with pytest.raises(ConfigError, match="no graph 'loud' \\(its graphs: echo, quiet\\)"):
        load_settings(graph="loud")


def test_the_picked_graph_runs_with_its_env_and_its_own_imports(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(graph="echo")
    assert settings.graph == "./src/lg_echo/graph.py:graph"
    assert settings.source("graph") == "graphs.echo in langgraph.json"
    assert settings.import_dir == project and settings.python_path == [project]
    assert "http, python_version not read" in caplog.text
    agent = build_agent(settings, InMemoryTicketStore(), ManualClock())
    assert agent.graph.name == "Echo"  # the compiled graph, as the project compiled it
    out = Conversation(agent).turn("hi there")
    assert out.reply_text == "[echo] hello from .env: HI THERE"


def test_the_environment_wins_over_the_env_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_GREETING", "set outside")
    agent = build_agent(load_settings(graph="quiet"), InMemoryTicketStore(), ManualClock())
    assert agent.graph.name == "Quiet"
    assert Conversation(agent).turn("x").reply_text == "[echo] set outside: X"


def test_a_broken_langgraph_json_is_one_line(project: Path) -> None:
    (project / "langgraph.json").write_text('{"graphs": {}}')
    with pytest.raises(ConfigError, match="^langgraph.json: graphs: "):
        load_settings()
    (project / "langgraph.json").write_text("{")
    with pytest.raises(ConfigError, match="^langgraph.json: Expecting"):
        load_settings()


def test_agentworker_serve_in_the_project_directory(project: Path) -> None:
    srv = ServerProcess(project / ".agentworker", cwd=project, args=["--graph", "echo"])
    with srv:
        sent = httpx.post(
            f"{srv.url}/v1/conversations/ws:local:lg/messages",
            json={"text": "served"},
            headers=srv.auth,
            timeout=10,
        )
        assert sent.status_code == 202, sent.text
        app = httpx.get(f"{srv.url}/v1/app", headers=srv.auth, timeout=10).json()
        assert app["name"] == "Lg echo"
        for _ in range(100):
            view = httpx.get(
                f"{srv.url}/v1/conversations/ws:local:lg", headers=srv.auth, timeout=10
            ).json()
            if view["replies"]:
                break
            time.sleep(0.1)
        assert view["replies"][0]["payload"]["text"] == "[echo] hello from .env: SERVED"
