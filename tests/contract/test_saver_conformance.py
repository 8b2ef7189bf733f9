"""LangGraph's checkpoint conformance suite (``langgraph-checkpoint-conformance``) against
:class:`StagedCheckpointSaver`, and what its ``list()`` selects from the checkpoints it keeps.

The saver keeps only the latest checkpoint of each namespace (by design: all a resume needs),
so the suite's tests that read an earlier checkpoint fail. They are listed below by name with
their cause; every other test of the suite must pass, and a listed one that starts passing,
or fails otherwise than on an assertion, fails this module too: the list stays true.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    empty_checkpoint,
)
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from workers.agent.saver import STAGE_KEY, StagedCheckpointSaver

README = Path(__file__).parents[2] / "README.md"

_EARLIER = "latest-only history: an earlier checkpoint of the thread is not kept"
EXPECTED_FAILURES: dict[str, str] = {
    "test_put_multiple_checkpoints_same_thread": f"{_EARLIER} (read back by its id)",
    "test_put_incremental_channel_update": f"{_EARLIER} (the first one read back by its id)",
    "test_get_tuple_specific_checkpoint_id": f"{_EARLIER} (read back by its id)",
    "test_list_all": f"{_EARLIER} (1 listed, 4 expected)",
    "test_list_by_thread": f"{_EARLIER} (1 listed, 4 expected)",
    "test_list_ordering": f"{_EARLIER} (1 listed, 4 expected in order)",
    "test_list_metadata_filter_single_key": f"{_EARLIER} (the 2 matches are earlier ones)",
    "test_list_metadata_filter_step": f"{_EARLIER} (the match is an earlier one)",
    "test_list_metadata_custom_keys": f"{_EARLIER} (the match is the earlier one)",
    "test_list_combined_thread_and_filter": f"{_EARLIER} (1 of the 2 matches is kept)",
    "test_list_before": f"{_EARLIER} (every checkpoint before the cursor is an earlier one)",
    "test_list_limit_plus_before": f"{_EARLIER} (the page before the latest is earlier ones)",
    "test_list_limit": f"{_EARLIER} (limit=2 finds 1)",
}
"""The suite's tests (release 0.0.2) that :class:`StagedCheckpointSaver` fails, and why."""


class _StagedPerThread(StagedCheckpointSaver):
    """The saver as a turn uses it, for threads the suite makes up: each thread is staged
    empty on first use, as the runner stages a new conversation's first turn (the runner
    stages every turn itself, so the saver refuses an unstaged key)."""

    def _staged(self, config: RunnableConfig) -> None:
        thread = str(config["configurable"]["thread_id"])
        try:
            self.checkpoint_id(thread)
        except KeyError:
            self.stage(thread, None)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        self._staged(config)
        return super().get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        if config is not None:
            self._staged(config)
        return super().list(config, filter=filter, before=before, limit=limit)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._staged(config)
        return super().put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._staged(config)
        super().put_writes(config, writes, task_id, task_path)


@checkpointer_test(name="StagedCheckpointSaver")
async def _staged_saver() -> AsyncIterator[StagedCheckpointSaver]:
    yield _StagedPerThread()


@pytest.fixture(scope="module")
def suite() -> dict[str, str | None]:
    """Each test of the suite by name: ``None`` if it passed, else its traceback."""
    results: dict[str, str | None] = {}

    def record(capability: str, name: str, passed: bool, error: str | None) -> None:
        assert name not in results, f"two tests named {name!r}"
        results[name] = None if passed else (error or "failed without a traceback")

    asyncio.run(validate(_staged_saver, progress=ProgressCallbacks(on_test_result=record)))
    return results


def test_the_suite_fails_only_where_earlier_checkpoints_are_read(
    suite: dict[str, str | None],
) -> None:
    missing = sorted(set(EXPECTED_FAILURES) - set(suite))
    assert not missing, f"expected failures the suite no longer has: {missing}"
    unexpected = {
        name: error for name, error in suite.items() if error and name not in EXPECTED_FAILURES
    }
    assert not unexpected, "new failures:\n" + "\n".join(
        f"{name}:\n{error}" for name, error in unexpected.items()
    )
    passing = sorted(name for name in EXPECTED_FAILURES if suite[name] is None)
    assert not passing, f"expected failures that pass now (remove them from the list): {passing}"
    crashed = {
        name: error
        for name in EXPECTED_FAILURES
        if (error := suite[name]) and _raised(error) != "AssertionError"
    }
    assert not crashed, "expected failures that raise instead of asserting:\n" + "\n".join(
        f"{name}:\n{error}" for name, error in crashed.items()
    )


