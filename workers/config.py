"""Settings from the environment (prefix ``AGENTWORKER_``) and the app's ``agentworker.toml``,
validated once in bootstrap.

Precedence, highest first: command-line flags, ``AGENTWORKER_*`` variables, the app file
(``--config PATH``, ``AGENTWORKER_CONFIG``, else ``./agentworker.toml`` when it exists), the
defaults. The app file sets only the app's own keys (:data:`APP_KEYS`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from events.identity import ApprovalPolicy, ClaimMapping
from events.inbound import DoubleTextingPolicy
from workers.adapters.webhooks import WebhookSubscription
from workers.core.pattern_cost import check_pattern
from workers.core.redaction import url_without_credentials
from workers.costs import ModelPrice
from workers.errors import ConfigError
from workers.langgraph_json import LangGraphProject

log = logging.getLogger(__name__)

ENV_PREFIX = "AGENTWORKER_"
SLACK_MEMBER_OR_GROUP = r"^[UWS][A-Z0-9]{2,30}$"
"""A Slack user id (``U``/``W``) or user group id (``S``), as ``slack_roles`` keys name them."""
SlackRolesMap = dict[
    Annotated[str, Field(pattern=SLACK_MEMBER_OR_GROUP)],
    list[Annotated[str, Field(min_length=1, max_length=64)]],
]
"""``slack_roles``: a Slack user or user group id -> role names."""
APP_FILE = "agentworker.toml"
APP_KEYS = (
    "graph",
    "graph_id",
    "model",
    "prompt",
    "prompt_name",
    "approval_tools",
    "approval_policies",
    "slack_roles",
    "double_texting",
    "context_window",
    "guard_blocked_topics",
    "prices",
    "suggested_prompts",
    "context",
    "context_from_callers",
    "configurable",
    "configurable_from_callers",
    "store_index_dims",
    "store_index_embed",
    "ticket_columns",
    "webhooks",
)
"""What ``agentworker.toml`` may set: the app, not the runtime around it."""

DEFAULT_GRAPH = "support_agent.graph:build"
"""The bundled support example (``examples/support``, installed with agentworker), served
when ``graph`` is unset."""
DEFAULT_SUGGESTED_PROMPTS = (
    "Open a ticket about my broken printer",
    "What is the status of ticket 1?",
    "Close ticket 1",
    "How do I reset my password?",
)
"""The support example's suggested prompts (its ``agentworker.toml`` lists the same), shown
when ``graph`` is unset."""
MAX_SUGGESTED_PROMPTS = 8
RESERVED_CONFIGURABLE = frozenset({"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map"})
"""``configurable`` keys LangGraph and agentworker set for every turn."""


class Settings(BaseSettings):
    """Every setting, its default and its meaning; the README's table is generated from this."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    state_dir: Path = Field(Path(".agentworker"), description="Embedded state: SQLite, traces.")
    graph: str | None = Field(
        None,
        description="The app's graph, 'package.module:attribute' (a StateGraph or a factory);"
        " default: the bundled support example.",
    )
    graph_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The graph's id for LangGraph's clients (the Agent Server API's graph_id"
        " and assistant); default: its name in langgraph.json, else the app's package.",
    )
    config: Path | None = Field(
        None, description="App file with the app's settings (default: ./agentworker.toml)."
    )
    app_dir: Path | None = Field(
        None,
        description="Where the app's package is imported from (default: the app file's"
        " directory, else the working directory).",
    )
    python_path: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories put on sys.path before the graph is imported, separated by"
        " ':' (a langgraph.json's local dependencies).",
    )
    model: str = Field(
        "offline", description="'offline', or '<provider>:<model>' through init_chat_model."
    )
    host: str = Field("127.0.0.1", description="Local server bind address.")
    port: int = Field(8765, ge=1, le=65535, description="Local server port.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the local server answers besides its own loopback address.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed besides the server's own (e.g. http://localhost:5173),"
        " answered with CORS headers naming them.",
    )
    max_subscriptions: int = Field(
        100, ge=1, le=10_000, description="Conversations one local WebSocket may subscribe to."
    )
    auth_jwks_url: str | None = Field(
        None,
        description="JWT bearer tokens signed RS256/ES256 with a key of this JWKS "
        "(Cognito, Auth0, Okta, Keycloak).",
    )
    auth_jwt_secret: SecretStr | None = Field(
        None, description="JWT bearer tokens signed HS256 with this secret (development)."
    )
    auth_issuer: str | None = Field(None, description="Required `iss` of tokens, when set.")
    auth_audience: str | None = Field(None, description="Required `aud` of tokens, when set.")
    auth_tenant_claim: str = Field(
        "tenant", min_length=1, description="Claim with the tenant (dotted path for nesting)."
    )
    auth_roles_claim: str = Field(
        "roles",
        min_length=1,
        description="Claim with the roles: a list, or a space- or comma-separated string.",
    )
    auth_default_tenant: str | None = Field(
        None, description="Tenant of tokens without the tenant claim (else they are refused)."
    )
    auth_tenant_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Roles whose holders may use every conversation of their tenant "
        "(supervisors, approvers); others see only their own.",
    )
    auth_leeway_seconds: float = Field(
        30.0, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat."
    )
    dev_token: SecretStr | None = Field(
        None,
        description="Local server without auth: the token its callers present (default: a "
        "random one kept in state_dir/dev-token across restarts, printed at start; "
        "serve --rotate-token makes a new one).",
    )
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
    approval_tools: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Tools that need approval (default: the app's own choice)."
    )
    approval_policies: dict[str, ApprovalPolicy] = Field(
        default_factory=dict,
        description="Who may decide each tool's approvals: 'anyone' (default), "
        "'not_requester', or {roles = [...], not_requester = true}.",
    )
    slack_roles: SlackRolesMap = Field(
        default_factory=dict,
        description="Roles of Slack members, for approval policies: a user id (U.../W...) or"
        " a user group id (S...) -> role names.",
    )
    prompt: Path | None = Field(
        None, description="A file with the system prompt (default: the app's own)."
    )
    suggested_prompts: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]] | None, NoDecode
    ] = Field(
        None,
        max_length=MAX_SUGGESTED_PROMPTS,
        description="Prompts the chat page offers in an empty conversation: one, or a JSON"
        " list (default: the support example's when graph is unset, else none).",
    )
    # The prompt registry (workers/prompts.py): name@alias is loaded at start when present.
    prompt_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$",
        description="The system prompt's name in the MLflow prompt registry (default: the"
        " graph's package, e.g. 'support-agent-system').",
    )
    prompt_alias: str = Field(
        "production",
        pattern=r"^[A-Za-z0-9_-]{1,255}$",
        description="The registry alias loaded at start (falls back to the prompt file when"
        " the registry lacks it, unless set explicitly).",
    )
    recursion_limit: int = Field(
        25, ge=1, le=10_000, description="Graph steps per turn before the turn fails."
    )
    stream: bool = Field(True, description="Stream reply chunks to WebSocket clients.")
    tracing: bool = Field(True, description="Record one MLflow trace per turn.")
    quota_messages_per_minute: int | None = Field(
        None, ge=1, description="Messages one principal may send per minute (unset: no limit)."
    )
    quota_text_bytes_per_day: int | None = Field(
        None, ge=1, description="Text bytes one principal may send per day (unset: no limit)."
    )
    retention_days: int | None = Field(
        None,
        ge=1,
        description="Erase a conversation (state, messages, traces) this long after its last "
        "activity (unset: keep).",
    )
    retention_memories: bool = Field(
        False,
        description="With retention_days: also erase the owner's long-term memories (the"
        " store) with each idle conversation erased.",
    )
    store_index_dims: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Vector search in the store: the embeddings' dimensions (with"
        " store_index_embed; unset: search(query=...) is answered unranked, as LangGraph's"
        " stores answer it).",
    )
    store_index_embed: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+:\S+$",
        description="Vector search in the store: the embeddings model, '<provider>:<model>'"
        " through init_embeddings, e.g. 'openai:text-embedding-3-small'.",
    )
    redaction: bool = Field(
        True,
        description="Mask e-mails, phones, card numbers, IBANs, AWS keys, bearer tokens and URL"
        " passwords in spans and logs.",
    )
    redact_patterns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More regular expressions to mask in spans and logs (a JSON list, or one);"
        " each must be linear-time: bounded quantifiers ({1,64}, not + or *), no backreferences,"
        " at most 200 steps per position (possessive {0,5}+ or atomic (?>...) parts to narrow"
        " it).",
    )
    # guardrails -------------------------------------------------------------------------
    guard: bool = Field(
        True,
        description="Guard every turn: input and reply checked for prompt injection, blocked"
        " topics and personal data.",
    )
    guard_input_pii: Literal["allow", "mask", "block"] = Field(
        "allow", description="Personal data in the user's message: allow, mask or block."
    )
    guard_output_pii: Literal["allow", "mask", "block"] = Field(
        "mask", description="Personal data in the reply: allow, mask or block."
    )
    guard_blocked_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Topics refused in messages and replies: comma-separated (or a JSON list);"
        " 'a|b' gives alternatives.",
    )
    guard_prompt_injection: bool = Field(
        True, description="Block messages that try to override the assistant's instructions."
    )
    guardrail_id: str | None = Field(
        None,
        pattern=r"^([a-z0-9]+|arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/[a-z0-9]+)$",
        description="Bedrock Guardrails: the guardrail id or ARN sent with every Converse call.",
    )
    guardrail_version: str = Field(
        "DRAFT", pattern=r"^(DRAFT|[1-9][0-9]{0,7})$", description="Bedrock guardrail version."
    )
    guardrail_trace: bool = Field(True, description="Ask Bedrock for the guardrail's trace.")
    mlflow_tracking_uri: str | None = Field(
        None, description="Default: sqlite:///<state_dir>/mlflow.db (embedded)."
    )
    mlflow_experiment: str = Field("agentworker", description="MLflow experiment name.")
    trace_max_spans: int = Field(
        256, ge=8, le=100_000, description="Spans per trace; past it they are counted, not kept."
    )
    trace_spool_mb: int = Field(
        256,
        ge=1,
        description="Embedded: traces waiting for export at most (MB); past it new traces are"
        " dropped and counted, replies go on.",
    )
    trace_buffer: int = Field(
        1000,
        ge=1,
        description="Lambda: traces kept in memory while the tracking server is unreachable.",
    )
    judge_model: str | None = Field(
        None,
        description="`agentworker eval`: the LLM judge, '<provider>:<model>' (unset: no judge).",
    )
    bedrock_region: str | None = Field(None, description="AWS region for Bedrock.")
    bedrock_endpoint_url: str | None = Field(None, description="Bedrock endpoint override.")
    context: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The graph's runtime context (its context_schema's fields), as JSON;"
        " usually the [context] table of agentworker.toml.",
    )
    context_from_callers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Context fields a caller may set with a message or for a whole"
        " conversation, comma-separated (others are refused: 400 not_allowed_field).",
    )
    configurable: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="config['configurable'] values for every turn, as JSON; usually the"
        " [configurable] table of agentworker.toml.",
    )
    configurable_from_callers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="configurable keys a caller may set with a message or for a whole"
        " conversation, comma-separated.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="USD per 1M tokens by model id, over the built-in table: JSON"
        ' {"<model id>": {"input": .., "output": .., "cache_read": .., "cache_write": ..}}.',
    )
    prompt_caching: bool = Field(
        True, description="Bedrock prompt caching (cachePoint blocks) where the model has it."
    )
    webhooks: list[WebhookSubscription] = Field(
        default_factory=list,
        description="Outbound webhooks: [[webhooks]] tables of agentworker.toml (name, url,"
        " events, secret_env, conversations), or the same as a JSON list.",
    )
    schedules_per_conversation: int = Field(
        20,
        ge=1,
        le=1000,
        description="Most schedules one conversation keeps (its owner's and its agent's).",
    )
    webhook_private_urls: bool = Field(
        False,
        description="Let the conversations' own webhooks (made over the API) post to"
        " loopback, private and link-local addresses and over plain http: development only.",
    )
    webhook_attempts: int = Field(
        8,
        ge=1,
        le=50,
        description="Attempts of a webhook delivery before it is dead (and the ones behind it"
        " in its conversation are held with it).",
    )
    webhook_retry_base_seconds: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="The first wait before a webhook delivery is tried again (doubled each"
        " time, with jitter; at most an hour).",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long a webhook receiver may take to answer."
    )
    ticket_columns: dict[
        Literal["id", "subject", "description", "requester", "priority", "tags"],
        Annotated[str, Field(min_length=1, max_length=200)],
    ] = Field(
        default_factory=dict,
        description="`agentworker tickets import`: which column of the file holds each field,"
        ' JSON {"id": "Case Number", ...} (unset fields: the usual names of helpdesk'
        " exports).",
    )
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
    queue_url: str | None = Field(
        None,
        description="AWS: the inbound SQS FIFO queue, for `agentworker dlq` (default: the"
        " stack's, named after table_name); its dead-letter queue is the one its redrive"
        " policy names.",
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
    feedback_function: str | None = Field(
        None,
        description="AWS: the feedback function (name or ARN) the slack function hands"
        " members' reactions to, as ratings (unset: reactions are ignored).",
    )
    webhooks_queue_url: str | None = Field(
        None,
        description="AWS: the webhooks queue (SQS FIFO) every function queues deliveries on"
        " and the webhooks function sends from.",
    )
    webhooks_dlq_url: str | None = Field(
        None,
        description="AWS: the webhooks' dead-letter queue (SQS FIFO), where the webhooks"
        " function moves a delivery after its attempts, and the ones behind it.",
    )
    webhook_secret_arn: str | None = Field(
        None,
        description="AWS: Secrets Manager secret holding the webhooks' secrets, a JSON object"
        " from each subscription's secret_env name to its whsec_ secret.",
    )
    event_bus_name: str | None = Field(
        None,
        description="AWS: the event bus a ticket's write-back goes to (agentworker.ticket.reply,"
        " agentworker.ticket.status); unset: none.",
    )
    schedule_group: str | None = Field(
        None,
        description="AWS: the EventBridge Scheduler group the conversations' schedules are"
        " made in (unset: this stack keeps no schedules).",
    )
    schedule_target_arn: str | None = Field(
        None, description="AWS: the function a schedule invokes when it fires (ingest)."
    )
    schedule_role_arn: str | None = Field(
        None, description="AWS: the role EventBridge Scheduler invokes that function as."
    )
    slack_app_token: SecretStr | None = Field(
        None,
        description="Slack app-level token (xapp-, connections:write): `agentworker slack"
        " --socket-mode` connects with it.",
    )
    slack_api_url: str = Field(
        "https://slack.com/api", min_length=1, description="Slack Web API base URL."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def source(self, name: str) -> str:
        """Where setting ``name`` came from, for error messages: a flag, a variable, the app
        file, or the default."""
        return self._sources.get(name) or f"{ENV_PREFIX}{name.upper()}"

    def keep_sources(self, other: Settings) -> None:
        """Name settings as ``other`` got them (the same values, passed on through the
        environment: the sandbox's handlers)."""
        self._sources.update(other._sources)

    @property
    def app_package(self) -> str:
        """The app's top-level package of its graph, e.g. ``support_agent``: of a file, the
        outermost package directory it is in (``src/agent/graph.py`` -> ``agent``), else the
        file's stem."""
        ref = self.graph or DEFAULT_GRAPH
        module = ref.rpartition(":")[0] or ref
        if not (module.endswith(".py") or "/" in module):
            return module.split(".")[0]
        path = self.import_dir / module
        top, directory = path.stem, path.parent
        while (directory / "__init__.py").is_file():
            top, directory = directory.name, directory.parent
        return top

    @property
    def served_graph_id(self) -> str:
        """``graph_id``, else the app's package (``support_agent``)."""
        return self.graph_id or self.app_package

    @property
    def app_name(self) -> str:
        """The app's name as the chat page shows it: its package, words apart
        (``support_agent`` -> ``Support agent``)."""
        words = re.sub(r"[_\-.]+", " ", self.app_package).strip()
        return (words[:1].upper() + words[1:]) if words else "App"

    @property
    def prompts_to_suggest(self) -> list[str]:
        """``suggested_prompts``, else the support example's when it is the app served."""
        if self.suggested_prompts is not None:
            return list(self.suggested_prompts)
        return list(DEFAULT_SUGGESTED_PROMPTS) if self.graph is None else []

    @property
    def import_dir(self) -> Path:
        """The directory the app's package is imported from."""
        if self.app_dir is not None:
            return self.app_dir
        return self.config.resolve().parent if self.config is not None else Path.cwd()

    @field_validator("python_path", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v for v in value.split(os.pathsep) if v.strip()]
        return value

    @field_validator("model")
    @classmethod
    def _model_spec(cls, value: str) -> str:
        try:
            parse_model_spec(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("redact_patterns", "suggested_prompts", mode="before")
    @classmethod
    def _one_or_json_list(cls, value: object) -> object:
        # one value, or a JSON list; an empty variable is an empty list
        if isinstance(value, str):
            if not value.strip():
                return []
            value = json.loads(value) if value.strip().startswith("[") else [value]
        return value

    @field_validator("webhooks", mode="after")
    @classmethod
    def _webhook_names(cls, value: list[WebhookSubscription]) -> list[WebhookSubscription]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"webhooks: each needs a name of its own (got {names})")
        return value

    @field_validator("redact_patterns", mode="after")
    @classmethod
    def _linear(cls, value: list[str]) -> list[str]:
        # they run on every span and log line: one that can backtrack could freeze the process
        for pattern in value:
            try:
                check_pattern(pattern)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("guard_blocked_topics", mode="before")
    @classmethod
    def _topics(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def bedrock_guardrail(self) -> dict[str, str] | None:
        """The Converse ``guardrailConfig`` when a guardrail is configured."""
        if self.guardrail_id is None:
            return None
        return {
            "guardrailIdentifier": self.guardrail_id,
            "guardrailVersion": self.guardrail_version,
            "trace": "enabled" if self.guardrail_trace else "disabled",
        }

    @field_validator("prices", mode="before")
    @classmethod
    def _prices(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        return value

    @field_validator("slack_roles", mode="before")
    @classmethod
    def _slack_roles(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        return value

    @field_validator("approval_policies", mode="before")
    @classmethod
    def _policies(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            return {tool: ApprovalPolicy.parse(policy) for tool, policy in value.items()}
        return value

    @field_validator("configurable", "configurable_from_callers", mode="after")
    @classmethod
    def _no_reserved_key(cls, value: Any) -> Any:
        reserved = sorted(k for k in value if k in RESERVED_CONFIGURABLE or k.startswith("__"))
        if reserved:
            raise ValueError(f"{reserved[0]!r} is LangGraph's own (agentworker sets it)")
        return value

    @field_validator(
        "approval_tools",
        "allowed_hosts",
        "allowed_origins",
        "auth_tenant_roles",
        "context_from_callers",
        "configurable_from_callers",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def claim_mapping(self) -> ClaimMapping:
        """Where tokens keep the tenant and the roles."""
        return ClaimMapping(
            tenant_claim=self.auth_tenant_claim,
            roles_claim=self.auth_roles_claim,
            default_tenant=self.auth_default_tenant,
        )

    @property
    def auth_configured(self) -> bool:
        """Whether callers prove who they are with tokens (JWKS or HS256 secret)."""
        return self.auth_jwks_url is not None or self.auth_jwt_secret is not None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "agentworker.db"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"

    @property
    def shown_tracking_uri(self) -> str:
        """The tracking URI as a line may print it: a password in it masked."""
        return url_without_credentials(self.tracking_uri)


_PROVIDER = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``offline`` / ``offline:<latency_ms>`` / ``<provider>:<model>`` into provider
    and model (``bedrock:<id>`` is ``bedrock_converse:<id>``); ``ConfigError`` names the
    setting when the spec is malformed."""
    kind, sep, arg = spec.partition(":")
    if kind == "offline":
        if arg and not arg.replace(".", "", 1).isdigit():
            raise ConfigError(f"AGENTWORKER_MODEL={spec!r}: offline latency must be milliseconds")
        return kind, arg
    if kind == "bedrock":
        kind = "bedrock_converse"
    if sep and arg.strip() and _PROVIDER.match(kind):
        return kind, arg
    raise ConfigError(
        f"AGENTWORKER_MODEL={spec!r}: expected 'offline' or '<provider>:<model>', e.g."
        " 'bedrock_converse:<model-id>', 'openai:gpt-4o-mini', 'ollama:llama3.1'"
    )


def read_app_file(path: Path) -> dict[str, Any]:
    """The app settings of ``path`` (an ``agentworker.toml``); ``ConfigError`` naming the file
    for a file that is missing, is not TOML, or sets another key. A relative ``prompt`` is
    relative to the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"app file {path}: not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"app file {path}: {exc}") from None
    unknown = sorted(set(data) - set(APP_KEYS))
    if unknown:
        raise ConfigError(
            f"app file {path}: unknown key {unknown[0]!r}; it may set {', '.join(APP_KEYS)}"
        )
    if isinstance(data.get("prompt"), str):
        data["prompt"] = str((path.parent / data["prompt"]).resolve())
    return data


def _app_file(config: object) -> Path | None:
    if config is not None:
        return Path(str(config))
    if os.environ.get(ENV_PREFIX + "CONFIG"):
        return Path(os.environ[ENV_PREFIX + "CONFIG"])
    local = Path(APP_FILE)
    return local if local.is_file() else None


def _langgraph_project(
    given: dict[str, Any], named: Path | None, *, toml_names_graph: bool
) -> LangGraphProject | None:
    """The ``langgraph.json`` to serve: ``named`` (``--config`` names one); else the working
    directory's when nothing else names the graph (a module or file reference, ``graph`` in
    ``agentworker.toml``), or names it by a name of its graphs (``--graph agent``). Its
    ``env`` is loaded at once (it may set what the rest reads)."""
    from workers.langgraph_json import find_project

    graph = given.get("graph") or os.environ.get(ENV_PREFIX + "GRAPH")
    if named is None and (":" in str(graph) if graph is not None else toml_names_graph):
        return None
    project = find_project(named)
    if project is not None:
        project.load_env()
    return project


def _serve_project(
    project: LangGraphProject, given: dict[str, Any], sources: dict[str, str]
) -> None:
    """Settings from ``project``: the graph (by ``graph`` as a name, or its only one), the
    directory it is imported from, its local dependencies on ``sys.path``."""
    name, ref = project.graph_ref(
        str(given.get("graph") or os.environ.get(ENV_PREFIX + "GRAPH") or "") or None
    )
    given["graph"] = ref
    sources["graph"] = f"graphs.{name} in {project.path}"
    if "graph_id" not in given and ENV_PREFIX + "GRAPH_ID" not in os.environ:
        given["graph_id"] = name
    if "app_dir" not in given and ENV_PREFIX + "APP_DIR" not in os.environ:
        given["app_dir"] = project.directory
    given.setdefault("python_path", project.local_dependencies())
    ignored = project.ignored()
    if ignored:
        log.warning(
            "%s: %s not read (agentworker's own settings cover them)",
            project.path,
            ", ".join(ignored),
        )


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings (``overrides`` are the command line's); a bad value raises
    ``ConfigError`` naming the setting."""
    given = {k: v for k, v in overrides.items() if v is not None}
    sources = {k: f"--{k.replace('_', '-')}" for k in given}
    path = _app_file(given.get("config"))
    named = path if path is not None and path.name.endswith(".json") else None
    app_values = read_app_file(path) if path is not None and named is None else {}
    project = _langgraph_project(given, named, toml_names_graph="graph" in app_values)
    if project is not None:
        given.setdefault("config", project.path)
    if path is not None and named is None:
        given["config"] = path
        for key, value in app_values.items():
            if key not in given and ENV_PREFIX + key.upper() not in os.environ:
                given[key] = value
                sources[key] = f"{key} in {path}"
    if project is not None:
        _serve_project(project, given, sources)
    try:
        settings = Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = "_".join(str(p) for p in err["loc"])
            name = sources.get(key) or ENV_PREFIX + key.upper()
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid setting " + "; ".join(problems)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    settings._sources.update(sources)
    return settings
