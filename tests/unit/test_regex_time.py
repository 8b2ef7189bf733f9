"""Every pattern run on user text is linear-time: the classic killers of a backtracking
engine, at the largest message accepted (256 KB), each scanned within a CPU-time bound, by
each built-in pattern and by the guard, the redaction hook and the offline model as wholes;
doubling the text about doubles the time; and a configured pattern that could backtrack is
refused before it runs.

Times are CPU time of this process (other processes on a loaded machine do not count), and
a scan over its bound is interrupted there: ``re`` checks for signals as it matches, so a
quadratic pattern fails in a second instead of running for minutes.
"""

from __future__ import annotations

import gc
import logging
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from events.inbound import _LEADING_MENTIONS, MAX_MESSAGE_BYTES
from workers.agent.offline import _TICKET_NO, _tool_call
from workers.core import redaction
from workers.core.guard import INJECTION_RULES, GuardPolicy, StreamGuard, guard_input, guard_output
from workers.core.pattern_cost import MAX_STEPS, check_pattern, pattern_steps
from workers.core.redaction import Redactor
from workers.errors import ConfigError
from workers.observability import install_redaction

SIZE = MAX_MESSAGE_BYTES
BOUND = 2.0
"""CPU seconds for one scan of SIZE characters: a linear scan takes a few hundredths to a
fifth of a second here, a quadratic one minutes; the margin is for a slower machine."""


