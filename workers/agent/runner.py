"""``LangGraphTurnAgent``: the core's ``TurnAgent`` port implemented with the agent graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.types import Command, Interrupt

from workers.agent.graph import AgentState, TurnContext, build_graph
from workers.agent.graph import reply_text as joined_reply
from workers.agent.saver import STAGE_KEY, StagedCheckpointSaver
from workers.agent.tools.base import ToolSpec
from workers.core.model import LogEntry, PendingApproval, TurnOutput, TurnRequest
from workers.core.ports import Clock, TicketStore, Tracer

MAX_STEPS = 24
"""Graph super-steps per turn (model/tool rounds): stops a tool loop running away."""


class LangGraphTurnAgent:
    """Runs one turn of the agent graph from a stored checkpoint blob to a new one."""

    def __init__(
        self,
        model: BaseChatModel,
        tools: Sequence[ToolSpec],
        *,
        system_prompt: str,
        approval_tools: frozenset[str],
        tickets: TicketStore,
        clock: Clock,
    ) -> None:
        self.saver = StagedCheckpointSaver()
        self.serde = JsonPlusSerializer()
        self.tickets = tickets
        self.clock = clock
        self.tools = {t.name: t for t in tools}
        self.graph = build_graph(
            model,
            tools,
            system_prompt=system_prompt,
            approval_tools=approval_tools,
            checkpointer=self.saver,
        )

    def run_turn(
        self,
        request: TurnRequest,
        *,
        on_chunk: Callable[[str], None] | None,
        tracer: Tracer,
    ) -> TurnOutput:
        stage = f"{request.conversation_id}#{request.turn_id}"
        self.saver.stage(stage, request.checkpoint)
        try:
            logged = self.saver.message_ids(stage)
            base = self.saver.get_tuple(self._config(request, stage))
            base_id = base.config["configurable"]["checkpoint_id"] if base else "root"
            ctx = TurnContext(
                conversation_id=request.conversation_id,
                turn_key=f"{request.conversation_id}:{base_id}",
                history=self.decode_log(request.history),
                tickets=self.tickets,
                clock=self.clock,
                tracer=tracer,
                on_chunk=on_chunk,
            )
            result = self.graph.invoke(
                self._input(request),
                self._config(request, stage),
                context=ctx,
                durability="exit",
            )
            return self._output(request, stage, result, ctx, logged)
        finally:
            self.saver.drop(stage)

    def _config(self, request: TurnRequest, stage: str) -> Any:
        return {
            "configurable": {"thread_id": request.conversation_id, STAGE_KEY: stage},
            "recursion_limit": MAX_STEPS,
        }

    @staticmethod
    def _input(request: TurnRequest) -> AgentState | Command[Any]:
        if request.resume is not None:
            decision = {"approved": request.resume.approved, "reason": request.resume.reason}
            return Command(resume=decision)
        text = "\n\n".join(request.texts)
        # Only the current turn lives in the checkpoint: earlier turns are in the log.
        fresh: list[Any] = [
            RemoveMessage(id=REMOVE_ALL_MESSAGES),
            HumanMessage(text, id=f"{request.turn_id}-user"),
        ]
        return {"messages": fresh}

    def _output(
        self,
        request: TurnRequest,
        stage: str,
        result: dict[str, Any],
        ctx: TurnContext,
        logged: set[str],
    ) -> TurnOutput:
        messages: list[BaseMessage] = result.get("messages", [])
        fresh = [m for m in messages if m.id not in logged]
        interrupts: list[Interrupt] = result.get("__interrupt__", [])
        approval = None
        reply_text = None
        if interrupts:
            first = interrupts[0]
            value = first.value if isinstance(first.value, dict) else {}
            approval = PendingApproval(
                interrupt_id=first.id,
                tool=str(value.get("tool", "")),
                args=dict(value.get("args", {})),
                text=str(value.get("text", "Approve this action?")),
            )
        elif messages and isinstance(messages[-1], AIMessage):
            reply_text = joined_reply(fresh)
        return TurnOutput(
            checkpoint=self.saver.export(stage),
            log=[self.encode(m) for m in fresh],
            reply_text=reply_text,
            approval=approval,
            usage=ctx.usage,
            model_calls=ctx.model_calls,
            tool_calls=list(ctx.tool_calls),
        )

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
        # A window may start mid-turn: begin at a user message so no tool result is orphaned.
        for i, m in enumerate(messages):
            if isinstance(m, HumanMessage):
                return messages[i:]
        return []
