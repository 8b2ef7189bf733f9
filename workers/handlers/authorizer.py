"""``authorizer``: the Lambda REQUEST authorizer of the WebSocket API's ``$connect``.

The client's token comes in the ``Sec-WebSocket-Protocol`` header (a browser offers
``agentworker, bearer.<token>``: it cannot set other headers on a WebSocket; ``ingest``
answers ``$connect`` with ``agentworker``) or in ``Authorization: Bearer``. A verified
token allows the connection, and the principal (id, tenant, roles) becomes the
authorizer's context, which API Gateway hands ``ingest`` with every frame of that
connection. A refused one: API Gateway answers 401 (the reason is logged, never the token).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from events.identity import offered_subprotocols, to_authorizer_context
from workers import bootstrap
from workers.adapters.tokens import ws_token
from workers.errors import AuthorizerRefusal, Unauthenticated
from workers.handlers.observability import logger, metrics


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    try:
        offered = offered_subprotocols(headers.get("sec-websocket-protocol"))
        token = ws_token(headers.get("authorization"), offered)
        principal = bootstrap.authenticator().authenticate(token)
    except Unauthenticated as exc:
        metrics.add_metric(name="refused_connections", unit=MetricUnit.Count, value=1)
        logger.warning("connection refused", extra={"reason": exc.reason})
        raise AuthorizerRefusal() from None  # API Gateway: 401
    metrics.add_metric(name="authorized_connections", unit=MetricUnit.Count, value=1)
    return {
        "principalId": principal.id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}
            ],
        },
        "context": to_authorizer_context(principal),
    }
