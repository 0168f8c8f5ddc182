"""Figures for ``mapo report`` and ``mapo leaderboard``: small pure functions, data in, PNG bytes out.

Each function takes plain Python data (what the run folder's JSON/JSONL holds) and returns
the PNG bytes of one figure. They use matplotlib's object API (``matplotlib.figure.Figure``
rendered by the Agg canvas): no pyplot state, no display, safe on a headless node.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

__all__ = [
    "confusion_grid",
    "histogram",
    "jury_heatmap",
    "kappa_bars",
    "candidate_preference",
    "kappa_matrix",
    "length_bias",
    "position_bias",
    "score_trajectories",
    "selection_counts",
    "token_costs",
    "training_metrics",
    "winrate_bars",
]

DPI = 110
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
KIND_COLORS = {"judge": "#4C72B0", "juror": "#8C8C8C", "jury": "#55A868", "debate": "#DD8452", "cascade": "#C44E52"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _short(s: str, n: int = 38) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _err(value: float | None, ci: Sequence[float | None] | None) -> tuple[float, float]:
    """(below, above) error-bar lengths of ``ci`` around ``value``; (0, 0) without an interval."""
    if value is None or not ci or ci[0] is None or ci[1] is None:
        return 0.0, 0.0
    return max(0.0, value - float(ci[0])), max(0.0, float(ci[1]) - value)


def _whiskers(ax: Any, values: Sequence[float], ys: Sequence[float], errs: Sequence[tuple[float, float]]) -> None:
    """Black interval whiskers over horizontal bars (``errs`` from :func:`_err`)."""
    ax.errorbar(
        values,
        ys,
        xerr=[[lo for lo, _ in errs], [hi for _, hi in errs]],
        fmt="none",
        ecolor="black",
        lw=1,
        capsize=3,
    )


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- generation


def training_metrics(records: Sequence[Mapping[str, Any]], keys: Sequence[str], *, title: str = "") -> bytes:
    """One panel per metric in ``keys`` against the step: the train line and the eval points
    (records of ``metrics.jsonl``: ``split`` train | eval, ``step``, one value per metric)."""
    fig = Figure(figsize=(4.2 * len(keys), 3.4))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for split, style in (("train", "-"), ("eval", "o--")):
            pts = [
                (r["step"], r[key])
                for r in records
                if r.get("split") == split and isinstance(r.get(key), int | float) and isinstance(r.get("step"), int)
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=4, color=COLORS[0 if split == "train" else 1])
        if ax.lines:
            ax.legend(fontsize=8)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        else:
            _empty(ax, "not logged")
        ax.set_title(key, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def score_trajectories(
    series: Mapping[str, Sequence[Sequence[float | None]]],
    *,
    scale: float = 10.0,
    title: str = "Reviewer score over feedback iterations",
    max_lines: int = 150,
) -> bytes:
    """``series``: group name (a reviewer or a configuration) -> one list of per-iteration
    scores per prompt (None = no score). Thin lines: single prompts (at most ``max_lines``
    per group); thick line: mean per iteration, with the interquartile band."""
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    any_line = False
    for g, (name, runs) in enumerate(series.items()):
        color = COLORS[g % len(COLORS)]
        n_iter = max((len(r) for r in runs), default=0)
        for r in list(runs)[:max_lines]:
            pts = [(i + 1, s) for i, s in enumerate(r) if s is not None]
            if len(pts) > 1:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, alpha=0.12, lw=0.8)
        xs: list[int] = []
        means: list[float] = []
        lo: list[float] = []
        hi: list[float] = []
        ns: list[int] = []
        for i in range(n_iter):
            vals = sorted(x for x in (r[i] for r in runs if i < len(r)) if x is not None)
            if not vals:
                continue
            xs.append(i + 1)
            means.append(statistics.fmean(vals))
            q = statistics.quantiles(vals, n=4) if len(vals) > 1 else [vals[0]] * 3
            lo.append(q[0])
            hi.append(q[2])
            ns.append(len(vals))
        if xs:
            any_line = True
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
            ax.plot(
                xs, means, color=color, lw=2.4, marker="o", label=f"{_short(name, 30)} (mean, IQR band; n={max(ns)})"
            )
            for x, m in zip(xs, means, strict=True):
                ax.annotate(
                    f"{m:.2f}", (x, m), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8, color=color
                )
    if not any_line:
        _empty(ax, "no reviewer scores")
    else:
        n_iter = max(max((len(r) for r in runs), default=0) for runs in series.values())
        ax.set_xticks(range(1, n_iter + 1))
        ax.set_xlabel("feedback iteration")
        ax.set_ylabel(f"reviewer score (/{scale:g})")
        ax.set_ylim(0, scale * 1.05)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def selection_counts(
    counts: Mapping[int, int], failed: int = 0, *, title: str = "Which iteration the judge chose"
) -> bytes:
    """Bar per iteration (1-based labels) with how often it was chosen; a grey bar for failures."""
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    labels = [f"iter {i + 1}" for i in sorted(counts)]
    values = [counts[i] for i in sorted(counts)]
    colors = [COLORS[0]] * len(values)
    if failed:
        labels.append("no choice\n(failed)")
        values.append(failed)
        colors.append("#999999")
    if not values:
        _empty(ax, "no selections")
    else:
        total = sum(values)
        bars = ax.bar(range(len(values)), values, color=colors)
        _label_bars(ax, bars, [f"{v} ({100 * v / total:.0f}%)" for v in values], dy=3)
        ax.set_xticks(range(len(values)), labels)
        ax.set_ylabel("prompts")
        ax.set_ylim(0, max(values) * 1.2 + 0.5)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _label_bars(ax: Any, bars: Any, texts: Sequence[str], *, dy: int) -> None:
    """Write each text centred just above its vertical bar."""
    for bar, text in zip(bars, texts, strict=True):
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            textcoords="offset points",
            xytext=(0, dy),
            ha="center",
            fontsize=8,
        )


def histogram(
    counts: Mapping[str, int], *, xlabel: str, ylabel: str = "count", title: str = "Judge score margin"
) -> bytes:
    """Bars of pre-binned counts (bin label -> count), in the given order, with their values."""
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.add_subplot()
    labels, values = list(counts), list(counts.values())
    if not values:
        _empty(ax, "no values")
    else:
        bars = ax.bar(range(len(values)), values, color=COLORS[0])
        _label_bars(ax, bars, [str(v) for v in values], dy=2)
        ax.set_xticks(range(len(values)), labels)
        ax.set_ylim(0, max(values) * 1.2 + 0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def token_costs(usage: Sequence[Mapping[str, Any]], *, title: str = "Tokens per role") -> bytes:
    """Stacked prompt/completion tokens per (role, model) from a manifest's ``usage`` table."""
    fig = Figure(figsize=(6.5, max(2.2, 0.45 * len(usage) + 1.2)))
    ax = fig.add_subplot()
    if not usage:
        _empty(ax, "no usage recorded")
    else:
        names = [_short(f"{u['role']}: {u['model']}", 40) for u in usage]
        prompt = [u.get("prompt_tokens", 0) for u in usage]
        completion = [u.get("completion_tokens", 0) for u in usage]
        ys = range(len(usage))
        ax.barh(ys, prompt, color=COLORS[0], label="prompt tokens")
        ax.barh(ys, completion, left=prompt, color=COLORS[1], label="completion tokens")
        for y, p, c in zip(ys, prompt, completion, strict=True):
            ax.annotate(f"{p + c:,}", (p + c, y), textcoords="offset points", xytext=(3, 0), va="center", fontsize=8)
        ax.set_yticks(list(ys), names)
        ax.invert_yaxis()
        ax.set_xlabel("tokens (this run's requests; cache hits cost 0)")
        ax.set_xlim(0, max(p + c for p, c in zip(prompt, completion, strict=True)) * 1.18 + 1)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def winrate_bars(
    table: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str = "Win rate against single-model baselines",
) -> bytes:
    """One horizontal 100% bar per (configuration, baseline): wins / ties / losses of the judged
    comparisons (failures excluded, noted in the label); a line at 50%."""
    found = [(c, b, (table.get(c) or {}).get(b)) for c in rows for b in cols]
    pairs = [(c, b, cell) for c, b, cell in found if cell]
    fig = Figure(figsize=(7.5, max(2.2, 0.42 * len(pairs) + 1.3)))
    ax = fig.add_subplot()
    if not pairs:
        _empty(ax, "no comparisons")
    else:
        labels, wins, ties, losses = [], [], [], []
        for c, b, cell in pairs:
            n = cell.get("n") or 0
            labels.append(_short(f"{c} vs {b}", 40) + (f"  (failed {cell['failed']})" if cell.get("failed") else ""))
            wins.append(100 * cell.get("wins", 0) / n if n else 0.0)
            ties.append(100 * cell.get("ties", 0) / n if n else 0.0)
            losses.append(100 * cell.get("losses", 0) / n if n else 0.0)
        ys = list(range(len(pairs)))
        ax.barh(ys, wins, color="#55A868", label="win")
        ax.barh(ys, ties, left=wins, color="#CCCCCC", label="tie")
        ax.barh(ys, losses, left=[w + t for w, t in zip(wins, ties, strict=True)], color="#C44E52", label="loss")
        for y, w, (_, _, cell) in zip(ys, wins, pairs, strict=True):
            ax.text(
                1.5, y, f"{w:.1f}% (n={cell.get('n', 0)})", va="center", fontsize=8, color="white", fontweight="bold"
            )
        # the win rate's 95% interval at the end of the win segment; the length-controlled win rate (diamond)
        for y, w, (_, _, cell) in zip(ys, wins, pairs, strict=True):
            lo, hi = cell.get("win_rate_ci") or (None, None)
            if lo is not None and hi is not None:
                ax.errorbar([w], [y], xerr=[[w - 100 * lo], [100 * hi - w]], fmt="none", color="black", capsize=3)
            lc = cell.get("lc_win_rate")
            if lc is not None:
                llo, lhi = cell.get("lc_win_rate_ci") or (None, None)
                err = [[100 * (lc - llo)], [100 * (lhi - lc)]] if llo is not None and lhi is not None else None
                ax.errorbar([100 * lc], [y + 0.25], xerr=err, fmt="D", mfc="white", color="#333333", ms=4, capsize=2)
        ax.axvline(50, color="black", lw=0.8, ls="--")
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        has_lc = any(cell.get("lc_win_rate") is not None for _, _, cell in pairs)
        ax.set_xlabel(
            "% of judged comparisons (configuration shown as A); whisker: 95% interval of the win rate"
            + ("; diamond: length-controlled win rate" if has_lc else "")
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return _png(fig)


# --------------------------------------------------------------------------- evaluation


def kappa_bars(
    entries: Sequence[Mapping[str, Any]],
    *,
    title: str = "Cohen's kappa with human labels",
    reference: Mapping[str, float] | None = None,
    ceiling: Mapping[str, Any] | None = None,
) -> bytes:
    """One bar per judge / jury / debate (``agreement.json`` results), coloured by kind, with
    n and failures in the label; ``reference``: optional name -> published kappa (markers);
    ``ceiling``: the human ceiling (``human_agreement.ceiling``), a dashed line with its interval."""
    entries = list(entries)
    fig = Figure(figsize=(7.0, max(2.2, 0.4 * len(entries) + 1.3)))
    ax = fig.add_subplot()
    if not entries:
        _empty(ax, "no agreement results")
    else:
        ys = list(range(len(entries)))
        vals = [float(e["kappa"]) if e.get("kappa") is not None else 0.0 for e in entries]
        colors = [KIND_COLORS.get(e.get("kind", "judge"), COLORS[0]) for e in entries]
        errs = [_err(e.get("kappa"), e.get("kappa_ci")) for e in entries]
        has_ci = any(lo or hi for lo, hi in errs)
        ax.barh(ys, vals, color=colors)
        if has_ci:
            _whiskers(ax, vals, ys, errs)
        for y, e, v, (_, hi) in zip(ys, entries, vals, errs, strict=True):
            text = "undefined" if e.get("kappa") is None else f"{v:.3f}"
            text += f"  n={e.get('n', 0)}" + (f", failed {e['n_failed']}" if e.get("n_failed") else "")
            ax.annotate(text, (max(v + hi, 0), y), textcoords="offset points", xytext=(4, 0), va="center", fontsize=8)
        if reference:
            for y, e in zip(ys, entries, strict=True):
                ref = reference.get(e.get("judge", ""))
                if ref is not None:
                    ax.plot([ref], [y], marker="|", ms=14, mew=2, color="black")
        mark = " ◀ reference"
        ax.set_yticks(
            ys,
            [
                _short(f"{e.get('judge')} [{e.get('kind')}]", 44)
                + (mark if (e.get("vs_reference") or {}).get("verdict") == "reference" else "")
                for e in entries
            ],
        )
        ax.invert_yaxis()
        lo = min(0.0, min(v - e[0] for v, e in zip(vals, errs, strict=True)) * 1.2)
        ax.set_xlim(lo, max(1.0, max(v + e[1] for v, e in zip(vals, errs, strict=True)) * 1.1 + 0.25))
        ax.axvline(0, color="black", lw=0.6)
        ceiling_line = _ceiling(ax, ceiling, vertical=True)
        ax.set_xlabel(
            "Cohen's kappa (3 classes: model_a / model_b / tie)" + ("; bars: 95% bootstrap interval" if has_ci else "")
        )
        ax.grid(axis="x", alpha=0.3)
        handles: list[Any] = [
            Patch(color=c, label=k) for k, c in KIND_COLORS.items() if any(e.get("kind") == k for e in entries)
        ]
        loo = [(y, float(e["loo_kappa"])) for y, e in zip(ys, entries, strict=True) if e.get("loo_kappa") is not None]
        if ceiling_line is not None and loo:
            # the bars score against the majority of all annotators; the ceiling against the majority of the
            # others: the figure comparable with the ceiling is each evaluator's leave-one-out kappa
            (marker,) = ax.plot(
                [x for _, x in loo],
                [y for y, _ in loo],
                ls="none",
                marker="D",
                mfc="white",
                mec="black",
                ms=6,
                label="leave-one-out kappa (compare with the ceiling)",
            )
            handles.append(marker)
        if len(handles) > 1 or ceiling_line is not None:
            ax.legend(handles=handles + ([ceiling_line] if ceiling_line is not None else []), fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _ceiling(ax: Any, ceiling: Mapping[str, Any] | None, *, vertical: bool) -> Any:
    """The human ceiling as a dashed line with its interval shaded; its legend handle (None without one)."""
    if not ceiling or ceiling.get("kappa") is None:
        return None
    k = float(ceiling["kappa"])
    lo, hi = (ceiling.get("kappa_ci") or [None, None])[:2]
    line = ax.axvline if vertical else ax.axhline
    span = ax.axvspan if vertical else ax.axhspan
    handle = line(k, color="#555555", ls="--", lw=1.2, label=f"human ceiling {k:.3f}")
    if lo is not None and hi is not None:
        span(float(lo), float(hi), color="#999999", alpha=0.15, lw=0)
    return handle


def _heat(
    ax: Any,
    matrix: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    fmt: str = "{:.3f}",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    notes: Sequence[Sequence[str]] | None = None,
) -> Any:
    data = [[math.nan if v is None else float(v) for v in row] for row in matrix]
    finite = [v for row in data for v in row if math.isfinite(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    if hi - lo < 1e-9:  # one value everywhere: a readable, non-degenerate colour scale
        lo, hi = lo - 0.05, hi + 0.05
    im = ax.imshow(data, cmap=cmap, aspect="auto", vmin=lo, vmax=hi)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if math.isfinite(v):
                r, g, b, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                text = fmt.format(v) + (f"\n{notes[i][j]}" if notes and notes[i][j] else "")
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=7 if notes else 8, color="white" if dark else "black"
                )
            else:
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="#888")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    return im


def jury_heatmap(
    subsets: Sequence[Mapping[str, Any]],
    *,
    singles: Mapping[str, float | None] | None = None,
    singles_ci: Mapping[str, Sequence[float | None] | None] | None = None,
    selection: Mapping[str, Any] | None = None,
    ceiling: Mapping[str, Any] | None = None,
    title: str = "Jury subsets",
) -> bytes:
    """Left: judges x jury size, cell = the best kappa among juries of that size that include
    the judge, with that jury's 95% interval (column 1 = the judge alone, from ``singles``).
    Right: every subset's kappa by size; the best of each size in red with its interval, and
    beside it (hollow diamond) the best-of-that-size kappa corrected for having been chosen
    (``selection["by_size"]``, :mod:`mapo.metrics.best_of`) with its interval; the human
    ceiling as a dashed line. The kappa axis starts at 0 (or below) so that gaps keep their size."""
    judges = sorted({m for s in subsets for m in s.get("members", [])} | set(singles or {}))
    sizes = sorted({len(s.get("members", [])) for s in subsets})
    fig = Figure(figsize=(12.5, max(3.4, 0.62 * len(judges) + 2.0)))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1.0], "wspace": 0.45})
    if not subsets:
        _empty(ax1, "no jury subsets")
        _empty(ax2, "")
        return _png(fig)
    cols = ([1] if singles else []) + sizes
    matrix, notes = [], []
    for j in judges:
        row: list[float | None] = [singles.get(j)] if singles else []
        note: list[str] = [_ci_text((singles_ci or {}).get(j))] if singles else []
        for k in sizes:
            ks = [s for s in subsets if len(s["members"]) == k and j in s["members"] and s.get("kappa") is not None]
            top = max(ks, key=lambda s: s["kappa"]) if ks else None
            row.append(top["kappa"] if top else None)
            note.append(_ci_text(top.get("kappa_ci")) if top else "")
        matrix.append(row)
        notes.append(note)
    finite = [v for row in matrix for v in row if v is not None]
    im = _heat(  # the colour scale starts at 0 (or below): a 0.04 gap does not span the whole scale
        ax1,
        matrix,
        [_short(j, 26) for j in judges],
        [("1 (alone)" if k == 1 else str(k)) for k in cols],
        notes=notes,
        vmin=min([0.0, *finite]),
        vmax=max([0.1, *finite]),
    )
    fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.03, label="kappa")
    ax1.set_xlabel("jury size")
    ax1.set_title("best kappa of juries that include the judge [95% CI] (a best-of: optimistic)", fontsize=9)
    lows: list[float] = [0.0]
    highs: list[float] = []
    by_size = (selection or {}).get("by_size") or {}
    for k in sizes:
        ks = [s for s in subsets if len(s["members"]) == k and s.get("kappa") is not None]
        if not ks:
            continue
        best = max(ks, key=lambda s: s["kappa"])
        vals = [s["kappa"] for s in ks]
        ax2.scatter([k] * len(ks), vals, color=COLORS[0], alpha=0.45, s=16)
        lo, hi = _err(best["kappa"], best.get("kappa_ci"))
        ax2.errorbar([k], [best["kappa"]], yerr=[[lo], [hi]], fmt="o", color="#C44E52", ms=6, capsize=3, zorder=3)
        ax2.annotate(
            f"{best['kappa']:.3f}",
            (k, best["kappa"]),
            textcoords="offset points",
            xytext=(-30, 0),
            va="center",
            fontsize=8,
            color="#C44E52",
        )
        lows += [min(vals), best["kappa"] - lo]
        highs += [best["kappa"] + hi]
        sel = by_size.get(str(k))
        if sel and sel.get("corrected") is not None:
            c = float(sel["corrected"])
            clo, chi = _err(c, sel.get("corrected_ci"))
            ax2.errorbar(
                [k + 0.22], [c], yerr=[[clo], [chi]], fmt="D", mfc="white", color="black", ms=5, capsize=3, zorder=3
            )
            lows.append(c - clo)
            highs.append(c + chi)
    if singles:
        vals = [v for v in singles.values() if v is not None]
        ax2.scatter([1] * len(vals), vals, color="#8C8C8C", alpha=0.7, s=18)
        lows += vals
        highs += vals
    ceiling_line = _ceiling(ax2, ceiling, vertical=False)
    if ceiling_line is not None and ceiling:
        highs.append(float((ceiling.get("kappa_ci") or [None, ceiling["kappa"]])[1] or ceiling["kappa"]))
    ax2.set_ylim(min(lows) - 0.03, max(highs + [0.1]) + 0.05)
    ax2.set_xticks(cols)
    ax2.set_xlabel("jury size (1 = single judges)" if singles else "jury size")
    ax2.set_ylabel("kappa")
    ax2.grid(alpha=0.3)
    handles = [
        Line2D([], [], marker="o", color="#C44E52", ls="", label="best of its size [95% CI] (optimistic)"),
        Line2D([], [], marker="D", mfc="white", color="black", ls="", label="best of its size, selection-corrected"),
    ]
    if not by_size:
        handles = handles[:1]
    if ceiling_line is not None:
        handles.append(ceiling_line)
    ax2.legend(handles=handles, fontsize=7, loc="lower right")
    ax2.set_title("every subset; the best of each size with its interval", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def _ci_text(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{float(ci[0]):.2f}, {float(ci[1]):.2f}]"


def confusion_grid(
    entries: Sequence[Mapping[str, Any]],
    *,
    title: str = "Confusion matrices (rows: human, columns: judge)",
    per_row: int = 3,
) -> bytes:
    """Small multiples of 3x3 count matrices (``confusion``/``labels`` of agreement results)."""
    entries = [e for e in entries if e.get("confusion")]
    n = max(1, len(entries))
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 3.2 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for idx in range(rows * cols):
        ax = axes[idx // cols][idx % cols]
        if idx >= len(entries):
            ax.axis("off")
            continue
        e = entries[idx]
        labels = [str(x) for x in e.get("labels", ["model_a", "model_b", "tie"])]
        total = sum(sum(r) for r in e["confusion"]) or 1
        _heat(
            ax,
            e["confusion"],
            labels,
            labels,
            fmt="{:.0f}",
            vmin=0,
            vmax=max(max(r) for r in e["confusion"]) or 1,
            cmap="Blues",
        )
        k = e.get("kappa")
        ax.set_title(
            _short(str(e.get("judge")), 30) + f"\nkappa {'–' if k is None else f'{k:.3f}'}, "
            f"acc {100 * sum(e['confusion'][i][i] for i in range(len(labels))) / total:.0f}%",
            fontsize=8,
        )
        ax.set_xlabel("judge", fontsize=8)
        ax.set_ylabel("human", fontsize=8)
    if not entries:
        _empty(axes[0][0], "no confusion matrices")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def position_bias(
    entries: Sequence[Mapping[str, Any]], *, title: str = "Position bias (both presentation orders)"
) -> bytes:
    """Per judge: share of decisive picks that went to the response shown first (0.5 = no
    bias) and the share of pairs whose verdict survives swapping the order."""
    entries = [e for e in entries if e.get("position_bias")]
    fig = Figure(figsize=(10.0, max(2.2, 0.42 * len(entries) + 1.4)))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    if not entries:
        _empty(ax1, "judged in one order only: no position-bias figures")
        _empty(ax2, "")
        return _png(fig)
    ys = list(range(len(entries)))
    first = [e["position_bias"].get("first_rate") for e in entries]
    cons = [e["position_bias"].get("consistency") for e in entries]
    ax1.barh(
        ys,
        [v if v is not None else 0 for v in first],
        color=[KIND_COLORS.get(str(e.get("kind")), COLORS[0]) for e in entries],
    )
    for ax, key, vals in ((ax1, "first_rate_ci", first), (ax2, "consistency_ci", cons)):
        errs = [_err(v, e["position_bias"].get(key)) for e, v in zip(entries, vals, strict=True)]
        if any(lo or hi for lo, hi in errs):
            _whiskers(ax, [v or 0 for v in vals], ys, errs)
    ax1.axvline(0.5, color="black", ls="--", lw=0.8)
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("P(picks the response shown first | decisive)")
    ax2.barh(ys, [v if v is not None else 0 for v in cons], color=COLORS[2], zorder=0)
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("swap consistency (same verdict in both orders)")
    for ax, vals in ((ax1, first), (ax2, cons)):
        for y, v in zip(ys, vals, strict=True):
            ax.annotate(
                "–" if v is None else f"{v:.2f}",
                (0.01, y),
                va="center",
                fontsize=8,
                color="white",
                fontweight="bold",
            )
        ax.grid(axis="x", alpha=0.3)
    ax1.set_yticks(ys, [_short(str(e.get("judge")), 34) for e in entries])
    ax1.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def kappa_matrix(
    matrix: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str = "Cohen's kappa: judges x datasets",
    intervals: Sequence[Sequence[Sequence[float | None] | None]] | None = None,
) -> bytes:
    """Heatmap of a leaderboard (rows = judges, columns = datasets); ``intervals[i][j]``: the cell's
    95% interval, written under its value."""
    fig = Figure(figsize=(max(4.5, 1.4 * len(cols) + 3.5), max(2.2, 0.45 * len(rows) + 1.4)))
    ax = fig.add_subplot()
    if not rows or not cols:
        _empty(ax, "no results")
    else:
        im = _heat(
            ax,
            matrix,
            [_short(r, 44) for r in rows],
            [_short(c, 18) for c in cols],
            vmin=min([0.0] + [v for row in matrix for v in row if v is not None]),
            vmax=max([0.5] + [v for row in matrix for v in row if v is not None]),
            notes=[[_ci_text(c) for c in row] for row in intervals] if intervals else None,
        )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="kappa")
        ax.tick_params(axis="x", rotation=20)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _rate_dots(
    ax: Any,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str] | None,
    *,
    xlabel: str,
    marks: Sequence[str] = (),
) -> None:
    """Evaluators on y (first on top): the judge's rate (dot, 95% interval) against the humans'
    rate on the same items (hollow diamond with its interval); 0.5 dashed; judge - human on the
    right; ``marks``: a word per row written inside the panel (e.g. "own family")."""
    ys = list(range(len(rows)))
    for y, r in zip(ys, rows, strict=True):
        hr, jr = r.get("human_rate"), r.get("judge_rate")
        if hr is not None:
            lo, hi = _err(hr, r.get("human_ci"))
            ax.errorbar([hr], [y + 0.18], xerr=[[lo], [hi]], fmt="D", mfc="white", color="#8C8C8C", ms=5, capsize=2)
        if jr is not None:
            lo, hi = _err(jr, r.get("judge_ci"))
            color = KIND_COLORS.get(str(r.get("kind")), COLORS[0])
            ax.errorbar([jr], [y - 0.12], xerr=[[lo], [hi]], fmt="o", color=color, ms=6, capsize=3)
            d = r.get("diff")
            if d is not None:
                ax.annotate(
                    f"{d:+.2f}",
                    (1.0, y),
                    xycoords=("axes fraction", "data"),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
                )
    for y, mark in zip(ys, marks, strict=False):
        if mark:
            ax.text(0.01, y, mark, va="center", fontsize=7, color="#C44E52", style="italic")
    ax.axvline(0.5, color="black", ls="--", lw=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top (set, not toggled: axes may share y)
    if labels is not None:
        ax.set_yticks(ys, [_short(x, 40) for x in labels])
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def _rate_legend(fig: Figure) -> None:
    handles = [
        Line2D([], [], marker="o", color="#4C72B0", ls="", label="judge (dot; bar: 95% interval)"),
        Line2D([], [], marker="D", mfc="white", color="#8C8C8C", ls="", label="humans, same items"),
    ]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.02))


