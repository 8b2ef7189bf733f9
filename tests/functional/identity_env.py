"""Real tokens for the identity tests: RSA and EC keys made here, a JWKS served over
loopback HTTP (as Cognito, Auth0, Okta or Keycloak serve theirs), HS256 tokens, and tokens
that must be refused (expired, wrongly signed, wrong audience or issuer, ``alg: none``)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.test/realms/agentworker"
AUDIENCE = "agentworker-api"
HS_SECRET = "an-hs256-secret-of-at-least-32-bytes!"


@dataclass
class KeyPair:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str = "rsa-1") -> KeyPair:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str = "ec-1") -> KeyPair:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = (
            jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        )
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return data | {"kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid} | headers
        )


def claims(sub: str, tenant: str | None = "acme", **extra: Any) -> dict[str, Any]:
    """A valid token's claims for ``sub`` of ``tenant``, for an hour."""
    now = int(time.time())
    out: dict[str, Any] = {
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    if tenant is not None:
        out["tenant"] = tenant
    return out | extra


def hs256(claims_: dict[str, Any], secret: str = HS_SECRET) -> str:
    return jwt.encode(claims_, secret, algorithm="HS256")


def unsigned(claims_: dict[str, Any]) -> str:
    """An ``alg: none`` token (no signature): what a forger sends."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims_)}."


@dataclass
class JwksServer:
    """Serves ``{"keys": [...]}`` at ``/jwks.json``; counts fetches."""

    keys: list[KeyPair]
    fetches: int = 0
    url: str = ""


@contextmanager
def jwks_server(*keys: KeyPair) -> Iterator[JwksServer]:
    state = JwksServer(list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.fetches += 1
            body = json.dumps({"keys": [k.jwk() for k in state.keys]}).encode()
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
