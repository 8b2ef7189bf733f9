"""``agentworker sandbox``: the AWS runtime on one machine, and the client of
``agentworker send --target sandbox``.

The sandbox runs a moto server in this process, so :func:`route_lambda_to_handlers` applies to
the Lambda invocations of moto's Step Functions executor: the real ASL drives our real handlers,
which reach DynamoDB, S3, SQS, SNS and Step Functions through the same server (boto3 honours
``AWS_ENDPOINT_URL``). A poller feeds the inbound FIFO queue to ``ingest`` like Lambda's event
source mapping, a schedule runs the sweeper, and the queue ``agentworker-replies-sandbox``
subscribed to the SNS reply topic receives every reply (``send`` subscribes a queue of its own
per message). Clients find the sandbox through ``<state_dir>/sandbox.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import BaseModel, ConfigDict, ValidationError

from events.inbound import InboundMessage, MessageRequest
from events.outbound import ApprovalRequest, InterruptRequest
from workers.config import Settings, load_settings, parse_model_spec
from workers.errors import ConfigError, PermanentError, SandboxNotRunning
from workers.statedir import private_dir, write_private

if TYPE_CHECKING:
    from workers.sandbox.emulator import Handler, Stack

REGION = "us-east-1"
DUMMY_CREDENTIAL = "testing"
REPLIES_QUEUE = "agentworker-replies-sandbox"
STATE_FILE = "sandbox.json"
STUB_MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
SWEEP_INTERVAL_SECONDS = 60.0
"""The sweeper's schedule on AWS: every minute."""
RETRY_INTERVAL_SECONDS = 1
"""The workflow's retry interval here (moto really sleeps it; a sandbox user waits)."""
TRY_COMMAND = (
    'agentworker send --target sandbox{dir} -c ticket:1 "please open a ticket about the printer"'
)


class SandboxState(BaseModel):
    """``sandbox.json``: how a client reaches a running sandbox."""

    model_config = ConfigDict(extra="ignore")

    endpoint_url: str
    region: str = REGION
    queue_url: str
    replies_queue_url: str
    webhooks_queue_url: str = ""
    topic_arn: str
    event_bus: str = ""
    """The bus ``PutEvents`` with ``agentworker.message`` or ``ticket.*`` reaches ``ingest``
    through."""
    state_machine_arn: str
    table_name: str
    bucket_name: str
    pid: int