def candidate_preference(
    preference: Sequence[Mapping[str, Any]],
    *,
    title: str = "How often each candidate model is picked: judges vs humans",
    max_panels: int = 4,
) -> bytes:
    """One panel per candidate (at most ``max_panels``, the most compared first): per evaluator,
    the rate at which it picks that candidate (a tie counts half) against the humans' rate on
    the same items (``mapo.metrics.bias.candidate_preference`` rows, with the evaluator's
    ``models``). "own model" / "own family" is written in the panel where the candidate is the
    evaluator's; the right margin gives judge - human."""
    cands: dict[str, int] = {}
    for p in preference:
        for c in p.get("candidates") or []:
            cands[c["candidate"]] = max(cands.get(c["candidate"], 0), int(c.get("n") or 0))
    shown = sorted(cands, key=lambda c: (-cands[c], c))[:max_panels]
    n = max(1, len(shown))
    fig = Figure(figsize=(min(16.0, 2.2 + 4.2 * n), max(2.6, 0.42 * len(preference) + 1.9)))
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    if not shown:
        _empty(axes[0], "no candidate models")
        return _png(fig)
    for i, (ax, cand) in enumerate(zip(axes, shown, strict=True)):
        rows, marks = [], []
        for p in preference:
            row = next((c for c in p.get("candidates") or [] if c["candidate"] == cand), None)
            own_family = bool(row and row.get("own_family"))
            marks.append("own model" if row and row.get("self") else ("own family" if own_family else ""))
            rows.append({**(row or {}), "kind": p.get("kind")})
        labels = [str(p.get("judge")) for p in preference] if i == 0 else None
        _rate_dots(ax, rows, labels, xlabel=f"P(picks {_short(cand, 24)}) (tie = 1/2)", marks=marks)
        ax.set_title(_short(cand, 40), fontsize=9)
    fig.suptitle(title + "  (right of each panel: judge − human)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _rate_legend(fig)
    return _png(fig)


def length_bias(
    rows: Sequence[Mapping[str, Any]], *, title: str = "Length bias: P(prefers the longer response)"
) -> bytes:
    """Per evaluator: P(picks the longer response | decisive, lengths differ) against the humans'
    rate on the same items (``mapo.metrics.bias.length_bias`` rows); right margin: judge - human."""
    fig = Figure(figsize=(7.5, max(2.6, 0.42 * len(rows) + 1.9)))
    ax = fig.add_subplot()
    if not rows:
        _empty(ax, "no length-bias rows")
        return _png(fig)
    _rate_dots(ax, rows, [str(r.get("judge")) for r in rows], xlabel="P(prefers the longer response | decisive)")
    ax.set_title(title + "  (right: judge − human)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _rate_legend(fig)
    return _png(fig)
