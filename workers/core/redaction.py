"""The redaction hook: personal data and secrets are masked before any span or log line
leaves the process. Pure functions; the tracer and the log records are wrapped with it by
the composition root (``RedactingTracer``, :func:`workers.observability.install_redaction`).

Found and replaced, in every string of a value (dict keys stay as they are):

- e-mail addresses -> ``[EMAIL]``
- phone numbers written as phone numbers (a leading ``+``, or digit groups separated by
  spaces, dashes or parentheses; 9 to 15 digits) -> ``[PHONE]``
- card numbers (13 to 19 digits, optionally grouped) that pass the Luhn check -> ``[CARD]``
- IBANs that pass the ISO 13616 mod-97 check -> ``[IBAN]``
- AWS access key ids (``AKIA``/``ASIA``...) and secret access keys -> ``[AWS_KEY]``
- bearer tokens (``Bearer <token>``, the WebSocket subprotocol ``bearer.<token>``) and JWTs
  (``eyJ...``) -> ``[TOKEN]``
- the credentials in a URL (``https://user:secret@host/``) -> ``https://user:***@host/``
- whatever the configured extra patterns match -> ``[REDACTED]``

A digit run that is not a valid card (an order number, a Slack timestamp) is left alone.

Every pattern here runs on hostile text (a message, a header, a log line) in the server's
one interpreter and in every Lambda, so each is linear-time in its input: a quantifier is
bounded, or the match may only start where a run of what it scans starts (a lookbehind), so
no character is scanned again from each position of a long run. The configured patterns are
held to a computed bound (:mod:`workers.core.pattern_cost`). ``tests/unit/test_regex_time.py``
times the classic killers at 256 KB.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import Any

from workers.core.pattern_cost import check_pattern
from workers.core.ports import Feedback, OpenSpan, SpanHandle, Tracer

# A match starts only where a run of local-part characters starts: from inside the run it
# would scan on to the same "@" again, quadratic in the run ("a." * 130000 + "@": a minute).
EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# not inside a longer number or a decimal (a Slack timestamp), but at a sentence's end too
CARD = re.compile(r"(?<!\d)(?<!\d\.)\d(?:[ -]?\d){12,18}(?!\d|\.\d)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[.:-])(?:\+\d{1,3}[ .-]?)?"
    r"(?:\(\d{1,4}\)[ .-]?\d{2,4}(?:[ -]\d{2,4}){1,4}|\d{2,4}(?:[ -]\d{2,4}){2,4})"
    r"(?!\w|[.:-]\d)"
    r"|(?<![\w+])\+\d{8,14}(?!\w)"
)
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|AIPA)[A-Z0-9]{16}\b")
AWS_SECRET = re.compile(
    r"(?i)(aws.{0,20}?(?:secret|key).{0,20}?[:=]\s{0,16}['\"]?)([A-Za-z0-9/+=]{40})"
    r"(?![A-Za-z0-9/+=])"
)
# The scheme is kept ("Bearer", "bearer." in a subprotocol list); the token is what follows,
# RFC 6750's token characters. A match starts only at the start of a word.
BEARER = re.compile(r"(?i)(?<![A-Za-z0-9])(bearer(?:[ \t]+|\.))([A-Za-z0-9._~+/=-]+)")
# A JWS: header and payload are base64url JSON objects, so both start "eyJ" ('{"').
JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# scheme://user:password@ or scheme://token@ (the scheme starts a word: linear)
URL_USERINFO = re.compile(
    r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)(?:([^\s/?#@:]*):)?[^\s/?#@]+@"
)


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    code = candidate.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def card_ok(candidate: str) -> bool:
    """Whether a :data:`CARD` match is a card number (13 to 19 digits, Luhn-checked)."""
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def phone_ok(candidate: str) -> bool:
    """Whether a :data:`PHONE` match is a phone number (9 to 15 digits, not a date)."""
    digits = sum(ch.isdigit() for ch in candidate)
    return 9 <= digits <= 15 and not ISO_DATE.match(candidate)


def _card(match: re.Match[str]) -> str:
    return "[CARD]" if card_ok(match.group(0)) else match.group(0)


def _iban(match: re.Match[str]) -> str:
    return "[IBAN]" if iban_ok(match.group(0)) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    return "[PHONE]" if phone_ok(match.group(0)) else match.group(0)


def _bearer(match: re.Match[str]) -> str:
    token = match.group(2)
    # "the bearer instrument" is prose; a token has a digit or a symbol, or is long
    if len(token) < 16 and token.isalpha():
        return match.group(0)
    return f"{match.group(1)}[TOKEN]"


def _userinfo(match: re.Match[str]) -> str:
    scheme, user = match.group(1), match.group(2)
    return f"{scheme}***@" if user is None else f"{scheme}{user}:***@"


def url_without_credentials(url: str) -> str:
    """``url`` (or any text) with the credentials of each URL in it masked:
    ``https://user:secret@host/`` -> ``https://user:***@host/``. For lines that print a
    configured URI (the tracking URI), where the redaction hook may be off or not reach."""
    return URL_USERINFO.sub(_userinfo, url)


class Redactor:
    """Masks personal data and secrets in strings and in JSON-like values."""

    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        extra = list(extra_patterns)
        for pattern in extra:
            check_pattern(pattern)  # the settings refuse them first; this holds for any caller
        self._steps: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str]] = [
            (AWS_SECRET, r"\1[AWS_KEY]"),
            (AWS_KEY_ID, "[AWS_KEY]"),
            (URL_USERINFO, _userinfo),
            (BEARER, _bearer),
            (JWT, "[TOKEN]"),
            (EMAIL, "[EMAIL]"),
            (IBAN, _iban),
            (CARD, _card),
            (PHONE, _phone),
            *((re.compile(p), "[REDACTED]") for p in extra),
        ]

    def text(self, value: str) -> str:
        for pattern, replacement in self._steps:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any) -> Any:
        """``value`` with every string in it redacted (dicts, lists, tuples walked)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        return value

    def error(self, error: BaseException) -> BaseException:
        """An exception whose message is redacted (the same type when it can be built
        from a message, else a ``RedactedError`` naming the type)."""
        message = self.text(str(error))
        if message == str(error):
            return error
        try:
            redacted = type(error)(message)
        except Exception:  # a type that does not take one message
            redacted = RedactedError(f"{type(error).__name__}: {message}")
        redacted.__traceback__ = error.__traceback__
        return redacted


