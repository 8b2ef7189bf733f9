"""End to end: a web app built with LangGraph's JavaScript SDK (``useStream`` from
``@langchain/langgraph-sdk/react``, pinned in package-lock.json) runs against
``agentworker serve`` in headless Chromium.

The page (``tests/e2e/usestream/app.jsx``) is bundled with esbuild and served from an origin
of its own (a loopback static server, as a web app's dev server would), named in
``AGENTWORKER_ALLOWED_ORIGINS``: every call it makes is cross-origin, through CORS. It sends a
message and shows the reply as it streams, stops at a tool approval (an interrupt), resumes it
with ``submit(undefined, {command: {resume: true}})``, stops a run with ``stop()``, and shows
the thread's history again after a reload.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from tests.e2e.conftest import WAIT, console_log, did_not_run, wait_for
from tests.functional.server_process import DEV_TOKEN, ServerProcess, free_port

pytestmark = pytest.mark.browser

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).parent / "usestream" / "app.jsx"
ESBUILD = REPO_ROOT / "node_modules" / ".bin" / "esbuild"
SDK = REPO_ROOT / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json"
MODEL_LATENCY_MS = 400
"""Each model call of the served agent takes this long, so that a run is still going when
the page's Stop is clicked (and the rest of the test stays quick)."""

INDEX_HTML = """<!doctype html>
<html>
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>useStream</title></head>
<body><div id="root"></div><script src="app.js"></script></body>
</html>
"""


# --- the page and the servers ------------------------------------------------------------------


