"""The guard step of every runtime: an input guard before the graph runs and an output guard
on the reply. Pure functions over text (no I/O); the core's turn step applies the verdicts,
traces them and tells the user (:mod:`workers.core.steps`).

What is checked, and what happens by default (:class:`GuardPolicy`):

- **prompt injection** (input): attempts to override the assistant's instructions ("ignore
  all previous instructions"), to make it someone else ("you are now DAN", "developer mode
  enabled"), to read its system prompt out ("reveal your system prompt"), and chat-template
  control tokens pasted into a message (``<|im_start|>``, ``[INST]``, ``<<SYS>>``). Blocked.
  The rules are phrases, not single words, so "please ignore my previous message" or "what
  are your instructions for a return?" pass.
- **blocked topics** (input and reply): the operator's list; each entry is a phrase, or
  alternatives separated by ``|`` (``crypto|bitcoin``), matched as whole words, any case,
  with an optional plural ``s``. Blocked.
- **personal data** (the redaction hook's kinds: e-mail addresses, phone numbers, Luhn-valid
  card numbers, mod-97-valid IBANs, AWS keys): in the user's own message allowed (a customer
  gives their e-mail to be helped), in the reply masked (``[EMAIL]``, ``[CARD]``...), except
  the values the user gave in the same turn (echoing them back leaks nothing). Each side can
  be set to ``allow``, ``mask`` or ``block``.

Blocking beats masking; a blocked input never reaches the model. What the user is told names
the category, never the matched text; what the trace gets is the category, the action and
rule names (a kind of data, a configured topic, an injection rule), never a match.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final, Literal

from workers.core.redaction import (
    AWS_KEY_ID,
    AWS_SECRET,
    CARD,
    EMAIL,
    IBAN,
    PHONE,
    card_ok,
    iban_ok,
    phone_ok,
)

PiiAction = Literal["allow", "mask", "block"]
Category = Literal["prompt_injection", "blocked_topic", "pii", "model_guardrail"]
Action = Literal["allow", "mask", "block"]
Stage = Literal["input", "output"]

BLOCKED_REPLY = "Sorry, I can't share that answer."
"""What replaces a reply the output guard blocked (the final reply also replaces what was
streamed of it)."""


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard step checks and does (built from the settings by the composition root)."""

    input_pii: PiiAction = "allow"
    output_pii: PiiAction = "mask"
    blocked_topics: tuple[str, ...] = ()
    prompt_injection: bool = True

    @cached_property
    def topics(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        """The blocked topics: name (the first alternative) and compiled pattern."""
        return _compile_topics(self.blocked_topics)

    @property
    def guards_output(self) -> bool:
        """Whether replies are checked at all (else they are sent as the model wrote them)."""
        return self.output_pii != "allow" or bool(self.blocked_topics)


@dataclass(frozen=True)
class Finding:
    """One thing the guard found: its category, the rule (a kind of personal data, a topic's
    name, an injection rule) and where (``start``/``end`` in the text it was found in)."""

    category: Category
    rule: str
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Verdict:
    """The guard's decision on the texts of one stage: ``allow`` (texts as given), ``mask``
    (``texts`` masked) or ``block``; ``category`` is the one that decided."""

    stage: Stage
    action: Action
    texts: tuple[str, ...]
    findings: tuple[Finding, ...] = ()
    category: Category | None = None

    @property
    def intervened(self) -> bool:
        return self.action != "allow"

    @property
    def rules(self) -> list[str]:
        """The rules that fired for the deciding category, each once, in order."""
        return list(dict.fromkeys(f.rule for f in self.findings if f.category == self.category))

    def attributes(self) -> dict[str, object]:
        """Span attributes: plain data naming what fired, never what matched."""
        return {
            "guardrail.stage": self.stage,
            "guardrail.category": self.category or "",
            "guardrail.action": self.action,
            "guardrail.rules": self.rules,
            "guardrail.findings": len(self.findings),
        }

    def notice(self) -> str:
        """What the user is told: the category (and the kinds of data), never the text."""
        return notice_text(self.stage, self.action, self.category, self.rules)


# personal data -------------------------------------------------------------------------------

_PII_LABELS = {
    "aws_key": ("[AWS_KEY]", "an AWS key"),
    "email": ("[EMAIL]", "an e-mail address"),
    "iban": ("[IBAN]", "an IBAN"),
    "card": ("[CARD]", "a card number"),
    "phone": ("[PHONE]", "a phone number"),
}


def find_pii(text: str) -> list[Finding]:
    """The personal data in ``text`` (the redaction hook's patterns and checks, in its order:
    a span already taken by an earlier kind is not found again), sorted by position."""
    taken: list[Finding] = []
    taken = _merge(taken, "aws_key", (m.span(2) for m in AWS_SECRET.finditer(text)))
    taken = _merge(taken, "aws_key", (m.span() for m in AWS_KEY_ID.finditer(text)))
    if "@" in text:
        taken = _merge(taken, "email", (m.span() for m in EMAIL.finditer(text)))
    if not _DIGIT.search(text):  # the rest have digits
        return taken
    checked = ((IBAN, iban_ok, "iban"), (CARD, card_ok, "card"), (PHONE, phone_ok, "phone"))
    for pattern, ok, kind in checked:
        spans = (m.span() for m in pattern.finditer(text) if ok(m.group(0)))
        taken = _merge(taken, kind, spans)
    return taken


def _merge(taken: list[Finding], kind: str, spans: Iterable[tuple[int, int]]) -> list[Finding]:
    """``taken`` (sorted, disjoint) with the ``spans`` (in order, disjoint) that overlap none
    of it, in one walk: a message full of matches costs linear time, not a comparison of
    each match with every one before it."""
    merged: list[Finding] = []
    i = 0
    for start, end in spans:
        while i < len(taken) and taken[i].end <= start:
            merged.append(taken[i])
            i += 1
        if i < len(taken) and taken[i].start < end:
            continue  # an earlier kind holds part of it
        merged.append(Finding("pii", kind, start, end))
    merged.extend(taken[i:])
    return merged


_DIGIT = re.compile(r"\d")
_CUT = re.compile(r"[ \n]")


def pii_values(texts: Iterable[str]) -> frozenset[str]:
    """The personal data in ``texts``, normalised (what the output guard lets through when
    the reply echoes it back to the user who gave it)."""
    return frozenset(_normal(t[f.start : f.end]) for t in texts for f in find_pii(t))


def _normal(value: str) -> str:
    return re.sub(r"[\s().-]", "", value).lower()


def mask_pii(
    text: str, findings: Sequence[Finding], allowed: frozenset[str] = frozenset()
) -> tuple[str, list[Finding]]:
    """``text`` with each finding (but the ``allowed`` values) replaced by its placeholder,
    and the findings masked."""
    out: list[str] = []
    masked: list[Finding] = []
    last = 0
    for f in findings:
        if f.category != "pii" or _normal(text[f.start : f.end]) in allowed:
            continue
        out.append(text[last : f.start])
        out.append(_PII_LABELS[f.rule][0])
        masked.append(f)
        last = f.end
    out.append(text[last:])
    return "".join(out), masked


# topics and prompt injection -----------------------------------------------------------------


def _compile_topics(topics: Iterable[str]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    compiled: list[tuple[str, re.Pattern[str]]] = []
    for topic in topics:
        terms = [t.strip() for t in topic.split("|") if t.strip()]
        if not terms:
            continue
        alternatives = "|".join(
            r"[\s_-]+".join(re.escape(word) for word in term.split()) for term in terms
        )
        pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?:e?s)?(?!\w)", re.IGNORECASE)
        compiled.append((terms[0], pattern))
    return tuple(compiled)


def check_topics(text: str, policy: GuardPolicy) -> list[Finding]:
    return [
        Finding("blocked_topic", name, m.start(), m.end())
        for name, pattern in policy.topics
        for m in pattern.finditer(text)
    ]


_I = re.IGNORECASE
INJECTION_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "ignore_instructions",
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|every|of)\s+)*"
            r"(?:(?:the|your|these|those|its)\s+)?"
            r"(?:previous|prior|above|earlier|preceding|system|original|initial|developer)\s+"
            r"(?:instructions?|prompts?|rules|guidelines|directives|directions|constraints)",
            _I,
        ),
    ),
    (
        "role_override",
        re.compile(
            r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:in\s+)?(?:an?\s+|the\s+)?"
            r"(?:DAN\b|jailbroken|un(?:restricted|filtered|censored|bound|aligned)\b|"
            r"evil\b|free\s+(?:from|of)\s+(?:all\s+|any\s+)?(?:rules|restrictions|guidelines)|"
            r"(?:bound|restricted|limited)\s+by|an?\s+AI\s+without|"
            r"(?:in\s+)?(?:developer|god|jailbreak|dan)\s+mode)",
            _I,
        ),
    ),
    (
        "jailbreak_marker",
        re.compile(
            r"\b(?:do\s+anything\s+now|(?:developer|god|jailbreak|dan)\s+mode\s+"
            r"(?:enabled|activated|on)\b|enable\s+(?:developer|god|jailbreak)\s+mode|"
            r"pretend\s+(?:that\s+)?you\s+(?:have\s+no|are\s+not\s+bound\s+by|"
            r"aren't\s+bound\s+by|don't\s+have\s+any)\s+(?:rules|restrictions|guidelines|"
            r"limits|filters|policies)|"
            r"without\s+any\s+(?:ethical|moral|safety)\s+(?:guidelines|restrictions|limits))",
            _I,
        ),
    ),
    (
        "system_prompt_exfiltration",
        re.compile(
            r"\b(?:reveal|show|print|repeat|output|display|leak|dump|recite|tell\s+me|"
            r"give\s+me|what\s+(?:is|are|was|were))\s+(?:me\s+)?(?:your|the)\s+"
            r"(?:(?:full|exact|original|hidden|initial|secret|entire|complete)\s+)*"
            r"(?:system\s+(?:prompt|message|instructions)|"
            r"(?:initial|original|hidden|secret)\s+(?:prompt|instructions))|"
            r"\b(?:repeat|print|output)\s+(?:all\s+|everything\s+|the\s+)?"
            r"(?:text|words|everything)\s+above\s+(?:this|the\s+first)",
            _I,
        ),
    ),
    (
        "control_tokens",
        re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|system\|>|\[/?INST\]|<</?SYS>>"),
    ),
)
"""Prompt-injection heuristics: (rule, pattern). Phrases, not words, to keep false positives
rare (tests hold benign look-alikes of each)."""