@dataclass(frozen=True)
class SandboxOptions:
    """What ``agentworker sandbox`` was asked for."""

    state_dir: Path
    port: int = 0
    """0: a free port."""
    bedrock_stub: bool = False
    """Serve the model through a local Bedrock Converse stub (``bedrock:<STUB_MODEL_ID>``)."""


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def client_factory(endpoint_url: str, region: str = REGION) -> Callable[[str], Any]:
    """``clients(service)``: boto3 clients pointed at the sandbox, with dummy credentials."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=DUMMY_CREDENTIAL,
        aws_secret_access_key=DUMMY_CREDENTIAL,
        region_name=region,
    )

    def clients(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint_url)

    return clients


# the sandbox ------------------------------------------------------------------------------


class Sandbox:
    """A running sandbox. :meth:`stop` ends it: scheduler, poller, stub, server, in that order
    (they were started the other way round), and restores the environment."""

    def __init__(self, state: SandboxState, state_file: Path, resources: ExitStack) -> None:
        self.state = state
        self.state_file = state_file
        self._resources = resources

    def stop(self) -> None:
        """Clean shutdown; the state file goes too, so clients stop finding this sandbox."""
        self.state_file.unlink(missing_ok=True)
        self._resources.close()


def start_sandbox(settings: Settings, options: SandboxOptions) -> Sandbox:
    """Start the moto server, create the stack, route Lambda to our handlers, start the
    ingest poller and the sweeper's schedule, and write ``sandbox.json`` (last: a client that
    finds it finds a sandbox ready to serve)."""
    from workers import bootstrap

    _refuse_real_bedrock(settings, options)
    resources = ExitStack()
    try:
        resources.enter_context(_restored_environment())
        resources.callback(bootstrap.reset_aws_deps)
        state = _start_runtime(resources, settings, options)
        state_file = _write_state(options.state_dir, state)
    except BaseException:
        resources.close()
        raise
    return Sandbox(state, state_file, resources)


def _start_runtime(
    resources: ExitStack, settings: Settings, options: SandboxOptions
) -> SandboxState:
    """Everything that runs, each registered in ``resources`` to be stopped."""
    from workers import bootstrap
    from workers.sandbox import emulator

    resources.enter_context(emulator.serialized_dynamodb())
    resources.enter_context(emulator.fifo_topic_deduplication())
    server, endpoint_url = emulator.start_moto_server(options.port)
    resources.callback(server.stop)
    clients = client_factory(endpoint_url)
    stack = emulator.create_stack(clients, retry_interval_seconds=RETRY_INTERVAL_SECONDS)
    replies_url = emulator.subscribe_queue(clients, stack.topic_arn, REPLIES_QUEUE).queue_url
    _point_handlers_at(endpoint_url, stack.environment())
    _export_app(settings)
    if options.bedrock_stub:
        _start_bedrock_stub(resources)
    bootstrap.reset_aws_deps()  # the handlers build their clients from the new environment
    _check_app(settings)
    handlers = emulator.default_handlers()
    resources.enter_context(emulator.route_lambda_to_handlers(handlers))
    _start_event_sources(resources, clients("sqs"), clients("scheduler"), stack, handlers)
    return SandboxState(
        endpoint_url=endpoint_url,
        region=stack.region,
        queue_url=stack.queue_url,
        replies_queue_url=replies_url,
        webhooks_queue_url=stack.webhooks_queue_url,
        topic_arn=stack.topic_arn,
        event_bus=stack.event_bus,
        state_machine_arn=stack.state_machine_arns["express"],
        table_name=stack.names.table,
        bucket_name=stack.names.bucket,
        pid=os.getpid(),
    )


def _start_event_sources(
    resources: ExitStack,
    sqs: Any,
    scheduler: Any,
    stack: Stack,
    handlers: Mapping[str, Handler],
) -> None:
    """What invokes Lambda on AWS besides the workflow: the inbound queue's event source
    mapping and the event bus's rules (``ingest``), the webhooks queue's (``webhooks``), the
    every-minute schedule (``sweeper``), and EventBridge Scheduler firing the conversations'
    schedules (``ingest``)."""
    from workers.sandbox.emulator import (
        EventsPoller,
        ScheduledInvoker,
        SchedulerFirer,
        SqsPoller,
        queue_arn,
    )

    for kind, url in ((SqsPoller, stack.queue_url), (EventsPoller, stack.events_queue_url)):
        poller = kind(sqs, url, queue_arn(sqs, url), handlers["ingest"])
        poller.start()
        resources.callback(poller.stop)
    url = stack.webhooks_queue_url  # the webhooks function's event source mapping
    courier = SqsPoller(sqs, url, queue_arn(sqs, url), handlers["webhooks"])
    courier.start()
    resources.callback(courier.stop)
    sweeper = ScheduledInvoker(
        handlers["sweeper"], "sweeper", stack.function_arns["sweeper"], SWEEP_INTERVAL_SECONDS
    )
    sweeper.start()
    resources.callback(sweeper.stop)
    ingest = stack.function_arns["ingest"]
    firer = SchedulerFirer(
        scheduler, stack.schedule_group, {ingest: ("ingest", handlers["ingest"])}
    )
    firer.start()
    resources.callback(firer.stop)


def _export_app(settings: Settings) -> None:
    """The app's settings, however given (flags, variables, the app file), become the
    environment of the in-process handlers, as the stack's environment would on AWS."""
    for name in ("graph", "config", "app_dir", "model", "prompt"):
        value = getattr(settings, name)
        if value is not None:
            os.environ[f"AGENTWORKER_{name.upper()}"] = str(value)
    if settings.config is None:
        os.environ["AGENTWORKER_APP_DIR"] = str(settings.import_dir)
    if settings.approval_tools is not None:
        os.environ["AGENTWORKER_APPROVAL_TOOLS"] = ",".join(settings.approval_tools)
    os.environ["AGENTWORKER_DOUBLE_TEXTING"] = settings.double_texting
    os.environ["AGENTWORKER_CONTEXT_WINDOW"] = str(settings.context_window)


