"""Identity with real tokens: the JWT authenticator against a JWKS served over loopback
(RS256, ES256) and with an HS256 secret, then two tenants on a real local server, each
trying to read, post into, follow and answer the other's conversation."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.sync.client import connect

from events.identity import Principal
from tests.fakes import in_memory_aws
from tests.functional.identity_env import (
    AUDIENCE,
    HS_SECRET,
    ISSUER,
    KeyPair,
    claims,
    hs256,
    jwks_server,
    unsigned,
)
from tests.functional.server_process import ServerProcess
from workers import bootstrap
from workers.adapters.tokens import JwtAuthenticator
from workers.errors import AuthorizerRefusal, ConfigError, RetryableError, Unauthenticated
from workers.handlers import authorizer
from workers.sandbox.emulator import LambdaContextStub

RSA, EC = KeyPair.rsa(), KeyPair.ec()


@pytest.fixture(scope="module")
def jwks() -> Iterator[Any]:
    with jwks_server(RSA, EC) as server:
        yield server


@pytest.fixture
def auth(jwks: Any) -> JwtAuthenticator:
    return JwtAuthenticator(
        jwks_url=jwks.url, issuer=ISSUER, audience=AUDIENCE, roles_claim="realm_access.roles"
    )


def refused(auth: JwtAuthenticator, token: str | None) -> str:
    with pytest.raises(Unauthenticated) as exc:
        auth.authenticate(token)
    assert not token or token not in str(exc.value)  # never the token in a message
    return exc.value.reason


def test_rs256_and_es256_tokens_of_the_jwks_become_principals(auth: JwtAuthenticator) -> None:
    keycloak = claims("alice") | {"realm_access": {"roles": ["approver", "agent"]}}
    assert auth.authenticate(RSA.sign(keycloak)) == Principal(
        id="alice", tenant="acme", roles=frozenset({"approver", "agent"})
    )
    assert auth.authenticate(EC.sign(claims("bob", tenant="globex"))).tenant == "globex"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("not.a.jwt", "malformed"),
        (RSA.sign(claims("a", exp=int(time.time()) - 120)), "expired"),
        (KeyPair.rsa(kid="rsa-1").sign(claims("a")), "bad_signature"),  # same kid, other key
        (RSA.sign(claims("a", aud="another-api")), "wrong_audience"),
        (RSA.sign(claims("a", iss="https://evil.test")), "wrong_issuer"),
        (RSA.sign(claims("a", nbf=int(time.time()) + 600)), "not_yet_valid"),
        (RSA.sign({k: v for k, v in claims("a").items() if k != "sub"}), "missing_claim"),
        (RSA.sign({k: v for k, v in claims("a").items() if k != "aud"}), "missing_claim"),
        (RSA.sign(claims("a", tenant=None)), "missing_claim"),
        (KeyPair.rsa(kid="rsa-unknown").sign(claims("a")), "unknown_key"),
        (unsigned(claims("a")), "alg_not_allowed"),
        (hs256(claims("a")), "alg_not_allowed"),  # HS256 is not taken where keys are public
    ],
)
def test_bad_tokens_are_refused_with_a_reason(
    auth: JwtAuthenticator, token: str | None, reason: str
) -> None:
    assert refused(auth, token) == reason


def forged(header: dict[str, Any], payload: str | None = None) -> str:
    """A token with ``header``, ``payload`` (JSON text; valid claims by default) and a
    signature nobody made."""

    def part(data: str | bytes) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    body = json.dumps(claims("a")) if payload is None else payload
    return ".".join([part(json.dumps(header)), part(body), part(bytes(256))])


class UnnamedAlgorithm(KeyPair):
    """A key its JWKS publishes without ``alg`` (as some providers do)."""

    def jwk(self) -> dict[str, Any]:
        return {k: v for k, v in super().jwk().items() if k != "alg"}


class ForEncryption(KeyPair):
    def jwk(self) -> dict[str, Any]:
        return super().jwk() | {"use": "enc"}


RSA_UNNAMED = UnnamedAlgorithm("rsa-unnamed", "RS256", KeyPair.rsa().private)
EC_UNNAMED = UnnamedAlgorithm("ec-unnamed", "ES256", KeyPair.ec().private)
RSA_ENC = ForEncryption("rsa-enc", "RS256", KeyPair.rsa().private)


@pytest.fixture(scope="module")
def every_key() -> Iterator[JwtAuthenticator]:
    """An authenticator whose JWKS holds keys with and without ``alg`` and one for
    encryption."""
    with jwks_server(RSA, EC, RSA_UNNAMED, EC_UNNAMED, RSA_ENC) as keys:
        yield JwtAuthenticator(jwks_url=keys.url, issuer=ISSUER, audience=AUDIENCE)


def signed(key: KeyPair, alg: str) -> str:
    return jwt.encode(claims("a"), key.private, algorithm=alg, headers={"kid": key.kid})


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        # The issue's: the header's alg picked a verifier for another kind of key (a 500).
        (forged({"alg": "ES256", "kid": "rsa-1"}), "alg_not_allowed"),
        (forged({"alg": "RS256", "kid": "ec-1"}), "alg_not_allowed"),
        (forged({"alg": "PS256", "kid": "ec-1"}), "alg_not_allowed"),
        (forged({"alg": "ES384", "kid": "ec-unnamed"}), "alg_not_allowed"),  # a P-256 key
        # Signed by the key, but with an algorithm it is not published for.
        (signed(RSA, "PS256"), "alg_not_allowed"),
        (signed(RSA, "RS384"), "alg_not_allowed"),
        (signed(RSA_UNNAMED, "PS256"), "alg_not_allowed"),  # no alg: RSA keys sign RS256
        (forged({"alg": "EdDSA", "kid": "rsa-1"}), "alg_not_allowed"),
        (
            jwt.encode(claims("a"), "k" * 40, algorithm="HS256", headers={"kid": "rsa-1"}),
            "alg_not_allowed",
        ),
        (RSA_ENC.sign(claims("a")), "unknown_key"),  # a key for encryption signs nothing
        (forged({"alg": "RS256", "kid": 5}), "malformed"),
        # The claims are read before the signature to find the key: a 5,000-digit number
        # there is a malformed token, not a crash.
        (forged({"alg": "RS256", "kid": "rsa-1"}, '{"exp": ' + "1" * 5000 + "}"), "malformed"),
    ],
)
def test_a_header_alg_its_key_does_not_sign_with_is_refused(
    every_key: JwtAuthenticator, token: str, reason: str
) -> None:
    assert refused(every_key, token) == reason
    # What the keys do sign still passes, whether the JWKS names their alg or not.
    for key in (RSA, EC, RSA_UNNAMED, EC_UNNAMED):
        assert every_key.authenticate(key.sign(claims("a"))).id == "a"


def test_the_aws_authorizer_refuses_an_es256_header_naming_an_rsa_key(
    monkeypatch: pytest.MonkeyPatch, jwks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's: a 500 from the ``$connect`` authorizer; API Gateway's 401 now, and the
    token is not logged."""
    in_memory_aws(monkeypatch, AGENTWORKER_AUTH_JWKS_URL=jwks.url)
    token = forged({"alg": "ES256", "kid": RSA.kid})
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/dev/$connect",
        "headers": {"Sec-WebSocket-Protocol": f"agentworker, bearer.{token}"},
        "requestContext": {"routeKey": "$connect", "connectionId": "c-1"},
    }
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(AuthorizerRefusal, match="^Unauthorized$"):
            authorizer.handler(event, LambdaContextStub("authorizer", "arn:aws:lambda:authorizer"))
    finally:
        bootstrap.reset_aws_deps()
    assert token.split(".")[2] not in caplog.text


