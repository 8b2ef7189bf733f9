"""The local server: HTTP API, WebSocket ``/v1/ws``, the web chat page, ``/healthz``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from events.identity import WS_SUBPROTOCOL, Principal
from events.inbound import (
    WS_ACTIONS,
    ConversationValuesRequest,
    FeedbackRequest,
    MessageRequest,
    WsCancel,
    WsDecide,
    WsFeedback,
    WsFrame,
    WsPing,
    WsResume,
    WsSend,
    WsSubscribe,
    new_id,
)
from events.json_input import parse_json
from events.outbound import (
    AppView,
    ConversationListView,
    ErrorBody,
    ErrorView,
    FeedbackView,
    cancelled_frame,
)
from workers.adapters import schedule_routes
from workers.adapters import slack_events as slack
from workers.adapters.http_errors import error_view
from workers.adapters.local import agent_server
from workers.adapters.local.bodies import (
    check_conversation_id,
    json_body,
    json_errors,
    json_object,
    read_body,
    validated,
    validation_error,
)
from workers.adapters.local.guard import Guard
from workers.adapters.local.hub import FORGOTTEN, UPDATE
from workers.adapters.local.markdown import render_markdown
from workers.adapters.local.runtime import EmbeddedRuntime
from workers.adapters.local.sse import (
    EventStream,
    answer_in,
    follow,
    parse_cursor,
    wait_answer,
)
from workers.adapters.local.views import conversation_view, summary_view, values_view
from workers.adapters.tokens import bearer_token, ws_token
from workers.config import Settings
from workers.core.model import AcceptResult, CallerValues, ConversationStatus
from workers.core.ports import Authenticator
from workers.errors import (
    AgentWorkerError,
    ApiError,
    ConfigError,
    NotFound,
    RetryableError,
    Unauthenticated,
)

log = logging.getLogger(__name__)


_FRAME = TypeAdapter[Any](WsFrame)


Frame = WsSubscribe | WsSend | WsDecide | WsResume | WsFeedback | WsPing | WsCancel


def unknown_conversation(conversation_id: str) -> ApiError:
    return ApiError(
        404, "not_found", str(NotFound.conversation(conversation_id)), "conversation_id"
    )


def create_app(
    settings: Settings,
    runtime_factory: Any = None,
    authenticator: Authenticator | None = None,
    *,
    slack_socket_mode: bool = False,
) -> FastAPI:
    """The ASGI app; the embedded runtime starts and stops with it. Every ``/v1`` request and
    WebSocket authenticates with ``authenticator`` (default: the one ``settings`` configure,
    JWTs or the development token). ``slack_socket_mode``: the Slack app's events and clicks
    come over Socket Mode too, while the app runs (``settings.slack_app_token``)."""
    from workers.bootstrap import build_authenticator

    auth = authenticator or build_authenticator(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from workers.bootstrap import build_embedded

        runtime: EmbeddedRuntime = (runtime_factory or build_embedded)(settings)
        await runtime.start()
        app.state.runtime = runtime
        socket = None
        try:
            if slack_socket_mode:
                socket = await slack_connect(settings, runtime, slack_app())
            yield
        finally:
            if socket is not None:
                await asyncio.to_thread(socket.close)
            await runtime.stop()

    app = FastAPI(title="agentworker", version="0.1.0", lifespan=lifespan)
    guard = Guard.for_settings(settings)

    @app.middleware("http")
    async def _guarded(request: Request, call_next: Any) -> Any:
        origin = request.headers.get("origin")
        refused = guard.refusal(request.headers.get("host"), origin)
        if refused is not None:
            body = ErrorView(error=ErrorBody(code=refused[0], message=refused[1]))
            return JSONResponse(body.model_dump(), status_code=403)
        if origin is None:
            return await call_next(request)
        # An allowed origin (a refused one got the 403 above): a page there may read the answer.
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            # A browser's preflight carries no credentials: answered here, before any route.
            response: Response = Response(status_code=204, headers=guard.preflight(origin))
        else:
            response = await call_next(request)
            response.headers.update(guard.cross_origin(origin))
        response.headers.add_vary_header("origin")
        return response

    json_errors(app)

    async def caller(request: Request) -> Principal:
        """Who calls: the bearer token, or the same token as ``x-api-key`` (what LangGraph's
        clients send for ``api_key=``)."""
        token = bearer_token(request.headers.get("authorization"))
        return await authenticate(auth, token or request.headers.get("x-api-key") or None)

    def rt(request: Request | WebSocket) -> EmbeddedRuntime:
        runtime: EmbeddedRuntime = request.app.state.runtime
        return runtime

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        page = chat_page()
        return HTMLResponse(page.html, headers=page.headers)

    @app.get("/v1/app")
    async def get_app(request: Request) -> JSONResponse:
        await caller(request)
        view = AppView(
            name=settings.app_name,
            model=settings.model,
            suggested_prompts=settings.prompts_to_suggest,
        )
        return JSONResponse(view.model_dump(mode="json"))

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        runtime = rt(request)
        return {
            "status": "ok",
            "model": settings.model,
            "workers": settings.workers,
            "busy": runtime.busy,
        }

    @app.post("/v1/conversations/{conversation_id}/messages", status_code=202)
    async def post_message(conversation_id: str, request: Request) -> JSONResponse:
        """``?wait=SECONDS`` (at most ``MAX_WAIT_SECONDS``): the answer when it comes in
        time (200 ``{"accepted": ..., "answer": ...}``), else 202 as without it."""
        principal = await caller(request)
        check_conversation_id(conversation_id)
        wait = wait_seconds(request.query_params.get("wait"))
        data = await json_object(request)
        try:
            body = MessageRequest.model_validate(data)
            msg = body.to_inbound(conversation_id)
        except ValidationError as exc:
            raise validation_error(exc) from None
        runtime = rt(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        if wait:  # before the accept: the answer cannot come before the wait begins
            runtime.hub.subscribe(conversation_id, queue)
        try:
            result = await runtime.accept(msg, principal)
            view = result.view(conversation_id).model_dump(mode="json")
            if not wait or result.rejected:
                return JSONResponse(view, status_code=202)
            answer = await answered_already(runtime, conversation_id, principal, result)
            answer = answer or await wait_answer(queue, result.message_id, wait)
        finally:
            runtime.hub.unsubscribe(queue)
        if answer is None:
            return JSONResponse(view, status_code=202)
        return JSONResponse({"accepted": view, "answer": answer}, status_code=200)

    @app.get("/v1/conversations/{conversation_id}/stream")
    async def stream_conversation(conversation_id: str, request: Request) -> StreamingResponse:
        """Server-sent events of the conversation (see :mod:`workers.adapters.local.sse`):
        live ones, or those after ``Last-Event-ID`` (or ``?after=``; ``start``: all)."""
        principal = await caller(request)
        check_conversation_id(conversation_id)
        cursor = parse_cursor(
            request.headers.get("last-event-id") or request.query_params.get("after")
        )
        runtime = rt(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        runtime.hub.subscribe(conversation_id, queue)  # before the replay is read
        try:
            history = await runtime.history(conversation_id, principal)
            if history is None:
                raise unknown_conversation(conversation_id)
            events = EventStream(conversation_id)
            first = events.replay(history, cursor)
        except BaseException:
            runtime.hub.unsubscribe(queue)
            raise
        return StreamingResponse(
            follow(events, runtime.hub, queue, first),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @app.post("/v1/conversations/{conversation_id}/feedback", status_code=202)
    async def post_feedback(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        body = await json_body(request, FeedbackRequest)
        await rt(request).feedback(
            conversation_id,
            principal,
            reply_id=body.reply_id,
            score=body.score,
            comment=body.comment,
        )
        view = FeedbackView(
            conversation_id=conversation_id, reply_id=body.reply_id, score=body.score
        )
        return JSONResponse(view.model_dump(mode="json"), status_code=202)

    @app.get("/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        history = await rt(request).history(conversation_id, principal)
        if history is None:
            raise unknown_conversation(conversation_id)
        return JSONResponse(conversation_view(history).model_dump(mode="json"))

    @app.get("/v1/conversations")
    async def get_conversations(request: Request) -> JSONResponse:
        """The caller's conversations, most recently active first: ``?limit=`` (1-100,
        default 20), ``?offset=``, ``?status=``, ``?metadata=`` (a JSON object: each key
        as given)."""
        principal = await caller(request)
        query = ListQuery.parse(request.query_params)
        found = await rt(request).list_conversations(
            principal,
            limit=query.limit + 1,  # one more: whether a next page exists
            offset=query.offset,
            status=query.status,
            metadata=query.metadata,
        )
        view = ConversationListView(
            conversations=[summary_view(c) for c in found[: query.limit]],
            limit=query.limit,
            offset=query.offset,
            next_offset=query.offset + query.limit if len(found) > query.limit else None,
        )
        return JSONResponse(view.model_dump(mode="json"))

    @app.patch("/v1/conversations/{conversation_id}")
    async def patch_conversation(conversation_id: str, request: Request) -> JSONResponse:
        """Change the conversation's own context, configurable values and metadata."""
        principal = await caller(request)
        check_conversation_id(conversation_id)
        body = await json_body(request, ConversationValuesRequest)
        change = CallerValues(body.context, body.configurable, body.metadata)
        values = await rt(request).set_values(conversation_id, principal, change)
        return JSONResponse(values_view(conversation_id, values).model_dump(mode="json"))

    @app.post("/v1/conversations/{conversation_id}/cancel")
    async def cancel_conversation(conversation_id: str, request: Request) -> JSONResponse:
        """Stop the running turn: nothing of it is committed, its sender gets a notice;
        409 ``not_running`` when none runs."""
        principal = await caller(request)
        check_conversation_id(conversation_id)
        await rt(request).cancel(conversation_id, principal)
        return JSONResponse(cancelled_frame(conversation_id))

    @app.get("/v1/conversations/{conversation_id}/state")
    async def get_state(conversation_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        check_conversation_id(conversation_id)
        state = await rt(request).graph_state(conversation_id, principal)
        if state is None:
            raise unknown_conversation(conversation_id)
        return JSONResponse(state.model_dump(mode="json"))

    @app.delete("/v1/conversations/{conversation_id}")
    async def delete_conversation(
        conversation_id: str, request: Request, memories: bool = False
    ) -> JSONResponse:
        """``?memories=true``: erase the owner's long-term memories too."""
        principal = await caller(request)
        check_conversation_id(conversation_id)
        erasure = await rt(request).forget(conversation_id, principal, memories=memories)
        body = {
            "conversation_id": conversation_id,
            "removed": erasure.removed,
            "pending": list(erasure.pending),
        }
        return JSONResponse(body)

    agent_server.mount(app, settings, caller, rt)
    schedule_routes.mount(app, caller, rt)
    schedule_routes.mount_webhooks(app, caller, rt)

    @functools.cache
    def slack_app() -> slack.SlackApp:
        """The Slack app of this server (one, so user groups' members stay cached)."""
        from workers.bootstrap import slack_web

        return slack.SlackApp.of(
            settings, slack_web(settings) if settings.slack_bot_token else None
        )

    @app.post("/slack/events")
    async def slack_events(request: Request) -> Response:
        """The Slack app's Request URL (Events API and interactivity), as the AWS ``slack``
        function serves it: signed requests only; 404 without a signing secret."""
        secret = settings.slack_signing_secret
        if secret is None or not secret.get_secret_value().strip():
            raise NotFound("slack: no Slack app here (AGENTWORKER_SLACK_SIGNING_SECRET)")
        raw = await read_body(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = slack.verified(headers, raw, secret.get_secret_value(), time.time())
        if answer is None:
            parsed = slack.read_request(headers, raw)
            runtime = rt(request)
            answer = await slack.answer(parsed, runtime.accept, slack_app(), runtime.feedback)
        if answer.reason is not None:
            log.info("slack request not acted on: %s", answer.reason)
        if answer.body is None:  # an interaction's acknowledgement
            return Response(status_code=answer.status)
        return JSONResponse(answer.body, status_code=answer.status)

    @app.websocket("/v1/ws")
    async def websocket(ws: WebSocket) -> None:
        if guard.refusal(ws.headers.get("host"), ws.headers.get("origin")) is not None:
            await ws.close(code=1008)  # before the handshake completes: HTTP 403
            return
        offered = ws.scope.get("subprotocols") or []
        subprotocol = WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None
        try:
            token = ws_token(ws.headers.get("authorization"), offered)
            principal = await authenticate(auth, token)
        except (Unauthenticated, RetryableError) as exc:
            # Accept, then say why and close: a browser sees no reason in a refused handshake.
            await ws.accept(subprotocol=subprotocol)
            await ws.send_json(error_view(exc)[1].model_dump())
            await ws.close(code=WS_UNAUTHENTICATED, reason=getattr(exc, "reason", "unavailable"))
            return
        session = WebSocketSession(
            ws, rt(ws), settings.max_subscriptions, principal, subprotocol, html=wants_html(ws)
        )
        await session.run()

    return app


class ListQuery(BaseModel):
    """The query of ``GET /v1/conversations``."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)
    status: ConversationStatus | None = None
    metadata: dict[str, JsonValue] | None = None

    @classmethod
    def parse(cls, params: Any) -> ListQuery:
        data: dict[str, Any] = dict(params)
        raw = data.get("metadata")
        if raw is not None:
            if len(raw) > 4096:
                raise ApiError(413, "too_large", "metadata: over 4096 bytes", "metadata")
            data["metadata"] = parse_json(raw, what="metadata")
        return validated(cls, data)


MAX_WAIT_SECONDS = 120
"""The longest ``?wait=`` a message may ask for."""


def wait_seconds(raw: str | None) -> float:
    """``?wait=``: seconds to wait for the answer (0 without it); 422 when not a number of
    seconds from 0 to :data:`MAX_WAIT_SECONDS`."""
    if raw is None:
        return 0.0
    try:
        seconds = float(raw) if len(raw) <= 12 else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:  # NaN too
        raise ApiError(
            422, "validation_error", f"wait: seconds from 0 to {MAX_WAIT_SECONDS}", "wait"
        )
    return seconds


async def answered_already(
    runtime: EmbeddedRuntime, conversation_id: str, principal: Principal, result: AcceptResult
) -> dict[str, Any] | None:
    """For a message sent again (a duplicate), the answer its first sending got, if any."""
    if not result.duplicate:
        return None
    history = await runtime.history(conversation_id, principal)
    return answer_in(history, result.message_id) if history else None


WS_UNAUTHENTICATED = 4401
"""Close code of a socket whose token was refused (the error frame before it says why)."""


def wants_html(ws: WebSocket) -> bool:
    """Whether the socket asked for replies as HTML too (``/v1/ws?render=html``, the chat
    page): each reply frame then carries ``html``, its Markdown rendered and sanitized."""
    return ws.query_params.get("render") == "html"


class ChatPage:
    """The chat page and the headers it is served with: a Content-Security-Policy that runs
    only the page's own inline script (by its hash) and connects only to this server, so
    that even markup that got past the sanitizer could run nothing and load nothing."""

    def __init__(self, html: str) -> None:
        self.html = html
        scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
        hashes = " ".join(f"'sha256-{_sha256_b64(s)}'" for s in scripts)
        policy = (
            "default-src 'none'",
            f"script-src {hashes}",
            "style-src 'unsafe-inline'",
            "img-src data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
        self.headers = {
            "content-security-policy": "; ".join(policy),
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        }


def _sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


async def slack_connect(settings: Settings, runtime: EmbeddedRuntime, app: Any) -> Any:
    """Connect the Slack app over Socket Mode (:mod:`workers.adapters.local.slack_socket`)."""
    from workers.adapters.local.slack_socket import SlackSocketMode

    if settings.slack_app_token is None:
        raise ConfigError("AGENTWORKER_SLACK_APP_TOKEN: Socket Mode needs the app-level token")
    socket = SlackSocketMode(
        runtime,
        asyncio.get_running_loop(),
        app_token=settings.slack_app_token,
        api_url=settings.slack_api_url,
        app=app,
    )
    await asyncio.to_thread(socket.connect)
    log.info("connected to Slack over Socket Mode")
    return socket


@functools.cache
def chat_page() -> ChatPage:
    html = resources.files("workers.adapters.local").joinpath("static/index.html").read_text()
    return ChatPage(html)


HTML_FRAMES = ("reply", "subscribed")
"""The frames :func:`with_html` adds HTML to."""


def with_html(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` with ``html`` beside the text of each reply in it (a ``reply`` frame, the
    history of a ``subscribed`` one); frames are shared between sockets: never changed in
    place."""
    if frame.get("type") == "reply" and isinstance(frame.get("text"), str):
        return {**frame, "html": render_markdown(frame["text"])}
    conversation = frame.get("conversation") if frame.get("type") == "subscribed" else None
    if isinstance(conversation, dict):
        replies = [
            {**r, "payload": with_html(r["payload"])} if isinstance(r, dict) else r
            for r in conversation.get("replies", [])
        ]
        return {**frame, "conversation": {**conversation, "replies": replies}}
    return frame


async def authenticate(auth: Authenticator, token: str | None) -> Principal:
    """``auth.authenticate`` off the event loop when it may fetch keys (JWKS)."""
    if token is not None and getattr(auth, "fetches_keys", False):
        return await asyncio.to_thread(auth.authenticate, token)
    return auth.authenticate(token)


class Follow:
    """A socket's subscription to one conversation, between the hub and the socket's queue.

    Open: frames pass. Closed: frames are dropped; a conversation that does not exist yet
    (nobody may be shown it before it is known to be the caller's). Holding: frames wait,
    while the caller's own first message is accepted (which creates the conversation for
    them, or fails if someone else has it): ``open`` lets them through in order, ``close``
    drops them. Erased (the hub's ``forgotten`` frame): the frame passes if the follow was
    open, and the follow is closed again, as for an id that does not exist."""

    def __init__(self, queue: asyncio.Queue[Any], *, open_: bool) -> None:
        self._queue = queue
        self._held: list[Any] | None = None
        self._erased_while_held: Any = None
        """The ``forgotten`` frame that came while a message was being accepted."""
        self.open = open_

    def put_nowait(self, frame: Any) -> None:
        if frame.get("type") == UPDATE:
            return  # not part of the WebSocket protocol
        if frame.get("type") == FORGOTTEN:
            self._forgotten(frame)
        elif self.open:
            self._queue.put_nowait(frame)
        elif self._held is not None:
            self._held.append(frame)

    def _forgotten(self, frame: Any) -> None:
        if self.open:
            self._queue.put_nowait(frame)
        elif self._held is not None:
            # The message being accepted went into the erased conversation: drop what it
            # led to, and do not open on it.
            self._held, self._erased_while_held = [], frame
        self.open = False

    def hold(self) -> None:
        if not self.open:
            self._held = []

    def release(self, *, admit: bool) -> None:
        held, self._held = self._held or [], None
        erased, self._erased_while_held = self._erased_while_held, None
        if admit and erased is not None:
            self._queue.put_nowait(erased)  # accepted, then erased: say so, stay closed
        elif admit:
            self.open = True
            for frame in held:
                self._queue.put_nowait(frame)


def _binary_frame() -> dict[str, Any]:
    body = ErrorBody(code="binary_frame", message="frames are JSON text: send a text frame")
    return ErrorView(error=body).model_dump()


class WebSocketSession:
    """One client socket of ``principal``: frames in, replies and chunks of the
    conversations it follows out. A bad frame gets an error frame; the socket stays open."""

    def __init__(
        self,
        ws: WebSocket,
        runtime: EmbeddedRuntime,
        max_subscriptions: int,
        principal: Principal,
        subprotocol: str | None = None,
        *,
        html: bool = False,
    ) -> None:
        self.ws = ws
        self.html = html
        self.runtime = runtime
        self.max_subscriptions = max_subscriptions
        self.principal = principal
        self.subprotocol = subprotocol
        self.connection_id = new_id()
        # Frames to send, in order. A response is queued as a future *before* its message
        # is accepted, so "accepted" always precedes the chunks and reply it leads to.
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.follows: dict[str, Follow] = {}

    async def run(self) -> None:
        await self.ws.accept(subprotocol=self.subprotocol)
        pump = asyncio.create_task(self._pump())
        try:
            loop = asyncio.get_running_loop()
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                slot: asyncio.Future[dict[str, Any]] = loop.create_future()
                self.queue.put_nowait(slot)
                raw = message.get("text")
                # A binary frame (``receive_text`` would raise KeyError and drop the socket)
                # is a bad frame like any other: an error frame, the socket stays open.
                answer = _binary_frame() if raw is None else await self._handle(raw)
                slot.set_result(answer)
        finally:
            pump.cancel()
            for follow in self.follows.values():
                self.runtime.hub.unsubscribe(follow)
            await asyncio.to_thread(self.runtime.store.remove_connection, self.connection_id)

    async def _pump(self) -> None:
        while True:
            item = await self.queue.get()
            frame = await item if isinstance(item, asyncio.Future) else item
            if self.html and frame.get("type") in HTML_FRAMES:
                # Off the event loop: a long reply (or history) takes seconds to render,
                # which every other socket and request would wait out.
                frame = await asyncio.to_thread(with_html, frame)
            await self.ws.send_json(frame)

    async def _handle(self, raw: str) -> dict[str, Any]:
        try:
            frame = self._parse(raw)
            if isinstance(frame, WsPing):
                return {"type": "pong"}
            if isinstance(frame, WsFeedback):
                return await self._feedback(frame)
            cid = frame.conversation_id
            if isinstance(frame, WsCancel):
                await self.runtime.cancel(cid, self.principal)
                return cancelled_frame(cid)
            follow = await self._follow(cid)
            if isinstance(frame, WsSubscribe):
                history = await self.runtime.history(cid, self.principal)
                view = conversation_view(history).model_dump(mode="json") if history else None
                return {"type": "subscribed", "conversation_id": cid, "conversation": view}
            try:
                msg = frame.to_inbound()
            except ValidationError as exc:
                raise validation_error(exc) from None
            follow.hold()
            try:
                result = await self.runtime.accept(msg, self.principal)
            except BaseException:
                follow.release(admit=False)
                raise
            follow.release(admit=True)  # accepted: the conversation is the caller's
            return result.view(msg.conversation_id).model_dump(mode="json")
        except AgentWorkerError as exc:
            return error_view(exc)[1].model_dump()
        except Exception:
            # Keep the socket open: log the bug with context, tell the client plainly.
            log.exception("websocket frame failed: %.200s", raw)
            return ErrorView(
                error=ErrorBody(code="internal_error", message="the server failed on this frame")
            ).model_dump()

    async def _feedback(self, frame: WsFeedback) -> dict[str, Any]:
        """Rate a reply; the conversation need not be followed (the core checks access)."""
        await self.runtime.feedback(
            frame.conversation_id,
            self.principal,
            reply_id=frame.reply_id,
            score=frame.score,
            comment=frame.comment,
        )
        view = FeedbackView(
            conversation_id=frame.conversation_id, reply_id=frame.reply_id, score=frame.score
        )
        return view.model_dump(mode="json")

    def _parse(self, raw: str) -> Frame:
        data = parse_json(raw, what="frame")
        if not isinstance(data, dict):
            raise ApiError(422, "validation_error", "frame: must be a JSON object", "action")
        action = data.get("action")
        if action not in WS_ACTIONS:
            raise ApiError(
                422,
                "unknown_action",
                f"action: {action!r} is not one of {', '.join(WS_ACTIONS)}",
                "action",
            )
        try:
            frame: Frame = _FRAME.validate_python(data)
        except ValidationError as exc:
            raise validation_error(exc, tagged=True) from None
        return frame

    async def _follow(self, conversation_id: str) -> Follow:
        """Follow the conversation: open if it is the caller's, closed otherwise (it does not
        exist yet, or it is someone else's, which is answered the same way) until the
        caller's own first message creates it for them."""
        follow = self.follows.get(conversation_id)
        if follow is not None and follow.open:
            return follow
        if follow is None and len(self.follows) >= self.max_subscriptions:
            raise ApiError(
                429,
                "too_many_subscriptions",
                f"conversation_id: this socket follows {len(self.follows)} conversations,"
                f" the most one may (max_subscriptions); open another socket",
                "conversation_id",
            )
        exists = await self.runtime.check_follow(conversation_id, self.principal)
        if follow is None:
            follow = self.follows[conversation_id] = Follow(self.queue, open_=exists)
            self.runtime.hub.subscribe(conversation_id, follow)
            await asyncio.to_thread(
                self.runtime.store.add_connection,
                self.connection_id,
                conversation_id,
                now=self.runtime.deps.clock.now(),
            )
        follow.open = follow.open or exists
        return follow
