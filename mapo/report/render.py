"""``mapo report RUN_DIR [--out DIR]``: a self-contained HTML report and a Markdown version of a run.

Reads only the run folder (no model call), so it works on a finished, stopped or resumed run
and on a copy of one. Run kinds are told apart by ``manifest.json`` ``command``:

* ``build`` (the main job): models per role, token and time costs, reviewer-score
  trajectories over the feedback iterations, which iteration the judge chose, failures,
  example chosen/rejected pairs, and the win-rate table when ``winrate.json`` is present;
* ``winrate``: the win-rate table and bars, score trajectories per configuration, examples;
* ``evaluate``: kappa per judge / jury / debate, confusion matrices, position bias,
  parse-failure rates and the jury-subset heatmap (``agreement.json``; recomputed from
  ``judgements.jsonl`` when a run stopped before writing it).

Written to ``DIR`` (default ``RUN_DIR/report``): ``report.html`` (figures embedded as base64
PNG data URIs: one file to copy or mail), ``report.md`` and ``figures/*.png`` (the same
figures, referenced by the Markdown). Every text that came from a model or a dataset is
HTML-escaped (or fenced in Markdown): a response cannot inject markup into the report.

A folder without ``manifest.json`` (a Hydra sweep folder) gets one report per run inside it.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import re
import statistics
import string
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mapo.report import plots

__all__ = [
    "Code",
    "Document",
    "Example",
    "Fig",
    "Section",
    "Table",
    "Text",
    "build_document",
    "find_runs",
    "load_run",
    "main",
    "render_html",
    "render_markdown",
    "write_report",
]

log = logging.getLogger(__name__)

EXAMPLE_CHARS = 4000
"""Longest text shown in an example; longer ones are cut with a note (the run folder has all)."""


# =========================================================================== document model


@dataclass
class Text:
    text: str
    note: bool = False  # rendered small and grey


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    caption: str | None = None
    total: bool = False  # the last row is a total


@dataclass
class Fig:
    name: str  # file stem: figures/<name>.png
    png: bytes
    caption: str


@dataclass
class Code:
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


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)
    level: int = 2

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def figures(self) -> list[Fig]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Fig)]


# =========================================================================== formatting


def _num(x: Any, digits: int = 3) -> str:
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


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _dur(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s:.0f} s ({int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d})"


def _cut(text: str, n: int = EXAMPLE_CHARS) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n] + f"\n[… {len(text) - n:,} more characters in the run folder]"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# =========================================================================== HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


_NUMERIC = re.compile(r"^[-+]?[\d,]*\.?\d+%?$")


def _html_cell(v: Any, tag: str = "td") -> str:
    if _is_num(v) or (isinstance(v, str) and _NUMERIC.match(v)):
        return f'<{tag} class="num">{_e(_num(v))}</{tag}>'
    return f"<{tag}>{_e('–' if v is None else v)}</{tag}>"


def _html_block(b: Any) -> str:
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
            return f'<div><div class="field-label">{_e(label)}</div><pre>{_e(_cut(text))}</pre></div>'

        fields = list(b.fields)
        tail = fields[-2:] if b.side_by_side and len(fields) >= 2 else []
        head = fields[:-2] if tail else fields
        inner = "".join(field_html(lbl, t) for lbl, t in head)
        if tail:
            inner += '<div class="pair">' + "".join(field_html(lbl, t) for lbl, t in tail) + "</div>"
        return f"<details{' open' if b.open else ''}><summary>{_e(b.title)}</summary>{inner}</details>"
    raise TypeError(f"unknown block {type(b).__name__}")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mapo")
    except Exception:  # noqa: BLE001 - metadata absent in a bare checkout: the footer says so
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


# =========================================================================== Markdown


def _md_cell(v: Any) -> str:
    s = _num(v) if _is_num(v) else ("–" if v is None else str(v))
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_block(b: Any) -> str:
    if isinstance(b, Text):
        return f"_{_md_cell(b.text)}_" if b.note else _md_cell(b.text)
    if isinstance(b, Table):
        lines = [f"*{_md_cell(b.caption)}*", ""] if b.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
        lines.append(
            "|"
            + "|".join(
                "---:" if any(_is_num(r[i]) for r in b.rows if i < len(r)) else "---" for i in range(len(b.header))
            )
            + "|"
        )
        for i, row in enumerate(b.rows):
            cells = [_md_cell(v) for v in row]
            if b.total and i == len(b.rows) - 1:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if isinstance(b, Fig):
        return f"![{_md_cell(b.caption)}](figures/{b.name}.png)\n\n*{_md_cell(b.caption)}*"
    if isinstance(b, Code):
        return f"<details><summary>{html.escape(b.summary)}</summary>\n\n{_fence(b.text)}\n\n</details>"
    if isinstance(b, Example):
        parts = [f"**{_md_cell(b.title)}**", ""]
        for label, text in b.fields:
            parts += [f"*{_md_cell(label)}*", "", _fence(_cut(text)), ""]
        return "\n".join(parts)
    raise TypeError(f"unknown block {type(b).__name__}")


def render_markdown(doc: Document) -> str:
    out = [f"# {_md_cell(doc.title)}", "", f"_{_md_cell(doc.subtitle)}_", ""]
    out += [f"- [{_md_cell(s.title)}](#{s.anchor})" for s in doc.sections if s.level == 2] + [""]
    for s in doc.sections:
        out += ["#" * s.level + " " + _md_cell(s.title), ""]
        for b in s.blocks:
            out += [_md_block(b), ""]
    return "\n".join(out).rstrip() + "\n"


# =========================================================================== reading a run


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _records(path: Path) -> list[dict[str, Any]]:
    """JSONL records, last write per key wins; a torn last line (a run killed mid-write) is skipped."""
    if not path.exists():
        return []
    by_key: dict[Any, dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: line %d is not JSON (torn write?); skipped", path, n + 1)
                continue
            by_key[rec.get("key", n) if isinstance(rec, dict) else n] = rec
    return list(by_key.values())


@dataclass
class Run:
    dir: Path
    manifest: dict[str, Any]
    config_text: str | None

    @property
    def command(self) -> str:
        return str(self.manifest.get("command", "unknown"))

    def records(self, name: str) -> list[dict[str, Any]]:
        return _records(self.dir / name)

    def json(self, name: str) -> Any:
        return _read_json(self.dir / name)


def load_run(run_dir: str | Path) -> Run:
    d = Path(run_dir)
    manifest = _read_json(d / "manifest.json")
    if manifest is None:
        # a run killed before its manifest: tell the kind from its files
        if (d / "judgements.jsonl").exists() and not (d / "baselines.jsonl").exists():
            manifest = {"command": "evaluate", "status": "no manifest (killed?)"}
        elif (d / "baselines.jsonl").exists():
            manifest = {"command": "winrate", "status": "no manifest (killed?)"}
        elif (d / "generations.jsonl").exists():
            manifest = {"command": "build", "status": "no manifest (killed?)"}
        else:
            raise FileNotFoundError(
                f"{d} is not a mapo run folder (no manifest.json, generations.jsonl or judgements.jsonl)"
            )
    cfg = d / "config.yaml"
    return Run(d, manifest, cfg.read_text(encoding="utf-8") if cfg.exists() else None)


def find_runs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Run folders at or under ``paths`` (a run, or a sweep folder holding runs), sorted."""
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        found = [p] if (p / "manifest.json").exists() else sorted(m.parent for m in p.rglob("manifest.json"))
        for r in found:
            if r.resolve() not in seen:
                seen.add(r.resolve())
                yield r


