"""LangGraph's own Python client (``langgraph-sdk``, unmodified) against a real
``agentworker serve``: the assistant, threads, runs that wait, a tool approval answered with
``Command(resume=...)``, background runs joined, metadata, and another caller's thread
as a 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import NotFoundError

from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import ServerProcess

ALICE = hs256(claims("alice", tenant="acme"))
BOB = hs256(claims("bob", tenant="acme"))
GRAPH = "support_agent"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET}
    with ServerProcess(tmp_path_factory.mktemp("sdk"), env=env) as server:
        yield server


def client(srv: ServerProcess, token: str, *, api_key: bool = True) -> Any:
    if api_key:
        return get_sync_client(url=srv.url, api_key=token)
    return get_sync_client(url=srv.url, api_key=None, headers={"Authorization": f"Bearer {token}"})


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def last_text(values: dict[str, Any]) -> str:
    return str(values["messages"][-1]["content"])


def test_the_assistant_is_the_served_graph(srv: ServerProcess) -> None:
    sdk = client(srv, ALICE)
    [assistant] = sdk.assistants.search()
    assert assistant["graph_id"] == GRAPH
    assert sdk.assistants.get(assistant["assistant_id"]) == assistant
    assert sdk.assistants.get(GRAPH)["assistant_id"] == assistant["assistant_id"]
    drawing = sdk.assistants.get_graph(GRAPH)
    assert {"__start__", "__end__"} <= {n["id"] for n in drawing["nodes"]}
    schemas = sdk.assistants.get_schemas(GRAPH)
    assert schemas["graph_id"] == GRAPH and "input_schema" in schemas
    with pytest.raises(NotFoundError):
        sdk.assistants.get("no-such-graph")


def test_a_support_conversation_through_the_sdk(srv: ServerProcess) -> None:
    sdk = client(srv, ALICE)
    thread = sdk.threads.create(metadata={"customer": "ada"})
    tid = thread["thread_id"]
    assert thread["status"] == "idle" and thread["metadata"]["customer"] == "ada"

    opened = sdk.runs.wait(tid, GRAPH, input=user("please open a ticket about my broken printer"))
    assert last_text(opened).startswith("Opened ticket 1"), opened
    asked = sdk.runs.wait(tid, GRAPH, input=user("close ticket 1"))
    [question] = asked["__interrupt__"]  # the tool waits for a human's approval
    assert sdk.threads.get(tid)["status"] == "interrupted"
    state = sdk.threads.get_state(tid)
    assert state["interrupts"] == [question] and state["checkpoint"] is not None
    done = sdk.runs.wait(tid, GRAPH, command={"resume": True})
    assert "__interrupt__" not in done and "closed" in last_text(done).lower(), done

    runs = sdk.runs.list(tid)
    assert [r["status"] for r in runs] == ["success", "success", "success"]
    assert sdk.runs.get(tid, runs[0]["run_id"])["run_id"] == runs[0]["run_id"]
    assert [s["values"]["messages"][-1] for s in sdk.threads.get_history(tid)] == [
        done["messages"][-1]
    ]

    background = sdk.runs.create(tid, GRAPH, input=user("what are your opening hours?"))
    assert background["status"] in ("pending", "running", "success")
    joined = sdk.runs.join(tid, background["run_id"])
    assert joined["messages"][-1]["type"] == "ai" and last_text(joined)
    assert sdk.runs.get(tid, background["run_id"])["status"] == "success"

    updated = sdk.threads.update(tid, metadata={"plan": "pro"})
    assert updated["metadata"]["customer"] == "ada" and updated["metadata"]["plan"] == "pro"
    found = sdk.threads.search(metadata={"customer": "ada"})
    assert [t["thread_id"] for t in found] == [tid]

    bob = client(srv, BOB, api_key=False)
    with pytest.raises(NotFoundError):  # another caller's thread does not exist for him
        bob.threads.get(tid)
    with pytest.raises(httpx.HTTPStatusError) as refused:  # wait raises httpx's own error
        bob.runs.wait(tid, GRAPH, input=user("hi"))
    assert refused.value.response.status_code == 404
    assert bob.threads.search(metadata={"customer": "ada"}) == []

    sdk.threads.delete(tid)
    with pytest.raises(NotFoundError):
        sdk.threads.get(tid)


def test_a_run_creates_its_thread_when_asked(srv: ServerProcess) -> None:
    sdk = client(srv, ALICE)
    tid = "6f1c1f8e-8a4b-4a57-9d3a-7c0e5e2f0b11"
    with pytest.raises(httpx.HTTPStatusError) as missing:
        sdk.runs.wait(tid, GRAPH, input=user("hello"))
    assert missing.value.response.status_code == 404
    answered = sdk.runs.wait(tid, GRAPH, input=user("hello"), if_not_exists="create")
    assert answered["messages"][-1]["type"] == "ai"
    stateless = sdk.runs.wait(None, GRAPH, input=user("hello"))
    assert stateless["messages"][-1]["type"] == "ai"


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
        "state keys": ({"assistant_id": GRAPH, "input": {"foo": 1}}, 422),
        "an ai message": (
            {"assistant_id": GRAPH, "input": {"messages": [{"role": "ai", "content": "x"}]}},
            422,
        ),
        "goto": ({"assistant_id": GRAPH, "command": {"goto": "tools"}}, 400),
        "nothing waits": ({"assistant_id": GRAPH, "command": {"resume": 1}}, 409),
        "strategy": ({"assistant_id": GRAPH, "input": user("x"), "multitask_strategy": "x"}, 422),
    }
    for name, (body, status) in refused.items():
        resp = call("POST", wait, json=body)
        assert resp.status_code == status, (name, resp.text)
        assert resp.json()["error"]["code"], name
    assert call("GET", f"/threads/{tid}/runs/not-a-run").status_code == 404
    assert call("POST", f"/threads/{tid}/state", json={"values": {}}).status_code == 400


def test_a_streamed_run_sends_what_langgraphs_clients_read(srv: ServerProcess) -> None:
    """``runs.stream`` with ``values``, ``messages-tuple``, ``updates``: the metadata first,
    the state with the new message, the reply's text piece by piece under its message's id
    and node (what the final state holds), each node's update as it returns, an interrupt in
    ``updates`` and ``values``, ``debug``'s task results, a resume."""
    sdk = client(srv, ALICE)
    tid = sdk.threads.create()["thread_id"]
    modes = ["values", "messages-tuple", "updates"]
    parts = list(
        sdk.runs.stream(
            tid, GRAPH, input=user("please open a ticket about streams"), stream_mode=modes
        )
    )
    assert parts[0].event == "metadata" and parts[0].data["run_id"]
    first_values = next(p.data for p in parts if p.event == "values")
    assert first_values["messages"][-1]["content"] == "please open a ticket about streams"
    final = [p.data for p in parts if p.event == "values"][-1]
    pieces = [p.data for p in parts if p.event == "messages"]
    assert pieces and all(meta["thread_id"] == tid for _, meta in pieces)
    reply = final["messages"][-1]
    assert "".join(chunk["content"] for chunk, _ in pieces) == reply["content"]
    assert {chunk["id"] for chunk, _ in pieces} == {reply["id"]}
    assert sdk.runs.get(tid, parts[0].data["run_id"])["status"] == "success"
    rejoined = list(sdk.runs.join_stream(tid, parts[0].data["run_id"]))  # after its end
    assert rejoined[-1].event == "values" and rejoined[-1].data == final

    assert all(meta["langgraph_node"] for _, meta in pieces)
    nodes = [p.data for p in parts if p.event == "updates"]  # each node's update, in order
    assert [list(u) for u in nodes] == [["model"], ["tools"], ["model"]]
    assert nodes[0]["model"]["messages"][0]["tool_calls"][0]["name"] == "create_ticket"
    assert nodes[-1]["model"]["messages"][-1]["content"] == reply["content"]

    asked = list(
        sdk.runs.stream(tid, GRAPH, input=user("close ticket 1"), stream_mode=[*modes, "debug"])
    )
    update = [p.data for p in asked if p.event == "updates"][-1]
    assert update["__interrupt__"][0]["value"]["tool"] == "update_ticket"
    [debug] = [p.data for p in asked if p.event == "debug"]  # the one node that ran
    assert debug["type"] == "task_result" and debug["payload"]["name"] == "model"
    assert [p.data for p in asked if p.event == "values"][-1]["__interrupt__"] == update[
        "__interrupt__"
    ]
    resumed = list(sdk.runs.stream(tid, GRAPH, command={"resume": True}))
    assert [p.event for p in resumed][0] == "metadata"
    assert "closed" in last_text(resumed[-1].data).lower()


