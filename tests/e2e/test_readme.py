"""The README's examples run as written, and its tables match the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.server_process import ServerProcess
from workers.cli import _parser
from workers.config import ENV_PREFIX, Settings

README = Path(__file__).parents[2] / "README.md"


def block(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\n(?:```\w*\n)?(.*?)(?:```|\n\n)", text, re.S)
    assert match, f"README block {name!r} not found"
    return match.group(1)


def sessions(name: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) pairs of a ``console`` block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block(name).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def test_settings_table_matches_the_settings() -> None:
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(AGENTWORKER_\w+)` \| (.*?) \|", block("settings-table"), re.M)
    }
    names = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(rows) == names
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = rows[ENV_PREFIX + name.upper()]
        if isinstance(default, bool):
            assert shown == f"`{str(default).lower()}`", name
        elif isinstance(default, str | int | float | Path):
            assert shown == f"`{default}`", name
        elif isinstance(default, list):
            assert shown == (f"`{','.join(default)}`" if default else "(none)"), name


def test_cli_table_lists_every_command() -> None:
    listed = set(re.findall(r"^\| `agentworker ([\w-]+)", block("cli-commands"), re.M))
    sub = next(a for a in _parser()._actions if a.dest == "==SUPPRESS==" and a.choices)
    assert isinstance(sub.choices, dict)
    assert listed == set(sub.choices)


@pytest.fixture
def readme_server(tmp_path: Path) -> ServerProcess:
    return ServerProcess(tmp_path, env={"AGENTWORKER_TRACING": "true"})


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_cli_session_runs_as_written(readme_server: ServerProcess, tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "AGENTWORKER_URL": readme_server.url,
        "AGENTWORKER_STATE_DIR": str(tmp_path),
        "MLFLOW_MODEL_CATALOG_URI": "",
    }
    with readme_server:
        for command, expected in sessions("cli-session"):
            out = run(command, env)
            if command.startswith("agentworker traces"):
                deadline = time.monotonic() + 30
                while out.returncode != 0 and time.monotonic() < deadline:
                    time.sleep(0.5)  # traces are exported in the background
                    out = run(command, env)
            assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
            if expected:
                assert out.stdout.splitlines() == expected, command


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_http_session_runs_as_written(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as srv:
        outputs = []
        token_file = str(srv.state_dir / "dev-token")
        for written, _ in sessions("http-session"):
            command = written.replace("http://127.0.0.1:8765", srv.url)
            out = run(command.replace(".agentworker/dev-token", token_file), dict(os.environ))
            assert out.returncode == 0, command
            outputs.append(json.loads(out.stdout))
        accepted, view, health = outputs
        assert accepted["type"] == "accepted" and accepted["duplicate"] is False
        assert view["conversation_id"] == "api:me:2" and health["status"] == "ok"


def test_bring_your_own_agent_session_runs_as_written(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "MLFLOW_MODEL_CATALOG_URI": "",
    }
    [(new, _)] = sessions("byo-new")
    made = subprocess.run(
        new,
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    app = tmp_path / "greeter"
    with ServerProcess(tmp_path / "state", cwd=app) as srv:
        env["AGENTWORKER_URL"] = srv.url
        env["AGENTWORKER_STATE_DIR"] = str(srv.state_dir)  # where its dev token is
        for command, expected in sessions("byo-session"):
            out = run(command, env)
            assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
            if expected:
                assert out.stdout.splitlines() == expected, command
            if command.startswith("agentworker state"):
                assert json.loads(out.stdout)["values"] == {"name": "Ada"}


def test_the_providers_table_says_what_the_factory_checks() -> None:
    from workers.agent.models import PROVIDERS

    rows = block("providers")
    for name, provider in PROVIDERS.items():
        row = next((r for r in rows.splitlines() if f"`{name}:" in r), None)
        assert row is not None, f"provider {name} is not in the README's table"
        if provider.install.startswith("agentworker["):
            assert f"`{provider.install}`" in row, name
        for variable in provider.credentials[:1]:
            assert variable in row, (name, variable)
