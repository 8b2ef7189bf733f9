"""Composition root: builds adapters from ``Settings``. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events.identity import ClaimMapping, Principal
from events.workflow import RunRef
from workers.config import Settings, load_settings
from workers.core.guard import GuardPolicy
from workers.core.ports import (
    Authenticator,
    Clock,
    NullTracer,
    ReplySink,
    Scheduler,
    TicketStore,
    Tracer,
    TurnAgent,
)
from workers.core.steps import Deps, TurnSettings
from workers.errors import ConfigError

if TYPE_CHECKING:
    from workers.adapters.local.runtime import EmbeddedRuntime
    from workers.adapters.local.webhooks import WebhookSender, WebhookSink
    from workers.adapters.slack import SlackCredentials, SlackWeb
    from workers.adapters.slack_events import Rate, SlackApp
    from workers.prompts import LoadedPrompt

log = logging.getLogger(__name__)


def turn_settings(settings: Settings, prompt: LoadedPrompt | None = None) -> TurnSettings:
    """The core's settings; ``prompt``'s identity goes on every turn's trace."""
    return TurnSettings(
        lease_ttl=settings.lease_ttl_seconds,
        context_window=settings.context_window,
        default_policy=settings.double_texting,
        max_turns_per_run=settings.max_turns_per_run,
        max_run_seconds=settings.max_run_seconds,
        retry_attempts=settings.retry_attempts,
        stream=settings.stream,
        approval_policies=settings.approval_policies,
        tenant_roles=frozenset(settings.auth_tenant_roles),
        quota_messages_per_minute=settings.quota_messages_per_minute,
        quota_text_bytes_per_day=settings.quota_text_bytes_per_day,
        retention_seconds=None
        if settings.retention_days is None
        else settings.retention_days * 86_400.0,
        retention_memories=settings.retention_memories,
        context_from_callers=frozenset(settings.context_from_callers),
        configurable_from_callers=frozenset(settings.configurable_from_callers),
        schedules_per_conversation=settings.schedules_per_conversation,
        webhook_private_urls=settings.webhook_private_urls,
        trace_tags={} if prompt is None else prompt.trace_tags(),
        guard=guard_policy(settings),
    )


def guard_policy(settings: Settings) -> GuardPolicy | None:
    """The guard step's policy (``None`` with ``guard`` off)."""
    if not settings.guard:
        return None
    return GuardPolicy(
        input_pii=settings.guard_input_pii,
        output_pii=settings.guard_output_pii,
        blocked_topics=tuple(settings.guard_blocked_topics),
        prompt_injection=settings.guard_prompt_injection,
    )


def build_authenticator(settings: Settings) -> Authenticator:
    """JWTs when ``auth_jwks_url`` or ``auth_jwt_secret`` is set; else the development token
    (``dev_token``, or a new random one)."""
    from workers.adapters.tokens import DevTokenAuthenticator, JwtAuthenticator

    if settings.auth_configured:
        return JwtAuthenticator.for_settings(settings)
    if settings.dev_token is not None:
        return DevTokenAuthenticator(settings.dev_token.get_secret_value())
    return DevTokenAuthenticator.generate()


def redaction(settings: Settings, tracer: Tracer, *loggers: Any, spans: bool = True) -> Tracer:
    """The redaction hook (on by default): every log record of the process (and
    ``loggers``' extra fields) from now on, and with ``spans`` ``tracer`` wrapped so its spans
    are redacted as they are recorded. The tracers that :func:`build_tracer` and
    :func:`lambda_tracer` make redact as they export instead (``spans=False``): off the
    turn's path, before anything reaches MLflow."""
    from workers.observability import install_redaction

    if not settings.redaction:
        install_redaction(None)
        return tracer
    from workers.core.redaction import RedactingTracer, Redactor

    redactor = Redactor(settings.redact_patterns)
    install_redaction(redactor, *loggers)
    return RedactingTracer(tracer, redactor) if spans else tracer


def _span_redactor(settings: Settings) -> Any:
    from workers.core.redaction import Redactor

    return Redactor(settings.redact_patterns) if settings.redaction else None