# =========================================================================== shared sections


def _overview(run: Run) -> Section:
    m = run.manifest
    rows: list[list[Any]] = [["command", run.command], ["status", m.get("status", "–")], ["run folder", str(run.dir)]]
    if m.get("host"):
        rows.append(["host", m["host"]])
    wall = (m.get("timings_s") or {}).get("wall")
    if wall is not None:
        rows.append(["wall time", _dur(wall)])
    for key in ("items", "comparisons", "prompts", "eval_data", "rows"):
        v = m.get(key)
        if isinstance(v, Mapping):
            rows.append(
                [key, ", ".join(f"{k} {_num(x)}" for k, x in v.items() if not isinstance(x, (dict, list)) or x)]
            )
    if m.get("evaluator"):
        rows.append(
            [
                "evaluator",
                f"{m['evaluator']}: {m.get('judge', '')} ({m.get('setup', '')}), orders {', '.join(m.get('orders', []))}",
            ]
        )
    tp = m.get("throughput") or {}
    if tp:
        rows.append(
            [
                "throughput",
                f"{_num(tp.get('completion_tokens_per_s'), 1)} completion tok/s, requests {_num(tp.get('requests'))}, "
                f"cached {_num(tp.get('cached'))}, retries {_num(tp.get('retries'))}",
            ]
        )
    blocks: list[Any] = [Table(["field", "value"], rows)]
    if m.get("status") not in (None, "complete"):
        blocks.insert(
            0,
            Text(
                f"This run is not complete (status: {m.get('status')}): figures cover the records saved so far; "
                "rerun the same command to resume."
            ),
        )
    return Section("Overview", blocks)


