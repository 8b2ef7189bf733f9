"""LangGraph's Agent Server API on the embedded runtime: what the ``langgraph-sdk`` client
calls (``get_client(url=...)``), mapped onto agentworker's turn contract.

* The **assistant** is the served graph: one, whose ``graph_id`` is the app's
  (``Settings.served_graph_id``) and whose ``assistant_id`` is derived from it as
  ``langgraph dev`` derives its own (``uuid5`` of the graph id), so a client naming either
  works against both.
* A **thread** is a conversation, with the same owners: another caller's is a 404. Its
  ``metadata`` is the conversation's own (``PATCH /v1/conversations/{id}``); its ``values``
  are the graph state the next turn starts from (the messages of the log window: earlier
  checkpoints are not kept, so a history has one state).
* A **run** is the turn that answers one accepted message: its ``run_id`` is the message's
  id (a UUID), its status the message's (pending, running, success when answered, error
  when failed, interrupted when cancelled). A run's input is user messages, or a
  ``Command(resume=...)`` answering what the thread waits for (an ``interrupt()`` or a tool
  approval); ``multitask_strategy`` is the double-texting policy of the message.

Errors keep agentworker's JSON shape (``{"error": {"code", "message", "field"}}``), which the
client reads as it reads the reference server's. See ``docs/http-api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from events.identity import Principal
from events.inbound import CONVERSATION_ID_PATTERN, InboundMessage, MessageRequest, new_id
from events.outbound import ApprovalRequest, GraphStateView, InterruptRequest
from workers.adapters.local.bodies import check_conversation_id, json_body, validated
from workers.adapters.local.hub import UPDATE
from workers.adapters.local.sse import answer_in, answers, sse, wait_answer
from workers.config import Settings
from workers.core.model import (
    AcceptResult,
    CallerValues,
    ConversationState,
    ConversationStatus,
    ConversationSummary,
    History,
    InboxEntry,
)
from workers.core.steps import Erasure
from workers.errors import ApiError, NotFound, NotRunning

ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""The namespace ``langgraph dev`` derives its graphs' assistant ids in."""

KEEP_ALIVE_SECONDS = 5.0
"""A newline (``wait``) or a heartbeat comment (streams) at least this often while a request
waits for a run (the client reads at most 300 s apart)."""

THREAD_STATUS: dict[ConversationStatus, str] = {
    "idle": "idle",
    "running": "busy",
    "awaiting_approval": "interrupted",
}
CONVERSATION_STATUS: dict[str, ConversationStatus] = {v: k for k, v in THREAD_STATUS.items()}

MultitaskStrategy = Literal["reject", "interrupt", "rollback", "enqueue"]
POLICY: dict[str, Literal["reject", "enqueue"]] = {
    "reject": "reject",
    "interrupt": "enqueue",  # after the running turn is cancelled (see CUTS_OFF)
    "rollback": "enqueue",
    "enqueue": "enqueue",
}
CUTS_OFF = frozenset({"interrupt", "rollback"})
"""Strategies that cancel the thread's running turn first (it keeps nothing of what it did:
both are LangGraph's ``rollback`` here)."""

Caller = Callable[[Request], Awaitable[Principal]]


class Pieces(Protocol):
    """Where a runtime's turns' streamed pieces and payloads come live (the embedded
    runtime's hub; none on AWS, where a request reads the store)."""

    def subscribe(self, conversation_id: str, queue: Any) -> None: ...
    def unsubscribe(self, queue: Any) -> None: ...
    def turn_pieces(self, conversation_id: str) -> list[dict[str, Any]]: ...


class ApiRuntime(Protocol):
    """What the API asks of a runtime: the embedded one (``ApiRuntime``) or the AWS
    one (``workers.adapters.aws.api_runtime.AwsApiRuntime``)."""

    @property
    def hub(self) -> Pieces: ...
    @property
    def poll_seconds(self) -> float:
        """How often a request that waits for a run reads the store again."""

    @property
    def wait_limit_seconds(self) -> float:
        """The longest a ``wait``, ``join`` or run stream waits for the run's answer."""

    async def accept(self, msg: InboundMessage, principal: Principal) -> AcceptResult: ...
    async def history(self, conversation_id: str, principal: Principal) -> History | None: ...
    async def graph_state(
        self, conversation_id: str, principal: Principal, *, with_messages: bool = False
    ) -> GraphStateView | None: ...
    async def list_conversations(
        self,
        principal: Principal,
        *,
        limit: int,
        offset: int = 0,
        status: ConversationStatus | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> list[ConversationSummary]: ...
    async def summary(
        self, conversation_id: str, principal: Principal
    ) -> ConversationSummary | None: ...
    async def conversation_state(
        self, conversation_id: str, principal: Principal
    ) -> ConversationState | None: ...
    async def create_thread(
        self, conversation_id: str, principal: Principal, metadata: Mapping[str, object]
    ) -> bool: ...
    async def cancel(self, conversation_id: str, principal: Principal) -> None: ...
    async def set_values(
        self, conversation_id: str, principal: Principal, change: CallerValues
    ) -> CallerValues: ...
    async def forget(
        self, conversation_id: str, principal: Principal, *, memories: bool = False
    ) -> Erasure: ...
    def graph_drawing(self) -> dict[str, object]: ...
    def graph_schemas(self) -> dict[str, object]: ...


RuntimeOf = Callable[[Request], ApiRuntime]


def check_thread_id(thread_id: str) -> None:
    """422 for a thread id no conversation could have."""
    check_conversation_id(thread_id, "thread_id")


def assistant_id_of(graph_id: str) -> str:
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def run_id_of(message_id: str) -> str:
    """A message id (hex) as the run id the client sees (a UUID); other ids as they are."""
    try:
        return str(uuid.UUID(hex=message_id))
    except ValueError:
        return message_id


def message_id_of(run_id: str) -> str:
    try:
        return uuid.UUID(run_id).hex
    except ValueError:
        return run_id


# --- bodies -----------------------------------------------------------------------------------


class _Lenient(BaseModel):
    """A request body: unknown keys are ignored, as the reference server does."""

    model_config = ConfigDict(extra="ignore")


class ThreadCreate(_Lenient):
    thread_id: str | None = Field(default=None, pattern=CONVERSATION_ID_PATTERN)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"


class ThreadSearch(_Lenient):
    metadata: dict[str, JsonValue] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    limit: int = Field(10, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)


class ThreadUpdate(_Lenient):
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class AssistantSearch(_Lenient):
    graph_id: str | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0)