def build_tracer(settings: Settings) -> Tracer:
    """The embedded runtime's tracer: spans recorded in memory, each finished trace
    appended to the spool under the state directory, exported into MLflow by a separate
    process (started with the first trace)."""
    if not settings.tracing:
        return NullTracer()
    from workers.statedir import private_dir
    from workers.tracing.recorder import SpanRecorder
    from workers.tracing.spool import ExporterCommand, SpoolSink

    private_dir(settings.state_dir)
    artifacts = settings.state_dir / "mlartifacts" if settings.mlflow_tracking_uri is None else None
    spool = settings.state_dir / "trace-spool"
    command = ExporterCommand(
        spool,
        settings.tracking_uri,
        settings.mlflow_experiment,
        artifacts,
        redaction=settings.redaction,
        redact_patterns=tuple(settings.redact_patterns),
    )
    sink = SpoolSink(spool, max_bytes=settings.trace_spool_mb * 2**20, exporter=command)
    sink.resume()  # traces and erasures an earlier process left: exported now, not later
    return SpanRecorder(sink, max_spans=settings.trace_max_spans)


def lambda_tracer(settings: Settings) -> Tracer:
    """Lambda's tracer: spans recorded in memory, exported to the tracking server by
    ``flush`` before the handler returns (the process may freeze right after)."""
    if not (settings.tracing and settings.mlflow_tracking_uri):
        return NullTracer()
    from workers.tracing.direct import DirectSink
    from workers.tracing.mlflow_export import MlflowExport
    from workers.tracing.recorder import SpanRecorder

    uri, experiment = settings.mlflow_tracking_uri, settings.mlflow_experiment
    redactor = _span_redactor(settings)
    sink = DirectSink(
        lambda: MlflowExport(uri, experiment, redactor=redactor), max_records=settings.trace_buffer
    )
    return SpanRecorder(sink, max_spans=settings.trace_max_spans)


def build_agent(
    settings: Settings,
    tickets: TicketStore,
    clock: Clock,
    model: Any = None,
    prompt: LoadedPrompt | None = None,
    *,
    store: Any = None,
    followups: Any = None,
) -> Any:
    """The app's graph as the core's turn agent (imports LangGraph: only the ``turn`` side
    calls this), with ``prompt``'s text as its system prompt: the composition roots pass
    :func:`load_prompt`'s (the registry's, resolved once); without one, the bundled prompt
    file alone. ``store``: the runtime's long-term memory (a LangGraph ``BaseStore``), which
    the graph sees scoped to each turn's customer (without one: an in-memory store, for
    tests and tools that run turns without a runtime). ``followups``: where the SDK's
    ``schedule_followup`` plans (a :class:`~workers.core.schedules.FollowUps`).
    ``ConfigError`` names the setting when the model, the graph or the prompt is unusable."""
    from workers.agent.app import load_graph
    from workers.agent.models import ModelOptions, make_model
    from workers.agent.runner import GraphTurnAgent
    from workers.agent.sdk import BuildContext
    from workers.costs import merged_prices
    from workers.prompts import bundled_prompt

    chat_model = model or make_model(
        settings.model,
        ModelOptions(
            region=settings.bedrock_region,
            endpoint_url=settings.bedrock_endpoint_url,
            guardrail=settings.bedrock_guardrail,
            prompt_caching=settings.prompt_caching,
        ),
    )
    ctx = BuildContext(
        model=chat_model,
        settings=settings,
        prompt=(prompt or bundled_prompt(settings)).text,
        approval_tools=None
        if settings.approval_tools is None
        else frozenset(settings.approval_tools),
        tickets=tickets,
        clock=clock,
        app_dir=settings.import_dir,
    )
    return GraphTurnAgent(
        load_graph(settings, ctx),
        recursion_limit=settings.recursion_limit,
        prices=merged_prices(settings.prices),
        store=store,
        context=settings.context,
        context_from_callers=settings.context_from_callers,
        configurable=settings.configurable,
        followups=followups,
    )


def load_prompt(settings: Settings) -> LoadedPrompt:
    """The system prompt this process serves, resolved once at start: the registry's
    ``prompt_name@prompt_alias``, else the ``prompt`` file (see :mod:`workers.prompts`)."""
    from workers.prompts import load_prompt as resolve

    return resolve(settings)


