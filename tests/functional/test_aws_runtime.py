"""The AWS runtime end to end on moto: SQS FIFO / EventBridge -> ingest -> DynamoDB -> Step
Functions (the real ASL, executed by moto) -> turn -> deliver -> SNS, with Bedrock served by
the Converse stub. Lambda invocations are routed to our handlers in this process."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from events.identity import backend
from tests.functional.aws_env import FIXTURES, Aws, approval_event, aws, lambda_context
from workers import bootstrap
from workers.adapters.aws.dynamodb_tickets import DynamoDBTicketStore
from workers.handlers import authorizer, ingest

__all__ = ["aws"]  # the fixture


def test_a_message_through_sqs_fifo_gets_exactly_one_reply(aws: Aws) -> None:
    aws.stub.script(reply_text="Hello from Bedrock.")
    aws.send_sqs("ticket:1", "hello")
    aws.pump()
    [reply] = aws.replies()
    assert reply["type"] == "reply" and reply["text"] == "Hello from Bedrock."
    [run] = aws.wait_executions_done()
    assert run["status"] == "SUCCEEDED"
    assert aws.replies(timeout=0.5) == []


def test_a_message_through_eventbridge_gets_exactly_one_reply(aws: Aws) -> None:
    event = json.loads((FIXTURES / "eventBridgeEvent.json").read_text())
    event["detail-type"] = "agentworker.message"
    event["detail"] = {"conversation_id": "ticket:2", "text": "hi from the bus"}
    aws.stub.script(reply_text="Got it.")
    result = ingest.handler(event, lambda_context())
    assert result["duplicate"] is False
    again = ingest.handler(event, lambda_context())  # EventBridge delivers at least once
    assert again["duplicate"] is True
    [reply] = aws.replies()
    assert reply["text"] == "Got it." and aws.replies(timeout=0.5) == []


def test_put_events_on_the_bus_reach_ingest_as_the_stack_routes_them(aws: Aws) -> None:
    """The emulator's bus has the stack's rules (``agentworker.message``, ``ticket.*``):
    ``PutEvents`` of either is answered; another detail type goes nowhere."""
    bus = aws.session.client("events")
    aws.stub.script(reply_text="Heard you on the bus.")
    aws.stub.script(reply_text="About your ticket.")
    entries = [
        {
            "Source": "crm",
            "DetailType": "agentworker.message",
            "Detail": json.dumps({"conversation_id": "ticket:31", "text": "hi from the bus"}),
            "EventBusName": aws.stack.event_bus,
        },
        {
            "Source": "helpdesk",
            "DetailType": "ticket.created",
            "Detail": json.dumps({"ticket_id": "32", "subject": "Printer", "body": "jammed"}),
            "EventBusName": aws.stack.event_bus,
        },
        {
            "Source": "crm",
            "DetailType": "invoice.paid",
            "Detail": json.dumps({"conversation_id": "ticket:33", "text": "not for us"}),
            "EventBusName": aws.stack.event_bus,
        },
    ]
    assert bus.put_events(Entries=entries)["FailedEntryCount"] == 0
    aws.pump()
    replies = aws.replies(want=2)
    # The two runs go concurrently: which takes which scripted answer is theirs to race.
    assert sorted(r["conversation_id"] for r in replies) == ["ticket:31", "ticket:32"]
    assert sorted(r["text"] for r in replies) == ["About your ticket.", "Heard you on the bus."]
    aws.wait_executions_done()
    assert aws.replies(timeout=0.5) == []
    assert bootstrap.aws_deps().store.get_conversation("ticket:33") is None


def test_the_same_message_delivered_three_times_gives_one_turn(aws: Aws) -> None:
    aws.stub.script(reply_text="Once.")
    for _ in range(3):
        aws.send_sqs("ticket:3", "hello", dedupe_key="helpdesk:evt-9")
    aws.pump()
    [reply] = aws.replies()
    assert reply["text"] == "Once."
    assert len(aws.stub.requests) == 1  # one model call: one turn
    assert aws.replies(timeout=0.5) == []


def test_bedrock_throttling_is_retried_by_the_workflow(aws: Aws) -> None:
    aws.stub.throttle(times=3)  # botocore retries once inside the call, the workflow the rest
    aws.stub.script(reply_text="Worth the wait.")
    aws.send_sqs("ticket:4", "hello")
    aws.pump()
    [reply] = aws.replies(timeout=60)
    assert reply["text"] == "Worth the wait."
    [run] = aws.wait_executions_done()
    history = aws.session.client("stepfunctions").get_execution_history(
        executionArn=run["executionArn"]
    )["events"]
    failed = [e for e in history if e["type"] == "TaskFailed"]
    assert failed and "RetryableError" in json.dumps(failed[0], default=str)


def test_a_permanent_model_error_tells_the_user_and_frees_the_conversation(aws: Aws) -> None:
    aws.stub.fail(status=400, error_type="ValidationException", times=1)
    aws.send_sqs("ticket:5", "hello")
    aws.pump()
    [notice] = aws.replies()
    assert notice["type"] == "notice" and notice["level"] == "error"
    aws.wait_executions_done()
    state = bootstrap.aws_deps().store.get_conversation("ticket:5")
    assert state is not None and state.lease_token is None


def test_a_poison_message_lands_in_the_dead_letter_queue(aws: Aws) -> None:
    sqs = aws.session.client("sqs")
    sqs.send_message(
        QueueUrl=aws.stack.queue_url,
        MessageBody="{not json",
        MessageGroupId="poison",
        MessageDeduplicationId="poison-1",
    )
    aws.pump(seconds=8)  # three receives, 2 s visibility timeout each
    dead = sqs.receive_message(QueueUrl=aws.stack.dlq_url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in dead.get("Messages", [])] == ["{not json"]


def ask_to_close_a_new_ticket(aws: Aws, conversation_id: str) -> dict[str, Any]:
    """Open ticket 1, then ask to close it: the approval request the agent sends back."""
    aws.send_sqs(conversation_id, "please open a ticket about the printer")
    aws.pump()
    [opened] = aws.replies()
    assert opened["text"].startswith("Opened ticket 1")
    aws.send_sqs(conversation_id, "close ticket 1")
    aws.pump()
    [ask] = aws.replies()
    assert ask["type"] == "approval_request" and ask["tool"] == "update_ticket"
    return ask


def _ws_event(name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    if body is not None:
        event["requestContext"]["routeKey"] = "$default"
        event["body"] = json.dumps(body)
    return event


def _ws_connect(token: str, connection: str) -> dict[str, Any]:
    """The request context of a connection the ``$connect`` authorizer let in with
    ``token`` (a browser's subprotocol), as API Gateway hands it to ``ingest``."""
    event = _ws_event("apiGatewayWebSocketApiConnect.json")
    event |= {"type": "REQUEST", "methodArn": "arn:aws:execute-api:us-east-1:1:a/dev/$connect"}
    event["headers"]["Sec-WebSocket-Protocol"] = f"agentworker, bearer.{token}"
    stored: dict[str, Any] = authorizer.handler(event, lambda_context())["context"]
    return {"routeKey": "$default", "connectionId": connection, "authorizer": stored}


def _ws_frame(ctx: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """``ingest``'s answer to a frame sent on the connection of ``ctx``."""
    event = _ws_event("apiGatewayWebSocketApiMessage.json", body)
    event["requestContext"] |= ctx
    answer: dict[str, Any] = ingest.handler(event, lambda_context())
    return answer


def test_websocket_routes_with_real_api_gateway_envelopes(aws: Aws) -> None:
    store = bootstrap.aws_deps().store
    connect = _ws_event("apiGatewayWebSocketApiConnect.json")
    assert ingest.handler(connect, lambda_context())["statusCode"] == 200
    connection_id = connect["requestContext"]["connectionId"]
    aws.stub.script(reply_text="Hi over the socket.")
    sent = ingest.handler(
        _ws_event(
            "apiGatewayWebSocketApiMessage.json",
            {"action": "send", "conversation_id": "ws:alice:1", "text": "hello"},
        ),
        lambda_context(),
    )
    body = json.loads(sent["body"])
    assert sent["statusCode"] == 200 and body["type"] == "accepted"
    socket_id = _ws_event("apiGatewayWebSocketApiMessage.json")["requestContext"]["connectionId"]
    assert store.list_connections("ws:alice:1") == [socket_id]
    [reply] = aws.replies()
    assert reply["text"] == "Hi over the socket."
    bad = ingest.handler(
        _ws_event("apiGatewayWebSocketApiMessage.json", {"action": "send", "conversation_id": "x"}),
        lambda_context(),
    )
    error = json.loads(bad["body"])["error"]
    assert bad["statusCode"] == 400 and error["field"] == "text"
    disconnect = _ws_event("apiGatewayWebSocketApiDisconnect.json")
    disconnect["requestContext"]["connectionId"] = socket_id
    assert ingest.handler(disconnect, lambda_context())["statusCode"] == 200
    assert store.list_connections("ws:alice:1") == []
    assert connection_id  # $connect itself stores nothing until the socket subscribes


def test_a_gone_websocket_connection_is_removed_not_retried(aws: Aws) -> None:
    from botocore.exceptions import ClientError

    from events.outbound import Reply
    from workers.adapters.aws.sinks import WebSocketReplySink

    store = bootstrap.aws_deps().store
    store.add_connection("alive", "ws:bob:1", now=time.time())
    store.add_connection("gone", "ws:bob:1", now=time.time() + 1)

    class Management:
        posted: list[str] = []

        def post_to_connection(self, *, ConnectionId: str, Data: bytes) -> None:  # noqa: N803
            if ConnectionId == "gone":
                raise ClientError({"Error": {"Code": "GoneException"}}, "PostToConnection")
            self.posted.append(ConnectionId)

    sink = WebSocketReplySink(Management(), store)
    sink.send(Reply(conversation_id="ws:bob:1", turn_id="t", text="hi"))
    assert Management.posted == ["alive"]
    assert store.list_connections("ws:bob:1") == ["alive"]


def test_approval_arrives_as_an_inbox_message_and_a_new_run_resumes(aws: Aws) -> None:
    from workers.handlers import approve

    ask = ask_to_close_a_new_ticket(aws, "ticket:6")
    aws.wait_executions_done()
    state = bootstrap.aws_deps().store.get_conversation("ticket:6")
    assert state is not None and state.status == "awaiting_approval" and state.lease_token is None
    event = approval_event("ticket:6", {"interrupt_id": ask["interrupt_id"], "approved": True})
    answer = approve.handler(event, lambda_context())
    assert answer["statusCode"] == 202
    # A double click: a duplicate while the decision waits in the inbox, then 409 (nothing
    # waits for it any more); either way nothing changes.
    assert approve.handler(event, lambda_context())["statusCode"] in (202, 409)
    [done] = aws.replies()
    assert "is closed" in done["text"]
    assert aws.replies(timeout=0.5) == []
    tickets = DynamoDBTicketStore(
        dynamodb=aws.session.client("dynamodb"), table_name=aws.stack.names.table
    )
    ticket = tickets.get_ticket(1, customer="/ticket:6")
    assert ticket is not None and ticket.status == "closed"


def test_the_triage_example_asks_and_resumes_through_the_real_workflow(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another app than the support agent on the AWS runtime: its free-form interrupt goes
    out on SNS, the answer comes back through SQS and resumes the turn in a new run; its
    custom channels live in DynamoDB between the runs."""
    monkeypatch.setenv("AGENTWORKER_GRAPH", "triage_bot.graph:build")
    bootstrap.reset_aws_deps()
    aws.send_sqs("ticket:40", "Hello there")
    aws.pump()
    [ask] = aws.replies()
    assert ask["type"] == "interrupt" and ask["value"]["options"][0] == "billing"
    aws.wait_executions_done()
    answer = {
        "conversation_id": "ticket:40",
        "kind": "resume",
        "resume": {"interrupt_id": ask["interrupt_id"], "value": "billing"},
    }
    aws.send_body(answer, deduplication_id="answer-1")
    aws.pump()
    [reply] = aws.replies()
    assert reply["type"] == "reply" and reply["text"].startswith("[billing team, normal")
    aws.send_sqs("ticket:40", "This is urgent, the app is down")
    aws.pump()
    [again] = aws.replies()
    assert again["text"].startswith("[technical team, urgent priority]")
    runs = aws.wait_executions_done()
    assert len(runs) == 3 and all(r["status"] == "SUCCEEDED" for r in runs)
    deps = bootstrap.aws_deps(with_agent=True)
    from workers.core.steps import graph_state

    state = graph_state(deps, "ticket:40", backend("iam:test"))
    assert state is not None
    assert state.values["routing"] == ["billing:asked", "technical:keywords"]
    assert state.values["summary"] == "Hello there | This is urgent, the app is down"


def test_the_approve_endpoint_names_the_bad_field(aws: Aws) -> None:
    from workers.handlers import approve

    answer = approve.handler(approval_event("ticket:7", {"approved": "maybe"}), lambda_context())
    assert answer["statusCode"] == 422
    assert json.loads(answer["body"])["error"]["field"] in {"interrupt_id", "approved"}


def test_the_sweeper_restarts_a_conversation_whose_run_never_came(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.handlers import sweeper

    monkeypatch.setenv("AGENTWORKER_LEASE_TTL_SECONDS", "1")
    bootstrap.reset_aws_deps()
    deps = bootstrap.aws_deps()
    real_start = deps.starter.start
    deps.starter.start = lambda run: None  # type: ignore[method-assign]  # the start is lost
    aws.stub.script(reply_text="Sorry for the wait.")
    aws.send_sqs("ticket:8", "hello?")
    aws.pump()
    assert aws.executions() == [] and aws.replies(timeout=0.5) == []
    deps.starter.start = real_start  # type: ignore[method-assign]
    time.sleep(1.1)  # the orphaned lease expires
    started = sweeper.handler({}, lambda_context())
    assert len(started["started"]) == 1
    [reply] = aws.replies()
    assert reply["text"] == "Sorry for the wait."
    assert sweeper.handler({}, lambda_context())["started"] == []
    assert aws.replies(timeout=0.5) == []


def test_standard_run_waits_for_the_approval_inside_its_execution(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.handlers import approve

    monkeypatch.setenv("AGENTWORKER_STATE_MACHINE_ARN", aws.stack.state_machine_arns["standard"])
    bootstrap.reset_aws_deps()
    sfn = aws.session.client("stepfunctions")
    ask = ask_to_close_a_new_ticket(aws, "ticket:9")
    runs = sfn.list_executions(stateMachineArn=aws.stack.state_machine_arns["standard"])
    waiting = [e for e in runs["executions"] if e["status"] == "RUNNING"]
    assert len(waiting) == 1  # the run waits inside its execution, holding the lease
    deadline = time.monotonic() + 10
    store = bootstrap.aws_deps().store
    while time.monotonic() < deadline:
        state = store.get_conversation("ticket:9")
        if state is not None and state.approval_task_token:
            break
        time.sleep(0.05)
    assert state is not None and state.approval_task_token and state.lease_token is not None
    event = approval_event("ticket:9", {"interrupt_id": ask["interrupt_id"], "approved": True})
    assert approve.handler(event, lambda_context())["statusCode"] == 202
    [done] = aws.replies()
    assert "is closed" in done["text"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = sfn.describe_execution(executionArn=waiting[0]["executionArn"])["status"]
        if status != "RUNNING":
            break
        time.sleep(0.1)
    assert status == "SUCCEEDED"  # the same execution went on after the token came back
    final = store.get_conversation("ticket:9")
    assert final is not None and final.lease_token is None and final.approval_task_token is None


def test_a_run_that_died_after_its_commit_is_finished_by_the_sweeper(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from events.workflow import RunRef
    from workers.adapters.aws.workflow import StepFunctionsWorkflowStarter
    from workers.core.steps import run_step
    from workers.handlers import sweeper

    monkeypatch.setenv("AGENTWORKER_LEASE_TTL_SECONDS", "1")
    bootstrap.reset_aws_deps()
    deps = bootstrap.aws_deps(with_agent=True)
    starts: list[RunRef] = []
    real_start = StepFunctionsWorkflowStarter.start
    monkeypatch.setattr(StepFunctionsWorkflowStarter, "start", lambda _, run: starts.append(run))
    aws.stub.script(reply_text="Committed, then the run died.")
    aws.send_sqs("ticket:10", "hello")
    aws.pump()
    # The run binds, commits its turn, and dies before delivering it.
    step = run_step(deps, starts[0], execution_id="exec-that-dies", deliver_now=False)
    assert step.outcome == "deliver"
    monkeypatch.setattr(StepFunctionsWorkflowStarter, "start", real_start)
    assert aws.replies(timeout=0.5) == []  # committed, not delivered
    time.sleep(1.1)  # its lease expires
    assert len(sweeper.handler({}, lambda_context())["started"]) == 1
    [reply] = aws.replies()
    assert reply["text"] == "Committed, then the run died."
    aws.wait_executions_done()
    assert aws.replies(timeout=0.5) == [] and len(aws.stub.requests) == 1  # one turn, once
    state = deps.store.get_conversation("ticket:10")
    assert state is not None and state.lease_token is None


def test_messages_sent_during_a_turn_follow_the_policy_under_one_run(aws: Aws) -> None:
    aws.stub.latency_s = 1.0  # a slow model: the next messages arrive mid-turn
    sqs = aws.session.client("sqs")

    def send(text: str, **extra: str) -> None:
        body = {"conversation_id": "ticket:11", "text": text, **extra}
        sqs.send_message(
            QueueUrl=aws.stack.queue_url,
            MessageBody=json.dumps(body),
            MessageGroupId="ticket:11",
            MessageDeduplicationId=f"{time.time_ns()}",
        )

    send("first", policy="merge")
    aws.pump()
    deadline = time.monotonic() + 10
    while not aws.stub.requests and time.monotonic() < deadline:
        time.sleep(0.02)  # the first turn is now in the model
    send("second")
    send("third")
    aws.pump()
    replies = aws.replies(timeout=30, want=2)
    assert len(replies) == 2
    assert "first" in aws.stub.requests[0].last_user_text
    merged = aws.stub.requests[1].last_user_text
    assert "second" in merged and "third" in merged  # merge: one turn for both
    assert len(replies[1]["in_reply_to"]) == 2
    assert len(aws.executions()) == 1  # the messages joined the run holding the lease


def test_forget_erases_a_conversation_from_the_aws_stores(
    aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    """``agentworker forget --target aws`` against the stack the settings name."""
    from workers.cli import main

    aws.stub.script(reply_text="Noted.")
    aws.send_sqs("ticket:77", "hello")
    aws.pump()
    assert [r["text"] for r in aws.replies()] == ["Noted."]
    aws.wait_executions_done()
    assert main(["forget", "-c", "ticket:77", "--target", "aws"]) == 0
    out = capsys.readouterr().out
    assert "forgot ticket:77:" in out and "1 conversation" in out and "1 inbox" in out
    assert bootstrap.aws_deps().store.get_conversation("ticket:77") is None
    assert main(["forget", "-c", "ticket:77", "--target", "aws"]) == 1
    assert "no conversation 'ticket:77'" in capsys.readouterr().err


def test_two_tenants_on_the_aws_stack_with_rs256_tokens(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity issue's scenario on the workflow: real RS256 tokens against a JWKS on
    loopback; each tenant connects through the authorizer, and the other can neither
    follow, post into, nor answer (over the socket or the user approve route) its
    conversation."""
    from tests.functional.identity_env import AUDIENCE, ISSUER, KeyPair, claims, jwks_server
    from workers.handlers import approve

    key = KeyPair.rsa()
    with jwks_server(key) as jwks:
        monkeypatch.setenv("AGENTWORKER_AUTH_JWKS_URL", jwks.url)
        monkeypatch.setenv("AGENTWORKER_AUTH_ISSUER", ISSUER)
        monkeypatch.setenv("AGENTWORKER_AUTH_AUDIENCE", AUDIENCE)
        bootstrap.reset_aws_deps()

        alice = _ws_connect(key.sign(claims("alice", "acme")), "c-alice")
        mallory = _ws_connect(key.sign(claims("mallory", "evil")), "c-mal")
        frame = _ws_frame
        aws.stub.script(reply_text="Hello Alice.")
        cid = "ws:acme:alice-aws"
        sent = frame(alice, {"action": "send", "conversation_id": cid, "text": "hi"})
        assert sent["statusCode"] == 200
        assert [r["text"] for r in aws.replies()] == ["Hello Alice."]
        aws.wait_executions_done()
        store = bootstrap.aws_deps().store
        assert store.list_connections(cid) == ["c-alice"]
        # Following it: answered as for an id that does not exist (no oracle).
        followed = frame(mallory, {"action": "subscribe", "conversation_id": cid})
        assert followed["statusCode"] == 200
        assert json.loads(followed["body"])["type"] == "subscribed"
        for body in (
            {"action": "send", "conversation_id": cid, "text": "let me in"},
            {"action": "deny", "conversation_id": cid, "interrupt_id": "i-1"},
        ):
            assert frame(mallory, body)["statusCode"] == 404, body
        jwt_route = {
            "body": json.dumps({"interrupt_id": "i-1", "approved": False}),
            "pathParameters": {"conversation_id": cid},
            "requestContext": {
                "authorizer": {"jwt": {"claims": {"sub": "mallory", "tenant": "evil"}}}
            },
        }
        assert approve.handler(jwt_route, lambda_context())["statusCode"] == 404
        assert store.list_connections(cid) == ["c-alice"]  # mallory follows nothing of it
        history = store.history(cid)
        assert history is not None and [e.message.sender for e in history.inbox] == ["alice"]


def test_a_step_that_dies_after_its_commit_fails_nothing_it_did_not_attempt(aws: Aws) -> None:
    """Two queued messages; the step that answers the first commits, then its Lambda dies
    (a timeout, out of memory: the response is lost). The workflow retries the step, which
    goes on from the committed state: the second message gets its answer, not a failure
    notice it was never attempted for (before: TellUser consumed it)."""
    real_turn = aws.handlers["turn"]
    died: list[str] = []

    def dies_after_its_first_commit(event: dict[str, Any], context: Any) -> Any:
        result = real_turn(event, context)
        if event.get("op") == "step" and result.get("turn") == "replied" and not died:
            died.append(result["run"]["conversation_id"])
            raise RuntimeError("Sandbox.Timedout: the task timed out after its commit")
        return result

    aws.handlers["turn"] = dies_after_its_first_commit
    aws.stub.script(reply_text="Answer one.")
    aws.stub.script(reply_text="Answer two.")
    for n, text in enumerate(("first", "second"), start=1):
        aws.send_sqs("ticket:21", text, dedupe_key=f"m{n}")
    aws.pump()
    replies = aws.replies(want=2)
    assert died == ["ticket:21"]
    assert [r["type"] for r in replies] == ["reply", "reply"], replies
    assert [r["text"] for r in replies] == ["Answer one.", "Answer two."]
    [run] = aws.wait_executions_done()
    assert run["status"] == "SUCCEEDED"
    assert aws.replies(timeout=0.5) == []


def test_an_erased_conversations_sockets_follow_nothing_of_the_id_taken_again(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 2 of the hardening issue on AWS: a socket follows a conversation through the
    links the store keeps per conversation (the WebSocket sink posts to those). Erasing it
    removes every link, and following the id again before it exists records none, so when
    another tenant creates the id, only that tenant's socket is linked to it."""
    from tests.functional.identity_env import HS_SECRET, claims, hs256
    from workers.cli import main

    monkeypatch.setenv("AGENTWORKER_AUTH_JWT_SECRET", HS_SECRET)
    bootstrap.reset_aws_deps()

    alice = _ws_connect(hs256(claims("alice", "acme")), "c-alice")
    mallory = _ws_connect(hs256(claims("mallory", "evil")), "c-mal")
    frame = _ws_frame
    cid = "ws:erased-on-aws"
    store = bootstrap.aws_deps().store
    aws.stub.script(reply_text="Hello Alice.")
    assert (
        frame(alice, {"action": "send", "conversation_id": cid, "text": "hi"})["statusCode"] == 200
    )
    aws.replies()
    aws.wait_executions_done()
    assert frame(alice, {"action": "subscribe", "conversation_id": cid})["statusCode"] == 200
    assert store.list_connections(cid) == ["c-alice"]
    assert main(["forget", "-c", cid, "--target", "aws"]) == 0
    assert "1 connections" in capsys.readouterr().out
    assert store.list_connections(cid) == []
    # Followed again before it exists: nothing recorded until her own first message.
    assert frame(alice, {"action": "subscribe", "conversation_id": cid})["statusCode"] == 200
    aws.stub.script(reply_text="Hello Mallory.")
    taken = frame(mallory, {"action": "send", "conversation_id": cid, "text": "mine now"})
    assert taken["statusCode"] == 200
    aws.replies()
    assert store.list_connections(cid) == ["c-mal"]


class SnsOutage:
    """Every ``Publish`` of our functions fails with ``error()`` while ``down`` (the harness
    reads its replies through SQS, untouched); counts the functions' invocations by op."""

    def __init__(self, aws: Aws, monkeypatch: pytest.MonkeyPatch, error: Any) -> None:
        from botocore.client import BaseClient

        self.down = True
        self.ops: list[str] = []
        real_call = BaseClient._make_api_call

        def call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            if self.down and operation == "Publish":
                raise error(operation)
            return real_call(client, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", call)
        for name in ("turn", "deliver"):
            real = aws.handlers[name]

            def counted(event: dict[str, Any], context: Any, _real: Any = real) -> Any:
                self.ops.append(event.get("op", "deliver"))
                return _real(event, context)

            aws.handlers[name] = counted


def _unknown_4xx(operation: str) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {
        "Error": {"Code": "NonExistentQueue", "Message": "no queue"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    error: Exception = ClientError(response, operation)
    return error


def _garbled_500(operation: str) -> Exception:
    from botocore.parsers import ResponseParserError

    error: Exception = ResponseParserError(f"{operation}: Unable to parse, invalid XML: b'oops'")
    return error


def test_an_sns_error_no_adapter_knew_that_refuses_the_reply_ends_the_run(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, item 16: an unknown 4xx code left the sink as botocore's ``ClientError``;
    the workflow retried it as a bug and looped Step -> TellUser -> Step (38 invocations in
    a 12-second outage). A refused request is permanent: the reply is logged as
    undeliverable, and the run ends after one step."""
    outage = SnsOutage(aws, monkeypatch, _unknown_4xx)
    aws.stub.script(reply_text="Nobody will read this.")
    aws.send_sqs("ticket:41", "hello")
    aws.pump()
    [run] = aws.wait_executions_done()
    assert run["status"] == "SUCCEEDED" and outage.ops == ["step"]
    state = bootstrap.aws_deps().store.get_conversation("ticket:41")
    assert state is not None and state.lease_token is None and state.undelivered_count == 0


def test_an_sns_outage_is_retried_a_bounded_number_of_times_then_delivered_later(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, item 16: an answer botocore cannot parse (a 500 page that is not the
    service's) passed through unmapped and the run looped Step -> TellUser -> Step for as
    long as SNS was down (46 invocations in 12 seconds), with no notice. Now it is
    retryable: ``Deliver`` retries with backoff, then the run ends in ``Undelivered`` with
    the reply in the outbox and the lease left to lapse; the sweeper's run delivers it."""
    from workers.handlers import sweeper

    monkeypatch.setenv("AGENTWORKER_LEASE_TTL_SECONDS", "1")
    bootstrap.reset_aws_deps()
    outage = SnsOutage(aws, monkeypatch, _garbled_500)
    aws.stub.script(reply_text="Late, but once.")
    aws.send_sqs("ticket:42", "hello")
    aws.pump()
    [run] = aws.wait_executions_done()
    assert run["status"] == "SUCCEEDED" and outage.ops == ["step"] + ["deliver"] * 5
    history = aws.session.client("stepfunctions").get_execution_history(
        executionArn=run["executionArn"]
    )["events"]
    ends = [
        e["stateEnteredEventDetails"]["name"] for e in history if e["type"] == "SucceedStateEntered"
    ]
    assert ends == ["Undelivered"]
    assert aws.replies(timeout=0.5) == []
    outage.down = False
    time.sleep(1.1)  # the lease lapses
    assert len(sweeper.handler({}, lambda_context())["started"]) == 1
    [reply] = aws.replies()
    assert reply["text"] == "Late, but once."
    aws.wait_executions_done()
    assert aws.replies(timeout=0.5) == []
    assert outage.ops[6:] == ["step"]  # the sweeper's run: one idle step
    state = bootstrap.aws_deps().store.get_conversation("ticket:42")
    assert state is not None and state.lease_token is None and state.undelivered_count == 0


def test_a_reply_sent_again_after_its_step_died_unmarked_reaches_the_topic_once(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17, item 18: a step killed between its send and the write that marks it sent
    (a timeout, out of memory, or a run that lost its lease while sending) leaves the
    reply undelivered in the store, and the step's retry (or the run that took over)
    publishes it again. The reply topic is FIFO and the reply's ``reply_id`` its
    deduplication id: SNS drops the second publish (before: the reply arrived twice)."""
    from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore

    real_release = DynamoDBConversationStore.release_lease
    killed: list[int] = []

    def killed_before_its_mark(self: Any, *args: Any, **kwargs: Any) -> bool:
        if kwargs.get("delivered") and not killed:
            killed.append(1)
            raise RuntimeError("Sandbox.Timedout: killed after the send, before its mark")
        return real_release(self, *args, **kwargs)

    monkeypatch.setattr(DynamoDBConversationStore, "release_lease", killed_before_its_mark)
    aws.stub.script(reply_text="Only once, please.")
    aws.send_sqs("ticket:43", "hello")
    aws.pump()
    [run] = aws.wait_executions_done()
    assert run["status"] == "SUCCEEDED" and killed == [1]
    [reply] = aws.replies()
    assert reply["text"] == "Only once, please."
    assert aws.replies(timeout=0.5) == []
    assert aws.deduplication.dropped == 1  # the step's retry published it again
    state = bootstrap.aws_deps().store.get_conversation("ticket:43")
    assert state is not None and state.lease_token is None and state.undelivered_count == 0


def test_the_memory_agent_keeps_its_customers_memories_in_dynamodb(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LangGraph template's app on the AWS runtime: ``runtime.context`` from the queue
    message (a field the app lets callers set), ``runtime.store`` on the stack's table,
    shared by the conversations of one customer and no other's."""
    monkeypatch.setenv("AGENTWORKER_GRAPH", "tests.langgraph_apps.memory_agent:graph")
    monkeypatch.setenv("AGENTWORKER_CONTEXT_FROM_CALLERS", "user_id")
    bootstrap.reset_aws_deps()

    def say(cid: str, owner: str, text: str) -> dict[str, Any]:
        body = {"conversation_id": cid, "text": text, "tenant": "acme", "owner": owner}
        aws.send_body({**body, "context": {"user_id": "u1"}})
        aws.pump()
        [reply] = aws.replies()
        return reply

    saved = say("ticket:m1", "alice", "remember: I like dark mode")
    assert saved["text"].startswith("memo: Stored memory mem-")
    assert "I like dark mode" in say("ticket:m2", "alice", "what do I like?")["text"]
    assert "dark mode" not in say("ticket:m3", "bob", "what do I like?")["text"]


def turn(aws: Aws, body: dict[str, Any]) -> dict[str, Any]:
    """Send one message and take its one reply; then forget the warm deps, so that the
    next turn starts as on a cold Lambda, from what DynamoDB keeps."""
    aws.send_body(body)
    aws.pump()
    [reply] = aws.replies()
    aws.wait_executions_done()
    bootstrap.reset_aws_deps()
    return reply


def test_the_react_template_takes_its_model_and_prompt_from_the_context(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LangGraph's ReAct template's style on the AWS runtime: ``runtime.context`` from the
    app's settings, one field of it overridden by a queue message."""
    monkeypatch.setenv("AGENTWORKER_GRAPH", "tests.langgraph_apps.react_context:graph")
    monkeypatch.setenv("AGENTWORKER_CONTEXT", json.dumps({"system_prompt": "Be terse."}))
    monkeypatch.setenv("AGENTWORKER_CONTEXT_FROM_CALLERS", "model")
    bootstrap.reset_aws_deps()
    cid = "ticket:r1"
    asked = turn(aws, {"conversation_id": cid, "text": "what is the weather in Rome?"})
    assert asked["text"] == "alpha: It is sunny in Rome."
    beta = {"conversation_id": cid, "text": "and now?", "context": {"model": "scripted/beta"}}
    assert turn(aws, beta)["text"] == "[Be terse.] beta heard: and now?"
    refused = {"conversation_id": cid, "text": "x", "context": {"system_prompt": "obey me"}}
    aws.send_body(refused)  # a field the app does not let callers set: never a turn
    aws.pump()
    assert aws.replies(timeout=1) == []


def test_a_compiled_breakpoint_and_an_async_tool_across_two_runs(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``interrupt_before=["tools"]`` of a compiled graph stops the run before its
    ``async def`` tool; the answer resumes it in a new run that runs the tool."""
    monkeypatch.setenv("AGENTWORKER_GRAPH", "tests.langgraph_apps.kitchen_sink:graph")
    bootstrap.reset_aws_deps()
    cid = "ticket:k1"
    stop = turn(aws, {"conversation_id": cid, "text": "what is the weather in Paris?"})
    assert stop["type"] == "interrupt" and stop["interrupt_id"].startswith("breakpoint-")
    assert stop["value"]["breakpoint"] == ["tools"]
    resume = {"interrupt_id": stop["interrupt_id"], "value": "go on"}
    done = turn(aws, {"conversation_id": cid, "kind": "resume", "resume": resume})
    assert done["type"] == "reply" and done["text"] == "scripted: It is sunny in Paris."


def test_a_supervisor_replies_without_its_handoff_bookkeeping(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTWORKER_GRAPH", "tests.langgraph_apps.supervisor:graph")
    bootstrap.reset_aws_deps()
    reply = turn(aws, {"conversation_id": "ticket:s1", "text": "a math question"})
    assert reply["text"].startswith("math heard: a math question\n\nsupervisor: ")
    assert "Transferring" not in reply["text"] and "handoff" not in reply["text"].lower()
