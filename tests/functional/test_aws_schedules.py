"""Schedules on the AWS runtime (moto): made, listed and deleted through the ``api`` function
behind the HTTP API's JWT authorizer, kept as table items and armed as EventBridge Scheduler
schedules that invoke ``ingest``; fired by a stand-in of EventBridge Scheduler
(:class:`~workers.sandbox.emulator.SchedulerFirer`, delivering every occurrence twice, as
the service may), each occurrence answered once through the real workflow."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client

from tests.functional.aws_env import Aws, aws
from tests.functional.identity_env import claims, hs256
from tests.functional.test_aws_agent_server import verified
from workers.adapters.aws.eventbridge_scheduler import schedule_name
from workers.handlers import api
from workers.sandbox.emulator import SchedulerFirer
from workers.sandbox.http_api import HttpApiStandIn

__all__ = ["aws"]  # the fixture

ALICE = {"authorization": f"Bearer {hs256(claims('alice', tenant='acme'))}"}
BOB = {"authorization": f"Bearer {hs256(claims('bob', tenant='acme'))}"}


@pytest.fixture
def gateway(aws: Aws) -> Iterator[HttpApiStandIn]:
    with HttpApiStandIn(api.handler, verified) as standing_in:
        yield standing_in


def firer(aws: Aws) -> SchedulerFirer:
    ingest = aws.stack.function_arns["ingest"]
    handlers = {ingest: ("ingest", aws.handlers["ingest"])}
    scheduler = aws.session.client("scheduler")
    return SchedulerFirer(scheduler, aws.stack.schedule_group, handlers, repeat=2)


def armed(aws: Aws, schedule_id: str) -> dict[str, Any] | None:
    scheduler = aws.session.client("scheduler")
    try:
        found: dict[str, Any] = scheduler.get_schedule(
            Name=schedule_name(schedule_id), GroupName=aws.stack.schedule_group
        )
    except scheduler.exceptions.ResourceNotFoundException:
        return None
    return found


def messages(sdk: Any, tid: str) -> list[dict[str, Any]]:
    values: Any = sdk.threads.get_state(tid)["values"]
    found: list[dict[str, Any]] = values["messages"]
    return found


def test_schedules_fire_once_each_on_the_aws_runtime(aws: Aws, gateway: HttpApiStandIn) -> None:
    sdk = get_sync_client(url=gateway.url, api_key=None, headers=ALICE)
    [assistant] = sdk.assistants.search()
    tid = sdk.threads.create()["thread_id"]
    hello: Any = {"messages": [{"role": "user", "content": "hi"}]}
    sdk.runs.wait(tid, assistant["graph_id"], input=hello)
    with httpx.Client(base_url=gateway.url, headers=ALICE, timeout=30) as http:
        path = f"/v1/conversations/{tid}/schedules"
        once = http.post(path, json={"text": "what tickets do I have?", "in_seconds": 1})
        assert once.status_code == 201, once.text
        cron = http.post(path, json={"text": "daily check", "cron": "0 9 * * *"}).json()
        listed = [s["schedule_id"] for s in http.get(path).json()["schedules"]]
        assert listed == [once.json()["schedule_id"], cron["schedule_id"]]
        expression = armed(aws, cron["schedule_id"])
        assert expression is not None and expression["ScheduleExpression"] == "cron(0 9 * * ? *)"

        # someone else: no such conversation, whatever they ask
        assert http.get(path, headers=BOB).status_code == 404
        sid = cron["schedule_id"]
        assert http.delete(f"{path}/{sid}", headers=BOB).status_code == 404
        assert http.post(path, json={"text": "x", "cron": "* *"}).status_code == 422

        fire = firer(aws)
        assert fire.fire_due(time.time() + 2) == 1  # the one-off, invoked twice
        aws.wait_executions_done()
        state = messages(sdk, tid)
        asked = [
            m for m in state if m["type"] == "human" and m["content"] == "what tickets do I have?"
        ]
        assert len(asked) == 1 and state[-1]["type"] == "ai"
        assert armed(aws, once.json()["schedule_id"]) is None  # it deleted itself
        assert [s["schedule_id"] for s in http.get(path).json()["schedules"]] == [sid]

        # the daily one at its next 9:00 (and not again until the next)
        assert fire.fire_due(time.time() + 86_400 + 60) == 1
        aws.wait_executions_done()
        assert fire.fire_due(time.time() + 86_400 + 120) == 0
        [kept] = http.get(path).json()["schedules"]
        assert kept["fired"] == 1 and kept["last_outcome"] == "accepted"
        state = messages(sdk, tid)
        assert [m["content"] for m in state if m["type"] == "human"].count("daily check") == 1

        erased = http.delete(f"/threads/{tid}")
        assert erased.status_code in (200, 204), erased.text
        assert armed(aws, sid) is None


def test_a_firing_for_a_schedule_that_is_gone_does_nothing(aws: Aws) -> None:
    event = {
        "agentworker_schedule": {"conversation_id": "ws:alice:gone", "schedule_id": "sch_x"},
        "scheduled_time": "2026-12-07T09:00:00Z",
    }
    from tests.functional.aws_env import lambda_context

    assert aws.handlers["ingest"](event, lambda_context())["outcome"] == "gone"
    unfilled = {**event, "scheduled_time": "<aws.scheduler.scheduled-time>"}
    with pytest.raises(Exception, match="not a time"):
        aws.handlers["ingest"](unfilled, lambda_context())
    assert json.dumps(event)  # the shape the stack's schedules send


def test_the_agent_plans_its_follow_up_on_the_aws_runtime(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's ``schedule_followup`` in the ``turn`` function: an EventBridge schedule,
    fired into ``ingest``, answered by the agent."""
    from workers import bootstrap

    monkeypatch.setenv("AGENTWORKER_GRAPH", "tests.langgraph_apps.followup_agent:graph")
    bootstrap.reset_aws_deps()
    for name, value in aws.stack.environment().items():
        monkeypatch.setenv(name, value)
    cid = "ws:alice:follow"
    aws.send_sqs(cid, "check on ticket 4 in 1s")
    aws.pump()
    aws.wait_executions_done()
    [planned] = aws.replies(want=1)
    assert planned["text"].startswith("Planned. Follow-up sch_"), planned
    [kept] = bootstrap.aws_deps().scheduler.for_conversation(cid)  # type: ignore[union-attr]
    assert kept.source == "agent" and armed(aws, kept.schedule_id) is not None
    assert firer(aws).fire_due(time.time() + 5) == 1
    aws.pump()
    aws.wait_executions_done()
    [checked] = aws.replies(want=1)
    assert checked["text"] == "Checked: Follow up on ticket 4"
