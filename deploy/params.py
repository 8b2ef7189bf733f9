"""The stage parameters of serverless.yml (``params``), checked per stage so that a missing or
malformed one fails ``make validate`` naming the file, the stage and the parameter."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from events.identity import ApprovalPolicy
from workers.adapters.webhooks import WebhookSubscription
from workers.config import MAX_SUGGESTED_PROMPTS, SlackRolesMap

STAGE_NAME = re.compile(r"^[a-z][a-z0-9-]{1,15}$")
REGION = r"^[a-z]{2}(-gov)?-[a-z]+-\d$"
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653)
EXPRESS_LIMIT_SECONDS = 300


class StageParams(BaseModel):
    """One stage's parameters (``params.default`` merged with ``params.<stage>``)."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field(pattern=REGION)
    workflow: Literal["express", "standard"]
    bedrockModelId: str = Field(min_length=3, pattern=r"^[\w.:-]+$")  # noqa: N815
    bedrockRegion: str = Field(pattern=REGION)  # noqa: N815
    turnMemory: int = Field(ge=512, le=10240)  # noqa: N815
    turnTimeout: int = Field(ge=10, le=900)  # noqa: N815
    turnReservedConcurrency: int = Field(ge=1, le=1000)  # noqa: N815
    lightMemory: int = Field(ge=128, le=10240)  # noqa: N815
    leaseTtlSeconds: int = Field(ge=1)  # noqa: N815
    doubleTexting: Literal["enqueue", "merge", "interrupt", "reject"]  # noqa: N815
    approvalPolicies: str = "{}"  # noqa: N815
    slackRoles: str = "{}"  # noqa: N815
    suggestedPrompts: str = "[]"  # noqa: N815
    webhooks: str = "[]"
    webhookSecretArn: str = Field(pattern=r"^arn:aws[\w-]*:secretsmanager:")  # noqa: N815
    retentionDays: int = Field(default=365, ge=1, le=3650)  # noqa: N815
    quotaMessagesPerMinute: int = Field(default=30, ge=1)  # noqa: N815
    quotaTextBytesPerDay: int = Field(default=2_000_000, ge=1)  # noqa: N815
    apiThrottleRate: int = Field(default=50, ge=1, le=10_000)  # noqa: N815
    apiThrottleBurst: int = Field(default=100, ge=1, le=5_000)  # noqa: N815
    authJwksUrl: str = Field(min_length=1)  # noqa: N815
    authIssuer: str = Field(min_length=1)  # noqa: N815
    authAudience: str = Field(min_length=1)  # noqa: N815
    authTenantClaim: str = Field(default="tenant", min_length=1)  # noqa: N815
    authRolesClaim: str = Field(default="roles", min_length=1)  # noqa: N815
    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"]  # noqa: N815
    logRetentionDays: int  # noqa: N815
    tracing: Literal["true", "false"]
    mlflowTrackingUri: str = Field(min_length=1)  # noqa: N815
    slackSecretArn: str = Field(pattern=r"^arn:aws[\w-]*:secretsmanager:")  # noqa: N815
    deletionProtection: bool  # noqa: N815

    @field_validator("approvalPolicies")
    @classmethod
    def _policies(cls, value: str) -> str:
        approval_policies(value)  # a ValueError names what is wrong
        return value

    @field_validator("slackRoles")
    @classmethod
    def _slack_roles(cls, value: str) -> str:
        slack_roles(value)  # a ValueError names what is wrong
        return value

    @field_validator("suggestedPrompts")
    @classmethod
    def _suggested_prompts(cls, value: str) -> str:
        suggested_prompts(value)  # a ValueError names what is wrong
        return value

    @field_validator("webhooks")
    @classmethod
    def _webhooks(cls, value: str) -> str:
        webhook_subscriptions(value)  # a ValueError names what is wrong
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StageParams:
        if self.logRetentionDays not in LOG_RETENTION_DAYS:
            raise ValueError(
                f"logRetentionDays {self.logRetentionDays} is not one CloudWatch accepts"
            )
        if self.leaseTtlSeconds <= self.turnTimeout:
            raise ValueError("leaseTtlSeconds must exceed turnTimeout (a live step's lease lapsed)")
        if self.workflow == "express" and self.turnTimeout >= EXPRESS_LIMIT_SECONDS:
            raise ValueError(f"turnTimeout must be under Express's {EXPRESS_LIMIT_SECONDS} s")
        return self


def approval_policies(value: str) -> dict[str, ApprovalPolicy]:
    """The ``approvalPolicies`` parameter: JSON, tool -> policy (``ValueError`` if not)."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"approvalPolicies: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("approvalPolicies: a JSON object, tool -> policy")
    return {str(tool): ApprovalPolicy.parse(policy) for tool, policy in data.items()}


def slack_roles(value: str) -> dict[str, list[str]]:
    """The ``slackRoles`` parameter: JSON, a Slack user or user group id -> roles, as the
    ``slack_roles`` setting takes it (``ValueError`` if not)."""
    try:
        return TypeAdapter(SlackRolesMap).validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"slackRoles: {exc.errors()[0]['msg']}") from None


_PROMPTS = TypeAdapter(
    list[Annotated[str, Field(min_length=1, max_length=200)]],
)


def suggested_prompts(value: str) -> list[str]:
    """The ``suggestedPrompts`` parameter: a JSON list of prompts, as the
    ``suggested_prompts`` setting takes it (``ValueError`` if not)."""
    try:
        prompts = _PROMPTS.validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"suggestedPrompts: {exc.errors()[0]['msg']}") from None
    if len(prompts) > MAX_SUGGESTED_PROMPTS:
        raise ValueError(f"suggestedPrompts: at most {MAX_SUGGESTED_PROMPTS} prompts")
    return prompts


def webhook_subscriptions(value: str) -> list[WebhookSubscription]:
    """The ``webhooks`` parameter: a JSON list of subscriptions, as the ``webhooks`` setting
    takes it (``ValueError`` if not)."""
    try:
        return TypeAdapter(list[WebhookSubscription]).validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"webhooks: {exc.errors()[0]['msg']}") from None


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def check(path: Path, stage: str | None = None) -> list[str]:
    """Problems with ``path``'s ``params``: every stage is checked; ``stage`` must be one."""
    params = load(path).get("params")
    if not isinstance(params, dict) or not isinstance(params.get("default"), dict):
        return [f"{path}: no params.default section"]
    stages = sorted(k for k in params if k != "default")
    found: list[str] = []
    if stage is not None and (stage not in stages or not STAGE_NAME.match(stage)):
        found.append(f"{path}: stage {stage!r} has no params (stages: {', '.join(stages)})")
    for name in stages:
        if not STAGE_NAME.match(name):
            found.append(f"{path}: params.{name}: a stage name is 2-16 of [a-z0-9-]")
        merged = {**params["default"], **(params[name] or {})}
        try:
            StageParams.model_validate(merged)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"]) or "(all)"
                found.append(f"{path}: params.{name}.{where}: {error['msg']}")
    return found


def stage(path: Path, name: str) -> dict[str, Any]:
    """The parameters of stage ``name`` (``params.default`` merged with ``params.<name>``)."""
    params = load(path).get("params") or {}
    return {**(params.get("default") or {}), **(params.get(name) or {})}
