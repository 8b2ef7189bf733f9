"""``slack``: the Slack app's Request URL, an HTTP API (payload 2.0) route such as
``POST /slack/events``, for both the Events API and interactivity: what a request means is
:mod:`workers.adapters.slack_events`'s (the local server and Socket Mode share it); this
checks the signature first (401 otherwise), accepts the message it carries, and counts and
logs the outcome. Slack wants an answer within 3 s: only the message is accepted here; the
turn runs in the workflow. A thumb on a reply is handed to the ``feedback`` function
(``bootstrap.slack_rate``), which records it on the reply's trace.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from events.identity import Principal
from events.inbound import InboundMessage
from workers import bootstrap
from workers.adapters import slack_events as slack
from workers.core.model import AcceptResult
from workers.core.steps import accept_message
from workers.errors import BadInput
from workers.handlers.http import error_response, json_response, raw_body
from workers.handlers.observability import logger, metrics


async def _accept(
    msg: InboundMessage, principal: Principal, *, owner: str | None = None
) -> AcceptResult:
    deps = bootstrap.aws_deps()
    return await asyncio.to_thread(partial(accept_message, owner=owner), deps, msg, principal)


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    try:
        raw = raw_body(event)
    except BadInput as exc:
        return error_response(400, exc.code, str(exc), exc.field)
    answer = slack.verified(headers, raw, bootstrap.slack_signing_secret(), time.time())
    if answer is None:
        retry = headers.get("x-slack-retry-num")
        if retry is not None:
            # Harmless: the dedupe key (channel+ts) makes a redelivery a duplicate.
            metrics.add_metric(name="slack_retries", unit=MetricUnit.Count, value=1)
            logger.append_keys(
                slack_retry_num=retry, slack_retry_reason=headers.get("x-slack-retry-reason")
            )
        parsed = slack.read_request(headers, raw)
        if isinstance(parsed, slack.SlackMessage):
            logger.append_keys(conversation_id=parsed.msg.conversation_id)
            metrics.add_metric(name=parsed.metric, unit=MetricUnit.Count, value=1)
        work = slack.answer(parsed, _accept, bootstrap.slack_app(), bootstrap.slack_rate())
        answer = asyncio.run(work)
    metrics.add_metric(name=answer.metric, unit=MetricUnit.Count, value=1)
    if answer.reason is not None:
        logger.info("slack request not acted on", extra={"reason": answer.reason})
    if answer.body is None:  # an interaction's acknowledgement
        return {"statusCode": answer.status}
    return json_response(answer.status, answer.body)