def _role_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for role, v in (m.get("roles") or {}).items():
        for name in [v] if isinstance(v, str) else list(v or []):
            out.append((role, name))
    if m.get("command") == "winrate":
        if m.get("judge"):
            out.append(("judge", m["judge"]))
        for b in m.get("baselines") or []:
            out.append(("baseline", b))
        for c in m.get("configurations") or []:
            out.append((f"generator ({c['name']})", c["generator"]))
            out += [(f"reviewer ({c['name']})", r) for r in c.get("reviewers") or []]
    return out


def _models(run: Run) -> Section:
    m = run.manifest
    models = m.get("models") or {}
    rows = []
    for role, name in _role_rows(m):
        info = models.get(name) or {}
        rows.append([role, name, info.get("served_name"), info.get("endpoint") or info.get("base_url")])
    blocks: list[Any] = (
        [Table(["role", "model (conf/model)", "served name", "endpoint / base_url"], rows)]
        if rows
        else [Text("The manifest names no roles.", note=True)]
    )
    return Section("Models per role", blocks)


def _costs(run: Run) -> Section:
    m = run.manifest
    usage = list(m.get("usage") or [])
    blocks: list[Any] = []
    if usage:
        rows, tot = [], Counter()
        for u in usage:
            req = u.get("requests", 0)
            total = u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)
            rows.append(
                [
                    u.get("role"),
                    u.get("model"),
                    req,
                    u.get("cached", 0),
                    u.get("retries", 0),
                    u.get("failures", 0),
                    u.get("prompt_tokens", 0),
                    u.get("completion_tokens", 0),
                    total,
                    round(u.get("latency_s", 0.0), 2),
                    round(u.get("latency_s", 0.0) / req, 3) if req else None,
                ]
            )
            for k in ("requests", "cached", "retries", "failures", "prompt_tokens", "completion_tokens", "latency_s"):
                tot[k] += u.get(k, 0)
        rows.append(
            [
                "total",
                "",
                tot["requests"],
                tot["cached"],
                tot["retries"],
                tot["failures"],
                tot["prompt_tokens"],
                tot["completion_tokens"],
                tot["prompt_tokens"] + tot["completion_tokens"],
                round(tot["latency_s"], 2),
                round(tot["latency_s"] / tot["requests"], 3) if tot["requests"] else None,
            ]
        )
        blocks.append(
            Table(
                [
                    "role",
                    "model",
                    "requests",
                    "cache hits",
                    "retries",
                    "failures",
                    "prompt tok",
                    "completion tok",
                    "total tok",
                    "latency s (summed)",
                    "s / request",
                ],
                rows,
                total=True,
                caption="Requests sent by this invocation, per (role, model); a resumed run counts only what it sent.",
            )
        )
        blocks.append(
            Fig("tokens_per_role", plots.token_costs(usage), "Prompt and completion tokens per role and model.")
        )
    else:
        blocks.append(Text("No usage recorded in manifest.json.", note=True))
    timings = m.get("timings_s") or {}
    if timings:
        blocks.append(
            Table(
                ["timer", "seconds"],
                [[k, _dur(v)] for k, v in timings.items()],
                caption="Stage timers add up per-item time over concurrent items (busy time), so they can exceed wall time.",
            )
        )
    return Section("Costs: tokens and time per role", blocks)


def _config(run: Run) -> Section:
    if run.config_text is None:
        return Section("Config", [Text("config.yaml is missing.", note=True)])
    return Section("Config", [Code("config.yaml (the composed config of this run)", run.config_text, "yaml")])


# =========================================================================== generation runs


def _iteration_scores(g: Mapping[str, Any], reviewer: str | None = None) -> list[float | None]:
    out: list[float | None] = []
    for it in g.get("iterations") or []:
        if reviewer is None:
            out.append(it.get("score"))
        else:
            out.append(next((r.get("score") for r in it.get("reviews") or [] if r.get("reviewer") == reviewer), None))
    return out


