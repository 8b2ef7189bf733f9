"""A LangGraph project's ``langgraph.json``, so what runs under ``langgraph dev`` is served
by ``agentworker serve`` unchanged.

Read from the working directory (or ``--config path/to/langgraph.json``) when the app names
no graph otherwise: its ``graphs`` (``./src/agent/graph.py:graph`` or ``agent.graph:graph``;
``--graph NAME`` picks one of several), its ``dependencies`` (local paths go on ``sys.path``,
relative to the file), its ``env`` (a ``.env`` file or a table, which never overrides the
environment). Keys that configure LangGraph's own server (``auth``, ``http``, ``store``,
``checkpointer``, images and Dockerfile lines) are not read: the start log names them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.errors import ConfigError

log = logging.getLogger(__name__)

LANGGRAPH_JSON = "langgraph.json"
SERVED_KEYS = frozenset({"graphs", "dependencies", "env"})


class LangGraphProject(BaseModel):
    """What agentworker reads of a ``langgraph.json``."""

    model_config = ConfigDict(extra="allow")

    graphs: dict[str, str] = Field(min_length=1)
    dependencies: list[str] = Field(default_factory=list)
    env: str | dict[str, str] | None = None
    path: Path = Path(LANGGRAPH_JSON)

    @property
    def directory(self) -> Path:
        return self.path.resolve().parent

    def ignored(self) -> list[str]:
        return sorted(k for k in (self.model_extra or {}) if k not in SERVED_KEYS)

    def graph_ref(self, name: str | None) -> tuple[str, str]:
        """(the graph's name, its reference) for ``name``, or the only one when ``None``;
        ``ConfigError`` listing the names otherwise."""
        names = ", ".join(sorted(self.graphs))
        if name is None:
            if len(self.graphs) > 1:
                raise ConfigError(f"{self.path}: graphs {names}: pick one with --graph NAME")
            name = next(iter(self.graphs))
        if name not in self.graphs:
            raise ConfigError(f"{self.path}: no graph {name!r} (its graphs: {names})")
        return name, self.graphs[name]

    def local_dependencies(self) -> list[Path]:
        """The dependencies that are directories of this project (not package names)."""
        out = []
        for dep in self.dependencies:
            if dep.startswith((".", "/")):
                found = (self.directory / dep).resolve()
                if not found.is_dir():
                    raise ConfigError(f"{self.path}: dependency {dep!r}: no directory {found}")
                out.append(found)
        return out

    def load_env(self) -> list[str]:
        """Set ``env`` in the environment where it is not set yet; the names set."""
        if self.env is None:
            return []
        if isinstance(self.env, dict):
            values: dict[str, str | None] = dict(self.env)
        else:
            from dotenv import dotenv_values

            file = self.directory / self.env
            if not file.is_file():
                raise ConfigError(f"{self.path}: env file {file} not found")
            values = dict(dotenv_values(file))
        set_now = []
        for key, value in values.items():
            if value is not None and key not in os.environ:
                os.environ[key] = value
                set_now.append(key)
        return set_now


def find_project(config: Path | None) -> LangGraphProject | None:
    """The ``langgraph.json`` that ``config`` names, else the working directory's, if any."""
    if config is not None and config.name.endswith(".json"):
        return read_project(config)
    local = Path(LANGGRAPH_JSON)
    return read_project(local) if local.is_file() else None


def read_project(path: Path) -> LangGraphProject:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    try:
        return LangGraphProject.model_validate({**data, "path": path})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
