"""``approve``: HTTP API ``POST /conversations/{conversation_id}/approvals`` with body
``{"interrupt_id", "approved", "reason"?}``. The decision becomes an inbox message (its
dedupe key is ``decision:<interrupt_id>``, so a double click is one decision); a new run
resumes the graph with it, or a Standard run waiting on its task token is woken."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events.inbound import ApprovalDecision, InboundMessage
from events.json_input import parse_json
from events.outbound import validation_problem
from workers import bootstrap
from workers.core.steps import accept_message
from workers.errors import BadInput, NotAllowed, NotFound, NotWaiting
from workers.handlers.http import error_response, iam_principal, json_response, raw_body
from workers.handlers.observability import logger, metrics


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interrupt_id: str = Field(min_length=1, max_length=200)
    approved: bool
    reason: str = Field(default="", max_length=2000)
    sender: str = Field(default="approver", min_length=1, max_length=200)


def _parse(event: dict[str, Any]) -> InboundMessage:
    body = ApprovalBody.model_validate(parse_json(raw_body(event)))
    conversation_id = (event.get("pathParameters") or {}).get("conversation_id", "")
    return InboundMessage(
        conversation_id=conversation_id,
        kind="approval",
        approval=ApprovalDecision(
            interrupt_id=body.interrupt_id, approved=body.approved, reason=body.reason
        ),
        channel="api",
        sender=body.sender,
    )


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        msg = _parse(event)
    except BadInput as exc:
        metrics.add_metric(name="bad_requests", unit=MetricUnit.Count, value=1)
        return error_response(400, exc.code, str(exc), exc.field)
    except ValidationError as exc:
        problem = validation_problem(exc)
        metrics.add_metric(name="bad_requests", unit=MetricUnit.Count, value=1)
        return error_response(422, "validation_error", problem.message, problem.field or "body")
    try:
        # IAM admits only the stack's backends: they name the approver (``sender``).
        result = accept_message(bootstrap.aws_deps(), msg, iam_principal(event))
    except NotFound as exc:
        return error_response(404, "not_found", str(exc), exc.field)
    except NotWaiting as exc:
        return error_response(409, "not_waiting", str(exc), exc.field)
    except NotAllowed as exc:
        return error_response(403, "not_allowed", str(exc), exc.field)
    metrics.add_metric(name="decisions", unit=MetricUnit.Count, value=1)
    return json_response(202, result.view(msg.conversation_id).model_dump(mode="json"))
