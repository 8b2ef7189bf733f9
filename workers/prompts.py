"""The app's system prompt: from the MLflow prompt registry by alias, else the bundled file.

Resolution happens once per process, in bootstrap (never per turn):

1. The name is ``prompt_name`` (default: the graph's top-level package, ``support_agent`` ->
   ``support-agent-system``), the alias ``prompt_alias`` (default ``production``).
2. When the registry at the tracking URI has ``name@alias``, that version's text is the
   system prompt (``source="registry"``).
3. Otherwise the ``prompt`` file, the app's bundled prompt (``source="file"``, its version
   the file's content hash), else the app's own default (``source="app"``); an INFO line
   says which and why. An alias set explicitly (``AGENTWORKER_PROMPT_ALIAS``) that the
   registry lacks is a ``ConfigError`` instead: a deployment that asked for ``staging`` must
   not quietly run something else.

Cost: the registry is read with full MLflow's client (its import is about 1 s, opening a
SQLite store about 0.5 s), once at start. A SQLite store whose file does not exist yet holds
no prompt, so it is neither created nor imported for. A process without full ``mlflow`` (the
Lambda ``turn`` function ships ``mlflow-tracing`` only) has no registry client: it never
imports MLflow for this and serves the bundled file, which ``make package`` copies into the
app layer. To deploy a registry version, write it into that file before packaging
(``agentworker prompt show NAME production > PROMPT_FILE``): the trace then carries the
file's content hash as its version.

:func:`load_prompt` is the one entry point; :class:`LoadedPrompt` says what was loaded
(name, version, alias, source) and gives the trace tags ``prompt_name``/``prompt_version``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from workers.core.redaction import url_without_credentials
from workers.errors import ConfigError, PromptRegistryError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = [
    "LoadedPrompt",
    "bundled_prompt",
    "MlflowPromptRegistry",
    "PromptRegistry",
    "PromptVersionInfo",
    "default_prompt_name",
    "diff_versions",
    "find_version",
    "has_registry_client",
    "load_prompt",
    "open_registry",
    "prompt_name",
    "push_prompt",
    "read_prompt_file",
    "resolve_prompt",
    "set_alias",
    "version_number",
]

logger = logging.getLogger("agentworker.prompts")

PromptSource = Literal["registry", "file", "app"]


@dataclass(frozen=True)
class LoadedPrompt:
    """The system prompt a process serves and where it came from: plain strings that traces
    and eval runs carry (:meth:`trace_tags`)."""

    name: str
    source: PromptSource
    text: str | None
    """``None``: the app's own default (no ``prompt`` file, nothing in the registry)."""
    version: str | None = None
    """The registry version (``"3"``), or ``"file:<sha256 prefix>"`` of the file's text."""
    alias: str | None = None
    """The alias it was loaded by (registry only)."""
    note: str = field(default="", compare=False)
    """Where it came from and why, for :meth:`announce`."""

    def announce(self) -> None:
        """Log where the prompt came from (once the app it is for proved it can start: a
        graph that cannot be loaded is the one line ``serve`` prints)."""
        if self.note:
            logger.info("%s", self.note)

    def trace_tags(self) -> dict[str, str]:
        """``prompt_name``, ``prompt_version`` (when known), ``prompt_source`` and, for a
        registry prompt, ``prompt_alias``."""
        tags = {"prompt_name": self.name, "prompt_source": self.source}
        if self.version is not None:
            tags["prompt_version"] = self.version
        if self.alias is not None:
            tags["prompt_alias"] = self.alias
        return tags

    def describe(self) -> str:
        if self.source == "registry":
            return f"prompt {self.name!r} version {self.version} (alias {self.alias!r})"
        if self.source == "file":
            return f"prompt {self.name!r} from its file ({self.version})"
        return f"prompt {self.name!r}: the app's own default"


@dataclass(frozen=True)
class PromptVersionInfo:
    """One version of a prompt in the registry."""

    name: str
    version: int
    text: str
    aliases: tuple[str, ...] = ()
    message: str = ""
    created_ms: int = 0


