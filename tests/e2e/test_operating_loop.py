"""The README's operating loop, command by command, against a real server with tracing on:
chat, rate the reply, list its trace, draft an eval case from the rating, push and promote a
prompt, evaluate under two aliases, compare the runs, promote, read the stats.

Two substitutions keep it fast: the eval runs a few cases of ``evals/support.jsonl``, not
all of them, and the files the session names (``my_prompt.md``, ``evals/drafts.jsonl``) are
written under the test's directory (``echo`` writes ``my_prompt.md`` there). Everything
else runs as written."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_readme import sessions
from tests.functional.eval_env import mlflow_template as mlflow_template  # noqa: PLC0414
from tests.functional.eval_env import run_id_of
from tests.functional.server_process import DEV_TOKEN, ServerProcess, wait_traces_exported
from workers.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_loop_runs_as_written(
    tmp_path: Path,
    mlflow_template: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(mlflow_template, state / "mlflow.db")  # migrated already: seconds saved
    subset = tmp_path / "support.jsonl"
    lines = (REPO / "evals" / "support.jsonl").read_text().splitlines()
    subset.write_text("\n".join(lines[:4]) + "\n")
    mine = tmp_path / "my_prompt.md"
    drafts = tmp_path / "drafts.jsonl"
    steps = sessions("loop-session")
    assert len(steps) == 14
    runs: list[str] = []
    outputs: dict[str, str] = {}
    with ServerProcess(state, env={"AGENTWORKER_TRACING": "true"}) as srv:
        monkeypatch.chdir(REPO)  # the session's paths are the repository's
        monkeypatch.setenv("AGENTWORKER_STATE_DIR", str(state))
        monkeypatch.setenv("AGENTWORKER_URL", srv.url)
        monkeypatch.setenv("AGENTWORKER_TOKEN", DEV_TOKEN)
        for written, _ in steps:
            command = (
                written.replace("evals/support.jsonl", str(subset))
                .replace("evals/drafts.jsonl", str(drafts))
                .replace("my_prompt.md", str(mine))
                .replace("RUN_A RUN_B", " ".join(runs))
            )
            if command.startswith("echo "):  # writes the prompt file it pushes next
                assert command.endswith(f"> {mine}"), written
                subprocess.run(["bash", "-c", command], check=True)
                continue
            words = shlex.split(command)
            with monkeypatch.context() as env:
                while "=" in words[0]:
                    name, value = words.pop(0).split("=", 1)
                    env.setenv(name, value)
                assert words[0] == "agentworker", written
                if words[1] in ("traces", "eval", "stats"):
                    wait_traces_exported(state)  # the rating and the trace reach MLflow
                capsys.readouterr()
                code = main(words[1:])
                out = capsys.readouterr().out
            assert code == 0, f"{written}\n{out}"
            outputs[written] = out
            if "mlflow run " in out and "--compare" not in command:
                runs.append(run_id_of(out))
    said = list(outputs.values())
    assert "Reset" in said[0] or "password" in said[0].lower()
    assert said[1].startswith("rated ") and "-1" in said[1]
    assert len(said[2].strip().splitlines()) >= 2  # a header and the turn's trace
    [draft] = [json.loads(line) for line in drafts.read_text().splitlines()]
    assert draft["review"] is True
    assert "reset my password" in json.dumps(draft)
    assert len(runs) == 2
    compared = said[10]
    assert "prompt_version: 1 -> 2" in compared and "delta" in compared
    assert "turns" in said[12]
