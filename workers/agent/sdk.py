"""What an app's graph may use from agentworker; the ``agentworker`` package re-exports it.

- :class:`BuildContext`: what a graph factory (``graph = "pkg.module:build"``) is called with.
- :func:`current_turn`: the turn being run (conversation, consumed messages, base checkpoint).
- :func:`idempotency_key`: a key for a tool's side effect that a retried turn repeats exactly.
- :func:`request_approval`: pause the turn until a human approves or denies a tool call.
- :func:`tool_node`: a graph node that runs the last AI message's tool calls, asking approval
  first for the tools that need it.
- :data:`schedule_followup`: a tool the agent plans its own follow-up with (a message posted
  into the conversation later, which runs it again).
- :func:`set_status`: say what this turn's reply means for the matter (``solved``), which a
  ticket's write-back to the helpdesk reports.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException, tool
from langgraph.types import interrupt
from pydantic import BaseModel, ValidationError

from events.schedules import as_datetime, parse_when
from workers.core.model import Schedule, ToolApproval
from workers.errors import OutsideTurn, PermanentError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from workers.config import Settings
    from workers.core.ports import Clock, TicketStore

__all__ = [
    "BuildContext",
    "Decision",
    "TurnInfo",
    "current_turn",
    "idempotency_key",
    "request_approval",
    "schedule_followup",
    "set_status",
    "tool_node",
]

APPROVAL_TYPE = "tool_approval"
"""``type`` of the value :func:`request_approval` interrupts with."""


@dataclass(frozen=True)
class BuildContext:
    """What a graph factory gets: the configured chat model and settings, and the app
    settings of ``agentworker.toml`` (``None`` where unset: the app picks its default)."""

    model: BaseChatModel
    settings: Settings
    prompt: str | None
    """The system prompt from the ``prompt`` setting (a file), if one is set."""
    approval_tools: frozenset[str] | None
    """The tools that need a human's approval (``approval_tools``), if set."""
    tickets: TicketStore
    """The support-ticket store of this runtime (SQLite embedded, DynamoDB on AWS)."""
    clock: Clock
    app_dir: Path
    """The app's directory (where ``agentworker.toml`` is, else the working directory)."""


class FollowUpPlanner(Protocol):
    """Where :data:`schedule_followup` plans (the runtime's schedules)."""

    def plan(self, conversation_id: str, *, key: str, when: float, text: str) -> Schedule: ...

    @property
    def clock(self) -> Clock: ...


