"""The README's and docs/'s examples run as written, in order, from a fresh state; their tables
and figures match the code.

A block a test runs is marked ``<!-- readme-test: NAME -->`` (names are unique across README.md
and docs/*.md). Console blocks run through :class:`Terminal`, which follows what a reader
does: a server started where the docs start one (on a free port: ``AGENTWORKER_PORT`` and
``AGENTWORKER_URL`` stand in for the default 8765, and the example ports 8800 and 4566 are
replaced by free ones), ``cd``, activating the venv (before which ``agentworker`` is not on
the PATH), and every other command run by bash in the terminal's folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest

from tests.functional.server_process import free_port, wait_traces_exported
from tests.mlflow_store import seed_store
from workers.cli import _parser
from workers.config import ENV_PREFIX, Settings

REPO = Path(__file__).parents[2]
README = REPO / "README.md"
DOCS = (README, *sorted((REPO / "docs").glob("*.md")))
"""Every page of the documentation."""


def block(name: str) -> str:
    """The text after the marker ``name``: a fenced block's content, or a table."""
    marker = re.compile(
        rf"<!-- readme-test: {name} -->\n(?:```\w*\n(.*?)```|(.*?)(?:\n\n|\Z))", re.S
    )
    found = [m.group(1) or m.group(2) for page in DOCS for m in marker.finditer(page.read_text())]
    assert len(found) == 1, f"block {name!r}: {len(found)} found in README.md and docs/"
    return found[0]


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
    for name, spec in Settings.model_fields.items():
        default = spec.get_default(call_default_factory=True)
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


VENV_BIN = Path(sys.executable).parent
DEFAULT_PORT = 8765
"""The local server's default port (a test's server takes a free one)."""
EXAMPLE_PORTS = (8800, 4566)
"""Ports the docs' examples name; a test replaces each with a free one."""
SERVERS = ("make run", "agentworker serve", "agentworker stub", "agentworker sandbox")
"""Commands that serve until Ctrl-C: the terminal keeps them running."""