class PromptRegistry(Protocol):
    """What agentworker needs of a prompt registry (MLflow's, or a fake in tests). Lookups
    answer ``None`` for a name, version or alias that does not exist; a registry that cannot
    be read raises ``PromptRegistryError``."""

    location: str

    def names(self) -> list[str]: ...

    def versions(self, name: str) -> list[PromptVersionInfo]:
        """Every version of ``name``, newest first (``[]``: no such prompt)."""
        ...

    def get(self, name: str, ref: str) -> PromptVersionInfo | None:
        """Version ``ref`` (a number, or an alias) of ``name``."""
        ...

    def create(self, name: str, text: str, message: str) -> PromptVersionInfo: ...

    def alias(self, name: str, alias: str, version: int) -> None: ...


# Resolution -------------------------------------------------------------------------------


def default_prompt_name(settings: Settings) -> str:
    """The registry name of an app's prompt: its graph's top-level package (or file stem),
    ``_`` as ``-``, and ``-system``."""
    top = settings.app_package
    cleaned = "".join(c if c.isalnum() or c in "-." else "-" for c in top).strip("-.")
    return f"{cleaned or 'app'}-system"


def prompt_name(settings: Settings) -> str:
    """``prompt_name``, else :func:`default_prompt_name`."""
    return settings.prompt_name or default_prompt_name(settings)


def read_prompt_file(settings: Settings) -> str | None:
    """The text of the ``prompt`` file (stripped), ``None`` when unset; ``ConfigError``
    naming the setting when it cannot be read."""
    if settings.prompt is None:
        return None
    try:
        return settings.prompt.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"prompt {settings.prompt} ({settings.source('prompt')}): {exc}"
        ) from None


def file_version(text: str) -> str:
    """A file prompt's version: its text's SHA-256, 12 hex digits (same text, same tag)."""
    return "file:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def resolve_prompt(
    settings: Settings, registry: PromptRegistry | None, *, why_none: str = ""
) -> LoadedPrompt:
    """The prompt to serve (the rule is the module's docstring). ``registry`` is ``None``
    when this process has none (``why_none`` says why, for the messages)."""
    name = prompt_name(settings)
    alias = settings.prompt_alias
    explicit = "prompt_alias" in settings.model_fields_set
    setting = f"{settings.source('prompt_alias')}={alias!r}"
    if registry is None:
        if explicit:
            raise ConfigError(f"{setting}: {why_none}; unset it to serve the prompt file")
        return _fallback(settings, why_none)
    try:
        found = registry.get(name, alias)
        missing = "" if found else _what_is_missing(registry, name, alias)
    except PromptRegistryError as exc:
        if explicit:
            raise ConfigError(f"{setting}: {exc}") from None
        logger.warning("prompt registry at %s unreadable: %s", registry.location, exc)
        return _fallback(settings, f"the registry at {registry.location} is unreadable")
    if found is not None:
        return LoadedPrompt(name, "registry", found.text, str(found.version), alias)
    if explicit:
        raise ConfigError(f"{setting}: {missing} in the prompt registry at {registry.location}")
    return _fallback(settings, f"{missing} in the registry at {registry.location}")


def _what_is_missing(registry: PromptRegistry, name: str, alias: str) -> str:
    versions = registry.versions(name)
    if not versions:
        return f"no prompt {name!r}"
    aliases = sorted({a for v in versions for a in v.aliases})
    known = f" (its aliases: {', '.join(aliases)})" if aliases else " (it has no alias)"
    return f"prompt {name!r} has no alias {alias!r}{known}"


def bundled_prompt(settings: Settings) -> LoadedPrompt:
    """The bundled prompt alone (the ``prompt`` file, else the app's default), the registry
    not asked: what :func:`load_prompt` falls back to."""
    name = prompt_name(settings)
    text = read_prompt_file(settings)
    if text is None:
        return LoadedPrompt(name, "app", None)
    return LoadedPrompt(name, "file", text, file_version(text))


def _fallback(settings: Settings, why: str) -> LoadedPrompt:
    loaded = bundled_prompt(settings)
    where = f" {settings.prompt}" if settings.prompt is not None else ""
    return replace(loaded, note=f"serving {loaded.describe()}{where}: {why}")