def test_a_triage_conversation_answers_its_interrupt_with_a_command(tmp_path: Path) -> None:
    """An app's own ``interrupt()`` (the triage example asks which team) is answered with
    ``Command(resume=...)``, through ``wait`` and through ``stream``."""
    env = {"AGENTWORKER_GRAPH": "triage_bot.graph:build"}
    with ServerProcess(tmp_path, env=env) as triage:
        sdk: Any = get_sync_client(url=triage.url, api_key=triage.auth["authorization"][7:])
        graph = sdk.assistants.search()[0]["graph_id"]
        tid = sdk.threads.create()["thread_id"]
        asked = sdk.runs.wait(tid, graph, input=user("Hello there"))
        [question] = asked["__interrupt__"]
        assert question["value"]["options"][0] == "billing"
        assert sdk.threads.get(tid)["status"] == "interrupted"
        done = sdk.runs.wait(tid, graph, command={"resume": {question["id"]: "billing"}})
        assert last_text(done).startswith("[billing team, normal"), done
        assert done["routing"] == ["billing:asked"]
        again = list(sdk.runs.stream(tid, graph, input=user("This is urgent, the app is down")))
        assert last_text(again[-1].data).startswith("[technical team, urgent priority]")


def test_a_run_stream_dropped_mid_run_is_joined_with_nothing_lost(tmp_path: Path) -> None:
    """A client drops a streamed run after two progress notes; ``join_stream`` with the
    last event's id gets the other four and the end, none twice."""
    env = {"AGENTWORKER_GRAPH": "tests.langgraph_apps.slow_stream:graph"}
    with ServerProcess(tmp_path, env=env) as slow:
        sdk: Any = get_sync_client(url=slow.url, api_key=slow.auth["authorization"][7:])
        graph = sdk.assistants.search()[0]["graph_id"]
        tid = sdk.threads.create()["thread_id"]
        modes = ["custom", "values"]
        seen = []
        stream = sdk.runs.stream(
            tid, graph, input=user("go"), stream_mode=modes, stream_resumable=True
        )
        for part in stream:
            seen.append(part)
            if len([p for p in seen if p.event == "custom"]) == 2:
                break
        stream.close()  # the client goes away mid-run
        assert all(p.id for p in seen)
        run_id = seen[0].data["run_id"]
        rest = list(sdk.runs.join_stream(tid, run_id, stream_mode=modes, last_event_id=seen[-1].id))
        steps = [p.data["step"] for p in seen + rest if p.event == "custom"]
        assert steps == list(range(6))  # none lost, none twice
        assert rest[-1].event == "values"
        assert rest[-1].data["messages"][-1]["content"] == "done after 6 steps: go"
        ended = list(sdk.runs.join_stream(tid, run_id, stream_mode=["values"]))
        assert [p.event for p in ended] == ["metadata", "values"]  # after the end
        bad = httpx.get(
            f"{slow.url}/threads/{tid}/runs/{run_id}/stream",
            headers={**slow.auth, "last-event-id": "nonsense"},
            timeout=30,
        )
        assert bad.status_code == 400
        double_texts(sdk, graph)


