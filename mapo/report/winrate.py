"""``winrate.{md,csv,png}``: the win-rate tables of ``winrate.json``, rendered (no model, no records).

``mapo winrate`` computes its data (``winrate.json``: the cells with their intervals, the paired
comparisons with the reference configuration) and hands it here: :func:`write_files` renders the
paper's Table 6 shape as Markdown and CSV (rows = configurations, columns = baselines) and the
figure the report shows (:func:`mapo.report.plots.winrate_bars`). The same function renders them
again from a finished run folder (:func:`render_folder`), so the files and the report never differ.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mapo.core.store import atomic_write_text
from mapo.metrics.length_control import ASSUMPTIONS as LC_ASSUMPTIONS
from mapo.metrics.length_control import lc_note
from mapo.metrics.uncertainty import needed_text, verdict_words

__all__ = ["FILES", "render_folder", "winrate_table", "write_files"]

FILES = ("winrate.csv", "winrate.md", "winrate.png")
"""What :func:`write_files` writes beside ``winrate.json``."""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pct_ci(x: float | None, ci: Sequence[float | None] | None) -> str:
    """``60.0% [40.0, 80.0]`` (the interval in percent; left out when unknown)."""
    if x is None or not ci or ci[0] is None or ci[1] is None:
        return _pct(x)
    return f"{_pct(x)} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _verdict_md(comp: Mapping[str, Any] | None) -> str:
    if not comp:
        return "-"
    if comp.get("verdict") == "reference":
        return "reference"
    d, ci = comp.get("diff"), comp.get("diff_ci") or [None, None]
    if d is None:
        return "cannot tell"
    diff = f"{100 * d:+.1f} pts" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if None not in ci else "")
    if comp["verdict"] == "cannot_tell":
        words = f"cannot tell with n={comp.get('n')}{needed_text(comp.get('n_needed'))}"
    else:
        words = verdict_words(str(comp["verdict"]), comp.get("n_needed"))
    return f"{diff}: {words}"


def _matrix_md(title: str, rows: Sequence[str], cols: Sequence[str], cell: Callable[[str, str], str]) -> list[str]:
    """A Markdown section: ``title``, then one row per configuration and one column per baseline."""
    return [
        title,
        "",
        "| configuration | " + " | ".join(f"vs {b}" for b in cols) + " |",
        "|---|" + "---|" * len(cols),
        *(f"| {c} | " + " | ".join(cell(c, b) for b in cols) + " |" for c in rows),
    ]


def winrate_table(
    cells: Mapping[str, Mapping[str, Mapping[str, Any]]],
    rows: Sequence[str],
    cols: Sequence[str],
    comparisons: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, str]:
    """The Table 6 shape as CSV and Markdown (rows = configurations, columns = baselines).

    Where the cells carry intervals (``*_ci``) they are shown; ``comparisons``
    (:func:`mapo.metrics.uncertainty.winrate_comparisons`) adds the paired comparison with the
    reference configuration. The CSV keeps its first columns (five per baseline) and appends
    the intervals and comparisons after them.
    """
    cmp = comparisons or {}
    has_ci = any((cells.get(c, {}).get(b) or {}).get("win_rate_ci") for c in rows for b in cols)
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["configuration"]
    for b in cols:
        header += [f"vs {b} win%", f"vs {b} tie%", f"vs {b} win% (ties as half)", f"vs {b} n", f"vs {b} failed"]
    if has_ci:
        for b in cols:
            for rate in ("win%", "tie%", "win% (ties as half)"):
                header += [f"vs {b} {rate} ci low", f"vs {b} {rate} ci high"]
    if cmp:
        for b in cols:
            header += [f"vs {b} win% minus reference", f"vs {b} diff ci low", f"vs {b} diff ci high", f"vs {b} verdict"]
    w.writerow(header)
    f = lambda x: "" if x is None else round(100 * x, 2)  # noqa: E731
    for c in rows:
        row: list[Any] = [c]
        for b in cols:
            cell = cells.get(c, {}).get(b)
            if cell is None:
                row += ["", "", "", 0, 0]
                continue
            row += [f(cell["win_rate"]), f(cell["tie_rate"]), f(cell["win_rate_ties_half"]), cell["n"], cell["failed"]]
        if has_ci:
            for b in cols:
                cell = cells.get(c, {}).get(b) or {}
                for key in ("win_rate_ci", "tie_rate_ci", "win_rate_ties_half_ci"):
                    lo, hi = cell.get(key) or (None, None)
                    row += [f(lo), f(hi)]
        if cmp:
            for b in cols:
                comp = (cmp.get(c) or {}).get(b) or {}
                lo, hi = comp.get("diff_ci") or (None, None)
                diff = 0.0 if comp.get("verdict") == "reference" else comp.get("diff")
                row += [f(diff), f(lo), f(hi), comp.get("verdict", "")]
        w.writerow(row)
    ci_note = " [95% CI]" if has_ci else ""

    def both_rates(c: str, b: str) -> str:
        cell = cells.get(c, {}).get(b)
        if cell is None:
            return "-"
        return (
            f"{_pct_ci(cell['win_rate'], cell.get('win_rate_ci'))} "
            f"(ties {_pct_ci(cell['tie_rate'], cell.get('tie_rate_ci'))}, n={cell['n']}"
            + (f", failed {cell['failed']}" if cell["failed"] else "")
            + ")"
        )

    def ties_half(c: str, b: str) -> str:
        cell = cells.get(c, {}).get(b) or {}
        return _pct_ci(cell.get("win_rate_ties_half"), cell.get("win_rate_ties_half_ci"))

    md = _matrix_md(f"## Win rate{ci_note}: wins / judged, ties reported separately", rows, cols, both_rates)
    md += [
        "",
        *_matrix_md(
            f"## Win rate{ci_note}: ties counted as half-wins, (wins + ties/2) / judged", rows, cols, ties_half
        ),
    ]
    if any((cells.get(c, {}).get(b) or {}).get("lc_win_rate") is not None for c in rows for b in cols):
        title = f"## Length-controlled win rate{ci_note}: at equal response length (alpaca_eval's GLM, fitted here)"
        md += ["", *_matrix_md(title, rows, cols, lambda c, b: lc_note(cells.get(c, {}).get(b) or {}))]
        md += ["", f"Length control assumes: {LC_ASSUMPTIONS}."]
    if cmp:
        ref = next(
            (x.get("reference") for per in cmp.values() for x in per.values() if x.get("reference")), "the reference"
        )
        title = f"## Win rate against the reference configuration ({ref}), paired by prompt"
        md += ["", *_matrix_md(title, rows, cols, lambda c, b: _verdict_md((cmp.get(c) or {}).get(b)))]
    md += ["", "Judged = wins + losses + ties; judge failures are left out of every rate and counted as `failed`."]
    if has_ci:
        md.append("[low, high]: bootstrap interval over prompts (in percent).")
    if cmp:
        margin = next((x.get("margin") for per in cmp.values() for x in per.values() if "margin" in x), None)
        md.append(
            "Difference = win rate minus the reference configuration's against the same baseline, in percentage "
            "points; 'better' = the interval lies above 0; 'not worse' = it lies above minus the margin"
            + (f" ({100 * margin:g} pts)" if margin is not None else "")
            + " and contains 0; 'significantly lower, within the margin' = it lies between minus the margin and 0; "
            "'significantly lower (margin not excluded)' = it lies below 0 and contains minus the margin; "
            "'worse' = it lies below minus the margin; n needed assumes the interval shrinks like 1/sqrt(n)."
        )
    return {"csv": buf.getvalue(), "md": "\n".join(md) + "\n"}


def write_files(run_dir: Path, wr: Mapping[str, Any]) -> None:
    """``winrate.csv``, ``winrate.md`` and ``winrate.png`` of ``wr`` (the content of ``winrate.json``)."""
    from mapo.report.plots import winrate_bars

    rows, cols = list(wr["rows"]), list(wr["columns"])
    cells = {c: {b: cell for b, cell in (wr["table"].get(c) or {}).items() if cell is not None} for c in rows}
    tables = winrate_table(cells, rows, cols, wr.get("comparisons") or {})
    atomic_write_text(run_dir / "winrate.csv", tables["csv"])
    atomic_write_text(run_dir / "winrate.md", f"# Win rates ({wr.get('judge')}, {wr.get('setup')})\n\n" + tables["md"])
    title = f"Win rate against single-model baselines (judge {wr.get('judge')})"
    (run_dir / "winrate.png").write_bytes(winrate_bars(wr["table"], rows, cols, title=title))


def render_folder(run_dir: str | Path) -> None:
    """Render the files again from a run folder's ``winrate.json``."""
    run_dir = Path(run_dir)
    write_files(run_dir, json.loads((run_dir / "winrate.json").read_text(encoding="utf-8")))
