"""``give_feedback``: a rating reaches the tracer on the turn that wrote the reply, only for
a principal who may use the conversation and only for a reply with a turn."""

from __future__ import annotations

from typing import Any

import pytest

from events.identity import LOCAL_USER, Principal
from events.inbound import InboundMessage
from events.outbound import ApprovalRequest, Notice, Reply
from tests.fakes import (
    InMemoryConversationStore,
    ManualClock,
    RecordingSink,
    RecordingStarter,
    ScriptedAgent,
)
from workers.core.feedback import FEEDBACK_NAME, MAX_COMMENT_CHARS, give_feedback
from workers.core.ports import Feedback, NullTracer
from workers.core.steps import Deps, accept_message, drive_run
from workers.errors import BadInput, NotFound

CID = "ws:alice:chat1"
ALICE = Principal(id="alice", tenant="acme")


class FeedbackRecorder(NullTracer):
    def __init__(self) -> None:
        self.given: list[tuple[str, Feedback]] = []
        self.turn_ids: list[str] = []

    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Any:
        self.turn_ids.append(tags["turn_id"])
        return super().turn(name, tags=tags, inputs=inputs)

    def feedback(self, turn_id: str, feedback: Feedback) -> None:
        self.given.append((turn_id, feedback))


def world() -> tuple[Deps, FeedbackRecorder, RecordingSink]:
    tracer, sink = FeedbackRecorder(), RecordingSink()
    deps = Deps(
        store=InMemoryConversationStore(),
        agent=ScriptedAgent(),
        sink=sink,
        starter=RecordingStarter(),
        clock=ManualClock(),
        tracer=tracer,
    )
    return deps, tracer, sink


def converse(deps: Deps, text: str, principal: Principal = ALICE, **kw: Any) -> None:
    accept_message(deps, InboundMessage(conversation_id=CID, text=text, **kw), principal)
    starter = deps.starter
    assert isinstance(starter, RecordingStarter)
    while starter.runs:
        drive_run(deps, starter.runs.pop(0))


def test_a_rating_lands_on_the_trace_of_the_turn_that_wrote_the_reply() -> None:
    deps, tracer, sink = world()
    converse(deps, "first")
    converse(deps, "second")
    first, second = sink.sent
    assert isinstance(first, Reply) and isinstance(second, Reply)
    given = give_feedback(deps, ALICE, CID, reply_id=first.reply_id, score=-1, comment="wrong")
    assert tracer.given == [(first.turn_id, given)]
    assert first.turn_id == tracer.turn_ids[0] != second.turn_id
    assert given == Feedback(
        name=FEEDBACK_NAME,
        value=-1,
        source_id="alice",
        rationale="wrong",
        reply_id=first.reply_id,
        conversation_id=CID,
    )
    give_feedback(deps, ALICE, CID, reply_id=second.reply_id, score=1)
    assert tracer.given[-1][0] == second.turn_id
    assert tracer.given[-1][1].rationale is None and tracer.given[-1][1].value == 1


def test_an_approval_request_can_be_rated_too() -> None:
    deps, tracer, sink = world()
    converse(deps, "approve-me")
    [request] = sink.sent
    assert isinstance(request, ApprovalRequest)
    give_feedback(deps, ALICE, CID, reply_id=request.reply_id, score=-1)
    assert tracer.given[0][0] == request.turn_id


def test_someone_elses_conversation_is_not_found_and_nothing_is_recorded() -> None:
    deps, tracer, sink = world()
    converse(deps, "mine")
    reply_id = sink.sent[0].reply_id
    for stranger in (Principal(id="bob", tenant="acme"), Principal(id="alice", tenant="evil")):
        with pytest.raises(NotFound) as err:
            give_feedback(deps, stranger, CID, reply_id=reply_id, score=1)
        assert err.value.field == "conversation_id"
    with pytest.raises(NotFound):
        give_feedback(deps, ALICE, "ws:nobody:1", reply_id=reply_id, score=1)
    assert tracer.given == []


def test_an_unknown_reply_or_one_of_another_conversation_is_not_found() -> None:
    deps, tracer, sink = world()
    converse(deps, "here")
    accept_message(deps, InboundMessage(conversation_id="ws:alice:other", text="x"), ALICE)
    starter = deps.starter
    assert isinstance(starter, RecordingStarter)
    drive_run(deps, starter.runs.pop(0))
    elsewhere = sink.sent[-1]
    assert elsewhere.conversation_id == "ws:alice:other"
    for reply_id in ("no-such-reply", elsewhere.reply_id):
        with pytest.raises(NotFound) as err:
            give_feedback(deps, ALICE, CID, reply_id=reply_id, score=1)
        assert err.value.field == "reply_id"
    assert tracer.given == []


def test_a_notice_has_no_turn_to_rate() -> None:
    deps, tracer, sink = world()
    accept_message(deps, InboundMessage(conversation_id=CID, text="a", policy="reject"), ALICE)
    accept_message(deps, InboundMessage(conversation_id=CID, text="b"), ALICE)  # rejected
    starter = deps.starter
    assert isinstance(starter, RecordingStarter)
    drive_run(deps, starter.runs.pop(0))
    notices = [p for p in sink.sent if isinstance(p, Notice)]
    assert notices
    with pytest.raises(NotFound) as err:
        give_feedback(deps, ALICE, CID, reply_id=notices[0].reply_id, score=-1)
    assert err.value.field == "reply_id"
    assert tracer.given == []


@pytest.mark.parametrize(
    ("score", "comment", "field"),
    [
        (0, None, "score"),
        (2, None, "score"),
        (True, None, "score"),
        (-1, "x" * (MAX_COMMENT_CHARS + 1), "comment"),
    ],
)
def test_a_score_or_comment_out_of_bounds_is_refused(score: Any, comment: Any, field: str) -> None:
    deps, tracer, sink = world()
    converse(deps, "hi", LOCAL_USER)
    with pytest.raises(BadInput) as err:
        give_feedback(
            deps, LOCAL_USER, CID, reply_id=sink.sent[0].reply_id, score=score, comment=comment
        )
    assert err.value.code == "validation_error" and err.value.field == field
    assert tracer.given == []
