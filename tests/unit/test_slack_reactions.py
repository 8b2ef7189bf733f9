"""A :+1: or :-1: on one of the app's replies in Slack is the member's rating of that reply
(as ``POST .../feedback`` records it); removing it withdraws it. The reply is found from the
reacted-to message's metadata, never from anything the event itself claims."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from events.identity import Principal
from workers.adapters import slack_events as slack
from workers.adapters.slack_stream import reply_metadata
from workers.errors import NotFound, Throttled

CID = "slack:T1:C1:100.1"


class Web:
    """``conversations.replies`` answering with the thread Slack would show."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def try_call(self, method: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.calls.append((method, body))
        return {"ok": True, "messages": self.messages}


class Ratings:
    def __init__(self, refuse: Exception | None = None) -> None:
        self.given: list[tuple[str, Principal, dict[str, Any]]] = []
        self.refuse = refuse

    async def __call__(self, conversation_id: str, principal: Principal, **kw: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.given.append((conversation_id, principal, kw))


def event(
    kind: str = "reaction_added", reaction: str = "+1", ts: str = "200.2", **item: Any
) -> dict[str, Any]:
    return {
        "type": "event_callback",
        "team_id": "T1",
        "event": {
            "type": kind,
            "user": "U7",
            "reaction": reaction,
            "item_user": "UBOT",
            "item": {"type": "message", "channel": "C1", "ts": ts, **item},
        },
    }


def thread(metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    parent = {"ts": "100.1", "text": "help", "user": "U7"}
    reply: dict[str, Any] = {"ts": "200.2", "text": "Done.", "bot_id": "B1"}
    if metadata is not None:
        reply["metadata"] = metadata
    return [parent, reply]


def answer(data: dict[str, Any], web: Web, ratings: Ratings | None) -> slack.SlackAnswer:
    parsed = slack.read_event(data)

    async def never(*args: Any, **kw: Any) -> Any:
        raise AssertionError("a reaction is not a message")

    app = slack.SlackApp(web)  # type: ignore[arg-type]
    return asyncio.run(slack.answer(parsed, never, app, ratings))


@pytest.mark.parametrize(
    ("kind", "reaction", "score", "withdrawn"),
    [
        ("reaction_added", "+1", 1, False),
        ("reaction_added", "thumbsup", 1, False),
        ("reaction_added", "-1::skin-tone-3", -1, False),
        ("reaction_removed", "thumbsdown", -1, True),
    ],
)
def test_a_thumb_on_a_reply_rates_it_and_removing_it_withdraws(
    kind: str, reaction: str, score: int, withdrawn: bool
) -> None:
    web, ratings = Web(thread(reply_metadata(CID, "r-9"))), Ratings()
    answered = answer(event(kind, reaction), web, ratings)
    assert answered.status == 200 and answered.metric == "feedback"
    [(cid, principal, given)] = ratings.given
    assert cid == CID and given == {"reply_id": "r-9", "score": score, "withdrawn": withdrawn}
    assert principal.id == "slack:T1:U7" and principal.groups == {"slack:T1:C1"}
    [(method, query)] = web.calls
    assert method == "conversations.replies" and query["include_all_metadata"] is True
    assert (query["channel"], query["ts"], query["latest"], query["oldest"]) == (
        "C1",
        *["200.2"] * 3,
    )


@pytest.mark.parametrize(
    "metadata",
    [
        None,  # a message that is not one of the app's replies
        {"event_type": "something_else", "event_payload": {"conversation_id": CID}},
        reply_metadata("slack:T1:C2:100.1", "r-9"),  # naming another channel's thread
        reply_metadata("slack:T2:C1:100.1", "r-9"),  # another workspace's
        reply_metadata("ticket:77", "r-9"),
        {"event_type": "agentworker_reply", "event_payload": {"conversation_id": CID}},
    ],
)
def test_a_thumb_on_any_other_message_is_ignored(metadata: dict[str, Any] | None) -> None:
    ratings = Ratings()
    answered = answer(event(), Web(thread(metadata)), ratings)
    assert answered.status == 200 and answered.body is not None
    assert answered.body["type"] == "ignored" and ratings.given == []


def test_other_reactions_and_items_are_ignored_without_a_call() -> None:
    web, ratings = Web(thread(reply_metadata(CID, "r-9"))), Ratings()
    for data in (event(reaction="tada"), event(type="file")):
        assert answer(data, web, ratings).body == {
            "type": "ignored",
            "reason": answer(data, web, ratings).reason,
        }
    assert web.calls == [] and ratings.given == []
    no_rater = answer(event(), web, None)  # a runtime that does not take ratings
    assert no_rater.body is not None and no_rater.body["type"] == "ignored"


def test_a_refused_rating_is_acknowledged_not_retried() -> None:
    for refusal in (NotFound("reply_id: no reply"), Throttled("too many", retry_after=30)):
        answered = answer(event(), Web(thread(reply_metadata(CID, "r-9"))), Ratings(refusal))
        assert answered.status == 200 and answered.metric == "feedback_refused"


def test_a_reaction_event_of_a_wrong_shape_names_the_field() -> None:
    data = event()
    del data["event"]["item"]["ts"]
    with pytest.raises(ValueError, match=r"event\.item\.ts"):
        slack.read_event(data)
    data = event()
    data["event"]["user"] = ["U7"]
    with pytest.raises(ValueError, match=r"event\.user"):
        slack.read_event(data)
