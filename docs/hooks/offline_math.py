"""MkDocs hook: the tutorials' math typeset when the site is built, so no page needs a script.

The notebooks write math as `$...$` and `$$...$$`. nbconvert leaves it as text for MathJax,
which its template loads from a CDN (and Mermaid likewise). Here each formula becomes MathML
(latex2mathml, pure Python), which browsers render natively, and the CDN script tags are
dropped: the built site renders offline, and a formula latex2mathml cannot read fails the
build instead of showing raw LaTeX to the reader.
"""
from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

# Text inside these elements is code or script, never math.
VERBATIM = re.compile(r"(<(pre|code|script|style)\b.*?</\2>)", re.S | re.I)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\d)")
# nbconvert's MathJax loader (src="" here: the plugin sets no URL), MathJax's configuration,
# and the Mermaid loader that imports from a CDN.
CDN_SCRIPTS = re.compile(
    r'<script src="(?:https?:)?[^"]*"?>\s*</script>\s*(?=<!-- MathJax configuration -->)'
    r'|<script type="text/x-mathjax-config">.*?</script>'
    r'|<script type="module">(?:(?!</script>).)*?https://(?:(?!</script>).)*</script>',
    re.S)


class MathError(ValueError):
    pass


def to_mathml(tex: str, display: str, where: str) -> str:
    source = html.unescape(tex).strip()
    try:
        mathml = convert(source, display=display)
    except Exception as error:  # latex2mathml raises a variety of types on bad input
        raise MathError(f"{where}: cannot typeset ${source}$: {error}") from None
    return mathml


def typeset(text: str, where: str) -> str:
    """Replace every `$$...$$` and `$...$` outside code, scripts and styles with MathML."""
    parts = VERBATIM.split(text)
    out = []
    index = 0
    while index < len(parts):
        prose = parts[index]
        prose = DISPLAY_MATH.sub(lambda m: to_mathml(m.group(1), "block", where), prose)
        prose = INLINE_MATH.sub(lambda m: to_mathml(m.group(1), "inline", where), prose)
        out.append(prose)
        if index + 1 < len(parts):
            out.append(parts[index + 1])  # the verbatim element, untouched
        index += 3  # split() also returns the tag-name group
    return "".join(out)


def typeset_titles(items, where: str) -> None:
    """The table of contents shows the headings' formulas too."""
    for item in items:
        item.title = INLINE_MATH.sub(lambda m: to_mathml(m.group(1), "inline", where), item.title)
        typeset_titles(item.children, where)


def on_page_content(html_text: str, page, config, files) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return html_text
    typeset_titles(page.toc, page.file.src_uri)
    html_text = CDN_SCRIPTS.sub("", html_text)
    return typeset(html_text, page.file.src_uri)
