"""Who is calling: the :class:`Principal` every entry point turns its caller into.

An authenticator adapter (JWT bearer token, Slack signature, IAM) produces it; the core
decides with it who may read, post into, follow and answer a conversation
(:func:`workers.core.policies.may_access`). It is also what a WebSocket connection keeps
between its frames (the AWS ``$connect`` authorizer stores it with the connection).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