def load_prompt(settings: Settings) -> LoadedPrompt:
    """The prompt this process serves, resolved now (call once, at start): the registry's
    ``name@alias`` when it has it, else the bundled file. ``ConfigError`` for an explicit
    alias the registry lacks, or a prompt file that cannot be read."""
    registry: MlflowPromptRegistry | None = None
    if not has_registry_client():
        why = "this process has no prompt registry client (full mlflow is not installed)"
    else:
        registry = open_registry(settings, create=False)
        why = f"the registry at {settings.shown_tracking_uri} is empty (no database yet)"
    loaded = resolve_prompt(settings, registry, why_none=why)
    if loaded.source == "registry":
        loaded = replace(
            loaded, note=f"serving {loaded.describe()} from {settings.shown_tracking_uri}"
        )
    return loaded


# The MLflow registry ----------------------------------------------------------------------


def has_registry_client() -> bool:
    """Whether full ``mlflow`` (the registry client and its SQL store) is installed, asked of
    the package metadata without importing MLflow (``mlflow-tracing`` alone says no; a few
    milliseconds, and LangChain has imported ``importlib.metadata`` already)."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def open_registry(settings: Settings, *, create: bool) -> MlflowPromptRegistry | None:
    """The registry at the tracking URI; ``None`` for a SQLite store whose file does not
    exist (it holds no prompt), which is created only when ``create`` (a push). Call
    :func:`has_registry_client` first. A tracking server that is down costs seconds, not
    MLflow's default minutes of retries (the prompt file is served meanwhile)."""
    from workers.tracing.mlflow_export import offline_http_env

    offline_http_env()
    uri = settings.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :])
        if not path.is_file():
            if not create:
                return None
            from workers.statedir import private_dir

            private_dir(path.parent)  # MLflow makes the file 0644: nobody else may enter
    return MlflowPromptRegistry(uri)


