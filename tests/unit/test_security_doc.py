"""``docs/SECURITY.md`` names, for each threat, the tests that prove its control: every
test it names exists (a renamed or deleted test fails here, not silently in the doc)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "SECURITY.md"


def cited() -> list[tuple[list[Path], str]]:
    """(files, test) pairs: ``tests/x.py::test_a``, and ``::test_b`` after it in a cell; a
    bare ``x.py`` is any test file of that name."""
    pairs: list[tuple[list[Path], str]] = []
    for line in DOC.read_text().splitlines():
        current: list[Path] = []
        for match in re.finditer(r"`((?:tests/[\w/]+|[\w]+)\.py)?(?:::(test_\w+))?`", line):
            path, test = match.groups()
            if path is not None:
                current = [ROOT / path] if "/" in path else list((ROOT / "tests").rglob(path))
                assert current, f"{path}: no such test file"
            if test is not None:
                assert current, f"{match.group(0)}: which file?"
                pairs.append((current, test))
    return pairs


def test_every_cited_test_exists() -> None:
    pairs = cited()
    assert len(pairs) >= 40
    for files, test in pairs:
        sources = [f.read_text() for f in files if f.is_file()]
        found = any(re.search(rf"^def {test}\(", s, re.M) for s in sources)
        assert found, f"{[str(f) for f in files]}::{test} does not exist"