def _trajectory_section(
    gens: Sequence[Mapping[str, Any]], group_by: str | None, title: str, fig_name: str
) -> Section | None:
    scored = [g for g in gens if any(it.get("score") is not None for it in g.get("iterations") or [])]
    if not scored:
        return None
    series: dict[str, list[list[float | None]]] = defaultdict(list)
    failures: Counter = Counter()  # (series, iteration) -> reviews whose score did not parse
    reviewers = sorted({r for g in scored for r in g.get("reviewers") or []})

    def count_failures(name: str, g: Mapping[str, Any], reviewer: str | None = None) -> None:
        for i, it in enumerate(g.get("iterations") or []):
            failures[(name, i)] += sum(
                1
                for r in it.get("reviews") or []
                if r.get("failure") and (reviewer is None or r.get("reviewer") == reviewer)
            )

    for g in scored:
        if group_by:
            name = str(g.get(group_by))
            series[name].append(_iteration_scores(g))
            count_failures(name, g)
        elif len(reviewers) > 1:
            for r in reviewers:
                series[f"reviewer {r}"].append(_iteration_scores(g, r))
                count_failures(f"reviewer {r}", g, r)
            series["mean of reviewers"].append(_iteration_scores(g))
            count_failures("mean of reviewers", g)
        else:
            name = f"reviewer {reviewers[0]}" if reviewers else "score"
            series[name].append(_iteration_scores(g))
            count_failures(name, g)
    blocks: list[Any] = [
        Fig(
            fig_name,
            plots.score_trajectories(series),
            "Reviewer score (out of 10) of each iteration: thin lines "
            "are single prompts, the thick line the mean with its interquartile band.",
        )
    ]
    header = ["series", "iteration", "scored", "mean", "median", "min", "max", "improved vs iter 1", "review failures"]
    rows = []
    for name, runs in series.items():
        n_iter = max((len(r) for r in runs), default=0)
        for i in range(n_iter):
            vals = [r[i] for r in runs if i < len(r) and r[i] is not None]
            both = [(r[0], r[i]) for r in runs if i < len(r) and r[0] is not None and r[i] is not None]
            rows.append(
                [
                    name,
                    i + 1,
                    len(vals),
                    statistics.fmean(vals) if vals else None,
                    statistics.median(vals) if vals else None,
                    min(vals) if vals else None,
                    max(vals) if vals else None,
                    _pct(sum(b > a for a, b in both) / len(both)) if i and both else "",
                    failures[(name, i)],
                ]
            )
    blocks.append(Table(header, rows))
    return Section(title, blocks)


def _winrate_section(wr: Mapping[str, Any]) -> Section:
    rows_names, cols = list(wr.get("rows") or []), list(wr.get("columns") or [])
    table = wr.get("table") or {}
    header = ["configuration", "baseline", "win %", "tie %", "loss %", "win % (ties as half)", "judged n", "failed"]
    rows = []
    for c in rows_names:
        for b in cols:
            cell = (table.get(c) or {}).get(b)
            if not cell:
                rows.append([c, b, None, None, None, None, 0, 0])
                continue
            n = cell.get("n") or 0
            rows.append(
                [
                    c,
                    b,
                    _pct(cell.get("win_rate")),
                    _pct(cell.get("tie_rate")),
                    _pct(cell.get("losses", 0) / n if n else None),
                    _pct(cell.get("win_rate_ties_half")),
                    n,
                    cell.get("failed", 0),
                ]
            )
    note = (
        f"Judge {wr.get('judge', '?')} ({wr.get('setup', '?')}), {wr.get('n_prompts', '?')} prompts; the configuration is shown as A. "
        "Rates are over judged comparisons (wins + ties + losses); judge failures are left out and counted."
    )
    return Section(
        "Win rate against baselines",
        [
            Text(note, note=True),
            Table(header, rows),
            Fig(
                "winrate",
                plots.winrate_bars(table, rows_names, cols),
                "Wins, ties and losses of each configuration against each baseline.",
            ),
        ],
    )


