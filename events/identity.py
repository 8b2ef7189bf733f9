"""Who is calling: the :class:`Principal` every entry point turns its caller into.

An authenticator adapter (JWT bearer token, Slack signature, IAM) produces it; the core
decides with it who may read, post into, follow and answer a conversation
(:func:`workers.core.policies.may_access`). It is also what a WebSocket connection keeps
between its frames (the AWS ``$connect`` authorizer stores it with the connection).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

WS_SUBPROTOCOL = "agentworker"
"""Offered by a browser with its token (``new WebSocket(url, ["agentworker",
"bearer.<token>"])``): the server picks it, so the token is never echoed back."""
WS_SUBPROTOCOL_TOKEN = "bearer."
"""The prefix of the subprotocol that carries a WebSocket client's token."""


def offered_subprotocols(header: str | None) -> list[str]:
    """The subprotocols a WebSocket client offers (its ``Sec-WebSocket-Protocol`` header)."""
    return [p.strip() for p in (header or "").split(",") if p.strip()]


LOCAL_TENANT = "local"
"""The tenant of the embedded server's own user when no authentication is configured."""


class Principal(BaseModel):
    """An authenticated caller.

    - ``id``: who (a token's ``sub``, ``slack:<team>:<user>``, ``iam:<arn>``); it becomes the
      ``sender`` of what they post.
    - ``tenant``: the organisation whose conversations they may see; another tenant's
      conversations do not exist for them.
    - ``roles``: from the token (approval policies name them).
    - ``groups``: owners they act for besides themselves, as this request proves (a Slack
      request: its channel, so everyone in a channel shares its conversations).
    - ``service``: a trusted backend (IAM caller, queue producer): it may act on any
      conversation and speak for a user, whose id it gives as the sender.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    tenant: str = Field(min_length=1, max_length=256)
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    service: bool = False

    @property
    def owners(self) -> frozenset[str]:
        """The owners whose conversations this principal may use in its tenant."""
        return self.groups | {self.id}


LOCAL_USER = Principal(id="local", tenant=LOCAL_TENANT)
"""The embedded server's single user when it runs without authentication (its callers hold
the development token), and the embedded runtime's in-process callers (CLI, tests)."""

SYSTEM = Principal(id="system", tenant="system", service=True)
"""Trusted in-process callers that act for others (queue consumers, the sandbox)."""

ANONYMOUS = Principal(id="anonymous", tenant="anonymous")
"""A caller of an entry point that has no authenticator in front of it: its conversations
are shared with every other anonymous caller and with nobody else."""


def backend(name: str) -> Principal:
    """A trusted backend: an IAM caller (``iam:<arn>``) or a queue producer."""
    return Principal(id=name, tenant="system", service=True)


def to_authorizer_context(principal: Principal) -> dict[str, str]:
    """The principal as an API Gateway authorizer's context (string values only)."""
    return {
        "principal_id": principal.id,
        "tenant": principal.tenant,
        "roles": ",".join(sorted(principal.roles)),
    }


def from_authorizer_context(context: dict[str, object] | None) -> Principal | None:
    """The principal an API Gateway authorizer stored with a request or a WebSocket
    connection (its context values are strings: ``principal_id``, ``tenant``, ``roles``
    comma-separated); ``None`` when no authorizer ran."""
    if not context or not context.get("principal_id"):
        return None
    roles = str(context.get("roles") or "")
    return Principal(
        id=str(context["principal_id"]),
        tenant=str(context.get("tenant") or ""),
        roles=frozenset(r for r in roles.split(",") if r),
    )


