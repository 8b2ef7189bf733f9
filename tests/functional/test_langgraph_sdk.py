"""LangGraph's own Python client (``langgraph-sdk``, unmodified) against a real Agent Server.

The tests that take ``served`` are the calls both servers serve, run against
``agentworker serve`` (``make test``) or LangGraph's ``langgraph dev`` (``make compare``:
``--sdk-server=langgraph-dev``) with the same plain LangGraph apps: the assistant, threads,
runs that wait, stream, run in the background and are joined, the stream modes, an
``interrupt()`` answered with ``Command(resume=...)``, the multitask strategies, a cancel.
Where the two differ they assert what both do; docs/http-api.md lists the differences.

The tests marked ``agentworker_only`` check what is ours: the support agent's tool
approvals, identities (another caller's thread is a 404), our error shapes and the stricter
answers where ``langgraph dev`` differs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import NotFoundError

from tests.functional.agent_servers import ServedGraphs
from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import DEV_TOKEN, ServerProcess

ALICE = hs256(claims("alice", tenant="acme"))
BOB = hs256(claims("bob", tenant="acme"))
SUPPORT = "support_agent"
APPROVAL = "approval"
"""tests/langgraph_apps/approval_agent.py: "look up X" calls a tool that writes progress
notes, "delete X" a tool that asks for an approval, anything else is echoed."""
SLOW = "slow"
"""tests/langgraph_apps/slow_stream.py: six progress notes 0.25 s apart, then its answer."""

ours = pytest.mark.agentworker_only


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def last_text(values: dict[str, Any]) -> str:
    return str(values["messages"][-1]["content"])


def asked(interrupts: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """An interrupt's id and value (``langgraph dev`` adds ``response_schema`` to some)."""
    return [(i["id"], i["value"]) for i in interrupts]


def ai_said(values: dict[str, Any]) -> list[str]:
    return [m["content"] for m in values["messages"] if m["type"] == "ai"]


# the calls both servers serve -----------------------------------------------------------------


def test_the_assistant_is_the_served_graph(served: ServedGraphs) -> None:
    sdk = served.sdk(APPROVAL)
    [assistant] = [a for a in sdk.assistants.search() if a["graph_id"] == APPROVAL]
    assert sdk.assistants.get(assistant["assistant_id"]) == assistant
    drawing = sdk.assistants.get_graph(assistant["assistant_id"])
    assert {"__start__", "agent", "tools", "__end__"} == {n["id"] for n in drawing["nodes"]}
    assert sdk.assistants.get_graph(APPROVAL) == drawing  # also by its graph_id
    schemas = sdk.assistants.get_schemas(assistant["assistant_id"])
    assert schemas["graph_id"] == APPROVAL and "messages" in str(schemas["input_schema"])
    with pytest.raises(NotFoundError):
        sdk.assistants.get("00000000-0000-4000-8000-000000000000")


def test_a_thread_through_its_runs(served: ServedGraphs) -> None:
    """Threads made, read, searched, updated and deleted; runs that wait, one that stops
    at an ``interrupt()`` answered by the interrupt's id, a background run joined."""
    sdk = served.sdk(APPROVAL)
    thread = sdk.threads.create(metadata={"customer": "ada"})
    tid = thread["thread_id"]
    assert thread["status"] == "idle" and thread["metadata"]["customer"] == "ada"
    assert sdk.threads.get(tid)["thread_id"] == tid

    found = sdk.runs.wait(tid, APPROVAL, input=user("look up refunds"))
    assert last_text(found) == "Done: the handbook's page on refunds", found
    stopped = sdk.runs.wait(tid, APPROVAL, input=user("delete ada"))
    [(question_id, question)] = asked(stopped["__interrupt__"])
    assert question == {"tool": "delete_record", "args": {"name": "ada"}, "question": "Delete?"}
    assert sdk.threads.get(tid)["status"] == "interrupted"
    state = sdk.threads.get_state(tid)
    assert asked(state["interrupts"]) == [(question_id, question)] and state["next"] == ["tools"]
    done = sdk.runs.wait(tid, APPROVAL, command={"resume": {question_id: "yes"}})
    assert "__interrupt__" not in done and last_text(done) == "Done: deleted ada", done
    assert sdk.threads.get(tid)["status"] == "idle"

    runs = sdk.runs.list(tid)
    assert [r["status"] for r in runs] == ["success", "success", "success"]
    assert sdk.runs.get(tid, runs[0]["run_id"])["run_id"] == runs[0]["run_id"]
    latest = sdk.threads.get_history(tid)[0]  # newest first: the state the runs left
    assert latest["values"]["messages"][-1] == done["messages"][-1]

    background = sdk.runs.create(tid, APPROVAL, input=user("what are your opening hours?"))
    assert background["status"] in ("pending", "running", "success")
    joined = sdk.runs.join(tid, background["run_id"])
    assert last_text(joined) == "You said: what are your opening hours?"
    assert sdk.runs.get(tid, background["run_id"])["status"] == "success"

    updated = sdk.threads.update(tid, metadata={"plan": "pro"})
    assert updated["metadata"]["customer"] == "ada" and updated["metadata"]["plan"] == "pro"
    found_threads = sdk.threads.search(metadata={"customer": "ada"})
    assert tid in [t["thread_id"] for t in found_threads]

    sdk.threads.delete(tid)
    with pytest.raises(NotFoundError):
        sdk.threads.get(tid)