def _build_sections(run: Run, n_examples: int) -> list[Section]:
    gens = run.records("generations.jsonl")
    sels = run.records("selections.jsonl")
    dpo = run.records("dpo.jsonl")
    sections: list[Section] = []
    traj = _trajectory_section(gens, None, "Score trajectories over feedback iterations", "score_trajectories")
    if traj:
        sections.append(traj)

    # ---- selection
    gen_by_key = {g["key"]: g for g in gens}
    decided = [s for s in sels if s.get("best") is not None]
    failed = [s for s in sels if s.get("best") is None]
    n_iter = max((len(g.get("iterations") or []) for g in gens), default=0)
    counts = Counter(s["best"] for s in decided)
    counts.update({i: 0 for i in range(n_iter)})
    blocks: list[Any] = []
    if sels:
        blocks.append(
            Fig(
                "selection",
                plots.selection_counts(dict(counts), len(failed)),
                "How often the judge chose each feedback iteration as the best response.",
            )
        )
        agree = 0
        chosen_scores: list[float] = []
        rejected_scores: list[float] = []
        judged = 0
        for s in decided:
            g = gen_by_key.get(s["key"])
            if not g:
                continue
            scores = _iteration_scores(g)
            if s["best"] < len(scores) and all(x is not None for x in scores):
                judged += 1
                agree += scores[s["best"]] == max(scores)  # type: ignore[type-var]
                chosen_scores.append(scores[s["best"]])  # type: ignore[arg-type]
                rejected_scores += [x for i, x in enumerate(scores) if i != s["best"]]  # type: ignore[misc]
        judgements = [j for s in sels for j in s.get("judgements") or []]
        j_failed = sum(1 for j in judgements if j.get("failure"))
        reasks = sum(max(0, len(j.get("attempts") or []) - 1) for j in judgements)
        rows = [
            ["prompts selected", len(sels)],
            ["judge chose a best response", len(decided)],
            ["no choice (failed)", len(failed)],
            ["pairwise judgements", len(judgements)],
            ["judgements that failed", j_failed],
            ["extra attempts (re-asks, second orders)", reasks],
            ["method", ", ".join(sorted({str(s.get("method")) for s in sels if s.get("method")})) or "–"],
        ]
        if judged:
            rows += [
                ["judge's choice = reviewer's top score", f"{_pct(agree / judged)} of {judged}"],
                ["mean reviewer score, chosen", statistics.fmean(chosen_scores)],
                ["mean reviewer score, rejected", statistics.fmean(rejected_scores) if rejected_scores else None],
            ]
        blocks.append(Table(["selection", "value"], rows))
        blocks.append(
            Table(
                ["iteration", "chosen", "share"],
                [[i + 1, counts[i], _pct(counts[i] / len(decided)) if decided else None] for i in sorted(counts)],
            )
        )
    else:
        blocks.append(Text("No selection records (selections.jsonl is empty or missing).", note=True))
    sections.append(Section("Selection: which iteration was chosen", blocks))
    sections.append(_generation_failures(run, gens, sels))

    # ---- examples
    ex_blocks: list[Any] = []
    shown: set[str] = set()
    sel_by_key = {s["key"]: s for s in sels}
    for row in dpo:
        pid = row.get("prompt_id", row.get("key"))
        if pid in shown:
            continue
        shown.add(pid)
        judge_raw = ""
        for j in (sel_by_key.get(pid) or {}).get("judgements") or []:
            if {j.get("a"), j.get("b")} == {row.get("chosen_iteration"), row.get("rejected_iteration")}:
                judge_raw = "\n\n".join(t for a in j.get("attempts") or [] for t in a.get("raw") or [])
        prompt = "\n\n".join(m.get("content", "") for m in row.get("prompt") or [])
        fields = [("prompt", prompt)]
        if judge_raw:
            fields.append((f"judge's verdict on this pair ({row.get('judge', '')}, raw text)", judge_raw))
        fields += [
            (
                f"chosen: iteration {_num((row.get('chosen_iteration') or 0) + 1)}, reviewer score {_num(row.get('chosen_score'), 1)}",
                "\n\n".join(m.get("content", "") for m in row.get("chosen") or []),
            ),
            (
                f"rejected: iteration {_num((row.get('rejected_iteration') or 0) + 1)}, reviewer score {_num(row.get('rejected_score'), 1)}",
                "\n\n".join(m.get("content", "") for m in row.get("rejected") or []),
            ),
        ]
        ex_blocks.append(Example(f"{pid}", fields, side_by_side=True, open=len(shown) == 1))
        if len(shown) >= n_examples:
            break
    if ex_blocks:
        sections.append(
            Section(
                "Example chosen / rejected pairs",
                [
                    Text(
                        f"{len(ex_blocks)} of {len(dpo)} DPO rows, one per prompt; every text is shown as data (escaped).",
                        note=True,
                    ),
                    *ex_blocks,
                ],
            )
        )
    wr = run.json("winrate.json")
    if wr:
        sections.append(_winrate_section(wr))
    return sections