class RedactedError(Exception):
    """Stands in for an exception whose type could not carry a redacted message."""


class _RedactingSpan:
    def __init__(self, span: Any, redactor: Redactor) -> None:
        self.span = span
        self._redactor = redactor

    def set_outputs(self, outputs: Any) -> None:
        self.span.set_outputs(self._redactor.value(outputs))

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.span.set_attributes(self._redactor.value(attributes))

    def end(self, error: BaseException | None = None) -> None:
        self.span.end(None if error is None else self._redactor.error(error))


def redact_record(record: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A recorded trace or feedback (:mod:`workers.tracing.recorder`) with every input,
    output, attribute, error and comment redacted; tags (ids) and names pass as they are.
    What the exporters apply before anything reaches MLflow."""
    if record.get("kind") == "feedback":
        rationale = record.get("rationale")
        return {**record, "rationale": None if rationale is None else redactor.text(rationale)}
    spans = []
    for span in record.get("spans") or ():
        error = span.get("error")
        spans.append(
            {
                **span,
                "inputs": redactor.value(span.get("inputs")),
                "outputs": redactor.value(span.get("outputs")),
                "attributes": redactor.value(span.get("attributes") or {}),
                "error": None if error is None else redactor.value(error),
            }
        )
    return {**record, "spans": spans}


class RedactingTracer:
    """A ``Tracer`` that redacts every input, output, attribute and error before ``inner``
    records it (tags are ids, not user text, and pass as they are)."""

    def __init__(self, inner: Tracer, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor

    @contextmanager
    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Iterator[SpanHandle]:
        with self.inner.turn(name, tags=tags, inputs=self.redactor.value(inputs)) as span:
            yield _RedactingSpan(span, self.redactor)

    def span(
        self, name: str, *, kind: str, inputs: Any = None
    ) -> AbstractContextManager[SpanHandle]:
        return self._span(name, kind=kind, inputs=inputs)

    @contextmanager
    def _span(self, name: str, *, kind: str, inputs: Any) -> Iterator[SpanHandle]:
        with self.inner.span(name, kind=kind, inputs=self.redactor.value(inputs)) as span:
            yield _RedactingSpan(span, self.redactor)

    def start_span(
        self, name: str, *, kind: str, inputs: Any = None, parent: OpenSpan | None = None
    ) -> OpenSpan:
        inner_parent = parent.span if isinstance(parent, _RedactingSpan) else parent
        span = self.inner.start_span(
            name, kind=kind, inputs=self.redactor.value(inputs), parent=inner_parent
        )
        return _RedactingSpan(span, self.redactor)

    def forget(self, conversation_id: str) -> int | None:
        return self.inner.forget(conversation_id)

    def feedback(self, turn_id: str, feedback: Feedback) -> None:
        rationale = feedback.rationale
        redacted = rationale if rationale is None else self.redactor.text(rationale)
        self.inner.feedback(turn_id, replace(feedback, rationale=redacted))

    def flush(self, timeout: float | None = None) -> bool:
        return self.inner.flush(timeout)

    def close(self) -> None:
        self.inner.close()
