"""What a fragment of HTML would put into a page: its elements and their attributes, as a
browser's parser sees them (the standard library's, which is lenient the same way)."""

from __future__ import annotations

from html.parser import HTMLParser

from workers.adapters.local.markdown import ALLOWED_TAGS

SAFE_ATTRIBUTES = {"a": {"href", "title", "target", "rel"}, "ol": {"start"}}
SAFE_SCHEMES = ("http:", "https:", "mailto:")


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every start tag of ``html`` with its attributes (entities decoded)."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.found


def unsafe_parts(html: str) -> list[str]:
    """What in ``html`` could run, load or inject something: a tag outside the allow-list,
    another attribute (``onerror``, ``style``, ``src``...), a link that is not http(s) or
    mailto. Empty: safe."""
    problems = []
    for tag, attrs in elements(html):
        if tag not in ALLOWED_TAGS:
            problems.append(f"<{tag}>")
        for name, value in attrs.items():
            if name not in SAFE_ATTRIBUTES.get(tag, set()):
                problems.append(f"<{tag} {name}>")
            elif name == "href" and not (value or "").strip().lower().startswith(SAFE_SCHEMES):
                problems.append(f"<{tag} href={value!r}>")
    return problems
