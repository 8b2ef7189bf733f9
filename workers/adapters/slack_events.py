"""What a request to the Slack app's Request URL means, for every way it arrives: the AWS
``slack`` function (HTTP API), the local server's ``/slack/events``, and Socket Mode (whose
envelopes carry the same payloads, already authenticated by the connection).

- ``url_verification``: the challenge;
- ``event_callback`` with a ``message`` or ``app_mention`` from a person: an inbox message of
  the thread's conversation (``slack:<team>:<channel>:<thread ts>``), deduplicated by
  ``channel+ts`` so Slack's retries (a new event id) and the ``message``/``app_mention`` pair
  of one mention are one message; bot messages, edits and other subtypes are ignored;
- interactivity ``block_actions``: a click on the approve/deny buttons the Slack sink
  renders becomes an approval message; other actions are ignored;
- ``reaction_added`` / ``reaction_removed`` of :+1: or :-1: on a message showing one of the
  app's replies (its metadata names the reply: ``slack_stream.reply_metadata``): the
  member's rating of that reply, or its withdrawal, as ``POST .../feedback`` records it;
  other reactions, and reactions on other messages, are ignored.

Ignored requests are acknowledged (Slack must not retry them). Nothing here waits for a
turn: Slack wants an answer within 3 s.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import parse_qs

from pydantic import ValidationError

from events.identity import Principal
from events.inbound import (
    InboundMessage,
    SlackBlockActions,
    SlackEventEnvelope,
    SlackUrlVerification,
    is_slack_conversation,
    slack_principal,
    slack_thread_of,
)
from events.json_input import parse_json
from events.outbound import ErrorBody, ErrorView, validation_problem
from workers.adapters.slack import SlackWeb, decided_message, verify_slack_request
from workers.adapters.slack_stream import DIRECT_MESSAGE, reply_of
from workers.config import Settings
from workers.core.model import AcceptResult
from workers.errors import (
    BadInput,
    InvalidSlackSignature,
    NotAllowed,
    NotFound,
    NotWaiting,
    Throttled,
)

MESSAGE_EVENTS = frozenset({"message", "app_mention"})
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

EVENT_SCOPES: dict[str, str] = {
    "assistant_thread_started": "assistant:write",
    "assistant_thread_context_changed": "assistant:write",
    "app_mention": "app_mentions:read",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "message.im": "im:history",
    "reaction_added": "reactions:read",
    "reaction_removed": "reactions:read",
}
"""The Events API subscriptions the app takes (``slack/manifest.yml``'s ``bot_events``) and
the bot scope each needs."""
INTERACTIVE = True
"""The app takes interactivity (the approval buttons' clicks)."""

SOFT_REFUSALS = (NotFound, NotWaiting, Throttled, NotAllowed)
"""Refusals of a Slack message that are acknowledged, not errors: a click on a question
answered or superseded (``NotFound``, ``NotWaiting``), a member over their quota (a Slack
retry would not help), a member the tool's approval policy does not let decide."""


@dataclass(frozen=True)
class SlackAnswer:
    """The answer to a request: its status and JSON body (``None``: an empty 200, what an
    interaction's acknowledgement is), the metric it counts as, why it was ignored."""

    status: int
    body: dict[str, Any] | None
    metric: str
    reason: str | None = None
    started: tuple[str, str] | None = None
    """An assistant thread a member opened (channel, thread ts): where to suggest prompts."""


@dataclass(frozen=True)
class SlackMessage:
    """A message to accept from a member: the thread belongs to its channel (``owner``)."""

    msg: InboundMessage
    principal: Principal
    metric: str
    interaction: bool = False
    """A click: acknowledged with an empty 200 (a body could be taken for a message)."""
    update: dict[str, Any] | None = None
    """The ``chat.update`` that shows the clicked message as decided, once accepted."""

    @property
    def owner(self) -> str:
        (channel,) = self.principal.groups
        return channel


@dataclass(frozen=True)
class SlackReaction:
    """A member's :+1: (``score`` 1) or :-1: (-1) on message ``ts`` of ``channel``, or its
    removal (``withdrawn``)."""

    principal: Principal
    team: str
    channel: str
    ts: str
    score: int
    withdrawn: bool

    @property
    def metric(self) -> str:
        return "slack_reactions_removed" if self.withdrawn else "slack_reactions"


REACTION_EVENTS = frozenset({"reaction_added", "reaction_removed"})
THUMBS: dict[str, int] = {"+1": 1, "thumbsup": 1, "-1": -1, "thumbsdown": -1}
"""The reactions that rate a reply (with any skin tone: ``+1::skin-tone-2``)."""


class Rate(Protocol):
    """A runtime's feedback (``EmbeddedRuntime.feedback``): a member's rating of a reply, or
    its withdrawal."""

    def __call__(
        self,
        conversation_id: str,
        principal: Principal,
        *,
        reply_id: str,
        score: int,
        withdrawn: bool,
    ) -> Awaitable[object]: ...


GROUP_CACHE_SECONDS = 300.0
"""How long a user group's members are kept before Slack is asked again."""


class SlackRoles:
    """Roles of Slack members (the ``slack_roles`` setting): those named for the member's own
    id, and those of every user group (``S...``) the member is in, whose members Slack
    lists (``usergroups.users.list``, kept :data:`GROUP_CACHE_SECONDS`). A group Slack
    cannot list gives no roles (logged): a roles policy then refuses, it never lets in."""

    def __init__(
        self,
        mapping: Mapping[str, Sequence[str]],
        web: SlackWeb | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mapping = {k: frozenset(v) for k, v in mapping.items()}
        self.web = web
        self.clock = clock
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def of(self, user: str) -> frozenset[str]:
        roles = set(self.mapping.get(user, ()))
        for group, named in self.mapping.items():
            if group.startswith("S") and user in self.members(group):
                roles |= named
        return frozenset(roles)

    def members(self, group: str) -> frozenset[str]:
        now = self.clock()
        with self._lock:
            kept = self._members.get(group)
        if kept is not None and now - kept[0] < GROUP_CACHE_SECONDS:
            return kept[1]
        answer = (
            self.web.try_call("usergroups.users.list", {"usergroup": group}) if self.web else None
        )
        users = answer.get("users") if answer else None
        members = (
            frozenset(u for u in users if isinstance(u, str))
            if isinstance(users, list)
            else frozenset()
        )
        with self._lock:
            self._members[group] = (now, members)
        return members

    def grant(self, message: SlackMessage) -> SlackMessage:
        """``message`` with its sender's roles."""
        if not self.mapping:
            return message
        user = message.principal.id.rsplit(":", 1)[-1]
        roles = self.of(user)
        if not roles:
            return message
        principal = message.principal.model_copy(update={"roles": message.principal.roles | roles})
        return replace(message, principal=principal)


def ignored(
    reason: str, *, interaction: bool = False, metric: str = "slack_ignored"
) -> SlackAnswer:
    """Acknowledged (Slack must not retry) and not acted on."""
    body = None if interaction else {"type": "ignored", "reason": reason}
    return SlackAnswer(200, body, metric, reason)


def verified(
    headers: Mapping[str, str], raw: bytes, signing_secret: str, now: float
) -> SlackAnswer | None:
    """``None`` when the request is Slack's (its signature), else the 401."""
    try:
        verify_slack_request(
            signing_secret=signing_secret,
            timestamp=headers.get("x-slack-request-timestamp"),
            signature=headers.get("x-slack-signature"),
            body=raw,
            now=now,
        )
    except InvalidSlackSignature as exc:
        return error(401, "invalid_signature", str(exc), metric="slack_bad_signature")
    return None


Parsed = SlackMessage | SlackReaction | SlackAnswer
"""What a request is: a message to accept, a reaction to rate with, or its answer already."""


def read_request(headers: Mapping[str, str], raw: bytes) -> Parsed:
    """A verified request's message, or its answer (a challenge, ignored, a 4xx)."""
    interaction = headers.get("content-type", "").startswith(FORM_CONTENT_TYPE)
    try:
        if interaction:
            fields = parse_qs(raw.decode(), strict_parsing=False)
            if "payload" not in fields:
                raise ValueError("payload: missing from the form")
            return read_interaction(parse_json(fields["payload"][0], what="payload"))
        return read_event(parse_json(raw))
    except ValueError as exc:  # JSON, UTF-8, pydantic and our own parse errors
        return bad_request(exc)


def read_event(data: Any) -> Parsed:
    """An Events API body (or a Socket Mode ``events_api`` payload)."""
    if not isinstance(data, dict):
        raise ValueError("body: expected a JSON object")
    kind = data.get("type")
    if kind == "url_verification":
        challenge = SlackUrlVerification.model_validate(data).challenge
        return SlackAnswer(200, {"challenge": challenge}, "slack_url_verifications")
    if kind != "event_callback":
        return ignored(f"request type {kind!r}")
    event = data.get("event")
    event_type = event.get("type") if isinstance(event, dict) else None
    if not isinstance(event_type, str) or not isinstance(event, dict):
        return ignored(f"event type {event_type!r}")
    if event_type in ASSISTANT_EVENTS:
        return assistant_thread(event_type, event)
    if event_type in REACTION_EVENTS:
        return reaction(data, event)
    if event_type not in MESSAGE_EVENTS:
        return ignored(f"event type {event_type!r}")
    envelope = SlackEventEnvelope.model_validate(data)
    if envelope.is_from_bot():
        return ignored("bot message")
    if envelope.event.subtype is not None:
        return ignored(f"message subtype {envelope.event.subtype!r}")
    if not envelope.event.user:
        # Nobody to act as: not a shared "unknown" member of the channel.
        return ignored("message without a user")
    if not envelope.event.text.strip():
        return ignored("message without text")
    return SlackMessage(envelope.to_inbound(), envelope.principal(), "slack_messages")


ASSISTANT_EVENTS = frozenset({"assistant_thread_started", "assistant_thread_context_changed"})
TITLE_CHARS = 60
"""An assistant thread's title: the start of its first message."""


def assistant_thread(kind: str, event: dict[str, Any]) -> SlackAnswer:
    """A member opened an assistant thread (the app suggests prompts there), or moved
    elsewhere in Slack with it open (nothing to do: the app keeps no thread context)."""
    thread = event.get("assistant_thread")
    channel = thread.get("channel_id") if isinstance(thread, dict) else None
    thread_ts = thread.get("thread_ts") if isinstance(thread, dict) else None
    if kind != "assistant_thread_started" or not isinstance(channel, str):
        return ignored(f"event type {kind!r}")
    if not isinstance(thread_ts, str):
        raise ValueError("event.assistant_thread.thread_ts: missing")
    answer = SlackAnswer(
        200, {"type": "ok"}, "slack_assistant_threads", started=(channel, thread_ts)
    )
    return answer


def reaction(data: dict[str, Any], event: dict[str, Any]) -> SlackReaction | SlackAnswer:
    """A reaction added or removed: a rating when it is a thumb on a message."""
    name = event.get("reaction")
    score = THUMBS.get(name.split("::", 1)[0]) if isinstance(name, str) else None
    item = event.get("item")
    if score is None or not isinstance(item, dict) or item.get("type") != "message":
        return ignored(f"reaction {name!r}")
    team = _text(data, "team_id", "team_id")
    user = _text(event, "user", "event.user")
    channel = _text(item, "channel", "event.item.channel")
    ts = _text(item, "ts", "event.item.ts")
    principal = slack_principal(team, user, channel)
    withdrawn = event.get("type") == "reaction_removed"
    return SlackReaction(principal, team, channel, ts, score, withdrawn)


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise BadInput("validation_error", f"{where}: a string of 1-256 characters", field=where)
    return value


def rated_reply(reaction: SlackReaction, web: SlackWeb | None) -> tuple[str, str] | None:
    """The (conversation, reply) the reacted-to message shows, from its metadata (read with
    ``conversations.replies``); ``None`` for a message that is not one of the app's
    replies in a thread of that channel."""
    if web is None:
        return None
    query = {
        "channel": reaction.channel,
        "ts": reaction.ts,
        "oldest": reaction.ts,
        "latest": reaction.ts,
        "inclusive": True,
        "include_all_metadata": True,
    }
    answer = web.try_call("conversations.replies", query)
    messages = answer.get("messages") if answer else None
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict) or message.get("ts") != reaction.ts:
            continue
        shows = reply_of(message)
        if shows is None:
            return None
        conversation_id, reply_id = shows
        if not is_slack_conversation(conversation_id):
            return None
        team, channel, _ = slack_thread_of(conversation_id)
        if (team, channel) != (reaction.team, reaction.channel):
            return None  # (metadata naming another thread than its own: not ours to rate)
        return conversation_id, reply_id
    return None


async def rate(reaction: SlackReaction, rate: Rate, web: SlackWeb | None) -> SlackAnswer:
    """A thumb on one of the app's replies, recorded (or withdrawn) by ``rate``."""
    found = await asyncio.to_thread(rated_reply, reaction, web)
    if found is None:
        return ignored("a reaction on a message that is not one of the app's replies")
    conversation_id, reply_id = found
    try:
        await rate(
            conversation_id,
            reaction.principal,
            reply_id=reply_id,
            score=reaction.score,
            withdrawn=reaction.withdrawn,
        )
    except (NotFound, Throttled) as exc:
        return ignored(f"rating not recorded: {exc}", metric="feedback_refused")
    return SlackAnswer(200, {"type": "ok"}, "feedback")


def suggest(answer: SlackAnswer, web: SlackWeb | None, prompts: Sequence[str]) -> None:
    """An opened assistant thread's suggested prompts (the app's ``suggested_prompts``)."""
    if web is None or answer.started is None or not prompts:
        return
    channel, thread_ts = answer.started
    suggested = [{"title": p[:75], "message": p} for p in prompts[:4]]
    body = {"channel_id": channel, "thread_ts": thread_ts, "prompts": suggested}
    web.try_call("assistant.threads.setSuggestedPrompts", body)


def read_interaction(data: Any) -> SlackMessage | SlackAnswer:
    """An interactivity payload (or a Socket Mode ``interactive`` one)."""
    if not isinstance(data, dict) or data.get("type") != "block_actions":
        kind = data.get("type") if isinstance(data, dict) else None
        return ignored(f"interaction type {kind!r}", interaction=True)
    actions = SlackBlockActions.model_validate(data)
    decision = actions.decision()
    if decision is None:
        return ignored("not an approval button", interaction=True)
    approved = bool(decision.approval and decision.approval.approved)
    update = decided_message(data, approved)
    return SlackMessage(decision, actions.principal(), "decisions", interaction=True, update=update)


def accepted(result: AcceptResult, message: SlackMessage) -> SlackAnswer:
    view = result.view(message.msg.conversation_id).model_dump(mode="json")
    metric = "duplicates" if result.duplicate else "accepted"
    return SlackAnswer(200, None if message.interaction else view, metric)


class Accept(Protocol):
    """A runtime's accept (``EmbeddedRuntime.accept``): the message, its sender, the owner of
    a conversation it creates."""

    def __call__(
        self, msg: InboundMessage, principal: Principal, *, owner: str | None = None
    ) -> Awaitable[AcceptResult]: ...


@dataclass(frozen=True)
class SlackApp:
    """What answering needs beyond the request: the Web API (``None`` without a bot
    token), the members' roles, the prompts to suggest in a new assistant thread."""

    web: SlackWeb | None
    roles: SlackRoles | None = None
    prompts: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings, web: SlackWeb | None) -> SlackApp:
        """The app ``settings`` describe (``slack_roles``, ``suggested_prompts``) on ``web``."""
        return cls(web, SlackRoles(settings.slack_roles, web), tuple(settings.prompts_to_suggest))

    def grant(self, message: SlackMessage) -> SlackMessage:
        return self.roles.grant(message) if self.roles is not None else message

    def opened(self, answer: SlackAnswer) -> None:
        """A new assistant thread gets the app's suggested prompts."""
        suggest(answer, self.web, self.prompts)


async def answer(
    parsed: Parsed, accept: Accept, app: SlackApp, rate_with: Rate | None = None
) -> SlackAnswer:
    """The answer to a read request: a message from a member with their roles, accepted
    (or softly refused) by the runtime's ``accept``, then what follows it
    (:func:`after_accept`); a thumb on a reply, recorded by the runtime's ``rate_with``
    (:func:`rate`; ignored without one); the Web API off the event loop."""
    if isinstance(parsed, SlackAnswer):
        await asyncio.to_thread(app.opened, parsed)
        return parsed
    if isinstance(parsed, SlackReaction):
        if rate_with is None:
            return ignored("reactions are not rated here")
        return await rate(parsed, rate_with, app.web)
    parsed = await asyncio.to_thread(app.grant, parsed)
    try:
        result = await accept(parsed.msg, parsed.principal, owner=parsed.owner)
    except SOFT_REFUSALS as exc:
        return refused(exc, parsed)
    await asyncio.to_thread(after_accept, parsed, result, app.web)
    return accepted(result, parsed)


def after_accept(message: SlackMessage, result: AcceptResult, web: SlackWeb | None) -> None:
    """What follows an accepted message: a decided click's message loses its buttons; the
    first message of an assistant thread (a direct message) gives the thread its title."""
    if web is None:
        return
    if message.update is not None:
        web.try_call("chat.update", message.update)
    _, channel, thread_ts = slack_thread_of(message.msg.conversation_id)
    first = result.seq == 1 and not result.duplicate and message.msg.kind == "user"
    if first and channel.startswith(DIRECT_MESSAGE) and message.msg.text:
        title = " ".join(message.msg.text.split())[:TITLE_CHARS]
        body = {"channel_id": channel, "thread_ts": thread_ts, "title": title}
        web.try_call("assistant.threads.setTitle", body)


def refused(exc: Exception, message: SlackMessage) -> SlackAnswer:
    """The acknowledgement of a soft refusal (:data:`SOFT_REFUSALS`)."""
    quiet = message.interaction
    if isinstance(exc, Throttled):
        return ignored(f"throttled: {exc}", interaction=quiet, metric="throttled")
    if isinstance(exc, NotAllowed):
        return ignored(f"not allowed: {exc}", interaction=quiet, metric="approvals_refused")
    return ignored(f"stale answer: {exc}", interaction=quiet)


def bad_request(exc: ValueError) -> SlackAnswer:
    if isinstance(exc, ValidationError):
        problem = validation_problem(exc)
        return error(422, "validation_error", problem.message, problem.field or "body")
    if isinstance(exc, BadInput):
        return error(400, exc.code, str(exc), exc.field)
    return error(400, "bad_request", str(exc))


def error(
    status: int, code: str, message: str, field: str | None = None, *, metric: str = "bad_requests"
) -> SlackAnswer:
    """Our error body (``ErrorView``), as every transport answers errors."""
    body = ErrorView(error=ErrorBody(code=code, message=message, field=field)).model_dump()
    return SlackAnswer(status, body, metric, message)
