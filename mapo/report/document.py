"""A report as data (sections of blocks) and its two renderings: one self-contained HTML page and Markdown.

Sections build :class:`Document` values; :func:`render_html` and :func:`render_markdown` turn
them into text. Every text that came from a model or a dataset is treated as data: HTML-escaped
in the page, Markdown-escaped (or fenced) in report.md, so a response or a prompt id cannot
inject markup or a live link into either.
"""

from __future__ import annotations

import base64
import html
import math
import re
import string
import time
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from mapo.report import _EXPORTS

__all__ = list(_EXPORTS[__name__])
"""The package's entry for this module (``mapo/report/__init__.py``): the one list of its public names."""

EXAMPLE_CHARS = 4000
"""Longest text shown in an example; longer ones are cut with a note (the run folder has all)."""


# --------------------------------------------------------------------------- blocks


@dataclass
class Text:
    """A paragraph; ``note`` renders it small and grey."""

    text: str
    note: bool = False


@dataclass
class Table:
    """A table of cells (numbers right-aligned); ``total`` marks the last row as a total."""

    header: list[str]
    rows: list[list[Any]]
    caption: str | None = None
    total: bool = False


@dataclass
class Fig:
    """A PNG figure, embedded in the page and saved as ``figures/<name>.png`` for the Markdown."""

    name: str
    png: bytes
    caption: str


@dataclass
class Code:
    """A collapsed block of verbatim text (the run's config)."""

    summary: str
    text: str
    lang: str = ""


@dataclass
class Example:
    """One collapsible example: ``fields`` are (label, untrusted text); ``side_by_side`` puts
    the last two fields in two columns (chosen | rejected)."""

    title: str
    fields: list[tuple[str, str]]
    side_by_side: bool = False
    open: bool = False
    item: str | None = None
    """The item's id: the page links it to the item in ``mapo view`` (:data:`VIEW_LINK`)."""


class ItemRef(str):
    """A table cell naming an item (its id): the page links it to the item in ``mapo view``."""


VIEW_LINK = "../view.html#item="
"""Where a report links an item, relative to ``report/report.html``: ``mapo view RUN`` serves the report
at ``/r/<n>/report/report.html`` and this page at ``/r/<n>/view.html`` (a report opened as a file has
no viewer beside it; the link is for the served one)."""


Block = Text | Table | Fig | Code | Example


@dataclass
class Section:
    """A titled list of blocks; level 2 sections are listed in the table of contents."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2

    @property
    def anchor(self) -> str:
        """The section's id in the page: lowercase letters, digits and dashes only."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass
class Document:
    """A whole report: a title, a subtitle and its sections."""

    title: str
    subtitle: str
    sections: list[Section]

    def figures(self) -> list[Fig]:
        """Every figure, in document order."""
        return [b for s in self.sections for b in s.blocks if isinstance(b, Fig)]


# --------------------------------------------------------------------------- formatting


def num(x: Any, digits: int = 3) -> str:
    """A number for a table: thousands separators, ``digits`` decimals for floats, "–" for none."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:,.{digits}f}"
    return str(x)


def ci(x: float | None, interval: Any = None, digits: int = 3, *, percent: bool = False, sign: bool = False) -> str:
    """``x`` with its interval, ``0.389 [0.227, 0.546]`` (``percent``: ``65.0% [53.8, 75.0]``;
    ``sign``: ``+0.024 [-0.120, +0.162]``); the bare value when there is no interval, "–" for none."""
    if x is None or not math.isfinite(x):
        return "–"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    d = 1 if percent else digits
    spec = f"{{:{'+' if sign else ''}.{d}f}}"

    def fmt(v: float) -> str:
        v = scale * v
        return spec.format(0.0 if round(v, d) == 0 else v)  # no "-0.00"

    text = fmt(x) + unit
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        lo, hi = (fmt(float(v)) for v in interval)
        text += f" [{lo}, {hi}]"
    return text


def pct(x: float | None, digits: int = 1) -> str:
    """A rate as a percentage; "–" for none or not finite."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def dur(s: float | None) -> str:
    """A duration in seconds, with h:mm:ss beyond two minutes."""
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s:.0f} s ({int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d})"


def cut(text: str, n: int = EXAMPLE_CHARS) -> str:
    """``text`` cut to ``n`` characters, with a note of how much the run folder holds beyond."""
    text = str(text)
    return text if len(text) <= n else text[:n] + f"\n[… {len(text) - n:,} more characters in the run folder]"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


_NUMERIC = re.compile(r"^[-+]?[\d,]*\.?\d+%?( \[[-+]?[\d.]+%?, [-+]?[\d.]+%?\])?$")  # a number, maybe "[lo, hi]"


def _view_link(item: str, text: str) -> str:
    href = VIEW_LINK + urllib.parse.quote(item, safe="")
    return f'<a class="view-link" href="{_e(href)}" title="open in mapo view">{_e(text)}</a>'


def _html_cell(v: Any, tag: str = "td") -> str:
    if isinstance(v, ItemRef):
        return f"<{tag}>{_view_link(v, v)}</{tag}>"
    if _is_num(v) or (isinstance(v, str) and _NUMERIC.match(v)):
        return f'<{tag} class="num">{_e(num(v))}</{tag}>'
    return f"<{tag}>{_e('–' if v is None else v)}</{tag}>"