def test_a_run_creates_its_thread_when_asked(served: ServedGraphs) -> None:
    sdk = served.sdk(APPROVAL)
    tid = "6f1c1f8e-8a4b-4a57-9d3a-7c0e5e2f0b11"
    with pytest.raises(httpx.HTTPStatusError) as missing:  # wait raises httpx's own error
        sdk.runs.wait(tid, APPROVAL, input=user("hello"))
    assert missing.value.response.status_code == 404
    answered = sdk.runs.wait(tid, APPROVAL, input=user("hello"), if_not_exists="create")
    assert last_text(answered) == "You said: hello"
    assert sdk.threads.get(tid)["thread_id"] == tid
    stateless = sdk.runs.wait(None, APPROVAL, input=user("hello"))
    assert last_text(stateless) == "You said: hello"


def test_a_streamed_run_sends_what_langgraphs_clients_read(served: ServedGraphs) -> None:
    """``runs.stream`` with ``values``, ``messages-tuple``, ``updates``, ``custom``: the
    metadata first, the state with the new message, the reply's text under its message's id
    and node, each node's update in order, the tool's progress notes; then an interrupt in
    ``updates`` and ``values``, ``debug``'s task results, and a resume."""
    sdk = served.sdk(APPROVAL)
    tid = sdk.threads.create()["thread_id"]
    modes = ["values", "messages-tuple", "updates", "custom"]
    parts = list(sdk.runs.stream(tid, APPROVAL, input=user("look up refunds"), stream_mode=modes))
    assert parts[0].event == "metadata" and parts[0].data["run_id"]
    values = [p.data for p in parts if p.event == "values"]
    assert values[0]["messages"][-1]["content"] == "look up refunds"
    final = values[-1]
    reply = final["messages"][-1]
    assert reply["content"] == "Done: the handbook's page on refunds"
    pieces = [p.data for p in parts if p.event == "messages"]
    assert all(meta["thread_id"] == tid and meta["langgraph_node"] for _, meta in pieces)
    ai_pieces = [chunk for chunk, _ in pieces if chunk["type"] == "AIMessageChunk"]
    assert {c["id"] for c in ai_pieces} <= {m["id"] for m in final["messages"]}
    assert "".join(c["content"] for c in ai_pieces if c["id"] == reply["id"]) == reply["content"]
    nodes = [p.data for p in parts if p.event == "updates"]
    assert [list(u) for u in nodes] == [["agent"], ["tools"], ["agent"]]
    assert nodes[0]["agent"]["messages"][0]["tool_calls"][0]["name"] == "lookup"
    assert nodes[-1]["agent"]["messages"][-1]["content"] == reply["content"]
    assert [p.data for p in parts if p.event == "custom"] == [
        {"tool": "lookup", "step": "searching"},
        {"tool": "lookup", "step": "reading"},
    ]
    assert sdk.runs.get(tid, parts[0].data["run_id"])["status"] == "success"

    stopping = list(
        sdk.runs.stream(tid, APPROVAL, input=user("delete ada"), stream_mode=[*modes, "debug"])
    )
    update = [p.data for p in stopping if p.event == "updates"][-1]
    [(question_id, question)] = asked(update["__interrupt__"])
    assert question["tool"] == "delete_record"
    assert asked([p.data for p in stopping if p.event == "values"][-1]["__interrupt__"]) == [
        (question_id, question)
    ]
    results = [p.data for p in stopping if p.event == "debug" and p.data["type"] == "task_result"]
    assert results[0]["payload"]["name"] == "agent"  # the node that asked for the tool
    resumed = list(sdk.runs.stream(tid, APPROVAL, command={"resume": True}))
    assert resumed[0].event == "metadata"
    assert last_text(resumed[-1].data) == "Done: deleted ada"


