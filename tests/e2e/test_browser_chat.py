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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.functional.server_process import DEV_TOKEN

pytestmark = pytest.mark.browser

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0
"""Seconds an explicit wait may take before the test fails."""
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


@pytest.fixture
def browser_binaries() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = (
        f"BROWSER TEST DID NOT RUN: {', '.join(missing)} not found. "
        "Install with: apt-get install chromium chromium-driver"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(f"!!! {message} !!!")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "state", free_port(), tmp_path / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def triage_server(tmp_path: Path) -> Iterator[Server]:
    env = {"AGENTWORKER_GRAPH": "triage_bot.graph:build"}
    srv = Server(tmp_path / "state", free_port(), tmp_path / "server.log", env)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def driver(browser_binaries: None, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(arg)
    # An explicit driver path: selenium-manager never runs, nothing is downloaded.
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    drv = webdriver.Chrome(service=service, options=options)
    try:
        yield drv
    finally:
        drv.quit()


# --- page helpers --------------------------------------------------------------------------


def by_testid(testid: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f'[data-testid="{testid}"]'


def texts(drv: webdriver.Chrome, testid: str) -> list[str]:
    try:
        return [e.text for e in drv.find_elements(*by_testid(testid))]
    except StaleElementReferenceException:
        return []


def wait_for(drv: webdriver.Chrome, what: str, cond: Callable[[webdriver.Chrome], T | None]) -> T:
    """Wait until ``cond`` returns something truthy; fail naming ``what`` on timeout."""
    waiter = WebDriverWait(drv, WAIT, ignored_exceptions=[StaleElementReferenceException])
    try:
        result = waiter.until(cond)
    except WebDriverException as exc:
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}") from exc
    assert result is not None  # until() only returns a truthy value
    return result


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
    # Without the server's token the page says how to get it, and stops trying.
    drv.get(server.url + "/")
    wait_status(drv, "unauthenticated")
    wait_for(drv, "the token hint", lambda d: "#token=" in " ".join(texts(d, "error")))
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
    env = {"AGENTWORKER_TRACING": "true", "MLFLOW_MODEL_CATALOG_URI": ""}
    srv = Server(tmp_path / "state", free_port(), tmp_path / "server.log", env)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def test_thumbs_under_a_reply_reach_its_trace_in_mlflow(
    traced_server: Server, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    """A thumbs down asks what went wrong; the rating (then a thumbs up instead) is sent
    over the WebSocket and lands on the reply's turn trace as ``user_feedback``."""
    from tests.functional.test_feedback import assessments

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
        found = assessments(srv.state_dir, reply["turn_id"])
        assert sorted((a.value, a.rationale) for a in found) == [(-1, "too short"), (1, None)]
        assert {a.source.source_id for a in found} == {view["messages"][0]["sender"]}
    except BaseException:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print(f"browser artifacts in {tmp_path}\nserver log:\n{srv.log_tail()}")
        raise