class MlflowPromptRegistry:
    """:class:`PromptRegistry` on MLflow's prompt registry (``MlflowClient`` with explicit
    tracking and registry URIs: no global MLflow state is changed)."""

    def __init__(self, tracking_uri: str) -> None:
        self._uri = tracking_uri
        self.location = url_without_credentials(tracking_uri)
        """Where it is, as messages name it (a password in the URI masked)."""
        self._client: Any = None

    def _open(self) -> Any:
        """The client, made at the first call (opening the store can fail: a database that
        is not MLflow's, a server that does not answer; the calls map that)."""
        if self._client is None:
            from workers.observability import offline_mlflow_env

            offline_mlflow_env()
            from mlflow import MlflowClient

            uri = self._uri
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._client

    def names(self) -> list[str]:
        out: list[str] = []
        token: str | None = None
        while True:
            page = self._call("search_prompts", page_token=token)
            out.extend(p.name for p in page)
            token = page.token
            if not token:
                return sorted(out)

    def versions(self, name: str) -> list[PromptVersionInfo]:
        if self._missing("get_prompt", name) is None:
            return []
        out: list[PromptVersionInfo] = []
        token: str | None = None
        while True:
            page = self._call("search_prompt_versions", name, page_token=token)
            # Searched versions come without their aliases (MLflow 3.17): one read each
            # (a listing's cost, never a turn's).
            for found in page:
                full = self._call("get_prompt_version", name, found.version)
                out.append(self._info(full))
            token = page.token
            if not token:
                return sorted(out, key=lambda v: -v.version)

    def get(self, name: str, ref: str) -> PromptVersionInfo | None:
        if version_number(ref) is not None:
            found = self._missing("get_prompt_version", name, ref)
        elif ref.isascii() and ref.isdigit():  # past SQLite's integers: no such version
            return None
        else:
            found = self._missing("get_prompt_version_by_alias", name, ref)
        return None if found is None else self._info(found)

    def create(self, name: str, text: str, message: str) -> PromptVersionInfo:
        created = self._call("register_prompt", name, text, commit_message=message or None)
        return self._info(created)

    def alias(self, name: str, alias: str, version: int) -> None:
        self._call("set_prompt_alias", name, alias, version)

    def _info(self, version: Any) -> PromptVersionInfo:
        template = version.template
        if not isinstance(template, str):
            raise ConfigError(
                f"prompt {version.name!r} version {version.version} is a chat prompt (a list"
                " of messages); agentworker serves a text system prompt"
            )
        return PromptVersionInfo(
            name=version.name,
            version=int(version.version),
            text=template,
            aliases=tuple(sorted(version.aliases or ())),
            message=version.commit_message or "",
            created_ms=int(version.creation_timestamp or 0),
        )

    def _missing(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """The client's ``method(...)``, or ``None`` when MLflow says the name, version or
        alias does not exist (an unknown alias is INVALID_PARAMETER_VALUE in the SQL store)."""
        try:
            return self._call(method, *args, **kwargs)
        except ConfigError:
            return None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """The client's ``method(...)``; a refusal MLflow explains (a bad alias name, an
        unknown version) is a ``ConfigError``, anything else a ``PromptRegistryError``."""
        from mlflow.exceptions import MlflowException

        try:
            return getattr(self._open(), method)(*args, **kwargs)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise ConfigError(exc.message) from None
            raise PromptRegistryError(f"{self.location}: {exc.message}") from None
        except Exception as exc:  # the store unreachable: a connection or database error
            raise PromptRegistryError(f"{self.location}: {type(exc).__name__}: {exc}") from None


# The commands (over any PromptRegistry) ---------------------------------------------------


def _versions_or_fail(registry: PromptRegistry, name: str) -> list[PromptVersionInfo]:
    versions = registry.versions(name)
    if not versions:
        known = registry.names()
        hint = f"; prompts: {', '.join(known)}" if known else "; the registry has no prompt"
        raise ConfigError(f"unknown prompt {name!r} in {registry.location}{hint}")
    return versions


def version_number(ref: str) -> int | None:
    """``ref`` as a version number (ASCII digits, within a 64-bit integer), else ``None``
    (an alias, or nothing a registry can hold)."""
    if ref.isascii() and ref.isdigit() and int(ref) < 2**63:
        return int(ref)
    return None


def find_version(registry: PromptRegistry, name: str, ref: str) -> PromptVersionInfo:
    versions = _versions_or_fail(registry, name)
    found = registry.get(name, ref)
    if found is None:
        numbers = ", ".join(str(v.version) for v in reversed(versions))
        aliases = sorted({a for v in versions for a in v.aliases})
        kind = "version" if ref.isascii() and ref.isdigit() else "alias"
        raise ConfigError(
            f"prompt {name!r} has no {kind} {ref!r} (versions: {numbers}; aliases:"
            f" {', '.join(aliases) or 'none'})"
        )
    return found


def push_prompt(
    registry: PromptRegistry, name: str, text: str, message: str = ""
) -> tuple[PromptVersionInfo, bool]:
    """A new version of ``name`` with ``text`` (stripped, as it is served), and ``True``; or
    the latest version and ``False`` when its text is the same already."""
    text = text.strip()
    if not text:
        raise ConfigError(f"prompt {name!r}: the text is empty")
    versions = registry.versions(name)
    if versions and versions[0].text.strip() == text:
        return versions[0], False
    return registry.create(name, text, message), True


def set_alias(
    registry: PromptRegistry, name: str, version: str, alias: str
) -> PromptVersionInfo | None:
    """Point ``alias`` at ``version`` of ``name``; the version it pointed at before, if any.
    ``ConfigError`` for an unknown prompt or version, or a name MLflow refuses."""
    if version_number(version) is None:
        raise ConfigError(f"prompt {name!r}: version {version!r} is not a version number")
    target = find_version(registry, name, version)
    before = registry.get(name, alias)
    registry.alias(name, alias, target.version)
    return before


def diff_versions(registry: PromptRegistry, name: str, a: str, b: str) -> str:
    """The unified diff from ``a`` to ``b`` (version numbers or aliases) of ``name``'s text;
    ``""`` when they are the same."""
    import difflib

    old, new = find_version(registry, name, a), find_version(registry, name, b)
    lines = difflib.unified_diff(
        old.text.splitlines(keepends=True),
        new.text.splitlines(keepends=True),
        fromfile=f"{name}@{a} (version {old.version})",
        tofile=f"{name}@{b} (version {new.version})",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