def _generation_failures(run: Run, gens: Sequence[Mapping[str, Any]], sels: Sequence[Mapping[str, Any]]) -> Section:
    m = run.manifest
    review_fail = Counter()
    truncated = 0
    for g in gens:
        for it in g.get("iterations") or []:
            truncated += it.get("finish_reason") == "length"
            for r in it.get("reviews") or []:
                if r.get("failure"):
                    review_fail[_reason(r["failure"])] += 1
    judge_fail = Counter(_reason(j["failure"]) for s in sels for j in s.get("judgements") or [] if j.get("failure"))
    sel_fail = Counter(_reason(s.get("failure") or "no choice") for s in sels if s.get("best") is None)
    prompts = m.get("prompts") or {}
    rows: list[list[Any]] = []
    for stage, c in (
        ("selection (item has no chosen response)", sel_fail),
        ("judge pairwise judgement", judge_fail),
        ("reviewer (score not parsed)", review_fail),
    ):
        for reason, n in c.most_common(10):
            rows.append([stage, reason, n])
    for reason, n in (prompts.get("skip_reasons") or {}).items():
        rows.append(["prompt source (skipped)", reason, n])
    if truncated:
        rows.append(["generator", "response cut at max_tokens (finish_reason=length)", truncated])
    items = m.get("items") or {}
    if items.get("identical_pairs_skipped"):
        rows.append(["dataset", "identical chosen/rejected pair skipped", items["identical_pairs_skipped"]])
    blocks: list[Any] = [Table(["stage", "reason", "count"], rows)] if rows else [Text("No failures recorded.")]
    failed_items = [s for s in sels if s.get("best") is None][:30]
    if failed_items:
        blocks.append(
            Table(
                ["item", "reason"],
                [[s["key"], s.get("failure") or "no choice"] for s in failed_items],
                caption="Items without a chosen response (first 30).",
            )
        )
    return Section("Failures", blocks)


def _reason(text: Any, n: int = 120) -> str:
    """A failure message with its variable parts (long quotes, long or decimal numbers) folded, for counting."""
    s = re.sub(r"'[^']{41,}'|\"[^\"]{41,}\"", "'…'", str(text))
    s = re.sub(r"\d+\.\d+|\d{3,}", "N", s)
    return s if len(s) <= n else s[: n - 1] + "…"


# =========================================================================== winrate runs


def _winrate_run_sections(run: Run, n_examples: int) -> list[Section]:
    sections: list[Section] = []
    wr = run.json("winrate.json")
    if wr:
        sections.append(_winrate_section(wr))
    else:
        sections.append(
            Section(
                "Win rate against baselines", [Text("winrate.json is missing (the run did not finish).", note=True)]
            )
        )
    gens = run.records("generations.jsonl")
    traj = _trajectory_section(gens, "configuration", "Score trajectories per configuration", "score_trajectories")
    if traj:
        sections.append(traj)
    judgements = run.records("judgements.jsonl")
    fails = Counter(_reason(j.get("failure") or "no verdict") for j in judgements if j.get("outcome") == "failed")
    identical = sum(1 for j in judgements if j.get("identical"))
    rows = [[r, n] for r, n in fails.most_common(15)]
    if identical:
        rows.append(["identical responses: a tie without a judge call", identical])
    sections.append(Section("Failures", [Table(["reason", "count"], rows) if rows else Text("No failures recorded.")]))
    finals = {g["key"]: g for g in gens}
    bases = {b["key"]: b for b in run.records("baselines.jsonl")}
    ex: list[Any] = []
    for j in judgements:
        if j.get("identical") or len(ex) >= n_examples:
            continue
        g = finals.get(f"{j['configuration']}|{j['prompt_id']}") or {}
        b = bases.get(f"{j['baseline']}|{j['prompt_id']}") or {}
        raw = "\n\n".join(j.get("raw") or [])
        fields = [("prompt", g.get("prompt") or b.get("prompt") or "")]
        if raw:
            fields.append((f"judge {j.get('judge', '')} (raw)", raw))
        fields += [
            (f"A: {j['configuration']} (final iteration)", g.get("final", "")),
            (f"B: baseline {j['baseline']}", b.get("response", "")),
        ]
        ex.append(
            Example(
                f"{j['prompt_id']}: {j['configuration']} vs {j['baseline']}: {j.get('outcome')}",
                fields,
                side_by_side=True,
                open=not ex,
            )
        )
    if ex:
        sections.append(Section("Example comparisons", ex))
    return sections


# =========================================================================== evaluation runs


def _agreement(run: Run) -> tuple[dict[str, Any] | None, str | None]:
    a = run.json("agreement.json")
    if a is not None:
        return a, None
    recs = run.records("judgements.jsonl")
    if not recs:
        return None, None
    from mapo.runs.evaluate import agreement_tables

    return agreement_tables(
        recs
    ), "agreement.json is missing (the run did not finish): figures recomputed from judgements.jsonl."