def _path_without_the_venv() -> str:
    """PATH as a shell has it before ``. .venv/bin/activate``."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(p for p in parts if p and Path(p).resolve() != VENV_BIN.resolve())


@dataclass
class Ports:
    """The free ports standing in for the documented ones."""

    server: int = field(default_factory=free_port)
    examples: dict[int, int] = field(
        default_factory=lambda: {port: free_port() for port in EXAMPLE_PORTS}
    )

    def substitute(self, command: str) -> str:
        for written, free in {DEFAULT_PORT: self.server, **self.examples}.items():
            command = re.sub(rf"(?<=[:\s]){written}\b", str(free), command)
        return command


@dataclass
class Terminal:
    """A shell as a reader of the docs has one: its folder, whether the venv is active, and
    the server it runs in the foreground (stopped with Ctrl-C when it starts another)."""

    cwd: Path
    ports: Ports
    active: bool = False
    server: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    cwd_venv_bin: Path = VENV_BIN

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTWORKER_")}
        env |= {
            "PATH": _path_without_the_venv(),
            "PYTHONPATH": str(REPO),  # this checkout's code, whichever venv serves it
            "MLFLOW_MODEL_CATALOG_URI": "",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "AGENTWORKER_PORT": str(self.ports.server),
            "AGENTWORKER_URL": f"http://127.0.0.1:{self.ports.server}",
        }
        env.pop("VIRTUAL_ENV", None)
        if self.active:
            env["PATH"] = f"{self.cwd_venv_bin}{os.pathsep}{env['PATH']}"
            env["VIRTUAL_ENV"] = str(self.cwd_venv_bin.parent)
        return env

    def run(self, written: str) -> subprocess.CompletedProcess[str] | None:
        """Run one documented command; a server is started and left running (None)."""
        command = self.ports.substitute(written)
        if command in (". .venv/bin/activate", "source .venv/bin/activate"):
            activate = self.cwd / ".venv" / "bin" / "activate"
            assert activate.is_file(), f"{written}: no {activate}"
            self.cwd_venv_bin, self.active = activate.parent, True
            return None
        if command.startswith("cd "):
            self.cwd = (self.cwd / command[3:].strip()).resolve()
            assert self.cwd.is_dir(), written
            return None
        if any(command.startswith(s) or f" {s}" in command for s in SERVERS):
            self.start(command)
            return None
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def start(self, command: str) -> None:
        self.stop()  # Ctrl-C: the reader stops what this terminal served
        if command == "make run":
            recipe = re.search(r"^run:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M)
            assert recipe and recipe.group(1) == "$(BIN)/agentworker serve", "make run changed"
            command = ".venv/bin/agentworker serve"
        if command.startswith("agentworker stub") and "--port" not in command:
            command += f" --port {self.ports.examples[8800]}"
        if "agentworker serve" in command or "agentworker sandbox" in command:
            seed_store(self.cwd / ".agentworker")  # an empty, migrated MLflow store: seconds saved
        self.log = self.cwd / f".terminal-{free_port()}.log"
        with self.log.open("wb") as out:
            self.server = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's foreground job
            )
        self.wait_ready(command)

    def wait_ready(self, command: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.server is not None
            assert self.server.poll() is None, f"{command} exited:\n{self.output()}"
            if "agentworker serve" in command:
                url = f"http://127.0.0.1:{self.ports.server}/healthz"
            elif "agentworker stub" in command:
                url = f"http://127.0.0.1:{self.ports.examples[8800]}/v1/models"
            else:
                if (self.cwd / ".agentworker" / "sandbox.json").exists():
                    return
                url = ""
            if url:
                try:
                    httpx.get(url, timeout=1.0)
                    return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{command} not ready:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()[-3000:] if self.log else ""

    def stop(self) -> None:
        """Ctrl-C to the foreground job, as a reader stops a server."""
        if self.server is None:
            return
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGINT)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
        self.server = None


@contextmanager
def terminals(tmp_path: Path, count: int) -> Iterator[list[Terminal]]:
    """``count`` terminals in a fresh folder standing for the clone: the venv is there (as
    ``make run`` leaves it), nothing else is (no state, no app)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(VENV_BIN.parent)
    ports = Ports()
    opened = [Terminal(clone, ports) for _ in range(count)]
    try:
        yield opened
    finally:
        for terminal in opened:
            terminal.stop()


def run_blocks(steps: list[tuple[str, Terminal]]) -> dict[str, str]:
    """Run each named block in its terminal, in order; a command must succeed and print the
    lines the block shows under it (when it shows any). Returns each command's output."""
    outputs: dict[str, str] = {}
    for name, terminal in steps:
        for written, expected in sessions(name):
            done = terminal.run(written)
            if done is None:
                continue
            shown = f"{written}\n{done.stdout}\n{done.stderr}\n{terminal.output()}"
            assert done.returncode == 0, shown
            if expected:  # (trailing spaces and blank lines, which a page does not keep, aside)
                printed = [line.rstrip() for line in done.stdout.splitlines() if line.strip()]
                assert printed == expected, shown
            outputs[written] = done.stdout
    return outputs


def test_the_quickstart_and_bring_your_own_agent_run_as_written(tmp_path: Path) -> None:
    """From a fresh folder: ``make run``, a second terminal talks to it (and the operating
    page's first session continues there), then the reader's own graph is served from its
    folder and talked to from its folder, and its test passes."""
    with terminals(tmp_path, 2) as (first, second):
        run_blocks([("quickstart-run", first), ("quickstart-talk", second)])
        wait_traces_exported(first.cwd / ".agentworker")
        said = run_blocks([("cli-session", second), ("stats-session", second)])
        history = said["agentworker history -c ws:me:1"]
        assert "please open a ticket about my broken printer" in history
        assert len(said["agentworker traces -c ws:me:1"].splitlines()) >= 4  # header, 3 turns
        said = run_blocks(
            [("quickstart-new", first), ("quickstart-greet", second), ("byo-session", second)]
        )
        assert json.loads(said["agentworker state -c ws:me:7"])["values"] == {"name": "Ada"}
        assert " passed" in said["python -m pytest -q"]