def test_every_quick_streamed_run_sends_its_reply(served: ServedGraphs) -> None:
    """A run over before its stream looked still streams its reply's pieces: agentworker's
    stream skipped to the end then, in about one quick run of eight on this machine (this
    test, at 50 runs, caught it in half its tries; ``tests/unit/test_sse.py`` is the one that
    always does, 200 runs of bench/langgraph_dev.py's kind too)."""
    sdk = served.sdk(APPROVAL)
    for n in range(20):
        tid = sdk.threads.create()["thread_id"]
        modes = ["values", "messages-tuple"]
        parts = list(sdk.runs.stream(tid, APPROVAL, input=user(f"hi {n}"), stream_mode=modes))
        said = "".join(p.data[0]["content"] for p in parts if p.event == "messages")
        assert said == f"You said: hi {n}", [p.event for p in parts]


def test_a_run_stream_dropped_mid_run_is_joined_with_nothing_lost(served: ServedGraphs) -> None:
    """A client drops a resumable streamed run after two progress notes; ``join_stream``
    with the last event's id gets the other four and the end, none twice."""
    sdk = served.sdk(SLOW)
    tid = sdk.threads.create()["thread_id"]
    seen = []
    stream = sdk.runs.stream(
        tid, SLOW, input=user("go"), stream_mode=["custom", "values"], stream_resumable=True
    )
    for part in stream:
        seen.append(part)
        if len([p for p in seen if p.event == "custom"]) == 2:
            break
    stream.close()  # the client goes away mid-run
    assert all(p.id for p in seen)
    run_id = seen[0].data["run_id"]
    rest = list(sdk.runs.join_stream(tid, run_id, last_event_id=seen[-1].id))
    steps = [p.data["step"] for p in seen + rest if p.event == "custom"]
    assert steps == list(range(6))  # none lost, none twice
    assert rest[-1].event == "values"
    assert last_text(rest[-1].data) == "done after 6 steps: go"


def busy_thread(sdk: Any) -> tuple[str, str]:
    """A thread whose run works (it sent its first progress note): its id, the run's."""
    tid = sdk.threads.create()["thread_id"]
    first = sdk.runs.create(tid, SLOW, input=user("first"), stream_mode=["custom"])
    for part in sdk.runs.join_stream(tid, first["run_id"], stream_mode=["custom"]):
        if part.event == "custom":
            break  # its turn runs
    return tid, first["run_id"]


def test_double_texting_follows_the_multitask_strategy(served: ServedGraphs) -> None:
    """A second run while the first runs, under each ``multitask_strategy``: ``reject``
    is refused, ``enqueue`` waits its turn, ``interrupt`` and ``rollback`` cut the first
    off (none of its answer is kept)."""
    sdk = served.sdk(SLOW)
    tid, first = busy_thread(sdk)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        sdk.runs.wait(tid, SLOW, input=user("second"), multitask_strategy="reject")
    assert refused.value.response.status_code == 409
    assert last_text(sdk.runs.join(tid, first)) == "done after 6 steps: first"

    tid, first = busy_thread(sdk)
    queued = sdk.runs.wait(tid, SLOW, input=user("second"), multitask_strategy="enqueue")
    assert ai_said(queued) == ["done after 6 steps: first", "done after 6 steps: second"]
    assert sdk.runs.get(tid, first)["status"] == "success"

    for strategy in ("interrupt", "rollback"):
        tid, first = busy_thread(sdk)
        cut = sdk.runs.wait(tid, SLOW, input=user("second"), multitask_strategy=strategy)
        assert ai_said(cut) == ["done after 6 steps: second"], strategy
        if strategy == "interrupt":  # rollback's first run: see the agentworker_only test
            assert sdk.runs.get(tid, first)["status"] == "interrupted"