def _evaluate_sections(run: Run, n_examples: int) -> list[Section]:
    agreement, note = _agreement(run)
    sections: list[Section] = []
    if agreement is None:
        return [Section("Agreement with humans", [Text("No judgements recorded yet.", note=True)])]
    results = list(agreement.get("results") or [])
    blocks: list[Any] = []
    if note:
        blocks.append(Text(note))
    ed = agreement.get("eval_data") or run.manifest.get("eval_data") or {}
    blocks.append(
        Text(
            f"Data: {ed.get('loader', '?')} ({_num(ed.get('n_items'))} items). Orders judged: "
            f"{', '.join(agreement.get('orders') or run.manifest.get('orders') or ['AB'])}; orders combined by "
            f"{agreement.get('order_combine', '–')}. Failed judgements are left out of kappa and counted.",
            note=True,
        )
    )
    rows = []
    for e in results:
        pb = e.get("position_bias") or {}
        bo = e.get("by_order") or {}
        rows.append(
            [
                e.get("judge"),
                e.get("kind"),
                e.get("setup"),
                e.get("kappa"),
                e.get("n"),
                e.get("n_failed"),
                _pct(e.get("failure_rate")),
                _pct(e.get("accuracy")),
                (bo.get("AB") or {}).get("kappa"),
                (bo.get("BA") or {}).get("kappa"),
                pb.get("first_rate"),
                pb.get("consistency"),
            ]
        )
    blocks.append(
        Table(
            [
                "judge",
                "kind",
                "setup",
                "kappa",
                "n",
                "failed",
                "failure rate",
                "accuracy",
                "kappa AB",
                "kappa BA",
                "P(first)",
                "swap consistency",
            ],
            rows,
        )
    )
    blocks.append(
        Fig(
            "kappa",
            plots.kappa_bars(results),
            "Cohen's kappa of each judge, juror, jury or debate with the human labels.",
        )
    )
    sections.append(Section("Agreement with humans (Cohen's kappa)", blocks))
    sections.append(
        Section(
            "Confusion matrices",
            [
                Fig(
                    "confusion",
                    plots.confusion_grid(results[:12]),
                    "Rows: the human label; columns: the judge's (failures left out).",
                )
            ],
        )
    )
    if any(e.get("position_bias") for e in results):
        pb_rows = [
            [
                e["judge"],
                e.get("kind"),
                e["position_bias"].get("n_pairs"),
                e["position_bias"].get("n_failed"),
                e["position_bias"].get("first_rate"),
                e["position_bias"].get("tie_rate"),
                e["position_bias"].get("consistency"),
            ]
            for e in results
            if e.get("position_bias")
        ]
        sections.append(
            Section(
                "Position bias",
                [
                    Table(
                        ["judge", "kind", "pairs", "failed", "P(first | decisive)", "tie rate", "swap consistency"],
                        pb_rows,
                    ),
                    Fig(
                        "position_bias",
                        plots.position_bias(results),
                        "Each pair judged in both orders: 0.5 = no position preference.",
                    ),
                ],
            )
        )
    sections.append(_parse_failures(run, results))
    for j in agreement.get("jury_subsets") or []:
        subsets = j.get("subsets") or []
        rows = [
            [" + ".join(s["members"]), s.get("size", len(s["members"])), s.get("kappa"), s.get("n"), s.get("n_failed")]
            for s in subsets[:15]
        ]
        safe = re.sub(r"[^A-Za-z0-9]+", "_", j.get("jury", "jury")).strip("_")[:60]
        singles = {
            e["judge"]: e.get("kappa")
            for e in results
            if e.get("kind") == "juror" and e.get("member_of") == j.get("jury")
        }
        sections.append(
            Section(
                f"Jury subsets: {j.get('jury')}",
                [
                    Text(
                        f"Every subset of the jurors, combined from their stored labels with rule {j.get('rule')} "
                        f"(tie break {j.get('tie_break')}); {len(subsets)} subsets, best 15 shown.",
                        note=True,
                    ),
                    Table(["members", "size", "kappa", "n", "failed"], rows),
                    Fig(
                        f"jury_subsets_{safe}",
                        plots.jury_heatmap(subsets, singles=singles, title=f"Jury subsets of {j.get('jury')}"),
                        "Left: best kappa among juries of each size that include the judge (1 = the judge alone). Right: every subset.",
                    ),
                ],
            )
        )
    ex = _disagreements(run, n_examples)
    if ex:
        sections.append(Section("Examples where the judge and the humans disagree", ex))
    return sections


