"""``slack/manifest.yml`` creates the app the code expects: the events it subscribes to are
the ones the code takes, and its bot scopes are exactly those its events and the Web API
methods the code calls need (none missing, none to spare)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from workers.adapters.slack import METHOD_SCOPES
from workers.adapters.slack_events import EVENT_SCOPES, INTERACTIVE

ROOT = Path(__file__).parents[2]
MANIFEST: dict[str, Any] = yaml.safe_load((ROOT / "slack" / "manifest.yml").read_text())
SLACK_METHOD = re.compile(r"^[a-z]+(\.[a-zA-Z]+)+$")
CALLERS = frozenset({"call", "try_call", "web_call", "api_call"})


def methods_called() -> set[str]:
    """The Web API methods named in a call of the code (``call("chat.postMessage", ...)``)."""
    found: set[str] = set()
    for path in (ROOT / "workers").rglob("*.py"):
        if "sandbox" in path.parts:
            continue  # the stubs answer methods, they do not call them
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            for arg in node.args if name in CALLERS else []:
                value = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(value, str) and SLACK_METHOD.match(value):
                    found.add(value)
    return found


def test_the_manifest_subscribes_to_the_events_the_code_takes() -> None:
    settings = MANIFEST["settings"]
    assert sorted(settings["event_subscriptions"]["bot_events"]) == sorted(EVENT_SCOPES)
    assert settings["interactivity"]["is_enabled"] is INTERACTIVE
    urls = {
        settings["event_subscriptions"]["request_url"],
        settings["interactivity"]["request_url"],
    }
    assert len(urls) == 1 and urls.pop().endswith("/slack/events")  # one Request URL


def test_the_bot_scopes_are_what_the_events_and_calls_need() -> None:
    called = methods_called()
    assert called, "no Web API call found: the scan is broken"
    assert called <= set(METHOD_SCOPES), (
        f"calls without a known scope: {called - set(METHOD_SCOPES)}"
    )
    needed = {METHOD_SCOPES[m] for m in called} | set(EVENT_SCOPES.values())
    assert sorted(MANIFEST["oauth_config"]["scopes"]["bot"]) == sorted(needed)
