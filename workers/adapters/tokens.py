"""Bearer-token authenticators: JWTs verified with PyJWT (HS256 with a shared secret, or
RS256/ES256 with the keys of a JWKS URL), and the embedded server's development token.

Both runtimes use them: the local server on every ``/v1`` request and WebSocket, the AWS
authorizer on ``$connect``. A refusal is :class:`~workers.errors.Unauthenticated` with a
reason code; no message ever holds the token.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Iterable
from typing import Any

import jwt

from events.identity import LOCAL_USER, WS_SUBPROTOCOL_TOKEN, ClaimMapping, Principal
from workers.config import Settings
from workers.core.policies import HELPDESK_ROLE
from workers.errors import ConfigError, RetryableError, Unauthenticated

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
"""What a JWKS key may sign with. Never ``none``, and never HS* with a public key."""
REQUIRED_CLAIMS = ("exp", "sub")
MAX_TOKEN_BYTES = 16 * 1024
"""Longer is not a token we issued; refused before any parsing."""

# PyJWT's errors, most specific first, and the reason code each becomes.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidIssuedAtError, "not_yet_valid"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidKeyError, "bad_signature"),
)


class JwtAuthenticator:
    """Verifies signature, expiry (with bounded leeway), and issuer and audience when set;
    ``sub`` is the principal, the tenant and roles come from the configured claims."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        tenant_claim: str = "tenant",
        roles_claim: str = "roles",
        default_tenant: str | None = None,
        leeway: float = 30.0,
    ) -> None:
        if (secret is None) == (jwks_url is None):
            raise ConfigError("auth: set exactly one of auth_jwt_secret and auth_jwks_url")
        if secret is not None and len(secret.encode()) < 32:
            raise ConfigError(
                "AGENTWORKER_AUTH_JWT_SECRET: under 32 bytes; HS256 needs a key at least as long"
                " as its hash"
            )
        self._secret = secret
        self._jwks = (
            None if jwks_url is None else jwt.PyJWKClient(jwks_url, lifespan=300, timeout=5)
        )
        self.algorithms = ["HS256"] if secret is not None else list(ASYMMETRIC_ALGORITHMS)
        self.issuer = issuer
        self.audience = audience
        self.claims = ClaimMapping(
            tenant_claim=tenant_claim, roles_claim=roles_claim, default_tenant=default_tenant
        )
        self.leeway = leeway

    @property
    def fetches_keys(self) -> bool:
        """Whether authenticating may fetch the JWKS over the network (run it off the loop)."""
        return self._jwks is not None

    @classmethod
    def for_settings(cls, settings: Settings) -> JwtAuthenticator:
        secret = settings.auth_jwt_secret
        claims = settings.claim_mapping
        return cls(
            secret=None if secret is None else secret.get_secret_value(),
            jwks_url=settings.auth_jwks_url,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            tenant_claim=claims.tenant_claim,
            roles_claim=claims.roles_claim,
            default_tenant=claims.default_tenant,
            leeway=settings.auth_leeway_seconds,
        )

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing", "a bearer token is required")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("malformed", f"the token is over {MAX_TOKEN_BYTES} bytes")
        claims = self._verified_claims(token)
        try:
            return self.claims.principal(claims)
        except ValueError as exc:
            reason, _, message = str(exc).partition(": ")
            raise Unauthenticated(reason, f"the token's {message}") from None

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed", "the token is not a JWT") from None
        if header.get("alg") not in self.algorithms:
            raise Unauthenticated(
                "alg_not_allowed",
                f"the token's alg {str(header.get('alg'))[:20]!r} is not one of"
                f" {', '.join(self.algorithms)}",
            )
        algorithm = str(header["alg"])
        try:
            key: Any = self._secret if self._jwks is None else self._public_key(token, algorithm)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": [*REQUIRED_CLAIMS, *(["aud"] if self.audience else [])],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "invalid")
            raise Unauthenticated(reason, f"token refused: {reason.replace('_', ' ')}") from None
        return claims

    def _public_key(self, token: str, algorithm: str) -> Any:
        """The JWKS key the token's ``kid`` names, if it signs with ``algorithm`` (the header's
        alg picks the verifier: one for another kind of key crashes on it, as ES256 naming
        an RSA key's kid does, or verifies what the key was not published for, as PS256
        with an RS256 key does). A key's algorithm is its ``alg``, else its type's default
        (RSA: RS256; EC: the ES* of its curve). PyJWT's client offers signing keys only: a
        ``kid`` of a ``use: enc`` key is unknown."""
        assert self._jwks is not None
        try:
            jwk = self._jwks.get_signing_key_from_jwt(token)  # PyJWTError: a bad payload
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS unreachable: %s", exc)
            raise RetryableError("the identity provider's keys (JWKS) are unreachable") from None
        except jwt.PyJWKClientError:
            raise Unauthenticated(
                "unknown_key", "the token's key (kid) is not in the JWKS"
            ) from None
        if algorithm != jwk.algorithm_name:
            raise Unauthenticated(
                "alg_not_allowed",
                f"the token's alg {algorithm[:20]!r} is not the one its key (kid) signs with",
            )
        return jwk.key


class DevTokenAuthenticator:
    """The embedded server without auth: one random token (Jupyter's way), held by whoever
    started it, admits the local user. It keeps other local users' processes and web pages
    out; it is not an identity system (configure JWTs for that)."""

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ConfigError("AGENTWORKER_DEV_TOKEN: at least 16 characters")
        self.token = token

    @classmethod
    def generate(cls) -> DevTokenAuthenticator:
        return cls(secrets.token_urlsafe(24))

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated("missing", "a bearer token is required (the dev token)")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise Unauthenticated("bad_token", "not this server's dev token")
        return LOCAL_OPERATOR


LOCAL_OPERATOR = LOCAL_USER.model_copy(update={"roles": frozenset({HELPDESK_ROLE})})
"""Who holds the development token: the local user, who runs the server and so may bring a
helpdesk's tickets in (``ticket:<id>`` conversations, :data:`HELPDESK_ROLE`)."""


def ws_token(authorization: str | None, subprotocols: Iterable[str]) -> str | None:
    """A WebSocket's token: ``Authorization: Bearer`` (clients that can set headers), else
    the subprotocol ``bearer.<token>`` (browsers cannot). Never a query parameter: URLs end
    up in access logs."""
    token = bearer_token(authorization)
    if token is None:
        token = next(
            (
                p[len(WS_SUBPROTOCOL_TOKEN) :]
                for p in subprotocols
                if p.startswith(WS_SUBPROTOCOL_TOKEN)
            ),
            None,
        )
    return token


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (``None`` if absent)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed", "Authorization: expected 'Bearer <token>'")
    return token.strip()