def prepare_embedded(
    settings: Settings, *, model: Any = None, tracer: Tracer | None = None
) -> Callable[[], EmbeddedRuntime]:
    """Build what the embedded runtime needs before it starts (the stores, the model and the
    app's graph, the tracer: a bad setting fails here, before anything is served); the
    returned function assembles the runtime on the running event loop. The tickets are kept
    in the conversation store's SQLite file."""
    from workers.adapters.clock import SystemClock
    from workers.adapters.local.runtime import take_state_lock
    from workers.adapters.local.sqlite_schedules import SqliteScheduler
    from workers.adapters.local.sqlite_store import SqliteConversationStore
    from workers.adapters.local.sqlite_tickets import SqliteTicketStore
    from workers.agent.store import StoreMemories
    from workers.core.schedules import FollowUps

    clock = SystemClock()
    lock = take_state_lock(settings.state_dir)
    store = SqliteConversationStore(settings.db_path)
    memory: Any = None
    try:
        memory = embedded_memory(settings)
        tickets = SqliteTicketStore(store.database)
        scheduler = SqliteScheduler(store.database)
        followups = FollowUps(scheduler, store, clock, settings.schedules_per_conversation)
        # the log redaction first: loading the prompt can log (a registry's error quotes it)
        if tracer is None:  # the default: redacted by the exporter process
            traces = redaction(settings, build_tracer(settings), spans=False)
        else:
            traces = redaction(settings, tracer)
        prompt = load_prompt(settings)
        agent = build_agent(
            settings, tickets, clock, model, prompt, store=memory, followups=followups
        )
        for subscription in settings.webhooks:  # an unset secret: said before serving
            subscription.secret()
        prompt.announce()
    except BaseException:
        if hasattr(memory, "conn"):
            memory.conn.close()
        store.close()
        lock.close()
        raise

    def assemble() -> EmbeddedRuntime:
        from workers.adapters.local.hub import LocalCancellations, LocalHub, LocalReplySink
        from workers.adapters.local.runtime import EmbeddedRuntime, LocalWorkflowStarter

        loop = asyncio.get_running_loop()
        hub = LocalHub(loop)
        queue: asyncio.Queue[RunRef] = asyncio.Queue()
        starter = LocalWorkflowStarter(loop, queue)
        sender, webhooks = embedded_webhooks(settings)
        deps = Deps(
            store=store,
            agent=agent,
            sink=embedded_sink(settings, LocalReplySink(hub), webhooks),
            starter=starter,
            clock=clock,
            tracer=traces,
            settings=turn_settings(settings, prompt),
            memories=StoreMemories(memory),
            cancellations=LocalCancellations(),
            scheduler=scheduler,
            webhooks=webhooks.queue,
        )
        return EmbeddedRuntime(
            settings=settings,
            store=store,
            memory=memory if hasattr(memory, "sweep_ttl") else None,
            tickets=tickets,
            deps=deps,
            hub=hub,
            queue=queue,
            starter=starter,
            lock_file=lock,
            webhooks=sender,
            scheduler=scheduler,
        )

    return assemble


def embedded_webhooks(settings: Settings) -> tuple[WebhookSender, WebhookSink]:
    """The embedded runtime's webhooks: the sender the runtime runs and the sink that queues
    for it, for the app file's subscriptions (``settings.webhooks``; their secrets were
    checked by :func:`prepare_embedded`) and the conversations' own (made over the API,
    kept in the same queue's file)."""
    from workers.adapters.local.webhooks import (
        WEBHOOKS_DB,
        WebhookQueue,
        WebhookSender,
        WebhookSink,
    )

    queue = WebhookQueue(settings.state_dir / WEBHOOKS_DB)
    sender = WebhookSender(
        queue,
        settings.webhooks,
        attempts=settings.webhook_attempts,
        base_delay=settings.webhook_retry_base_seconds,
        timeout=settings.webhook_timeout_seconds,
        private_urls=settings.webhook_private_urls,
    )
    return sender, WebhookSink(queue, settings.webhooks, wake=sender.wake)


