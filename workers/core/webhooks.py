"""A conversation's own webhooks: a caller who may use the conversation subscribes a
receiver of its events (``POST /v1/conversations/{id}/webhooks``), lists and deletes them;
erasing the conversation deletes them. The URL is the caller's: it must be ``https`` and
name no loopback, private or link-local address (checked here, and again on every
connection by the sender, which resolves the name itself), unless the runtime allows it for
development (``webhook_private_urls``)."""

from __future__ import annotations

import base64
import ipaddress
import secrets
import uuid

from events.identity import Principal
from events.webhooks import WebhookRequest
from workers.core.model import ConversationWebhook
from workers.core.ports import ConversationWebhooks
from workers.core.steps import Deps, spend_quotas, usable
from workers.errors import BadInput, NotFound

WEBHOOKS_PER_CONVERSATION = 5
LOCAL_NAMES = ("localhost", "localhost.localdomain")


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_url(url: str, *, private_ok: bool) -> None:
    """``BadInput`` (``url_not_allowed``) for a URL a caller may not make the server post to:
    not ``https``, or naming a loopback, private or link-local host (unless ``private_ok``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if private_ok:
        return
    if parts.scheme != "https":
        raise BadInput("url_not_allowed", "url: a webhook's URL must be https", field="url")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        local = host in LOCAL_NAMES or host.endswith((".localhost", ".internal", ".local"))
    else:
        local = not address.is_global
    if local or not host:
        raise BadInput(
            "url_not_allowed",
            f"url: {host or 'no host'} is not a public address",
            field="url",
        )


def _hooks(deps: Deps) -> ConversationWebhooks:
    if deps.webhooks is None:
        raise BadInput("no_webhooks", "this runtime keeps no conversation webhooks")
    return deps.webhooks


def create_webhook(
    deps: Deps, conversation_id: str, principal: Principal, request: WebhookRequest
) -> ConversationWebhook:
    """Subscribe ``request``'s receiver to the conversation's events, for a principal who
    may use it (``NotFound`` otherwise); spends a message of its quota."""
    hooks = _hooks(deps)
    state = usable(deps, conversation_id, principal)
    url = str(request.url)
    check_url(url, private_ok=deps.settings.webhook_private_urls)
    spend_quotas(deps, principal, messages=1, size=len(url))
    hook = ConversationWebhook(
        webhook_id=f"whk_{uuid.uuid4().hex[:24]}",
        conversation_id=conversation_id,
        url=url,
        events=tuple(request.events),
        secret=request.secret or new_secret(),
        created_by=principal.id,
        created_at=deps.clock.now(),
        tenant=state.tenant,
        owner=state.owner,
    )
    return hooks.add_webhook(hook, limit=WEBHOOKS_PER_CONVERSATION)


def list_webhooks(
    deps: Deps, conversation_id: str, principal: Principal
) -> list[ConversationWebhook]:
    hooks = _hooks(deps)
    usable(deps, conversation_id, principal)
    return hooks.webhooks_of(conversation_id)


def delete_webhook(deps: Deps, conversation_id: str, webhook_id: str, principal: Principal) -> None:
    hooks = _hooks(deps)
    usable(deps, conversation_id, principal)
    if not hooks.remove_webhook(conversation_id, webhook_id):
        raise NotFound(f"webhook_id: no webhook {webhook_id!r}", field="webhook_id")
