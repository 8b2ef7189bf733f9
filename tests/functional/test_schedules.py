"""Schedules on the embedded runtime (``agentworker serve``, JWT users): made, listed and
deleted over HTTP by the conversation's owner only; fired once by the timer, also when they
came due while the server was down (``kill -9``, then started again); planned by the agent
itself with the SDK's ``schedule_followup``; erased with their conversation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import ServerProcess

ALICE = {"authorization": f"Bearer {hs256(claims('alice', tenant='acme'))}"}
BOB = {"authorization": f"Bearer {hs256(claims('bob', tenant='acme'))}"}
ENV = {
    "AGENTWORKER_GRAPH": "tests.langgraph_apps.followup_agent:graph",
    "AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET,
    "AGENTWORKER_SCHEDULES_PER_CONVERSATION": "3",
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("schedules"), env=ENV) as server:
        yield server


def say(srv: ServerProcess, cid: str, text: str) -> dict[str, Any]:
    return srv.ask(cid, text, ALICE)


def schedules(srv: ServerProcess, cid: str, headers: dict[str, str] = ALICE) -> httpx.Response:
    return httpx.get(f"{srv.url}/v1/conversations/{cid}/schedules", headers=headers)


def schedule(
    srv: ServerProcess, cid: str, body: dict[str, Any], headers: dict[str, str] = ALICE
) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/conversations/{cid}/schedules", json=body, headers=headers)


def replies(srv: ServerProcess, cid: str, count: int, timeout: float = 15.0) -> list[str]:
    """The conversation's reply texts once it has ``count`` (``AssertionError`` after
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=ALICE).json()
        texts = [r["payload"].get("text", "") for r in got["replies"]]
        if len(texts) >= count or time.monotonic() > deadline:
            assert len(texts) == count, texts
            return texts
        time.sleep(0.1)


def test_a_schedule_is_made_listed_and_fires_once(srv: ServerProcess) -> None:
    cid = "ws:alice:s1"
    say(srv, cid, "hello")
    made = schedule(srv, cid, {"text": "how is ticket 4?", "in_seconds": 1.5})
    assert made.status_code == 201, made.text
    view = made.json()
    assert view["kind"] == "once" and view["created_by"] == "alice" and view["source"] == "api"
    listed = schedules(srv, cid).json()["schedules"]
    assert [s["schedule_id"] for s in listed] == [view["schedule_id"]]
    assert replies(srv, cid, 2)[-1] == "Checked: how is ticket 4?"
    messages = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=ALICE).json()["messages"]
    assert [(m["text"], m["sender"], m["channel"]) for m in messages][-1] == (
        "how is ticket 4?",
        "alice",
        "schedule",
    )
    assert schedules(srv, cid).json()["schedules"] == []
    time.sleep(1.5)
    assert len(replies(srv, cid, 2)) == 2


def test_the_agent_plans_its_own_follow_up(srv: ServerProcess) -> None:
    cid = "ws:alice:s2"
    planned = say(srv, cid, "check on ticket 4 in 2s")["text"]
    assert planned.startswith("Planned. Follow-up sch_"), planned
    [kept] = schedules(srv, cid).json()["schedules"]
    assert kept["source"] == "agent" and kept["created_by"] == "agent"
    assert replies(srv, cid, 2)[-1] == "Checked: Follow up on ticket 4"
    assert schedules(srv, cid).json()["schedules"] == []