def test_a_running_run_is_cancelled(served: ServedGraphs) -> None:
    sdk = served.sdk(SLOW)
    tid, run_id = busy_thread(sdk)
    sdk.runs.cancel(tid, run_id)
    deadline = time.monotonic() + 10
    while sdk.runs.get(tid, run_id)["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, "the cancelled run still runs"
        time.sleep(0.05)
    assert sdk.runs.get(tid, run_id)["status"] == "interrupted"
    assert sdk.threads.get(tid)["status"] != "busy"
    assert ai_said(sdk.threads.get_state(tid)["values"]) == []  # its answer never came
    with pytest.raises(NotFoundError):  # a run that ended is no longer cancellable
        sdk.runs.cancel(tid, run_id)


# agentworker's own -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The bundled support agent, its callers identified by JWTs."""
    env = {"AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET}
    with ServerProcess(tmp_path_factory.mktemp("sdk-support"), env=env) as server:
        yield server


def client(srv: ServerProcess, token: str, *, api_key: bool = True) -> Any:
    if api_key:
        return get_sync_client(url=srv.url, api_key=token)
    return get_sync_client(url=srv.url, api_key=None, headers={"Authorization": f"Bearer {token}"})


@ours
def test_the_assistant_is_also_named_by_its_graph_id(served: ServedGraphs) -> None:
    """(``langgraph dev`` takes only a UUID: 422 for a graph id or another name.)"""
    sdk = served.sdk(APPROVAL)
    [assistant] = sdk.assistants.search()
    assert sdk.assistants.get(APPROVAL) == assistant
    with pytest.raises(NotFoundError):
        sdk.assistants.get("no-such-graph")


@ours
def test_a_support_conversation_through_the_sdk(srv: ServerProcess) -> None:
    """The support agent's tool approval answered with ``Command(resume=True)``; another
    caller's thread does not exist for him."""
    sdk = client(srv, ALICE)
    tid = sdk.threads.create(metadata={"customer": "ada"})["thread_id"]
    opened = sdk.runs.wait(tid, SUPPORT, input=user("please open a ticket about my printer"))
    assert last_text(opened).startswith("Opened ticket 1"), opened
    approval = sdk.runs.wait(tid, SUPPORT, input=user("close ticket 1"))
    [question] = approval["__interrupt__"]  # the tool waits for a human's approval
    assert question["value"]["tool"] == "update_ticket"
    assert sdk.threads.get_state(tid)["interrupts"] == [question]
    done = sdk.runs.wait(tid, SUPPORT, command={"resume": True})
    assert "__interrupt__" not in done and "closed" in last_text(done).lower(), done
    # History has one state: earlier checkpoints are not kept (langgraph dev keeps each).
    assert [s["values"]["messages"][-1] for s in sdk.threads.get_history(tid)] == [
        done["messages"][-1]
    ]

    bob = client(srv, BOB, api_key=False)
    with pytest.raises(NotFoundError):  # another caller's thread does not exist for him
        bob.threads.get(tid)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        bob.runs.wait(tid, SUPPORT, input=user("hi"))
    assert refused.value.response.status_code == 404
    assert bob.threads.search(metadata={"customer": "ada"}) == []
    assert [t["thread_id"] for t in sdk.threads.search(metadata={"customer": "ada"})] == [tid]


@ours
def test_hostile_requests_to_the_agent_server_api_are_4xx(srv: ServerProcess) -> None:
    auth = {"authorization": f"Bearer {ALICE}"}

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", auth)
        return httpx.request(method, srv.url + path, timeout=30, **kwargs)

    assert call("POST", "/threads", headers={}).status_code == 401
    assert call("GET", "/threads/x", headers={"x-api-key": "not-a-token"}).status_code == 401
    assert call("POST", "/threads", content=b"{}", headers={**auth}).status_code == 415
    bad_bodies: list[Any] = [
        [1],
        {"thread_id": "-bad"},
        {"if_exists": "x"},
        {"thread_id": "a" * 300},
    ]
    for bad in bad_bodies:
        assert call("POST", "/threads", json=bad).status_code == 422, bad
    assert call("POST", "/threads", json={"metadata": {"k": "x" * 20_000}}).status_code == 400
    assert call("GET", "/threads/%20bad").status_code == 422
    tid = call("POST", "/threads", json={}).json()["thread_id"]
    wait = f"/threads/{tid}/runs/wait"
    refused: dict[str, tuple[dict[str, Any], int]] = {
        "no assistant": ({}, 422),
        "unknown assistant": ({"assistant_id": "nope", "input": user("hi")}, 404),
        "state keys": ({"assistant_id": SUPPORT, "input": {"foo": 1}}, 422),
        "an ai message": (
            {"assistant_id": SUPPORT, "input": {"messages": [{"role": "ai", "content": "x"}]}},
            422,
        ),
        "goto": ({"assistant_id": SUPPORT, "command": {"goto": "tools"}}, 400),
        "nothing waits": ({"assistant_id": SUPPORT, "command": {"resume": 1}}, 409),
        "strategy": (
            {"assistant_id": SUPPORT, "input": user("x"), "multitask_strategy": "x"},
            422,
        ),
    }
    for name, (body, status) in refused.items():
        resp = call("POST", wait, json=body)
        assert resp.status_code == status, (name, resp.text)
        assert resp.json()["error"]["code"], name
    assert call("GET", f"/threads/{tid}/runs/not-a-run").status_code == 404
    assert call("POST", f"/threads/{tid}/state", json={"values": {}}).status_code == 400


@ours
def test_a_streamed_tool_approval_and_its_resume(srv: ServerProcess) -> None:
    """The support agent's approval in ``updates`` and ``values``; ``debug`` has the task
    result of the one node that ran; a stream joined after its run ended sends what it ended
    with (``langgraph dev`` sends nothing then)."""
    sdk = client(srv, ALICE)
    tid = sdk.threads.create()["thread_id"]
    modes = ["values", "messages-tuple", "updates"]
    opened = list(sdk.runs.stream(tid, SUPPORT, input=user("open a ticket"), stream_mode=modes))
    final = [p.data for p in opened if p.event == "values"][-1]
    rejoined = list(sdk.runs.join_stream(tid, opened[0].data["run_id"]))  # after its end
    assert [p.event for p in rejoined] == ["metadata", "values"]
    assert rejoined[-1].data == final

    asking = list(
        sdk.runs.stream(tid, SUPPORT, input=user("close ticket 1"), stream_mode=[*modes, "debug"])
    )
    update = [p.data for p in asking if p.event == "updates"][-1]
    assert update["__interrupt__"][0]["value"]["tool"] == "update_ticket"
    [debug] = [p.data for p in asking if p.event == "debug"]  # no checkpoint or task events
    assert debug["type"] == "task_result" and debug["payload"]["name"] == "model"
    assert [p.data for p in asking if p.event == "values"][-1]["__interrupt__"] == update[
        "__interrupt__"
    ]
    resumed = list(sdk.runs.stream(tid, SUPPORT, command={"resume": True}))
    assert resumed[0].event == "metadata"
    assert "closed" in last_text(resumed[-1].data).lower()


@ours
def test_run_streams_and_strategies_where_agentworker_says_more(served: ServedGraphs) -> None:
    """Every event has an id (resumable or not); a finished run's stream sends what it
    ended with; a bad ``Last-Event-ID`` is a 400; ``rollback``'s cut-off run is kept as
    ``interrupted`` (``langgraph dev`` deletes it); a cancelled run's ``join`` is its error."""
    sdk = served.sdk(APPROVAL)
    tid = sdk.threads.create()["thread_id"]
    parts = list(sdk.runs.stream(tid, APPROVAL, input=user("hi"), stream_mode=["values"]))
    assert all(p.id for p in parts)
    run_id = parts[0].data["run_id"]
    ended = list(sdk.runs.join_stream(tid, run_id, stream_mode=["values"]))
    assert [p.event for p in ended] == ["metadata", "values"]
    bad = httpx.get(
        f"{served.url(APPROVAL)}/threads/{tid}/runs/{run_id}/stream",
        headers={"authorization": f"Bearer {DEV_TOKEN}", "last-event-id": "nonsense"},
        timeout=30,
    )
    assert bad.status_code == 400

    sdk = served.sdk(SLOW)
    tid, first = busy_thread(sdk)
    sdk.runs.wait(tid, SLOW, input=user("second"), multitask_strategy="rollback")
    assert sdk.runs.get(tid, first)["status"] == "interrupted"

    tid, first = busy_thread(sdk)
    sdk.runs.cancel(tid, first)
    assert sdk.runs.join(tid, first)["__error__"]["error"] == "RunFailed"
    assert sdk.threads.get(tid)["status"] == "idle"
