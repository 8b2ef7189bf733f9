"""Dependency faults on the AWS runtime under moto: the model throttles and times out (the
Converse stub), DynamoDB throttles and races on its conditional writes, S3 and SNS fail.

The AWS errors are raised by the boto3 clients of our Lambda functions (only while one of
them runs in the thread: the harness's own reads go through), as botocore raises them after
its own retries gave up; the model's come from the stub over HTTP, so botocore's retries
see them first. Runs recover as deployed (the workflow's retries with backoff, the SQS
redelivery, the sweeper); a turn whose retries are spent ends with one failure notice.
Checked against the same invariants as the faults after each store write.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from events.outbound import STREAM_FRAME_TYPES, OutboxPayload
from reliability.plan import Result
from reliability.probe import PAYLOAD, Ledger, StoreProbe, check
from reliability.workflow import (
    SINK,
    ApiCall,
    Faulty,
    aws_calls_through,
    lease_ttl,
    run_conversations,
    running,
)
from tests.functional.aws_env import Aws, aws_runtime
from tests.functional.slack_env import BOT_TOKEN, SlackApiStub, slack_api_stub
from workers import bootstrap
from workers.sandbox.emulator import invoke_handler


@dataclass(frozen=True)
class Rule:
    """Fail every ``every``-th of ``service``'s calls (of ``operations``, else all) with
    ``code``: deterministic counts, whatever the timing."""

    kind: str
    service: str
    code: str
    status: int
    every: int
    operations: frozenset[str] = frozenset()


SLACK = "Slack failures"
WEBSOCKET = "WebSocket failures"
WEBSOCKET_ENDPOINT = "https://reliability.execute-api.us-east-1.amazonaws.com/dev"
SLACK_FAIL_EVERY = 3
RULES = {
    "DynamoDB throttling": Rule(
        "DynamoDB throttling", "dynamodb", "ProvisionedThroughputExceededException", 400, 15
    ),
    "S3 errors": Rule("S3 errors", "s3", "InternalError", 500, 8),
    "SNS failures": Rule("SNS failures", "sns", "InternalError", 500, 3, frozenset({"Publish"})),
    WEBSOCKET: Rule(
        WEBSOCKET,
        "apigatewaymanagementapi",
        "InternalServerErrorException",
        500,
        3,
        frozenset({"PostToConnection"}),
    ),
}
MODEL_FAULTS = {
    "model throttling": ("ThrottlingException", 429),
    "model timeouts": ("ModelTimeoutException", 408),
}


@dataclass
class Injector:
    """Raises the rules' errors from our functions' boto3 clients (every n-th call)."""

    faulty: Faulty
    rules: list[Rule]
    calls: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, service: str, operation: str) -> Rule | None:
        if getattr(self.faulty.inside, "name", None) is None:
            return None  # the harness's own call, not a function's
        for rule in self.rules:
            if rule.service == service and (not rule.operations or operation in rule.operations):
                with self.lock:
                    self.calls[rule.kind] += 1
                    if self.calls[rule.kind] % rule.every == 0:
                        self.injected[rule.kind] += 1
                        return rule
        return None


@contextmanager
def injecting(injector: Injector) -> Iterator[None]:
    def call(real: ApiCall, client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        service = client.meta.service_model.service_name
        rule = injector.hit(service, operation)
        if rule is not None:
            error = {"Code": rule.code, "Message": f"{rule.kind} (injected)"}
            raise ClientError(
                {"Error": error, "ResponseMetadata": {"HTTPStatusCode": rule.status}},
                operation,
            )
        return real(client, operation, params)

    with aws_calls_through(call):
        yield


def race(aws: Aws, ledger: Ledger, cids: list[str], senders: int, messages: int) -> None:
    """``senders`` EventBridge producers at once per conversation: ``ingest`` invoked in
    parallel (a standard event source), its conditional writes racing each other and the
    runs'; each message accepted exactly once whatever the interleaving."""

    def sender(cid: str, n: int) -> None:
        for i in range(messages):
            event = {
                "version": "0",
                "id": f"{cid}-{n}-{i}",
                "detail-type": "agentworker.message",
                "source": "reliability",
                "account": "123456789012",
                "time": "2026-11-29T00:00:00Z",
                "region": "us-east-1",
                "resources": [],
                "detail": {
                    "conversation_id": cid,
                    "text": f"sender {n} message {i}",
                    "dedupe_key": f"{cid}:{n}:{i}",
                },
            }
            for _ in range(20):  # a failed invocation is retried, as EventBridge does
                _, failed = invoke_handler(
                    aws.handlers["ingest"], "ingest", "ingest", json.dumps(event)
                )
                if not failed:
                    break
                time.sleep(0.2)

    threads = [
        threading.Thread(target=sender, args=(cid, n)) for cid in cids for n in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class SlackFaults:
    """The Slack Web API stub failing every n-th ``chat.postMessage`` (HTTP 500, retried by
    the workflow: per-sink marks must keep the other sinks from a second copy); the posts
    that succeeded are matched to the payloads the SNS topic carried."""

    def __init__(self, stub: SlackApiStub) -> None:
        self._stub = stub
        self._real = stub._handle
        self._every = 0
        self._posts = 0
        self.failed = 0
        self.posted: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub._handle = self._handle  # type: ignore[method-assign]

    def arm(self, every: int) -> None:
        self._every, self._posts, self.failed, self.posted = every, 0, 0, []

    def _handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        post = path.endswith("chat.postMessage")
        with self._lock:
            self._posts += post
            fail = post and self._every > 0 and self._posts % self._every == 2 % self._every
            if fail:
                self.failed += 1
            elif post:
                self.posted.append(json.loads(raw))
        if fail:
            return 500, b'{"ok": false, "error": "internal_error"}', {}
        return self._real(path, headers, raw)

    def disarm(self, ledger: Ledger) -> int:
        """Record the posts in ``ledger`` as the ``slack`` sink's deliveries; the failures."""
        from workers.adapters.slack import render_message

        # Payloads that render alike (two failure notices in one thread) are told apart by
        # count: the n-th post of a body is the n-th payload with it; one more is a repeat.
        by_body: dict[str, list[OutboxPayload]] = {}
        for payload in ledger.payloads.values():
            if payload.conversation_id.startswith("slack:"):
                key = json.dumps(render_message(payload), sort_keys=True)
                by_body.setdefault(key, []).append(payload)
        seen: Counter[str] = Counter()
        for body in self.posted:
            key = json.dumps(body, sort_keys=True)
            alike = by_body.get(key)
            if not alike:
                raise AssertionError(f"Slack got a post no other sink got: {body}")
            ledger.deliver("slack", alike[min(seen[key], len(alike) - 1)])
            seen[key] += 1
        self._every = 0
        return self.failed


def socket_of(conversation_id: str) -> str:
    """The one WebSocket connection of a conversation (an id with no ``:``, which moto
    would keep percent-encoded)."""
    return f"socket-{zlib.crc32(conversation_id.encode()):08x}"


def socket_frames(connection_id: str) -> list[OutboxPayload]:
    """The payloads moto's management API took for ``connection_id`` (it keeps a socket's
    frames as one byte string; streamed pieces are left out)."""
    from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends
    from moto.core.models import DEFAULT_ACCOUNT_ID

    backend = apigatewaymanagementapi_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    text = backend.connections[connection_id].data.decode()
    decoder = json.JSONDecoder()
    frames: list[OutboxPayload] = []
    at = 0
    while at < len(text):
        frame, at = decoder.raw_decode(text, at)
        if frame.get("type") not in STREAM_FRAME_TYPES:
            frames.append(PAYLOAD.validate_python(frame))
    return frames


def scenario(
    aws: Aws,
    slack: SlackFaults,
    name: str,
    kinds: list[str],
    *,
    conversations: int,
    progress: Callable[[str], None],
    threads: int = 2,
    racers: int = 3,
) -> Result:
    """``conversations`` tickets (the first two raced by ``racers`` producers each, when
    races are among ``kinds``), and ``threads`` Slack threads and web chats each when
    Slack or WebSocket failures are."""
    result = Result(runtime=f"AWS, {name}")
    started = time.perf_counter()
    ledger = Ledger()
    faulty = Faulty(aws, ledger)
    handlers = dict(aws.handlers)
    bootstrap.reset_aws_deps()
    faulty.install()
    turn_store = cast(StoreProbe, bootstrap.aws_deps(with_agent=True).store).inner
    turn_store._blobs.inline_limit = 256  # checkpoints go to S3: its errors matter
    rules = [RULES[k] for k in kinds if k in RULES]
    injector = Injector(faulty, rules)
    prefix = name.replace(" ", "-").replace(",", "")
    cids = [f"ticket:{prefix}-{i}" for i in range(conversations)]
    slack_cids: list[str] = []
    if SLACK in kinds:  # Slack threads: their payloads go to SNS and to Slack
        channel = f"C{zlib.crc32(name.encode()):08X}"
        slack_cids = [f"slack:TREL:{channel}:1700000000.{i:06d}" for i in range(threads)]
        cids += slack_cids
        slack.arm(SLACK_FAIL_EVERY)
    socket_cids: list[str] = []
    if WEBSOCKET in kinds:  # web chats, one socket each: SNS and the socket get their payloads
        socket_cids = [f"ws:reliability:{prefix}-{i}" for i in range(threads)]
        cids += socket_cids
        for cid in socket_cids:
            bootstrap.aws_deps().store.add_connection(socket_of(cid), cid, now=time.time())
    for kind in kinds:
        if kind in MODEL_FAULTS:
            code, status = MODEL_FAULTS[kind]
            aws.stub.fail(status, code, times=conversations * 2)
            injector.injected[kind] += conversations * 2
    with injecting(injector), running(aws, faulty):
        if "DynamoDB conditional races" in kinds:
            raced = cids[:2]
            race(aws, ledger, raced, senders=racers, messages=2)
            injector.injected["DynamoDB conditional races"] += racers * 2 * len(raced)
            run_conversations(aws, ledger, cids[2:], timeout=180, progress=progress)
            settle(aws, ledger, raced)
        else:
            run_conversations(aws, ledger, cids, timeout=180, progress=progress)
    aws.handlers.update(handlers)
    for rule in rules:
        injector.injected.setdefault(rule.kind, 0)
    if SLACK in kinds:
        injector.injected[SLACK] = slack.disarm(ledger)
    for cid in socket_cids:
        for payload in socket_frames(socket_of(cid)):
            ledger.deliver("websocket", payload)
    store = bootstrap.aws_deps().store

    def sinks_of(cid: str) -> list[str]:
        return (
            [SINK, "slack"]
            if cid in slack_cids
            else [SINK, "websocket"]
            if cid in socket_cids
            else [SINK]
        )

    result.findings = check(ledger, store.get_conversation, sinks=sinks_of)
    result.faults_by_kind = dict(injector.injected)
    result.notes = {
        "per-sink marks (one sink took a payload, another failed)": ledger.writes["mark_sinks"],
        "failure notices": result.findings.failure_notices,
    }
    result.seconds = time.perf_counter() - started
    progress(f"{name}: {dict(injector.injected)} {result.findings.as_dict()}")
    return result


def settle(aws: Aws, ledger: Ledger, cids: list[str], timeout: float = 120) -> None:
    """Wait until the raced conversations answered every message they accepted."""
    from reliability.workflow import collect

    store = bootstrap.aws_deps().store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        collect(aws, ledger)
        done = True
        for cid in cids:
            history = store.history(cid)
            ids = [e.message.message_id for e in history.inbox] if history else []
            answered = {m for (c, m) in ledger.answers if c == cid}
            if history is None or history.state.lease_token is not None or set(ids) - answered:
                done = False
        if done:
            break
        time.sleep(0.2)
    for cid in cids:
        history = store.history(cid)
        for entry in history.inbox if history else []:
            ledger.accept(cid, entry.message.message_id)
    collect(aws, ledger)


ALL = ["model throttling", "model timeouts", *RULES, SLACK, "DynamoDB conditional races"]
"""Every dependency fault (``RULES`` holds DynamoDB, S3, SNS and WebSocket)."""


def run(*, every: bool, progress: Callable[[str], None] = lambda _: None) -> list[Result]:
    """Full size: each dependency alone, then all at once; reduced: all at once."""
    env = pytest.MonkeyPatch()
    results: list[Result] = []
    try:
        env.setenv("AGENTWORKER_LEASE_TTL_SECONDS", lease_ttl(every=every))
        env.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        env.setenv("POWERTOOLS_LOG_LEVEL", "ERROR")
        with slack_api_stub() as stub, aws_runtime(env.setenv) as aws:
            env.setenv("AGENTWORKER_SLACK_BOT_TOKEN", BOT_TOKEN)
            env.setenv("AGENTWORKER_SLACK_API_URL", stub.url)
            env.setenv("AGENTWORKER_WEBSOCKET_ENDPOINT", WEBSOCKET_ENDPOINT)
            slack = SlackFaults(stub)
            if every:
                for kind in ALL:
                    results.append(
                        scenario(aws, slack, kind, [kind], conversations=8, progress=progress)
                    )
            results.append(
                scenario(
                    aws, slack, "every dependency failing at once", ALL,
                    conversations=6 if every else 3, threads=2 if every else 1,
                    racers=3 if every else 2, progress=progress,
                )
            )  # fmt: skip
    finally:
        env.undo()
    return results