def _check_app(given: Settings) -> None:
    """Build the ``turn`` function's dependencies once now: a graph or a model that cannot
    work stops the sandbox before it says it is ready, naming the setting as it was given
    (a flag, a variable, the app file)."""
    from workers import bootstrap

    settings = load_settings()  # what the handlers will read: the exported environment
    settings.keep_sources(given)
    bootstrap.build_aws(settings, with_agent=True)


def _refuse_real_bedrock(settings: Settings, options: SandboxOptions) -> None:
    provider, _ = parse_model_spec(settings.model)
    if provider == "bedrock_converse" and not (
        options.bedrock_stub or settings.bedrock_endpoint_url
    ):
        raise ConfigError(
            f"AGENTWORKER_MODEL={settings.model!r}: the sandbox runs on dummy credentials and "
            "sends every AWS call to moto; use --bedrock-stub or set "
            "AGENTWORKER_BEDROCK_ENDPOINT_URL"
        )


@contextmanager
def _restored_environment() -> Iterator[None]:
    """The sandbox configures its handlers through this process's environment (as Lambda
    does); leave it as it was when the sandbox stops."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _point_handlers_at(endpoint_url: str, stack_environment: dict[str, str]) -> None:
    """Set what a Lambda function of the stack would find in its environment, with every boto3
    client sent to the moto server."""
    os.environ.update(stack_environment)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIAL,
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIAL,
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)


def _start_bedrock_stub(resources: ExitStack) -> None:
    from workers.sandbox.converse_stub import ConverseStubServer

    stub = resources.enter_context(ConverseStubServer())
    os.environ["AGENTWORKER_MODEL"] = f"bedrock:{STUB_MODEL_ID}"
    os.environ["AGENTWORKER_BEDROCK_ENDPOINT_URL"] = stub.endpoint_url
    os.environ["AGENTWORKER_BEDROCK_REGION"] = REGION


def _write_state(state_dir: Path, state: SandboxState) -> Path:
    path = state_path(private_dir(state_dir))
    write_private(path, state.model_dump_json(indent=2) + "\n")  # a client never reads half
    return path


def banner(sandbox: Sandbox, state_dir: Path, *, model: str) -> str:
    """What ``agentworker sandbox`` prints once it is ready."""
    s = sandbox.state
    default_dir = Settings.model_fields["state_dir"].default
    dir_option = "" if state_dir == default_dir else f" --state-dir {shlex.quote(str(state_dir))}"
    return "\n".join(
        [
            f"agentworker: sandbox ready (moto, model {model}, state {sandbox.state_file})",
            f"  endpoint       {s.endpoint_url}",
            f"  inbound queue  {s.queue_url}",
            f"  replies queue  {s.replies_queue_url}",
            f"  reply topic    {s.topic_arn}",
            f"  event bus      {s.event_bus} (agentworker.message, ticket.*)",
            f"  state machine  {s.state_machine_arn}",
            "Try, in another terminal:",
            "  " + TRY_COMMAND.format(dir=dir_option),
            "Ctrl-C stops the sandbox (its state is in memory and goes with it).",
        ]
    )


def serve_sandbox(settings: Settings, options: SandboxOptions, out: TextIO) -> int:
    """Run the sandbox until SIGINT or SIGTERM, then shut it down cleanly; returns 0."""
    _quiet_request_logs()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        sandbox = start_sandbox(settings, options)
        try:
            model = os.environ.get("AGENTWORKER_MODEL", settings.model)
            print(banner(sandbox, options.state_dir, model=model), file=out, flush=True)
            while not stop.wait(0.5):
                pass
            print("agentworker: stopping the sandbox", file=out, flush=True)
        finally:
            sandbox.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _quiet_request_logs() -> None:
    """moto's server logs every request (the poller alone makes twenty a second) and botocore
    every client it builds; the handlers' own logs and metrics are what is worth reading."""
    for name in ("werkzeug", "botocore.credentials", "botocore.configprovider"):
        logging.getLogger(name).setLevel(logging.WARNING)


