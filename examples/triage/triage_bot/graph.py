"""The triage bot's graph: ``classify`` (async) -> ``respond`` -> ``summarize``.

Its state has channels beyond ``messages``, persisted by agentworker across turns exactly as
LangGraph's own checkpointers would: the request's ``category`` and ``priority``, a running
``summary`` of what the customer said (its last 600 characters), and ``routing``, the last
ten routing decisions (a reducer of its own). Every channel is bounded, so the bytes a turn
writes stay flat however long the conversation gets.
When a message does not say what it is about, ``classify`` asks with a free-form
``interrupt()``; the answer (typed in the chat, or any JSON value sent as ``resume``) resumes
the same turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import interrupt

from agentworker import BuildContext

CATEGORIES = ("billing", "technical", "account")
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "billing": ("invoice", "bill", "charge", "refund", "payment", "price", "plan"),
    "technical": ("error", "crash", "bug", "slow", "broken", "down", "fail", "login"),
    "account": ("password", "account", "email", "profile", "2fa", "delete my"),
}
_URGENT = re.compile(r"\b(urgent|asap|immediately|outage|down|cannot work)\b", re.I)
QUESTION = "Is this about billing, a technical problem, or your account?"
SUMMARY_LIMIT = 600
ROUTING_KEPT = 10


def last_ten(kept: list[str], new: list[str]) -> list[str]:
    """The routing log's reducer: appends, keeps the last :data:`ROUTING_KEPT` entries."""
    return [*kept, *new][-ROUTING_KEPT:]


class TriageState(MessagesState):
    category: str | None
    priority: str
    summary: str
    routing: Annotated[list[str], last_ten]


def category_of(text: str) -> str | None:
    """The category whose keywords ``text`` mentions most (``None`` when none)."""
    lowered = text.lower()
    scores = {c: sum(k in lowered for k in words) for c, words in _KEYWORDS.items()}
    best = max(scores, key=lambda c: scores[c])
    return best if scores[best] else None


def answer_category(answer: Any) -> str:
    """A category from the answer to :data:`QUESTION`: a text (``"billing"``, ``"it's my
    login"``) or ``{"category": ...}``; ``other`` when it names none."""
    if isinstance(answer, dict):
        answer = answer.get("category", "")
    text = str(answer).strip().lower()
    if text in CATEGORIES:
        return text
    return category_of(text) or "other"


def _new_texts(messages: Sequence[BaseMessage]) -> list[str]:
    """The user messages after the last AI message: what this turn is about."""
    texts: list[str] = []
    for m in reversed(messages):
        if isinstance(m, AIMessage):
            break
        if isinstance(m, HumanMessage):
            texts.insert(0, m.text)
    return texts


def build(ctx: BuildContext) -> StateGraph[TriageState, None, TriageState, TriageState]:
    model = ctx.model
    prompt = ctx.prompt or (
        "You triage support requests. Acknowledge the request in one or two sentences and say"
        " which team takes it; ask for what is missing."
    )

    async def classify(state: TriageState) -> dict[str, Any]:
        text = " ".join(_new_texts(state["messages"]))
        category = category_of(text) or state.get("category")
        how = "keywords"
        if category is None:
            category = answer_category(
                interrupt({"question": QUESTION, "options": list(CATEGORIES)})
            )
            how = "asked"
        priority = "urgent" if _URGENT.search(text) else state.get("priority") or "normal"
        return {"category": category, "priority": priority, "routing": [f"{category}:{how}"]}

    def respond(state: TriageState) -> dict[str, list[AIMessage]]:
        context = SystemMessage(
            f"{prompt}\nCategory: {state['category']}. Priority: {state['priority']}."
            f" Summary so far: {state.get('summary') or '(none)'}"
        )
        reply = model.invoke([context, *state["messages"]])
        team = f"[{state['category']} team, {state['priority']} priority]"
        return {"messages": [AIMessage(f"{team} {reply.text}", id=reply.id)]}

    def summarize(state: TriageState) -> dict[str, str]:
        said = " / ".join(_new_texts(state["messages"][:-1]))
        summary = f"{state.get('summary') or ''} | {said}".strip(" |")
        return {"summary": summary[-SUMMARY_LIMIT:]}

    graph = StateGraph(TriageState)
    graph.add_node("classify", classify)
    graph.add_node("respond", respond)
    graph.add_node("summarize", summarize)
    graph.add_edge(START, "classify")
    graph.add_edge("classify", "respond")
    graph.add_edge("respond", "summarize")
    graph.add_edge("summarize", END)
    return graph
