"""Text extraction for the corpus-v2 build: HTML (lxml), reST and plain text, man pages (groff), POD (pod2text).

Every extractor takes the bytes of one file and returns its text ("" when nothing is worth keeping).
HTML keeps one page's main content (the first element matching ``main``) and drops navigation,
headers, footers, sidebars, search boxes and the elements matched by ``drop``.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from dataclasses import dataclass

import lxml.html
from lxml import etree

# Block-level elements: each starts a new line; those in PARAGRAPH_TAGS are set apart by a blank line.
BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "div", "dl", "dt", "figcaption",
    "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol", "p", "pre", "section", "summary",
    "table", "tbody", "thead", "tr", "ul", "br",
}  # fmt: skip
PARAGRAPH_TAGS = {"blockquote", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "ol", "p", "pre", "table", "ul"}
CELL_TAGS = {"td", "th"}
# Navigation and page furniture, dropped from every HTML page.
BOILERPLATE = (
    "script, style, noscript, form, button, input, select, nav, footer, iframe, svg,"
    " [role=navigation], [role=search], [role=banner], [role=contentinfo],"
    " .headerlink, .sphinxsidebar, .related, .breadcrumb, .breadcrumbs, .navheader, .navfooter,"
    " .prev-next-area, .bd-sidebar, .bd-toc, .toc-drawer, .viewcode-link, .viewcode-back"
)
MAIN_CONTENT = "[role=main], main, #main-content, div.body, #content, body"
WHITESPACE = re.compile(r"\s+")
BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


@dataclass(frozen=True)
class HtmlRules:
    """Which part of a page to keep: the first ``main`` match, less ``drop``; with ``keep``, only those parts."""

    main: str = MAIN_CONTENT
    drop: str = ""
    keep: str = ""


class _TextWriter:
    """Collects text, collapsing whitespace outside <pre> and keeping line breaks at block boundaries."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pending_newlines = 0
        self.at_line_start = True

    def newline(self, count: int) -> None:
        if self.parts:
            self.pending_newlines = max(self.pending_newlines, count)

    def text(self, text: str, preformatted: bool) -> None:
        if not preformatted:
            text = WHITESPACE.sub(" ", text)
            if self.at_line_start or self.pending_newlines:
                text = text.lstrip()
        if not text:
            return
        if self.pending_newlines:
            self.parts.append("\n" * self.pending_newlines)
            self.pending_newlines = 0
        self.parts.append(text)
        self.at_line_start = text.endswith("\n")

    def result(self) -> str:
        text = "".join(self.parts)
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        return BLANK_LINES.sub("\n\n", text).strip()


def _render(element, out: _TextWriter, preformatted: bool = False) -> None:
    tag = element.tag if isinstance(element.tag, str) else ""
    if tag:
        if tag in BLOCK_TAGS:
            out.newline(2 if tag in PARAGRAPH_TAGS else 1)
        elif tag in CELL_TAGS:
            out.text(" ", False)
        inside_pre = preformatted or tag == "pre"
        if element.text:
            out.text(element.text, inside_pre)
        for child in element:
            _render(child, out, inside_pre)
        if tag in BLOCK_TAGS:
            out.newline(2 if tag in PARAGRAPH_TAGS else 1)
    if element.tail:
        out.text(element.tail, preformatted)


def element_text(element) -> str:
    """The text of an lxml element, one line per block element, <pre> blocks verbatim."""
    out = _TextWriter()
    _render(element, out)
    return out.result()


def html_text(data: bytes, rules: HtmlRules = HtmlRules()) -> str:
    """The main content of one HTML page as text, without navigation or page furniture."""
    try:
        root = lxml.html.document_fromstring(data)
    except (etree.ParserError, ValueError):
        return ""
    main = next((found[0] for sel in rules.main.split(",") if (found := root.cssselect(sel.strip()))), None)
    if main is None:
        return ""
    for selector in filter(None, (BOILERPLATE, rules.drop)):
        for element in main.cssselect(selector):
            if element is not main and element.getparent() is not None:
                element.drop_tree()
    for classifier in main.cssselect(".classifier"):  # numpydoc's "name : type"
        classifier.text = " : " + (classifier.text or "")
    if rules.keep:
        return "\n\n".join(filter(None, (element_text(el) for el in main.cssselect(rules.keep))))
    return element_text(main)


def plain_text(data: bytes) -> str:
    """A text file (reST, Markdown, plain), gzip-compressed or not, with Windows line ends normalised."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()


def _run(command: list[str], data: bytes) -> str:
    done = subprocess.run(command, input=data, capture_output=True, timeout=120, check=False)
    return done.stdout.decode("utf-8", errors="replace")


def man_text(data: bytes) -> str:
    """A man page rendered by groff (tbl and eqn preprocessing, left-aligned, no hyphenation) as plain text.

    The running header and footer lines (page name, section, date) are dropped.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data.lstrip().startswith(b".so "):  # a link to another page
        return ""
    command = ["groff", "-k", "-t", "-e", "-man", "-Tutf8", "-rLL=100n", "-P-cbou"]
    lines = _run(command, b".ad l\n.nh\n" + data).rstrip().split("\n")
    return "\n".join(lines[1:-1]).strip() if len(lines) > 2 else ""


def pod_text(data: bytes) -> str:
    """A Perl POD document rendered by pod2text."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return _run(["pod2text", "--utf8"], data).strip()