def test_the_langgraph_sdk_section_and_the_http_session_run_as_written(tmp_path: Path) -> None:
    """The reader saves the script where ``make run`` serves and runs it: LangGraph's own
    client streams a reply, meets a tool approval as an interrupt and resumes it. Against
    the same server (one start less for the suite), the HTTP API's curl session of
    docs/http-api.md."""
    with terminals(tmp_path, 2) as (first, second):
        run_blocks([("quickstart-run", first)])
        (second.cwd / "sdk_demo.py").write_text(block("sdk-script"))
        run_blocks([("sdk-session", second)])
        if shutil.which("curl") is None:  # shown as skipped: the SDK part passed
            pytest.skip("curl is not installed: the HTTP session of docs/http-api.md needs it")
        outputs = list(run_blocks([("http-session", second)]).values())
    accepted, view, health = (json.loads(out) for out in outputs)
    assert accepted["type"] == "accepted" and accepted["duplicate"] is False
    assert view["conversation_id"] == "api:me:2" and health["status"] == "ok"


def test_the_ticket_backlog_section_runs_as_written(tmp_path: Path) -> None:
    """The reader saves the export where ``make run`` serves and imports it: the summary
    as shown, then the ticket waiting for approval approved."""
    with terminals(tmp_path, 2) as (first, second):
        run_blocks([("quickstart-run", first)])
        (second.cwd / "backlog.csv").write_text(block("tickets-csv"))
        second.run(". .venv/bin/activate")
        run_blocks([("tickets-session", second)])


def test_the_openai_stub_serves_an_app_as_written(tmp_path: Path) -> None:
    with terminals(tmp_path, 3) as (first, second, third):
        for terminal in (first, second, third):
            terminal.run(". .venv/bin/activate")
        run_blocks([("stub-run", first), ("stub-serve", second)])
        assert "OPENAI_BASE_URL=http://127.0.0.1:" in first.output()
        said = third.run('agentworker send -c ws:me:8 "please open a ticket about the stub"')
        assert said is not None and said.returncode == 0, said
        assert said.stdout.startswith("Opened ticket 1: 'the stub'"), said.stdout


def test_the_stub_command_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "workers.cli", "stub", "openai", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 2, out
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr


def test_the_sandbox_examples_run_as_written(tmp_path: Path) -> None:
    """The sandbox, ``send --target sandbox`` and the AWS CLI's ``put-events`` with what it
    needs (region, endpoint, credentials); without the AWS CLI the same call through boto3,
    from the command's own arguments."""
    with terminals(tmp_path, 2) as (first, second):
        for terminal in (first, second):
            terminal.run(". .venv/bin/activate")  # as the page asks
        run_blocks([("sandbox-run", first), ("sandbox-send", second)])
        [(written, _)] = sessions("sandbox-aws")
        command = second.ports.substitute(written)
        if shutil.which("aws"):
            done = second.run(written)
            assert done is not None and done.returncode == 0, done
            assert json.loads(done.stdout)["FailedEntryCount"] == 0
        else:
            put_events_as_the_aws_cli_would(command)
        state = json.loads((first.cwd / ".agentworker" / "sandbox.json").read_text())
        assert "ticket:9" in replies_of(state, "ticket:9")


def _aws_words(command: str) -> tuple[dict[str, str], dict[str, str]]:
    """The environment assignments and the ``--option value`` pairs of an AWS CLI command."""
    words = shlex.split(command)
    env = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    assert words[0] == "aws"
    options = {words[i][2:]: words[i + 1] for i in range(len(words) - 1) if words[i][:2] == "--"}
    return env, options


def put_events_as_the_aws_cli_would(command: str) -> None:
    env, options = _aws_words(command)
    events = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=options["region"],
    ).client("events", endpoint_url=options["endpoint-url"])
    put = events.put_events(Entries=json.loads(options["entries"]))
    assert put["FailedEntryCount"] == 0


