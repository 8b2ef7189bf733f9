"""The two servers of LangGraph's Agent Server API that ``langgraph-sdk`` is run against:
``agentworker serve`` and LangGraph's own ``langgraph dev`` (from its venv,
``.venv-langgraph``, built by ``make compare`` and ``make bench``), both serving the graphs of
one ``langgraph.json``, so a graph has the same ``graph_id`` on either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.functional.server_process import DEV_TOKEN, ServerProcess, free_port, wait_up

APPS = Path(__file__).resolve().parents[1] / "langgraph_apps"
GRAPHS = {
    "approval": APPS / "approval_agent.py",
    "slow": APPS / "slow_stream.py",
}
"""The graphs both servers serve (plain LangGraph apps, no agentworker import), by name."""

LANGGRAPH_DEV = Path(__file__).resolve().parents[2] / ".venv-langgraph" / "bin" / "langgraph"
"""The ``langgraph`` command of the venv ``make compare`` builds."""

ServerKind = Literal["agentworker", "langgraph-dev"]

_OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # the CLI's usage report
    "LANGGRAPH_NO_VERSION_CHECK": "true",  # the API server's look-up of its latest release
    "LANGSMITH_TRACING": "false",
}
"""What keeps ``langgraph dev`` offline (read in langgraph-cli 0.4.40 and langgraph-api
0.16.7): with no LangSmith key or license set, its metadata loop does not start either, and
``--no-browser`` skips the Studio page (and its organization look-up)."""


def write_project(directory: Path) -> Path:
    """A ``langgraph.json`` naming :data:`GRAPHS` by their files; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "dependencies": ["."],
        "graphs": {name: f"{path}:graph" for name, path in GRAPHS.items()},
    }
    path = directory / "langgraph.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


class LangGraphDevProcess:
    """``langgraph dev --no-browser --no-reload`` on a free loopback port, serving
    ``project`` (a ``langgraph.json``), offline; its log in the project's directory.
    ``jobs``: ``--n-jobs-per-worker`` (runs at once; ``langgraph dev`` runs one unless told)."""

    def __init__(
        self,
        project: Path,
        *,
        executable: Path = LANGGRAPH_DEV,
        port: int | None = None,
        jobs: int | None = None,
    ) -> None:
        self.project = project
        self.executable = executable
        self.port = port or free_port()
        self.jobs = jobs
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = project.parent / f"langgraph-dev-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> LangGraphDevProcess:
        if not self.executable.exists():
            raise RuntimeError(f"{self.executable} is missing: `make compare` builds its venv")
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_", "PYTHON"))
        }
        cmd = [
            str(self.executable),
            "dev",
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--config",
            str(self.project),
        ]
        if self.jobs is not None:
            cmd += ["--n-jobs-per-worker", str(self.jobs)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                env={**inherited, **_OFFLINE_ENV},
                cwd=self.project.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"{self.url}/ok"
        wait_up(self.proc, self.log, url, what="langgraph dev", timeout=timeout, stop=self.stop)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LangGraphDevProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def agentworker_serving(
    state_dir: Path, project: Path, graph: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """``agentworker serve`` of ``graph`` in ``project`` (not started)."""
    return ServerProcess(state_dir, env=env, args=["--config", str(project), "--graph", graph])


class ServedGraphs:
    """The graphs of :data:`GRAPHS` behind one kind of server: one ``langgraph dev`` serves
    them all; ``agentworker serve`` serves one graph a process, each started when first
    asked for (with the development token, which the client sends as its API key)."""

    def __init__(self, kind: ServerKind, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.project = write_project(directory / "project")
        self._servers: dict[str, ServerProcess] = {}
        self._dev: LangGraphDevProcess | None = None

    def sdk(self, graph: str) -> Any:
        """A sync ``langgraph-sdk`` client of the server that serves ``graph``."""
        from langgraph_sdk import get_sync_client

        if self.kind == "langgraph-dev":
            if self._dev is None:
                self._dev = LangGraphDevProcess(self.project).start()
            return get_sync_client(url=self._dev.url, api_key=None)
        if graph not in self._servers:
            state = self.directory / f"agentworker-{graph}"
            self._servers[graph] = agentworker_serving(state, self.project, graph).start()
        return get_sync_client(url=self._servers[graph].url, api_key=DEV_TOKEN)

    def url(self, graph: str) -> str:
        """The base URL of the server of ``graph`` (started)."""
        self.sdk(graph)
        return self._dev.url if self._dev is not None else self._servers[graph].url

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        if self._dev is not None:
            self._dev.stop()