@dataclass
class TurnInfo:
    """The turn being run: readable from any node or tool through :func:`current_turn`."""

    conversation_id: str
    turn_id: str
    channel: str
    message_ids: tuple[str, ...]
    """The inbox messages the turn consumes (for a resume: the answer)."""
    base_checkpoint: str
    """The checkpoint the turn started from (``root`` for a new conversation)."""
    customer: str = ""
    """Who the conversation serves (its tenant and owner): what a tool keeps for them
    (tickets) belongs to them, and another customer's does not exist for it."""
    followups: FollowUpPlanner | None = None
    """Where the agent plans follow-ups (``None``: not served by agentworker)."""
    status: str | None = None
    """What the graph said of the matter this turn (:func:`set_status`)."""
    _occurrences: Counter[str] = field(default_factory=Counter, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def idempotency_key(self, tool: str, args: Mapping[str, Any]) -> str:
        """See :func:`idempotency_key`."""
        canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
        call = f"{tool}\0{canonical}"
        with self._lock:
            position = self._occurrences[call]
            self._occurrences[call] += 1
        material = json.dumps(
            [
                self.conversation_id,
                self.base_checkpoint,
                list(self.message_ids),
                tool,
                canonical,
                position,
            ],
            separators=(",", ":"),
        )
        return "aw1-" + hashlib.sha256(material.encode()).hexdigest()[:40]


_TURN: ContextVar[TurnInfo | None] = ContextVar("agentworker_turn", default=None)


@contextmanager
def bound_turn(info: TurnInfo) -> Iterator[TurnInfo]:
    """Make ``info`` the current turn while the graph runs (the runner does this)."""
    token = _TURN.set(info)
    try:
        yield info
    finally:
        _TURN.reset(token)


_PLAIN_TURNS: dict[tuple[str, str], TurnInfo] = {}
_PLAIN_LIMIT = 1024


def current_turn() -> TurnInfo:
    """The turn being run. Under plain LangGraph (``langgraph dev``, an app's own tests) the
    graph still works: the turn is then the LangGraph thread's current step (the thread is
    the conversation, the step's checkpoint the base). ``OutsideTurn`` outside any graph."""
    info = _TURN.get()
    if info is not None:
        return info
    try:
        from langgraph.config import get_config

        conf = get_config().get("configurable", {})
    except RuntimeError:
        raise OutsideTurn("current_turn() is only available while a graph runs") from None
    thread = str(conf.get("thread_id", ""))
    step = str((conf.get("checkpoint_map") or {}).get("", "") or conf.get("checkpoint_id", ""))
    key = (thread, step)
    found = _PLAIN_TURNS.get(key)
    if found is None:
        if len(_PLAIN_TURNS) >= _PLAIN_LIMIT:
            _PLAIN_TURNS.clear()
        found = _PLAIN_TURNS[key] = TurnInfo(
            thread, step, "langgraph", (), step or "root", customer=f"thread/{thread}"
        )
    return found


def idempotency_key(tool: str, args: Mapping[str, Any]) -> str:
    """A key for the side effect of calling ``tool`` with ``args`` in the current turn.

    It is derived only from what a retry of the turn cannot change: the conversation, the
    checkpoint the turn started from, the inbox messages it consumes, the tool's name, its
    arguments in canonical JSON, and the call's position among identical calls of the turn
    (the first is 0). Never from ids the model generates: a turn retried after a throttle gets
    new tool-call ids but the same keys, so a tool that stores its key with the effect (an
    idempotent write) repeats nothing.
    """
    return current_turn().idempotency_key(tool, args)


@dataclass(frozen=True)
class Decision:
    """A human's answer to :func:`request_approval`."""

    approved: bool
    reason: str = ""


def request_approval(tool: str, args: Mapping[str, Any], text: str | None = None) -> Decision:
    """Pause the turn until a human approves or denies calling ``tool`` with ``args``.

    The conversation shows an approval request (approve/deny buttons in the web page and in
    Slack); the answer arrives as an inbox message and resumes the same turn, where this call
    returns it. Like any ``interrupt()``, the node re-runs from its start on resume: ask every
    approval before doing any side effect.
    """
    question = text or f"Allow {tool}({_shown(args)})?"
    answer = interrupt({"type": APPROVAL_TYPE, "tool": tool, "args": dict(args), "text": question})
    return decision_of(answer)


def decision_of(answer: Any) -> Decision:
    """Read an approval's answer: ``{"approved": bool, "reason": str}`` (what approve/deny
    send), or a bare boolean; anything else is a denial that says why."""
    if isinstance(answer, bool):
        return Decision(answer)
    if isinstance(answer, Mapping) and isinstance(answer.get("approved"), bool):
        return Decision(bool(answer["approved"]), str(answer.get("reason") or ""))
    return Decision(False, f"unrecognised answer {json.dumps(answer, default=str)[:200]}")


def approval_of(value: Any) -> ToolApproval | None:
    """The tool approval an interrupt value asks for (the form of :func:`request_approval`,
    or ``{"tool", "args"[, "text"]}``), else ``None``: any other interrupt."""
    if not isinstance(value, Mapping):
        return None
    tool, args = value.get("tool"), value.get("args")
    shaped = value.get("type") == APPROVAL_TYPE or set(value) <= {"tool", "args", "text"}
    if not shaped or not isinstance(tool, str) or not isinstance(args, Mapping):
        return None
    text = value.get("text")
    return ToolApproval(tool, dict(args), text if isinstance(text, str) else f"Allow {tool}?")


def _shown(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


Question = Callable[[Any], str]
"""Builds an approval's question from a tool's parsed arguments (its ``args_schema``)."""


class ToolNode(Protocol):
    """A graph node that takes the state and the run's config (a LangGraph node signature)."""

    def __call__(self, state: Any, config: RunnableConfig) -> dict[str, list[ToolMessage]]: ...


def tool_node(
    tools: Sequence[BaseTool],
    *,
    approval_tools: Collection[str] = (),
    questions: Mapping[str, Question] | None = None,
) -> ToolNode:
    """A node that runs the tool calls of the last AI message in ``state["messages"]``.

    Tools named in ``approval_tools`` run only once a human approved them: every approval is
    asked (:func:`request_approval`) before any tool runs, because a resumed node re-runs
    from its start. ``questions`` words an approval from the tool's parsed arguments. A
    denied call, an unknown tool, invalid arguments, a ``ToolException`` or a
    ``PermanentError`` become an error result the model can read, not a failed turn.
    """
    by_name = {t.name: t for t in tools}
    needs = frozenset(approval_tools)
    wording = dict(questions or {})

    def run_tools(state: Any, config: RunnableConfig) -> dict[str, list[ToolMessage]]:
        messages: Sequence[BaseMessage] = (
            state["messages"] if isinstance(state, Mapping) else state.messages
        )
        last = messages[-1] if messages else None
        calls = last.tool_calls if isinstance(last, AIMessage) else []
        decisions: dict[str, Decision] = {}
        for call in calls:
            tool = by_name.get(call["name"])
            if tool is None or tool.name not in needs:
                continue
            try:
                question = _question(tool, call["args"], wording.get(tool.name))
            except ValidationError:
                continue  # invalid arguments fail below without asking anyone
            decisions[str(call["id"])] = request_approval(tool.name, call["args"], question)
        return {
            "messages": [
                _run_tool(by_name.get(call["name"]), call, decisions.get(str(call["id"])), config)
                for call in calls
            ]
        }

    return run_tools


def _question(tool: BaseTool, args: dict[str, Any], wording: Question | None) -> str:
    schema = tool.args_schema
    parsed: Any = args
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        parsed = schema.model_validate(args)
    return wording(parsed) if wording is not None else f"Allow {tool.name}({_shown(args)})?"


def _run_tool(
    tool: BaseTool | None, call: Any, decision: Decision | None, config: RunnableConfig
) -> ToolMessage:
    call_id = str(call["id"])
    name = str(call["name"])

    def error(text: str) -> ToolMessage:
        status: Literal["error"] = "error"
        return ToolMessage(text, tool_call_id=call_id, name=name, status=status)

    if tool is None:
        return error(f"Unknown tool {name!r}.")
    if decision is not None and not decision.approved:
        return error(
            f"The user denied this action ({decision.reason or 'no reason given'});"
            " it was not done."
        )
    try:
        result = tool.invoke({**call, "type": "tool_call"}, config)
    except ValidationError as exc:
        return error(f"Invalid arguments: {_first_error(exc)}")
    except (PermanentError, ToolException) as exc:
        return error(str(exc))
    if isinstance(result, ToolMessage):
        return result
    return ToolMessage(str(result), tool_call_id=call_id, name=name)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "arguments"
    return f"{where}: {err['msg']}"


@tool
def schedule_followup(when: str, text: str) -> str:
    """Plan a follow-up in this conversation: at `when`, `text` arrives as a new message and
    you are run again (to check on something later, or remind the user).

    `when`: a relative time ('2h', 'in 30 minutes', '1 day', 'PT2H') or an ISO 8601 time
    with its offset ('2026-12-07T09:00:00+01:00'; without one it is UTC).
    `text`: the message you will get then; say what to check and why.
    """
    turn = current_turn()
    if turn.followups is None:
        raise ToolException("follow-ups can only be planned when agentworker runs this agent")
    if not text.strip():
        raise ToolException("text: say what the follow-up is for")
    now = turn.followups.clock.now()
    try:
        at = parse_when(when, now=now)
    except ValueError as exc:
        raise ToolException(str(exc)) from None
    key = turn.idempotency_key("schedule_followup", {"when": when, "text": text})
    schedule = turn.followups.plan(turn.conversation_id, key=key, when=at, text=text)
    fires = as_datetime(schedule.next_fire)
    shown = fires.isoformat(timespec="seconds") if fires is not None else "now"
    return f"Follow-up {schedule.schedule_id} planned for {shown} (it is now {as_datetime(now)})."


STATUS = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def set_status(status: str) -> None:
    """Say what this turn's reply means for the matter it answers, e.g. ``"solved"`` (a few
    lowercase letters, digits or ``_``): the reply carries it as ``status``, and a ticket's
    conversation (``ticket:<id>``) reports it to the helpdesk as its ``ticket.status``
    instead of ``answered``. The last call of a turn wins. ``ValueError`` for another form."""
    if not STATUS.match(status):
        raise ValueError(f"status: {status[:40]!r} is not a few lowercase letters, digits or _")
    current_turn().status = status
