"""``slack``: the Slack app's Request URL, an HTTP API (payload 2.0) route such as
``POST /slack/events``, for both the Events API and interactivity: what a request means is
:mod:`workers.adapters.slack_events`'s (the local server and Socket Mode share it); this
checks the signature first (401 otherwise), accepts the message it carries, and counts and
logs the outcome. Slack wants an answer within 3 s: only the message is accepted here; the
turn runs in the workflow.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from workers import bootstrap
from workers.adapters.slack_events import (
    SOFT_REFUSALS,
    SlackAnswer,
    SlackMessage,
    accepted,
    after_accept,
    read_request,
    refused,
    verified,
)
from workers.core.steps import accept_message
from workers.errors import BadInput
from workers.handlers.http import error_response, json_response, raw_body
from workers.handlers.observability import logger, metrics


def _accept(message: SlackMessage) -> SlackAnswer:
    logger.append_keys(conversation_id=message.msg.conversation_id)
    metrics.add_metric(name=message.metric, unit=MetricUnit.Count, value=1)
    app = bootstrap.slack_app()
    message = app.grant(message)
    deps = bootstrap.aws_deps()
    try:
        result = accept_message(deps, message.msg, message.principal, owner=message.owner)
    except SOFT_REFUSALS as exc:
        return refused(exc, message)
    after_accept(message, result, app.web)
    return accepted(result, message)


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    try:
        raw = raw_body(event)
    except BadInput as exc:
        return error_response(400, exc.code, str(exc), exc.field)
    answer = verified(headers, raw, bootstrap.slack_signing_secret(), time.time())
    if answer is None:
        retry = headers.get("x-slack-retry-num")
        if retry is not None:
            # Harmless: the dedupe key (channel+ts) makes a redelivery a duplicate.
            metrics.add_metric(name="slack_retries", unit=MetricUnit.Count, value=1)
            logger.append_keys(
                slack_retry_num=retry, slack_retry_reason=headers.get("x-slack-retry-reason")
            )
        parsed = read_request(headers, raw)
        if isinstance(parsed, SlackMessage):
            answer = _accept(parsed)
        else:
            answer = parsed
            bootstrap.slack_app().opened(answer)
    metrics.add_metric(name=answer.metric, unit=MetricUnit.Count, value=1)
    if answer.reason is not None:
        logger.info("slack request not acted on", extra={"reason": answer.reason})
    if answer.body is None:  # an interaction's acknowledgement
        return {"statusCode": answer.status}
    return json_response(answer.status, answer.body)
