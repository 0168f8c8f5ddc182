"""``mapo leaderboard RUN_DIR... [--out DIR]``: judges x datasets, like AlpacaEval's evaluator table.

Collects every ``mapo evaluate`` run at or under the given folders (single runs and Hydra
sweep folders alike) and tabulates, for each (judge, setup) on each dataset: Cohen's kappa
with the humans, the parse-failure rate, position bias (when both orders were judged) and
cost in tokens. Every entry of ``agreement.json`` counts: judges, a jury's jurors, juries and
debates. When the same (dataset, judge, setup) appears in several runs, the one over more
items wins (then the newest).

Written to ``DIR`` (default ``./leaderboard``):

* ``leaderboard.csv``: one row per (dataset, judge, setup), every figure (long format);
* ``leaderboard_wide.csv``: one row per (judge, setup), kappa per dataset + means;
* ``leaderboard.md`` and ``leaderboard.html`` (self-contained, with a kappa heatmap).

Columns: ``kappa`` (3-class Cohen's kappa, failures left out), ``failure_rate`` (items with
no verdict in any order / items), ``record_failure_rate`` (failed records / records, one
record per item and order), ``first_rate`` (P(picks the response shown first | decisive);
0.5 = unbiased), ``consistency`` (same verdict in both orders), ``tokens`` (prompt +
completion tokens of the records behind the entry; cache hits keep their original counts),
``tokens_per_item``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mapo.report import plots
from mapo.report.document import Document, Fig, Section, Table, Text, render_html, render_markdown
from mapo.report.run import find_runs, load_run
from mapo.report.sections.evaluate import agreement
from mapo.runs.store import atomic_write_text

__all__ = ["Entry", "collect", "main", "wide_table", "write_leaderboard"]


@dataclass
class Entry:
    """One (dataset, judge, setup) of the leaderboard, with its figures (columns: module doc)."""

    dataset: str
    judge: str
    setup: str
    kind: str
    n: int
    n_failed: int
    kappa: float | None
    accuracy: float | None
    failure_rate: float
    record_failure_rate: float | None
    first_rate: float | None
    consistency: float | None
    tokens: int
    tokens_per_item: float | None
    run: str

    @property
    def name(self) -> str:
        """``judge (setup)``, the row name of the wide table."""
        return f"{self.judge} ({self.setup})"


def _dataset(eval_data: dict[str, Any]) -> str:
    loader = str(eval_data.get("loader") or "?")
    name = loader
    for key in ("path", "data_files"):
        if loader == "local" and eval_data.get(key):
            name = f"local:{Path(str(eval_data[key])).stem}"
    if eval_data.get("limit"):
        name += f"[:{eval_data['limit']}]"
    return name


def collect(paths: Iterable[str | Path]) -> list[Entry]:
    """Every evaluation entry found at or under ``paths``, deduplicated (see module doc)."""
    best: dict[tuple[str, str, str], tuple[Entry, float]] = {}
    for run_dir in find_runs(paths):
        run = load_run(run_dir)
        if run.command != "evaluate":
            continue
        tables, _ = agreement(run)
        if not tables:
            continue
        dataset = _dataset(tables.get("eval_data") or run.manifest.get("eval_data") or {})
        tokens: dict[tuple, int] = defaultdict(int)
        records: dict[tuple, int] = defaultdict(int)
        failed: dict[tuple, int] = defaultdict(int)
        for r in run.records("judgements.jsonl"):
            k = (r.get("kind"), r.get("judge"), r.get("setup"), r.get("member_of"))
            tokens[k] += int(r.get("prompt_tokens") or 0) + int(r.get("completion_tokens") or 0)
            records[k] += 1
            failed[k] += r.get("label") is None
        mtime = (run.dir / "agreement.json").stat().st_mtime if (run.dir / "agreement.json").exists() else 0.0
        for e in tables.get("results") or []:
            k = (e.get("kind"), e.get("judge"), e.get("setup"), e.get("member_of"))
            items = int(e.get("n", 0)) + int(e.get("n_failed", 0))
            pb = e.get("position_bias") or {}
            entry = Entry(
                dataset=dataset,
                judge=str(e.get("judge")),
                setup=str(e.get("setup")),
                kind=str(e.get("kind")),
                n=int(e.get("n", 0)),
                n_failed=int(e.get("n_failed", 0)),
                kappa=e.get("kappa"),
                accuracy=e.get("accuracy"),
                failure_rate=float(e.get("failure_rate") or 0.0),
                record_failure_rate=failed[k] / records[k] if records[k] else None,
                first_rate=pb.get("first_rate"),
                consistency=pb.get("consistency"),
                tokens=tokens[k],
                tokens_per_item=tokens[k] / items if items and records[k] else None,
                run=str(run.dir),
            )
            key = (dataset, entry.judge, entry.setup)
            old = best.get(key)
            rank = lambda x, t: (x.n + x.n_failed, x.kind != "juror", t)  # noqa: E731 - more items, a judge run, newer
            if old is None or rank(entry, mtime) > rank(*old):
                best[key] = (entry, mtime)
    entries = [e for e, _ in best.values()]
    return sorted(entries, key=lambda e: (e.dataset, e.kappa is None, -(e.kappa or 0.0), e.judge))


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(vals) if vals else None


def wide_table(entries: Sequence[Entry]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per (judge, setup), kappa per dataset, then means; best mean kappa first."""
    datasets = sorted({e.dataset for e in entries})
    by_name: dict[str, dict[str, Entry]] = defaultdict(dict)
    kinds: dict[str, str] = {}
    for e in entries:
        by_name[e.name][e.dataset] = e
        kinds[e.name] = e.kind
    header = [
        "judge (setup)",
        "kind",
        *[f"kappa {d}" for d in datasets],
        "mean kappa",
        "failure rate",
        "P(first)",
        "swap consistency",
        "tokens / item",
    ]
    rows = []
    for name, cells in by_name.items():
        es = list(cells.values())
        rows.append(
            [
                name,
                kinds[name],
                *[cells[d].kappa if d in cells else None for d in datasets],
                _mean(e.kappa for e in es),
                _mean(e.failure_rate for e in es),
                _mean(e.first_rate for e in es),
                _mean(e.consistency for e in es),
                _mean(e.tokens_per_item for e in es),
            ]
        )
    rows.sort(key=lambda r: (r[2 + len(datasets)] is None, -float(r[2 + len(datasets)] or 0.0), str(r[0])))
    return header, rows


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (round(v, 6) if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def _r(x: float | None, d: int = 3) -> float | None:
    return None if x is None else round(x, d)


def document(entries: Sequence[Entry], sources: Sequence[str]) -> Document:
    """The leaderboard as a report document: the wide table, the kappa heatmap, every entry, the sources."""
    header, rows = wide_table(entries)
    datasets = sorted({e.dataset for e in entries})
    shown = [[(_r(v) if isinstance(v, float) else v) for v in r] for r in rows]
    for r in shown:  # percentages and token counts read better as such
        r[-4] = "–" if r[-4] is None else f"{100 * r[-4]:.1f}%"
        r[-1] = None if r[-1] is None else int(round(r[-1]))
    long_header = [
        "dataset",
        "judge",
        "setup",
        "kind",
        "kappa",
        "n",
        "failed",
        "failure rate",
        "P(first)",
        "swap consistency",
        "tokens",
        "tokens / item",
    ]
    long_rows = [
        [
            e.dataset,
            e.judge,
            e.setup,
            e.kind,
            _r(e.kappa),
            e.n,
            e.n_failed,
            f"{100 * e.failure_rate:.1f}%",
            _r(e.first_rate),
            _r(e.consistency),
            e.tokens,
            None if e.tokens_per_item is None else int(round(e.tokens_per_item)),
        ]
        for e in entries
    ]
    matrix = [[r[2 + i] for i in range(len(datasets))] for r in rows]
    sections = [
        Section(
            "Leaderboard",
            [
                Text(
                    "Cohen's kappa with human labels (3 classes, ties a class; failed judgements left out and counted in the failure "
                    "rate). P(first): share of decisive picks given to the response shown first, 0.5 = unbiased (needs both orders). "
                    "Tokens: prompt + completion tokens per judged item.",
                    note=True,
                ),
                Table(header, shown),
                Fig(
                    "kappa_matrix",
                    plots.kappa_matrix(matrix, [r[0] for r in rows], datasets),
                    "Kappa per judge and dataset.",
                ),
            ],
        ),
        Section("Every entry", [Table(long_header, long_rows)]),
        Section("Sources", [Table(["run folder"], [[s] for s in sorted({e.run for e in entries})])]),
    ]
    return Document(
        "mapo leaderboard: judges x datasets", f"{len(entries)} entries from {', '.join(sources)}", sections
    )


def write_leaderboard(
    paths: Sequence[str | Path], out: str | Path = "leaderboard", entries: Sequence[Entry] | None = None
) -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard_wide.csv, .md, .html and figures/ under ``out``; return their paths."""
    entries = collect(paths) if entries is None else entries
    out_dir = Path(out)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(Entry)]
    header, rows = wide_table(entries)
    doc = document(entries, [str(p) for p in paths])
    for f in doc.figures():
        (out_dir / "figures" / f"{f.name}.png").write_bytes(f.png)
    written = {
        "csv": out_dir / "leaderboard.csv",
        "wide_csv": out_dir / "leaderboard_wide.csv",
        "md": out_dir / "leaderboard.md",
        "html": out_dir / "leaderboard.html",
    }
    atomic_write_text(written["csv"], _csv(names, ([asdict(e)[n] for n in names] for e in entries)))
    atomic_write_text(written["wide_csv"], _csv(header, rows))
    atomic_write_text(written["md"], render_markdown(doc))
    atomic_write_text(written["html"], render_html(doc))
    return written


def main(argv: list[str] | None = None) -> int:
    """``mapo leaderboard``: 0 when written, 2 when there is no evaluate run."""
    ap = argparse.ArgumentParser(
        prog="mapo leaderboard",
        description="Judges x datasets: kappa, parse failures, position bias, tokens (from mapo evaluate runs).",
    )
    ap.add_argument("runs", nargs="+", help="evaluate run folders or folders holding them (Hydra sweeps)")
    ap.add_argument("--out", default="leaderboard", help="output folder (default ./leaderboard)")
    args = ap.parse_args(argv)
    missing = [p for p in args.runs if not Path(p).is_dir()]
    if missing:
        print(f"mapo leaderboard: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    entries = collect(args.runs)
    if not entries:
        print(
            f"mapo leaderboard: no `mapo evaluate` runs (manifest.json with command evaluate) under {', '.join(args.runs)}",
            file=sys.stderr,
        )
        return 2
    paths = write_leaderboard(args.runs, args.out, entries)
    print(paths["md"].read_text(encoding="utf-8").split("## Every entry")[0].rstrip())
    print("\n" + "\n".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
