"""``DynamoDBWebhooks``: the conversations' own webhook subscriptions on the AWS runtime, one
item each in the conversation store's table (``pk=webhooks#<conversation>``,
``sk=<webhook id>``), encrypted at rest with the table's key. Every function that delivers
reads a conversation's items once per payload it sends (:class:`SqsWebhookSink`), and the
``webhooks`` function reads the one a delivery names, and the conversation's owner, before
it posts it (:meth:`DynamoDBWebhooks.current`): a subscription deleted, or erased or expired
with its conversation, while deliveries for it were queued gets none of them."""

from __future__ import annotations

from typing import Any

from workers.adapters.aws.calls import AwsCalls
from workers.adapters.aws.dynamodb_table import DynamoDBTable, get_str, key, opt_str, string
from workers.adapters.aws.tables import META_SK, conversation_pk
from workers.core.model import ConversationWebhook
from workers.errors import BadInput

WEBHOOKS = "webhooks#"


class DynamoDBWebhooks:
    """``ConversationWebhooks`` on the table ``table_name``."""

    def __init__(self, *, dynamodb: Any, table_name: str) -> None:
        self.api_calls = AwsCalls()
        self._table = DynamoDBTable(dynamodb, table_name, self.api_calls)

    def add_webhook(self, hook: ConversationWebhook, *, limit: int) -> ConversationWebhook:
        count = len(self.webhooks_of(hook.conversation_id))
        if count >= limit:
            raise BadInput(
                "too_many_webhooks",
                f"conversation_id: it has {count} webhooks, the most it may keep",
                field="conversation_id",
            )
        item = {**key(WEBHOOKS + hook.conversation_id, hook.webhook_id)}
        item["body"] = string(hook.to_json())
        self._table.call("put_item", TableName=self._table.name, Item=item)
        return hook

    def webhooks_of(self, conversation_id: str) -> list[ConversationWebhook]:
        items = self._table.query("pk = :pk", {":pk": string(WEBHOOKS + conversation_id)})
        found = [ConversationWebhook.from_json(get_str(item, "body")) for item in items]
        return sorted(found, key=lambda h: (h.created_at, h.webhook_id))

    def webhook(self, conversation_id: str, webhook_id: str) -> ConversationWebhook | None:
        item = self._table.get(WEBHOOKS + conversation_id, webhook_id)
        return None if item is None else ConversationWebhook.from_json(get_str(item, "body"))

    def current(self, conversation_id: str, webhook_id: str) -> ConversationWebhook | None:
        """The subscription a queued delivery names, while its conversation is the one it
        was made for (the same tenant and owner); ``None`` once it was deleted, or erased or
        expired with its conversation (DynamoDB's TTL expires the conversation's items, not
        this one: an id made again by someone else must not reach the old receiver)."""
        hook = self.webhook(conversation_id, webhook_id)
        if hook is None:
            return None
        meta = self._table.get(conversation_pk(conversation_id), META_SK)
        if meta is None:
            return None
        if (opt_str(meta, "tenant"), opt_str(meta, "owner")) != (hook.tenant, hook.owner):
            return None
        return hook

    def remove_webhook(self, conversation_id: str, webhook_id: str) -> bool:
        gone = self._table.call(
            "delete_item",
            TableName=self._table.name,
            Key=key(WEBHOOKS + conversation_id, webhook_id),
            ReturnValues="ALL_OLD",
        )
        return bool(gone.get("Attributes"))

    def forget_webhooks(self, conversation_id: str) -> int:
        found = self.webhooks_of(conversation_id)
        for hook in found:
            self.remove_webhook(conversation_id, hook.webhook_id)
        return len(found)
