"""Replies as safe HTML for the local chat page: Markdown rendered by ``markdown-it-py``
(CommonMark, raw HTML off), then sanitized by ``nh3`` (the Ammonia sanitizer) to an
allow-list of tags, attributes and URL schemes.

Two independent layers, so that neither alone decides what a reply (text a model wrote,
which a prompt injection may steer) can do in the page: markdown-it escapes raw HTML and
refuses ``javascript:``/``vbscript:``/``file:``/``data:`` links; nh3 then keeps only the
tags below and ``http``/``https``/``mailto`` URLs, whatever the renderer let through.
Images are not rendered (``![alt](url)`` stays a link): an image loads by itself, and its
URL could carry the conversation to another site.
"""

from __future__ import annotations

import functools

import nh3
from markdown_it import MarkdownIt

__all__ = ["ALLOWED_TAGS", "render_markdown"]

ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6",
        "strong", "em", "del", "s", "code", "pre", "blockquote",
        "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
    }
)  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
_URL_SCHEMES = frozenset({"http", "https", "mailto"})
_LINK_TARGET = {"a": {"target": "_blank"}}
"""Links open in a new tab (with ``rel="noopener noreferrer nofollow"``): the chat stays."""
_ABSOLUTE = tuple(f"{scheme}:" for scheme in sorted(_URL_SCHEMES))


def _absolute_links_only(tag: str, attribute: str, value: str) -> str | None:
    # nh3 keeps relative URLs (no scheme to refuse): a reply's link leads off the page or
    # nowhere, never to the server's own paths.
    if attribute == "href" and not value.lower().startswith(_ABSOLUTE):
        return None
    return value


@functools.cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.disable("image")
    return md


@functools.lru_cache(maxsize=256)
def render_markdown(text: str) -> str:
    """``text`` (Markdown) as sanitized HTML: only :data:`ALLOWED_TAGS`, no scripts, event
    handlers, styles or other URLs than ``http``, ``https`` and ``mailto``. Cached: a
    conversation's history is rendered again at every subscription."""
    html = _markdown().render(text)
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        url_schemes=set(_URL_SCHEMES),
        attribute_filter=_absolute_links_only,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values=_LINK_TARGET,
        strip_comments=True,
    ).strip()
