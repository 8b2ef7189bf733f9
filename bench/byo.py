"""Bring your own graph: an app's graph under agentworker beside the same graph under plain
LangGraph with ``SqliteSaver``, as its conversation grows.

Two graphs, each run turn after turn in one conversation, sampled at ``points`` (the
``window`` turns ending at each), with the storage section's meter (``bench/storage.py``):

* ``one-node``: a user graph of one node answering from its state (``MessagesState``, no
  model call): what agentworker adds per turn, with the model out of the picture;
* ``triage``: the custom-state example (``examples/triage``: a summary, a category, a
  priority and a bounded routing list beside ``messages``, an async node; the offline
  model), whose bytes per turn must stay flat.

Each graph runs three ways: agentworker with a user's defaults (tracing to MLflow in SQLite,
streaming on), agentworker with tracing off, and plain LangGraph (``SqliteSaver``, same
graph, same messages); a graph that runs on ``stream`` a fourth: with the defaults, but
driven with ``astream`` as a graph with an async-only node or tool is (what the event loop
costs per turn). Ours goes through the core (``accept_message`` + ``drive_run``, the
real ``SqliteConversationStore``): the inbox, the lease, one fenced commit, the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import START, MessagesState, StateGraph

from bench.common import DiscardSink, RecordingStarter, fmt, human_bytes, progress, render_table
from bench.storage import Side, StorageConfig, run_side
from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from workers.adapters.clock import SystemClock
from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.agent.offline import OfflineChatModel
from workers.agent.runner import GraphTurnAgent, needs_event_loop
from workers.agent.sdk import BuildContext
from workers.bootstrap import build_tracer, turn_settings
from workers.config import load_settings
from workers.core.steps import Deps, accept_message, drive_run

GraphFactory = Callable[[BuildContext], StateGraph[Any, Any, Any, Any]]


def one_node_graph(ctx: BuildContext) -> StateGraph[Any, Any, Any, Any]:
    """One node, no model: it answers with the number of messages it sees."""

    def answer(state: MessagesState) -> dict[str, list[AIMessage]]:
        return {"messages": [AIMessage(f"seen {len(state['messages'])} messages")]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    return graph


def triage_graph(ctx: BuildContext) -> StateGraph[Any, Any, Any, Any]:
    from triage_bot.graph import build

    return build(ctx)


def _context(tmp: Path) -> BuildContext:
    """What a factory gets, as ``agentworker serve`` builds it (the offline model)."""
    return BuildContext(
        model=OfflineChatModel(),
        settings=load_settings(state_dir=tmp),
        prompt=None,
        approval_tools=None,
        tickets=SqliteTicketStore(SqliteDatabase(tmp / "tickets.db")),
        clock=SystemClock(),
        app_dir=tmp,
    )


def triage_text(turn: int) -> str:
    """Classified by keywords (no question asked): every turn is a plain turn."""
    return f"my invoice {turn} shows the wrong amount, urgent"


GRAPHS: dict[str, tuple[GraphFactory, Callable[[int], str]]] = {
    "one-node": (one_node_graph, lambda turn: f"message {turn}"),
    "triage": (triage_graph, triage_text),
}


def _ours(tmp: Path, name: str, *, tracing: bool, astream: bool = False) -> Side:
    """Ours; ``astream``: a graph that would run on ``stream`` driven with ``astream``
    instead, as a graph with an async-only node or tool is (the cost of the event loop)."""
    factory, text = GRAPHS[name]
    settings = load_settings(state_dir=tmp, tracing=tracing)
    path = tmp / "agentworker.db"
    store = SqliteConversationStore(path)
    starter = RecordingStarter()
    agent = GraphTurnAgent(factory(_context(tmp)))
    agent.is_async = agent.is_async or astream
    deps = Deps(
        store,
        agent,
        DiscardSink(),
        starter,
        SystemClock(),
        build_tracer(settings),
        settings=dataclasses.replace(turn_settings(settings), stream=True),
    )
    cid = f"byo-{name}"

    def do_turn(turn: int) -> None:
        accept_message(deps, InboundMessage(conversation_id=cid, text=text(turn)), LOCAL_USER)
        summary = drive_run(deps, starter.take())
        if summary.outcomes != ["replied"]:
            raise RuntimeError(f"unexpected run summary: {summary}")

    def close() -> None:
        deps.tracer.flush()
        store.close()

    def last_checkpoint() -> int | None:
        blob = store.load_checkpoint(cid)
        return None if blob is None else len(blob)

    if astream:
        label, key = "agentworker, defaults, driven with astream", "ours-astream"
    elif tracing:
        label, key = "agentworker, defaults (tracing on)", "ours"
    else:
        label, key = "agentworker, tracing off", "ours-notrace"
    return Side(key, label, path, do_turn, close, last_checkpoint)


def _plain(tmp: Path, name: str) -> Side:
    """The same graph under plain LangGraph: ``SqliteSaver`` with ``invoke``, or, for a
    graph with ``async def`` nodes (which only ``ainvoke`` runs), ``AsyncSqliteSaver`` on an
    event loop of its own, as LangGraph documents."""
    factory, text = GRAPHS[name]
    path = tmp / "plain-sqlitesaver.db"
    graph_def = factory(_context(tmp))
    config: Any = {"configurable": {"thread_id": f"byo-{name}"}}
    if not needs_event_loop(graph_def):
        conn = sqlite3.connect(path, check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()
        conn.execute("PRAGMA synchronous=NORMAL")
        graph = graph_def.compile(checkpointer=saver)

        def do_turn(turn: int) -> None:
            graph.invoke({"messages": [HumanMessage(text(turn))]}, config)

        return Side("plain", PLAIN, path, do_turn, conn.close, _last_checkpoint(path))
    loop = asyncio.new_event_loop()

    async def open_saver() -> tuple[aiosqlite.Connection, AsyncSqliteSaver]:
        connection = await aiosqlite.connect(path)
        saver = AsyncSqliteSaver(connection)  # binds to the running loop
        await saver.setup()
        await connection.execute("PRAGMA synchronous=NORMAL")
        return connection, saver

    aconn, asaver = loop.run_until_complete(open_saver())
    agraph = graph_def.compile(checkpointer=asaver)

    def ado_turn(turn: int) -> None:
        loop.run_until_complete(agraph.ainvoke({"messages": [HumanMessage(text(turn))]}, config))

    def close() -> None:
        loop.run_until_complete(aconn.close())
        loop.close()

    label = PLAIN.replace("SqliteSaver", "AsyncSqliteSaver")
    return Side("plain", label, path, ado_turn, close, _last_checkpoint(path))


PLAIN = "plain LangGraph SqliteSaver"


def _last_checkpoint(path: Path) -> Callable[[], int | None]:
    def last() -> int | None:
        with sqlite3.connect(path) as conn:
            row = conn.execute(
                "SELECT length(checkpoint) FROM checkpoints ORDER BY rowid DESC LIMIT 1"
            ).fetchone()
        return None if row is None else int(row[0])

    return last


def run(tmp: Path, cfg: StorageConfig, graphs: tuple[str, ...] = tuple(GRAPHS)) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {"points": list(cfg.points), "window": cfg.window}}
    for name in graphs:
        sides = []
        factory, _ = GRAPHS[name]
        sync = not needs_event_loop(factory(_context(tmp)))
        variants = ("ours-astream", "ours") if sync else ("ours",)
        for variant in (*variants, "ours-notrace", "plain"):
            directory = tmp / f"byo-{name}-{variant}"
            directory.mkdir()
            progress(f"byo ({name}, {variant}): {max(cfg.points)} turns")
            if variant == "plain":
                side = _plain(directory, name)
                sides.append(run_side(side, cfg, cfg.baseline_budget_s, section=f"byo {name}"))
            else:
                tracing = variant != "ours-notrace"
                side = _ours(directory, name, tracing=tracing, astream=variant == "ours-astream")
                sides.append(run_side(side, cfg, None, section=f"byo {name}"))
        out[name] = sides
    return out


def render(section: dict[str, Any]) -> str:
    points = section["config"]["points"]
    parts = []
    for name in (n for n in GRAPHS if n in section):
        header = ["variant"]
        header += [f"turn {p} ms p50" for p in points]
        header += [f"turn {p} bytes/turn" for p in points]
        rows = []
        for side in section[name]:
            by_point = {p["point"]: p for p in side["points"]}
            cells = [side["label"] + (" (stopped early)" if side["stopped_early"] else "")]
            cells += [fmt(by_point.get(p, {}).get("latency_ms_p50")) for p in points]
            cells += [
                human_bytes(by_point.get(p, {}).get("logical_growth_bytes_per_turn"))
                if by_point.get(p, {}).get("measured_turns")
                else "n/a"
                for p in points
            ]
            rows.append(cells)
        title = (
            f"Bring your own graph: {name} ({GRAPHS_DOC[name]}), per turn as the"
            " conversation grows (latency: median of the window ending at the point; bytes:"
            " logical growth of the database)"
        )
        parts.append(render_table(title, header, rows))
    return "\n\n".join(parts)


GRAPHS_DOC = {
    "one-node": "one node, no model: the worker's own cost",
    "triage": "the custom-state example with the offline model",
}
