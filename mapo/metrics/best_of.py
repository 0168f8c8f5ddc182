"""The kappa of a chosen "best of": corrected for having chosen it on the same items.

The best jury is the maximum over every subset (57 of six judges) scored on the same items, so its
kappa is optimistic: even if no jury were better than another, the maximum of 57 noisy
estimates lies above their common value. :func:`selection_corrected` estimates what the
choice is worth on items it was not made on (repeated two-fold cross-validation):

* the items are split at random into two halves; the best subset is chosen on one half and its
  kappa is measured on the other, and the other way round; repeated over ``n_splits`` random
  splits, the **corrected kappa** is the mean of those held-out kappas;
* its interval: the whole procedure (resample the items, split, choose, score the held-out half)
  bootstrapped over items (``settings``, at most :data:`MAX_RESAMPLES` resamples).

What it assumes and gives: the choice is made on half the items, so it is a little worse than a
choice made on all of them would be: the corrected kappa is, if anything, pessimistic (it
estimates the value of "pick the best subset on n/2 items"); the optimistic figure (the best
subset's kappa on all items) is kept beside it and stays exact. ``chosen_share`` says how often
the split-half choice was the overall best subset: a low share means the best is not clearly best.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from mapo.core.types import Label
from mapo.metrics.uncertainty import Bootstrap, _features, _kappa_accuracy, label_codes

__all__ = ["MAX_RESAMPLES", "N_SPLITS", "selection_corrected"]

N_SPLITS = 1000
"""Random half splits for the point estimate (both directions each)."""
MAX_RESAMPLES = 2000
"""Most bootstrap resamples of the whole selection (each one split, both directions)."""
METHOD = (
    "repeated two-fold cross-validation: choose the best subset on a random half of the items, score it "
    "on the other half (both ways), mean over the splits; interval: the whole procedure bootstrapped over items"
)


def _held_out(feats: np.ndarray, w: np.ndarray, masks: np.ndarray, n_cand: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out kappa of the choice made on each half (R, 2), the chosen candidate per half (R, 2))
    for weights ``w`` (R, n) and half masks (R, n)."""
    held, chosen = [], []
    for train, test in ((masks, ~masks), (~masks, masks)):
        k_train, _ = _kappa_accuracy(((w * train) @ feats).reshape(len(w), 8, n_cand))
        k_test, _ = _kappa_accuracy(((w * test) @ feats).reshape(len(w), 8, n_cand))
        pick = np.argmax(np.where(np.isfinite(k_train), k_train, -np.inf), axis=1)
        held.append(k_test[np.arange(len(w)), pick])
        chosen.append(pick)
    return np.stack(held, axis=1), np.stack(chosen, axis=1)


def _halves(rng: np.random.Generator, r: int, n: int) -> np.ndarray:
    """(r, n) masks, each with exactly n // 2 items True, drawn at random."""
    return np.argsort(rng.random((r, n)), axis=1) < n // 2


def selection_corrected(
    candidates: Sequence[Sequence[Label | None]],
    human: Sequence[Label],
    *,
    settings: Bootstrap | None = None,
    n_splits: int = N_SPLITS,
) -> dict[str, Any]:
    """The best candidate's kappa on all items (``optimistic``) and the selection-corrected kappa
    with its interval (module doc). ``candidates[c][i]``: candidate c's label for item i."""
    settings = settings or Bootstrap()
    codes = np.stack([label_codes(c) for c in candidates])
    h = label_codes(human)
    n_cand, n = codes.shape
    if n_cand < 1 or n < 4:
        raise ValueError(f"a corrected best-of needs >= 1 candidate and >= 4 items (got {n_cand}, {n})")
    feats = _features(codes, h)
    full_k = _kappa_accuracy((np.ones((1, n)) @ feats).reshape(1, 8, n_cand))[0][0]
    best = int(np.argmax(np.where(np.isfinite(full_k), full_k, -np.inf)))
    rng = np.random.default_rng(int(settings.seed))
    held: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    for start in range(0, n_splits, 250):
        r = min(250, n_splits - start)
        hk, ch = _held_out(feats, np.ones((r, n)), _halves(rng, r, n), n_cand)
        held.append(hk.ravel())
        picks.append(ch.ravel())
    values = np.concatenate(held)
    chosen = np.concatenate(picks)
    b_total = min(int(settings.n_resamples), MAX_RESAMPLES)
    dist: list[np.ndarray] = []
    for start in range(0, b_total, 250):
        b = min(250, b_total - start)
        draws = rng.integers(0, n, size=(b, n))
        w = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(float)
        hk, _ = _held_out(feats, w, _halves(rng, b, n), n_cand)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample whose both halves are undefined: NaN
            dist.append(np.nanmean(hk, axis=1))
    boot = np.concatenate(dist)
    alpha = (1 - float(settings.confidence)) / 2
    finite = boot[np.isfinite(boot)]
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)]) if len(finite) else (np.nan, np.nan)
    counts = Counter(int(c) for c in chosen)
    return {
        "optimistic": _num(full_k[best]),
        "best": best,
        "n_candidates": n_cand,
        "corrected": _num(float(np.mean(values[np.isfinite(values)]))) if np.isfinite(values).any() else None,
        "corrected_ci": [_num(lo), _num(hi)],
        "chosen_share": counts.get(best, 0) / len(chosen),
        "most_chosen": [(c, k / len(chosen)) for c, k in counts.most_common(5)],
        "n_splits": n_splits,
        "n_resamples": b_total,
        "seed": int(settings.seed),
        "method": METHOD,
    }


def _num(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None
