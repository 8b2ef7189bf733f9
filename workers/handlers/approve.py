"""``approve``: HTTP API ``POST /v1/conversations/{conversation_id}/approvals`` for users
(the API's JWT authorizer: the approver is the token's principal) and
``POST /conversations/{conversation_id}/approvals`` for backends (IAM: they name the
approver, ``sender``), with body ``{"interrupt_id", "approved", "reason"?}``. The decision
becomes an inbox message (its dedupe key is ``decision:<interrupt_id>``, so a double click
is one decision); a new run resumes the graph with it, or a Standard run waiting on its
task token is woken. A request with neither a verified token nor an IAM caller is a 401: no
identity is nobody, never a backend."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events.identity import Principal
from events.inbound import ApprovalDecision, InboundMessage
from events.json_input import parse_json
from events.outbound import validation_problem
from workers import bootstrap
from workers.core.steps import accept_message
from workers.errors import BadInput, PermanentError, Unauthenticated
from workers.handlers.http import (
    error_response,
    http_principal,
    json_response,
    raw_body,
    refused,
)
from workers.handlers.observability import logger, metrics


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interrupt_id: str = Field(min_length=1, max_length=200)
    approved: bool
    reason: str = Field(default="", max_length=2000)
    sender: str = Field(default="approver", min_length=1, max_length=200)


def _parse(event: dict[str, Any], caller: Principal) -> InboundMessage:
    body = ApprovalBody.model_validate(parse_json(raw_body(event)))
    if "sender" in body.model_fields_set and not caller.service:
        raise BadInput(
            "validation_error",
            "sender: the approver is the caller; only a backend names one",
            field="sender",
        )
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
        # A user (the JWT authorizer's claims: the approver is them) or a backend (IAM:
        # it names the approver, ``sender``).
        caller = http_principal(event, bootstrap.jwt_claims())
        msg = _parse(event, caller)
    except Unauthenticated as exc:
        metrics.add_metric(name="unauthenticated", unit=MetricUnit.Count, value=1)
        return refused(exc)
    except BadInput as exc:
        metrics.add_metric(name="bad_requests", unit=MetricUnit.Count, value=1)
        return refused(exc)
    except ValidationError as exc:
        problem = validation_problem(exc)
        metrics.add_metric(name="bad_requests", unit=MetricUnit.Count, value=1)
        return error_response(422, "validation_error", problem.message, problem.field or "body")
    try:
        result = accept_message(bootstrap.aws_deps(), msg, caller)
    except PermanentError as exc:  # not_found, not_waiting, not_allowed, throttled, ...
        return refused(exc)
    metrics.add_metric(name="decisions", unit=MetricUnit.Count, value=1)
    return json_response(202, result.view(msg.conversation_id).model_dump(mode="json"))