StreamMode = Literal[
    "values",
    "updates",
    "messages",
    "messages-tuple",
    "custom",
    "debug",
    "events",
    "tasks",
    "checkpoints",
    "tools",
    "lifecycle",
]


class RunCreate(_Lenient):
    assistant_id: str = Field(min_length=1, max_length=256)
    stream_mode: StreamMode | list[StreamMode] = "values"
    input: JsonValue = None
    command: dict[str, JsonValue] | None = None
    metadata: dict[str, JsonValue] | None = None
    config: dict[str, JsonValue] | None = None
    context: dict[str, JsonValue] | None = None
    multitask_strategy: MultitaskStrategy = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    """A streamed run's, when its client leaves before it ends: ``cancel`` it (what
    ``useStream`` asks, so that its ``stop()`` stops the run), or let it ``continue``."""


@dataclass(frozen=True)
class StartedRun:
    """A run whose message was accepted: where, by whom, asked how."""

    thread_id: str
    message_id: str
    principal: Principal
    runtime: ApiRuntime
    body: RunCreate
    text: str
    """The user's text it sent (empty for an answer)."""


# --- views ------------------------------------------------------------------------------------


def state_values(state: GraphStateView | None) -> dict[str, Any]:
    if state is None:
        return {}
    values: dict[str, Any] = dict(state.values)
    if state.message_list is not None:
        values["messages"] = state.message_list
    return values


def interrupts_of(state: GraphStateView | None) -> list[dict[str, Any]]:
    return [{"id": i.interrupt_id, "value": i.value} for i in (state.interrupts if state else [])]


class Views:
    """The JSON objects of the API, for the app served."""

    def __init__(self, settings: Settings) -> None:
        self.graph_id = settings.served_graph_id
        self.assistant_id = assistant_id_of(self.graph_id)
        self.name = settings.app_name
        self.started = datetime.now(UTC).isoformat()

    def knows(self, assistant: str) -> bool:
        return assistant in (self.graph_id, self.assistant_id)

    def check_assistant(self, assistant: str) -> None:
        if not self.knows(assistant):
            raise ApiError(
                404,
                "not_found",
                f"assistant_id: no assistant {assistant!r}; this server has"
                f" {self.graph_id!r} ({self.assistant_id})",
                "assistant_id",
            )

    def assistant(self) -> dict[str, Any]:
        return {
            "assistant_id": self.assistant_id,
            "graph_id": self.graph_id,
            "config": {},
            "context": {},
            "metadata": {"created_by": "system"},
            "name": self.name,
            "description": None,
            "version": 1,
            "created_at": self.started,
            "updated_at": self.started,
        }

    def thread(
        self,
        summary: ConversationSummary,
        state: GraphStateView | None = None,
        *,
        with_values: bool = False,
    ) -> dict[str, Any]:
        interrupts = interrupts_of(state)
        values = state_values(state) if with_values and state and state.checkpoint_id else None
        return {
            "thread_id": summary.conversation_id,
            "created_at": iso(summary.created_at),
            "updated_at": iso(summary.updated_at),
            "state_updated_at": iso(summary.updated_at),
            "metadata": {
                **dict(summary.values.metadata),
                "graph_id": self.graph_id,
                "assistant_id": self.assistant_id,
            },
            "status": THREAD_STATUS[summary.status],
            "config": {"configurable": dict(summary.values.configurable)},
            "values": values,
            "interrupts": {i["id"]: [i] for i in interrupts},
            "error": None,
        }

    def thread_state(self, thread_id: str, state: GraphStateView | None) -> dict[str, Any]:
        checkpoint = state.checkpoint_id if state else None
        interrupts = interrupts_of(state)
        pointer = (
            {"checkpoint_id": checkpoint, "thread_id": thread_id, "checkpoint_ns": ""}
            if checkpoint
            else None
        )
        return {
            "values": state_values(state),
            "next": list(state.next) if state else [],
            "tasks": [
                {
                    "id": i["id"],
                    "name": node,
                    "path": ["__pregel_pull", node],
                    "error": None,
                    "interrupts": [i],
                    "checkpoint": None,
                    "state": None,
                    "result": None,
                }
                for node in (state.next if state else [])
                for i in interrupts[:1]
            ],
            "metadata": {"graph_id": self.graph_id} if checkpoint else None,
            "created_at": None,
            "checkpoint": pointer,
            "parent_checkpoint": None,
            "interrupts": interrupts,
            "checkpoint_id": checkpoint,
            "parent_checkpoint_id": None,
        }

    def run(self, thread_id: str, entry: InboxEntry, history: History) -> dict[str, Any]:
        message = entry.message
        received = message.received_at.isoformat()
        return {
            "run_id": run_id_of(message.message_id),
            "thread_id": thread_id,
            "assistant_id": self.assistant_id,
            "metadata": dict(message.metadata),
            "status": run_status(entry, history),
            "multitask_strategy": message.policy or history.state.policy,
            "created_at": received,
            "updated_at": received,
        }