def embedded_sink(
    settings: Settings, local: ReplySink, webhooks: ReplySink | None = None
) -> ReplySink:
    """The embedded runtime's replies: to its hub (the page, the API, the CLI), to Slack
    threads when the app has a bot token, and to the webhooks' queue when it has any."""
    sinks: dict[str, ReplySink] = {"local": local}
    if settings.slack_bot_token is not None:
        from workers.adapters.slack import SlackReplySink

        sinks["slack"] = SlackReplySink(slack_web(settings))
    if webhooks is not None:
        sinks["webhooks"] = webhooks
    if len(sinks) == 1:
        return local
    from workers.adapters.fanout import FanOutReplySink

    return FanOutReplySink(sinks)


_SLACK_APP: list[SlackApp] = []


def slack_app() -> SlackApp:
    """The AWS ``slack`` function's Slack app: its Web API client, the roles of its members
    (``slack_roles``; user groups' members cached), its suggested prompts; kept per process."""
    if not _SLACK_APP:
        from workers.adapters.slack_events import SlackApp

        settings = aws_settings()
        _SLACK_APP.append(SlackApp.of(settings, slack_web(settings)))
    return _SLACK_APP[0]


_SLACK_RATE: list[Rate | None] = []


def slack_rate() -> Rate | None:
    """How the AWS ``slack`` function records a member's thumb on a reply: handed to the
    ``feedback`` function (``feedback_function``) in an asynchronous invocation, which
    records it on the trace as ``POST .../feedback`` would (the slack function keeps no
    tracer: its cold start stays light). ``None`` when no function is named: reactions
    are then ignored. Kept per process; its Lambda client is made at the first rating (a
    message never pays for it)."""
    if not _SLACK_RATE:
        _SLACK_RATE.append(_slack_rate(aws_settings().feedback_function))
    return _SLACK_RATE[0]


def _slack_rate(function: str | None) -> Rate | None:
    if not function:
        return None
    from events.inbound import SlackRating
    from workers.adapters.aws.errors import map_aws_error

    clients: list[Any] = []

    def invoke(payload: bytes) -> None:
        if not clients:
            import boto3

            clients.append(boto3.session.Session().client("lambda"))
        clients[0].invoke(FunctionName=function, InvocationType="Event", Payload=payload)

    async def rate(
        conversation_id: str, principal: Principal, *, reply_id: str, score: int, withdrawn: bool
    ) -> None:
        rating = SlackRating(
            principal=principal,
            conversation_id=conversation_id,
            reply_id=reply_id,
            score=score,
            withdrawn=withdrawn,
        )
        payload = json.dumps({"slack_rating": rating.model_dump(mode="json")}).encode()
        try:
            await asyncio.to_thread(invoke, payload)
        except Exception as exc:
            raise map_aws_error(exc, "Lambda Invoke (feedback)") from exc

    return rate


def slack_web(settings: Settings, *, session: Any = None) -> SlackWeb:
    """The Slack app's Web API client: its bot token from the settings, or on AWS from the
    secret (read at the first call)."""
    from workers.adapters.slack import SlackWeb

    if settings.slack_secret_arn:
        return SlackWeb(
            lambda: slack_credentials(settings, session=session).bot_token,
            api_url=settings.slack_api_url,
        )
    token = settings.slack_bot_token
    return SlackWeb(lambda: token, api_url=settings.slack_api_url)


def embedded_memory(settings: Settings) -> Any:
    """The embedded runtime's long-term memory: LangGraph's ``SqliteStore`` in the state
    directory (the ``local`` extra). Without that extra (``pip install agentworker``, as an
    app's own tests may run) an in-memory store, and the log says so; an app that asks for
    vector search needs the extra (``ConfigError``)."""
    try:
        from workers.adapters.local.sqlite_memory import open_local_store, store_index
    except ImportError:
        if settings.store_index_dims is not None:
            raise ConfigError(
                "store_index_dims: vector search on the embedded runtime needs the SQLite"
                " store: pip install 'agentworker[local]'"
            ) from None
        from langgraph.store.memory import InMemoryStore

        log.warning(
            "long-term memory (runtime.store) is kept in memory only, lost at exit:"
            " pip install 'agentworker[local]' keeps it in the state directory"
        )
        return InMemoryStore()
    return open_local_store(settings.state_dir, store_index(settings))


