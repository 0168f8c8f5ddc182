"""``mapo report RUN_DIR [--out DIR]``: a self-contained HTML report and a Markdown version of a run.

Reads only the run folder (no model call), so it works on a finished, stopped or resumed run
and on a copy of one. Run kinds are told apart by ``manifest.json`` ``command``:

* ``build`` (the main job): models per role, token and time costs, reviewer-score
  trajectories over the feedback iterations, which iteration the judge chose, failures,
  example chosen/rejected pairs, and the win-rate table when ``winrate.json`` is present;
* ``winrate``: the win-rate table and bars, score trajectories per configuration, examples;
* ``evaluate``: kappa per judge / jury / debate with its 95% interval and the verdict against
  the reference evaluator, confusion matrices, bias diagnostics (position, length, candidate
  preference), parse-failure rates and the jury-subset heatmap (``agreement.json``; recomputed
  from ``judgements.jsonl`` when a run stopped before writing it);
* ``train``: method, base model, LoRA and the TRL keys set, status and steps/s, the training
  metrics of ``metrics.jsonl`` (loss, reward accuracy and margin, train and eval), the held-out
  eval before and after training, and the trained model's config with the command that serves it;
* the JSON file ``mapo agreement ... --out FILE`` writes (pass the file, or a folder holding
  ``agreement*.json``): the same sections, the per-item inputs re-read from the sources it names.

Written to ``DIR`` (default ``RUN_DIR/report``; for an agreement file ``<file>_report`` beside it): ``report.html`` (figures embedded as base64
PNG data URIs: one file to copy or mail), ``report.md`` and ``figures/*.png`` (the same
figures, referenced by the Markdown). Every text that came from a model or a dataset is
HTML-escaped in the page and Markdown-escaped (or fenced) in report.md: a response or a prompt
id cannot inject markup or a live link into the report.

A folder without ``manifest.json`` (a Hydra sweep folder) gets one report per run (and per
agreement output) inside it.

Layout: :mod:`mapo.report.document` (blocks, HTML and Markdown renderers), :mod:`mapo.report.run`
(reading a run folder), :mod:`mapo.report.sections` (one module per run kind), this module
(assembling and writing).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from mapo.core.store import atomic_write_text
from mapo.report.document import (
    Code,
    Document,
    Example,
    Fig,
    Section,
    Table,
    Text,
    render_html,
    render_markdown,
)
from mapo.report.run import Run, find_runs, find_sources, load_run
from mapo.report.sections import common
from mapo.report.sections.build import build_sections
from mapo.report.sections.evaluate import agreement_overview, evaluate_sections
from mapo.report.sections.train import train_sections
from mapo.report.sections.winrate import winrate_sections

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


def build_document(run: Run, n_examples: int = 3) -> Document:
    """The report of ``run``: overview and models, the sections of its kind, costs and config."""
    m = run.manifest
    kind = run.command
    roles = m.get("roles") or {}
    if kind == "agreement":
        t = run.json("agreement.json") or {}
        src = t.get("source") or ", ".join(t.get("sources") or []) or "?"
        title = f"mapo agreement: {src}" + (f" vs {t['humans']}" if t.get("humans") else "")
        sections = [agreement_overview(run), *evaluate_sections(run, n_examples)]
        return Document(title, f"{run.agreement_file}", sections)
    if kind == "build":
        title = f"mapo build: {roles.get('generator', '?')} + {', '.join(roles.get('reviewers') or [])}"
        body = build_sections(run, n_examples)
    elif kind == "evaluate":
        title = f"mapo evaluate: {m.get('judge', '?')} on {(m.get('eval_data') or {}).get('loader', '?')}"
        body = evaluate_sections(run, n_examples)
    elif kind == "winrate":
        title = f"mapo winrate: judge {m.get('judge', '?')}"
        body = winrate_sections(run, n_examples)
    elif kind == "train":
        # no roles, requests or tokens: the model and the costs sections would be empty
        title = f"mapo train: {str(m.get('method', '?')).upper()} of {m.get('base_model', '?')}"
        sections = [common.overview(run), *train_sections(run, n_examples), common.config(run)]
        return Document(title, f"{run.dir} · status {m.get('status', '?')}", sections)
    else:
        title = f"mapo run ({kind})"
        body = []
    checked = common.preflight(run)
    sections = [common.overview(run), common.models(run), *([checked] if checked else []), *body]
    sections += [common.costs(run), common.config(run)]
    return Document(title, f"{run.dir} · status {m.get('status', '?')}", sections)


def write_report(run_dir: str | Path, out: str | Path | None = None, n_examples: int = 3) -> dict[str, Path]:
    """Write report.html, report.md and figures/*.png; return their paths."""
    run = load_run(run_dir)
    out_dir = Path(out) if out is not None else run.default_out
    doc = build_document(run, n_examples)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):  # figures of an earlier report of this run (e.g. a section now gone)
        stale.unlink()
    names: Counter[str] = Counter()
    for f in doc.figures():  # unique file names
        names[f.name] += 1
        if names[f.name] > 1:
            f.name = f"{f.name}_{names[f.name]}"
        (fig_dir / f"{f.name}.png").write_bytes(f.png)
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md", "figures": fig_dir}
    atomic_write_text(paths["html"], render_html(doc))
    atomic_write_text(paths["md"], render_markdown(doc))
    return paths


def main(argv: list[str] | None = None) -> int:
    """``mapo report``: write the report of a run, or of every run in a sweep folder; 2 when there is none."""
    ap = argparse.ArgumentParser(
        prog="mapo report",
        description="HTML + Markdown report of a mapo run folder (or of every run in a sweep folder).",
    )
    ap.add_argument(
        "run_dir",
        help="a run folder (manifest.json), a folder of runs (Hydra multirun), or a `mapo agreement` output file",
    )
    ap.add_argument("--out", help="output folder (default RUN_DIR/report; for a sweep, each run's own report/ folder)")
    ap.add_argument("--examples", type=int, default=3, help="example pairs to show (default 3)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.run_dir)
    if not root.exists():
        print(f"mapo report: {root}: no such file or folder", file=sys.stderr)
        return 2
    try:
        found = list(find_sources([root]))
        runs = [root] if root.is_file() or (root / "manifest.json").exists() or not found else found
        for r in runs:
            if len(runs) == 1 or not args.out:
                out = args.out if len(runs) == 1 else None
            else:
                rel = r.relative_to(root)
                out = Path(args.out) / (rel.with_suffix("") if r.is_file() else rel)
            paths = write_report(r, out, args.examples)
            print(f"{paths['html']}\n{paths['md']}")
    except FileNotFoundError as e:
        print(f"mapo report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