def fill(unit: str, size: int = SIZE, *, head: str = "", tail: str = "") -> str:
    body = unit * ((size - len(head) - len(tail)) // len(unit) + 1)
    return head + body[: size - len(head) - len(tail)] + tail


def killers(size: int = SIZE) -> dict[str, str]:
    """Texts that make a backtracking pattern scan again from each position of a long run."""
    return {
        "dotted local part, then @": fill("a.", size, tail="@"),
        "@, then dotted labels": fill("a.", size, head="@"),
        "labels without a top-level domain": fill("1.", size, head="x@"),
        "one long word": fill("a", size),
        "one long number": fill("1", size),
        "digits and spaces": fill("1 ", size),
        "digits and dashes": fill("1-", size),
        "phone-like groups": fill("12 ", size),
        "international prefixes": fill("+1 12 ", size),
        "IBAN-like run": fill("A1", size, head="AB12"),
        "IBAN-like with spaces": fill("A ", size, head="AB12 "),
        "spaces": fill(" ", size),
        "newlines": fill("\n", size),
        "AWS secret lead-in": fill(" ", size, head="aws secret key="),
        "AWS key words": fill("aws secret key: ", size),
        "bearer words": fill("Bearer ", size),
        "bearer subprotocols": fill("bearer.", size, tail="!"),
        "JWT-like": fill("eyJa.", size),
        "URL userinfo": fill("a:", size, head="http://"),
        "URL schemes": fill("a://", size),
        "many e-mails": fill("ab@cd.ef ", size),
        "many cards": fill("4111 1111 1111 1111, ", size),
        "phone numbers, no space between": fill("030 1234 5678,", size),
        "injection lead-ins": fill("ignore all ", size),
        "injection and spaces": fill(" ", size, head="ignore"),
        "role lead-ins": fill("you are now ", size),
        "exfiltration lead-ins": fill("reveal the full ", size),
        "topic and separators": fill(" ", size, head="credit"),
        "ticket keywords": fill("close ", size),
        "ticket and spaces": fill(" ", size, head="close ticket"),
        "Slack mentions": fill("<@U1|", size),
    }


class CpuBoundExceeded(Exception):
    pass


@contextmanager
def cpu_bound(seconds: float) -> Iterator[Callable[[], float]]:
    """Interrupt the block after ``seconds`` of this process's CPU time; yields a function
    that tells the CPU time spent so far."""

    def expire(signum: int, frame: object) -> None:
        raise CpuBoundExceeded(f"over {seconds} s of CPU")

    previous = signal.signal(signal.SIGVTALRM, expire)
    start = time.process_time()
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield lambda: time.process_time() - start
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


RUNAWAY = 10.0
"""The process's CPU seconds after which a scan is interrupted (a quadratic one runs for
minutes): generous, since every thread of the process counts for the interval timer."""


def scan_time(scan: Callable[[str], Any], text: str, bound: float = BOUND) -> float:
    """The scanning thread's CPU time for ``scan(text)``; ``CpuBoundExceeded`` past
    ``bound``. Measured on this thread only: another thread of the test process (a server
    fixture of another module) costs it nothing. The collector is held off while it runs:
    late in a full run a collection walks the heap of a thousand tests, which is not the
    scan's cost (a CI run counted 1.28 s for a 0.2 s scan). No collection is forced before
    it either: disabled, the collector cannot run during the scan, and a forced one walks
    that same heap each time (half a second, thirty times a test, late in a full run)."""
    gc.disable()
    try:
        with cpu_bound(max(RUNAWAY, bound)):
            start = time.thread_time()
            scan(text)
            spent = time.thread_time() - start
    finally:
        gc.enable()
    if spent > bound:
        raise CpuBoundExceeded(f"{spent:.2f} s of CPU, over {bound} s")
    return spent


def assert_linear(scan: Callable[[str], Any], names: Iterable[str] | None = None) -> None:
    """Each killer (or each of ``names``) within the bound."""
    slow = {}
    texts = killers()
    for name in texts if names is None else names:
        text = texts[name]
        try:
            scan_time(scan, text)
        except CpuBoundExceeded as exc:
            slow[name] = str(exc)
    assert not slow, slow


# each built-in pattern ------------------------------------------------------------------------

TOPICS = GuardPolicy(blocked_topics=("crypto|bitcoin", "credit card", "competitor pricing"))
BUILT_IN: dict[str, re.Pattern[str]] = {
    **{
        name: getattr(redaction, name)
        for name in (
            "EMAIL",
            "CARD",
            "IBAN",
            "PHONE",
            "ISO_DATE",
            "AWS_KEY_ID",
            "AWS_SECRET",
            "BEARER",
            "JWT",
            "URL_USERINFO",
        )
    },
    **{f"injection:{rule}": pattern for rule, pattern in INJECTION_RULES},
    **{f"topic:{name}": pattern for name, pattern in TOPICS.topics},
    "offline:ticket number": _TICKET_NO,
    "slack:leading mentions": _LEADING_MENTIONS,
}


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_pattern_scans_every_killer_in_linear_time(name: str) -> None:
    pattern = BUILT_IN[name]
    assert_linear(lambda text: [m.span() for m in pattern.finditer(text)])


# the hooks as wholes ----------------------------------------------------------------------------

POLICY = GuardPolicy(input_pii="mask", output_pii="mask", blocked_topics=TOPICS.blocked_topics)
BLOCKING = GuardPolicy(input_pii="block", output_pii="block", prompt_injection=False)
REDACTOR = Redactor([r"EMP-\d{5}", r"(?i)password\s{0,5}+[:=]\s{0,5}+\S{1,64}"])
TOOLS = {"create_ticket", "update_ticket", "lookup_ticket", "current_time", "search_faq"}


def stream(policy: GuardPolicy, chunk: int) -> Callable[[str], Any]:
    def run(text: str) -> None:
        guard = StreamGuard(policy)
        for i in range(0, len(text), chunk):
            guard.feed(text[i : i + chunk])
        guard.flush()

    return run


class _Discard(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


def log_line(text: str) -> None:
    logger = logging.getLogger("tests.regex_time")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(_Discard())
    logger.warning("user said %s", text)


HOOKS: dict[str, Callable[[str], Any]] = {
    "redactor": REDACTOR.text,
    "redactor on a value": lambda text: REDACTOR.value({"inputs": [text]}),
    "guard_input": lambda text: guard_input([text], POLICY),
    "guard_input blocking": lambda text: guard_input([text], BLOCKING),
    "guard_output": lambda text: guard_output(text, POLICY),
    "stream guard, small deltas": stream(POLICY, 4096),
    "stream guard, one delta": stream(POLICY, SIZE),
    "stream guard, blocking": stream(BLOCKING, 512),
    "offline model": lambda text: _tool_call(text, TOOLS),
}


@pytest.fixture
def log_redaction() -> Iterator[None]:
    install_redaction(REDACTOR)
    yield
    install_redaction(None)


# what runs more than the patterns (where the findings are merged, a stream is cut, a log
# record is rebuilt) gets the killers of every kind of finding, and of none
FOR_HOOKS = [
    "dotted local part, then @",
    "labels without a top-level domain",
    "phone-like groups",
    "digits and dashes",
    "spaces",
    "newlines",
    "bearer words",
    "many e-mails",
    "many cards",
    "phone numbers, no space between",
    "injection and spaces",
    "ticket and spaces",
    "ticket keywords",
]


@pytest.mark.parametrize("name", HOOKS)
def test_each_hook_scans_the_killers_in_linear_time(name: str) -> None:
    assert_linear(HOOKS[name], FOR_HOOKS)


def test_the_log_record_factory_redacts_the_killers_in_linear_time(log_redaction: None) -> None:
    assert_linear(log_line, FOR_HOOKS)


@pytest.mark.parametrize("killer", ["dotted local part, then @", "many e-mails"])
def test_doubling_the_text_about_doubles_the_time(killer: str) -> None:
    """Linear is a ratio near 2; quadratic would be 4 (best of three against noise)."""

    def best(text: str) -> float:
        return min(
            scan_time(lambda t: (guard_input([t], POLICY), REDACTOR.text(t)), text)
            for _ in range(3)
        )

    half, full = best(killers(SIZE // 2)[killer]), best(killers(SIZE)[killer])
    assert full < 3 * half + 0.01, (half, full)


# configured patterns ------------------------------------------------------------------------------

BACKTRACKING = [
    r"(a+)+$",  # nested quantifiers: exponential
    r"(\w+\s?)*@",
    r"(a|a)*b",
    r"\w+@corp",  # one unbounded run: quadratic
    r".*secret",
    r"(?:\w{1,10}){1,10}x",  # bounded, but 10^10 ways
    r"\w{0,100}\w{0,100}x",  # two overlapping runs: 10^4 steps per position
    r"(\w{1,8})\1",  # a backreference
    r"(?:(a)|b)(?(1)c|d)",  # a conditional group
]


@pytest.mark.parametrize("pattern", BACKTRACKING)
def test_a_pattern_that_can_backtrack_is_refused_with_the_reason(pattern: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_pattern(pattern)
    assert repr(pattern) in str(exc.value)
    with pytest.raises(ConfigError):
        Redactor([pattern])


def test_the_settings_refuse_it_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.config import load_settings

    monkeypatch.setenv("AGENTWORKER_REDACT_PATTERNS", r'["EMP-\\d{5}", "\\w+@corp"]')
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "AGENTWORKER_REDACT_PATTERNS" in str(exc.value)
    assert "unbounded quantifier" in str(exc.value)


ACCEPTED = [
    r"EMP-\d{5}",
    r"sk-[A-Za-z0-9]{20,64}",
    r"ghp_[A-Za-z0-9]{36}",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"(?i)password\s{0,5}+[:=]\s{0,5}+\S{1,100}",
    r"(?i)(?:api|secret)[_-]?key[:=][A-Za-z0-9]{16,40}",
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_usual_secret_patterns_are_accepted(pattern: str) -> None:
    check_pattern(pattern)


# the worst shapes the budget still lets through: a run, two overlapping runs, a group of
# alternatives repeated, a repeated run
AT_THE_BUDGET = [
    r"\w{0,66}x",
    r"\w{0,7}\w{0,7}x",
    r"(?:\w|\w\w){1,4}x",
    r"(?:\w{1,3}){1,3}x",
    r"(?:1{0,2}){1,3}x",
]


@pytest.mark.parametrize("pattern", AT_THE_BUDGET)
def test_a_pattern_at_the_budget_scans_the_worst_texts_in_linear_time(pattern: str) -> None:
    """The texts that make these backtrack most: one long run of what they match."""
    assert MAX_STEPS // 2 < pattern_steps(pattern) <= MAX_STEPS
    compiled = re.compile(pattern)
    assert_linear(
        lambda text: [m.span() for m in compiled.finditer(text)],
        ["one long word", "one long number", "digits and spaces", "dotted local part, then @"],
    )