def test_the_clock_skew_allowed_is_bounded(jwks: Any) -> None:
    skewed = RSA.sign(claims("a", exp=int(time.time()) - 20))
    assert JwtAuthenticator(jwks_url=jwks.url, leeway=30).authenticate(skewed).id == "a"
    assert refused(JwtAuthenticator(jwks_url=jwks.url, leeway=5), skewed) == "expired"


def test_the_hs256_secret_signs_development_tokens() -> None:
    auth = JwtAuthenticator(secret=HS_SECRET, default_tenant="dev")
    assert auth.authenticate(hs256(claims("carol", tenant=None))) == Principal(
        id="carol", tenant="dev"
    )
    assert refused(auth, hs256(claims("carol"), secret="x" * 40)) == "bad_signature"
    assert refused(auth, RSA.sign(claims("carol"))) == "alg_not_allowed"
    assert refused(auth, unsigned(claims("carol"))) == "alg_not_allowed"
    with pytest.raises(ConfigError, match="32 bytes"):
        JwtAuthenticator(secret="short")


def test_an_unreachable_jwks_is_a_transient_fault_not_a_refusal() -> None:
    with jwks_server(RSA) as gone:
        url = gone.url
    auth = JwtAuthenticator(jwks_url=url)
    with pytest.raises(RetryableError, match="JWKS"):
        auth.authenticate(RSA.sign(claims("a")))


