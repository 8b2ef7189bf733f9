"""Slack: request verification, the app's credentials, and the Web API reply sink, through
Slack's own SDK (``slack_sdk``: pure Python, no dependencies; about 60 ms to import).

- :func:`verify_slack_request` checks ``X-Slack-Signature`` with ``slack_sdk``'s
  ``SignatureVerifier`` (``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{raw body}``, compared in
  constant time) and refuses timestamps more than 5 minutes away (a replayed request); what
  is wrong is named.
- :func:`read_slack_secret` reads the Secrets Manager secret (JSON with ``signing_secret`` and
  ``bot_token``); the composition root calls it once per process.
- :class:`SlackReplySink` posts outbox payloads to ``chat.postMessage`` in the conversation's
  thread: plain text for a reply or a notice, Block Kit approve/deny buttons for an approval
  request (their encoding is in :mod:`events.inbound`, next to the parser of the clicks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import Clock, SignatureVerifier

from events.inbound import (
    SLACK_APPROVE_ACTION,
    SLACK_DENY_ACTION,
    is_slack_conversation,
    slack_button_value,
    slack_thread_of,
)
from events.outbound import (
    ApprovalRequest,
    Notice,
    OutboxPayload,
    ReplyChunk,
    StatusChunk,
    StreamChunk,
)
from workers.adapters.aws.errors import map_aws_error
from workers.adapters.slack_stream import (
    DIRECT_MESSAGE,
    SlackStreams,
    escape,
    recipient_of,
    reply_metadata,
    reply_of,
)
from workers.core.ports import REDELIVERY
from workers.errors import (
    ConfigError,
    InvalidSlackSignature,
    PermanentError,
    RetryableError,
    SlackRateLimited,
)

log = logging.getLogger(__name__)

SLACK_API_URL = "https://slack.com/api"
MAX_REQUEST_AGE_SECONDS = 300
"""Slack's advice: refuse a request whose timestamp is over 5 minutes from now (replay)."""
METHOD_SCOPES: dict[str, str] = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "chat.startStream": "chat:write",
    "chat.appendStream": "chat:write",
    "chat.stopStream": "chat:write",
    "assistant.threads.setStatus": "chat:write",  # (assistant:write until Slack drops it)
    "assistant.threads.setSuggestedPrompts": "assistant:write",
    "assistant.threads.setTitle": "assistant:write",
    "usergroups.users.list": "usergroups:read",
    # a reacted-to message's metadata (the history scopes of its kind of conversation)
    "conversations.replies": "channels:history",
}
"""The Web API methods the app calls and the bot scope each needs (``slack/manifest.yml``)."""
SECTION_TEXT_MAX = 3000
"""Slack's limit on a section block's text."""
SHOWN_WINDOW_SECONDS = 900.0
"""How far back before a payload was made a redelivery looks for it in the thread (its
stream started when the turn did: at most a turn's run time earlier)."""
SHOWN_PAGES = 5
"""Pages of 200 messages a redelivery reads at most (then it sends)."""

RETRYABLE_SLACK_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
"""Web API ``error`` codes worth retrying; every other code (``invalid_auth``,
``channel_not_found``, ``not_in_channel``, ``is_archived``, ...) is permanent."""


class _At(Clock):
    """``SignatureVerifier``'s clock, stopped at the time the request is judged."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def verify_slack_request(
    *,
    signing_secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> None:
    """Raise :class:`InvalidSlackSignature` unless ``signature`` is Slack's signature of
    ``body`` at ``timestamp``, and ``timestamp`` is within 5 minutes of ``now``."""
    if not signing_secret.strip():
        raise ConfigError("the Slack signing secret is empty: no request can be verified")
    if not timestamp or not signature:
        raise InvalidSlackSignature("missing X-Slack-Request-Timestamp or X-Slack-Signature")
    # Unix seconds, as Slack sends them: 4,000 digits would convert to an int, then overflow
    # the float it is compared with (an unhandled error before the signature is checked).
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise InvalidSlackSignature("X-Slack-Request-Timestamp is not an integer (Unix seconds)")
    sent_at = int(timestamp)
    if abs(now - sent_at) > MAX_REQUEST_AGE_SECONDS:
        raise InvalidSlackSignature("X-Slack-Request-Timestamp is over 5 minutes from now")
    verifier = SignatureVerifier(signing_secret, clock=_At(now))
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise InvalidSlackSignature("X-Slack-Signature does not match the request")


class SlackCredentials(BaseModel):
    """The Slack app's secrets; ``SecretStr`` keeps them out of reprs and logs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    signing_secret: SecretStr | None = None
    bot_token: SecretStr | None = None


