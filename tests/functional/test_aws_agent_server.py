"""LangGraph's Agent Server API on the AWS runtime (the ``api`` function behind the HTTP API's
JWT authorizer, on moto): the published ``langgraph-sdk`` client, unmodified, drives threads
and runs whose turns go SQS-free through the real workflow (Step Functions executed by moto,
``turn`` routed to our handler), with the same ownership rules as everywhere."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.errors import NotFoundError

from tests.functional.aws_env import Aws, aws, lambda_context
from tests.functional.identity_env import AUDIENCE, HS_SECRET, ISSUER, claims, hs256
from workers.handlers import api
from workers.sandbox.http_api import HttpApiStandIn

__all__ = ["aws"]  # the fixture

ALICE = hs256(claims("alice", tenant="acme"))
BOB = hs256(claims("bob", tenant="acme"))


def verified(token: str) -> dict[str, Any] | None:
    """What the HTTP API's JWT authorizer passes on: the claims of a token it verified."""
    try:
        found: dict[str, Any] = jwt.decode(
            token, HS_SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
        )
    except jwt.PyJWTError:
        return None
    return found


@pytest.fixture
def gateway(aws: Aws) -> Iterator[HttpApiStandIn]:
    with HttpApiStandIn(api.handler, verified) as standing_in:
        yield standing_in


