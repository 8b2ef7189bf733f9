"""FanOutReplySink: every sink gets the payload, whatever another one does."""

from __future__ import annotations

import pytest

from events.outbound import OutboxPayload, Reply, ReplyChunk
from tests.fakes import RecordingSink
from workers.adapters.aws.sinks import FanOutReplySink
from workers.errors import PermanentError, RetryableError

REPLY = Reply(conversation_id="slack:T1:C1:1.0", turn_id="t", text="hi")


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def send(self, payload: OutboxPayload) -> None:
        raise self.exc

    def send_chunk(self, chunk: ReplyChunk) -> None:
        return None


def test_a_sink_that_refuses_for_good_does_not_keep_the_others_from_the_payload() -> None:
    after = RecordingSink()
    with pytest.raises(PermanentError):
        FanOutReplySink([Failing(PermanentError("channel_not_found")), after]).send(REPLY)
    assert after.sent == [REPLY]


def test_a_retryable_failure_wins_over_a_permanent_one() -> None:
    sinks = [Failing(PermanentError("gone")), Failing(RetryableError("throttled"))]
    with pytest.raises(RetryableError):
        FanOutReplySink(sinks).send(REPLY)