def test_schedules_are_the_owners_alone_and_bad_requests_are_4xx(srv: ServerProcess) -> None:
    cid = "ws:alice:s3"
    say(srv, cid, "hello")
    made = schedule(srv, cid, {"text": "every morning", "cron": "0 9 * * MON-FRI"}).json()
    assert made["kind"] == "cron" and made["next_fire_at"] is not None
    sid = made["schedule_id"]
    # Bob: the conversation does not exist for him, whatever he asks
    assert schedule(srv, cid, {"text": "x", "in_seconds": 5}, BOB).status_code == 404
    assert schedules(srv, cid, BOB).status_code == 404
    gone = httpx.delete(f"{srv.url}/v1/conversations/{cid}/schedules/{sid}", headers=BOB)
    assert gone.status_code == 404
    assert httpx.get(f"{srv.url}/v1/conversations/{cid}/schedules").status_code == 401
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"text": "x"}, 422, "validation_error", "exactly one of 'at', 'in_seconds' or 'cron'"),
        ({"text": "x", "cron": "0 9 1 * MON"}, 422, "validation_error", "not both"),
        ({"text": "x", "cron": "* *"}, 422, "validation_error", "five fields"),
        (
            {"text": "x", "cron": "* * * * *", "timezone": "Nowhere/Else"},
            422,
            "validation_error",
            "IANA time zone",
        ),
        ({"text": "x", "at": "2001-01-01T00:00:00Z"}, 400, "in_the_past", "passed"),
        ({"text": "x", "in_seconds": 5, "owner": "bob"}, 422, "validation_error", "owner"),
    ]
    for body, status, code, words in cases:
        refused = schedule(srv, cid, body)
        assert refused.status_code == status, (body, refused.text)
        error = refused.json()["error"]
        assert error["code"] == code and words in error["message"], refused.text
    not_json = httpx.post(
        f"{srv.url}/v1/conversations/{cid}/schedules",
        content=b"{",
        headers={**ALICE, "content-type": "application/json"},
    )
    assert not_json.status_code == 400
    for n in range(2):
        assert schedule(srv, cid, {"text": f"{n}", "in_seconds": 600}).status_code == 201
    too_many = schedule(srv, cid, {"text": "4th", "in_seconds": 600})
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_schedules"
    deleted = httpx.delete(f"{srv.url}/v1/conversations/{cid}/schedules/{sid}", headers=ALICE)
    assert deleted.json()["deleted"] is True
    again = httpx.delete(f"{srv.url}/v1/conversations/{cid}/schedules/{sid}", headers=ALICE)
    assert again.status_code == 404
    erased = httpx.delete(f"{srv.url}/v1/conversations/{cid}", headers=ALICE).json()
    assert erased["removed"]["schedules"] == 2


def test_a_schedule_due_while_the_server_was_down_fires_once_after_the_restart(
    tmp_path: Path,
) -> None:
    cid = "ws:alice:down"
    server = ServerProcess(tmp_path / "state", env=ENV).start()
    try:
        say(server, cid, "hello")
        assert schedule(server, cid, {"text": "still there?", "in_seconds": 2}).status_code == 201
        server.kill()
        time.sleep(2.5)  # due while nothing runs
        server.start()
        assert replies(server, cid, 2)[-1] == "Checked: still there?"
        server.stop()
        server.start()  # and not again
        time.sleep(1.5)
        assert len(replies(server, cid, 2)) == 2
    finally:
        server.stop()


def test_the_cli_adds_lists_and_deletes_schedules(srv: ServerProcess) -> None:
    cid = "ws:alice:cli"
    say(srv, cid, "hello")
    token = ALICE["authorization"].removeprefix("Bearer ")
    env = {**os.environ, "AGENTWORKER_TOKEN": token, "AGENTWORKER_URL": srv.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "workers.cli", "schedule", *args]
        return subprocess.run(
            command, check=False, env=env, capture_output=True, text=True, timeout=60
        )

    added = cli("add", "-c", cid, "--cron", "30 8 * * 1-5", "--tz", "Europe/Paris", "stand-up")
    assert added.returncode == 0, added.stderr
    sid = added.stdout.split()[0]
    assert sid.startswith("sch_") and "cron '30 8 * * 1-5' Europe/Paris  stand-up" in added.stdout
    assert cli("add", "-c", cid, "--in", "2h", "--json", "later").returncode == 0
    listed = cli("list", "-c", cid)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2, listed.stdout
    bad = cli("add", "-c", cid, "--in", "soonish", "x")
    assert bad.returncode == 2 and "--in: when: 'soonish' is not a time" in bad.stderr
    foreign = cli("list", "-c", "ws:bob:elsewhere")
    assert foreign.returncode == 1 and "404 not_found" in foreign.stderr
    assert cli("delete", "-c", cid, sid).stdout.strip() == f"deleted {sid}"
    assert len(cli("list", "-c", cid).stdout.splitlines()) == 1
