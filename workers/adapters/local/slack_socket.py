"""The Slack app over Socket Mode, for local development without a public URL: ``slack_sdk``'s
Socket Mode client (its built-in one: no dependencies) opens a WebSocket to Slack with the
app-level token (``xapp-``), acknowledges each envelope at once (Slack wants the ack within
3 s), then reads its payload as the Request URL reads a request
(:mod:`workers.adapters.slack_events`) and hands the message to the embedded runtime.
Replies go back through the Web API with the bot token, as from the HTTP route."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import TimeoutError as FutureTimeout

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from workers.adapters import slack_events as slack
from workers.adapters.http_errors import error_view
from workers.adapters.local.runtime import EmbeddedRuntime
from workers.errors import AgentWorkerError

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT_SECONDS = 30.0
"""The longest an envelope's message may take to be accepted (the ack went before)."""


class SlackSocketMode:
    """Slack's events and clicks over Socket Mode into ``runtime``, while connected."""

    def __init__(
        self,
        runtime: EmbeddedRuntime,
        loop: asyncio.AbstractEventLoop,
        *,
        app_token: SecretStr,
        api_url: str,
        app: slack.SlackApp,
    ) -> None:
        """``app``: the Slack app its envelopes are answered as (its Web API posts with the
        bot token; ``api_url`` only opens the connection, with the app-level token)."""
        self.runtime = runtime
        self.loop = loop
        self.app = app
        base_url = api_url.rstrip("/") + "/"  # apps.connections.open takes the app token
        self.client = SocketModeClient(
            app_token=app_token.get_secret_value(), web_client=WebClient(base_url=base_url)
        )
        self.client.socket_mode_request_listeners.append(self._on_request)
        self.answered: list[slack.SlackAnswer] = []
        """What each envelope came to, in order (the last 1,000)."""

    def connect(self) -> None:
        """Open the connection (``apps.connections.open``, then the WebSocket); blocking."""
        self.client.connect()

    def close(self) -> None:
        self.client.close()

    def _on_request(self, client: BaseSocketModeClient, request: SocketModeRequest) -> None:
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        answer = self.handle(request.type, request.payload)
        if answer.reason is not None:
            log.info("slack %s not acted on: %s", request.type, answer.reason)
        self.answered = [*self.answered[-999:], answer]

    def handle(self, kind: str, payload: object) -> slack.SlackAnswer:
        """What an envelope's payload comes to (its message accepted, or why not)."""
        try:
            if kind == "events_api":
                parsed = slack.read_event(payload)
            elif kind == "interactive":
                parsed = slack.read_interaction(payload)
            else:
                parsed = slack.ignored(f"envelope type {kind!r}")
        except ValueError as exc:  # JSON shapes, pydantic: as the Request URL's 4xx
            return slack.bad_request(exc)
        work = slack.answer(parsed, self.runtime.accept, self.app, self.runtime.feedback)
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout=ACCEPT_TIMEOUT_SECONDS)
        except FutureTimeout:
            future.cancel()
            return slack.error(503, "timeout", "the message was not accepted in time")
        except AgentWorkerError as exc:  # acknowledged already: said in the log, not lost silently
            status, view = error_view(exc)
            log.warning("slack %s refused: %s", kind, exc)
            return slack.error(status, view.error.code, view.error.message)