def check_injection(text: str) -> list[Finding]:
    return [
        Finding("prompt_injection", rule, m.start(), m.end())
        for rule, pattern in INJECTION_RULES
        for m in pattern.finditer(text)
    ]


# the two guards --------------------------------------------------------------------------------


def guard_input(texts: Sequence[str], policy: GuardPolicy) -> Verdict:
    """The input guard on a turn's user messages: block (prompt injection, a blocked topic,
    personal data under ``block``), mask (personal data under ``mask``) or allow."""
    injection = [f for t in texts for f in check_injection(t)] if policy.prompt_injection else []
    if injection:
        return Verdict("input", "block", tuple(texts), tuple(injection), "prompt_injection")
    topics = [f for t in texts for f in check_topics(t, policy)]
    if topics:
        return Verdict("input", "block", tuple(texts), tuple(topics), "blocked_topic")
    return _pii_verdict("input", texts, policy.input_pii, frozenset())


def guard_output(
    text: str, policy: GuardPolicy, *, allowed: frozenset[str] = frozenset()
) -> Verdict:
    """The output guard on a reply: block (a blocked topic, personal data under ``block``),
    mask (personal data under ``mask``, but the ``allowed`` values: what the user gave in the
    same turn) or allow. A blocked reply's text is :data:`BLOCKED_REPLY`."""
    topics = check_topics(text, policy)
    if topics:
        return Verdict("output", "block", (BLOCKED_REPLY,), tuple(topics), "blocked_topic")
    verdict = _pii_verdict("output", [text], policy.output_pii, allowed)
    if verdict.action == "block":
        return Verdict("output", "block", (BLOCKED_REPLY,), verdict.findings, "pii")
    return verdict


