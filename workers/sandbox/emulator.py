"""The AWS runtime on one machine, on moto: resources, Lambda routing, an SQS poller.

Used by the functional tests and by ``agentworker sandbox``. moto executes the real ASL
(``execute_state_machine``); without Docker it does not run Lambda code, so
:func:`route_lambda_to_handlers` replaces moto's simple Lambda backend's ``invoke`` with a call
to our handlers in this process, reporting a raised error the way Lambda does
(``x-amz-function-error`` and ``{"errorType": <class name>}``), which is what the ASL's
``Retry``/``Catch`` match on.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from workers.adapters.aws.tables import DynamoDBTableSpec
from workers.stack import (
    EVENT_DETAIL_TYPES,
    FUNCTIONS,
    QUEUE_MAX_RECEIVES,
    WEBHOOK_QUEUE_RECEIVES,
    StackNames,
)

log = logging.getLogger(__name__)


MOTO_CONFIG: dict[str, Any] = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
}
"""moto's configuration for the emulator: run state machines, no Docker for Lambda."""

STATEMACHINE_DIR = Path(__file__).resolve().parents[2] / "statemachine"

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class LambdaContextStub:
    """What Powertools reads from a Lambda context."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 512
    aws_request_id: str = "emulated"
    function_version: str = "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def default_handlers() -> dict[str, Handler]:
    """Our Lambda handlers by function name (imported here: ``turn`` brings LangGraph)."""
    from workers.handlers import (
        approve,
        authorizer,
        deliver,
        feedback,
        ingest,
        slack,
        sweeper,
        turn,
        webhooks,
    )

    return {
        "authorizer": authorizer.handler,
        "ingest": ingest.handler,
        "turn": turn.handler,
        "deliver": deliver.handler,
        "approve": approve.handler,
        "feedback": feedback.handler,
        "sweeper": sweeper.handler,
        "slack": slack.handler,
        "webhooks": webhooks.handler,
    }


def invoke_handler(handler: Handler, name: str, arn: str, body: Any) -> tuple[bytes, bool]:
    """Call ``handler`` like Lambda would; returns (response bytes, function error?)."""
    event = json.loads(body) if body else {}
    try:
        result = handler(event, LambdaContextStub(name, arn))
    except Exception as exc:  # reported to the caller exactly like Lambda does
        log.info("%s raised %s: %s", name, type(exc).__name__, exc)
        error = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
        return json.dumps(error).encode(), True
    return json.dumps(result).encode(), False


@contextmanager
def route_lambda_to_handlers(handlers: Mapping[str, Handler]) -> Iterator[None]:
    """While active, moto's Lambda ``invoke`` runs our handlers in-process."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    original = LambdaSimpleBackend.invoke

    def invoke(  # noqa: PLR0917 - moto's signature
        self: Any,
        function_name: str,
        qualifier: str | None,
        body: Any,
        headers: Any,
        response_headers: Any,
    ) -> bytes:
        name = function_name.split(":")[6] if function_name.startswith("arn:") else function_name
        handler = handlers.get(name)
        if handler is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "ResourceNotFound", "errorMessage": name}).encode()
        data, failed = invoke_handler(handler, name, function_name, body)
        if failed:
            response_headers["x-amz-function-error"] = "Unhandled"
        return data

    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield
    finally:
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


@dataclass
class Stack:
    """What :func:`create_stack` made: ARNs and URLs the runtime's settings point at."""

    names: StackNames
    region: str
    queue_url: str = ""
    dlq_url: str = ""
    topic_arn: str = ""
    event_bus: str = ""
    events_queue_url: str = ""
    """Where the bus's rules for ``ingest`` deliver (moto cannot invoke a Lambda target;
    an :class:`EventsPoller` hands the events to ``ingest`` as EventBridge would)."""
    function_arns: dict[str, str] = field(default_factory=dict)
    state_machine_arns: dict[str, str] = field(default_factory=dict)
    webhooks_queue_url: str = ""
    webhooks_dlq_url: str = ""
    schedule_group: str = ""
    """The EventBridge Scheduler group of the conversations' schedules (moto keeps them; a
    :class:`SchedulerFirer` fires them)."""
    schedule_role_arn: str = ""

    def environment(self, variant: str = "express") -> dict[str, str]:
        """The ``AGENTWORKER_*`` settings of a Lambda function in this stack."""
        return {
            "AGENTWORKER_TABLE_NAME": self.names.table,
            "AGENTWORKER_BUCKET_NAME": self.names.bucket,
            "AGENTWORKER_STATE_MACHINE_ARN": self.state_machine_arns[variant],
            "AGENTWORKER_REPLY_TOPIC_ARN": self.topic_arn,
            "AGENTWORKER_MAX_RUN_SECONDS": "240",
            "AGENTWORKER_FEEDBACK_FUNCTION": self.function_arns.get("feedback", ""),
            "AGENTWORKER_EVENT_BUS_NAME": self.event_bus,
            "AGENTWORKER_WEBHOOKS_QUEUE_URL": self.webhooks_queue_url,
            "AGENTWORKER_WEBHOOKS_DLQ_URL": self.webhooks_dlq_url,
            "AGENTWORKER_SCHEDULE_GROUP": self.schedule_group,
            "AGENTWORKER_SCHEDULE_TARGET_ARN": self.function_arns.get("ingest", ""),
            "AGENTWORKER_SCHEDULE_ROLE_ARN": self.schedule_role_arn,
        }


