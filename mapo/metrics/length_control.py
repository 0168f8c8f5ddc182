"""Length-controlled win rate: the win rate a judge would give if both responses were as long.

alpaca_eval's length-controlled win rate (Dubois et al. 2024) fits a logistic regression (GLM) of
the judge's preferences on a length term and reports the predicted win rate with that term set
to zero. :func:`length_controlled` fits it on the user's own judgements, per (configuration,
baseline) cell::

    logit P(configuration wins) = theta + phi * tanh((len_x - len_y) / sigma)

``len_x``, ``len_y``: the two responses' lengths in characters; ``sigma``: the standard deviation
of their difference in the cell. A win is 1, a loss 0 and a tie 1/2 (a fractional outcome, as
alpaca_eval counts a tie); failed judgements are left out. The **length-controlled win rate**
is ``sigmoid(theta)``: the predicted win probability at equal length. ``phi`` is the judge's
length preference (0 = none; > 0 = the longer answer is preferred). Intervals: the fit repeated
on bootstrap resamples of the prompts (:mod:`mapo.metrics.uncertainty` settings; at most
:data:`MAX_RESAMPLES`).

What it assumes (read before quoting it):

* length acts through one smooth term, the same for every prompt of the cell (no per-prompt
  difficulty term: alpaca_eval fits one across hundreds of models, one run here has a few
  configurations), and the rest of the preference does not depend on length;
* whatever quality goes with length is removed with the length bias: if longer answers really
  are better on these prompts, the length-controlled rate understates the longer side;
* prompts are independent, and ``sigma`` is taken from the data (not resampled);
* a small ridge penalty (:data:`RIDGE`) keeps the fit finite when one side wins every prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mapo.metrics.uncertainty import Bootstrap

__all__ = ["ASSUMPTIONS", "MAX_RESAMPLES", "RIDGE", "fit_length_glm", "length_controlled", "length_controlled_cells"]

RIDGE = 1e-3
MAX_RESAMPLES = 2000
ASSUMPTIONS = (
    "logit P(win) = theta + phi * tanh(length difference / its sd), one theta and phi per configuration-baseline "
    "cell, no per-prompt term; ties count 1/2; LC win rate = sigmoid(theta), the win probability at equal length; "
    "quality that goes with length is removed with the bias"
)
_OUTCOME = {"win": 1.0, "loss": 0.0, "tie": 0.5}


def fit_length_glm(
    y: np.ndarray, x: np.ndarray, w: np.ndarray | None = None, *, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) of ``logit p = theta + phi * x`` fitted by Newton's method to outcomes ``y`` in [0, 1],
    for every row of weights ``w`` (B, n) at once (item multiplicities; None = one fit, all ones)."""
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    w = np.ones((1, len(y))) if w is None else np.atleast_2d(np.asarray(w, dtype=float))
    theta = np.zeros(len(w))
    phi = np.zeros(len(w))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] + phi[:, None] * x[None])))
        r = w * (y[None] - p)
        v = w * p * (1 - p)
        g0, g1 = r.sum(axis=1) - RIDGE * theta, (r * x[None]).sum(axis=1) - RIDGE * phi
        h00 = v.sum(axis=1) + RIDGE
        h01 = (v * x[None]).sum(axis=1)
        h11 = (v * x[None] ** 2).sum(axis=1) + RIDGE
        det = h00 * h11 - h01 * h01
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        theta, phi = theta + d0, phi + d1
        if np.max(np.abs(np.concatenate([d0, d1]))) < 1e-10:
            break
    return theta, phi


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _ci(values: np.ndarray, confidence: float) -> list[float | None]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return [None, None]
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]


def length_controlled(
    outcomes: Sequence[float], length_diffs: Sequence[float], *, settings: Bootstrap | None = None
) -> dict[str, Any]:
    """The length-controlled win rate of one cell (module doc): ``outcomes`` 1 / 0.5 / 0 per prompt,
    ``length_diffs`` = len(configuration's response) - len(baseline's)."""
    settings = settings or Bootstrap()
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    n = len(y)
    if n < 3:
        return {"n": n, "lc_win_rate": None, "note": "fewer than 3 judged prompts with both lengths"}
    sigma = float(np.std(d))
    x = np.tanh(d / sigma) if sigma > 0 else np.zeros(n)
    theta, phi = fit_length_glm(y, x)
    b = min(int(settings.n_resamples), MAX_RESAMPLES)
    rng = np.random.default_rng(int(settings.seed))
    draws = rng.integers(0, n, size=(b, n))
    w = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(float)
    bt, bp = fit_length_glm(y, x, w)
    return {
        "n": n,
        "win_rate": float(y.mean()),
        "lc_win_rate": float(_sigmoid(theta)[0]),
        "lc_win_rate_ci": _ci(_sigmoid(bt), settings.confidence),
        "length_coef": float(phi[0]),
        "length_coef_ci": _ci(bp, settings.confidence),
        "mean_length_diff": float(d.mean()),
        "length_diff_sd": sigma,
        "n_resamples": b,
    }


def length_controlled_cells(
    records: Sequence[Mapping[str, Any]], *, settings: Bootstrap | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """configuration -> baseline -> :func:`length_controlled` of ``mapo winrate`` records (those with
    an outcome and both lengths, ``length_a`` = the configuration's response, ``length_b`` the baseline's)."""
    cells: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for r in records:
        o = _OUTCOME.get(str(r.get("outcome")))
        la, lb = r.get("length_a"), r.get("length_b")
        if o is None or la is None or lb is None:
            continue
        ys, ds = cells.setdefault((str(r["configuration"]), str(r["baseline"])), ([], []))
        ys.append(o)
        ds.append(float(la) - float(lb))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (c, b), (ys, ds) in sorted(cells.items()):
        out.setdefault(c, {})[b] = length_controlled(ys, ds, settings=settings)
    return out


def lc_note(cell: Mapping[str, Any]) -> str:
    """ "52.1% [44.0, 60.3] (length coef +1.42)" for a table cell."""
    if cell.get("lc_win_rate") is None:
        return "-"
    lo, hi = cell.get("lc_win_rate_ci") or [None, None]
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
    coef = cell.get("length_coef")
    return (
        f"{100 * cell['lc_win_rate']:.1f}%{ci} (length coef {coef:+.2f})"
        if coef is not None and math.isfinite(coef)
        else f"{100 * cell['lc_win_rate']:.1f}%{ci}"
    )
