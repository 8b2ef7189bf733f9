"""The deployable stack's one source of truth: resource names, the table's keys and TTL, the
inbound queue's settings and every function's environment.

``serverless.yml`` reads them from ``deploy/stack.json``, which ``agentworker stack-spec``
writes from this module (a test fails when the file is stale); the sandbox and the moto
emulator create their resources from the same :class:`StackNames` and table spec; and every
environment variable named here is a field of :class:`~workers.config.Settings` (checked when
the spec is built). Values may hold CloudFormation functions (``Ref``, ``Fn::GetAtt``,
``Fn::Sub``) and Serverless variables (``${param:...}``), resolved at packaging and deploy
time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from events.inbound import MESSAGE_DETAIL_TYPE, TICKET_DETAIL_TYPE_PREFIX
from workers.adapters.aws.tables import TTL_ATTRIBUTE, DynamoDBTableSpec
from workers.config import ENV_PREFIX, Settings

FUNCTIONS = (
    "ingest",
    "turn",
    "deliver",
    "approve",
    "feedback",
    "sweeper",
    "slack",
    "authorizer",
    "api",
    "webhooks",
)
"""The Lambda functions of the stack (``workers/handlers/<name>.py``, ``handler``)."""


QUEUE_MAX_RECEIVES = 3
"""Receives of an inbound message before it moves to the dead-letter queue."""
INGEST_TIMEOUT_SECONDS = 30
QUEUE_VISIBILITY_SECONDS = 6 * INGEST_TIMEOUT_SECONDS
"""At least six times the consumer's timeout, as Lambda's SQS event source asks."""
EXPRESS_MAX_RUN_SECONDS = 240
"""An Express execution ends at 5 minutes: a run hands over to a fresh one before."""


@dataclass(frozen=True)
class StackNames:
    """Names of the stack's resources, from one prefix (``agentworker-<stage>`` deployed,
    ``agentworker`` in the sandbox)."""

    prefix: str = "agentworker"

    @property
    def table(self) -> str:
        return self.prefix

    @property
    def bucket(self) -> str:
        return f"{self.prefix}-state"

    @property
    def queue(self) -> str:
        return f"{self.prefix}-inbound.fifo"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}-inbound-dlq.fifo"

    @property
    def topic(self) -> str:
        """A FIFO topic: SNS drops a payload published twice (its ``reply_id`` is the
        deduplication id) and keeps a conversation's replies in order."""
        return f"{self.prefix}-replies.fifo"

    @property
    def event_bus(self) -> str:
        return f"{self.prefix}-events"

    @property
    def webhooks_queue(self) -> str:
        """A FIFO queue: a receiver's deliveries of one conversation stay in order."""
        return f"{self.prefix}-webhooks.fifo"

    @property
    def webhooks_dlq(self) -> str:
        return f"{self.prefix}-webhooks-dlq.fifo"

    @property
    def schedule_group(self) -> str:
        """The EventBridge Scheduler group of the conversations' schedules."""
        return f"{self.prefix}-schedules"

    def state_machine(self, variant: str) -> str:
        return f"{self.prefix}-conversation" + ("" if variant == "express" else f"-{variant}")


def env_name(setting: str) -> str:
    """The environment variable of a :class:`Settings` field (``ConfigError``-free: a typo
    here is a bug, caught when the spec is built)."""
    if setting not in Settings.model_fields:
        raise KeyError(f"{setting} is not a field of workers.config.Settings")
    return ENV_PREFIX + setting.upper()


WEBHOOK_QUEUE_RECEIVES = 1000
"""The webhooks queue's ``maxReceiveCount``: a net for a delivery the function cannot even
handle (SQS's most). The ``webhooks`` function dead-letters a delivery itself after its
``webhook_attempts``, and the ones behind it: a delivery held back behind a failing one is
received each time too, and SQS's own count would dead-letter it ahead of the one in front
of it (out of order)."""


_COMMON_ENV: dict[str, Any] = {
    "table_name": {"Ref": "ConversationTable"},
    "bucket_name": {"Ref": "StateBucket"},
    "state_machine_arn": "${self:custom.stateMachineArn}",
    "reply_topic_arn": {"Ref": "ReplyTopic"},
    "event_bus_name": {"Ref": "EventBus"},
    "webhooks": "${param:webhooks}",
    "webhooks_queue_url": {"Ref": "WebhooksQueue"},
    "websocket_endpoint": {
        "Fn::Sub": "https://${WebsocketsApi}.execute-api.${AWS::Region}.amazonaws.com/${sls:stage}"
    },
    "lease_ttl_seconds": "${param:leaseTtlSeconds}",
    "double_texting": "${param:doubleTexting}",
    "approval_policies": "${param:approvalPolicies}",
    "slack_roles": "${param:slackRoles}",
    "retention_days": "${param:retentionDays}",
    "quota_messages_per_minute": "${param:quotaMessagesPerMinute}",
    "quota_text_bytes_per_day": "${param:quotaTextBytesPerDay}",
    "auth_jwks_url": "${param:authJwksUrl}",
    "auth_issuer": "${param:authIssuer}",
    "auth_audience": "${param:authAudience}",
    "auth_tenant_claim": "${param:authTenantClaim}",
    "auth_roles_claim": "${param:authRolesClaim}",
    "log_level": "${param:logLevel}",
    "slack_secret_arn": "${param:slackSecretArn}",
    "tracing": "false",
}
"""Every function builds the same AWS dependencies (``bootstrap.aws_deps``)."""