def run_status(entry: InboxEntry, history: History) -> str:
    """pending (queued), running (its turn is under way), success (answered), error
    (failed for good, or refused by the double-texting policy), interrupted (cancelled)."""
    if entry.status == "pending":
        claimed = history.state.claimed_seq
        return "running" if claimed is not None and entry.seq <= claimed else "pending"
    if entry.status == "consumed":
        return "success"
    if entry.status == "failed" and (entry.error or "").startswith("cancelled"):
        return "interrupted"
    return "error"


# --- routes -----------------------------------------------------------------------------------


def mount(app: FastAPI, settings: Settings, caller: Caller, rt: RuntimeOf) -> None:
    """Add the Agent Server API's routes to ``app`` (the local server)."""
    views = Views(settings)

    async def thread_or_404(
        request: Request, thread_id: str, principal: Principal, *, with_values: bool = False
    ) -> tuple[ConversationSummary, GraphStateView | None]:
        runtime = rt(request)
        check_thread_id(thread_id)
        summary = await runtime.summary(thread_id, principal)
        if summary is None:
            raise NotFound(f"thread_id: no thread {thread_id!r}", field="thread_id")
        state = await runtime.graph_state(thread_id, principal, with_messages=with_values)
        return summary, state

    @app.get("/ok")
    async def ok() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "version": "agentworker",
            "flags": {"assistants": True, "crons": False, "langsmith": False},
            "host": {"kind": "agentworker"},
        }

    # assistants

    @app.post("/assistants/search")
    async def search_assistants(request: Request) -> JSONResponse:
        await caller(request)
        query: AssistantSearch = await json_body(request, AssistantSearch, empty_ok=True)
        found = [] if query.graph_id not in (None, views.graph_id) else [views.assistant()]
        return JSONResponse(found[query.offset : query.offset + query.limit])

    @app.get("/assistants/{assistant_id}")
    async def get_assistant(assistant_id: str, request: Request) -> JSONResponse:
        await caller(request)
        views.check_assistant(assistant_id)
        return JSONResponse(views.assistant())

    @app.get("/assistants/{assistant_id}/graph")
    async def get_graph(assistant_id: str, request: Request) -> JSONResponse:
        await caller(request)
        views.check_assistant(assistant_id)
        return JSONResponse(await asyncio.to_thread(rt(request).graph_drawing))

    @app.get("/assistants/{assistant_id}/schemas")
    async def get_schemas(assistant_id: str, request: Request) -> JSONResponse:
        await caller(request)
        views.check_assistant(assistant_id)
        schemas = await asyncio.to_thread(rt(request).graph_schemas)
        return JSONResponse({"graph_id": views.graph_id, **schemas})

    # threads

    @app.post("/threads")
    async def create_thread(request: Request) -> JSONResponse:
        principal = await caller(request)
        body: ThreadCreate = await json_body(request, ThreadCreate, empty_ok=True)
        thread_id = body.thread_id or str(uuid.uuid4())
        runtime = rt(request)
        created = await runtime.create_thread(thread_id, principal, body.metadata)
        if not created:
            mine = await runtime.summary(thread_id, principal)
            if mine is None or body.if_exists == "raise":
                raise ApiError(
                    409, "conflict", f"thread_id: a thread {thread_id!r} exists", "thread_id"
                )
        summary, state = await thread_or_404(request, thread_id, principal)
        return JSONResponse(views.thread(summary, state))

    @app.post("/threads/search")
    async def search_threads(request: Request) -> JSONResponse:
        principal = await caller(request)
        query: ThreadSearch = await json_body(request, ThreadSearch, empty_ok=True)
        if query.status == "error":
            return JSONResponse([])
        found = await rt(request).list_conversations(
            principal,
            limit=query.limit,
            offset=query.offset,
            status=CONVERSATION_STATUS[query.status] if query.status else None,
            metadata=query.metadata,
        )
        return JSONResponse([views.thread(s) for s in found])

    @app.get("/threads/{thread_id}")
    async def get_thread(thread_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        summary, state = await thread_or_404(request, thread_id, principal, with_values=True)
        return JSONResponse(views.thread(summary, state, with_values=True))

    @app.patch("/threads/{thread_id}")
    async def update_thread(thread_id: str, request: Request) -> Response:
        principal = await caller(request)
        check_thread_id(thread_id)
        body: ThreadUpdate = await json_body(request, ThreadUpdate, empty_ok=True)
        runtime = rt(request)
        if await runtime.summary(thread_id, principal) is None:
            raise NotFound(f"thread_id: no thread {thread_id!r}", field="thread_id")
        await runtime.set_values(thread_id, principal, CallerValues(metadata=body.metadata))
        if request.headers.get("prefer") == "return=minimal":
            return Response(status_code=204)
        summary, state = await thread_or_404(request, thread_id, principal)
        return JSONResponse(views.thread(summary, state))

    @app.delete("/threads/{thread_id}")
    async def delete_thread(thread_id: str, request: Request) -> Response:
        principal = await caller(request)
        check_thread_id(thread_id)
        await rt(request).forget(thread_id, principal)
        return Response(status_code=204)

    @app.get("/threads/{thread_id}/state")
    async def get_thread_state(thread_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        _, state = await thread_or_404(request, thread_id, principal, with_values=True)
        return JSONResponse(views.thread_state(thread_id, state))

    @app.post("/threads/{thread_id}/history")
    async def get_thread_history(thread_id: str, request: Request) -> JSONResponse:
        """The states kept: the latest only (earlier checkpoints are not kept)."""
        principal = await caller(request)
        _, state = await thread_or_404(request, thread_id, principal, with_values=True)
        kept = [views.thread_state(thread_id, state)] if state and state.checkpoint_id else []
        return JSONResponse(kept)

    @app.post("/threads/{thread_id}/state")
    async def update_thread_state(thread_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        await thread_or_404(request, thread_id, principal)
        raise ApiError(
            400,
            "not_supported",
            "update_state: a thread's state changes only by its turns here (each turn is"
            " committed once, in order); send a message or a Command(resume=...) instead",
        )

    # runs

    async def start_run(
        request: Request,
        thread_id: str | None,
        *,
        queue: asyncio.Queue[dict[str, Any]] | None = None,
    ) -> StartedRun:
        """Accept the run's message (creating the thread where asked). ``queue`` follows
        the thread from before the accept (unfollowed again if the run does not start)."""
        principal = await caller(request)
        body: RunCreate = await json_body(request, RunCreate)
        views.check_assistant(body.assistant_id)
        runtime = rt(request)
        if thread_id is not None:
            check_thread_id(thread_id)
        else:  # a stateless run: a thread of its own, kept
            thread_id = str(uuid.uuid4())
            await runtime.create_thread(thread_id, principal, {})
        state = await runtime.conversation_state(thread_id, principal)
        if state is None and (
            body.if_not_exists != "create"
            or not await runtime.create_thread(thread_id, principal, {})
        ):
            raise NotFound(f"thread_id: no thread {thread_id!r}", field="thread_id")
        request_body = message_body(body, state.pending_approval if state else None)
        msg = validated(MessageRequest, request_body).to_inbound(thread_id)
        if body.multitask_strategy in CUTS_OFF and state is not None and state.status == "running":
            with contextlib.suppress(NotRunning):  # it ended meanwhile: nothing to cut off
                await runtime.cancel(thread_id, principal)
        if queue is not None:
            runtime.hub.subscribe(thread_id, queue)
        try:
            result = await runtime.accept(msg, principal)
            if result.rejected:
                raise ApiError(
                    409,
                    "conflict",
                    "thread_id: a run is going on the thread (multitask_strategy 'reject');"
                    " wait for it or choose another strategy",
                    "thread_id",
                )
        except BaseException:
            if queue is not None:
                runtime.hub.unsubscribe(queue)
            raise
        return StartedRun(thread_id, result.message_id, principal, runtime, body, msg.text)

    def run_headers(thread_id: str, message_id: str) -> dict[str, str]:
        path = f"/threads/{thread_id}/runs/{run_id_of(message_id)}"
        return {"content-location": path, "location": path + "/join"}

    async def answer_body(
        runtime: ApiRuntime, thread_id: str, message_id: str, principal: Principal
    ) -> AsyncIterator[bytes]:
        """Newlines while the run goes, then what it ended with (the reference server's
        ``wait``): the state values, with ``__interrupt__`` when it stopped to ask, or
        ``__error__`` when it failed."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        runtime.hub.subscribe(thread_id, queue)
        try:
            answer = await answered(runtime, thread_id, message_id, principal)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + runtime.wait_limit_seconds
            quiet_since = loop.time()
            while answer is None and loop.time() < deadline:
                answer = await wait_answer(queue, message_id, runtime.poll_seconds)
                if answer is None:
                    answer = await answered(runtime, thread_id, message_id, principal)
                if answer is None and loop.time() - quiet_since >= KEEP_ALIVE_SECONDS:
                    quiet_since = loop.time()
                    yield b"\n"
        finally:
            runtime.hub.unsubscribe(queue)
        if answer is not None:
            await settled(runtime, thread_id, message_id, principal)
        state = await runtime.graph_state(thread_id, principal, with_messages=True)
        yield json.dumps(final_value(answer, state)).encode()

    async def streamed(request: Request, thread_id: str | None) -> StreamingResponse:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # following the thread before the run's message is accepted: nothing is missed
        run = await start_run(request, thread_id, queue=queue)
        asked = run.body.stream_mode
        modes = {str(mode) for mode in (asked if isinstance(asked, list) else [asked])}
        path = run_headers(run.thread_id, run.message_id)["content-location"]
        headers = {
            "location": path + "/stream",
            "content-location": path,
            "cache-control": "no-store",
            "x-accel-buffering": "no",
        }
        events = run_events(
            views,
            run.runtime,
            queue=queue,
            thread_id=run.thread_id,
            message_id=run.message_id,
            principal=run.principal,
            modes=modes or {"values"},
            text=run.text,
        )
        if run.body.on_disconnect == "cancel":
            events = cancelled_when_left(events, run, cancel_if_running)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @app.post("/threads/{thread_id}/runs/stream")
    async def stream_run(thread_id: str, request: Request) -> StreamingResponse:
        return await streamed(request, thread_id)

    @app.post("/runs/stream")
    async def stream_stateless_run(request: Request) -> StreamingResponse:
        return await streamed(request, None)

    async def waited(request: Request, thread_id: str | None) -> StreamingResponse:
        run = await start_run(request, thread_id)
        return StreamingResponse(
            answer_body(run.runtime, run.thread_id, run.message_id, run.principal),
            media_type="application/json",
            headers=run_headers(run.thread_id, run.message_id),
        )

    @app.post("/threads/{thread_id}/runs/wait")
    async def wait_run(thread_id: str, request: Request) -> StreamingResponse:
        return await waited(request, thread_id)

    @app.post("/runs/wait")
    async def wait_stateless_run(request: Request) -> StreamingResponse:
        return await waited(request, None)

    async def created(request: Request, thread_id: str | None) -> JSONResponse:
        run = await start_run(request, thread_id)
        view = await find_run(run.runtime, run.thread_id, run.message_id, run.principal)
        location = run_headers(run.thread_id, run.message_id)["content-location"]
        return JSONResponse(view, headers={"content-location": location})

    @app.post("/threads/{thread_id}/runs")
    async def create_run(thread_id: str, request: Request) -> JSONResponse:
        return await created(request, thread_id)

    @app.post("/runs")
    async def create_stateless_run(request: Request) -> JSONResponse:
        return await created(request, None)

    async def find_run(
        runtime: ApiRuntime, thread_id: str, message_id: str, principal: Principal
    ) -> dict[str, Any]:
        check_thread_id(thread_id)
        history = await runtime.history(thread_id, principal)
        for entry in history.inbox if history else []:
            if entry.message.message_id == message_id:
                assert history is not None
                return views.run(thread_id, entry, history)
        raise NotFound(f"run_id: no run {run_id_of(message_id)!r}", field="run_id")

    @app.get("/threads/{thread_id}/runs")
    async def list_runs(
        thread_id: str, request: Request, limit: int = 10, offset: int = 0
    ) -> JSONResponse:
        principal = await caller(request)
        check_thread_id(thread_id)
        history = await rt(request).history(thread_id, principal)
        if history is None:
            raise NotFound(f"thread_id: no thread {thread_id!r}", field="thread_id")
        runs = [views.run(thread_id, e, history) for e in reversed(history.inbox)]
        return JSONResponse(runs[max(offset, 0) : max(offset, 0) + min(max(limit, 1), 100)])

    @app.get("/threads/{thread_id}/runs/{run_id}")
    async def get_run(thread_id: str, run_id: str, request: Request) -> JSONResponse:
        principal = await caller(request)
        run = await find_run(rt(request), thread_id, message_id_of(run_id), principal)
        return JSONResponse(run)

    @app.get("/threads/{thread_id}/runs/{run_id}/join")
    async def join_run(thread_id: str, run_id: str, request: Request) -> StreamingResponse:
        principal = await caller(request)
        runtime = rt(request)
        message_id = message_id_of(run_id)
        await find_run(runtime, thread_id, message_id, principal)
        return StreamingResponse(
            answer_body(runtime, thread_id, message_id, principal),
            media_type="application/json",
            headers=run_headers(thread_id, message_id),
        )

    @app.get("/threads/{thread_id}/runs/{run_id}/stream")
    async def join_run_stream(thread_id: str, run_id: str, request: Request) -> StreamingResponse:
        """The run's events from now on, or after ``Last-Event-ID`` (see
        :func:`run_events`); a run that has ended sends what it ended with."""
        principal = await caller(request)
        runtime = rt(request)
        message_id = message_id_of(run_id)
        seen = parse_event_id(request.headers.get("last-event-id"))
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        runtime.hub.subscribe(thread_id, queue)
        try:
            await find_run(runtime, thread_id, message_id, principal)
        except BaseException:
            runtime.hub.unsubscribe(queue)
            raise
        path = run_headers(thread_id, message_id)["content-location"]
        events = run_events(
            views,
            runtime,
            queue=queue,
            thread_id=thread_id,
            message_id=message_id,
            principal=principal,
            modes=join_modes(request.query_params.getlist("stream_mode")),
            text="",
            initial=False,
            seen=seen,
        )
        headers = {"location": path + "/stream", "content-location": path}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def cancel_if_running(run: StartedRun) -> None:
        """Cancel the run's turn if it runs (a run still queued goes on: cancelling would stop
        the turn before it, another run's)."""
        with contextlib.suppress(NotFound, NotRunning):  # erased, or ended meanwhile
            found = await find_run(run.runtime, run.thread_id, run.message_id, run.principal)
            if found["status"] == "running":
                await run.runtime.cancel(run.thread_id, run.principal)

    @app.post("/threads/{thread_id}/runs/{run_id}/cancel")
    async def cancel_run(thread_id: str, run_id: str, request: Request) -> Response:
        principal = await caller(request)
        runtime = rt(request)
        run = await find_run(runtime, thread_id, message_id_of(run_id), principal)
        if run["status"] == "pending":  # queued behind another turn: not that turn's to stop
            raise ApiError(
                409,
                "not_running",
                f"run_id: run {run_id!r} is queued, not running; it can be cancelled once its"
                " turn runs",
                "run_id",
            )
        if run["status"] != "running":
            raise NotFound(f"run_id: run {run_id!r} is not pending or running", field="run_id")
        await runtime.cancel(thread_id, principal)
        return Response(status_code=202)


ALL_MODES = frozenset({"values", "updates", "messages-tuple", "custom"})
"""What ``join_stream`` streams when it names no mode (``debug`` only when named)."""


def join_modes(given: list[str]) -> set[str]:
    """``join_stream``'s ``stream_mode``: empty (every mode), one, repeated, or a JSON array;
    the modes this server streams of them."""
    modes: set[str] = set()
    for value in given:
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = []
            modes.update(str(v) for v in parsed if isinstance(v, str))
        elif value:
            modes.add(value)
    if "messages" in modes:
        modes.add("messages-tuple")
    return (modes & (ALL_MODES | {"debug"})) or set(ALL_MODES)


def debug_task_result(frame: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A node's update as LangGraph's ``debug`` mode tells a task's result."""
    node, data = next(iter(update.items()))
    return {
        "type": "task_result",
        "timestamp": datetime.now(UTC).isoformat(),
        "step": int(frame.get("index", 0)),
        "payload": {
            "id": f"{frame.get('turn_id')}.{frame.get('index')}",
            "name": node,
            "error": None,
            "result": list(data.items()) if isinstance(data, dict) else [],
            "interrupts": [],
        },
    }


def human_message(text: str, message_id: str) -> dict[str, Any]:
    """The user's message as the graph's state holds it (the inbox message's id)."""
    return {
        "content": text,
        "additional_kwargs": {},
        "response_metadata": {},
        "type": "human",
        "name": None,
        "id": message_id,
    }


def message_chunk(delta: str, message_id: str | None) -> dict[str, Any]:
    return {
        "content": delta,
        "additional_kwargs": {},
        "response_metadata": {},
        "type": "AIMessageChunk",
        "name": None,
        "id": message_id,
        "tool_calls": [],
        "invalid_tool_calls": [],
        "tool_call_chunks": [],
        "usage_metadata": None,
    }


RunEventRank = tuple[int, str, int, int]
"""Where an event stands in its run: metadata (0), the state with the new message (1), a
piece of the run's turn (2, turn, pieces, updates: the indexes of the last piece and of the
last node update streamed so far, two sequences), what the run ended with (9, "", k, 0)."""

_PIECE_EVENT_ID = re.compile(r"p\.([A-Za-z0-9_-]{1,64})\.(\d{1,9})\.(-1|\d{1,9})")


def event_id(rank: RunEventRank) -> str:
    kind, turn, index, updates = rank
    return f"p.{turn}.{index}.{updates}" if kind == 2 else f"{kind}.{index}"


def parse_event_id(text: str | None) -> RunEventRank | None:
    """A run event's id (``Last-Event-ID``) as its rank; ``None`` for none or "from the
    start" (``-1``, ``-``, ``0``, what ``useStream`` sends); 400 ``bad_event_id`` else."""
    if text is None or text in ("", "-1", "-", "0"):
        return None
    if match := _PIECE_EVENT_ID.fullmatch(text):
        return (2, match.group(1), int(match.group(2)), int(match.group(3)))
    kind, _, index = text.partition(".")
    if kind in ("0", "1", "9") and index.isdigit() and len(index) < 3:
        return (int(kind), "", int(index), 0)
    raise ApiError(400, "bad_event_id", "Last-Event-ID: not an id of this run", "last_event_id")


def after(rank: RunEventRank, seen: RunEventRank | None) -> bool:
    """Whether the event at ``rank`` comes after ``seen``: of one turn, when it is further
    in either sequence (both only grow); a piece of another turn than ``seen``'s: the stream
    has not shown it."""
    if seen is None:
        return True
    if rank[0] == 2 and seen[0] == 2:
        return rank[1] != seen[1] or rank[2] > seen[2] or rank[3] > seen[3]
    return rank > seen if rank[0] != seen[0] else rank[2] > seen[2]


@dataclass
class RunPieces:
    """Which pieces of the hub's are a run's: those of the turn whose ``status`` names the
    run's message, after it, each once (a piece the hub held when the stream began may come
    live as well). Node updates have an index sequence of their own (our own streams leave
    them out, and keep theirs whole)."""

    message_id: str
    turn: str | None = None
    last: int = -1
    last_update: int = -1

    def rank(self, frame: dict[str, Any]) -> RunEventRank | None:
        """``frame``'s rank in the run, or ``None`` when it is not the run's or was seen."""
        turn, index = frame.get("turn_id"), int(frame.get("index", 0))
        if frame.get("type") == "status" and self.message_id in frame.get("in_reply_to", []):
            if self.turn != turn:
                self.turn, self.last, self.last_update = str(turn), index, -1
            return None
        if self.turn is None or turn != self.turn:
            return None
        if frame.get("type") == UPDATE:
            if index <= self.last_update:
                return None
            self.last_update = index
        elif index <= self.last:
            return None
        else:
            self.last = index
        return (2, self.turn, self.last, self.last_update)


async def run_events(
    views: Views,
    runtime: ApiRuntime,
    *,
    queue: asyncio.Queue[dict[str, Any]],
    thread_id: str,
    message_id: str,
    principal: Principal,
    modes: set[str],
    text: str,
    initial: bool = True,
    seen: RunEventRank | None = None,
) -> AsyncIterator[str]:
    """A run's server-sent events as the reference server sends them: ``metadata`` first;
    ``values`` (the state with the new message, then the state the run left, with
    ``__interrupt__`` when it stopped to ask); ``updates`` (``__interrupt__`` only);
    ``messages`` (``messages-tuple``: each piece of the reply's text with its metadata);
    ``custom``; ``error`` when the run failed. The stream ends with the run (no ``end``
    event, as the reference server sends none). Pieces are the run's own turn's: the one
    whose status names the message.

    Every event has an id (:func:`event_id`), so a client that reconnects with
    ``Last-Event-ID`` (``seen``) gets only what followed: the pieces of the turn the hub
    still holds, then live ones, then the end. The pieces of a turn that has ended are not
    sent again (its final values hold the whole reply)."""
    run_id = run_id_of(message_id)
    meta = {
        "run_id": run_id,
        "thread_id": thread_id,
        "graph_id": views.graph_id,
        "assistant_id": views.assistant_id,
    }
    ours = RunPieces(message_id)

    def event(name: str, data: Any, rank: RunEventRank) -> str | None:
        return sse(name, data, event_id(rank)) if after(rank, seen) else None

    def piece(frame: dict[str, Any]) -> str | None:
        if (rank := ours.rank(frame)) is None:
            return None
        kind = frame.get("type")
        if kind == "custom" and "custom" in modes:
            return event("custom", frame.get("data"), rank)
        if kind == "chunk" and modes & {"messages-tuple", "messages"}:
            if frame.get("message_id") is None:
                return None  # the separator between two messages of the reply
            chunk = message_chunk(str(frame.get("delta", "")), frame.get("message_id"))
            node = {"langgraph_node": frame["node"]} if frame.get("node") else {}
            return event("messages", [chunk, {**meta, **node}], rank)
        if kind == UPDATE:
            update = {str(frame.get("node")): frame.get("data")}
            events = [event("updates", update, rank)] if "updates" in modes else []
            if "debug" in modes:  # the debug event of the task that returned it
                events.append(event("debug", debug_task_result(frame, update), rank))
            return "".join(e for e in events if e) or None
        return None

    try:
        if seen is None:
            yield sse("metadata", {"run_id": run_id, "attempt": 1}, event_id((0, "", 0, 0)))
        if "values" in modes and initial:
            before = await runtime.graph_state(thread_id, principal, with_messages=True)
            values = state_values(before)
            if text:
                values["messages"] = [*values.get("messages", []), human_message(text, message_id)]
            yield sse("values", values, event_id((1, "", 0, 0)))
        answer = await answered(runtime, thread_id, message_id, principal)
        if answer is None:  # what the turn streamed before this stream began, then live
            for held in runtime.hub.turn_pieces(thread_id):
                if (out := piece(held)) is not None:
                    yield out
        else:  # it ended before this stream looked: what the queue caught of it (all of it
            # when the queue was subscribed before the run was accepted, as ``stream`` does)
            while not queue.empty():
                frame = queue.get_nowait()
                if answers(frame, message_id):
                    break
                if (out := piece(frame)) is not None:
                    yield out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + runtime.wait_limit_seconds
        quiet_since = loop.time()
        while answer is None and loop.time() < deadline:
            try:
                frame = await asyncio.wait_for(queue.get(), runtime.poll_seconds)
            except TimeoutError:  # the store has it when no hub tells (or it was missed)
                answer = await answered(runtime, thread_id, message_id, principal)
                if answer is None and loop.time() - quiet_since >= KEEP_ALIVE_SECONDS:
                    quiet_since = loop.time()
                    yield ": heartbeat\n\n"
                continue
            if answers(frame, message_id):
                answer = frame
            elif frame.get("type") == "forgotten":
                answer = {"type": "notice", "level": "error", "text": "the thread was deleted"}
            elif (out := piece(frame)) is not None:
                yield out
        if answer is not None:
            await settled(runtime, thread_id, message_id, principal)
        state = await runtime.graph_state(thread_id, principal, with_messages=True)
        final = final_value(answer, state)
        ends: list[tuple[str, Any]] = []
        if "__error__" in final:
            ends.append(("error", final["__error__"]))
        else:
            if "updates" in modes and "__interrupt__" in final:
                ends.append(("updates", {"__interrupt__": final["__interrupt__"]}))
            if "values" in modes:
                ends.append(("values", final))
        for k, (name, data) in enumerate(ends):
            if (out := event(name, data, (9, "", k, 0))) is not None:
                yield out
    finally:
        runtime.hub.unsubscribe(queue)


async def cancelled_when_left(
    events: AsyncIterator[str],
    run: StartedRun,
    cancel: Callable[[StartedRun], Awaitable[None]],
) -> AsyncIterator[str]:
    """``events``; when the client leaves before they end (it closed the stream: the server
    stops sending them), ``cancel(run)``, shielded from the cancellation that stops them."""
    ended = False
    try:
        async for event in events:
            yield event
        ended = True
    finally:
        if not ended:
            with anyio.CancelScope(shield=True):
                await cancel(run)


SETTLE_SECONDS = 2.0
"""The longest a request waits, after a run's answer, for the run to let the thread go."""


async def settled(
    runtime: ApiRuntime, thread_id: str, message_id: str, principal: Principal
) -> None:
    """Wait (at most :data:`SETTLE_SECONDS`) until the run that answered ``message_id`` has
    ended: its answer is delivered before its turn lets the thread's lease go, and a client
    that reads the thread right after ``wait``, ``join`` or a stream expects it idle (or
    busy with a later run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    pause = min(0.05, runtime.poll_seconds)
    while loop.time() < deadline:
        history = await runtime.history(thread_id, principal)
        if history is None or history.state.status != "running":
            return
        seq = next((e.seq for e in history.inbox if e.message.message_id == message_id), None)
        claimed = history.state.claimed_seq
        if seq is None or (claimed is not None and claimed > seq):
            return  # (running with nothing claimed: the run still holds it, letting go)
        await asyncio.sleep(pause)


async def answered(
    runtime: ApiRuntime, thread_id: str, message_id: str, principal: Principal
) -> dict[str, Any] | None:
    """The payload that answered the message, if one did (the outbox keeps it)."""
    history = await runtime.history(thread_id, principal)
    if history is None:
        return {"type": "notice", "level": "error", "text": "the thread was deleted"}
    return answer_in(history, message_id)


def final_value(answer: dict[str, Any] | None, state: GraphStateView | None) -> dict[str, Any]:
    if answer is None:
        return {"__error__": {"error": "Timeout", "message": "no answer in time; join the run"}}
    if answer.get("type") == "notice" and answer.get("level") == "error":
        return {"__error__": {"error": "RunFailed", "message": str(answer.get("text"))}}
    values = state_values(state)
    if answer.get("type") in ("interrupt", "approval_request"):
        # what the graph's interrupt() holds, as the thread's state shows it
        values["__interrupt__"] = interrupts_of(state) or [
            {"id": answer["interrupt_id"], "value": answer.get("value", answer.get("text"))}
        ]
    return values


def message_body(body: RunCreate, waiting: Any) -> dict[str, Any]:
    """The message a run sends (``MessageRequest``'s fields): its input's user messages,
    or the answer its ``command`` resumes the thread with."""
    out: dict[str, Any] = {"policy": POLICY[body.multitask_strategy], "dedupe_key": new_id()}
    if body.metadata:
        out["metadata"] = {
            str(k): v if isinstance(v, str) else json.dumps(v) for k, v in body.metadata.items()
        }
    configurable = (body.config or {}).get("configurable")
    if isinstance(configurable, dict) and configurable:
        out["configurable"] = configurable
    if body.context:
        out["context"] = body.context
    if body.command is not None:
        if "resume" not in body.command:
            raise ApiError(
                400,
                "not_supported",
                "command: only 'resume' is taken here (a turn goes where the graph sends it)",
                "command",
            )
        out.update(resume_fields(body.command["resume"], waiting))
        return out
    out["text"] = input_text(body.input)
    return out


def resume_fields(value: Any, waiting: Any) -> dict[str, Any]:
    """The answer to what the thread waits for: an ``interrupt()`` takes any value; a tool
    approval ``true``/``false`` or ``{"approved": bool, "reason"?: str}``. A value keyed by
    the interrupt's id (``{"<id>": value}``) is that value."""
    if waiting is None:
        raise ApiError(
            409, "not_waiting", "command.resume: the thread waits for nothing", "command"
        )
    if isinstance(value, dict) and list(value) == [waiting.interrupt_id]:
        value = value[waiting.interrupt_id]
    if isinstance(waiting, InterruptRequest):
        return {"resume": {"interrupt_id": waiting.interrupt_id, "value": value}}
    assert isinstance(waiting, ApprovalRequest)
    if isinstance(value, bool):
        return {"approval": {"interrupt_id": waiting.interrupt_id, "approved": value}}
    if isinstance(value, dict) and isinstance(value.get("approved"), bool):
        decision = {"interrupt_id": waiting.interrupt_id, "approved": value["approved"]}
        if isinstance(value.get("reason"), str):
            decision["reason"] = value["reason"]
        return {"approval": decision}
    raise ApiError(
        422,
        "validation_error",
        'command.resume: a tool approval takes true, false or {"approved": bool, "reason"?}',
        "command",
    )


def input_text(data: Any) -> str:
    """The user messages of a run's input (``{"messages": [...]}``: dicts with a ``role``
    or ``type`` of user/human and text ``content``, or strings), joined."""
    if not isinstance(data, dict) or set(data) != {"messages"}:
        raise ApiError(
            422,
            "validation_error",
            'input: {"messages": [...]} (a run hands the graph its user messages; other'
            " state keys are the graph's to set)",
            "input",
        )
    messages = data["messages"]
    if isinstance(messages, dict | str):
        messages = [messages]
    texts: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, str):
            texts.append(message)
            continue
        if not isinstance(message, dict):
            continue
        role = message.get("role", message.get("type"))
        if role not in ("user", "human"):
            raise ApiError(
                422,
                "validation_error",
                f"input.messages: a {role!r} message; a run sends user messages only",
                "input",
            )
        texts.append(content_text(message.get("content")))
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise ApiError(422, "validation_error", "input.messages: no text", "input")
    return text


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text", ""))
            for part in content
            if isinstance(part, str) or (isinstance(part, dict) and part.get("type") == "text")
        )
    return ""