def _parse_failures(run: Run, results: Sequence[Mapping[str, Any]]) -> Section:
    rows = [
        [
            e.get("judge"),
            e.get("kind"),
            e.get("n", 0) + e.get("n_failed", 0),
            e.get("n_failed"),
            _pct(e.get("failure_rate")),
        ]
        for e in results
    ]
    blocks: list[Any] = [
        Table(
            ["judge", "kind", "items", "failed", "failure rate"],
            rows,
            caption="Items whose judgement failed in every order (parse failure, refusal, rejected request).",
        )
    ]
    reasons: Counter = Counter()
    per_order: Counter = Counter()
    for r in run.records("judgements.jsonl"):
        if r.get("failure"):
            reasons[(r.get("judge"), _reason(r["failure"]))] += 1
            per_order[(r.get("judge"), r.get("order"))] += 1
    if reasons:
        blocks.append(
            Table(
                ["judge", "reason", "records"],
                [[j, why, n] for (j, why), n in reasons.most_common(20)],
                caption="Failed records in judgements.jsonl (one per item and order).",
            )
        )
    return Section("Parse failures", blocks)


def _disagreements(run: Run, n: int) -> list[Example]:
    main_judge = run.manifest.get("judge")
    out: list[Example] = []
    for r in run.records("judgements.jsonl"):
        if len(out) >= n:
            break
        if r.get("kind") in ("juror",) or (main_judge and r.get("judge") != main_judge):
            continue
        if r.get("label") is None or r.get("label") == r.get("human"):
            continue
        scores = (
            f", scores A {_num(r.get('score_a'), 1)} / B {_num(r.get('score_b'), 1)}"
            if r.get("score_a") is not None
            else ""
        )
        raw = r.get("raw") or []
        if not raw and (r.get("detail") or {}).get("members"):
            raw = [json.dumps(r["detail"]["members"], indent=1)]
        out.append(
            Example(
                f"item {r.get('item_id')} ({r.get('order')}): human {r.get('human')}, {r.get('judge')} {r.get('label')}{scores}",
                [(f"raw text {i + 1}", t) for i, t in enumerate(raw[-3:])] or [("raw", "(none kept)")],
                open=not out,
            )
        )
    return out


# =========================================================================== the report


def build_document(run: Run, n_examples: int = 3) -> Document:
    m = run.manifest
    kind = run.command
    if kind == "build":
        title = f"mapo build: {(m.get('roles') or {}).get('generator', '?')} + {', '.join((m.get('roles') or {}).get('reviewers') or [])}"
        body = _build_sections(run, n_examples)
    elif kind == "evaluate":
        title = f"mapo evaluate: {m.get('judge', '?')} on {(m.get('eval_data') or {}).get('loader', '?')}"
        body = _evaluate_sections(run, n_examples)
    elif kind == "winrate":
        title = f"mapo winrate: judge {m.get('judge', '?')}"
        body = _winrate_run_sections(run, n_examples)
    else:
        title = f"mapo run ({kind})"
        body = []
    sections = [_overview(run), _models(run), *body, _costs(run), _config(run)]
    return Document(title, f"{run.dir} · status {m.get('status', '?')}", sections)


def write_report(run_dir: str | Path, out: str | Path | None = None, n_examples: int = 3) -> dict[str, Path]:
    """Write report.html, report.md and figures/*.png; return their paths."""
    run = load_run(run_dir)
    out_dir = Path(out) if out is not None else run.dir / "report"
    doc = build_document(run, n_examples)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):  # figures of an earlier report of this run (e.g. a section now gone)
        stale.unlink()
    names: Counter = Counter()
    for f in doc.figures():  # unique file names
        names[f.name] += 1
        if names[f.name] > 1:
            f.name = f"{f.name}_{names[f.name]}"
        (fig_dir / f"{f.name}.png").write_bytes(f.png)
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md", "figures": fig_dir}
    _atomic_text(paths["html"], render_html(doc))
    _atomic_text(paths["md"], render_markdown(doc))
    return paths


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapo report",
        description="HTML + Markdown report of a mapo run folder (or of every run in a sweep folder).",
    )
    ap.add_argument("run_dir", help="a run folder (manifest.json) or a folder of runs (Hydra multirun)")
    ap.add_argument("--out", help="output folder (default RUN_DIR/report; for a sweep, each run's own report/ folder)")
    ap.add_argument("--examples", type=int, default=3, help="example pairs to show (default 3)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.run_dir)
    if not root.is_dir():
        print(f"mapo report: {root} is not a folder", file=sys.stderr)
        return 2
    try:
        runs = [root] if (root / "manifest.json").exists() or not any(find_runs([root])) else list(find_runs([root]))
        for r in runs:
            out = args.out if len(runs) == 1 else (Path(args.out) / r.relative_to(root) if args.out else None)
            paths = write_report(r, out, args.examples)
            print(f"{paths['html']}\n{paths['md']}")
    except FileNotFoundError as e:
        print(f"mapo report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