EVENT_DETAIL_TYPES: dict[str, list[Any]] = {
    "message": [MESSAGE_DETAIL_TYPE],
    "ticket": [{"prefix": TICKET_DETAIL_TYPE_PREFIX}],
}
"""The bus's rules for ``ingest``, by name: their ``detail-type`` patterns."""

LAYER_DIR_ON_LAMBDA = "/opt/python"
"""Where Lambda puts a layer's ``python`` directory (on ``sys.path``)."""
APP_FILE_ON_LAMBDA = f"{LAYER_DIR_ON_LAMBDA}/agentworker.toml"
"""The app file ``make package`` writes into the ``app`` layer (``deploy/app.py``)."""

_TRACING_ENV: dict[str, Any] = {
    "tracing": "${param:tracing}",
    "mlflow_tracking_uri": "${param:mlflowTrackingUri}",
    "mlflow_experiment": "agentworker-${sls:stage}",
}
"""Where the traces go: ``turn`` writes them, ``feedback`` adds users' ratings to them."""
_TURN_ENV: dict[str, Any] = {
    "config": APP_FILE_ON_LAMBDA,
    "model": "bedrock:${param:bedrockModelId}",
    "bedrock_region": "${param:bedrockRegion}",
    "max_run_seconds": str(EXPRESS_MAX_RUN_SECONDS),
    **_TRACING_ENV,
}
"""The agent's settings: ``turn`` runs it, ``api`` reads threads' state through its graph."""

_POWERTOOLS_ENV: dict[str, Any] = {
    "POWERTOOLS_SERVICE_NAME": "agentworker",
    "POWERTOOLS_METRICS_NAMESPACE": "agentworker-${sls:stage}",
    "POWERTOOLS_LOG_LEVEL": "${param:logLevel}",
}
"""Powertools' own settings (Logger, Metrics): the only variables not read by Settings."""


_SLACK_ENV: dict[str, Any] = {
    "feedback_function": {"Ref": "FeedbackLambdaFunction"},
    "suggested_prompts": "${param:suggestedPrompts}",
}
"""Where ``slack`` hands members' reactions (ratings of replies); what it suggests in a new
assistant thread (the app's prompts: ``make package`` checks the two agree)."""


_SCHEDULE_ENV: dict[str, Any] = {
    "schedule_group": "${self:custom.prefix}${self:custom.spec.suffixes.scheduleGroup}",
    # Built from names, not Ref/GetAtt: ingest's own environment names ingest, and the
    # scheduler's role names ingest (a reference would be a circular dependency).
    "schedule_target_arn": {
        "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:"
        "${self:custom.prefix}-ingest"
    },
    "schedule_role_arn": {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/"
        "${self:custom.prefix}-scheduler"
    },
}
"""Where schedules are armed: ``api`` and ``turn`` (the agent's follow-ups) make them,
``ingest`` takes their firings (and arms a throttled one again), ``sweeper`` erases them with
expired conversations."""
SCHEDULE_FUNCTIONS = ("ingest", "turn", "api", "sweeper")


def environment(function: str) -> dict[str, Any]:
    """``function``'s environment variables beyond the provider's common ones."""
    schedules = _env(_SCHEDULE_ENV) if function in SCHEDULE_FUNCTIONS else {}
    if function in ("turn", "api"):
        return _env(_TURN_ENV) | schedules
    if function == "slack":
        return _env(_SLACK_ENV)
    if function == "webhooks":
        return _env(
            {
                "webhook_secret_arn": "${param:webhookSecretArn}",
                "webhooks_dlq_url": {"Ref": "WebhooksDeadLetterQueue"},
            }
        )
    return _env(_TRACING_ENV) if function == "feedback" else schedules


def _env(settings: dict[str, Any]) -> dict[str, Any]:
    return {env_name(k): v for k, v in settings.items()}


def export() -> dict[str, Any]:
    """What ``serverless.yml`` reads from ``deploy/stack.json``."""
    names = StackNames(prefix="")
    table = DynamoDBTableSpec(name="").create_request()
    table.pop("TableName")
    return {
        "comment": "Generated by `agentworker stack-spec` from workers/stack.py: do not edit.",
        "suffixes": {
            "table": names.table,
            "bucket": names.bucket,
            "queue": names.queue,
            "dlq": names.dlq,
            "topic": names.topic,
            "eventBus": names.event_bus,
            "scheduleGroup": names.schedule_group,
            "webhooksQueue": names.webhooks_queue,
            "webhooksDlq": names.webhooks_dlq,
            "stateMachine": names.state_machine("express"),
        },
        "table": {
            **table,
            "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        },
        "queue": {
            "maxReceiveCount": QUEUE_MAX_RECEIVES,
            "visibilityTimeout": QUEUE_VISIBILITY_SECONDS,
        },
        "ingestTimeout": INGEST_TIMEOUT_SECONDS,
        "webhookQueueReceives": WEBHOOK_QUEUE_RECEIVES,
        "events": EVENT_DETAIL_TYPES,
        "environment": {
            "common": {**_env(_COMMON_ENV), **_POWERTOOLS_ENV},
            **{f: environment(f) for f in FUNCTIONS if environment(f)},
        },
    }


def export_json() -> str:
    return json.dumps(export(), indent=2, sort_keys=False) + "\n"