def double_texts(sdk: Any, graph: str) -> None:
    """A second run while the first runs, under each ``multitask_strategy``: ``reject``
    is refused, ``enqueue`` waits its turn, ``interrupt`` and ``rollback`` cut the first
    off (nothing of it is kept)."""

    def busy_thread() -> tuple[str, str]:
        tid = sdk.threads.create()["thread_id"]
        first = sdk.runs.create(tid, graph, input=user("first"))
        for part in sdk.runs.join_stream(tid, first["run_id"], stream_mode=["custom"]):
            if part.event == "custom":
                break  # its turn runs
        return tid, first["run_id"]

    tid, first = busy_thread()
    with pytest.raises(httpx.HTTPStatusError) as refused:
        sdk.runs.wait(tid, graph, input=user("second"), multitask_strategy="reject")
    assert refused.value.response.status_code == 409
    assert last_text(sdk.runs.join(tid, first)) == "done after 6 steps: first"

    tid, first = busy_thread()
    queued = sdk.runs.wait(tid, graph, input=user("second"), multitask_strategy="enqueue")
    assert last_text(queued) == "done after 6 steps: second"
    assert sdk.runs.get(tid, first)["status"] == "success"

    for strategy in ("interrupt", "rollback"):
        tid, first = busy_thread()
        cut = sdk.runs.wait(tid, graph, input=user("second"), multitask_strategy=strategy)
        assert last_text(cut) == "done after 6 steps: second"
        assert sdk.runs.get(tid, first)["status"] == "interrupted"
        said = [m["content"] for m in cut["messages"] if m["type"] == "ai"]
        assert said == ["done after 6 steps: second"]  # nothing of the first turn is kept