def test_the_token_never_reaches_the_log(
    auth: JwtAuthenticator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = RSA.sign(claims("a", exp=int(time.time()) - 120))
    refused(auth, token)
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


# --- two tenants on a real server -------------------------------------------------------------

ALICE = hs256(claims("alice", tenant="acme"))
BOB = hs256(claims("bob", tenant="acme"))  # same tenant, another user
MALLORY = hs256(claims("mallory", tenant="evil"))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET}
    with ServerProcess(tmp_path_factory.mktemp("auth"), env=env) as srv:
        yield srv


def wait_reply(srv: ServerProcess, cid: str, token: str, message_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=bearer(token)).json()
        for reply in view["replies"]:
            if message_id in reply["payload"]["in_reply_to"]:
                return dict(reply["payload"])
        time.sleep(0.05)
    raise AssertionError("no reply")


def test_the_dev_token_gives_way_to_jwts(server: ServerProcess) -> None:
    resp = httpx.get(f"{server.url}/v1/conversations/ws:x", headers=server.auth)
    assert resp.status_code == 401 and resp.json()["error"]["reason"] == "malformed"


def test_another_tenant_or_user_finds_nothing_over_http(server: ServerProcess) -> None:
    cid = "ws:acme:alice-1"
    sent = httpx.post(
        f"{server.url}/v1/conversations/{cid}/messages",
        json={"text": "my card is 4111 1111 1111 1111"},
        headers=bearer(ALICE),
    )
    assert sent.status_code == 202
    wait_reply(server, cid, ALICE, sent.json()["message_id"])
    own = httpx.get(f"{server.url}/v1/conversations/{cid}", headers=bearer(ALICE)).json()
    assert own["messages"][0]["sender"] == "alice"
    for stranger in (MALLORY, BOB):
        for resp in (
            httpx.get(f"{server.url}/v1/conversations/{cid}", headers=bearer(stranger)),
            httpx.get(f"{server.url}/v1/conversations/{cid}/state", headers=bearer(stranger)),
            httpx.post(
                f"{server.url}/v1/conversations/{cid}/messages",
                json={"text": "let me in"},
                headers=bearer(stranger),
            ),
            httpx.post(
                f"{server.url}/v1/conversations/{cid}/messages",
                json={"approval": {"interrupt_id": "i-1", "approved": False}},
                headers=bearer(stranger),
            ),
        ):
            # The same answer as for an id that does not exist: ids do not leak.
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "not_found"
    # The owner's own answer to nothing: 409, it exists for them.
    mine = httpx.post(
        f"{server.url}/v1/conversations/{cid}/messages",
        json={"approval": {"interrupt_id": "i-1", "approved": True}},
        headers=bearer(ALICE),
    )
    assert mine.status_code == 409
    after = httpx.get(f"{server.url}/v1/conversations/{cid}", headers=bearer(ALICE)).json()
    assert len(after["messages"]) == 1  # nothing a stranger sent was written


