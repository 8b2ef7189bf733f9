"""``slack``: the Slack app's Request URL, an HTTP API (payload 2.0) route such as
``POST /slack/events``, for both the Events API and interactivity.

Every request's signature is checked first (401 otherwise). Then:

- ``url_verification``: 200 with the challenge;
- ``event_callback`` with a ``message`` or ``app_mention`` from a person: an inbox message of
  the thread's conversation (``slack:<team>:<channel>:<thread ts>``), deduplicated by
  ``channel+ts`` so Slack's retries (``X-Slack-Retry-Num``, a new event id) and the
  ``message``/``app_mention`` pair of one mention are one message; bot messages, edits and
  other subtypes are acknowledged and ignored;
- interactivity (form field ``payload``) ``block_actions``: a click on the approve/deny
  buttons the Slack sink renders becomes an approval message (the button encoding is in
  :mod:`events.inbound`); other actions are acknowledged and ignored. Interactions are
  acknowledged with an empty 200.

Slack wants an answer within 3 s: this only accepts the message; the turn runs in the
workflow.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from events.identity import Principal
from events.inbound import (
    InboundMessage,
    SlackBlockActions,
    SlackEventEnvelope,
    SlackUrlVerification,
)
from events.json_input import parse_json
from events.outbound import validation_problem
from workers import bootstrap
from workers.adapters.slack import verify_slack_request
from workers.core.steps import accept_message
from workers.errors import (
    BadInput,
    InvalidSlackSignature,
    NotAllowed,
    NotFound,
    NotWaiting,
    Throttled,
)
from workers.handlers.http import error_response, json_response, raw_body
from workers.handlers.observability import logger, metrics

MESSAGE_EVENTS = frozenset({"message", "app_mention"})
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _ignored(reason: str) -> dict[str, Any]:
    """Acknowledge (Slack must not retry) and do nothing."""
    metrics.add_metric(name="slack_ignored", unit=MetricUnit.Count, value=1)
    logger.info("slack request ignored", extra={"reason": reason})
    return json_response(200, {"type": "ignored", "reason": reason})


Accepted = tuple[InboundMessage, Principal]
"""A message to accept and who sent it, as the signed request proves."""


def _accept(msg: InboundMessage, principal: Principal) -> dict[str, Any]:
    logger.append_keys(conversation_id=msg.conversation_id)
    # A thread belongs to its channel: everyone who can write there shares it.
    (owner,) = principal.groups
    try:
        result = accept_message(bootstrap.aws_deps(), msg, principal, owner=owner)
    except (NotFound, NotWaiting) as exc:
        # A click on buttons whose question was answered or superseded: nothing to do.
        return _ignored(f"stale answer: {exc}")
    except Throttled as exc:
        # Over the member's quota: acknowledged (a Slack retry would not help), not taken.
        metrics.add_metric(name="throttled", unit=MetricUnit.Count, value=1)
        return _ignored(f"throttled: {exc}")
    except NotAllowed as exc:
        # The tool's approval policy does not let this member decide (the requester, or
        # no approver role): acknowledged, nothing recorded.
        metrics.add_metric(name="approvals_refused", unit=MetricUnit.Count, value=1)
        return _ignored(f"not allowed: {exc}")
    metrics.add_metric(
        name="duplicates" if result.duplicate else "accepted", unit=MetricUnit.Count, value=1
    )
    return json_response(200, result.view(msg.conversation_id).model_dump(mode="json"))


def _event_callback(raw: bytes) -> Accepted | dict[str, Any]:
    """The message to accept, or the answer (challenge, ignored)."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ValueError("body: expected a JSON object")
    kind = data.get("type")
    if kind == "url_verification":
        challenge = SlackUrlVerification.model_validate(data).challenge
        metrics.add_metric(name="slack_url_verifications", unit=MetricUnit.Count, value=1)
        return json_response(200, {"challenge": challenge})
    if kind != "event_callback":
        return _ignored(f"request type {kind!r}")
    event = data.get("event")
    event_type = event.get("type") if isinstance(event, dict) else None
    if not isinstance(event_type, str) or event_type not in MESSAGE_EVENTS:
        return _ignored(f"event type {event_type!r}")
    envelope = SlackEventEnvelope.model_validate(data)
    if envelope.is_from_bot():
        return _ignored("bot message")
    if envelope.event.subtype is not None:
        return _ignored(f"message subtype {envelope.event.subtype!r}")
    if not envelope.event.user:
        # Nobody to act as: not a shared "unknown" member of the channel.
        return _ignored("message without a user")
    if not envelope.event.text.strip():
        return _ignored("message without text")
    metrics.add_metric(name="slack_messages", unit=MetricUnit.Count, value=1)
    return envelope.to_inbound(), envelope.principal()


def _interaction(raw: bytes) -> Accepted | dict[str, Any]:
    """The decision to accept, or the answer (ignored)."""
    fields = parse_qs(raw.decode(), strict_parsing=False)
    if "payload" not in fields:
        raise ValueError("payload: missing from the form")
    data = parse_json(fields["payload"][0], what="payload")
    if not isinstance(data, dict) or data.get("type") != "block_actions":
        kind = data.get("type") if isinstance(data, dict) else None
        return _ignored(f"interaction type {kind!r}")
    actions = SlackBlockActions.model_validate(data)
    decision = actions.decision()
    if decision is None:
        return _ignored("not an approval button")
    metrics.add_metric(name="decisions", unit=MetricUnit.Count, value=1)
    return decision, actions.principal()


def _bad_request(exc: ValueError) -> dict[str, Any]:
    metrics.add_metric(name="bad_requests", unit=MetricUnit.Count, value=1)
    if isinstance(exc, ValidationError):
        problem = validation_problem(exc)
        return error_response(422, "validation_error", problem.message, problem.field or "body")
    if isinstance(exc, BadInput):
        return error_response(400, exc.code, str(exc), exc.field)
    return error_response(400, "bad_request", str(exc))


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    try:
        raw = raw_body(event)
    except BadInput as exc:
        return error_response(400, exc.code, str(exc), exc.field)
    try:
        verify_slack_request(
            signing_secret=bootstrap.slack_signing_secret(),
            timestamp=headers.get("x-slack-request-timestamp"),
            signature=headers.get("x-slack-signature"),
            body=raw,
            now=time.time(),
        )
    except InvalidSlackSignature as exc:
        metrics.add_metric(name="slack_bad_signature", unit=MetricUnit.Count, value=1)
        logger.warning("slack request refused", extra={"reason": str(exc)})
        return error_response(401, "invalid_signature", str(exc))
    retry = headers.get("x-slack-retry-num")
    if retry is not None:
        # Harmless: the dedupe key (channel+ts) makes a redelivery a duplicate.
        metrics.add_metric(name="slack_retries", unit=MetricUnit.Count, value=1)
        logger.append_keys(
            slack_retry_num=retry, slack_retry_reason=headers.get("x-slack-retry-reason")
        )
    interaction = headers.get("content-type", "").startswith(FORM_CONTENT_TYPE)
    try:
        parsed = _interaction(raw) if interaction else _event_callback(raw)
    except ValueError as exc:  # JSON, UTF-8, pydantic and our own parse errors
        return _bad_request(exc)
    answer = _accept(*parsed) if isinstance(parsed, tuple) else parsed
    if interaction:
        # An interaction's acknowledgement is an empty 200: a body could be taken for a
        # message to show.
        return {"statusCode": 200}
    return answer
