"""A streamed run whose client leaves before it ends, through the published ``langgraph-sdk``
client: ``on_disconnect="cancel"`` (what the JavaScript SDK's ``useStream`` asks, so that its
``stop()`` stops the run) cancels it; the default, ``continue``, lets it end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client

from tests.functional.server_process import DEV_TOKEN, ServerProcess

WAIT = 20.0


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server whose turns work a while (six progress notes on the custom stream)."""
    env = {"AGENTWORKER_GRAPH": "tests.langgraph_apps.slow_stream:graph"}
    with ServerProcess(tmp_path_factory.mktemp("disconnect"), env=env) as srv:
        yield get_sync_client(url=srv.url, api_key=DEV_TOKEN)


def leave_after_first_step(sdk: Any, thread_id: str, **kwargs: Any) -> str:
    """Stream a run until its first progress note, then close the stream; the run's id."""
    [assistant] = sdk.assistants.search()
    sdk.threads.create(thread_id=thread_id)
    run_id = ""
    stream = sdk.runs.stream(
        thread_id,
        assistant["assistant_id"],
        input={"messages": [{"role": "user", "content": "work"}]},
        stream_mode=["custom"],
        **kwargs,
    )
    for part in stream:
        if part.event == "metadata":
            run_id = part.data["run_id"]
        if part.event == "custom":
            break
    stream.close()  # what a browser's abort does: the connection goes
    assert run_id
    return run_id


def status_once_ended(sdk: Any, thread_id: str, run_id: str) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        status: str = sdk.runs.get(thread_id, run_id)["status"]
        if status not in ("pending", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still going after {WAIT}s")


def test_a_run_whose_client_leaves_is_cancelled_when_it_asked(sdk: Any) -> None:
    run_id = leave_after_first_step(sdk, "leave-cancel", on_disconnect="cancel")
    assert status_once_ended(sdk, "leave-cancel", run_id) == "interrupted"
    state = sdk.threads.get_state("leave-cancel")
    assert not [m for m in state["values"].get("messages", []) if m["type"] == "ai"]


def test_a_run_whose_client_leaves_goes_on_by_default(sdk: Any) -> None:
    run_id = leave_after_first_step(sdk, "leave-continue")
    assert status_once_ended(sdk, "leave-continue", run_id) == "success"
    state = sdk.threads.get_state("leave-continue")
    [reply] = [m for m in state["values"]["messages"] if m["type"] == "ai"]
    assert reply["content"].startswith("done after 6 steps")


def test_on_disconnect_takes_cancel_or_continue(sdk: Any) -> None:
    sdk.threads.create(thread_id="leave-bad")
    with pytest.raises(httpx.HTTPStatusError) as refused:
        sdk.runs.wait(
            "leave-bad",
            sdk.assistants.search()[0]["assistant_id"],
            input={"messages": [{"role": "user", "content": "work"}]},
            on_disconnect="later",
        )
    assert refused.value.response.status_code == 422