def _raised(error: str) -> str:
    """The exception type a formatted traceback ends in (its first unindented line after
    the frames; the message may run over several lines)."""
    last = error.rsplit("Traceback (most recent call last):", 1)[-1]
    line = next(line for line in last.splitlines() if line and not line.startswith(" "))
    return line.split(":", 1)[0]


def test_the_readme_states_the_result(suite: dict[str, str | None]) -> None:
    passed = sum(error is None for error in suite.values())
    stated = re.search(r"conformance suite passes (\d+) of its (\d+)", README.read_text())
    assert stated, "README.md: the conformance result is not stated"
    assert (int(stated[1]), int(stated[2])) == (passed, len(suite))


# what list() selects from the checkpoints kept: the suite cannot show it, its fixtures all
# need history --------------------------------------------------------------------------------

THREAD = "conversation-1"
ROOT = "1f0-0002"
CHILD = "1f0-0003"


def _checkpoint(checkpoint_id: str) -> Checkpoint:
    return {**empty_checkpoint(), "id": checkpoint_id}


@pytest.fixture
def saver() -> StagedCheckpointSaver:
    """A turn staged as the runner stages one, holding a root and a subgraph checkpoint."""
    saver = StagedCheckpointSaver()
    saver.stage("turn-1", None)
    base = {"thread_id": THREAD, STAGE_KEY: "turn-1"}
    saver.put(
        {"configurable": {**base, "checkpoint_ns": ""}},
        _checkpoint(ROOT),
        {"source": "loop", "step": 3, "parents": {}, "run_id": "run-7"},
        {},
    )
    saver.put(
        {"configurable": {**base, "checkpoint_ns": "child:1"}},
        _checkpoint(CHILD),
        {"source": "input", "step": 1, "parents": {}},
        {},
    )
    return saver


def _config(checkpoint_ns: str | None = "", checkpoint_id: str | None = None) -> RunnableConfig:
    conf: dict[str, Any] = {"thread_id": THREAD, STAGE_KEY: "turn-1"}
    if checkpoint_ns is not None:
        conf["checkpoint_ns"] = checkpoint_ns
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


@pytest.mark.parametrize(
    ("config", "options", "listed"),
    [
        (_config(), {}, [ROOT]),
        (_config("child:1"), {}, [CHILD]),
        (_config(None), {}, [ROOT, CHILD]),
        (_config(None), {"limit": 1}, [ROOT]),
        (_config(None), {"limit": 0}, []),
        (_config(checkpoint_id=ROOT), {}, [ROOT]),
        (_config(checkpoint_id="1f0-0001"), {}, []),
        (_config(), {"filter": {"source": "loop"}}, [ROOT]),
        (_config(), {"filter": {"source": "loop", "step": 3, "run_id": "run-7"}}, [ROOT]),
        (_config(), {"filter": {"source": "loop", "step": 2}}, []),
        (_config(), {"filter": {"absent": None, "source": "loop"}}, [ROOT]),
        (_config(), {"filter": {"source": "update"}}, []),
        (_config(None), {"filter": {"source": "input"}}, [CHILD]),
        (_config(None), {"before": _config(checkpoint_id=CHILD)}, [ROOT]),
        (_config(None), {"before": _config(checkpoint_id="1f0-0004")}, [ROOT, CHILD]),
        (_config(), {"before": _config(checkpoint_id=ROOT)}, []),
        (None, {}, []),
    ],
)
def test_list_selects_from_what_is_kept(
    saver: StagedCheckpointSaver,
    config: RunnableConfig | None,
    options: dict[str, Any],
    listed: list[str],
) -> None:
    found = [t.checkpoint["id"] for t in saver.list(config, **options)]
    assert found == listed

    async def alisted() -> list[str]:
        return [t.checkpoint["id"] async for t in saver.alist(config, **options)]

    assert asyncio.run(alisted()) == listed
