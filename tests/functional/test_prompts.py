"""Prompts in a real MLflow prompt registry (SQLite, one store for the module): pushed,
promoted and diffed with ``agentworker prompt``, loaded by alias when the app starts, named
on the turn's trace; the bundled file when the registry has nothing; an unknown alias stops
``serve`` with exit code 2."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from workers.cli import main
from workers.config import load_settings
from workers.errors import ConfigError
from workers.prompts import load_prompt
from workers.testing import LocalApp

NAME = "echo-app-system"  # derived from the graph's file, echo_app.py
V1 = "You are the first prompt."
V2 = "You are the first prompt.\nSign every reply as Ada."

ECHO_APP = '''
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph


def build(ctx):
    """Answers with its system prompt: what the app was given is what the test reads."""

    def answer(state):
        return {"messages": [AIMessage(ctx.prompt or "(no prompt)")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph
'''


class Store:
    def __init__(self, root: Path) -> None:
        self.app = root / "app"
        self.app.mkdir()
        (self.app / "echo_app.py").write_text(ECHO_APP)
        (self.app / "system.md").write_text(V1 + "\n")
        self.config = self.app / "agentworker.toml"
        self.config.write_text('graph = "echo_app.py:build"\nprompt = "system.md"\n')
        self.state = root / "state"
        self.v2 = root / "v2.md"
        self.v2.write_text(V2)

    def prompt(self, *args: str) -> int:
        return main(["prompt", *args, "--state-dir", str(self.state)])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Versions 1 (the app's file) and 2, ``production`` on 2."""
    s = Store(tmp_path_factory.mktemp("prompts"))
    assert s.prompt("push", "--config", str(s.config), "-m", "first") == 0
    assert s.prompt("push", str(s.v2), "--name", NAME, "-m", "sign as Ada") == 0
    assert s.prompt("promote", NAME, "2", "--alias", "production") == 0
    return s


def test_push_list_promote_and_diff(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert store.prompt("push", str(store.v2), "--name", NAME) == 0  # the latest's text
    assert "same as version 2; nothing pushed" in capsys.readouterr().out
    assert store.prompt("promote", NAME, "1", "--alias", "staging") == 0
    assert capsys.readouterr().out.strip() == f"{NAME}@staging: version 1"
    assert store.prompt("list") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[:3] for row in rows] == [[NAME, "2", "production"], [NAME, "1", "staging"]]
    assert store.prompt("diff", NAME, "staging", "production") == 0
    diff = capsys.readouterr().out.splitlines()
    assert diff[:2] == [
        f"--- {NAME}@staging (version 1)",
        f"+++ {NAME}@production (version 2)",
    ]
    assert "+Sign every reply as Ada." in diff
    assert store.prompt("show", NAME, "production") == 0
    assert capsys.readouterr().out == V2 + "\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["promote", NAME, "9", "--alias", "production"], "has no version '9'"),
        (["promote", NAME, "1", "--alias", "latest"], "reserved"),
        (["promote", "nope", "1", "--alias", "production"], "unknown prompt 'nope'"),
        (["diff", NAME, "1", "canary"], "has no alias 'canary'"),
        (["diff", "nope", "1", "2"], "unknown prompt 'nope'"),
    ],
)
def test_unknown_names_versions_and_aliases_exit_2(
    store: Store, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    capsys.readouterr()
    assert store.prompt(*args) == 2
    assert error in capsys.readouterr().err


def test_the_app_serves_the_alias_and_its_trace_names_the_version(store: Store) -> None:
    from mlflow import MlflowClient

    with LocalApp(config=store.config, state_dir=store.state, tracing=True) as app:
        reply = app.send("ws:me:1", "hello")
    assert reply.type == "reply" and reply.text == V2
    uri = f"sqlite:///{store.state / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("agentworker")
    assert experiment is not None
    [trace] = client.search_traces(
        locations=[experiment.experiment_id],
        filter_string="tags.conversation_id = 'ws:me:1'",
        include_spans=False,
    )
    tags = trace.info.tags
    assert (tags["prompt_name"], tags["prompt_version"]) == (NAME, "2")
    assert (tags["prompt_source"], tags["prompt_alias"]) == ("registry", "production")


def test_an_empty_registry_serves_the_bundled_file(store: Store, tmp_path: Path) -> None:
    with LocalApp(config=store.config, state_dir=tmp_path) as app:
        reply = app.send("ws:me:1", "hello")
    assert reply.type == "reply" and reply.text == V1
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create a registry


def test_serve_with_an_unknown_alias_exits_2(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (a subprocess would import everything again): `serve` as the command
    # runs it, its logging setup aside (it would reconfigure the test run's).
    monkeypatch.setattr("workers.observability.configure_logging", lambda level: None)
    monkeypatch.setenv("AGENTWORKER_PROMPT_ALIAS", "canary")
    capsys.readouterr()
    argv = ["serve", "--config", str(store.config), "--state-dir", str(store.state)]
    assert main([*argv, "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "AGENTWORKER_PROMPT_ALIAS='canary'" in err
    assert "has no alias 'canary' (its aliases: production" in err
    monkeypatch.setenv("AGENTWORKER_PROMPT_ALIAS", "production")  # it exists: no refusal
    with LocalApp(config=store.config, state_dir=store.state) as app:
        assert app.send("ws:me:2", "hello").text == V2


def test_a_database_that_is_not_mlflows_falls_back_unless_the_alias_was_asked_for(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database")
    settings = load_settings(config=store.config, state_dir=tmp_path)
    loaded = load_prompt(settings)
    assert (loaded.source, loaded.text) == ("file", V1)
    monkeypatch.setenv("AGENTWORKER_PROMPT_ALIAS", "production")
    with pytest.raises(ConfigError, match="AGENTWORKER_PROMPT_ALIAS='production': sqlite"):
        load_prompt(load_settings(config=store.config, state_dir=tmp_path))


def test_the_readmes_prompt_session_runs_as_written(
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = Path(__file__).parents[2] / "docs" / "operating.md"
    block = page.read_text().split("<!-- readme-test: prompt-session -->\n```console\n")[1]
    monkeypatch.chdir(page.parents[1])  # the session's paths are the repository's
    # The module's store (a new database costs seconds): its other prompt is not this one.
    monkeypatch.setenv("AGENTWORKER_STATE_DIR", str(store.state))
    mine = tmp_path / "my_prompt.md"
    steps: list[tuple[str, list[str]]] = []
    for written in block.split("```")[0].splitlines():
        line = written.replace("my_prompt.md", str(mine))
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    assert len(steps) == 8
    (write, _), *steps = steps
    assert write.startswith("echo ") and write.endswith(f"> {mine}")  # the file it pushes
    subprocess.run(["bash", "-c", write], check=True)
    for command, expected in steps:
        capsys.readouterr()
        assert main(shlex.split(command)[1:]) == 0, command
        out = capsys.readouterr().out.splitlines()
        if expected:
            assert out == expected, command
        else:
            assert out, command  # the diff and the table