def client(gateway: HttpApiStandIn, token: str) -> Any:
    """As the README says for AWS: the token as a bearer (the JWT authorizer reads
    ``Authorization``)."""
    return get_sync_client(
        url=gateway.url, api_key=None, headers={"Authorization": f"Bearer {token}"}
    )


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def text(message: dict[str, Any]) -> str:
    """A message's text (Bedrock's AI messages hold content blocks)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def test_the_sdk_drives_threads_and_runs_on_the_aws_runtime(gateway: HttpApiStandIn) -> None:
    sdk = client(gateway, ALICE)
    [assistant] = sdk.assistants.search()
    graph = assistant["graph_id"]
    thread = sdk.threads.create(metadata={"customer": "c-1"})
    tid = thread["thread_id"]
    assert sdk.threads.get(tid)["status"] == "idle"

    done = sdk.runs.wait(tid, graph, input=user("please open a ticket about the printer"))
    assert text(done["messages"][-1]).startswith("Opened ticket 1")
    assert text(done["messages"][-4]) == "please open a ticket about the printer"
    [run] = sdk.runs.list(tid)
    assert run["status"] == "success" and sdk.runs.get(tid, run["run_id"]) == run
    assert sdk.runs.join(tid, run["run_id"])["messages"][-1] == done["messages"][-1]

    asked = sdk.runs.wait(tid, graph, input=user("close ticket 1"))  # a tool approval
    [question] = asked["__interrupt__"]
    assert question["value"]["tool"] == "update_ticket"
    assert sdk.threads.get(tid)["status"] == "interrupted"
    parts = list(sdk.runs.stream(tid, graph, command={"resume": True}, stream_mode="values"))
    assert [p.event for p in parts][0] == "metadata"
    assert parts[-1].event == "values"
    assert "closed" in text(parts[-1].data["messages"][-1])
    state = sdk.threads.get_state(tid)
    assert state["values"]["messages"][-1] == parts[-1].data["messages"][-1]

    background = sdk.runs.create(tid, graph, input=user("what tickets do I have?"))
    assert background["status"] in ("pending", "running", "success")
    joined = sdk.runs.join(tid, background["run_id"])
    assert joined["messages"][-1]["type"] == "ai"
    found = sdk.threads.search(metadata={"customer": "c-1"})
    assert [t["thread_id"] for t in found] == [tid]

    other = client(gateway, BOB)  # another caller: no such thread, whatever the call
    with pytest.raises(NotFoundError):
        other.threads.get(tid)
    with pytest.raises(NotFoundError):
        other.runs.list(tid)
    assert other.threads.search() == []


def test_the_api_function_answers_hostile_requests_with_4xx(gateway: HttpApiStandIn) -> None:
    auth = {"authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        assert http.get("/threads/x").status_code == 401  # the authorizer's, before us
        assert http.get("/ok").json() == {"ok": True}
        tid = http.post("/threads", json={}, headers=auth).json()["thread_id"]
        refused = {
            "not JSON": http.post("/threads/search", content=b"{", headers=auth),
            "a list": http.post("/threads", json=[1], headers=auth),
            "bad thread id": http.get("/threads/a%20b%0a", headers=auth),
            "no input": http.post(
                f"/threads/{tid}/runs/wait", json={"assistant_id": "x"}, headers=auth
            ),
            "cancel idle": http.post(f"/threads/{tid}/runs/nope/cancel", headers=auth),
            "no route": http.get("/crons", headers=auth),
            "bad event id": http.get(
                f"/threads/{tid}/runs/nope/stream", headers={**auth, "last-event-id": "x"}
            ),
        }
        for name, resp in refused.items():
            assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
            assert resp.json()["error"]["code"], name
    # an event that reached the function with no verified caller (no authorizer): nobody
    event = gateway.event("GET", f"/threads/{tid}", {}, b"")
    assert event is None  # the authorizer refuses it before the function
    bare = gateway.event("GET", "/ok", {}, b"")
    bare["rawPath"] = f"/threads/{tid}"
    answer = api.handler(bare, lambda_context())
    assert answer["statusCode"] == 401
    assert json.loads(answer["body"])["error"]["code"] == "unauthenticated"
    garbled = {**bare, "body": "%%%", "isBase64Encoded": True}
    assert api.handler(garbled, lambda_context())["statusCode"] == 400


def test_a_cancel_stops_the_running_turn_and_its_standard_execution(
    aws: Aws, gateway: HttpApiStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runs.cancel`` while the model is answering: the run ends ``interrupted`` with
    nothing kept, its Standard execution is asked to stop, and the thread takes the next
    run. (moto takes the stop but lets the execution's running step finish, which then
    fails on the lost lease; Step Functions marks it ``ABORTED`` at once.)"""
    from workers import bootstrap
    from workers.adapters.aws.workflow import StepFunctionsWorkflowStarter

    stopped: list[str] = []
    real_stop = StepFunctionsWorkflowStarter.stop

    def stop(self: StepFunctionsWorkflowStarter, execution_arn: str, cause: str) -> None:
        stopped.append(execution_arn)
        real_stop(self, execution_arn, cause)

    monkeypatch.setattr(StepFunctionsWorkflowStarter, "stop", stop)
    standard = aws.stack.state_machine_arns["standard"]
    monkeypatch.setenv("AGENTWORKER_STATE_MACHINE_ARN", standard)
    bootstrap.reset_aws_deps()
    sdk = client(gateway, ALICE)
    graph = sdk.assistants.search()[0]["graph_id"]
    tid = sdk.threads.create()["thread_id"]
    aws.stub.latency_s = 3.0  # the model takes its time: the turn is running meanwhile
    run = sdk.runs.create(tid, graph, input=user("please open a ticket about the printer"))
    store = bootstrap.aws_deps().store
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = store.get_conversation(tid)
        if state is not None and state.lease_execution_id:
            break
        time.sleep(0.05)
    assert state is not None and state.lease_execution_id
    assert sdk.runs.get(tid, run["run_id"])["status"] == "running"
    sdk.runs.cancel(tid, run["run_id"])
    assert stopped == [state.lease_execution_id]
    assert sdk.runs.get(tid, run["run_id"])["status"] == "interrupted"
    aws.stub.latency_s = 0.0
    assert sdk.threads.get_state(tid)["values"] == {"messages": []}  # nothing of it was kept
    with pytest.raises(httpx.HTTPStatusError) as refused:  # nothing runs now
        sdk.runs.cancel(tid, run["run_id"])
    assert refused.value.response.status_code == 404
    again = sdk.runs.wait(tid, graph, input=user("please open a ticket about the printer"))
    assert text(again["messages"][-1]).startswith("Opened ticket 1")