def test_another_tenant_cannot_follow_or_post_over_the_websocket(server: ServerProcess) -> None:
    cid = "ws:acme:alice-2"
    with connect(server.ws_url, additional_headers=bearer(ALICE)) as alice:
        alice.send(json.dumps({"action": "send", "conversation_id": cid, "text": "hello"}))
        frames = [json.loads(alice.recv(timeout=10)) for _ in range(2)]
        assert frames[0]["type"] == "accepted"
        with connect(
            server.ws_url,
            subprotocols=["agentworker", f"bearer.{MALLORY}"],  # type: ignore[list-item]
        ) as mallory:
            # Following it is answered as following an id that does not exist (17.5): no
            # existence oracle, and nothing of it is shown.
            for followed in (cid, "ws:acme:nothing-here"):
                mallory.send(json.dumps({"action": "subscribe", "conversation_id": followed}))
                assert json.loads(mallory.recv(timeout=10)) == {
                    "type": "subscribed",
                    "conversation_id": followed,
                    "conversation": None,
                }
            for frame in (
                {"action": "send", "conversation_id": cid, "text": "hi"},
                {"action": "approve", "conversation_id": cid, "interrupt_id": "i-1"},
            ):
                mallory.send(json.dumps(frame))
                answer = json.loads(mallory.recv(timeout=10))
                assert answer["type"] == "error" and answer["error"]["code"] == "not_found"
            # Alice's next reply reaches Alice only.
            alice.send(json.dumps({"action": "send", "conversation_id": cid, "text": "again"}))
            while json.loads(alice.recv(timeout=10)).get("type") != "reply":
                pass
            mallory.send(json.dumps({"action": "ping"}))
            assert json.loads(mallory.recv(timeout=10)) == {"type": "pong"}  # nothing before


def test_a_conversation_followed_before_it_exists_shows_nothing_of_someone_elses(
    server: ServerProcess,
) -> None:
    """Mallory follows an id before Alice creates it: she is shown nothing of it, and her
    own first message there is refused."""
    cid = "ws:acme:alice-3"
    with connect(server.ws_url, additional_headers=bearer(MALLORY)) as mallory:
        mallory.send(json.dumps({"action": "subscribe", "conversation_id": cid}))
        subscribed = json.loads(mallory.recv(timeout=10))
        assert subscribed["type"] == "subscribed" and subscribed["conversation"] is None
        sent = httpx.post(
            f"{server.url}/v1/conversations/{cid}/messages",
            json={"text": "secret plans"},
            headers=bearer(ALICE),
        )
        wait_reply(server, cid, ALICE, sent.json()["message_id"])
        mallory.send(json.dumps({"action": "send", "conversation_id": cid, "text": "me too"}))
        answer = json.loads(mallory.recv(timeout=10))
        assert answer["type"] == "error" and answer["error"]["code"] == "not_found"
        mallory.send(json.dumps({"action": "ping"}))
        assert json.loads(mallory.recv(timeout=10)) == {"type": "pong"}


def test_the_server_log_holds_no_token(server: ServerProcess) -> None:
    httpx.get(f"{server.url}/v1/conversations/ws:x", headers=bearer(MALLORY + "x"))
    log = Path(server.log).read_text()
    assert MALLORY not in log and ALICE not in log and MALLORY.split(".")[2] not in log


def test_rs256_tokens_from_a_jwks_on_a_real_server(tmp_path: Path, jwks: Any) -> None:
    env = {
        "AGENTWORKER_AUTH_JWKS_URL": jwks.url,
        "AGENTWORKER_AUTH_ISSUER": ISSUER,
        "AGENTWORKER_AUTH_AUDIENCE": AUDIENCE,
    }
    with ServerProcess(tmp_path, env=env) as srv:
        cid = "ws:acme:rs"
        ok = httpx.post(
            f"{srv.url}/v1/conversations/{cid}/messages",
            json={"text": "hi"},
            headers=bearer(RSA.sign(claims("alice"))),
        )
        assert ok.status_code == 202
        other = httpx.get(
            f"{srv.url}/v1/conversations/{cid}", headers=bearer(EC.sign(claims("eve", "evil")))
        )
        assert other.status_code == 404
        bad = httpx.get(
            f"{srv.url}/v1/conversations/{cid}",
            headers=bearer(RSA.sign(claims("alice", aud="elsewhere"))),
        )
        assert bad.status_code == 401 and bad.json()["error"]["reason"] == "wrong_audience"
        confused = httpx.get(  # was a 500: an ES256 verifier given the RSA key
            f"{srv.url}/v1/conversations/{cid}",
            headers=bearer(forged({"alg": "ES256", "kid": RSA.kid})),
        )
        assert confused.status_code == 401
        assert confused.json()["error"]["reason"] == "alg_not_allowed"


