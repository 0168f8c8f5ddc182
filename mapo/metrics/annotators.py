"""How well humans agree with each other: the ceiling any judge's kappa should be read against.

With several annotators per item (PandaLM's annotator1..3, or ``--humans-columns
human=a1,human=a2,human=a3``) the human label a judge is scored against is their majority
(:data:`mapo.data.humans.MAJORITY_RULE`: a split is a tie). Beside it:

* **pairwise Cohen's kappa** of every two annotators (3 classes, ties a class);
* **Fleiss' kappa** of all of them (every item needs the same number of annotators);
* **the human ceiling** (leave-one-out, as alpaca_eval reports human agreement): each annotator
  against the majority of the *others*, averaged over the annotators; and, for every judge,
  the same leave-one-out figure: the judge against the majority of the others, averaged over
  the same splits. The two are comparable (both are scored against m-1 annotators); a judge's
  kappa against the majority of all m is not comparable with the ceiling (it is scored against
  a better reference).

**Each annotator as a separate human** (the other reading of several label columns, beside the
majority one): every judge's kappa against each annotator alone, and its mean over the
annotators; the human figure it compares with is the mean pairwise Cohen's kappa of two
annotators (one human against another: both sides are scored against a single annotator).

Every figure has a seeded bootstrap interval over items (:func:`mapo.metrics.uncertainty.bootstrap`),
all from the same resamples. Items whose judgement failed are left out of that judge's kappa.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mapo.core.types import Label
from mapo.data.humans import MAJORITY_RULE, majority_label
from mapo.metrics.uncertainty import Bootstrap, _features, _kappa_accuracy, bootstrap, label_codes

__all__ = ["CEILING_WHAT", "EACH_WHAT", "human_agreement"]

CEILING_WHAT = "each annotator against the majority of the others, mean over the annotators (leave-one-out)"
EACH_WHAT = (
    "each annotator as a separate human: an evaluator's kappa against one annotator, mean over the annotators; "
    "the human figure is the mean pairwise Cohen's kappa of two annotators (one human against another)"
)


def _ci(lo: float, hi: float) -> list[float | None]:
    return [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None]


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def human_agreement(
    annotators: Sequence[Sequence[Label]],
    names: Sequence[str],
    judges: Mapping[str, Sequence[Label | None]] | None = None,
    *,
    settings: Bootstrap | None = None,
) -> dict[str, Any]:
    """Inter-annotator agreement of ``annotators[i][k]`` (item i, annotator ``names[k]``) and each
    judge's leave-one-out kappa (``judges``: name -> label per item, None = failed); module doc."""
    codes = np.array([label_codes(list(row)) for row in annotators], dtype=np.intp)  # (n, m)
    n, m = codes.shape if codes.ndim == 2 else (0, 0)
    if m < 2 or n < 1:
        raise ValueError(f"inter-annotator agreement needs >= 2 annotators on >= 1 item (got {m} on {n})")
    if len(names) != m:
        raise ValueError(f"{len(names)} annotator names for {m} annotator columns")
    judges = dict(judges or {})
    others = [
        label_codes([majority_label([row[j] for j in range(m) if j != k]) for row in annotators]) for k in range(m)
    ]
    pairs = list(itertools.combinations(range(m), 2))
    stats: list[np.ndarray] = [_features(codes[:, a][None], codes[:, b]) for a, b in pairs]  # pairwise Cohen
    stats += [_features(codes[:, k][None], others[k]) for k in range(m)]  # annotator k vs the others
    jcodes = {name: label_codes(list(v)) for name, v in judges.items()}
    for name, jc in jcodes.items():
        if len(jc) != n:
            raise ValueError(f"judge {name!r} has {len(jc)} labels for {n} items")
        stats += [_features(jc[None], others[k]) for k in range(m)]  # leave-one-out
        stats += [_features(jc[None], codes[:, k]) for k in range(m)]  # each annotator alone
    s = len(stats)
    feats = np.stack(stats, axis=2).reshape(n, 8 * s)  # column f * s + j: feature f of statistic j
    counts = np.stack([(codes == c).sum(axis=1) for c in range(3)], axis=1).astype(float)  # (n, 3)
    agree_i = ((counts * counts).sum(axis=1) - m) / (m * (m - 1))
    fleiss_feats = np.column_stack([np.ones(n), agree_i, counts])  # weighted sums give Fleiss' kappa

    def statistic(w: np.ndarray) -> np.ndarray:
        kappa, _ = _kappa_accuracy((w @ feats).reshape(len(w), 8, s))  # (B, s)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_bar = (w @ fleiss_feats[:, 1]) / total
            p_c = (w @ fleiss_feats[:, 2:]) / (m * total[:, None])
            p_e = (p_c * p_c).sum(axis=1)
            fleiss = np.where(1 - p_e > 1e-12, (p_bar - p_e) / (1 - p_e), np.nan)
        n_pairs = len(pairs)
        ceiling = np.nanmean(kappa[:, n_pairs : n_pairs + m], axis=1)
        out = [kappa[:, :n_pairs].T, fleiss[None], ceiling[None], kappa[:, n_pairs : n_pairs + m].T]
        out.append(np.nanmean(kappa[:, :n_pairs], axis=1)[None])  # one human against another, mean
        for j in range(len(jcodes)):
            start = n_pairs + m + 2 * j * m
            out.append(np.nanmean(kappa[:, start : start + m], axis=1)[None])
            out.append(np.nanmean(kappa[:, start + m : start + 2 * m], axis=1)[None])
            out.append(kappa[:, start + m : start + 2 * m].T)
        return np.concatenate(out)

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples: reported as None
        point, low, high = bootstrap(n, statistic, settings)
    k = len(pairs)
    out: dict[str, Any] = {
        "annotators": list(names),
        "n_items": n,
        "majority_rule": MAJORITY_RULE,
        "pairwise": [
            {
                "a": names[a],
                "b": names[b],
                "kappa": _num(point[i]),
                "kappa_ci": _ci(low[i], high[i]),
                "agreement": float(np.mean(codes[:, a] == codes[:, b])),
            }
            for i, (a, b) in enumerate(pairs)
        ],
        "fleiss": {"kappa": _num(point[k]), "kappa_ci": _ci(low[k], high[k])},
        "ceiling": {
            "kappa": _num(point[k + 1]),
            "kappa_ci": _ci(low[k + 1], high[k + 1]),
            "what": CEILING_WHAT,
            "per_annotator": [
                {
                    "annotator": names[j],
                    "kappa": _num(point[k + 2 + j]),
                    "kappa_ci": _ci(low[k + 2 + j], high[k + 2 + j]),
                }
                for j in range(m)
            ],
        },
        "each_annotator": {
            "what": EACH_WHAT,
            "human": {"kappa": _num(point[k + 2 + m]), "kappa_ci": _ci(low[k + 2 + m], high[k + 2 + m])},
        },
        "judges": {},
    }
    base = k + 3 + m
    for j, name in enumerate(jcodes):
        at = base + j * (m + 2)
        out["judges"][name] = {
            "kappa": _num(point[at]),
            "kappa_ci": _ci(low[at], high[at]),
            "what": "the judge against the majority of the others, mean over the same leave-one-out splits",
            "each": {
                "kappa": _num(point[at + 1]),
                "kappa_ci": _ci(low[at + 1], high[at + 1]),
                "per_annotator": {
                    names[x]: {"kappa": _num(point[at + 2 + x]), "kappa_ci": _ci(low[at + 2 + x], high[at + 2 + x])}
                    for x in range(m)
                },
            },
        }
    return out