def _zip() -> bytes:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()


def load_definition(variant: str, function_arns: Mapping[str, str]) -> str:
    """An ASL file with its ``${...FunctionArn}`` placeholders substituted."""
    name = "conversation.asl.json" if variant == "express" else f"conversation-{variant}.asl.json"
    text = (STATEMACHINE_DIR / name).read_text()
    for function, arn in function_arns.items():
        text = text.replace("${" + function.capitalize() + "FunctionArn}", arn)
    return text


def create_stack(
    clients: Callable[[str], Any],
    names: StackNames | None = None,
    *,
    region: str = "us-east-1",
    retry_interval_seconds: int | None = None,
) -> Stack:
    """Create every resource of the AWS runtime with boto3 clients from ``clients(service)``.

    ``retry_interval_seconds`` shortens the workflow's retry intervals (moto really sleeps
    them): tests pass 1.
    """
    names = names or StackNames()
    stack = Stack(names=names, region=region)
    DynamoDBTableSpec(names.table).create(clients("dynamodb"))
    clients("s3").create_bucket(Bucket=names.bucket)
    sqs = clients("sqs")
    stack.queue_url, stack.dlq_url = _fifo_queue(sqs, names.queue, names.dlq, QUEUE_MAX_RECEIVES)
    stack.webhooks_queue_url, stack.webhooks_dlq_url = _fifo_queue(
        sqs, names.webhooks_queue, names.webhooks_dlq, WEBHOOK_QUEUE_RECEIVES
    )
    stack.topic_arn = clients("sns").create_topic(
        Name=names.topic, Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "false"}
    )["TopicArn"]
    _route_events(clients("events"), sqs, stack)
    role = clients("iam").create_role(
        RoleName=f"{names.prefix}-role", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    lam = clients("lambda")
    for function in FUNCTIONS:
        created = lam.create_function(
            FunctionName=function,
            Runtime="python3.12",
            Role=role,
            Handler=f"workers.handlers.{function}.handler",
            Code={"ZipFile": _zip()},
        )
        stack.function_arns[function] = created["FunctionArn"]
    stack.schedule_group = names.schedule_group
    clients("scheduler").create_schedule_group(Name=names.schedule_group)
    stack.schedule_role_arn = clients("iam").create_role(
        RoleName=f"{names.prefix}-scheduler", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    sfn = clients("stepfunctions")
    for variant, kind in (("express", "EXPRESS"), ("standard", "STANDARD")):
        definition = load_definition(variant, stack.function_arns)
        if retry_interval_seconds is not None:
            definition = _shorten_retries(definition, retry_interval_seconds)
        stack.state_machine_arns[variant] = sfn.create_state_machine(
            name=names.state_machine(variant), definition=definition, roleArn=role, type=kind
        )["stateMachineArn"]
    return stack


def _fifo_queue(sqs: Any, name: str, dlq_name: str, max_receives: int) -> tuple[str, str]:
    """A FIFO queue (2 s visibility, for the tests' pace) and its dead-letter queue, which
    takes a message after ``max_receives`` receives: their URLs."""
    dlq_url: str = sqs.create_queue(QueueName=dlq_name, Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    redrive = {"deadLetterTargetArn": queue_arn(sqs, dlq_url), "maxReceiveCount": str(max_receives)}
    url: str = sqs.create_queue(
        QueueName=name,
        Attributes={
            "FifoQueue": "true",
            "VisibilityTimeout": "2",
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    return url, dlq_url


def _route_events(events: Any, sqs: Any, stack: Stack) -> None:
    """The event bus with the stack's rules (``EVENT_DETAIL_TYPES``: ``agentworker.message``
    and ``ticket.*``), targeting a queue the :class:`EventsPoller` drains into ``ingest``."""
    names = stack.names
    stack.event_bus = events.create_event_bus(Name=names.event_bus)["EventBusArn"].split("/")[-1]
    stack.events_queue_url = sqs.create_queue(QueueName=f"{names.prefix}-events-to-ingest")[
        "QueueUrl"
    ]
    target = queue_arn(sqs, stack.events_queue_url)
    for rule, detail_types in EVENT_DETAIL_TYPES.items():
        name = f"{names.prefix}-{rule}"
        events.put_rule(
            Name=name,
            EventBusName=names.event_bus,
            EventPattern=json.dumps({"detail-type": detail_types}),
        )
        events.put_targets(
            Rule=name, EventBusName=names.event_bus, Targets=[{"Id": "ingest", "Arn": target}]
        )


def _shorten_retries(definition: str, seconds: int) -> str:
    data = json.loads(definition)
    for state in data["States"].values():
        for rule in state.get("Retry", []):
            rule["IntervalSeconds"] = seconds
            rule["BackoffRate"] = 1.0
    return json.dumps(data)


class SqsPoller:
    """Feeds the inbound queue to ``ingest`` like Lambda's event source mapping: batches of
    up to 10, partial batch failures left on the queue (moto moves them to the DLQ after
    ``maxReceiveCount`` receives)."""

    def __init__(self, sqs: Any, queue_url: str, queue_arn: str, handler: Handler) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._arn = queue_arn
        self._handler = handler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self, wait_seconds: int = 0) -> int:
        """Receive one batch and hand it to the handler; returns how many were received."""
        got = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return 0
        event = {"Records": [self._record(m) for m in got]}
        data, failed = invoke_handler(self._handler, "ingest", "ingest", json.dumps(event))
        response = json.loads(data)
        if failed:
            return len(got)  # the whole batch comes back after the visibility timeout
        failures = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        done = [m for m in got if m["MessageId"] not in failures]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        return len(got)

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._arn,
            "awsRegion": self._arn.split(":")[3],
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.poll_once() == 0:
                    time.sleep(0.05)
            except Exception:
                log.exception("SQS poll failed; retrying")
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class EventsPoller(SqsPoller):
    """Hands the events the bus's rules matched to ``ingest`` one by one, as EventBridge
    invokes a Lambda target (asynchronously: a failed one is retried, here after the queue's
    visibility timeout)."""

    def poll_once(self, wait_seconds: int = 0) -> int:
        got = self._sqs.receive_message(
            QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        ).get("Messages", [])
        for message in got:
            _, failed = invoke_handler(self._handler, "ingest", "ingest", message["Body"])
            if not failed:
                self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=message["ReceiptHandle"])
        return len(got)


# moto server mode ----------------------------------------------------------------------------


def start_moto_server(port: int = 0) -> tuple[Any, str]:
    """Start a ``ThreadedMotoServer`` on 127.0.0.1 (``port`` 0: a free one) configured for the
    emulator; returns the server and its endpoint URL.

    ``MOTO_PORT`` is set to the bound port before anything can execute a state machine: moto's
    Step Functions executor calls Lambda through ``http://localhost:$MOTO_PORT`` (default 5000,
    which fails with ``States.Runtime``). It is read per call, so setting it right after the
    bind is early enough, and binding port 0 avoids racing another process for a free port.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    os.environ["MOTO_PORT"] = str(bound)
    endpoint_url = f"http://{host}:{bound}"
    try:
        configure_moto_server(endpoint_url)
    except OSError:
        server.stop()
        raise
    return server, endpoint_url


def configure_moto_server(endpoint_url: str, config: Mapping[str, Any] = MOTO_CONFIG) -> None:
    """``POST {endpoint_url}/moto-api/config``: must come before the state machines are created."""
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/config",
        data=json.dumps(config).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def queue_arn(sqs: Any, queue_url: str) -> str:
    """The ARN of the queue at ``queue_url``."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


@dataclass(frozen=True)
class QueueSubscription:
    """A queue subscribed to an SNS topic (see :func:`subscribe_queue`)."""

    queue_url: str
    subscription_arn: str


def subscribe_queue(
    clients: Callable[[str], Any],
    topic_arn: str,
    queue_name: str,
    *,
    filter_policy: Mapping[str, Any] | None = None,
    retention_seconds: int = 600,
) -> QueueSubscription:
    """Create a standard queue subscribed to ``topic_arn`` with raw delivery (each message body
    is one published payload, as JSON), optionally filtered on message attributes. How a
    client reads the replies."""
    sqs = clients("sqs")
    url: str = sqs.create_queue(
        QueueName=queue_name, Attributes={"MessageRetentionPeriod": str(retention_seconds)}
    )["QueueUrl"]
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy is not None:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    subscribed = clients("sns").subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn(sqs, url),
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )
    return QueueSubscription(url, subscribed["SubscriptionArn"])


def unsubscribe_queue(clients: Callable[[str], Any], subscription: QueueSubscription) -> None:
    """Undo :func:`subscribe_queue`: the subscription first (moto fails a publish to a
    subscribed queue that no longer exists), then the queue."""
    clients("sns").unsubscribe(SubscriptionArn=subscription.subscription_arn)
    clients("sqs").delete_queue(QueueUrl=subscription.queue_url)


SNS_DEDUPLICATION_SECONDS = 300.0
"""How long an SNS FIFO topic remembers a ``MessageDeduplicationId``."""


@dataclass
class TopicDeduplication:
    """What :func:`fifo_topic_deduplication` dropped: publishes of an id already published."""

    dropped: int = 0
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first(self, topic_arn: str, deduplication_id: str) -> bool:
        """Whether this id is new to the topic within the window (then it is remembered)."""
        now = time.monotonic()
        with self.lock:
            at = self.seen.get((topic_arn, deduplication_id))
            if at is not None and now - at < SNS_DEDUPLICATION_SECONDS:
                self.dropped += 1
                return False
            self.seen[topic_arn, deduplication_id] = now
            return True


@contextmanager
def fifo_topic_deduplication() -> Iterator[TopicDeduplication]:
    """While active, moto's FIFO topics drop a publish whose ``MessageDeduplicationId`` they
    published in the last five minutes, as SNS does. moto passes the id on to the
    subscribed queues instead: a FIFO queue dedupes only while it still holds the first
    message (not once it was received and deleted), a standard queue not at all."""
    from moto.sns.models import Topic

    original = Topic.publish
    deduplication = TopicDeduplication()

    def publish(  # noqa: PLR0917 - moto's signature
        self: Any,
        message: str,
        subject: str | None = None,
        message_attributes: dict[str, Any] | None = None,
        group_id: str | None = None,
        deduplication_id: str | None = None,
        message_structure: str | None = None,
    ) -> str:
        if (
            self.fifo_topic
            and deduplication_id
            and not deduplication.first(self.arn, deduplication_id)
        ):
            return f"deduplicated-{deduplication_id}"
        message_id: str = original(
            self,
            message,
            subject=subject,
            message_attributes=message_attributes,
            group_id=group_id,
            deduplication_id=deduplication_id,
            message_structure=message_structure,
        )
        return message_id

    Topic.publish = publish  # type: ignore[method-assign]
    try:
        yield deduplication
    finally:
        Topic.publish = original  # type: ignore[method-assign]


@contextmanager
def serialized_dynamodb() -> Iterator[None]:
    """While active, moto answers one DynamoDB request at a time.

    moto's DynamoDB is not thread-safe, and a moto server answers each request in its own
    thread: ``TransactWriteItems`` deep-copies the table while other requests change it
    (``RuntimeError: dictionary changed size during iteration``, an HTTP 500), and a
    conditional write's check and write can interleave with another's, which real DynamoDB
    never allows. DynamoDB requests make no nested requests, so one lock cannot deadlock.
    """
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action
    lock = threading.Lock()

    def call_action(self: Any) -> Any:
        with lock:
            return original(self)

    DynamoHandler.call_action = call_action  # type: ignore[method-assign]
    try:
        yield
    finally:
        DynamoHandler.call_action = original  # type: ignore[method-assign]


class ScheduledInvoker:
    """Invokes a handler every ``interval`` seconds in a thread, like an EventBridge schedule
    rule (the sweeper's, on AWS). A failed invocation is logged; the schedule goes on."""

    def __init__(self, handler: Handler, name: str, arn: str, interval: float) -> None:
        self._handler = handler
        self._name = name
        self._arn = arn
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def invoke_once(self) -> bool:
        """One scheduled invocation; returns False if the handler raised."""
        event = {"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
        data, failed = invoke_handler(self._handler, self._name, self._arn, json.dumps(event))
        if failed:
            log.warning("scheduled %s failed: %s", self._name, data.decode())
        return not failed

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"schedule-{self._name}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.invoke_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class SchedulerFirer:
    """Fires the EventBridge Scheduler schedules of ``group`` as EventBridge Scheduler would
    (moto keeps schedules and fires none): at each occurrence of a schedule's expression
    (``at(...)``, ``cron(...)`` in its time zone), the handler of its target function gets its
    ``Input`` with ``<aws.scheduler.scheduled-time>`` filled in; a one-off with
    ``ActionAfterCompletion: DELETE`` is deleted after it ran; an invocation that raised is
    tried again at the next look (its ``RetryPolicy``). ``repeat`` invokes each occurrence that
    many times: EventBridge Scheduler delivers at least once."""

    def __init__(
        self,
        scheduler: Any,
        group: str,
        handlers: Mapping[str, tuple[str, Handler]],
        *,
        repeat: int = 1,
        interval: float = 0.5,
    ) -> None:
        self._scheduler = scheduler
        self._group = group
        self._handlers = handlers
        """By function ARN: (name, handler)."""
        self.repeat = repeat
        self._interval = interval
        self._next: dict[str, float] = {}
        self.fired: list[tuple[str, str]] = []
        """(schedule name, scheduled time) of every occurrence that ran."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fire_due(self, now: float | None = None) -> int:
        """Run the occurrences due at ``now``; how many ran."""
        now = time.time() if now is None else now
        ran = 0
        pages = self._scheduler.get_paginator("list_schedules")
        names = [
            summary["Name"]
            for page in pages.paginate(GroupName=self._group)
            for summary in page["Schedules"]
        ]
        for name in set(self._next) - set(names):
            del self._next[name]
        for name in names:
            try:
                schedule = self._scheduler.get_schedule(Name=name, GroupName=self._group)
            except self._scheduler.exceptions.ResourceNotFoundException:
                continue  # deleted meanwhile
            due = self._next.get(name)
            if due is None:
                due = self._next[name] = _first_occurrence(schedule)
            if due > now:
                continue
            if not self._invoke(schedule, due):
                continue  # tried again at the next look
            ran += 1
            self.fired.append((name, _iso(due)))
            if schedule["ScheduleExpression"].startswith("at("):
                self._next.pop(name, None)
                if schedule.get("ActionAfterCompletion") == "DELETE":
                    self._scheduler.delete_schedule(Name=name, GroupName=self._group)
            else:
                self._next[name] = _next_cron(schedule, due)
        return ran

    def _invoke(self, schedule: Mapping[str, Any], due: float) -> bool:
        target = schedule["Target"]
        name, handler = self._handlers[target["Arn"]]
        body = str(target.get("Input", "{}")).replace("<aws.scheduler.scheduled-time>", _iso(due))
        for _ in range(self.repeat):
            data, failed = invoke_handler(handler, name, target["Arn"], body)
            if failed:
                log.warning("schedule %s: %s failed: %s", schedule["Name"], name, data.decode())
                return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler-firer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.fire_due()
            except Exception:  # moto gone mid-call at shutdown, or a bad expression
                log.exception("firing schedules failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_occurrence(schedule: Mapping[str, Any]) -> float:
    expression = str(schedule["ScheduleExpression"])
    if expression.startswith("at(") and expression.endswith(")"):
        from datetime import datetime
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(schedule.get("ScheduleExpressionTimezone") or "UTC")
        at = datetime.strptime(expression[3:-1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=zone)
        return at.timestamp()
    created = schedule.get("LastModificationDate") or schedule.get("CreationDate")
    start = float(created.timestamp()) if created is not None else time.time()
    return _next_cron(schedule, start)


def _next_cron(schedule: Mapping[str, Any], after: float) -> float:
    """The next time of an EventBridge Scheduler ``cron(m h dom mon dow year)`` after
    ``after``: exactly one of the days ``?``, the year ``*`` (what this runtime makes)."""
    expression = str(schedule["ScheduleExpression"])
    fields = expression.removeprefix("cron(").removesuffix(")").split(" ")
    if len(fields) != 6 or fields[5] != "*" or [fields[2], fields[4]].count("?") != 1:
        raise ValueError(f"not an EventBridge Scheduler cron expression: {expression}")
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from croniter import croniter

    zone = ZoneInfo(schedule.get("ScheduleExpressionTimezone") or "UTC")
    cron = " ".join("*" if f == "?" else f for f in fields[:5])
    return float(croniter(cron, datetime.fromtimestamp(after, zone)).get_next(float))