def say(srv: ServerProcess, cid: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    sent = httpx.post(
        f"{srv.url}/v1/conversations/{cid}/messages", json=body, headers=bearer(token)
    )
    assert sent.status_code == 202, sent.text
    return wait_reply(srv, cid, token, sent.json()["message_id"])


def test_a_customer_cannot_read_or_close_another_customers_ticket(server: ServerProcess) -> None:
    """What the issue found: a user asked in their own conversation for ticket 1 and got
    another customer's (card digits in its title), then closed it with their own approval."""
    opened = say(
        server, "ws:acme:t", ALICE, {"text": "please open a ticket about card 4111 1111 1111 1111"}
    )
    ticket_id = opened["text"].split()[2].rstrip(":")
    assert opened["text"].startswith("Opened ticket")
    peek = say(server, "ws:evil:t", MALLORY, {"text": f"status of ticket {ticket_id}"})
    assert "does not exist" in peek["text"] and "4111" not in peek["text"]
    ask = say(server, "ws:evil:t", MALLORY, {"text": f"close ticket {ticket_id}"})
    assert ask["type"] == "approval_request"
    done = say(
        server,
        "ws:evil:t",
        MALLORY,
        {"approval": {"interrupt_id": ask["interrupt_id"], "approved": True}},
    )
    assert "does not exist" in done["text"]
    still = say(server, "ws:acme:t", ALICE, {"text": f"status of ticket {ticket_id}"})
    # Alice's own ticket, still open (the reply guard masks the card in its title)
    assert "'card [CARD]' is open" in still["text"]


def test_the_requester_cannot_answer_their_own_four_eyes_approval_in_any_form(
    tmp_path: Path,
) -> None:
    """Issue 17.1: with ``update_ticket = "not_requester"`` the requester's ``approval`` was
    refused but the same answer as a ``resume`` (HTTP, or a WebSocket ``resume`` frame) was
    accepted and the tool ran. Every form is refused with 403 and writes nothing; a
    supervisor of the tenant decides."""
    env = {
        "AGENTWORKER_AUTH_JWT_SECRET": HS_SECRET,
        "AGENTWORKER_APPROVAL_POLICIES": '{"update_ticket": "not_requester"}',
        "AGENTWORKER_AUTH_TENANT_ROLES": "supervisor",
    }
    sue = hs256(claims("sue", tenant="acme", roles=["supervisor"]))
    with ServerProcess(tmp_path, env=env) as srv:
        cid = "ws:acme:four-eyes"
        opened = say(srv, cid, ALICE, {"text": "please open a ticket about the printer"})
        ticket_id = opened["text"].split()[2].rstrip(":")
        ask = say(srv, cid, ALICE, {"text": f"close ticket {ticket_id}"})
        assert ask["type"] == "approval_request" and ask["requested_by"] == ["alice"]
        interrupt_id = ask["interrupt_id"]
        url = f"{srv.url}/v1/conversations/{cid}/messages"
        for body in (
            {"approval": {"interrupt_id": interrupt_id, "approved": True}},
            {"resume": {"interrupt_id": interrupt_id, "value": {"approved": True}}},
            {"resume": {"interrupt_id": interrupt_id, "value": True}},
        ):
            resp = httpx.post(url, json=body, headers=bearer(ALICE))
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "not_allowed"
        with connect(srv.ws_url, additional_headers=bearer(ALICE)) as ws:
            frame = {
                "action": "resume",
                "conversation_id": cid,
                "interrupt_id": interrupt_id,
                "value": {"approved": True},
            }
            ws.send(json.dumps(frame))
            answer = json.loads(ws.recv(timeout=10))
            assert answer["type"] == "error" and answer["error"]["code"] == "not_allowed"
        view = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=bearer(ALICE)).json()
        assert [m["kind"] for m in view["messages"]] == ["user", "user"]  # nothing written
        done = say(srv, cid, sue, {"resume": {"interrupt_id": interrupt_id, "value": True}})
        assert "closed" in done["text"].lower(), done