def _pii_verdict(
    stage: Stage, texts: Sequence[str], action: PiiAction, allowed: frozenset[str]
) -> Verdict:
    if action == "allow":
        return Verdict(stage, "allow", tuple(texts))
    masked: list[str] = []
    found: list[Finding] = []
    for text in texts:
        new, hits = mask_pii(text, find_pii(text), allowed)
        masked.append(new)
        found.extend(hits)
    if not found:
        return Verdict(stage, "allow", tuple(texts))
    if action == "block":
        return Verdict(stage, "block", tuple(texts), tuple(found), "pii")
    return Verdict(stage, "mask", tuple(masked), tuple(found), "pii")


# what the user is told ------------------------------------------------------------------------

_WHY = {
    "prompt_injection": "it looks like an attempt to override the assistant's instructions",
    "blocked_topic": "it touches a topic this assistant does not discuss",
    "model_guardrail": "the model provider's guardrail intervened",
}


def notice_text(stage: Stage, action: Action, category: Category | None, rules: list[str]) -> str:
    """The notice of an intervention: the stage, the action and the category (for personal
    data, its kinds), never the matched text."""
    if category == "pii":
        kinds = ", ".join(_PII_LABELS[r][1] for r in rules if r in _PII_LABELS) or "personal data"
        if stage == "input":
            if action == "block":
                return (
                    f"Your message was not passed to the assistant: it contains {kinds}, which "
                    "this assistant does not accept. Please leave it out."
                )
            return (
                f"Personal data in your message ({kinds}) was masked before the assistant saw it."
            )
        if action == "block":
            return f"The assistant's reply was withheld: it contained {kinds}."
        return f"Personal data in the reply ({kinds}) was masked."
    why = _WHY.get(category or "", "it was flagged by a guardrail")
    if stage == "input":
        return f"Your message was not passed to the assistant: {why}."
    return f"The assistant's reply was withheld: {why}."