def build_embedded(
    settings: Settings, *, model: Any = None, tracer: Tracer | None = None
) -> EmbeddedRuntime:
    """The embedded runtime on the running event loop (call from async code)."""
    return prepare_embedded(settings, model=model, tracer=tracer)()


# AWS runtime -------------------------------------------------------------------------------

_AWS_DEPS: dict[bool, Deps] = {}


class NoAgent:
    """The agent of functions that never run a turn (ingest, deliver, sweeper): building the
    real one would import LangGraph and slow their cold start."""

    def run_turn(self, request: Any, *, on_chunk: Any, tracer: Tracer) -> Any:
        raise ConfigError("this function was built without the agent; only 'turn' runs turns")

    def inspect(
        self, conversation_id: str, checkpoint: Any, history: Any, *, with_messages: bool = False
    ) -> Any:
        raise ConfigError("this function was built without the agent; only 'turn' has it")


def aws_deps(*, with_agent: bool = False) -> Deps:
    """The AWS runtime's dependencies, built once per Lambda process from the environment."""
    deps = _AWS_DEPS.get(with_agent)
    if deps is None:
        deps = _AWS_DEPS[with_agent] = build_aws(aws_settings(), with_agent=with_agent)
    return deps


def aws_settings() -> Settings:
    """The Lambda process's settings, read from its environment once."""
    if not _AWS_SETTINGS:
        _AWS_SETTINGS.append(load_settings())
    return _AWS_SETTINGS[0]


def reset_aws_deps() -> None:
    """Forget the cached dependencies (the emulator rebuilds them against a new stack)."""
    _AWS_DEPS.clear()
    _API_APP.clear()
    _SLACK_APP.clear()
    _SLACK_RATE.clear()
    _SLACK_CREDENTIALS.clear()
    _AUTHENTICATOR.clear()
    _AWS_SETTINGS.clear()
    _COURIER.clear()


_AWS_SETTINGS: list[Settings] = []
_AUTHENTICATOR: list[Authenticator] = []


def auth_configured() -> bool:
    """Whether the stack has an identity provider (then every WebSocket connection came
    through the authorizer)."""
    return aws_settings().auth_configured


def authenticator() -> Authenticator:
    """The JWT authenticator of the AWS authorizer (once per process; its JWKS keys are
    cached across invocations). ``ConfigError`` without an identity provider."""
    if not _AUTHENTICATOR:
        from workers.adapters.tokens import JwtAuthenticator

        settings = aws_settings()
        if not settings.auth_configured:
            raise ConfigError(
                "AGENTWORKER_AUTH_JWKS_URL: not set; the authorizer verifies tokens with the"
                " identity provider's keys (stage parameter authJwksUrl)"
            )
        _AUTHENTICATOR.append(JwtAuthenticator.for_settings(settings))
    return _AUTHENTICATOR[0]


def jwt_claims() -> ClaimMapping:
    """Where the identity provider's tokens keep the tenant and roles: for the claims API
    Gateway's JWT authorizer passes on."""
    return aws_settings().claim_mapping


_API_APP: list[Any] = []


def api_app() -> Any:
    """The ``api`` function's ASGI app (the Agent Server API on the AWS runtime), built once
    per process, with the agent (a thread's state is read through the app's graph)."""
    if not _API_APP:
        from workers.adapters.aws.api_app import build_api_app
        from workers.adapters.aws.api_runtime import AwsApiRuntime

        runtimes: list[AwsApiRuntime] = []

        def runtime() -> AwsApiRuntime:
            if not runtimes:
                runtimes.append(AwsApiRuntime(aws_deps(with_agent=True)))
            return runtimes[0]

        _API_APP.append(build_api_app(aws_settings(), runtime, jwt_claims))
    return _API_APP[0]


_SLACK_CREDENTIALS: list[SlackCredentials] = []


