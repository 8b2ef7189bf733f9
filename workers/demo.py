"""``agentworker demo``: a scripted run of the embedded runtime that checks its own outcome.

With the bundled support agent, two conversations: ``demo:alice`` chats, has a ticket opened
(a tool call), asks to close it (a tool needing approval) and approves; ``demo:bob``
double-texts under the ``merge`` policy, so two messages become one turn. With any other
graph (``--graph``), alice sends two messages and answers whatever the graph asks (approves
tool calls, answers ``yes`` to an ``interrupt()``), and bob double-texts as above. Prints a
summary table; exits 1 if anything went wrong.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from events.identity import LOCAL_USER
from events.inbound import ApprovalDecision, InboundMessage, ResumeAnswer
from events.outbound import ApprovalRequest, InterruptRequest
from workers.adapters.local.runtime import EmbeddedRuntime
from workers.agent.app import DEFAULT_GRAPH, graph_ref
from workers.config import Settings
from workers.core.steps import accept_message

LOCAL_CUSTOMER = f"{LOCAL_USER.tenant}/{LOCAL_USER.id}"
"""Whose tickets the demo's conversations open (they are the local user's)."""
ALICE = "demo:alice"
BOB = "demo:bob"


async def _say(rt: EmbeddedRuntime, msg: InboundMessage) -> Any:
    """Send ``msg``, wait for the runs to settle, return the payload answering it."""
    print(f"  {msg.conversation_id} > {msg.text or _decision(msg)}")
    await rt.accept(msg)
    await rt.wait_idle()
    history = await rt.history(msg.conversation_id)
    assert history is not None
    for entry in history.outbox:
        if msg.message_id in entry.payload.in_reply_to:
            text = entry.payload.text
            print(f"  {msg.conversation_id} < {text}")
            return entry.payload
    raise AssertionError(f"no answer to {msg.text!r}")


def _decision(msg: InboundMessage) -> str:
    if msg.resume is not None:
        return f"(answer {msg.resume.value!r})"
    return "(approve)" if msg.approval and msg.approval.approved else "(deny)"


async def run_demo(state_dir: Path | None, *, settings: Settings, tracing: bool = True) -> int:
    from workers.bootstrap import build_embedded

    target = state_dir or Path(tempfile.mkdtemp(prefix="agentworker-demo-"))
    settings = settings.model_copy(update={"state_dir": target, "tracing": tracing, "workers": 2})
    print(
        f"agentworker demo: state in {target} (graph {graph_ref(settings)}, model {settings.model})"
    )
    started = time.perf_counter()
    rt: EmbeddedRuntime = build_embedded(settings)
    await rt.start()
    problems: list[str] = []
    try:
        if graph_ref(settings) == DEFAULT_GRAPH:
            await _support_script(rt, problems)
        else:
            await _any_graph_script(rt, problems)
        await _double_text(rt, problems)
        rows = [_row(rt, cid) for cid in (ALICE, BOB)]
    finally:
        await rt.stop()
    return _report(settings, rows, problems, time.perf_counter() - started, tracing=tracing)


async def _any_graph_script(rt: EmbeddedRuntime, problems: list[str]) -> None:
    """Two messages; whatever the graph asks is approved or answered ``yes``."""
    for text in ("Hello! I need some help.", "Thanks. What happens next?"):
        answer = await _say(rt, InboundMessage(conversation_id=ALICE, text=text))
        for _ in range(5):
            if isinstance(answer, ApprovalRequest):
                decision = ApprovalDecision(interrupt_id=answer.interrupt_id, approved=True)
                msg = InboundMessage(conversation_id=ALICE, kind="approval", approval=decision)
            elif isinstance(answer, InterruptRequest):
                reply = ResumeAnswer(interrupt_id=answer.interrupt_id, value="yes")
                msg = InboundMessage(conversation_id=ALICE, kind="resume", resume=reply)
            else:
                break
            answer = await _say(rt, msg)
        else:
            problems.append(f"{text!r} was still waiting for an answer after 5 answers")


async def _support_script(rt: EmbeddedRuntime, problems: list[str]) -> None:
    """Chat, a ticket opened by a tool, a change that needs approval, approved."""
    await _say(
        rt,
        InboundMessage(conversation_id=ALICE, text="Hello! I need help with my account."),
    )
    opened = await _say(
        rt,
        InboundMessage(
            conversation_id=ALICE,
            text="Please open a ticket about my invoice showing the wrong amount",
        ),
    )
    match = re.search(r"ticket (\d+)", opened.text)
    if match is None:
        problems.append("the ticket was not opened")
        ticket_id = 0
    else:
        ticket_id = int(match.group(1))
    ask = await _say(
        rt,
        InboundMessage(conversation_id=ALICE, text=f"Please close ticket {ticket_id}"),
    )
    if not isinstance(ask, ApprovalRequest):
        problems.append("closing the ticket did not ask for approval")
    else:
        decision = ApprovalDecision(interrupt_id=ask.interrupt_id, approved=True, reason="ok")
        await _say(
            rt,
            InboundMessage(conversation_id=ALICE, kind="approval", approval=decision),
        )
        ticket = rt.tickets.get_ticket(ticket_id, customer=LOCAL_CUSTOMER)
        if ticket is None or ticket.status != "closed":
            problems.append("the approved change was not applied")


async def _double_text(rt: EmbeddedRuntime, problems: list[str]) -> None:
    """Both messages are in the inbox before the run claims them: one turn, one reply."""
    texts = ["How do I reset my password?", "Also, what time is it?"]
    for text in texts:
        print(f"  {BOB} > {text}")
        accept_message(
            rt.deps, InboundMessage(conversation_id=BOB, text=text, policy="merge"), LOCAL_USER
        )
    await rt.wait_idle()
    bob = await rt.history(BOB)
    assert bob is not None
    replies = [e.payload for e in bob.outbox if e.payload.type != "notice"]
    for reply in replies:
        print(f"  {BOB} < {reply.text}")
    if len(replies) != 1 or len(replies[0].in_reply_to) != 2:
        problems.append(f"merge gave {len(replies)} answers, expected one for both messages")


def _report(
    settings: Settings, rows: list[list[str]], problems: list[str], elapsed: float, *, tracing: bool
) -> int:
    header = [
        "conversation",
        "policy",
        "messages",
        "turns",
        "tool calls",
        "approvals",
        "replies",
        "status",
    ]
    if tracing:
        from workers.observability import list_traces

        header.append("traces")
        for row in rows:
            row.append(str(len(list_traces(settings, row[0], limit=100))))
    from workers.tables import text_table

    print()
    print(text_table(header, rows))
    print(f"\n{sum(int(r[3]) for r in rows)} turns in {elapsed:.2f}s")
    if problems:
        for problem in problems:
            print(f"demo FAILED: {problem}", file=sys.stderr)
        return 1
    print("demo ok")
    return 0


def _row(rt: EmbeddedRuntime, cid: str) -> list[str]:
    history = rt.store.history(cid)
    assert history is not None
    log = rt.store.load_log(cid, limit=10_000)
    turns = sum(s.turns for s in rt.completed if s.run.conversation_id == cid)
    return [
        cid,
        history.state.policy,
        str(len(history.inbox)),
        str(turns),
        str(sum(1 for e in log if e.role == "tool")),
        str(sum(1 for e in history.outbox if e.payload.type == "approval_request")),
        str(sum(1 for e in history.outbox if e.payload.type == "reply")),
        history.state.status,
    ]
