"""How ``make test`` spreads the tests over pytest-xdist's workers: one test at a time,
except that the tests of a module that use a fixture wider than a test (a server, a venv),
directly or through another fixture, go to one worker together, so that the fixture starts
once (xdist hands out the largest groups first, then the single tests in collection order).

The controller that schedules never imports the tests, so what a test uses is read from
its module's source: the fixtures it takes, the fixtures those take, and so on; a fixture
is shared if its module, a ``conftest.py`` or a helper module of ``tests/`` defines it
with a wider scope.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from xdist.scheduler import LoadScopeScheduling

WIDER_SCOPES = frozenset({"class", "module", "package", "session"})

Function = ast.FunctionDef | ast.AsyncFunctionDef


def fixture_scope(function: Function) -> str | None:
    """``"function"`` or the wider scope if ``function`` is a fixture, else None."""
    for decorator in function.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        target = call.func if call else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name != "fixture":
            continue
        for keyword in call.keywords if call else []:
            if keyword.arg == "scope" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
        return "function"
    return None


def functions(tree: ast.Module) -> dict[str, Function]:
    return {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def shared_fixtures(tree: ast.Module) -> set[str]:
    """The names of the fixtures of a wider scope than a test that ``tree`` defines."""
    return {name for name, f in functions(tree).items() if fixture_scope(f) in WIDER_SCOPES}


def tests_using_shared(tree: ast.Module, shared_elsewhere: set[str]) -> set[str]:
    """The test functions of ``tree`` that use a shared fixture (of ``tree`` or of
    ``shared_elsewhere``), directly or through the module's own fixtures."""
    defined = functions(tree)
    shared = shared_fixtures(tree) | (shared_elsewhere - set(defined))
    changed = True
    while changed:  # a fixture of the module that takes a shared one is shared too
        changed = False
        for name, function in defined.items():
            takes = {a.arg for a in function.args.args}
            if name not in shared and fixture_scope(function) and takes & shared:
                shared.add(name)
                changed = True
    return {
        name
        for name, function in defined.items()
        if name.startswith("test") and {a.arg for a in function.args.args} & shared
    }


class SharedFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
    """xdist's scope scheduling, the scope being the test, or its module for a test that
    uses a shared fixture (:func:`tests_using_shared`)."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self.rootpath: Path = config.rootpath
        tests = self.rootpath / "tests"
        helpers = [p for p in tests.rglob("*.py") if not p.name.startswith("test_")]
        self.shared_elsewhere: set[str] = set().union(*(shared_fixtures(parse(p)) for p in helpers))
        self.grouped: dict[str, set[str]] = {}

    def _split_scope(self, nodeid: str) -> str:
        module, _, rest = nodeid.partition("::")
        if module not in self.grouped:
            tree = parse(self.rootpath / module)
            self.grouped[module] = tests_using_shared(tree, self.shared_elsewhere)
        test = rest.split("[", 1)[0].rsplit("::", 1)[-1]
        return module if test in self.grouped[module] else nodeid


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))