def read_slack_secret(client: Any, secret_arn: str) -> SlackCredentials:
    """The credentials in the Secrets Manager secret ``secret_arn`` (a JSON object with
    ``signing_secret`` and ``bot_token``). Errors name the setting, never the secret's text."""
    try:
        text = client.get_secret_value(SecretId=secret_arn)["SecretString"]
    except Exception as exc:
        raise map_aws_error(exc, "Secrets Manager GetSecretValue") from exc
    try:
        return SlackCredentials.model_validate_json(text)
    except ValidationError:
        # The error would quote the input, i.e. the secret: name the setting only.
        raise ConfigError(
            "AGENTWORKER_SLACK_SECRET_ARN: the secret must be a JSON object with "
            "string fields signing_secret and bot_token"
        ) from None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _button(label: str, action_id: str, style: str, value: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "style": style,
        "value": value,
    }


def render_message(payload: OutboxPayload) -> dict[str, Any]:
    """The ``chat.postMessage`` body of ``payload``, in its Slack conversation's thread."""
    _, channel, thread_ts = slack_thread_of(payload.conversation_id)
    message: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts}
    if getattr(payload, "turn_id", None):  # a turn's reply or question: it can be rated
        message["metadata"] = reply_metadata(payload.conversation_id, payload.reply_id)
    if isinstance(payload, ApprovalRequest):
        value = slack_button_value(payload.conversation_id, payload.interrupt_id)
        args = json.dumps(payload.args, ensure_ascii=False, sort_keys=True)
        message["text"] = escape(payload.text)  # the notification's fallback
        message["blocks"] = [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip(escape(payload.text), SECTION_TEXT_MAX)},
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _clip(escape(f"{payload.tool} {args}"), SECTION_TEXT_MAX),
                    }
                ],
            },
            {
                "type": "actions",
                "elements": [
                    _button("Approve", SLACK_APPROVE_ACTION, "primary", value),
                    _button("Deny", SLACK_DENY_ACTION, "danger", value),
                ],
            },
        ]
    elif isinstance(payload, Notice) and payload.level == "error":
        message["text"] = ":warning: " + escape(payload.text)
    else:
        message["text"] = escape(payload.text)
    return message


def decided_message(clicked: Mapping[str, Any], approved: bool) -> dict[str, Any] | None:
    """The ``chat.update`` body that shows the approval message a click answered as decided,
    and by whom, with no buttons left to click; ``None`` when the click does not say which
    message it was on."""
    message = clicked.get("message")
    channel = (clicked.get("channel") or {}).get("id")
    user = (clicked.get("user") or {}).get("id")
    if not isinstance(message, dict) or not isinstance(message.get("ts"), str) or not channel:
        return None
    verdict = f"{':white_check_mark: Approved' if approved else ':no_entry: Denied'} by <@{user}>"
    kept = [
        b for b in message.get("blocks") or [] if isinstance(b, dict) and b.get("type") != "actions"
    ]
    decided = {"type": "context", "elements": [{"type": "mrkdwn", "text": verdict}]}
    text = f"{message.get('text') or ''} ({verdict})".strip()
    return {"channel": channel, "ts": message["ts"], "text": text, "blocks": [*kept, decided]}


class SlackWeb:
    """The app's Web API client: ``bot_token`` is asked at the first call (so functions that
    never call never fetch the secret); ``None`` when the app has no bot token."""

    def __init__(
        self,
        bot_token: Callable[[], SecretStr | None],
        *,
        api_url: str = SLACK_API_URL,
        timeout: int = 10,
    ) -> None:
        self._bot_token = bot_token
        self._api_url = api_url.rstrip("/")
        self._timeout = timeout
        self._client: WebClient | None = None

    def client(self) -> WebClient | None:
        if self._client is None:
            token = self._bot_token()
            if token is None:
                return None
            self._client = WebClient(
                token=token.get_secret_value(), base_url=self._api_url + "/", timeout=self._timeout
            )
        return self._client

    def call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """One Web API call (JSON body): the answer, a typed error, or ``None`` without a
        bot token (nothing is called)."""
        client = self.client()
        if client is None:
            log.warning("no Slack bot token configured; not calling %s", method)
            return None
        return web_call(client, method, body)

    def try_call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """:meth:`call` for what may fail without harm (a status line, a button's update):
        a failure is logged, never raised."""
        try:
            return self.call(method, body)
        except (RetryableError, PermanentError) as exc:
            log.info("slack %s not done: %s", method, exc)
            return None


