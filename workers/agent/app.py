"""Loading the app's graph named by the ``graph`` setting, and checking it honours the contract.

``graph`` is ``package.module:attribute`` (or ``path/to/file.py:attribute``), imported with the
app's directory first on ``sys.path``. The attribute is a ``StateGraph`` (a compiled one is
recompiled with agentworker's checkpointer), or a callable that takes a
:class:`~workers.agent.sdk.BuildContext` and returns one. The graph's state must have a
``messages`` channel with a reducer (``MessagesState``, or ``Annotated[list, add_messages]``)
and no channel that rebuilds its value from ancestor checkpoints (``DeltaChannel``): agentworker
keeps only the latest checkpoint. Anything else is one ``ConfigError`` line naming the setting,
the value and what was found.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from langgraph.channels.binop import BinaryOperatorAggregate
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from workers.agent.sdk import BuildContext
from workers.config import DEFAULT_GRAPH, Settings
from workers.errors import ConfigError

__all__ = ["DEFAULT_GRAPH", "AppGraph", "builder_of", "check_graph", "graph_ref", "load_graph"]


def graph_ref(settings: Settings) -> str:
    return settings.graph or DEFAULT_GRAPH


AppGraph = StateGraph[Any, Any, Any, Any] | CompiledStateGraph[Any, Any, Any, Any]
"""What an app gives: a graph to compile, or a compiled one whose compile options
(``interrupt_before``/``interrupt_after``, ``store``, ``cache``, ``debug``, ``name``) are
kept; its checkpointer is replaced by agentworker's."""


def builder_of(graph: AppGraph) -> StateGraph[Any, Any, Any, Any]:
    return graph.builder if isinstance(graph, CompiledStateGraph) else graph


def load_graph(settings: Settings, ctx: BuildContext) -> AppGraph:
    """The app's graph, built and checked (``ConfigError`` naming the setting otherwise)."""
    ref = graph_ref(settings)
    where = f"graph {ref!r} ({settings.source('graph')})" if settings.graph else f"graph {ref!r}"

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {problem}")

    for directory in reversed(settings.python_path):
        _on_path(directory)
    target = _import_target(ref, settings.import_dir, fail)
    graph = _as_graph(target, ctx, fail)
    check_graph(builder_of(graph), fail)
    return graph


def _import_target(ref: str, app_dir: Path, fail: Any) -> Any:
    module_name, sep, attribute = ref.rpartition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise fail("expected 'package.module:attribute' or 'path/to/file.py:attribute'")
    _on_path(app_dir)
    if module_name.endswith(".py") or "/" in module_name:
        module = _import_file(app_dir / module_name, fail)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise fail(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:
            raise fail(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise fail(f"module {module_name!r} has no attribute {attribute!r}") from None


def _on_path(app_dir: Path) -> None:
    """The app's directory comes first on ``sys.path``: apps are imported from there."""
    directory = str(app_dir.resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _import_file(path: Path, fail: Any) -> Any:
    """A file of a package (a ``src/agent/graph.py`` whose directories have
    ``__init__.py``, as LangGraph's templates lay theirs out) is imported as its module,
    ``agent.graph``, with the directory above the package on ``sys.path``: its imports of
    its own package, absolute or relative, work. A lone file is loaded on its own."""
    if not path.is_file():
        raise fail(f"file {path} not found")
    dotted = _module_of_package_file(path.resolve())
    if dotted is not None:
        root, module_name = dotted
        _on_path(root)
        try:
            return importlib.import_module(module_name)
        except Exception as exc:
            raise fail(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    name = f"agentworker_app_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise fail(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise fail(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    return module


def _module_of_package_file(path: Path) -> tuple[Path, str] | None:
    """(the directory above its top package, its dotted module name) for a file inside a
    package; ``None`` for a file whose directory is no package."""
    parts = [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file() and directory.name.isidentifier():
        parts.append(directory.name)
        directory = directory.parent
    if len(parts) == 1 or not path.stem.isidentifier():
        return None
    return directory, ".".join(reversed(parts))


def _as_graph(target: Any, ctx: BuildContext, fail: Any) -> AppGraph:
    if isinstance(target, CompiledStateGraph | StateGraph):
        return target
    if not callable(target):
        raise fail(f"found {_kind(target)}, expected a StateGraph or a factory returning one")
    try:
        built = target(ctx)
    except Exception as exc:
        raise fail(f"the factory raised {type(exc).__name__}: {exc}") from None
    if isinstance(built, CompiledStateGraph | StateGraph):
        return built
    raise fail(f"the factory returned {_kind(built)}, expected a StateGraph")


def _kind(value: Any) -> str:
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def check_graph(graph: StateGraph[Any, Any, Any, Any], fail: Any) -> None:
    """The graph contract: a ``messages`` channel with a reducer, no ``DeltaChannel`` in the
    graph or its subgraphs."""
    builders = [graph]
    while builders:
        builder = builders.pop()
        for name, channel in builder.channels.items():
            if isinstance(channel, DeltaChannel):
                raise fail(
                    f"channel {name!r} is a DeltaChannel, which rebuilds its value from older"
                    " checkpoints; agentworker keeps only the latest checkpoint of a"
                    " conversation: use a plain reducer (Annotated[list, operator.add])"
                )
        builders.extend(
            spec.runnable.builder
            for spec in builder.nodes.values()
            if isinstance(spec.runnable, CompiledStateGraph)
        )
    messages = graph.channels.get("messages")
    if messages is None:
        channels = ", ".join(sorted(graph.channels)) or "none"
        raise fail(
            f"its state has no 'messages' channel (channels: {channels}); use MessagesState or"
            " Annotated[list[AnyMessage], add_messages]"
        )
    if not isinstance(messages, BinaryOperatorAggregate):
        raise fail(
            f"its 'messages' channel is a {type(messages).__name__} without a reducer; declare"
            " it Annotated[list[AnyMessage], add_messages]"
        )
