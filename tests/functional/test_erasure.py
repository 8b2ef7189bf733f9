"""Erasure on a real server: a socket stops following what its owner erased; an erasure
cuts off the turn still running and drops its trace; the text leaves the database files and
the spool; the tracking store being down neither fails an erasure, nor delays it, nor holds
up anyone else's requests, and the erased traces never reach MLflow afterwards; the state
directory is its owner's alone."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect
from websockets.sync.connection import Connection

from events.inbound import InboundMessage
from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import ServerProcess, free_port, wait_traces_exported
from tests.functional.test_recovery import send, view, wait_answered

ALICE = hs256(claims("alice", tenant="acme"))
MALLORY = hs256(claims("mallory", tenant="evil"))
TRACED = {"AGENTWORKER_TRACING": "true"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def until(ws: Connection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` on ``ws`` (frames before it are skipped)."""
    while True:
        frame: dict[str, Any] = json.loads(ws.recv(timeout=15))
        if frame.get("type") == kind:
            return frame


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.05)


def holding(state: Path, *texts: str) -> list[str]:
    """The files under ``state`` that hold any of ``texts`` (as bytes, anywhere in them)."""
    found = []
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {t}" for t in texts if t.encode() in data]
    return found


def traced_conversations(state: Path) -> list[str]:
    """The conversations with traces in the server's MLflow store (none before the exporter
    made its experiment: on a loaded machine it may not have yet when its spool is empty)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("agentworker")
    if experiment is None:
        return []
    found = mlflow.search_traces(
        locations=[experiment.experiment_id], return_type="list", include_spans=False
    )
    return sorted(t.info.tags["conversation_id"] for t in found)


def store_down(srv: ServerProcess) -> bool:
    """The exporter found the tracking store unreachable (it tried the turns' traces)."""
    return "tracking store unavailable" in srv.log.read_text()


def two_tenants(state: Path, **env: str) -> ServerProcess:
    """A server taking Alice's (tenant acme) and Mallory's (tenant evil) JWTs, its log
    outside the state directory (whose files the tests read)."""
    srv = ServerProcess(state / "state", env={"AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET, **env})
    srv.log = state / "server.log"
    return srv


@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two tenants on a traced server whose tracking store is down (nobody listens)."""
    down = {**TRACED, "AGENTWORKER_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    with two_tenants(tmp_path_factory.mktemp("erasure"), **down) as srv:
        yield srv


def test_a_socket_stops_following_a_conversation_its_owner_erased(tmp_path: Path) -> None:
    """The issue's scenario: Alice follows ``c``, erases it, tenant t2 creates ``c``: her
    socket is told ``forgotten``, then is shown nothing of t2's conversation (before: t2's
    chunks and reply)."""
    cid = "ws:acme:erased-then-taken"
    with (
        two_tenants(tmp_path) as down,
        connect(down.ws_url, additional_headers=bearer(ALICE)) as alice,
        connect(down.ws_url, additional_headers=bearer(MALLORY)) as mallory,
    ):
        alice.send(json.dumps({"action": "send", "conversation_id": cid, "text": "hello"}))
        until(alice, "reply")
        erased = httpx.delete(
            f"{down.url}/v1/conversations/{cid}", headers=bearer(ALICE), timeout=30
        )
        assert erased.status_code == 200, erased.text
        assert until(alice, "forgotten") == {"type": "forgotten", "conversation_id": cid}
        secret = "t2's plans for the launch"
        mallory.send(json.dumps({"action": "send", "conversation_id": cid, "text": secret}))
        assert until(mallory, "accepted")["conversation_id"] == cid
        until(mallory, "reply")  # published to every follower of the id at this point
        alice.send(json.dumps({"action": "ping"}))
        assert json.loads(alice.recv(timeout=15)) == {"type": "pong"}  # nothing before it
        # Following it again: another tenant's conversation, so it does not exist for her
        # (answered as any id that does not exist), and still nothing of it is shown.
        alice.send(json.dumps({"action": "subscribe", "conversation_id": cid}))
        followed = json.loads(alice.recv(timeout=15))
        assert followed == {"type": "subscribed", "conversation_id": cid, "conversation": None}
        mallory.send(json.dumps({"action": "send", "conversation_id": cid, "text": "more"}))
        until(mallory, "reply")
        alice.send(json.dumps({"action": "ping"}))
        assert json.loads(alice.recv(timeout=15)) == {"type": "pong"}


def test_the_retention_ends_the_follows_of_what_it_erases(tmp_path: Path) -> None:
    """The retention sweeper erases like ``forget``: the follows of what it erased end too
    (before: it deleted the stored connections, not the live follows)."""
    from workers.bootstrap import build_embedded
    from workers.config import load_settings

    cid = "ws:erin:idle"

    async def scenario() -> None:
        runtime = build_embedded(load_settings(state_dir=tmp_path, tracing=False))
        await runtime.start()
        try:
            await runtime.accept(InboundMessage(conversation_id=cid, text="hello"))
            await runtime.wait_idle()
            follower: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            runtime.hub.subscribe(cid, follower)
            runtime.deps.settings = replace(runtime.deps.settings, retention_seconds=0.0)
            assert await runtime.expire() == [cid]
            forgotten = await asyncio.wait_for(follower.get(), 5)
            assert forgotten == {"type": "forgotten", "conversation_id": cid}
        finally:
            await runtime.stop()

    asyncio.run(scenario())


def test_erasures_with_the_tracking_store_down_answer_at_once_and_hold_up_no_one(
    down: ServerProcess,
) -> None:
    """Eight erasures at once while MLflow is down: each answers 200 at once, saying the
    traces' removal is pending (before: a 500 after the rows were gone, 30 s later), another
    tenant's message is accepted meanwhile within a second or two (before: it waited for a
    thread of the pool the erasures held), and the erased text leaves the spool at once."""
    texts = {f"ws:acme:down-{i}": f"unique-{uuid.uuid4().hex}" for i in range(8)}
    for cid, text in texts.items():
        sent = httpx.post(
            f"{down.url}/v1/conversations/{cid}/messages",
            json={"text": f"remember {text}"},
            headers=bearer(ALICE),
        )
        assert sent.status_code == 202, sent.text
    for cid in texts:
        wait_for(lambda cid=cid: replied(down, cid), f"{cid} answered")  # type: ignore[misc]
    wait_for(lambda: store_down(down), "found the store down")
    assert holding(down.state_dir / "trace-spool", *texts.values())  # their traces wait there

    def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        return call(), time.monotonic() - started

    with ThreadPoolExecutor(len(texts) + 1) as pool:
        erasures = [
            pool.submit(
                timed,
                lambda cid=cid: httpx.delete(  # type: ignore[misc]
                    f"{down.url}/v1/conversations/{cid}", headers=bearer(ALICE), timeout=60
                ),
            )
            for cid in texts
        ]
        other = pool.submit(
            timed,
            lambda: httpx.post(
                f"{down.url}/v1/conversations/ws:evil:meanwhile/messages",
                json={"text": "hello"},
                headers=bearer(MALLORY),
                timeout=60,
            ),
        )
        posted, post_s = other.result()
        results = [f.result() for f in erasures]
    assert posted.status_code == 202 and post_s < 2.0, (posted.text, post_s)
    for resp, seconds in results:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["pending"] == ["traces"] and body["removed"]["conversation"] == 1
        assert "traces" not in body["removed"]
        assert seconds < 5.0, seconds
    wait_for(lambda: not holding(down.state_dir, *texts.values()), "scrubbed", timeout=15)


def replied(srv: ServerProcess, cid: str) -> bool:
    found = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=bearer(ALICE)).json()
    return bool(found.get("replies"))


def test_erased_traces_never_reach_mlflow_even_after_an_outage(tmp_path: Path) -> None:
    """Erased while the tracking store is down; the next server, with the store up, exports
    what the spool holds: the kept conversation's traces, never the erased one's."""
    state = tmp_path / "state"
    gone, kept = "ws:erin:outage-gone", "ws:erin:outage-kept"
    down_env = {**TRACED, "AGENTWORKER_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    srv = ServerProcess(state, env=down_env)
    srv.log = tmp_path / "down.log"
    srv.start()
    try:
        wait_answered(srv, gone, [send(srv, gone, "my secret is outage-secret-1")])
        wait_answered(srv, kept, [send(srv, kept, "keep this")])
        wait_for(lambda: store_down(srv), "found the store down")
        erased = httpx.delete(f"{srv.url}/v1/conversations/{gone}", headers=srv.auth, timeout=30)
        assert erased.status_code == 200 and erased.json()["pending"] == ["traces"]
        wait_for(lambda: not holding(state, "outage-secret-1"), "scrubbed", timeout=15)
    finally:
        srv.stop()
    up = ServerProcess(state, env=TRACED)  # the store in the state directory, reachable
    up.log = tmp_path / "up.log"
    up.start()
    try:
        wait_traces_exported(state)
        forget = state / "trace-spool" / "forget"
        wait_for(lambda: not list(forget.glob("*.pending")), "the erasure applied")
    finally:
        up.stop()
    assert traced_conversations(state) == [kept]


def test_an_erasure_cuts_off_the_running_turn_and_leaves_no_text_behind(tmp_path: Path) -> None:
    """DELETE while a turn is in its model call: the turn commits nothing, its trace (which
    ends after the erasure) never reaches MLflow (before: ``traces: 0``, then the trace
    appeared), the id takes no message until the run is gone, and no file of the state
    directory holds the conversation's text afterwards (the database's freed pages and its
    write-ahead log, the spool, MLflow's database)."""
    state = tmp_path / "state"
    # Each model call takes 5 s: the erasure and the message after it must land while the
    # cut-off turn is still in its call, on a machine busy with other tests too.
    srv = ServerProcess(state, env={**TRACED, "AGENTWORKER_MODEL": "offline:5000"})
    srv.log = tmp_path / "server.log"
    srv.start()
    cid, kept = "ws:erin:cut-off", "ws:erin:after"
    secret = f"secret-{uuid.uuid4().hex}"
    try:
        wait_answered(srv, cid, [send(srv, cid, f"first {secret}-a")], timeout=30)
        send(srv, cid, f"second {secret}-b")
        wait_for(lambda: view(srv, cid)["status"] == "running", "running")
        erased = httpx.delete(f"{srv.url}/v1/conversations/{cid}", headers=srv.auth, timeout=30)
        assert erased.status_code == 200, erased.text
        assert erased.json()["removed"]["inbox"] == 2
        again = httpx.post(
            f"{srv.url}/v1/conversations/{cid}/messages", json={"text": "hi"}, headers=srv.auth
        )
        assert again.status_code == 503, again.text
        assert again.json()["error"]["code"] == "erasure_in_progress"
        wait_for(lambda: httpx.get(f"{srv.url}/healthz").json()["busy"] == 0, "the run gone")
        assert httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=srv.auth).status_code == 404
        # A later turn's trace is exported after the cut-off one would have been.
        wait_answered(srv, kept, [send(srv, kept, "and now?")], timeout=30)
        wait_traces_exported(state)
        wait_for(lambda: kept in traced_conversations(state), "the later trace exported")
    finally:
        srv.stop()
    assert traced_conversations(state) == [kept]
    assert holding(state, secret) == []


def test_the_state_directory_is_the_owners_alone(tmp_path: Path) -> None:
    """A state directory left open (0755) is tightened at start, with a log line; every
    file the server, its exporter and MLflow write there is 0600, every directory 0700."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    srv = ServerProcess(state, env=TRACED)  # the MLflow store seeded 0644: tightened too
    srv.log = tmp_path / "server.log"
    srv.start()
    try:
        wait_answered(srv, "ws:erin:modes", [send(srv, "ws:erin:modes", "hello")])
        wait_traces_exported(state)
        wait_for(lambda: traced_conversations(state) == ["ws:erin:modes"], "exported")
    finally:
        srv.stop()
    modes = {
        str(path.relative_to(state)): stat.S_IMODE(path.stat().st_mode)
        for path in [state, *state.rglob("*")]
    }
    assert {"agentworker.db", "mlflow.db", "dev-token", "agentworker.lock"} <= set(modes)
    loose = {
        name: f"{mode:04o}"
        for name, mode in modes.items()
        if mode != (0o700 if (state / name).is_dir() else 0o600)
    }
    assert loose == {}
    assert "was open to other users (0755): now 0700" in srv.log.read_text()