def replies_of(state: dict[str, str], conversation_id: str, timeout: float = 30.0) -> str:
    """The texts the sandbox's replies queue gets for ``conversation_id`` (until one)."""
    sqs = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client("sqs", endpoint_url=state["endpoint_url"])
    deadline, texts = time.monotonic() + timeout, list[str]()
    while time.monotonic() < deadline and not texts:
        got = sqs.receive_message(QueueUrl=state["replies_queue_url"], WaitTimeSeconds=1)
        for message in got.get("Messages", []):
            body = json.loads(message["Body"])
            payload = json.loads(body["Message"]) if "Message" in body else body
            if payload["conversation_id"] == conversation_id:
                texts.append(f"{conversation_id}: {payload['text']}")
    return "\n".join(texts)


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


def test_the_toml_keys_are_the_keys_the_app_file_may_set(tmp_path: Path) -> None:
    from workers.config import APP_KEYS, read_app_file

    listed = re.findall(r"^\| `(\w+)` \|", block("toml-keys"), re.M)
    assert sorted(listed) == sorted(APP_KEYS) and len(listed) == len(set(listed))
    example = tmp_path / "agentworker.toml"
    example.write_text(block("toml-example"))
    assert sorted(read_app_file(example)) == sorted(APP_KEYS)  # the example sets each key


def _number(word: str) -> int:
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return int(word) if word.isdigit() else words.index(word)


def test_the_function_figures_are_the_stacks() -> None:
    """Every count and list of the stack's functions: ``workers.stack.FUNCTIONS``, which
    ``serverless.yml`` defines and ``deploy/layers.py`` sizes."""
    from deploy.layers import FUNCTION_LAYERS
    from workers.packaging import EXCLUDED
    from workers.stack import FUNCTIONS

    yml = (REPO / "serverless.yml").read_text()
    section = yml.split("\nfunctions:\n", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^  (\w+):$", section, re.M)) == set(FUNCTIONS)
    aws = (REPO / "docs" / "aws.md").read_text()
    match = re.search(r"the (\w+) functions \(([^;]+);", aws)
    assert match, "docs/aws.md: 'the N functions (...;' not found"
    assert _number(match.group(1)) == len(FUNCTIONS)
    assert re.findall(r"`(\w+)`", match.group(2)) == list(FUNCTIONS)
    runtime_table = aws.split("| function | trigger |", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", runtime_table, re.M) == list(FUNCTIONS)
    sized: dict[str, str] = {}
    for row in block("function-sizes").splitlines()[2:]:
        names, layers = row.split("|")[1:3]
        for name in re.findall(r"`(\w+)`", names):
            sized[name] = layers.strip()
    assert sized == {f: " + ".join(FUNCTION_LAYERS[f]) for f in FUNCTIONS}
    bench = (REPO / "docs" / "benchmarks.md").read_text()
    excluded = re.search(r"without the (\w+) distributions `workers/packaging.py` excludes", bench)
    assert excluded and _number(excluded.group(1)) == len(EXCLUDED["turn"])


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page`` (outside code blocks)."""
    text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in DOCS:
        text = re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not this test's
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_quickstart_then_the_reference() -> None:
    """Its quickstart fits a screen; its sections are the user's, in the user's order."""
    text = README.read_text()
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections == [
        "Quickstart",
        "Bring your own agent",
        "Use the LangGraph SDK",
        "Put it in Slack",
        "Answer a ticket backlog",
        "Models",
        "Reference",
    ]
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert len(quickstart.strip().splitlines()) <= 50
    first_bare = text.index("\n$ agentworker ")
    assert text.index("$ . .venv/bin/activate") < first_bare  # the venv before the command


def test_the_exit_codes_table_lists_every_code_the_cli_returns() -> None:
    """Every ``return N`` / ``sys.exit(N)`` of the CLI's commands is in the table, and every
    row of the table is a code the CLI returns."""
    root = Path(__file__).parents[2]
    sources = [
        root / "workers" / "cli.py",
        *(root / "workers").glob("*/command.py"),
        *(root / "workers").glob("*/stub_command.py"),
    ]
    returned = {
        int(code)
        for source in sources
        for code in re.findall(r"\b(?:return|sys\.exit\()\s*(\d+)\b", source.read_text())
    }
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", block("exit-codes"), re.M)}
    assert returned == listed, (sorted(returned), sorted(listed))
