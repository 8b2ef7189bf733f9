"""``GraphTurnAgent``: the core's ``TurnAgent`` port, running one turn of an app's graph.

The app's ``StateGraph`` is compiled once per process with the :class:`StagedCheckpointSaver`.
A turn stages the conversation's checkpoint, hands the graph the turn's user messages (or
``Command(resume=...)`` for an answer to an ``interrupt()``), drives it until it ends or
interrupts, and returns what the core commits in one fenced write: the new checkpoint, the
new messages for the log, the reply (the text of the last new AI message) or the interrupt
the turn stopped at. Model output streams from whichever node calls a model (LangGraph's
``messages`` stream mode). Graphs with ``async def`` nodes are driven with ``astream`` on the
worker thread's own event loop; others with ``stream``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.errors import GraphRecursionError
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Interrupt, StateSnapshot, StreamMode
from pydantic_core import to_jsonable_python

from events.outbound import GraphStateView, PendingInterruptView
from workers.agent.callbacks import TurnCallbacks
from workers.agent.context import RuntimeContext
from workers.agent.guardrails import model_guardrails
from workers.agent.models import map_model_error, stream_usage_asked
from workers.agent.saver import INTERRUPT, STAGE_KEY, StagedCheckpointSaver
from workers.agent.sdk import FollowUpPlanner, TurnInfo, approval_of, bound_turn
from workers.agent.store import TurnScopedStore
from workers.core.model import (
    CustomData,
    LogEntry,
    MessageStarts,
    NodeUpdate,
    PendingInterrupt,
    StreamPart,
    ToolsStarting,
    TurnOutput,
    TurnRequest,
)
from workers.core.ports import Tracer
from workers.costs import ModelPrice
from workers.errors import AgentWorkerError, ConfigError, PermanentError

RECURSION_LIMIT = 25
"""Graph super-steps per turn (LangGraph's default): stops a tool loop running away."""
REPLY_SEPARATOR = "\n\n"
"""Streamed between the texts of two model calls of one turn."""
_STREAM_MODES: list[StreamMode] = ["updates", "messages", "custom"]
_NO_STREAM: list[StreamMode] = ["updates"]
HANDOFF_MARK = "__is_handoff_back"
"""``response_metadata`` of the messages a supervisor or swarm adds when control goes back
(LangGraph's ``langgraph-supervisor``): bookkeeping no model wrote, neither streamed nor part
of the reply."""


class GraphTurnAgent:
    """Runs one turn of an app's graph from a stored checkpoint blob to a new one."""

    def __init__(
        self,
        graph: StateGraph[Any, Any, Any, Any] | CompiledStateGraph[Any, Any, Any, Any],
        *,
        recursion_limit: int = RECURSION_LIMIT,
        prices: Mapping[str, ModelPrice] | None = None,
        store: BaseStore | None = None,
        context: Mapping[str, Any] | None = None,
        context_from_callers: Collection[str] = (),
        configurable: Mapping[str, Any] | None = None,
        followups: FollowUpPlanner | None = None,
    ) -> None:
        """``graph``: the app's graph, or its compiled graph (whose compile options are kept,
        its checkpointer replaced by ours). ``prices``: USD per 1M tokens by model id
        (default: the built-in table). ``store``: the runtime's long-term memory; a store
        the app compiled its graph with is used instead; without either, an in-memory one.
        The graph sees it scoped to each turn's customer (:class:`TurnScopedStore`).
        ``context``: the app's runtime context values, ``context_from_callers`` the fields
        a turn's messages may add (:class:`RuntimeContext`; ``ConfigError`` for a field the
        app must set and did not); ``configurable``: the app's ``config["configurable"]``
        values, which a turn's messages may extend. ``followups``: where the SDK's
        ``schedule_followup`` plans (without: the tool says it cannot)."""
        self.prices = prices
        self.followups = followups
        self.saver = StagedCheckpointSaver()
        self.serde = JsonPlusSerializer()
        self.recursion_limit = recursion_limit
        self.graph: CompiledStateGraph[Any, Any, Any, Any]
        if isinstance(graph, CompiledStateGraph):
            refuse_own_checkpointer(graph)
            self.store = TurnScopedStore(graph.store or store or InMemoryStore())
            self.graph = graph.copy({"checkpointer": self.saver, "store": self.store})
        else:
            self.store = TurnScopedStore(store or InMemoryStore())
            self.graph = graph.compile(checkpointer=self.saver, store=self.store)
        self.is_async = needs_event_loop(self.graph.builder)
        self.context = RuntimeContext(
            self.graph.builder.context_schema, context or {}, from_callers=context_from_callers
        )
        self.configurable = dict(configurable or {})

    def run_turn(
        self,
        request: TurnRequest,
        *,
        on_chunk: Callable[[StreamPart], None] | None,
        tracer: Tracer,
    ) -> TurnOutput:
        stage = f"{request.conversation_id}#{request.turn_id}"
        history = self.decode_log(request.history)
        self.saver.stage(stage, request.checkpoint, history)
        try:
            before = {m.id for m in self.saver.messages(stage)}
            info = TurnInfo(
                conversation_id=request.conversation_id,
                turn_id=request.turn_id,
                channel=request.channel,
                message_ids=tuple(request.message_ids),
                base_checkpoint=self.saver.checkpoint_id(stage) or "root",
                customer=request.customer,
                followups=self.followups,
            )
            callbacks = TurnCallbacks(tracer, self.prices)
            caller = request.caller
            config: RunnableConfig = {
                "configurable": {
                    **self.configurable,
                    **caller.configurable,
                    "thread_id": request.conversation_id,
                    STAGE_KEY: stage,
                },
                "metadata": dict(caller.metadata),
                "recursion_limit": self.recursion_limit,
                "callbacks": [callbacks],
            }
            context = self.context.for_turn(caller.context)
            collector = _Collector(on_chunk)
            with bound_turn(info), stream_usage_asked():
                self._drive(
                    _graph_input(request), config, context, collector, stream=on_chunk is not None
                )
            output = self._output(
                stage,
                config,
                before=before,
                history=history,
                collector=collector,
                callbacks=callbacks,
            )
            return replace(output, status=info.status)
        finally:
            self.saver.drop(stage)

    # driving the graph -------------------------------------------------------------------

    def _drive(
        self,
        graph_input: Any,
        config: RunnableConfig,
        context: Any,
        collector: _Collector,
        *,
        stream: bool,
    ) -> None:
        # Without a client to stream to, models are called without streaming (not every
        # model or server streams); the reply is then read from the committed messages.
        options: dict[str, Any] = {
            "context": context,
            "stream_mode": _STREAM_MODES if stream else _NO_STREAM,
            "subgraphs": True,
            "durability": "exit",
        }
        try:
            if self.is_async:
                _run_on_thread_loop(self._adrive(graph_input, config, options, collector))
            else:
                for part in self.graph.stream(graph_input, config, **options):
                    collector.feed(part)
        except GraphRecursionError as exc:
            raise PermanentError(
                f"the agent took more than {self.recursion_limit} steps without finishing"
            ) from exc
        except AgentWorkerError:
            raise
        except Exception as exc:
            mapped = map_model_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _adrive(
        self,
        graph_input: Any,
        config: RunnableConfig,
        options: dict[str, Any],
        collector: _Collector,
    ) -> None:
        async for part in self.graph.astream(graph_input, config, **options):
            collector.feed(part)

    # what the turn produced --------------------------------------------------------------

    def _output(
        self,
        stage: str,
        config: RunnableConfig,
        *,
        before: set[str | None],
        history: list[BaseMessage],
        collector: _Collector,
        callbacks: TurnCallbacks,
    ) -> TurnOutput:
        known = before | {m.id for m in history}
        fresh = [m for m in self.saver.messages(stage) if m.id not in known]
        if collector.interrupts:
            pending: PendingInterrupt | None = self._pending(collector.interrupts, config)
        else:
            pending = self._breakpoint(stage) if collector.stopped else None
        logged = {str(m.id): m for m in (*history, *fresh) if m.id}
        return TurnOutput(
            checkpoint=self.saver.export(stage, logged),
            log=[self.encode(m) for m in fresh],
            reply_text=None if pending else collector.reply(fresh),
            interrupt=pending,
            usage=callbacks.usage,
            model_calls=callbacks.model_calls,
            tool_calls=list(callbacks.tool_calls),
            guardrails=model_guardrails(fresh),
            cost=callbacks.cost,
            time_to_first_token_ms=callbacks.time_to_first_token_ms,
            model_throttles=callbacks.model_throttles,
        )

    def _pending(self, interrupts: Sequence[Interrupt], config: RunnableConfig) -> PendingInterrupt:
        """The first pending interrupt (several parallel ones are answered one per turn: the
        resumed turn stops at the next). Its value must be JSON: it is stored and sent."""
        first = interrupts[0]
        try:  # as JSON: what is stored and sent (a tuple becomes a list)
            value = json.loads(json.dumps(first.value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            node = self._interrupting_node(config, first.id)
            raise PermanentError(
                f"node {node!r} called interrupt() with a value that is not JSON: {exc}"
            ) from None
        approval = approval_of(value)
        text = approval.text if approval is not None else interrupt_text(value)
        return PendingInterrupt(first.id, value, text, approval)

    def _breakpoint(self, stage: str) -> PendingInterrupt | None:
        """The static breakpoint the turn stopped at (``interrupt_before``/``after`` of the
        compiled graph): the graph has nodes still to run and no ``interrupt()``. Any answer
        continues it (LangGraph resumes a breakpoint on ``Command(resume=...)`` as on
        ``None``). Its id is the checkpoint's: one per stop."""
        snapshot = self._state(stage)
        if not snapshot.next:
            return None
        checkpoint = snapshot.config.get("configurable", {}).get("checkpoint_id", "")
        nodes = list(snapshot.next)
        value = {"breakpoint": nodes, "question": f"Paused before {', '.join(nodes)}: continue?"}
        return PendingInterrupt(f"breakpoint-{checkpoint}", value, str(value["question"]))

    def _interrupting_node(self, config: RunnableConfig, interrupt_id: str) -> str:
        snapshot = self._state(config["configurable"][STAGE_KEY])
        tasks = list(snapshot.tasks)
        while tasks:
            task = tasks.pop()
            if any(i.id == interrupt_id for i in task.interrupts):
                return task.name
            state = task.state
            if state is not None and not isinstance(state, dict) and hasattr(state, "tasks"):
                tasks.extend(state.tasks)
        return "?"

    def snapshot(
        self, checkpoint: bytes | None, history: Sequence[LogEntry]
    ) -> StateSnapshot | None:
        """The graph's state in ``checkpoint``, ``messages`` resolved against the log window
        ``history`` (what a turn would start from), with its pending interrupts."""
        if checkpoint is None:
            return None
        stage = f"inspect#{uuid.uuid4().hex}"
        self.saver.stage(stage, checkpoint, self.decode_log(history))
        try:
            return self._state(stage)
        finally:
            self.saver.drop(stage)

    def inspect(
        self,
        conversation_id: str,
        checkpoint: bytes | None,
        history: Sequence[LogEntry],
        *,
        with_messages: bool = False,
    ) -> GraphStateView:
        snapshot = self.snapshot(checkpoint, history)
        if snapshot is None:  # a conversation whose graph has not run yet
            return GraphStateView(
                conversation_id=conversation_id,
                checkpoint_id=None,
                values={},
                messages=0,
                next=[],
                interrupts=[],
                message_list=[] if with_messages else None,
            )
        values = dict(snapshot.values)
        messages = values.pop("messages", [])
        dumped = (
            [to_jsonable_python(m.model_dump(), fallback=str) for m in messages]
            if with_messages
            else None
        )
        return GraphStateView(
            conversation_id=conversation_id,
            checkpoint_id=snapshot.config.get("configurable", {}).get("checkpoint_id"),
            values=to_jsonable_python(values, fallback=str),
            messages=len(messages),
            next=list(snapshot.next),
            interrupts=[
                PendingInterruptView(
                    interrupt_id=i.id, value=to_jsonable_python(i.value, fallback=str)
                )
                for i in snapshot.interrupts
            ],
            message_list=dumped,
        )

    def _state(self, stage: str) -> StateSnapshot:
        # The stage as the thread: get_state builds its subgraphs' configs from the thread
        # alone, without the rest of ours.
        return self.graph.get_state({"configurable": {"thread_id": stage}}, subgraphs=True)

    # the message log ---------------------------------------------------------------------

    def encode(self, message: BaseMessage) -> LogEntry:
        kind, data = self.serde.dumps_typed(message)
        return LogEntry(
            message_id=str(message.id), role=message.type, data=kind.encode() + b"\0" + data
        )

    def decode_log(self, entries: Sequence[LogEntry]) -> list[BaseMessage]:
        messages: list[BaseMessage] = []
        for entry in entries:
            kind, _, data = entry.data.partition(b"\0")
            messages.append(self.serde.loads_typed((kind.decode(), data)))
        return messages


def _graph_input(request: TurnRequest) -> Any:
    """The turn's user messages (each with its inbox message's id), or the answer that
    resumes the interrupt the last turn stopped at."""
    if request.resume is not None:
        return Command(resume={request.resume.interrupt_id: request.resume.value})
    return {"messages": [HumanMessage(i.text, id=i.message_id) for i in request.inputs]}


def interrupt_text(value: Any) -> str:
    """An interrupt's value as text, for channels that show only text: a string as is, else
    its ``question``, ``text``, ``prompt`` or ``message`` field, else the JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("question", "text", "prompt", "message"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return json.dumps(value, default=str)[:2000]


def _tools_asked(update: dict[str, Any]) -> tuple[str, ...]:
    """The tools the AI messages of a step's update ask for (what the graph runs next)."""
    names: list[str] = []
    for written in update.values():
        messages = written.get("messages") if isinstance(written, dict) else None
        if isinstance(messages, BaseMessage):
            messages = [messages]
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, AIMessage) and not _handoff(message):
                names.extend(str(call["name"]) for call in message.tool_calls)
    return tuple(dict.fromkeys(names))


class _Collector:
    """Reads the parts of ``stream(..., subgraphs=True)``: the interrupts (root ``updates``),
    the AI messages' text (``messages``, of every namespace, in the order they come: a
    model's tokens, or the whole text of a message a node wrote) and the app's own stream
    (``custom``, from ``get_stream_writer()``), forwarded to ``on_chunk`` as they come.

    What streams is what the turn replies (:meth:`reply`): the AI messages' texts in the
    order they streamed, joined by :data:`REPLY_SEPARATOR` (a supervisor's expert and the
    supervisor both speak in it, as they streamed), whether or not a client is streamed to.
    A handoff's bookkeeping message (:data:`HANDOFF_MARK`) is neither."""

    def __init__(self, on_chunk: Callable[[StreamPart], None] | None) -> None:
        self.interrupts: list[Interrupt] = []
        self.stopped = False
        """The graph stopped before its end: an ``interrupt()`` or a static breakpoint."""
        self._on_chunk = on_chunk
        self._order: list[str | None] = []
        """The AI messages with text, in the order they streamed."""
        self._texts: dict[str | None, str] = {}

    def reply(self, committed: Sequence[BaseMessage]) -> str | None:
        """The texts of the AI messages that streamed, in the order they did, joined: each
        as the turn committed it when it is in the graph's state (a node may rewrite a
        message after it streamed: the reply supersedes the chunks), else as it streamed
        (a subgraph's message its parent does not keep). Nothing streamed (no client
        streams, or no model did): the texts of the turn's new AI messages in the state, in
        order. ``None``: none had text."""
        final = {m.id: m.text for m in committed if isinstance(m, AIMessage) and not _handoff(m)}
        if self._order:
            texts = [final.get(i, self._texts[i]) for i in self._order]
        else:
            texts = list(final.values())
        return REPLY_SEPARATOR.join(t for t in texts if t) or None

    def feed(self, part: Any) -> None:
        namespace, mode, payload = part
        if mode == "messages":
            message, meta = payload
            self._message(message, meta.get("langgraph_node") if isinstance(meta, dict) else None)
        elif mode == "custom":
            if self._on_chunk is not None:
                self._on_chunk(CustomData(to_jsonable_python(payload, fallback=str)))
        elif mode == "updates" and isinstance(payload, dict):
            if not namespace and INTERRUPT in payload:
                self.stopped = True
                self.interrupts.extend(payload[INTERRUPT] or ())
            if self._on_chunk is None:
                return
            if not namespace:  # the root graph's nodes (a subgraph's show in its node's)
                for node, update in payload.items():
                    if node != INTERRUPT:
                        self._on_chunk(NodeUpdate(node, to_jsonable_python(update, fallback=str)))
            if tools := _tools_asked(payload):
                self._on_chunk(ToolsStarting(tools))

    def _message(self, message: BaseMessage, node: str | None) -> None:
        if _handoff(message):
            return
        if isinstance(message, AIMessageChunk):
            self._emit(message.id, message.text, node)
        elif isinstance(message, AIMessage) and message.id not in self._texts:
            self._emit(message.id, message.text, node)  # a node's message that did not stream

    def _emit(self, message_id: str | None, text: str, node: str | None) -> None:
        if not text:
            return
        if message_id not in self._texts:
            if self._on_chunk is not None:
                if self._order:
                    self._on_chunk(MessageStarts(None))
                    self._on_chunk(REPLY_SEPARATOR)
                self._on_chunk(MessageStarts(message_id, node))
            self._order.append(message_id)
            self._texts[message_id] = ""
        self._texts[message_id] += text
        if self._on_chunk is not None:
            self._on_chunk(text)


def _handoff(message: BaseMessage) -> bool:
    return bool(message.response_metadata.get(HANDOFF_MARK))


def refuse_own_checkpointer(graph: CompiledStateGraph[Any, Any, Any, Any]) -> None:
    """A graph compiled with a checkpointer that keeps state elsewhere (a database saver)
    cannot be honoured: agentworker keeps each conversation's state itself, committed with
    the turn. LangGraph's in-memory savers (compiled for the app's own tests) are replaced."""
    saver = graph.checkpointer
    if saver is None or isinstance(saver, bool | InMemorySaver):
        return
    raise ConfigError(
        f"the graph is compiled with checkpointer={type(saver).__name__}: agentworker keeps"
        " each conversation's state itself (committed with its turn), so it cannot use"
        " another; compile the graph without a checkpointer"
    )


def needs_event_loop(graph: StateGraph[Any, Any, Any, Any]) -> bool:
    """Whether any node of ``graph`` or of its subgraphs runs only on an event loop: an
    ``async def`` node, or a tool node with an ``async def`` tool (``ToolNode`` has a sync
    path, which such a tool refuses). The graph is then driven with ``astream``."""
    builders = [graph]
    while builders:
        builder = builders.pop()
        for spec in builder.nodes.values():
            runnable = spec.runnable
            if isinstance(runnable, CompiledStateGraph):
                builders.append(runnable.builder)
            elif _async_only_node(runnable) or any(_async_only(t) for t in _tools_of(runnable)):
                return True
    return False


def _async_only_node(runnable: Any) -> bool:
    return getattr(runnable, "func", True) is None and bool(getattr(runnable, "afunc", None))


def _tools_of(runnable: Any) -> list[Any]:
    tools = getattr(runnable, "tools_by_name", None)
    return list(tools.values()) if isinstance(tools, dict) else []


def _async_only(tool: Any) -> bool:
    return getattr(tool, "func", True) is None and getattr(tool, "coroutine", None) is not None


_LOCAL = threading.local()


def _run_on_thread_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` on this worker thread's event loop (one per thread, kept: a new
    loop per turn would cost more than the turn's own overhead)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_LOCAL, "loop", None)
    if loop is None or loop.is_closed():
        loop = _LOCAL.loop = asyncio.new_event_loop()
    loop.run_until_complete(coroutine)