class SlackReplySink:
    """Posts the outbox payloads of Slack conversations (``slack:T:C:thread_ts``) to their
    thread with ``chat.postMessage``; payloads of other conversations are not Slack's and
    are skipped, as the WebSocket sink skips conversations without connections.

    While a turn runs, its reply streams into the thread (:mod:`workers.adapters.slack_stream`:
    a streamed message, addressed in a channel to the member who asked), and its status
    (``thinking``, ``running lookup_ticket``) is shown under the thread with
    ``assistant.threads.setStatus``; Slack clears it when the reply is posted. A failed
    status call costs the turn nothing.

    A delivery tried again (the core's ``deliver``: an earlier attempt failed, maybe after
    Slack showed the message, maybe in another process) first looks in the thread for the
    payload (:meth:`shown`, by the reply metadata every reply and question carries) and
    sends nothing when it is there: Slack shows each reply once across processes.

    HTTP 429/5xx, network failures and ``ratelimited`` are ``RetryableError``; any other
    Web API error (``invalid_auth``, ``channel_not_found``, ...) is ``PermanentError``.
    """

    def __init__(self, web: SlackWeb) -> None:
        self.web = web
        self.streams = SlackStreams(web.call)

    def send(self, payload: OutboxPayload) -> None:
        if not is_slack_conversation(payload.conversation_id):
            return
        if self.streams.finish(payload):
            return
        if REDELIVERY.get() and self.shown(payload):
            log.info("slack: %s already in its thread: not sent again", payload.reply_id)
            return
        self.web.call("chat.postMessage", render_message(payload))

    def shown(self, payload: OutboxPayload) -> bool:
        """Whether the thread already shows ``payload`` (a turn's reply or question: a
        message whose metadata names its ``reply_id``), as an earlier attempt may have left
        it, in this process or another (its stream stopped, or its post answered, and then
        the delivery failed before it was marked). Looked for among the thread's messages
        since :data:`SHOWN_WINDOW_SECONDS` before the payload was made."""
        if not getattr(payload, "turn_id", None):
            return False  # a notice carries no metadata: nothing to recognise it by
        _, channel, thread_ts = slack_thread_of(payload.conversation_id)
        oldest = payload.created_at.timestamp() - SHOWN_WINDOW_SECONDS
        query: dict[str, Any] = {
            "channel": channel,
            "ts": thread_ts,
            "oldest": f"{max(oldest, 0):.6f}",
            "inclusive": True,
            "include_all_metadata": True,
            "limit": 200,
        }
        for _ in range(SHOWN_PAGES):
            try:
                answer = self.web.call("conversations.replies", query)
            except PermanentError as exc:  # (the thread is gone, a scope is missing): send
                log.info("slack: the thread of %s not read: %s", payload.reply_id, exc)
                return False
            messages = answer.get("messages") if answer else None
            for message in messages if isinstance(messages, list) else []:
                shows = reply_of(message)
                if shows is not None and shows[1] == payload.reply_id:
                    return True
            cursor = ((answer or {}).get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return False
            query["cursor"] = cursor
        return False

    def send_chunk(self, chunk: StreamChunk) -> None:
        if not is_slack_conversation(chunk.conversation_id):
            return
        if isinstance(chunk, ReplyChunk):
            self.streams.piece(chunk)
        elif isinstance(chunk, StatusChunk):
            team, channel, thread_ts = slack_thread_of(chunk.conversation_id)
            recipient = recipient_of(team, chunk.requested_by)
            if recipient is not None and not channel.startswith(DIRECT_MESSAGE):
                self.streams.address(chunk.turn_id, recipient)
            status = f"is {chunk.text}..."
            where = {"channel_id": channel, "thread_ts": thread_ts}
            self.web.try_call("assistant.threads.setStatus", {**where, "status": status})


def web_call(client: WebClient, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """``method`` with a JSON ``body`` through ``client``: the answer, or a typed error.
    HTTP 429 and ``ratelimited`` are :class:`SlackRateLimited` (with Slack's
    ``Retry-After``); 5xx, network failures and the server-side error codes are
    ``RetryableError``; any other refusal (``invalid_auth``, ``channel_not_found``, ...)
    ``PermanentError``."""
    try:
        answer = client.api_call(method, json=body)
    except SlackApiError as exc:
        raise slack_error(method, exc) from None
    except (SlackClientError, OSError) as exc:  # network failures, timeouts, resets
        raise RetryableError(f"Slack {method} failed: {exc}") from None
    data = answer.data
    if not isinstance(data, dict):
        raise RetryableError(f"Slack {method} answered with something other than JSON")
    return data


def slack_error(method: str, exc: SlackApiError) -> RetryableError | PermanentError:
    """The typed error of a Web API refusal."""
    response = exc.response
    status = int(getattr(response, "status_code", 200) or 200)
    data = response.data if isinstance(getattr(response, "data", None), dict) else {}
    error = str(data.get("error") or f"HTTP {status}")
    if status == 429 or error == "ratelimited":
        headers = {str(k).lower(): v for k, v in (getattr(response, "headers", {}) or {}).items()}
        after = _seconds(headers.get("retry-after"))
        return SlackRateLimited(
            f"Slack {method} rate limited ({error}), retry after {after:g} s", retry_after=after
        )
    if status >= 500 or error in RETRYABLE_SLACK_ERRORS:
        return RetryableError(f"Slack {method} failed ({error})")
    return PermanentError(f"Slack {method} refused ({error})")


def _seconds(value: Any) -> float:
    """A ``Retry-After`` header's seconds (1 when absent or not a number)."""
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return max(0.0, min(float(str(value)), 3600.0))
    except ValueError:
        return 1.0