def slack_credentials(settings: Settings | None = None, *, session: Any = None) -> SlackCredentials:
    """The Slack app's signing secret and bot token, read once per process: from the Secrets
    Manager secret ``AGENTWORKER_SLACK_SECRET_ARN`` when it is set, else from
    ``AGENTWORKER_SLACK_SIGNING_SECRET`` / ``AGENTWORKER_SLACK_BOT_TOKEN``."""
    if not _SLACK_CREDENTIALS:
        from workers.adapters.slack import SlackCredentials, read_slack_secret

        settings = settings or aws_settings()
        if settings.slack_secret_arn:
            import boto3

            session = session or boto3.session.Session()
            credentials = read_slack_secret(
                session.client("secretsmanager"), settings.slack_secret_arn
            )
        else:
            credentials = SlackCredentials(
                signing_secret=settings.slack_signing_secret, bot_token=settings.slack_bot_token
            )
        _SLACK_CREDENTIALS[:] = [credentials]
    return _SLACK_CREDENTIALS[0]


def slack_signing_secret() -> str:
    """The signing secret Slack requests are verified with; ``ConfigError`` when unset."""
    secret = slack_credentials().signing_secret
    if secret is None or not secret.get_secret_value().strip():
        # An empty secret would verify a request anyone can sign with the empty key.
        raise ConfigError(
            "AGENTWORKER_SLACK_SIGNING_SECRET / AGENTWORKER_SLACK_SECRET_ARN: not set or"
            " empty; the slack function needs the app's signing secret"
        )
    return secret.get_secret_value()


def build_aws(settings: Settings, *, with_agent: bool, session: Any = None) -> Deps:
    """Wire the AWS adapters: DynamoDB/S3 store, Step Functions starter, SNS and WebSocket
    sinks, Bedrock (or offline) agent with its ticket store on the same table, MLflow tracing
    when a tracking URI is configured; a Slack sink for Slack conversations when a bot token
    (or the Slack secret) is configured."""
    import boto3

    from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore
    from workers.adapters.aws.sinks import SnsReplySink, WebSocketReplySink
    from workers.adapters.aws.workflow import StepFunctionsWorkflowStarter
    from workers.adapters.clock import SystemClock
    from workers.adapters.fanout import FanOutReplySink

    if settings.state_machine_arn is None:
        raise ConfigError("AGENTWORKER_STATE_MACHINE_ARN: not set; the AWS runtime needs it")
    session = session or boto3.session.Session()
    clock = SystemClock()
    dynamodb = session.client("dynamodb")
    store = DynamoDBConversationStore(
        dynamodb=dynamodb,
        table_name=settings.table_name,
        s3=session.client("s3"),
        bucket=settings.bucket_name,
        retention_days=settings.retention_days,
    )
    sinks: dict[str, ReplySink] = {}
    if settings.reply_topic_arn:
        sinks["sns"] = SnsReplySink(session.client("sns"), settings.reply_topic_arn)
    if settings.websocket_endpoint:
        management = session.client(
            "apigatewaymanagementapi", endpoint_url=settings.websocket_endpoint
        )
        sinks["websocket"] = WebSocketReplySink(management, store)
    if settings.slack_bot_token or settings.slack_secret_arn:
        from workers.adapters.slack import SlackReplySink

        # Posts only Slack conversations' payloads; the token is read at the first post.
        sinks["slack"] = SlackReplySink(slack_web(settings, session=session))
    hooks = None
    if settings.webhooks_queue_url:
        from workers.adapters.aws.dynamodb_webhooks import DynamoDBWebhooks
        from workers.adapters.aws.webhooks import SqsWebhookSink

        # The app file's webhooks and the conversations' own: queued for the webhooks
        # function, never sent here.
        hooks = DynamoDBWebhooks(dynamodb=dynamodb, table_name=settings.table_name)
        sinks["webhooks"] = SqsWebhookSink(
            lambda: session.client("sqs"), settings.webhooks_queue_url, settings.webhooks, hooks
        )
    if settings.event_bus_name:
        from workers.adapters.aws.sinks import TicketWriteBack

        # A ticket conversation's replies and status to the helpdesk, through the bus.
        sinks["eventbridge"] = TicketWriteBack(
            lambda: session.client("events"), settings.event_bus_name
        )
    from workers.adapters.aws.dynamodb_memory import dynamodb_memory_store
    from workers.agent.store import StoreMemories
    from workers.handlers.observability import logger

    tracer = redaction(settings, lambda_tracer(settings), logger, spans=False)
    memory = dynamodb_memory_store(settings, dynamodb)
    scheduler = aws_scheduler(settings, session, dynamodb)
    agent: TurnAgent = NoAgent()
    prompt: LoadedPrompt | None = None
    if with_agent:
        from workers.adapters.aws.dynamodb_tickets import DynamoDBTicketStore
        from workers.core.schedules import FollowUps

        tickets = DynamoDBTicketStore(dynamodb=dynamodb, table_name=settings.table_name)
        prompt = load_prompt(settings)
        followups = None
        if scheduler is not None:
            followups = FollowUps(scheduler, store, clock, settings.schedules_per_conversation)
        agent = build_agent(
            settings, tickets, clock, prompt=prompt, store=memory, followups=followups
        )
        prompt.announce()
    return Deps(
        store=store,
        agent=agent,
        sink=FanOutReplySink(sinks),
        starter=StepFunctionsWorkflowStarter(
            session.client("stepfunctions"), settings.state_machine_arn
        ),
        clock=clock,
        tracer=tracer,
        settings=turn_settings(settings, prompt),
        memories=StoreMemories(memory),
        scheduler=scheduler,
        webhooks=hooks,
    )


