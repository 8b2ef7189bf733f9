"""Settings from the environment (prefix ``AGENTWORKER_``), validated once in bootstrap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from events.inbound import DoubleTextingPolicy
from workers.errors import ConfigError

ENV_PREFIX = "AGENTWORKER_"


class Settings(BaseSettings):
    """Every setting, its default and its meaning; the README's table is generated from this."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    state_dir: Path = Field(Path(".agentworker"), description="Embedded state: SQLite, traces.")
    model: str = Field("offline", description="'offline' or 'bedrock:<model-id>'.")
    host: str = Field("127.0.0.1", description="Local server bind address.")
    port: int = Field(8765, ge=1, le=65535, description="Local server port.")
    workers: int = Field(4, ge=1, le=256, description="Concurrent runs in the embedded pool.")
    double_texting: DoubleTextingPolicy = Field(
        "enqueue", description="Default policy: enqueue, merge, interrupt or reject."
    )
    lease_ttl_seconds: float = Field(60.0, gt=0, description="A run's lease lifetime.")
    sweep_interval_seconds: float = Field(15.0, gt=0, description="Embedded sweeper period.")
    context_window: int = Field(20, ge=0, le=1000, description="Logged messages sent as context.")
    max_turns_per_run: int = Field(50, ge=1, description="Turns before a run hands over.")
    max_run_seconds: float | None = Field(
        None, gt=0, description="Seconds before a run hands over (AWS Express: 240)."
    )
    approval_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["update_ticket"], description="Tools that need approval."
    )
    prompt_version: str = Field("v1", description="System prompt file system_<v>.md.")
    stream: bool = Field(True, description="Stream reply chunks to WebSocket clients.")
    tracing: bool = Field(True, description="Record one MLflow trace per turn.")
    mlflow_tracking_uri: str | None = Field(
        None, description="Default: sqlite:///<state_dir>/mlflow.db (embedded)."
    )
    mlflow_experiment: str = Field("agentworker", description="MLflow experiment name.")
    bedrock_region: str | None = Field(None, description="AWS region for Bedrock.")
    bedrock_endpoint_url: str | None = Field(None, description="Bedrock endpoint override.")
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per 1M input tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per 1M output tokens.")
    retry_attempts: int = Field(
        3, ge=1, le=20, description="Attempts per turn on retryable errors."
    )
    table_name: str = Field("agentworker", min_length=3, description="AWS: DynamoDB table.")
    bucket_name: str = Field(
        "agentworker-state", min_length=3, description="AWS: S3 bucket for large state."
    )
    state_machine_arn: str | None = Field(None, description="AWS: the run workflow.")
    reply_topic_arn: str | None = Field(None, description="AWS: SNS topic for replies.")
    websocket_endpoint: str | None = Field(
        None, description="AWS: API Gateway WebSocket management endpoint."
    )
    slack_signing_secret: SecretStr | None = Field(
        None, description="Slack app signing secret (local/dev; else slack_secret_arn)."
    )
    slack_bot_token: SecretStr | None = Field(
        None, description="Slack bot token (local/dev; else slack_secret_arn)."
    )
    slack_secret_arn: str | None = Field(
        None, description="AWS: Secrets Manager secret with signing_secret and bot_token."
    )
    slack_api_url: str = Field(
        "https://slack.com/api", min_length=1, description="Slack Web API base URL."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )

    @field_validator("model")
    @classmethod
    def _model_spec(cls, value: str) -> str:
        try:
            parse_model_spec(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("approval_tools", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def db_path(self) -> Path:
        return self.state_dir / "agentworker.db"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``offline`` / ``offline:<latency_ms>`` / ``bedrock:<model-id>``; ``ConfigError``
    names the setting when the spec is malformed."""
    kind, _, arg = spec.partition(":")
    if kind == "offline":
        if arg and not arg.replace(".", "", 1).isdigit():
            raise ConfigError(f"AGENTWORKER_MODEL={spec!r}: offline latency must be milliseconds")
        return kind, arg
    if kind == "bedrock" and arg:
        return kind, arg
    raise ConfigError(f"AGENTWORKER_MODEL={spec!r}: expected 'offline' or 'bedrock:<model-id>'")


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; a bad value raises ``ConfigError`` naming the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
