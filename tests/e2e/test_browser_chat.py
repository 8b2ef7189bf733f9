"""End to end: the real server, the web chat page, headless Chromium.

Drives ``GET /`` through a whole conversation (a reply, a tool call, an approval), restarts the
server on the same state directory, and checks the page reconnects and shows the history.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.e2e.conftest import WAIT, wait_for
from tests.functional.server_process import DEV_TOKEN

pytestmark = pytest.mark.browser

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_ENV = "E2E_SCREENSHOT"
"""If set, a mid-conversation screenshot is also written to this path."""


# --- the server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """``agentworker serve`` as a subprocess; restartable on the same port and state dir."""

    def __init__(
        self, state_dir: Path, port: int, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.port = port
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "AGENTWORKER_TRACING": "false",
            "PYTHONUNBUFFERED": "1",
            "AGENTWORKER_DEV_TOKEN": DEV_TOKEN,
            **self.env,
        }
        cmd = [
            sys.executable, "-m", "workers.cli", "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + WAIT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)  # polling interval only; the deadline decides
        pytest.fail(f"server not healthy after {WAIT}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


def serving(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A started server of its own (the fixtures' body): stopped when the test ends."""
    srv = Server(tmp_path / "state", free_port(), tmp_path / "server.log", env)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path)


@pytest.fixture
def triage_server(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path, {"AGENTWORKER_GRAPH": "triage_bot.graph:build"})


# --- page helpers --------------------------------------------------------------------------


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[Server]:
    """An app whose turns work a while (six progress notes, no text until the end)."""
    yield from serving(tmp_path, {"AGENTWORKER_GRAPH": "tests.langgraph_apps.slow_stream:graph"})