# the client (send --target sandbox) ---------------------------------------------------------


def read_state(state_dir: Path) -> SandboxState:
    """The running sandbox's ``sandbox.json``; ``SandboxNotRunning`` if there is none."""
    path = state_path(state_dir)
    try:
        return SandboxState.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise SandboxNotRunning(
            f"no sandbox state at {path}; start one with 'agentworker sandbox'"
        ) from None
    except ValidationError as exc:
        raise SandboxNotRunning(f"{path} is not a sandbox state file: {exc}") from None


def build_message(conversation_id: str, body: dict[str, Any]) -> InboundMessage:
    """The inbound message for ``body`` (the HTTP API's message request); bad input is a
    ``PermanentError`` naming the field."""
    try:
        return MessageRequest.model_validate(body).to_inbound(conversation_id, channel="sqs")
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise PermanentError(f"{field or 'message'}: {err['msg']}", field=field) from None


class SandboxClient:
    """Sends messages to a sandbox's inbound queue and waits for their replies."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._clients = client_factory(state.endpoint_url, state.region)
        self._sqs = self._clients("sqs")

    def send(self, message: InboundMessage) -> None:
        """Enqueue ``message`` on the inbound FIFO queue: its conversation is the message
        group (order per conversation), its id the deduplication id."""
        with _reaching(self.state):
            self._sqs.send_message(
                QueueUrl=self.state.queue_url,
                MessageBody=message.model_dump_json(exclude_none=True),
                MessageGroupId=message.conversation_id,
                MessageDeduplicationId=message.message_id,
            )

    def ask(self, message: InboundMessage, timeout: float) -> dict[str, Any] | None:
        """Send ``message`` and return the payload answering it (a reply, an approval request
        or a notice), or None after ``timeout`` seconds."""
        with self._replies_of(message.conversation_id) as queue_url:
            self.send(message)
            return self._wait(queue_url, message.message_id, timeout)

    @contextmanager
    def _replies_of(self, conversation_id: str) -> Iterator[str]:
        """A queue of this client's own, subscribed to the reply topic for one conversation
        (an SNS filter on the ``conversation_id`` attribute), removed afterwards. Clients that
        wait at once on one shared queue hold each other's replies (each hides the other's
        from the other) and can starve behind unread ones; their own queues cannot."""
        from workers.sandbox.emulator import subscribe_queue, unsubscribe_queue

        with _reaching(self.state):
            subscription = subscribe_queue(
                self._clients,
                self.state.topic_arn,
                f"{REPLIES_QUEUE}-{uuid.uuid4().hex[:12]}",
                filter_policy={"conversation_id": [conversation_id]},
            )
        try:
            yield subscription.queue_url
        finally:
            with _reaching(self.state):
                unsubscribe_queue(self._clients, subscription)

    def _wait(self, queue_url: str, message_id: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with _reaching(self.state):
                got = self._sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                ).get("Messages", [])
            for message in got:
                # the queue is ours: a payload for another message of the conversation goes too
                self._sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                payload: dict[str, Any] = json.loads(message["Body"])
                if message_id in payload.get("in_reply_to", []):
                    return payload
        return None

    def pending_approval(self, conversation_id: str) -> ApprovalRequest | InterruptRequest | None:
        """The request (a tool approval, an interrupt) the conversation waits on, read from
        the sandbox's table."""
        from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore

        store = DynamoDBConversationStore(
            dynamodb=self._clients("dynamodb"),
            table_name=self.state.table_name,
            s3=self._clients("s3"),
            bucket=self.state.bucket_name,
        )
        with _reaching(self.state):
            conversation = store.get_conversation(conversation_id)
        if conversation is None or conversation.status != "awaiting_approval":
            return None
        return conversation.pending_approval


@contextmanager
def _reaching(state: SandboxState) -> Iterator[None]:
    """A sandbox that stopped without removing its state file (killed) cannot be reached."""
    from botocore.exceptions import EndpointConnectionError

    try:
        yield
    except EndpointConnectionError:
        raise SandboxNotRunning(
            f"no sandbox answers at {state.endpoint_url} (pid {state.pid}); "
            "start one with 'agentworker sandbox'"
        ) from None