# streaming ------------------------------------------------------------------------------------


BLOCKED: Final = object()
"""What :meth:`StreamGuard.mask_value` returns for data the guard would block."""


@dataclass
class StreamGuard:
    """Applies the output guard to a reply while it streams: text is held back until no
    personal data or topic can still be forming in it (``hold`` characters, cut at
    whitespace outside any match), then sent masked; a blocked topic (or personal data
    under ``block``) stops the stream. The final reply, guarded in full, supersedes it."""

    policy: GuardPolicy
    allowed: frozenset[str] = frozenset()
    hold: int = 48
    step: int = 32
    """Text is checked once this much more than ``hold`` is waiting (not on every token)."""
    limit: int = 512
    """Text held back without a safe cut beyond this is cut anyway (a long unbroken token)."""
    stopped: bool = False
    _pending: str = field(default="", init=False, repr=False)
    _tail: str = field(default="", init=False, repr=False)

    def feed(self, delta: str) -> str:
        """What may be sent now of the reply so far ("" when nothing yet, or stopped)."""
        if self.stopped:
            return ""
        self._pending += delta
        if len(self._pending) < self.hold + self.step:
            return ""
        if self._blocks(self._tail + self._pending):
            self.stopped = True
            return ""
        cut, spans = self._cut()
        if cut <= 0:
            return ""
        return self._emit(cut, [f for f in spans if f.end <= cut])

    def flush(self) -> str:
        """The rest, at the end of the reply ("" when stopped)."""
        if self.stopped or not self._pending:
            return ""
        if self._blocks(self._tail + self._pending):
            self.stopped = True
            return ""
        return self._emit(len(self._pending), find_pii(self._pending))

    def mask_value(self, value: object) -> object:
        """A custom stream's data, each string in it guarded as a reply would be (masked);
        :data:`BLOCKED` when one would be blocked, or the reply's stream was stopped."""
        if self.stopped:
            return BLOCKED
        if isinstance(value, str):
            verdict = guard_output(value, self.policy, allowed=self.allowed)
            return BLOCKED if verdict.action == "block" else verdict.texts[0]
        if isinstance(value, dict):
            items = {k: self.mask_value(v) for k, v in value.items()}
            return BLOCKED if any(v is BLOCKED for v in items.values()) else items
        if isinstance(value, list):
            elements = [self.mask_value(v) for v in value]
            return BLOCKED if any(v is BLOCKED for v in elements) else elements
        return value

    def _blocks(self, text: str) -> bool:
        if check_topics(text, self.policy):
            return True
        if self.policy.output_pii != "block":
            return False
        return any(_normal(text[f.start : f.end]) not in self.allowed for f in find_pii(text))

    def _cut(self) -> tuple[int, list[Finding]]:
        """Where the text waiting can be cut (0: not yet), and the personal data in it."""
        text = self._pending
        limit = len(text) - self.hold
        spans = find_pii(text)
        starts = [f.start for f in spans]
        # after the last space or newline that is inside no span (spans are sorted and
        # disjoint: the one that could hold a cut is the last to start before it)
        for space in reversed([m.start() for m in _CUT.finditer(text, 0, max(limit, 0))]):
            cut = space + 1
            k = bisect_left(starts, cut) - 1
            if k < 0 or spans[k].end <= cut:
                return cut, spans
        return (limit if len(text) > self.limit else 0), spans

    def _emit(self, cut: int, spans: list[Finding]) -> str:
        segment, self._pending = self._pending[:cut], self._pending[cut:]
        self._tail = (self._tail + segment)[-self.hold :]
        if self.policy.output_pii == "allow":
            return segment
        return mask_pii(segment, spans, self.allowed)[0]


__all__ = [
    "BLOCKED",
    "BLOCKED_REPLY",
    "INJECTION_RULES",
    "Finding",
    "GuardPolicy",
    "StreamGuard",
    "Verdict",
    "check_injection",
    "check_topics",
    "find_pii",
    "guard_input",
    "guard_output",
    "mask_pii",
    "notice_text",
    "pii_values",
]
