"""A conversation's own webhooks (``POST /v1/conversations/{id}/webhooks``) on the embedded
runtime: made, listed and deleted by who may use the conversation only, signed with the
secret the answer gave, erased with the conversation; and a caller's URL never reaches
inside (loopback, private, link-local, plain http) unless the server is told so for
development."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.identity_env import HS_SECRET, claims, hs256
from tests.functional.server_process import ServerProcess
from tests.functional.test_webhooks import SECRET, Receiver

ALICE = {"authorization": f"Bearer {hs256(claims('alice', tenant='acme'))}"}
BOB = {"authorization": f"Bearer {hs256(claims('bob', tenant='acme'))}"}
ENV = {"AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET}


def say(srv: ServerProcess, cid: str, text: str) -> None:
    srv.ask(cid, text, ALICE)


def hooks(srv: ServerProcess, cid: str) -> str:
    return f"{srv.url}/v1/conversations/{cid}/webhooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def test_a_conversations_webhook_is_its_owners_and_gets_its_events(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = {**ENV, "AGENTWORKER_WEBHOOK_PRIVATE_URLS": "true"}
    with ServerProcess(tmp_path / "dev", env=env) as srv:
        cid = "ws:alice:hooked"
        say(srv, cid, "hello")
        made = httpx.post(
            hooks(srv, cid), json={"url": receiver.url, "secret": SECRET}, headers=ALICE
        )
        assert made.status_code == 201, made.text
        hook: dict[str, Any] = made.json()
        assert hook["secret"] == SECRET and hook["events"][0] == "reply"
        generated = httpx.post(
            hooks(srv, cid), json={"url": receiver.url, "events": ["notice"]}, headers=ALICE
        ).json()
        assert generated["secret"].startswith("whsec_") and len(generated["secret"]) > 40
        listed = httpx.get(hooks(srv, cid), headers=ALICE).json()["webhooks"]
        assert [h["webhook_id"] for h in listed] == [hook["webhook_id"], generated["webhook_id"]]
        assert all(h["secret"] is None for h in listed)  # shown once, when made

        say(srv, cid, "how do I reset my password?")
        deadline = time.monotonic() + 10
        while not receiver.taken and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = receiver.taken
        assert event["type"] == "reply" and event["data"]["conversation_id"] == cid
        assert receiver.bad_signatures == 0

        # someone else: the conversation does not exist for them
        assert httpx.get(hooks(srv, cid), headers=BOB).status_code == 404
        assert (
            httpx.post(hooks(srv, cid), json={"url": receiver.url}, headers=BOB).status_code == 404
        )
        other = httpx.delete(f"{hooks(srv, cid)}/{hook['webhook_id']}", headers=BOB)
        assert other.status_code == 404

        gone = httpx.delete(f"{hooks(srv, cid)}/{hook['webhook_id']}", headers=ALICE)
        assert gone.json()["deleted"] is True
        say(srv, cid, "thanks")
        time.sleep(1.0)
        assert len(receiver.taken) == 1  # deleted: nothing more
        erased = httpx.delete(f"{srv.url}/v1/conversations/{cid}", headers=ALICE).json()
        assert erased["removed"]["webhooks"] == 1


def test_a_callers_url_never_reaches_inside(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "default", env=ENV) as srv:
        cid = "ws:alice:ssrf"
        say(srv, cid, "hello")
        for url in (
            "http://hooks.example.com/x",  # not https
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost/x",
            "https://metadata.google.internal/x",
            "https://0.0.0.0/x",
        ):
            refused = httpx.post(hooks(srv, cid), json={"url": url}, headers=ALICE)
            assert refused.status_code == 400, (url, refused.text)
            assert refused.json()["error"]["code"] == "url_not_allowed", url
        for body in ({"url": "ftp://x"}, {"url": "https://x.example", "events": []},
                     {"url": "https://x.example", "secret": "hunter2"},
                     {"url": "https://x.example", "events": ["reply", "reply"]}):  # fmt: skip
            assert httpx.post(hooks(srv, cid), json=body, headers=ALICE).status_code == 422, body
        ok = httpx.post(hooks(srv, cid), json={"url": "https://hooks.example.com/x"}, headers=ALICE)
        assert ok.status_code == 201
        for n in range(4):
            httpx.post(hooks(srv, cid), json={"url": f"https://h{n}.example.com"}, headers=ALICE)
        many = httpx.post(hooks(srv, cid), json={"url": "https://h9.example.com"}, headers=ALICE)
        assert many.json()["error"]["code"] == "too_many_webhooks"


def test_a_conversations_webhook_connects_to_public_addresses_only() -> None:
    """A name that resolves inside (``localhost``), an address literal inside: refused
    before any byte is sent, whatever the URL's check let through."""
    import asyncio

    import httpx

    from workers.adapters.webhooks import public_only_transport

    async def post(url: str) -> str:
        async with httpx.AsyncClient(transport=public_only_transport(), timeout=5) as client:
            try:
                await client.post(url, content=b"{}")
            except httpx.ConnectError as exc:
                return str(exc)
        return "sent"

    for url in ("https://localhost:9/x", "http://127.0.0.1:9/x", "http://[::1]:9/x"):
        said = asyncio.run(post(url))
        assert "not a public address" in said, (url, said)
