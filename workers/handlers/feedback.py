"""``feedback``: a user's rating of a reply, attached to the trace of the turn that wrote it.

HTTP API ``POST /v1/conversations/{conversation_id}/feedback`` (the API's JWT authorizer: the
rater is the token's principal) with body ``{"reply_id", "score": 1 | -1, "comment"?}``, and
the WebSocket route ``feedback`` (frames ``{"action": "feedback", "conversation_id", ...}``
from a connection the ``$connect`` authorizer admitted), and a Slack member's thumb on a reply
handed over by the ``slack`` function (``{"slack_rating": ...}``, an asynchronous invocation
only its role may make; a removed reaction withdraws the rating). All parse, call
:func:`~workers.core.feedback.give_feedback` and flush the traces before returning (a frozen
process loses nothing). Its own function because it logs to MLflow (``mlflow-tracing``, the
agent layer), which the light functions never import.
"""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from events.identity import Principal
from events.inbound import CONVERSATION_ID_PATTERN, FeedbackRequest, SlackRating, WsFeedback
from events.json_input import parse_json
from events.outbound import ErrorBody, ErrorView, FeedbackView, validation_problem
from workers import bootstrap
from workers.core.feedback import give_feedback
from workers.errors import BadInput, PermanentError, Unauthenticated
from workers.handlers.http import (
    error_response,
    http_principal,
    json_response,
    raw_body,
    refused,
    refused_frame,
)
from workers.handlers.ingest import connection_principal, frame_text
from workers.handlers.observability import logger, metrics

_CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)


def _record(
    principal: Principal, conversation_id: str, body: FeedbackRequest, *, withdrawn: bool = False
) -> FeedbackView:
    deps = bootstrap.aws_deps()
    try:
        give_feedback(
            deps,
            principal,
            conversation_id,
            reply_id=body.reply_id,
            score=body.score,
            comment=body.comment,
            withdrawn=withdrawn,
        )
    finally:
        bootstrap.flush_traces(deps)
    metrics.add_metric(name="feedback", unit=MetricUnit.Count, value=1)
    return FeedbackView(conversation_id=conversation_id, reply_id=body.reply_id, score=body.score)


def _refusal(exc: PermanentError) -> PermanentError:
    """Count a refused rating; it is answered as every transport answers ``exc``."""
    metrics.add_metric(name="feedback_refused", unit=MetricUnit.Count, value=1)
    return exc


def _invalid(exc: ValidationError) -> tuple[int, ErrorBody]:
    metrics.add_metric(name="feedback_refused", unit=MetricUnit.Count, value=1)
    problem = validation_problem(exc, tagged=False)
    return 422, ErrorBody(code="validation_error", message=problem.message, field=problem.field)


def _http(event: dict[str, Any]) -> dict[str, Any]:
    conversation_id = str((event.get("pathParameters") or {}).get("conversation_id", ""))
    try:
        principal = http_principal(event, bootstrap.jwt_claims())
        if not _CONVERSATION_ID.match(conversation_id):
            raise BadInput(
                "validation_error",
                "conversation_id: letters, digits and ':._@-', 1-256 characters",
                field="conversation_id",
            )
        data = parse_json(raw_body(event))
        if not isinstance(data, dict):
            raise BadInput("validation_error", "body: must be a JSON object", field="body")
        body = FeedbackRequest.model_validate(data)
        view = _record(principal, conversation_id, body)
    except PermanentError as exc:
        return refused(_refusal(exc))
    except ValidationError as exc:
        status, error = _invalid(exc)
        return error_response(status, error.code, error.message, error.field)
    return json_response(202, view.model_dump(mode="json"))


def _websocket(event: dict[str, Any]) -> dict[str, Any]:
    ctx = event.get("requestContext") or {}
    try:
        principal = connection_principal(ctx)
        if principal is None:
            raise Unauthenticated(
                "missing", "this connection has no principal: connect through the authorizer"
            )
        frame = WsFeedback.model_validate(parse_json(frame_text(event), what="frame"))
        body = FeedbackRequest(reply_id=frame.reply_id, score=frame.score, comment=frame.comment)
        view = _record(principal, frame.conversation_id, body)
    except PermanentError as exc:
        return refused_frame(_refusal(exc))
    except ValidationError as exc:
        status, error = _invalid(exc)
        return {"statusCode": status, "body": ErrorView(error=error).model_dump_json()}
    return {"statusCode": 200, "body": view.model_dump_json()}


def _slack(event: dict[str, Any]) -> dict[str, Any]:
    """A Slack member's thumb, handed over by the ``slack`` function (an asynchronous
    invocation: a refusal is logged and ends here; a retryable error raises, and Lambda
    invokes again)."""
    rating = SlackRating.model_validate(event["slack_rating"])
    body = FeedbackRequest(reply_id=rating.reply_id, score=rating.score)
    try:
        _record(rating.principal, rating.conversation_id, body, withdrawn=rating.withdrawn)
    except PermanentError as exc:
        _refusal(exc)
        logger.info("slack rating not recorded", extra={"reason": str(exc)})
        return {"recorded": False, "reason": str(exc)}
    return {"recorded": True}


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "slack_rating" in event:  # from the slack function (API Gateway's events never are)
        return _slack(event)
    if "connectionId" in (event.get("requestContext") or {}):
        return _websocket(event)
    return _http(event)
