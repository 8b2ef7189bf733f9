"""The prompt's resolution (registry by alias, else the bundled file) and the registry
commands, against an in-memory registry; the identity on the turn's trace."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_steps import CID, World
from workers.config import Settings, load_settings
from workers.core.ports import NullTracer
from workers.errors import ConfigError, PromptRegistryError
from workers.prompts import (
    LoadedPrompt,
    PromptVersionInfo,
    default_prompt_name,
    diff_versions,
    file_version,
    has_registry_client,
    load_prompt,
    open_registry,
    push_prompt,
    resolve_prompt,
    set_alias,
)

NAME = "support-agent-system"


class FakePromptRegistry:
    """The ``PromptRegistry`` port in memory; ``broken`` makes every read fail."""

    location = "memory://"

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}
        self.aliases: dict[str, dict[str, int]] = {}
        self.broken = False

    def names(self) -> list[str]:
        return sorted(self.texts)

    def versions(self, name: str) -> list[PromptVersionInfo]:
        if self.broken:
            raise PromptRegistryError("memory://: connection refused")
        found = (self.get(name, str(n)) for n in range(len(self.texts.get(name, [])), 0, -1))
        return [v for v in found if v is not None]

    def get(self, name: str, ref: str) -> PromptVersionInfo | None:
        if self.broken:
            raise PromptRegistryError("memory://: connection refused")
        texts, aliases = self.texts.get(name, []), self.aliases.get(name, {})
        number = int(ref) if ref.isdigit() else aliases.get(ref, 0)
        if not 1 <= number <= len(texts):
            return None
        named = tuple(sorted(a for a, n in aliases.items() if n == number))
        return PromptVersionInfo(name, number, texts[number - 1], named)

    def create(self, name: str, text: str, message: str) -> PromptVersionInfo:
        self.texts.setdefault(name, []).append(text)
        found = self.get(name, str(len(self.texts[name])))
        assert found is not None
        return found

    def alias(self, name: str, alias: str, version: int) -> None:
        self.aliases.setdefault(name, {})[alias] = version


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "system.md"
    path.write_text("You are the bundled prompt.\n")
    return path


def settings(prompt_file: Path, **given: Any) -> Settings:
    return load_settings(prompt=prompt_file, state_dir=prompt_file.parent, **given)


def registry_with(*texts: str, **aliases: int) -> FakePromptRegistry:
    registry = FakePromptRegistry()
    for text in texts:
        registry.create(NAME, text, "")
    for alias, version in aliases.items():
        registry.alias(NAME, alias, version)
    return registry


def test_the_default_name_comes_from_the_graphs_package() -> None:
    assert default_prompt_name(load_settings()) == NAME  # the bundled support example
    triage = load_settings(graph="triage_bot.graph:build")
    assert default_prompt_name(triage) == "triage-bot-system"
    assert default_prompt_name(load_settings(graph="apps/my app.py:build")) == "my-app-system"
    assert load_settings(prompt_name="faq").prompt_name == "faq"


def test_a_malformed_name_or_alias_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTWORKER_PROMPT_ALIAS", "prod uction")
    with pytest.raises(ConfigError, match="AGENTWORKER_PROMPT_ALIAS"):
        load_settings()
    monkeypatch.delenv("AGENTWORKER_PROMPT_ALIAS")
    with pytest.raises(ConfigError, match="--prompt-name"):
        load_settings(prompt_name="a/b")


def test_the_registry_version_under_the_alias_is_served(prompt_file: Path) -> None:
    registry = registry_with("v1 text", "v2 text", production=2, staging=1)
    loaded = resolve_prompt(settings(prompt_file), registry)
    assert loaded == LoadedPrompt(NAME, "registry", "v2 text", "2", "production")
    assert loaded.trace_tags() == {
        "prompt_name": NAME,
        "prompt_version": "2",
        "prompt_source": "registry",
        "prompt_alias": "production",
    }
    staging = resolve_prompt(settings(prompt_file, prompt_alias="staging"), registry)
    assert (staging.version, staging.text) == ("1", "v1 text")


def test_without_the_alias_the_bundled_file_is_served_and_said_so(
    prompt_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentworker.prompts")
    registry = registry_with("v1 text")  # no alias yet
    loaded = resolve_prompt(settings(prompt_file), registry)
    text = "You are the bundled prompt."
    assert loaded == LoadedPrompt(NAME, "file", text, file_version(text))
    assert loaded.trace_tags()["prompt_version"].startswith("file:")
    assert not caplog.records  # said once the app started (a bad graph is the one line)
    loaded.announce()
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "has no alias 'production'" in record.getMessage()
    assert str(prompt_file) in record.getMessage()
    empty = resolve_prompt(settings(prompt_file), FakePromptRegistry())
    assert empty.source == "file" and empty.version == loaded.version


def test_without_a_file_the_app_keeps_its_own_default() -> None:
    loaded = resolve_prompt(load_settings(), FakePromptRegistry())
    assert loaded.source == "app" and loaded.text is None
    assert loaded.trace_tags() == {"prompt_name": NAME, "prompt_source": "app"}


def test_an_explicit_alias_the_registry_lacks_is_a_config_error(
    prompt_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTWORKER_PROMPT_ALIAS", "canary")
    registry = registry_with("v1 text", production=1, staging=1)
    with pytest.raises(ConfigError) as caught:
        resolve_prompt(settings(prompt_file), registry)
    message = str(caught.value)
    assert "AGENTWORKER_PROMPT_ALIAS='canary'" in message
    assert "no alias 'canary'" in message and "production, staging" in message
    with pytest.raises(ConfigError, match="no prompt registry client"):
        resolve_prompt(settings(prompt_file), None, why_none="no prompt registry client")


def test_an_unreadable_registry_falls_back_unless_the_alias_was_asked_for(
    prompt_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = registry_with("v1 text", production=1)
    registry.broken = True
    assert resolve_prompt(settings(prompt_file), registry).source == "file"
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    monkeypatch.setenv("AGENTWORKER_PROMPT_ALIAS", "production")
    with pytest.raises(ConfigError, match="connection refused"):
        resolve_prompt(settings(prompt_file), registry)


def test_without_full_mlflow_the_file_is_served_and_no_database_is_made(
    prompt_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workers.prompts.has_registry_client", lambda: False)
    assert load_prompt(settings(prompt_file)).source == "file"
    monkeypatch.setattr("workers.prompts.has_registry_client", has_registry_client)
    loaded = load_prompt(settings(prompt_file))  # a SQLite store without its file
    assert loaded.source == "file"
    assert open_registry(settings(prompt_file), create=False) is None
    assert not (prompt_file.parent / "mlflow.db").exists()


def test_a_push_of_the_latest_text_makes_no_new_version() -> None:
    registry = FakePromptRegistry()
    first, created = push_prompt(registry, NAME, "Be kind.\n", "first")
    assert (first.version, created) == (1, True)
    same, created = push_prompt(registry, NAME, "  Be kind.  ", "again")
    assert (same.version, created) == (1, False)
    second, created = push_prompt(registry, NAME, "Be kinder.", "second")
    assert (second.version, created) == (2, True)
    assert registry.texts[NAME] == ["Be kind.", "Be kinder."]
    with pytest.raises(ConfigError, match="empty"):
        push_prompt(registry, NAME, " \n")


def test_promote_moves_the_alias_and_refuses_what_does_not_exist() -> None:
    registry = registry_with("v1 text", "v2 text")
    assert set_alias(registry, NAME, "1", "production") is None
    before = set_alias(registry, NAME, "2", "production")
    assert before is not None and before.version == 1
    assert registry.aliases[NAME] == {"production": 2}
    with pytest.raises(ConfigError, match=r"no version '7' \(versions: 1, 2; aliases: production"):
        set_alias(registry, NAME, "7", "production")
    for bad in ("latest", "-1", "²", str(2**64)):
        with pytest.raises(ConfigError, match="not a version number"):
            set_alias(registry, NAME, bad, "production")
    with pytest.raises(ConfigError, match=f"unknown prompt 'faq'.*prompts: {NAME}"):
        set_alias(registry, "faq", "1", "production")
    assert registry.aliases[NAME] == {"production": 2}


def test_diff_compares_versions_or_aliases() -> None:
    registry = registry_with("line one\nline two", "line one\nline 2", production=2)
    diff = diff_versions(registry, NAME, "1", "production").splitlines()
    assert diff[:2] == [f"--- {NAME}@1 (version 1)", f"+++ {NAME}@production (version 2)"]
    assert "-line two" in diff and "+line 2" in diff and " line one" in diff
    assert diff_versions(registry, NAME, "2", "production") == ""
    with pytest.raises(ConfigError, match="no alias 'staging'"):
        diff_versions(registry, NAME, "1", "staging")


def test_the_turns_trace_carries_the_prompts_identity() -> None:
    tagged: list[dict[str, str]] = []

    class Tags(NullTracer):
        def turn(self, name: str, *, tags: dict[str, str], inputs: Any) -> Any:
            tagged.append(tags)
            return super().turn(name, tags=tags, inputs=inputs)

    identity = LoadedPrompt(NAME, "registry", "text", "3", "production").trace_tags()
    w = World(trace_tags={**identity, "conversation_id": "not this one"})
    w.deps.tracer = Tags()
    w.send("hello")
    w.run_all()
    [tags] = tagged
    assert tags["prompt_name"] == NAME and tags["prompt_version"] == "3"
    assert tags["conversation_id"] == CID  # the turn's own tags win
