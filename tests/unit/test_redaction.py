"""The redaction hook: what it masks, what it leaves alone, and that spans and log records
pass through it before anything records them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from workers.core.ports import NullSpan, NullTracer
from workers.core.redaction import (
    RedactedError,
    RedactingTracer,
    Redactor,
    iban_ok,
    luhn_ok,
    url_without_credentials,
)
from workers.observability import RedactExtras, install_redaction

R = Redactor()
CARD = "4111 1111 1111 1111"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.3p8Wq-mF_kX0c1Y2Zb"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"my card is {CARD}, thanks", "my card is [CARD], thanks"),
        ("4111-1111-1111-1111", "[CARD]"),
        ("5500005555555559", "[CARD]"),
        ("mail jane.doe+x@example.co.uk now", "mail [EMAIL] now"),
        ("call +44 20 7946 0958", "call [PHONE]"),
        ("or (555) 123-4567.", "or [PHONE]."),
        ("030 1234 5678 or +14155552671", "[PHONE] or [PHONE]"),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
        ("GB82WEST12345698765432", "[IBAN]"),
        ("key AKIAIOSFODNN7EXAMPLE", "key [AWS_KEY]"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key = [AWS_KEY]",
        ),
        ("< authorization: Bearer dev-token-0123456789", "< authorization: Bearer [TOKEN]"),
        ("[(b'authorization', b'Bearer s3cret')]", "[(b'authorization', b'Bearer [TOKEN]')]"),
        (f"protocol: agentworker, bearer.{JWT}", "protocol: agentworker, bearer.[TOKEN]"),
        (f"token {JWT} expired", "token [TOKEN] expired"),
        (f"BEARER {JWT}", "BEARER [TOKEN]"),
        ("https://user:secret@mlflow.example.com/x", "https://user:***@mlflow.example.com/x"),
        ("uri=HTTP://ak:p%40ss:w0rd@h:5000", "uri=HTTP://ak:***@h:5000"),
        ("git+ssh://tok3n@host/repo", "git+ssh://***@host/repo"),
    ],
)
def test_personal_data_and_secrets_are_masked(text: str, masked: str) -> None:
    assert R.text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails the Luhn check
        "DE00 1234 5678 9012 3456 78",  # fails mod 97
        "slack:T1:C1:1700000000.0001 ts 1726133698.626339",
        "order 123456789, ticket 12, at 2026-11-29 02:30:00",
        "version 1.2.3, ip 10.0.0.1, id 3f2a9c1e-1234-5678-9abc-def012345678",
        "ws:acme:alice-1",
        "the Bearer bonds, a bearer instrument",
        "see https://example.com:8080/a?b=c and http://host/a@b",
    ],
)
def test_what_only_looks_like_it_is_left_alone(text: str) -> None:
    assert R.text(text) == text


def test_the_checks() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE00370400440532013000")


def test_values_are_walked_and_extra_patterns_apply() -> None:
    r = Redactor([r"EMP-\d{5}"])
    value = {"texts": [f"pay {CARD}", ("EMP-12345",)], "n": 3, "ok": None}
    assert r.value(value) == {"texts": ["pay [CARD]", ("[REDACTED]",)], "n": 3, "ok": None}


def test_errors_keep_their_type_when_they_can() -> None:
    err = R.error(ValueError(f"bad card {CARD}"))
    assert type(err) is ValueError and str(err) == "bad card [CARD]"

    class Picky(Exception):
        def __init__(self, a: str, b: int) -> None:
            super().__init__(f"{a} {b}")

    odd = R.error(Picky(CARD + ",", 1))
    assert isinstance(odd, RedactedError) and str(odd) == "Picky: [CARD], 1"
    plain = KeyError("x")
    assert R.error(plain) is plain  # nothing to mask: the same exception


class Recording(NullTracer):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Any:
        self.seen.append(("turn", tags, inputs))
        return super().turn(name, tags=tags, inputs=inputs)

    def start_span(self, name: str, *, kind: str, inputs: Any = None, parent: Any = None) -> Any:
        self.seen.append(("start", inputs))
        tracer = self

        class Span(NullSpan):
            def set_outputs(self, outputs: Any) -> None:
                tracer.seen.append(("outputs", outputs))

            def end(self, error: BaseException | None = None) -> None:
                tracer.seen.append(("end", str(error)))

        return Span()


def test_the_tracer_records_only_redacted_values() -> None:
    inner = Recording()
    tracer = RedactingTracer(inner, R)
    with tracer.turn("turn", tags={"conversation_id": "ws:a:1"}, inputs={"texts": [CARD]}):
        span = tracer.start_span("tool", kind="TOOL", inputs={"args": {"card": CARD}})
        span.set_outputs(f"charged {CARD}")
        span.end(RuntimeError(f"declined {CARD}"))
    assert inner.seen == [
        ("turn", {"conversation_id": "ws:a:1"}, {"texts": ["[CARD]"]}),
        ("start", {"args": {"card": "[CARD]"}}),
        ("outputs", "charged [CARD]"),
        ("end", "declined [CARD]"),
    ]


@pytest.fixture
def redacting() -> Iterator[logging.Logger]:
    logger = logging.getLogger("agentworker.test.redaction")
    install_redaction(R, logger)
    yield logger
    install_redaction(None)
    logger.filters[:] = [f for f in logger.filters if not isinstance(f, RedactExtras)]


def test_log_records_are_redacted_before_any_handler(
    redacting: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=redacting.name)
    redacting.info("user wrote %s", f"card {CARD} mail a@b.example")
    try:
        raise ValueError(f"bad {CARD}")
    except ValueError:
        redacting.exception("failed")
    redacting.warning("dropped", extra={"reason": f"text {CARD}"})
    [info, error, warning] = caplog.records
    assert info.getMessage() == "user wrote card [CARD] mail [EMAIL]"
    assert CARD not in caplog.text and "bad [CARD]" in caplog.text
    assert error.exc_info is not None and str(error.exc_info[1]) == "bad [CARD]"
    assert warning.reason == "text [CARD]"  # type: ignore[attr-defined]


def test_with_redaction_off_nothing_changes(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction(None)
    caplog.set_level(logging.INFO)
    logging.getLogger("agentworker.test.plain").info("card %s", CARD)
    assert CARD in caplog.text


def test_a_log_record_keeps_its_args_as_the_formatter_reads_them(redacting: logging.Logger) -> None:
    """uvicorn's access formatter unpacks five args: the factory used to empty them, and
    every request printed a "Logging error" traceback instead of its line."""
    from uvicorn.logging import AccessFormatter

    formatter = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s')
    args = ("127.0.0.1:5000", "GET", "/v1/conversations/ws:a?mail=jane@example.com", "1.1", 404)
    record = redacting.makeRecord(
        redacting.name, logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )
    assert len(record.args or ()) == 5  # each arg masked where it must be, none dropped
    line = formatter.format(record)
    request = '"GET /v1/conversations/ws:a?mail=[EMAIL] HTTP/1.1"'
    assert line == f"127.0.0.1:5000 - {request} 404 Not Found"
    clean = redacting.makeRecord(redacting.name, logging.INFO, __file__, 1, "%s %d", ("a", 1), None)
    assert clean.args == ("a", 1)  # nothing to mask: the record as it was logged


@pytest.mark.parametrize(
    ("msg", "args", "message"),
    [
        ("paid with %d", (4111111111111111,), "paid with [CARD]"),  # a number: rendered now
        ("mail %s@%s", ("jane", "example.com"), "mail [EMAIL]"),  # a secret across two args
        ("headers %r", ([(b"authorization", b"Bearer s3cret")],), "headers "
         "[(b'authorization', b'Bearer [TOKEN]')]"),
        ("%(who)s wrote %(what)s", {"who": "jane", "what": CARD}, "jane wrote [CARD]"),
    ],
)  # fmt: skip
def test_a_record_whose_args_cannot_carry_the_mask_is_rendered_now(
    redacting: logging.Logger, msg: str, args: Any, message: str
) -> None:
    record = redacting.makeRecord(redacting.name, logging.INFO, __file__, 1, msg, args, None)
    assert record.getMessage() == message


def test_a_tracking_uri_is_named_without_its_password() -> None:
    from workers.config import Settings
    from workers.prompts import MlflowPromptRegistry

    uri = "https://agent:s3cret@mlflow.example.com/"
    assert Settings(mlflow_tracking_uri=uri).shown_tracking_uri == (
        "https://agent:***@mlflow.example.com/"
    )
    assert MlflowPromptRegistry(uri).location == "https://agent:***@mlflow.example.com/"
    assert url_without_credentials("sqlite:////var/lib/x/mlflow.db") == (
        "sqlite:////var/lib/x/mlflow.db"
    )
