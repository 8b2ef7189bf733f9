"""Run ``agentworker serve`` as a real process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

DEV_TOKEN = "dev-token-for-tests-0123456789"
"""The development token the servers of the tests are started with."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_up(
    proc: subprocess.Popen[bytes],
    log: Path,
    url: str,
    *,
    what: str,
    timeout: float,
    stop: Callable[[], None],
) -> None:
    """Wait until ``url`` answers 200; ``RuntimeError`` with the end of ``log`` when the
    process exits first, or when ``timeout`` passes (then ``stop``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop()
    raise RuntimeError(f"{what} did not start:\n{log.read_text()[-3000:]}")


class ServerProcess:
    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        command: list[str] | None = None,
        args: list[str] | None = None,
        subcommand: tuple[str, ...] = ("serve",),
    ) -> None:
        self.state_dir = state_dir
        self.command = command or ["-m", "workers.cli"]
        """How to run the CLI (a wrapper module may stand in for ``-m workers.cli``)."""
        self.cwd = cwd
        self.args = list(args or [])
        """More arguments of ``serve``."""
        self.subcommand = subcommand
        """The command that serves (``serve``, or ``slack --socket-mode``)."""
        self.port = port or free_port()
        self.env = {
            "AGENTWORKER_TRACING": "false",
            "AGENTWORKER_DEV_TOKEN": DEV_TOKEN,
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / f"server-{self.port}.log"

    @property
    def auth(self) -> dict[str, str]:
        """The headers that authenticate a request (the development token)."""
        return {"authorization": f"Bearer {self.env['AGENTWORKER_DEV_TOKEN']}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def ask(
        self, cid: str, text: str, headers: dict[str, str] | None = None, wait: float = 10.0
    ) -> dict[str, Any]:
        """Send ``text`` into the conversation and return the answer that came within
        ``wait`` seconds (``AssertionError`` when none did)."""
        sent = httpx.post(
            f"{self.url}/v1/conversations/{cid}/messages",
            params={"wait": str(wait)},
            json={"text": text},
            headers=headers or self.auth,
            timeout=wait + 5,
        )
        assert sent.status_code == 200, sent.text
        answer: dict[str, Any] = sent.json()["answer"]
        return answer

    def start(self, timeout: float = 60.0) -> ServerProcess:
        env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", **self.env}
        cmd = [
            sys.executable,
            *self.command,
            *self.subcommand,
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            *self.args,
        ]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.env.get("AGENTWORKER_TRACING") == "true" and not self.env.get(
            "AGENTWORKER_MLFLOW_TRACKING_URI"
        ):
            from tests.mlflow_store import seed_store

            seed_store(self.state_dir)  # a migrated store: the exporter does not migrate one
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        wait_up(
            self.proc,
            self.log,
            f"{self.url}/healthz",
            what="server",
            timeout=timeout,
            stop=self.stop,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, no clean shutdown."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def mlflow_server_process(state_dir: Path, timeout: float = 120.0) -> Iterator[str]:
    """A real ``mlflow server`` (full MLflow, from this venv) on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = state_dir / "mlflow-server.log"
    from tests.mlflow_store import migrated_store

    shutil.copy(migrated_store(), state_dir / "mlflow-server.db")  # migrated: a faster start
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow-server.db'}",
                "--default-artifact-root", str(state_dir / "mlflow-artifacts"),
                "--workers", "1",  # one is plenty for a test, and starts sooner
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # No job runner: its half a dozen consumer processes each import MLflow (seconds
            # of CPU) for jobs (scorers, rollups) that no test starts.
            env={
                **os.environ,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited:\n{log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def traces_of(tracking_uri: str, conversation_id: str) -> list[Any]:
    """The traces a tracking server holds for ``conversation_id`` (experiment agentworker)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("agentworker")
    assert experiment is not None, "no trace reached the tracking server"
    found: list[Any] = client.search_traces(
        locations=[experiment.experiment_id],
        filter_string=f"tags.conversation_id = '{conversation_id}'",
    )
    return found


def wait_traces_exported(state_dir: Path, timeout: float = 60.0) -> None:
    """Until the server's exporter process has written every spooled trace (and feedback)
    into MLflow: reading the store before its first export could race it creating the
    database."""
    from workers.tracing.spool import CLOSED, OPEN, segments

    spool = state_dir / "trace-spool"
    deadline = time.monotonic() + timeout
    while (
        segments(spool, CLOSED) or segments(spool, OPEN) or not (state_dir / "mlflow.db").exists()
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"traces not exported after {timeout}s: {list(spool.iterdir())}")
        time.sleep(0.05)


def assessments(
    state_dir: Path,
    where: str,
    *,
    until: Callable[[list[Any]], bool] = bool,
    timeout: float = 20,
) -> list[Any]:
    """The ``user_feedback`` assessments of the one trace ``where`` finds (an MLflow trace
    filter: ``tags.turn_id = '...'``) in the server's MLflow store, once ``until`` holds of
    them (by default: there are some; tracing records feedback after the answer)."""
    import mlflow

    wait_traces_exported(state_dir)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{state_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("agentworker")
    assert experiment is not None
    deadline = time.monotonic() + timeout
    while True:
        # the trace itself may land a moment after the spool says exported (a loaded run)
        traces = client.search_traces(locations=[experiment.experiment_id], filter_string=where)
        assert len(traces) <= 1, f"{len(traces)} traces match {where}"
        found = [a for t in traces for a in t.info.assessments if a.name == "user_feedback"]
        if (traces and until(found)) or time.monotonic() > deadline:
            assert traces, f"no trace matches {where} after {timeout} s"
            return found
        time.sleep(0.2)