@pytest.fixture
def page_dir(tmp_path: Path) -> Path:
    """The page bundled (the SDK, React and the app in one script) beside its index.html."""
    missing = [str(p) for p in (ESBUILD, SDK) if not p.exists()]
    if missing:
        did_not_run(
            f"USESTREAM PAGE TEST DID NOT RUN: {', '.join(missing)} not found."
            " Install the pinned packages with: make package (npm ci)"
        )
    out = tmp_path / "page"
    out.mkdir()
    (out / "index.html").write_text(INDEX_HTML)
    built = subprocess.run(
        [
            str(ESBUILD),
            str(APP),
            "--bundle",
            "--jsx=automatic",
            '--define:process.env.NODE_ENV="production"',
            "--target=es2022",
            f"--outfile={out / 'app.js'}",
            "--log-level=warning",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": f"{REPO_ROOT / '.tools' / 'bin'}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, f"esbuild failed:\n{built.stdout}\n{built.stderr}"
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_origin(page_dir: Path) -> Iterator[str]:
    """The page served from a loopback port of its own: another origin than the API's."""
    handler = functools.partial(_QuietHandler, directory=str(page_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def api(tmp_path: Path, page_origin: str) -> Iterator[ServerProcess]:
    """``agentworker serve`` (the support agent, offline), letting the page's origin in."""
    env = {
        "AGENTWORKER_ALLOWED_ORIGINS": page_origin,
        "AGENTWORKER_MODEL": f"offline:{MODEL_LATENCY_MS}",
    }
    with ServerProcess(tmp_path / "state", port=free_port(), env=env) as srv:
        yield srv


STOP_ONCE_SHOWN = """
const [text, done] = arguments;
const look = () => {
  const shown = [...document.querySelectorAll('#messages .message[data-type="human"] .text')];
  const stop = document.getElementById("stop");
  if (shown.some((e) => e.textContent === text) && !stop.disabled) {
    stop.click();
    done(true);
  } else {
    setTimeout(look, 5);
  }
};
look();
"""

# --- page helpers ------------------------------------------------------------------------------


class Page:
    """The useStream page in the browser; a failed wait says what the page showed, what it
    wrote to its console and what the server logged."""

    def __init__(self, drv: webdriver.Chrome, api: ServerProcess) -> None:
        self.drv = drv
        self.api = api

    def wait(self, what: str, cond: Callable[[webdriver.Chrome], T | None]) -> T:
        return wait_for(self.drv, what, cond, shown=lambda: repr(self))

    def __repr__(self) -> str:
        try:
            shown = self.drv.find_element(By.TAG_NAME, "main").text
        except WebDriverException:
            shown = "(no page)"
        try:
            server = self.api.log.read_text(errors="replace").splitlines()[-30:]
        except OSError:
            server = ["(no server log)"]
        return (
            f"--- the page showed:\n{shown}\n--- its console:\n{console_log(self.drv)}"
            f"\n--- the server's log:\n" + "\n".join(server)
        )

    def messages(self) -> list[tuple[str, str, str]]:
        """(type, text, the node it streamed from or "") of each message shown."""
        return [
            (
                e.get_attribute("data-type") or "",
                e.find_element(By.CLASS_NAME, "text").text,
                e.get_attribute("data-node") or "",
            )
            for e in self.drv.find_elements(By.CSS_SELECTOR, "#messages .message")
        ]

    def status(self) -> str:
        return self.drv.find_element(By.ID, "status").text

    def send(self, text: str) -> None:
        self.wait("the page idle", lambda d: self.status() == "idle")
        self.drv.find_element(By.ID, "draft").send_keys(text)
        self.drv.find_element(By.ID, "send").click()

    def stop_once_shown(self, text: str) -> None:
        """Click Stop the moment the run's first state (from the server: its stream is under
        way) shows the message ``text``: from inside the page, where a WebDriver round trip
        per look could let a quick run end first."""
        self.drv.set_script_timeout(WAIT)
        try:
            self.drv.execute_async_script(STOP_ONCE_SHOWN, text)
        except WebDriverException as exc:
            raise AssertionError(f"{text!r} never shown with Stop to click\n{self}") from exc

    def reply(self, fragment: str) -> tuple[str, str, str]:
        """Wait until the run has ended with an AI message containing ``fragment``."""

        def shown(d: webdriver.Chrome) -> tuple[str, str, str] | None:
            if self.status() != "idle":
                return None
            found = [m for m in self.messages() if m[0] == "ai" and fragment in m[1]]
            return found[-1] if found else None

        return self.wait(f"a reply containing {fragment!r}", shown)


# --- the test ----------------------------------------------------------------------------------


def test_a_usestream_page_chats_streams_answers_an_approval_stops_and_reloads(
    driver: webdriver.Chrome, api: ServerProcess, page_origin: str
) -> None:
    page = Page(driver, api)
    driver.get(f"{page_origin}/#api={api.url}&token={DEV_TOKEN}&assistant=support_agent")
    page.wait("the page idle", lambda d: page.status() == "idle")

    # A message; the reply streams in (messages events: the node it came from) and stays.
    page.send("please open a ticket about my broken printer")
    reply = page.reply("Opened ticket 1:")
    assert reply[2] == "model", f"the reply did not stream (no messages events)\n{page}"
    thread_id = driver.find_element(By.ID, "status").get_attribute("data-thread")
    assert thread_id and f"thread={thread_id}" in driver.current_url
    seen: list[str] = driver.execute_script("return window.seenWhileStreaming ?? []")
    assert any("Opened ticket 1" in s for s in seen), f"nothing shown while it ran\n{page}"

    # A tool that needs approval: the run stops at an interrupt the page shows; approving it
    # resumes the run with Command(resume=true).
    page.send("close ticket 1")
    question = page.wait(
        "the approval question",
        lambda d: d.find_elements(By.ID, "interrupt") and d.find_element(By.ID, "question").text,
    )
    assert question == "May I set status to closed on ticket 1?", page
    kind = driver.find_element(By.ID, "interrupt").get_attribute("data-kind")
    assert kind == "tool_approval", page
    driver.find_element(By.ID, "approve").click()
    updated = page.reply("Updated. Ticket 1")
    assert "closed" in updated[1], page
    assert not driver.find_elements(By.ID, "interrupt"), f"the question stayed\n{page}"

    # Stop: the run is cancelled on the server (useStream closes its stream; the run was
    # asked with on_disconnect="cancel"), and nothing of it is kept (seen after the reload).
    page.send("what time is it")
    page.stop_once_shown("what time is it")
    page.wait("the page idle after Stop", lambda d: page.status() == "idle")

    def last_run(d: webdriver.Chrome) -> str | None:
        runs = httpx.get(f"{api.url}/threads/{thread_id}/runs", headers=api.auth).json()
        status: str = runs[0]["status"]
        return None if status in ("pending", "running") else status

    assert page.wait("the stopped run to end on the server", last_run) == "interrupted", page

    # A reload with the thread's id in the URL: the page shows the thread as the server has it.
    driver.refresh()

    def reloaded(d: webdriver.Chrome) -> list[tuple[str, str, str]] | None:
        shown = page.messages()
        return shown if page.status() == "idle" and len(shown) >= 4 else None

    history = page.wait("the thread's messages after a reload", reloaded)
    texts = [(who, text) for who, text, _ in history if text]
    assert ("human", "please open a ticket about my broken printer") in texts, page
    assert any(k == "ai" and t.startswith("Opened ticket 1:") for k, t in texts), page
    assert ("human", "close ticket 1") in texts, page
    assert any(k == "ai" and t.startswith("Updated. Ticket 1") for k, t in texts), page
    assert all(t != "what time is it" for _, t in texts), f"the stopped run was kept\n{page}"
    assert not driver.find_elements(By.ID, "error"), page
    logged: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    errors = [e for e in logged if e.get("level") == "SEVERE"]
    assert not errors, f"the page logged errors: {errors}\n{page}"