def test_the_page_shows_what_a_turn_does_and_stops_it(
    slow_server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """While a turn works the page says what it does, with a Stop button; Stop ends the
    turn with a notice and no reply; the next message is answered. The caller's
    conversations are listed, the most recently active first, and open from the list."""
    drv = driver
    try:
        drv.get(slow_server.url + f"/#token={DEV_TOKEN}")
        wait_status(drv, "open")
        type_message(drv, "take your time")
        wait_for(drv, "the turn's status", lambda d: "Thinking…" in texts(d, "turn-status"))
        clickable(drv, "stop").click()
        wait_for(
            drv,
            "the cancel's notice",
            lambda d: any("Stopped: this answer was cancelled." in t for t in texts(d, "notice")),
        )
        assert not texts(drv, "reply") and not texts(drv, "turn-status")
        type_message(drv, "and now?")
        wait_reply(drv, "done after 6 steps: and now?")
        assert not texts(drv, "stop")

        # the caller's conversations: a second one, then back to the first from the list
        first = drv.find_element(*by_testid("conversation-id")).get_attribute("value")
        clickable(drv, "new-chat").click()
        wait_for(
            drv,
            "a new conversation",
            lambda d: d.find_element(*by_testid("conversation-id")).get_attribute("value") != first,
        )
        type_message(drv, "second chat")
        wait_reply(drv, "done after 6 steps: second chat")

        def listed(d: webdriver.Chrome) -> list[str] | None:
            options = d.find_elements(By.CSS_SELECTOR, '[data-testid="conversations"] option')
            values = [o.get_attribute("value") or "" for o in options][1:]
            return values if len(values) == 2 else None

        recent = wait_for(drv, "both conversations listed", listed)
        assert recent[1] == first  # the most recently active first
        Select(drv.find_element(*by_testid("conversations"))).select_by_value(first)
        wait_reply(drv, "done after 6 steps: and now?")
        assert drv.find_element(*by_testid("conversation-id")).get_attribute("value") == first
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{slow_server.log_tail()}")
        raise


def by_testid(testid: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'[data-testid="{testid}"]'


def texts(drv: webdriver.Chrome, testid: str) -> list[str]:
    try:
        return [e.text for e in drv.find_elements(*by_testid(testid))]
    except StaleElementReferenceException:
        return []


def wait_reply(drv: webdriver.Chrome, fragment: str, count: int = 1) -> list[str]:
    """Wait until ``count`` reply bubbles contain ``fragment``; return all reply texts."""

    def cond(d: webdriver.Chrome) -> list[str] | None:
        replies = texts(d, "reply")
        return replies if sum(fragment in r for r in replies) >= count else None

    return wait_for(drv, f"{count} reply(ies) containing {fragment!r}", cond)


def wait_status(drv: webdriver.Chrome, state: str, *, negate: bool = False) -> None:
    def cond(d: webdriver.Chrome) -> bool:
        current = d.find_element(*by_testid("status")).get_attribute("data-state")
        return (current != state) if negate else (current == state)

    wait_for(drv, f"status {'not ' if negate else ''}{state!r}", cond)


def type_message(drv: webdriver.Chrome, text: str, *, click_send: bool = False) -> None:
    box = drv.find_element(*by_testid("message-input"))
    box.send_keys(text)
    if click_send:
        drv.find_element(*by_testid("send")).click()
    else:
        box.send_keys(Keys.ENTER)
    wait_for(drv, "input cleared", lambda d: box.get_attribute("value") == "")


def clickable(drv: webdriver.Chrome, testid: str) -> WebElement:
    def cond(d: webdriver.Chrome) -> WebElement | None:
        els = [e for e in d.find_elements(*by_testid(testid)) if e.is_displayed()]
        return els[0] if els and els[0].is_enabled() else None

    return wait_for(drv, f"clickable {testid!r}", cond)


def save_screenshot(drv: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    drv.save_screenshot(str(tmp_path / name))
    extra = os.environ.get(SCREENSHOT_ENV)
    if extra:
        drv.save_screenshot(extra)


# --- the scenario --------------------------------------------------------------------------


def test_chat_approval_and_history_survive_restart(
    server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    try:
        run_scenario(server, driver, tmp_path)
    except BaseException:
        try:
            driver.save_screenshot(str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(driver.page_source)
        except WebDriverException:
            pass
        print(f"browser artifacts in {tmp_path}\nserver log:\n{server.log_tail()}")
        raise


def run_scenario(server: Server, drv: webdriver.Chrome, tmp_path: Path) -> None:
    # Without the server's token the page says how to get it, and stops trying; so it does
    # with a token the server refuses.
    drv.get(server.url + "/")
    wait_status(drv, "unauthenticated")
    wait_for(drv, "the token hint", lambda d: "#token=" in " ".join(texts(d, "error")))
    assert "no access token" in " ".join(texts(drv, "error"))
    drv.get("about:blank")
    drv.get(server.url + "/#token=not-the-token")
    wait_status(drv, "unauthenticated")
    wait_for(drv, "refused", lambda d: "did not accept" in " ".join(texts(d, "error")))
    assert len(texts(drv, "error")) == 1, texts(drv, "error")
    # With it (the address `agentworker serve` prints), it connects; the token leaves the
    # address bar at once and stays with the page's origin.
    drv.get("about:blank")  # a new page load, not a fragment change
    drv.get(server.url + f"/#token={DEV_TOKEN}")
    wait_status(drv, "open")
    assert DEV_TOKEN not in drv.current_url

    cid_box = drv.find_element(*by_testid("conversation-id"))
    cid = cid_box.get_attribute("value") or ""
    assert cid.startswith("ws:web:"), cid
    wait_for(drv, "conversation id in the URL hash", lambda d: cid in d.current_url)
    # The header names the app and its model; the empty conversation offers its prompts.
    wait_for(drv, "the app's name", lambda d: texts(d, "app-name") == ["Support agent"])
    assert texts(drv, "app-model") == ["offline model"]
    assert "Close ticket 1" in wait_for(drv, "suggestions", lambda d: texts(d, "suggestion"))

    # A plain reply, sent with Enter; its chunks end up replaced by the final reply.
    type_message(drv, "hello")
    wait_reply(drv, "You said: hello")
    assert texts(drv, "user-message") == ["hello"]

    # A tool call, sent with the button.
    type_message(drv, "please open a ticket about my broken printer", click_send=True)
    wait_reply(drv, "Opened ticket")
    wait_for(drv, "no typing bubble left", lambda d: not d.find_elements(*by_testid("typing")))

    # A tool call that needs approval.
    type_message(drv, "close ticket 1")
    card = wait_for(
        drv, "approval card", lambda d: d.find_elements(*by_testid("approval")) or None
    )[0]
    assert "May I set status to closed on ticket 1?" in card.text
    save_screenshot(drv, tmp_path, "chat-approval.png")
    assert drv.find_elements(*by_testid("deny"))
    clickable(drv, "approve").click()
    replies = wait_reply(drv, "is closed")
    assert not drv.find_elements(*by_testid("approve")), "buttons stay after the decision"
    assert len(replies) == 3, replies
    save_screenshot(drv, tmp_path, "chat.png")

    # Restart the server on the same state dir and port: the page notices and reconnects.
    server.stop()
    wait_status(drv, "open", negate=True)
    server.start()
    wait_status(drv, "open")

    # Reload: the conversation (kept in the URL hash) is rendered from history.
    drv.refresh()
    wait_status(drv, "open")
    assert drv.find_element(*by_testid("conversation-id")).get_attribute("value") == cid
    # So it is from the address `serve` prints (no conversation in it): the page kept the
    # last one.
    drv.get("about:blank")
    drv.get(server.url + f"/#token={DEV_TOKEN}")
    wait_status(drv, "open")
    assert drv.find_element(*by_testid("conversation-id")).get_attribute("value") == cid
    history = wait_reply(drv, "is closed")
    assert any("You said: hello" in r for r in history), history
    assert any("Opened ticket 1" in r for r in history), history
    assert len(history) == 3, history
    assert texts(drv, "user-message") == [
        "hello",
        "please open a ticket about my broken printer",
        "close ticket 1",
    ]
    cards = drv.find_elements(*by_testid("approval"))
    assert len(cards) == 1
    assert "ticket 1" in cards[0].text
    assert "Approved" in cards[0].text
    assert not drv.find_elements(*by_testid("approve")), "a decided approval shows no buttons"

    # The restarted server still answers.
    type_message(drv, "hello again")
    replies = wait_reply(drv, "You said: hello again")
    assert len(replies) == 4, replies
    assert texts(drv, "user-message")[-1] == "hello again"
    assert not texts(drv, "error")


def test_a_question_of_the_graph_is_answered_on_the_page(
    triage_server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """The triage example asks with interrupt(): its options are buttons; a click resumes
    the turn; a question typed over is answered by the next chat message."""
    drv = driver
    try:
        drv.get(triage_server.url + f"/#token={DEV_TOKEN}")
        wait_status(drv, "open")
        type_message(drv, "hello")
        card = wait_for(
            drv, "question card", lambda d: d.find_elements(*by_testid("interrupt")) or None
        )[0]
        assert "billing, a technical problem, or your account" in card.text
        options = [e.text for e in drv.find_elements(*by_testid("option"))]
        assert options == ["billing", "technical", "account"]
        save_screenshot(drv, tmp_path, "chat-question.png")
        next(e for e in drv.find_elements(*by_testid("option")) if e.text == "account").click()
        wait_reply(drv, "[account team, normal priority]")
        assert not drv.find_elements(*by_testid("option")), "options stay after the answer"
        assert "Answered: account" in texts(drv, "decision")

        drv.get(triage_server.url + "/#ws:web:second")
        wait_status(drv, "open")
        type_message(drv, "hi again")
        wait_for(drv, "second question", lambda d: d.find_elements(*by_testid("answer")) or None)
        type_message(drv, "it is about my invoice")  # typed in the chat: the answer
        wait_reply(drv, "[billing team, normal priority]")
        assert "Answered in the chat" in texts(drv, "decision")
        assert not texts(drv, "error")
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{triage_server.log_tail()}")
        raise


@pytest.fixture
def traced_server(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path, {"AGENTWORKER_TRACING": "true", "MLFLOW_MODEL_CATALOG_URI": ""})


def test_thumbs_under_a_reply_reach_its_trace_in_mlflow(
    traced_server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """A thumbs down asks what went wrong; the rating (then a thumbs up instead) is sent
    over the WebSocket and lands on the reply's turn trace as ``user_feedback``."""
    from tests.functional.server_process import assessments

    drv, srv = driver, traced_server
    try:
        drv.get(srv.url + f"/#token={DEV_TOKEN}")
        wait_status(drv, "open")
        type_message(drv, "hello")
        wait_reply(drv, "You said: hello")
        clickable(drv, "thumb-down").click()
        comment = drv.find_element(*by_testid("feedback-comment"))
        comment.send_keys("too short")
        clickable(drv, "feedback-send").click()
        wait_for(drv, "thanks", lambda d: "Thanks" in " ".join(texts(d, "rate-note")))
        down = drv.find_element(*by_testid("thumb-down"))
        assert down.get_attribute("aria-pressed") == "true"
        assert drv.find_element(*by_testid("thumb-up")).get_attribute("aria-pressed") == "false"
        assert not drv.find_elements(*by_testid("feedback-form"))
        save_screenshot(drv, tmp_path, "chat-feedback.png")
        clickable(drv, "thumb-up").click()
        wait_for(
            drv,
            "thumb up pressed",
            lambda d: (
                d.find_element(*by_testid("thumb-up")).get_attribute("aria-pressed") == "true"
            ),
        )
        assert down.get_attribute("aria-pressed") == "false"
        assert not texts(drv, "error")

        cid = drv.find_element(*by_testid("conversation-id")).get_attribute("value")
        auth = {"authorization": f"Bearer {DEV_TOKEN}"}
        view = httpx.get(f"{srv.url}/v1/conversations/{cid}", headers=auth, timeout=10).json()
        [reply] = [r["payload"] for r in view["replies"]]
        row = drv.find_element(By.CSS_SELECTOR, "li[data-reply-id]")
        assert row.get_attribute("data-reply-id") == reply["reply_id"]
        srv.stop()
        found = assessments(srv.state_dir, f"tags.turn_id = '{reply['turn_id']}'")
        assert sorted((a.value, a.rationale) for a in found) == [(-1, "too short"), (1, None)]
        assert {a.source.source_id for a in found} == {view["messages"][0]["sender"]}
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{srv.log_tail()}")
        raise


# --- replies, decisions and failures --------------------------------------------------------


def set_message(drv: webdriver.Chrome, text: str) -> None:
    """Put ``text`` (newlines and all) in the message box, as typing would, and send it."""
    box = drv.find_element(*by_testid("message-input"))
    drv.execute_script(
        "arguments[0].value = arguments[1];"
        " arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
        box,
        text,
    )
    clickable(drv, "send").click()
    wait_for(drv, "input cleared", lambda d: box.get_attribute("value") == "")


HOSTILE_MARKDOWN = "\n".join(
    [
        "**bold** <script>window.pwned=1</script>",
        "",
        "<img src=x onerror=window.pwned=2> [js](javascript:window.pwned=3)",
        "[data](data:text/html,<script>x</script>) ![pixel](https://example.invalid/p.png)",
        '<a href="https://example.com" onclick="window.pwned=5">raw link</a>',
        "",
        "- [docs](https://example.com/docs)",
        "",
        "| column | another |",
        "|---|---|",
        "| " + "wide " * 6 + "| cell |",
        "",
        "```",
        "a_code_line_much_wider_than_a_phone_" + "x" * 50,
        "```",
        "",
        "The end.",
    ]
)
"""Under the offline model's 500 characters: it says all of it back."""


def check_nothing_injected(drv: webdriver.Chrome) -> None:
    """No script of the reply ran, nothing it tried to add is in the page, every link is
    http(s) or mailto, and the page's own policy was never violated."""
    found = drv.execute_script(
        """
        const replies = [...document.querySelectorAll('[data-testid="reply"]')];
        const inside = (sel) => replies.flatMap((r) => [...r.querySelectorAll(sel)]).length;
        const handlers = [...document.querySelectorAll('*')].flatMap(
          (e) => [...e.attributes].map((a) => a.name).filter((n) => n.startsWith('on')));
        return {
          pwned: window.pwned === undefined ? null : window.pwned,
          scripts: document.scripts.length,
          injected: inside('script, img, iframe, object, embed, form, style, svg, input'),
          handlers,
          hrefs: replies.flatMap((r) => [...r.querySelectorAll('a[href]')].map((a) => a.href)),
          violations: window.cspViolations || [],
        };
        """
    )
    assert found["pwned"] is None, found
    assert found["scripts"] == 1 and found["injected"] == 0 and found["handlers"] == [], found
    assert all(h.startswith(("https:", "http:", "mailto:")) for h in found["hrefs"]), found
    assert found["violations"] == [], found


def test_a_hostile_reply_renders_as_markdown_and_injects_nothing(
    server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """The offline model says back what it was sent: a reply full of markup and script
    shows as formatted text; nothing of it runs or loads."""
    drv = driver
    try:
        drv.get(server.url + f"/#token={DEV_TOKEN}")
        wait_status(drv, "open")
        drv.execute_script(
            "window.cspViolations = [];"
            " document.addEventListener('securitypolicyviolation',"
            " (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        set_message(drv, HOSTILE_MARKDOWN)
        wait_reply(drv, "The end.")
        reply = drv.find_elements(*by_testid("reply"))[-1]
        assert reply.find_element(By.TAG_NAME, "strong").text == "bold"
        assert reply.find_element(By.TAG_NAME, "table").is_displayed()
        assert "<script>window.pwned=1</script>" in reply.text  # shown, as text
        links = {a.text: a.get_attribute("href") for a in reply.find_elements(By.TAG_NAME, "a")}
        assert links["docs"] == "https://example.com/docs"
        assert "raw link" not in links and '<a href="https://example.com"' in reply.text
        assert set(links) == {"docs", "pixel"}  # an image is a link: it loads nothing
        check_nothing_injected(drv)
        # Token counts wait behind a toggle.
        usage = drv.find_elements(*by_testid("usage"))[-1]
        tokens = usage.find_element(*by_testid("usage-tokens"))
        assert not tokens.is_displayed()
        usage.find_element(By.TAG_NAME, "summary").click()
        assert "tokens in" in tokens.text
        # History renders the same way.
        drv.refresh()
        wait_status(drv, "open")
        wait_reply(drv, "The end.")
        check_nothing_injected(drv)
        save_screenshot(drv, tmp_path, "chat-markdown.png")
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{server.log_tail()}")
        raise


def test_deny_with_a_reason_and_retry_a_failed_send(
    server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """Deny takes a reason, which the agent is told and the history keeps. A send that
    failed (an error answer, a socket that closed before the answer) goes again with the
    same dedupe key, so it is answered once."""
    drv = driver
    try:
        drv.get(server.url + f"/#token={DEV_TOKEN}")
        wait_status(drv, "open")
        type_message(drv, "please open a ticket about the projector")
        wait_reply(drv, "Opened ticket")
        type_message(drv, "close ticket 1")
        clickable(drv, "deny").click()
        reason = clickable(drv, "deny-reason")
        reason.send_keys("not before Friday")
        clickable(drv, "deny-confirm").click()
        wait_reply(drv, "not before Friday")
        assert texts(drv, "decision") == ["✗ Denied: not before Friday"]
        drv.refresh()
        wait_status(drv, "open")
        wait_for(
            drv,
            "the reason from history",
            lambda d: texts(d, "decision") == ["✗ Denied: not before Friday"],
        )

        # An error answer (the server busy): the message says so, and Retry sends the same
        # frame again.
        drv.execute_script(
            """
            window.sentFrames = [];
            const send = WebSocket.prototype.send;
            let failNext = true;
            WebSocket.prototype.send = function (data) {
              const frame = JSON.parse(data);
              if (frame.action === "send") window.sentFrames.push(frame);
              if (frame.action === "send" && failNext) {
                failNext = false;  // answered as a busy server would, never sent
                const error = {type: "error", error: {code: "unavailable", message: "busy"}};
                setTimeout(() => this.onmessage({data: JSON.stringify(error)}), 0);
                return;
              }
              return send.call(this, data);
            };
            """
        )
        type_message(drv, "hello there")
        wait_for(drv, "the failure", lambda d: "busy" in " ".join(texts(d, "message-note")))
        clickable(drv, "retry").click()
        wait_reply(drv, "You said: hello there")
        first, again = drv.execute_script("return window.sentFrames")
        assert first == again and first["dedupe_key"].startswith("web:")
        assert texts(drv, "user-message").count("hello there") == 1

        # The socket closes right after the message left: the page cannot know it arrived,
        # sends it again on reconnect with the same key, and the server answers it once.
        drv.execute_script(
            """
            const send = WebSocket.prototype.send;
            let closeNext = true;
            WebSocket.prototype.send = function (data) {
              const result = send.call(this, data);
              if (JSON.parse(data).action === "send" && closeNext) {
                closeNext = false;
                this.close();
              }
              return result;
            };
            """
        )
        type_message(drv, "hello once")
        wait_reply(drv, "You said: hello once")
        sent = [
            f for f in drv.execute_script("return window.sentFrames") if f["text"] == "hello once"
        ]
        assert len(sent) == 2 and sent[0] == sent[1], sent
        time.sleep(1)  # an answer to a second copy would have come by now
        assert sum("You said: hello once" in r for r in texts(drv, "reply")) == 1
        assert texts(drv, "user-message").count("hello once") == 1
        assert not texts(drv, "error")
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{server.log_tail()}")
        raise


# --- layout: a phone and a desktop ------------------------------------------------------------

WIDTHS = (360, 1280)
HEIGHT = 800
ACCENT = (0x2F, 0x6F, 0xEB)
"""The page's accent (light scheme): the send button and the user's bubbles."""
PANEL = (0xFF, 0xFF, 0xFF)

GEOMETRY_JS = """
const vw = window.innerWidth;
const box = (e) => {
  if (!e) return null;
  const r = e.getBoundingClientRect();
  return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width,
          height: r.height};
};
const one = (id) => box(document.querySelector(`[data-testid="${id}"]`));
// Is ``e`` cut off by an ancestor that scrolls or clips sideways (a code block, a table, a
// bubble)? Then its own overflow is that ancestor's business, not the page's. The page's
// own scroller (main) does not count: what it hides is what a user could not see.
const clipped = (e) => {
  for (let a = e.parentElement; a && a !== document.body && a.id !== "scroller";
       a = a.parentElement) {
    const x = getComputedStyle(a).overflowX;
    if (x !== "visible") return true;
  }
  return false;
};
const overflowing = [...document.querySelectorAll("body *")].filter((e) => {
  const r = e.getBoundingClientRect();
  if (!r.width || !r.height) return false;
  return (r.right > vw + 1 || r.left < -1) && !clipped(e);
}).map((e) => e.tagName + "." + e.className + "#" + (e.dataset.testid || ""));
const list = box(document.getElementById("messages"));
const rows = [...document.querySelectorAll("#messages > li.row")].map((li) => {
  const kind = li.classList.contains("user") ? "user" : li.classList.contains("system")
    ? "system" : "agent";
  const b = box(li.querySelector(".bubble, .approval, .notice"));
  const leftGap = b.left - list.left, rightGap = list.right - b.right;
  const side = Math.abs(leftGap - rightGap) < 8 ? "center" : leftGap < rightGap ? "left" : "right";
  return {kind, side, box: b};
});
const hit = (id) => {
  const b = one(id);
  const e = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
  return !!e && !!e.closest(`[data-testid="${id}"]`);
};
const modelEl = document.querySelector('[data-testid="app-model"]');
return {
  viewport: vw, dpr: window.devicePixelRatio,
  scrollWidth: document.documentElement.scrollWidth, overflowing,
  header: box(document.querySelector("header")), appName: one("app-name"),
  appModel: one("app-model"), cid: one("conversation-id"), newChat: one("new-chat"),
  status: one("status"), input: one("message-input"), send: one("send"),
  inputUsable: hit("message-input"), sendUsable: hit("send"),
  appNameText: document.querySelector('[data-testid="app-name"]').textContent,
  appModelText: modelEl.textContent,
  rows,
};
"""


def set_viewport(drv: webdriver.Chrome, width: int) -> None:
    """The page's width and height in CSS pixels, one device pixel each, light scheme."""
    drv.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    drv.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {
            "features": [
                {"name": "prefers-color-scheme", "value": "light"},
                {"name": "prefers-reduced-motion", "value": "reduce"},
            ]
        },
    )


def near(color: object, expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    """Whether a pixel of an RGB image (``Image.getpixel``) is ``expected``, give or take
    antialiasing and colour management."""
    assert isinstance(color, tuple), color
    return all(abs(c - e) <= tolerance for c, e in zip(color, expected, strict=True))


def check_geometry(g: dict[str, Any], width: int) -> None:
    """At ``width``: nothing overflows sideways, the header names the app and its model, the
    conversation field, the message box and the send button are visible and usable."""
    assert g["viewport"] == width
    assert g["scrollWidth"] <= width, g["scrollWidth"]
    assert g["overflowing"] == [], g["overflowing"]
    assert g["appNameText"] == "Support agent" and g["appModelText"] == "offline model"
    for part in ("appName", "appModel", "cid", "newChat", "status", "input", "send"):
        b = g[part]
        assert b["width"] > 0 and b["left"] >= 0 and b["right"] <= width, (part, b)
        assert b["top"] >= 0 and b["bottom"] <= HEIGHT, (part, b)
    assert g["appName"]["width"] >= 60 and g["appModel"]["width"] >= 30
    assert g["cid"]["width"] >= min(200, width / 2), g["cid"]  # it collapsed at 400 px
    assert g["input"]["width"] >= width * 0.5, g["input"]
    assert g["send"]["width"] >= 44 and g["send"]["height"] >= 40, g["send"]
    assert g["inputUsable"] and g["sendUsable"]
    assert g["input"]["right"] <= g["send"]["left"]  # side by side, the button last
    assert g["header"]["bottom"] <= g["input"]["top"]
    for row in g["rows"]:
        assert row["box"]["left"] >= 0 and row["box"]["right"] <= width, row


def layout(g: dict[str, Any]) -> list[tuple[str, str]]:
    """What the page looks like, independent of fonts and widths: each row's kind and
    side, in order."""
    return [(r["kind"], r["side"]) for r in g["rows"]]


def test_the_page_works_at_360_and_1280_pixels(
    server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """The same conversation on a phone and a desktop: geometry checked at both widths,
    then the two screenshots compared where fonts cannot move things: the layout of the
    rows, and the page's own colours at the places the geometry names (the send button,
    the user's bubbles, the header)."""
    from PIL import Image

    drv = driver
    try:
        set_viewport(drv, WIDTHS[0])
        drv.get(server.url + f"/#token={DEV_TOKEN}")
        wait_status(drv, "open")
        type_message(drv, "please open a ticket about my broken printer")
        wait_reply(drv, "Opened ticket")
        set_message(drv, HOSTILE_MARKDOWN)  # a wide table, a wide code block, long words
        wait_reply(drv, "The end.")
        type_message(drv, "close ticket 1")
        wait_for(drv, "approval card", lambda d: d.find_elements(*by_testid("approval")) or None)
        drv.find_element(*by_testid("message-input")).send_keys("a draft")  # Send enabled

        shots: dict[int, tuple[dict[str, Any], Path]] = {}
        for width in WIDTHS:
            set_viewport(drv, width)
            drv.execute_script("document.getElementById('scroller').scrollTop = 1e9;")
            time.sleep(0.3)  # layout and the scroll settle
            geometry: dict[str, Any] = drv.execute_script(GEOMETRY_JS)
            check_geometry(geometry, width)
            path = tmp_path / f"chat-{width}.png"
            assert drv.save_screenshot(str(path))
            shots[width] = (geometry, path)

        small, large = shots[WIDTHS[0]][0], shots[WIDTHS[1]][0]
        assert layout(small) == layout(large)
        assert ("user", "right") in layout(small) and ("agent", "left") in layout(small)
        for geometry, png in (shots[w] for w in WIDTHS):
            with Image.open(png) as image:
                rgb = image.convert("RGB")
                assert rgb.size == (geometry["viewport"], HEIGHT)  # no sideways scroll
                send = geometry["send"]
                at_send = rgb.getpixel(
                    (int(send["left"]) + 4, int(send["top"] + send["height"] / 2))
                )
                assert near(at_send, ACCENT), at_send
                header = geometry["header"]
                at_header = rgb.getpixel((2, int(header["top"]) + 2))
                assert near(at_header, PANEL), at_header
                shown = (header["bottom"], geometry["input"]["top"] - 12)  # the scroller
                users = [
                    r["box"]
                    for r in geometry["rows"]
                    if r["kind"] == "user"
                    and shown[0] <= r["box"]["top"]
                    and r["box"]["bottom"] <= shown[1]
                ]
                assert users, geometry["rows"]
                for b in users:
                    at_bubble = rgb.getpixel((int(b["left"]) + 5, int(b["top"] + b["height"] / 2)))
                    assert near(at_bubble, ACCENT), (at_bubble, b)
        save_screenshot(drv, tmp_path, "chat-1280-final.png")
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{server.log_tail()}")
        raise
