"""``ingest``: SQS FIFO batches (partial batch failures), EventBridge events of detail-type
``agentworker.message``, API Gateway WebSocket ``$connect``/``$disconnect``/``$default``,
and EventBridge Scheduler's firings of the conversations' schedules. Each becomes an
``InboundMessage`` accepted by the core."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import TypeAdapter, ValidationError

from events.identity import (
    ANONYMOUS,
    WS_SUBPROTOCOL,
    Principal,
    backend,
    from_authorizer_context,
    offered_subprotocols,
)
from events.inbound import (
    EventBridgeEvent,
    InboundMessage,
    SqsRecord,
    WsCancel,
    WsFeedback,
    WsFrame,
    WsPing,
    WsSubscribe,
)
from events.json_input import parse_json
from events.outbound import ErrorBody, ErrorView, cancelled_frame, validation_problem
from events.schedules import ScheduleFiring
from workers import bootstrap
from workers.core.model import AcceptResult
from workers.core.schedules import fire_schedule
from workers.core.steps import accept_message, cancel_turn, check_follow
from workers.errors import (
    BadInput,
    NotAllowed,
    NotFound,
    NotWaiting,
    PermanentError,
)
from workers.handlers.http import refused_frame
from workers.handlers.observability import logger, metrics

_FRAME: TypeAdapter[Any] = TypeAdapter(WsFrame)
QUEUE_PRODUCER = backend("iam:queue")


def _accept_queued(msg: InboundMessage) -> AcceptResult | None:
    """Accept a message from a queue or the bus; an answer that nothing waits for any more
    (answered, superseded) is logged and dropped: redelivering it would never help. A
    message for a conversation of another owner than it names fails (a poison message:
    the queue's dead-letter queue keeps it, with the reason)."""
    try:
        # The queue and the bus admit only the stack's backends (IAM): they speak for users.
        result = accept_message(bootstrap.aws_deps(), msg, QUEUE_PRODUCER)
    except (NotFound, NotWaiting, NotAllowed) as exc:
        if msg.answers is None:
            raise
        metrics.add_metric(name="stale_answers", unit=MetricUnit.Count, value=1)
        logger.warning("answer dropped", extra={"reason": str(exc)})
        return None
    metrics.add_metric(
        name="duplicates" if result.duplicate else "accepted", unit=MetricUnit.Count, value=1
    )
    return result


def _accept_sqs_record(record: SQSRecord) -> None:
    _accept_queued(SqsRecord.model_validate(record.raw_event).to_inbound())


def _sqs(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # FIFO: a failed record holds back only the later records of its own message group
    # (its conversation); they come back after the visibility timeout, in order.
    metrics.add_metric(name="records", unit=MetricUnit.Count, value=len(event["Records"]))
    processor = SqsFifoPartialProcessor(skip_group_on_error=True)
    response = process_partial_response(
        event=event, record_handler=_accept_sqs_record, processor=processor, context=context
    )
    return dict(response)


def _eventbridge(event: dict[str, Any]) -> dict[str, Any]:
    parsed = EventBridgeEvent.model_validate(event)
    try:
        message = parsed.to_inbound()
    except ValidationError:
        raise
    except ValueError as exc:
        raise PermanentError(str(exc), field="detail-type") from None
    result = _accept_queued(message)
    if result is None:
        return {"message_id": message.message_id, "dropped": True}
    return {"message_id": result.message_id, "duplicate": result.duplicate}


def _websocket(event: dict[str, Any]) -> dict[str, Any]:
    ctx = event["requestContext"]
    route, connection_id = ctx["routeKey"], ctx["connectionId"]
    metrics.add_metric(name=f"ws_{route.lstrip('$')}", unit=MetricUnit.Count, value=1)
    deps = bootstrap.aws_deps()
    if route == "$disconnect":
        deps.store.remove_connection(connection_id)
        return {"statusCode": 200}
    if route == "$connect":
        # The authorizer let it in. A browser offered its token as a subprotocol: answer
        # with ours (never echo the token), or it drops the connection.
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        if WS_SUBPROTOCOL in offered_subprotocols(headers.get("sec-websocket-protocol")):
            return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": WS_SUBPROTOCOL}}
        return {"statusCode": 200}
    try:
        frame = _FRAME.validate_python(parse_json(frame_text(event), what="frame"))
    except (BadInput, ValidationError) as exc:
        return _ws_error(exc)
    if isinstance(frame, WsPing):
        return {"statusCode": 200, "body": json.dumps({"type": "pong"})}
    if isinstance(frame, WsFeedback):
        # The WebSocket API routes these to the feedback function (route "feedback").
        body = ErrorView(
            error=ErrorBody(
                code="wrong_route",
                message="action: 'feedback' frames are taken by the API's 'feedback' route",
                field="action",
            )
        )
        return {"statusCode": 400, "body": body.model_dump_json()}
    principal = connection_principal(ctx)
    if principal is None:
        body = ErrorView(
            error=ErrorBody(
                code="unauthenticated",
                message="this connection has no principal: connect through the authorizer",
                reason="missing",
            )
        )
        return {"statusCode": 401, "body": body.model_dump_json()}
    cid = frame.conversation_id
    try:
        if isinstance(frame, WsCancel):
            run = cancel_turn(deps, cid, principal)
            if run is not None:
                deps.starter.start(run)
            return {"statusCode": 200, "body": json.dumps(cancelled_frame(cid))}
        if isinstance(frame, WsSubscribe):
            # Followed only once it is known to be the caller's: one that does not exist
            # yet, or someone else's (answered alike: no existence oracle), is followed from
            # the caller's own first message, which creates it for them.
            if check_follow(deps, cid, principal):
                deps.store.add_connection(connection_id, cid, now=deps.clock.now())
            subscribed = {"type": "subscribed", "conversation_id": cid}
            return {"statusCode": 200, "body": json.dumps(subscribed)}
        msg = frame.to_inbound()
        result = accept_message(deps, msg, principal)
    except PermanentError as exc:  # not_found, not_waiting, not_allowed, throttled, ...
        return refused_frame(exc)
    deps.store.add_connection(connection_id, cid, now=deps.clock.now())  # accepted: theirs
    return {"statusCode": 200, "body": result.view(msg.conversation_id).model_dump_json()}


def frame_text(event: dict[str, Any]) -> str:
    """A WebSocket frame's text; ``BadInput`` (``binary_frame``) for a binary one. API Gateway
    closes a socket that sends a binary frame (1003) before any function sees it; only an
    integration set to convert payloads hands one on, base64-encoded."""
    if event.get("isBase64Encoded"):
        raise BadInput("binary_frame", "frames are JSON text: send a text frame")
    return str(event.get("body") or "")


def connection_principal(ctx: dict[str, Any]) -> Principal | None:
    """Who holds the connection: the principal the ``$connect`` authorizer stored with it.
    A stack without an identity provider (the sandbox) has no authorizer: anonymous."""
    stored = from_authorizer_context(ctx.get("authorizer"))
    if stored is not None:
        return stored
    return None if bootstrap.auth_configured() else ANONYMOUS


def _ws_error(exc: Exception) -> dict[str, Any]:
    field = None
    code = "bad_frame"
    if isinstance(exc, ValidationError):
        problem = validation_problem(exc, tagged=True)
        field, message = problem.field, problem.message
    else:
        code, message = getattr(exc, "code", code), str(exc)
    body = ErrorView(error=ErrorBody(code=code, message=message, field=field))
    return {"statusCode": 400, "body": body.model_dump_json()}


def _schedule(event: dict[str, Any]) -> dict[str, Any]:
    """A schedule's firing: its message accepted once per occurrence (a repeat is a
    duplicate); a store fault raises, and EventBridge Scheduler invokes again."""
    from workers.adapters.aws.eventbridge_scheduler import firing_time

    firing = ScheduleFiring.model_validate(event)
    occurrence = firing_time(firing.scheduled_time)
    target = firing.agentworker_schedule
    outcome = fire_schedule(
        bootstrap.aws_deps(), target.conversation_id, target.schedule_id, occurrence
    )
    metrics.add_metric(name="schedule_firings", unit=MetricUnit.Count, value=1)
    logger.info("schedule fired", extra={"schedule_id": target.schedule_id, "outcome": outcome})
    return {"schedule_id": target.schedule_id, "outcome": outcome}


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "agentworker_schedule" in event:
        return _schedule(event)
    if "Records" in event:
        return _sqs(event, context)
    if "detail-type" in event:
        return _eventbridge(event)
    if "requestContext" in event and "connectionId" in event["requestContext"]:
        return _websocket(event)
    raise PermanentError(
        "unrecognised event: expected SQS, EventBridge, a WebSocket route or a schedule's firing"
    )