class ApprovalPolicy(BaseModel):
    """Who may approve or deny a tool's calls (the app file's ``approval_policies``): by
    default ``anyone`` who may use the conversation; ``roles``: only principals with one of
    them; ``not_requester``: not the person whose message led to the call (four eyes).
    In ``agentworker.toml``: ``update_ticket = "not_requester"``, or
    ``update_ticket = { roles = ["approver"], not_requester = true }``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: frozenset[str] | None = Field(
        default=None, description="Roles of which the approver needs one (unset: any)."
    )
    not_requester: bool = Field(default=False, description="The requester may not decide.")

    @classmethod
    def parse(cls, value: object) -> ApprovalPolicy:
        """A policy from its short names (``anyone``, ``not_requester``) or its fields."""
        if value == "anyone":
            return cls()
        if value == "not_requester":
            return cls(not_requester=True)
        if isinstance(value, str):
            raise ValueError(f"{value!r}: expected 'anyone', 'not_requester' or a table")
        return cls.model_validate(value)

    def describe(self) -> str:
        parts = []
        if self.roles is not None:
            parts.append(f"a principal with a role in {sorted(self.roles)}")
        if self.not_requester:
            parts.append("someone other than the requester")
        return " and ".join(parts) or "anyone in the conversation"


RESERVED_PREFIXES = ("slack:", "iam:")
"""Principal ids and tenants of other authenticators (Slack members and workspaces, IAM
callers): a token may not claim them."""
RESERVED_TENANTS = frozenset({LOCAL_TENANT, "system", "anonymous", "eval"})
"""The built-in tenants (the development token's user, trusted backends, callers with no
authenticator, ``agentworker eval``): a token may not claim them."""


def foreign_namespace(value: str) -> bool:
    """Whether a token's ``sub`` or tenant is in a namespace another authenticator owns."""
    return value.startswith(RESERVED_PREFIXES)


def identity_key(*parts: str) -> str:
    """One key for several identity parts (tenant and owner, tenant and principal): joined
    with ``/``, each part's ``%`` and ``/`` percent-encoded, so different parts never give the
    same key (``acme/team`` + ``bob`` is not ``acme`` + ``team/bob``). Parts without those
    characters read as before: ``local/local``."""
    return "/".join(p.replace("%", "%25").replace("/", "%2F") for p in parts)


class ClaimMapping(BaseModel):
    """Where a token's claims keep the tenant and the roles (settings ``auth_*_claim``)."""

    model_config = ConfigDict(frozen=True)

    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    default_tenant: str | None = None

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """``sub`` as the principal, of the tenant and with the roles the claims name;
        ``ValueError`` (with the reason first: ``missing_claim: ...``) when they cannot."""
        tenant = claim(claims, self.tenant_claim) or self.default_tenant
        if not isinstance(tenant, str) or not tenant:
            raise ValueError(f"missing_claim: no {self.tenant_claim!r} claim (the tenant)")
        try:
            principal = Principal(
                id=str(claims["sub"]),
                tenant=tenant,
                roles=roles_of(claim(claims, self.roles_claim)),
            )
        except (KeyError, ValidationError):
            raise ValueError("bad_claim: sub or tenant is missing, empty or too long") from None
        if foreign_namespace(principal.id) or foreign_namespace(tenant):
            # A token's user must not pass for a Slack member or channel, or an IAM caller.
            raise ValueError(
                f"bad_claim: sub and tenant may not start with {' or '.join(RESERVED_PREFIXES)}"
                " (another authenticator's principals)"
            )
        if tenant in RESERVED_TENANTS:
            raise ValueError(f"bad_claim: the tenant {tenant!r} is reserved")
        return principal


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at ``path``; dots walk into objects (Keycloak's ``realm_access.roles``)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_of(value: Any) -> frozenset[str]:
    """Roles from a claim: a list of strings, or one string of them separated by spaces or
    commas (API Gateway's JWT authorizer passes a list as ``"[a b]"``)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(r for r in value.strip("[]").replace(",", " ").split() if r)
    if isinstance(value, list) and all(isinstance(r, str) for r in value):
        return frozenset(value)
    raise ValueError("bad_claim: the roles claim is not a list of strings")