_COURIER: list[Any] = []


def webhook_courier() -> Any:
    """The ``webhooks`` function's courier (once per process): the stack's subscriptions,
    their secrets read from ``webhook_secret_arn`` (Secrets Manager) into the variables
    each subscription names, and the webhooks queue."""
    if not _COURIER:
        import boto3

        from workers.adapters.aws.dynamodb_webhooks import DynamoDBWebhooks
        from workers.adapters.aws.webhooks import DeadGroups, WebhookCourier, load_secrets

        settings = aws_settings()
        if not settings.webhooks_queue_url:
            raise ConfigError("AGENTWORKER_WEBHOOKS_QUEUE_URL: not set; the stack sets it")
        session = boto3.session.Session()
        dynamodb = session.client("dynamodb")
        if settings.webhook_secret_arn:
            answer = session.client("secretsmanager").get_secret_value(
                SecretId=settings.webhook_secret_arn
            )
            secrets = load_secrets(str(answer.get("SecretString") or "{}"), settings.webhooks)
            for name, value in secrets.items():
                os.environ.setdefault(name, value)
        _COURIER.append(
            WebhookCourier(
                session.client("sqs"),
                settings.webhooks_queue_url,
                settings.webhooks,
                timeout=settings.webhook_timeout_seconds,
                base_delay=settings.webhook_retry_base_seconds,
                attempts=settings.webhook_attempts,
                dlq_url=settings.webhooks_dlq_url,
                dead=DeadGroups(dynamodb=dynamodb, table_name=settings.table_name),
                hooks=DynamoDBWebhooks(dynamodb=dynamodb, table_name=settings.table_name),
                private_urls=settings.webhook_private_urls,
            )
        )
    return _COURIER[0]


def aws_scheduler(settings: Settings, session: Any, dynamodb: Any) -> Scheduler | None:
    """The stack's schedules (``None`` when ``schedule_group`` is unset); ``ConfigError``
    for a group without its target or role."""
    if settings.schedule_group is None:
        return None
    if not (settings.schedule_target_arn and settings.schedule_role_arn):
        raise ConfigError(
            "AGENTWORKER_SCHEDULE_TARGET_ARN, AGENTWORKER_SCHEDULE_ROLE_ARN: a schedule group"
            " needs the function its schedules invoke and the role they invoke it as"
        )
    from workers.adapters.aws.eventbridge_scheduler import AwsScheduler

    return AwsScheduler(
        dynamodb=dynamodb,
        table_name=settings.table_name,
        scheduler=lambda: session.client("scheduler"),
        group=settings.schedule_group,
        target_arn=settings.schedule_target_arn,
        role_arn=settings.schedule_role_arn,
    )


def flush_traces(deps: Deps) -> tuple[bool, float]:
    """Export pending traces before a Lambda handler returns (the process may freeze):
    whether they all went, and how long it took (ms)."""
    started = time.perf_counter()
    sent = deps.tracer.flush()
    return sent, (time.perf_counter() - started) * 1e3