def _html_block(b: Block) -> str:
    if isinstance(b, Text):
        return f'<p class="note">{_e(b.text)}</p>' if b.note else f"<p>{_e(b.text)}</p>"
    if isinstance(b, Table):
        out = [f'<p class="note">{_e(b.caption)}</p>'] if b.caption else []
        out.append('<div class="table-wrap"><table>')
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in b.header) + "</tr></thead><tbody>")
        for i, row in enumerate(b.rows):
            cls = ' class="total"' if b.total and i == len(b.rows) - 1 else ""
            out.append(f"<tr{cls}>" + "".join(_html_cell(v) for v in row) + "</tr>")
        out.append("</tbody></table></div>")
        return "\n".join(out)
    if isinstance(b, Fig):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(b.caption)}">'
            f"<figcaption>{_e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, Code):
        return f"<details><summary>{_e(b.summary)}</summary><pre>{_e(b.text)}</pre></details>"
    if isinstance(b, Example):

        def field_html(label: str, text: str) -> str:
            return f'<div><div class="field-label">{_e(label)}</div><pre>{_e(cut(text))}</pre></div>'

        fields = list(b.fields)
        tail = fields[-2:] if b.side_by_side and len(fields) >= 2 else []
        head = fields[:-2] if tail else fields
        inner = "".join(field_html(lbl, t) for lbl, t in head)
        if tail:
            inner += '<div class="pair">' + "".join(field_html(lbl, t) for lbl, t in tail) + "</div>"
        link = f'<p class="note">{_view_link(b.item, "open this item in mapo view")}</p>' if b.item else ""
        return f"<details{' open' if b.open else ''}><summary>{_e(b.title)}</summary>{link}{inner}</details>"
    raise TypeError(f"unknown block {type(b).__name__}")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mapo")
    except Exception:  # metadata absent in a bare checkout: the footer says so
        return "unknown"


def render_html(doc: Document) -> str:
    """The whole report as one HTML page (figures inline as data URIs)."""
    template = string.Template(
        (resources.files("mapo.report") / "templates" / "report.html").read_text(encoding="utf-8")
    )
    body = []
    for s in doc.sections:
        tag = f"h{s.level}"
        body.append(f'<section id="{_e(s.anchor)}"><{tag}>{_e(s.title)}</{tag}>')
        body.extend(_html_block(b) for b in s.blocks)
        body.append("</section>")
    nav = "\n".join(f'<a href="#{_e(s.anchor)}">{_e(s.title)}</a>' for s in doc.sections if s.level == 2)
    return template.substitute(
        title=_e(doc.title),
        subtitle=_e(doc.subtitle),
        nav=nav,
        body="\n".join(body),
        version=_e(_version()),
        footer=_e(
            f"mapo {_version()} · generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} · "
            "every model and dataset text is shown escaped, as data"
        ),
    )


# --------------------------------------------------------------------------- Markdown

# Characters that make Markdown (CommonMark + GitHub tables) out of plain text: links and images
# ([ ] !), emphasis (* _ ~), code spans (`), entities (&), table cells (|) and the escape itself.
# '<' becomes &lt; so no HTML tag or <autolink> can open. Bracket escaping alone already stops
# `[x](javascript:...)`; the rest keeps data from restyling the report.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]!~&|])")
# What starts a block when it opens a line: headings, quotes, lists, rules, numbered lists.
_MD_LINE_START = re.compile(r"^(\s*(?:\d+)?)([#>+\-=.)])")


def md_escape(v: Any, line_start: bool = False) -> str:
    """``v`` as literal Markdown inline text on one line (numbers formatted; "–" for none).

    ``line_start``: the text opens a line, so a leading block marker (``#``, ``>``, ``-``, ``1.``)
    is escaped too.
    """
    s = num(v) if _is_num(v) else ("–" if v is None else str(v))
    s = _MD_SPECIAL.sub(r"\\\1", s).replace("<", "&lt;").replace("\r", " ").replace("\n", " ")
    if line_start:
        s = _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), s)
    return s


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_block(b: Block) -> str:
    if isinstance(b, Text):
        return f"_{md_escape(b.text)}_" if b.note else md_escape(b.text, line_start=True)
    if isinstance(b, Table):
        lines = [f"*{md_escape(b.caption)}*", ""] if b.caption else []
        lines.append("| " + " | ".join(md_escape(h) for h in b.header) + " |")
        lines.append(
            "|"
            + "|".join(
                "---:" if any(_is_num(r[i]) for r in b.rows if i < len(r)) else "---" for i in range(len(b.header))
            )
            + "|"
        )
        for i, row in enumerate(b.rows):
            cells = [md_escape(v) for v in row]
            if b.total and i == len(b.rows) - 1:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if isinstance(b, Fig):
        return f"![{md_escape(b.caption)}](figures/{b.name}.png)\n\n*{md_escape(b.caption)}*"
    if isinstance(b, Code):
        return f"<details><summary>{html.escape(b.summary)}</summary>\n\n{_fence(b.text)}\n\n</details>"
    if isinstance(b, Example):
        parts = [f"**{md_escape(b.title)}**", ""]
        for label, text in b.fields:
            parts += [f"*{md_escape(label)}*", "", _fence(cut(text)), ""]
        return "\n".join(parts)
    raise TypeError(f"unknown block {type(b).__name__}")


def render_markdown(doc: Document) -> str:
    """The report as Markdown; figures are referenced as ``figures/<name>.png``."""
    out = [f"# {md_escape(doc.title)}", "", f"_{md_escape(doc.subtitle)}_", ""]
    out += [f"- [{md_escape(s.title)}](#{s.anchor})" for s in doc.sections if s.level == 2] + [""]
    for s in doc.sections:
        out += ["#" * s.level + " " + md_escape(s.title), ""]
        for b in s.blocks:
            out += [_md_block(b), ""]
    return "\n".join(out).rstrip() + "\n"
