"""A user's thumbs up or down on a reply, recorded on the trace of the turn that wrote it.

Both runtimes call :func:`give_feedback` (the embedded server's ``POST .../feedback`` and
WebSocket action ``feedback``; the AWS ``feedback`` function's HTTP and WebSocket routes).
"""

from __future__ import annotations

import logging

from events.identity import Principal
from events.outbound import OutboxPayload
from workers.core.ports import Feedback
from workers.core.steps import Deps, history, spend_quotas
from workers.errors import BadInput, NotFound

log = logging.getLogger(__name__)

FEEDBACK_NAME = "user_feedback"
"""The name of the assessment a rating becomes on the trace."""
SCORES = (1, -1)
"""Thumbs up, thumbs down."""
MAX_COMMENT_CHARS = 2000


def give_feedback(
    deps: Deps,
    principal: Principal,
    conversation_id: str,
    *,
    reply_id: str,
    score: int,
    comment: str | None = None,
    withdrawn: bool = False,
) -> Feedback:
    """Record ``principal``'s rating (``score`` 1 or -1, an optional ``comment``) of the
    reply ``reply_id`` of the conversation: as the assessment ``user_feedback`` on the trace
    of the turn that wrote it, with the principal as its source. What was handed to the
    tracer is returned (the comment is redacted by the tracer, when redaction is on).

    A rating is a write like a message: it spends one of the principal's messages per
    minute and its comment's bytes of the daily quota (``Throttled`` past them).
    ``NotFound`` for a conversation the principal may not use (as if it did not exist), and
    for a reply id that is not one of its replies, approval requests or interrupts: a notice
    (a rejected double-text, a failure) has no turn to rate. ``BadInput``
    (``validation_error``) for a score or comment out of bounds. The reply is looked up in
    the conversation's history (one read of its inbox and outbox: fine at the rate people
    click, linear in the conversation's length). Several ratings of one reply are several
    assessments: the latest is the user's current opinion. ``withdrawn``: the principal
    takes back their rating ``score`` of the reply (a Slack reaction removed): its
    assessments are deleted from the trace, checked and counted like a rating."""
    if type(score) is not int or score not in SCORES:
        raise BadInput("validation_error", "score: must be 1 or -1", field="score")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise BadInput(
            "validation_error",
            f"comment: at most {MAX_COMMENT_CHARS} characters",
            field="comment",
        )
    found = history(deps, conversation_id, principal)
    if found is None:
        raise NotFound.conversation(conversation_id)
    comment_bytes = len((comment or "").encode("utf-8", "surrogatepass"))
    spend_quotas(deps, principal, messages=1, size=comment_bytes)
    turn_id = _turn_of(reply_id, [e.payload for e in found.outbox])
    if turn_id is None:
        raise NotFound(
            f"reply_id: no reply {reply_id!r} with a turn to rate in conversation"
            f" {conversation_id!r}",
            field="reply_id",
        )
    feedback = Feedback(
        name=FEEDBACK_NAME,
        value=score,
        source_id=principal.id,
        rationale=comment or None,
        reply_id=reply_id,
        conversation_id=conversation_id,
        withdrawn=withdrawn,
    )
    deps.tracer.feedback(turn_id, feedback)
    what = "withdrawn" if withdrawn else "on"
    log.info(
        "feedback %+d %s reply %s (turn %s) of %s", score, what, reply_id, turn_id, conversation_id
    )
    return feedback


def _turn_of(reply_id: str, payloads: list[OutboxPayload]) -> str | None:
    """The turn that wrote the payload ``reply_id``; ``None`` if none did (no such payload,
    or a notice)."""
    for payload in payloads:
        if payload.reply_id == reply_id:
            return getattr(payload, "turn_id", None) or None
    return None
