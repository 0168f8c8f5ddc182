"""How sure are the numbers: seeded bootstrap intervals over items, and paired comparisons.

Every kappa, accuracy and win rate mapo reports is a statistic of a few dozen to a few
hundred items (FairEval has 80), so it comes with a **bootstrap 95% interval**: the items are
resampled with replacement (``scipy.stats.bootstrap``, percentile method, ``n_resamples``
resamples from ``numpy.random.default_rng(seed)``), the statistic is recomputed on each
resample and the interval is the central ``confidence`` share of those values.

* Items are the unit: a judge's failed items are resampled with the others and left out of
  each resample's kappa, as they are left out of the point estimate.
* All statistics of one table are computed from the **same resamples** (one vectorised
  statistic of the items' resample counts), so a difference between two evaluators on the
  same items is a **paired** bootstrap: its interval accounts for their correlation.
* Speed: a resample is a vector of item multiplicities ``w`` (how often each item was drawn);
  every statistic here is a function of weighted counts (``w @ onehot``), so 57 jury subsets
  x 80 items x 50,000 resamples take about a second.

**Verdicts** (:func:`verdict`) say everything the interval of ``d = stat(X) - stat(reference)``
says, against a non-inferiority ``margin`` (default 0.05 kappa) and against zero:

* ``better``: the interval's lower end is above 0 (X is significantly better);
* ``not_worse``: the lower end is above ``-margin`` and the interval contains 0 (not worse by
  more than the margin, and no difference either way);
* ``lower_within_margin``: the whole interval lies in (``-margin``, 0): significantly lower,
  but by less than the margin (non-inferior, and still lower);
* ``lower``: the upper end is below 0 but the interval contains ``-margin``: significantly
  lower, and whether by more than the margin cannot be told (``n_needed`` would tell);
* ``worse``: the upper end is below ``-margin`` (worse by more than the margin);
* ``cannot_tell``: the interval contains both 0 and ``-margin``. ``n_needed`` is the number of
  items at which the interval, shrinking like ``1/sqrt(n)`` around the same point estimate,
  would leave ``-margin`` out (``None`` when the estimate sits exactly on ``-margin``).

A verdict never says "can replace": ``not_worse`` / ``better`` / ``lower_within_margin`` are
non-inferior on these labels; whether X may stand in for the reference is the reader's call
(and a jury that contains the reference does not replace it: it still calls the reference).

Defaults (:data:`N_RESAMPLES`, :data:`SEED`, :data:`CONFIDENCE`, :data:`MARGIN`) are read from
``cfg.stats`` when a config carries one (:func:`stats_options`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats

from mapo.core.types import LABELS, Label

__all__ = [
    "CONFIDENCE",
    "MARGIN",
    "N_RESAMPLES",
    "SEED",
    "Bootstrap",
    "PairedComparison",
    "bootstrap",
    "compare_kappas",
    "compare_winrates",
    "kappa_intervals",
    "label_codes",
    "needed_text",
    "VERDICTS",
    "VERDICT_WORDS",
    "verdict_words",
    "ratio_intervals",
    "stats_options",
    "verdict",
    "winrate_comparisons",
    "winrate_intervals",
]

N_RESAMPLES = 100_000
"""Default resamples: the Monte Carlo error of a 95% bound is ~0.0004 kappa on 80 items (a stable third decimal)."""
SEED = 0
CONFIDENCE = 0.95
MARGIN = 0.05
"""Default non-inferiority margin, in the statistic's units (kappa, or win rate as a fraction)."""

_GROUP = 32  # evaluators per bootstrap call

Verdict = Literal["better", "not_worse", "lower_within_margin", "lower", "worse", "cannot_tell", "reference"]
VERDICTS: tuple[str, ...] = ("better", "not_worse", "lower_within_margin", "lower", "worse", "cannot_tell", "reference")
"""Every verdict, best first (module doc)."""


@dataclass(frozen=True)
class Bootstrap:
    """Bootstrap settings: resamples, seed, confidence level, interval method (scipy's names)."""

    n_resamples: int = N_RESAMPLES
    seed: int = SEED
    confidence: float = CONFIDENCE
    method: Literal["percentile", "basic"] = "percentile"
    batch: int = 5_000  # resamples per vectorised call (bounds memory: batch x items x outputs)

    def __post_init__(self) -> None:
        if int(self.n_resamples) < 1:
            raise ValueError(f"n_resamples must be >= 1, got {self.n_resamples}")
        if not 0.0 < float(self.confidence) < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.method not in ("percentile", "basic"):
            raise ValueError(f"bootstrap method {self.method!r}; known: percentile, basic")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch")
        d["unit"] = "items"
        return d


def stats_options(cfg: Any) -> dict[str, Any]:
    """``agreement_tables`` keyword arguments from ``cfg.stats`` (missing keys: module defaults).

    Keys read: ``stats.n_resamples``, ``stats.seed``, ``stats.confidence``, ``stats.margin``,
    ``stats.reference`` (an evaluator name, or null for the best in the table).
    """
    s = getattr(cfg, "stats", None)
    return {
        "n_resamples": int(getattr(s, "n_resamples", N_RESAMPLES)),
        "seed": int(getattr(s, "seed", SEED)),
        "confidence": float(getattr(s, "confidence", CONFIDENCE)),
        "margin": float(getattr(s, "margin", MARGIN)),
        "reference": getattr(s, "reference", None),
    }


# --------------------------------------------------------------------------- the engine


def bootstrap(
    n_items: int, statistic: Callable[[np.ndarray], np.ndarray], settings: Bootstrap | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) of every output of ``statistic`` under an item bootstrap.

    ``statistic(w)`` gets item multiplicities ``w`` of shape (B, n_items) (all ones for the
    point estimate) and returns shape (K, B): K statistics per resample, NaN where one is
    undefined. Undefined resamples are left out of that output's interval (``nanpercentile``);
    an output undefined in every resample gets NaN bounds, as does every output over a single item.
    """
    settings = settings or Bootstrap()
    if n_items < 1:
        raise ValueError("bootstrap over no items")
    point = np.asarray(statistic(np.ones((1, n_items))))[:, 0]
    if n_items < 2:  # one item resamples to itself: no spread, so no interval (NaN bounds, as an undefined output)
        return point, np.full(point.shape, np.nan), np.full(point.shape, np.nan)

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.intp)
        one = idx.ndim == 1
        rows = idx.reshape(-1, idx.shape[-1])
        b = rows.shape[0]
        w = np.bincount((rows + n_items * np.arange(b)[:, None]).ravel(), minlength=b * n_items)
        out = np.asarray(statistic(w.reshape(b, n_items).astype(float)))
        return out[:, 0] if one else out

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # degenerate resamples: handled below
        res = scipy.stats.bootstrap(
            (np.arange(n_items),),
            stat,
            vectorized=True,
            n_resamples=int(settings.n_resamples),
            batch=int(settings.batch),
            confidence_level=float(settings.confidence),
            method=settings.method,
            rng=np.random.default_rng(int(settings.seed)),
        )
        low = np.atleast_1d(np.asarray(res.confidence_interval.low, dtype=float)).copy()
        high = np.atleast_1d(np.asarray(res.confidence_interval.high, dtype=float)).copy()
        bad = ~(np.isfinite(low) & np.isfinite(high))
        if bad.any():
            dist = np.asarray(res.bootstrap_distribution).reshape(len(point), -1)[bad]
            alpha = (1 - float(settings.confidence)) / 2
            lo, hi = np.nanpercentile(dist, [100 * alpha, 100 * (1 - alpha)], axis=-1)
            if settings.method == "basic":
                lo, hi = 2 * point[bad] - hi, 2 * point[bad] - lo
            low[bad], high[bad] = lo, hi
    return point, low, high


def _num(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _pair(lo: Any, hi: Any) -> list[float | None]:
    return [_num(lo), _num(hi)]


# --------------------------------------------------------------------------- kappa


def label_codes(labels: Sequence[Label | None]) -> np.ndarray:
    """model_a / model_b / tie -> 0 / 1 / 2; None (a failure, or no judgement) -> -1."""
    index = {label: i for i, label in enumerate(LABELS)}
    try:
        return np.array([-1 if x is None else index[x] for x in labels], dtype=np.intp)
    except KeyError as e:
        raise ValueError(f"{e.args[0]!r} is not a label; expected one of {', '.join(LABELS)} or None") from None


def _features(judges: np.ndarray, human: np.ndarray) -> np.ndarray:
    """(n, 8 * E) per-item indicators whose weighted sums give each evaluator's kappa:
    compared, agreed, human class 0..2, judge class 0..2 (failed items: zeros).
    Everything kappa needs is linear in the resample counts, so one matrix product does it."""
    ok = (judges >= 0) & (human >= 0)[None]
    feats = [ok, ok & (judges == human[None])]
    feats += [ok & (human[None] == c) for c in range(3)]
    feats += [ok & (judges == c) for c in range(3)]
    return np.concatenate(feats).T.astype(float)  # (n, 8E), blocks of E columns


def _kappa_accuracy(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kappa and accuracy (B, E) from the weighted feature sums (B, 8, E); NaN where undefined."""
    total, agree = sums[:, 0], sums[:, 1]
    chance = sums[:, 2] * sums[:, 5] + sums[:, 3] * sums[:, 6] + sums[:, 4] * sums[:, 7]  # total^2 * p_e
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = total * total - chance  # total^2 * (1 - p_e): 0 when both sides use one class
        kappa = np.where(denom > 1e-9 * total * total, (total * agree - chance) / denom, np.nan)
        return kappa, agree / total


def kappa_intervals(
    judges: Sequence[Sequence[Label | None]],
    human: Sequence[Label],
    *,
    reference: int | None = None,
    settings: Bootstrap | None = None,
) -> dict[str, np.ndarray]:
    """Bootstrap intervals of the kappa and accuracy of E evaluators on the same n items.

    ``judges[e][i]`` is evaluator e's label for item i (None: failed or not judged). With
    ``reference`` (an index into ``judges``), also the paired difference
    ``kappa[e] - kappa[reference]``. Returns arrays: ``kappa``, ``kappa_low``, ``kappa_high``,
    ``accuracy``, ``accuracy_low``, ``accuracy_high`` and (with a reference) ``diff``,
    ``diff_low``, ``diff_high``, each of length E.
    """
    codes = np.stack([label_codes(j) for j in judges]) if judges else np.zeros((0, len(human)), dtype=np.intp)
    h = label_codes(human)
    if codes.shape[1] != len(h):
        raise ValueError(f"judge labels ({codes.shape[1]}) and human labels ({len(h)}) differ in length")
    names = ["kappa", "accuracy"] + (["diff"] if reference is not None else [])
    parts: dict[str, list[np.ndarray]] = {f"{k}{x}": [] for k in names for x in ("", "_low", "_high")}
    # evaluators in groups, each a separate bootstrap call: the stored resample values stay small,
    # and the same seed draws the same resamples, so every group (and the reference) is paired
    for start in range(0, max(codes.shape[0], 1), _GROUP):
        group = codes[start : start + _GROUP]
        e = group.shape[0]
        if reference is not None:
            group = np.concatenate([group, codes[reference : reference + 1]])
        feats = _features(group, h)

        def statistic(w: np.ndarray, feats: np.ndarray = feats, e: int = e) -> np.ndarray:
            kappa, acc = _kappa_accuracy((w @ feats).reshape(len(w), 8, -1))
            out = [kappa.T[:e], acc.T[:e]]
            if reference is not None:
                out.append(kappa.T[:e] - kappa.T[e])
            return np.concatenate(out)

        if e == 0:
            continue
        point, low, high = bootstrap(len(h), statistic, settings)
        for i, name in enumerate(names):
            sl = slice(i * e, (i + 1) * e)
            parts[name].append(point[sl])
            parts[f"{name}_low"].append(low[sl])
            parts[f"{name}_high"].append(high[sl])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class PairedComparison:
    """``statistic(evaluator) - statistic(reference)`` on the same items, with its paired interval."""

    evaluator: str
    reference: str
    statistic: str
    diff: float | None
    low: float | None
    high: float | None
    n: int
    margin: float
    verdict: Verdict
    n_needed: int | None = None

    @property
    def significant(self) -> bool:
        """The interval leaves 0 out (a difference at the chosen confidence, either way)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def text(self) -> str:
        return verdict_text(self.verdict, self.reference, self.margin, self.n, self.n_needed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "statistic": self.statistic,
            "diff": self.diff,
            "diff_ci": [self.low, self.high],
            "n": self.n,
            "margin": self.margin,
            "verdict": self.verdict,
            "n_needed": self.n_needed,
            "significant": self.significant,
            "text": self.text,
        }


def verdict(
    diff: float | None, low: float | None, high: float | None, n: int, margin: float = MARGIN
) -> tuple[Verdict, int | None]:
    """The verdict for ``d = X - reference`` and its interval (module doc), and the items needed
    to decide against the margin where the interval contains ``-margin``.

    >>> verdict(-0.02, -0.04, 0.01, 80)
    ('not_worse', None)
    >>> verdict(0.10, 0.02, 0.18, 80)
    ('better', None)
    >>> verdict(-0.02, -0.04, -0.01, 80)
    ('lower_within_margin', None)
    >>> verdict(-0.074, -0.111, -0.038, 999)   # resolved below 0, the margin not excluded: ~ 999 * (0.036/0.024)^2
    ('lower', 2248)
    >>> verdict(-0.20, -0.30, -0.10, 80)
    ('worse', None)
    >>> verdict(0.06, -0.09, 0.21, 80)   # lower end must rise above -0.05: ~ 80 * (0.15/0.11)^2
    ('cannot_tell', 149)
    """
    if diff is None or low is None or high is None:
        return "cannot_tell", None
    if low > 0:
        return "better", None
    if low > -margin:
        return ("lower_within_margin" if high < 0 else "not_worse"), None
    if high < -margin:
        return "worse", None
    gap = diff + margin  # distance of the estimate from the decision boundary
    undecided: Verdict = "lower" if high < 0 else "cannot_tell"
    if gap == 0:
        return undecided, None
    half = (diff - low) if gap > 0 else (high - diff)  # the side that must clear -margin
    return undecided, math.ceil(n * (half / abs(gap)) ** 2)


def verdict_text(v: str, reference: str, margin: float, n: int, n_needed: int | None) -> str:
    """The verdict in words, e.g. "cannot tell with 80 items (~149 needed)"."""
    if v == "reference":
        return "reference"
    if v == "better":
        return f"better than {reference}"
    if v == "not_worse":
        return f"not worse than {reference} by more than {margin:g}"
    if v == "lower_within_margin":
        return f"significantly lower than {reference}, but by less than {margin:g}"
    if v == "lower":
        return (
            f"significantly lower than {reference}; whether by more than {margin:g} cannot be told "
            f"with {n} items{needed_text(n_needed)}"
        )
    if v == "worse":
        return f"worse than {reference} by more than {margin:g}"
    return f"cannot tell with {n} items{needed_text(n_needed)}"


VERDICT_WORDS: dict[str, str] = {
    "better": "better",
    "not_worse": "not worse",
    "lower_within_margin": "significantly lower, within the margin",
    "lower": "significantly lower (margin not excluded)",
    "worse": "worse",
    "cannot_tell": "cannot tell",
    "reference": "reference",
}
"""Short words for a table cell; :func:`verdict_words` adds the items needed."""


def verdict_words(v: str, n_needed: int | None = None) -> str:
    """A table cell: "not worse", "significantly lower (margin not excluded; ~2,248 items needed)"."""
    words = VERDICT_WORDS.get(v, v)
    if v in ("cannot_tell", "lower") and n_needed:
        need = needed_text(n_needed).strip()[1:-1].replace(" needed", " items needed")
        words = f"{words[:-1]}; {need})" if words.endswith(")") else f"{words} ({need})"
    return words


def needed_text(n_needed: int | None, cap: int = 100_000) -> str:
    """`` (~149 needed)``; beyond ``cap`` (an estimate sitting on the margin) `` (> 100,000 needed)``."""
    if not n_needed:
        return ""
    return f" (> {cap:,} needed)" if n_needed > cap else f" (~{n_needed:,} needed)"


def compare_kappas(
    judge: Sequence[Label | None],
    reference: Sequence[Label | None],
    human: Sequence[Label],
    *,
    names: tuple[str, str] = ("judge", "reference"),
    margin: float = MARGIN,
    settings: Bootstrap | None = None,
) -> PairedComparison:
    """Paired bootstrap of ``kappa(judge) - kappa(reference)`` on the same items, with a verdict."""
    r = kappa_intervals([judge, reference], human, reference=1, settings=settings)
    n = sum(a is not None and b is not None for a, b in zip(judge, reference, strict=True))
    d, lo, hi = _num(r["diff"][0]), _num(r["diff_low"][0]), _num(r["diff_high"][0])
    v, need = verdict(d, lo, hi, n, margin)
    return PairedComparison(names[0], names[1], "kappa", d, lo, hi, n, margin, v, need)


# --------------------------------------------------------------------------- rates (win rate, bias rates)


def ratio_intervals(
    numerators: np.ndarray,
    denominators: np.ndarray,
    *,
    diffs: Sequence[tuple[int, int]] = (),
    settings: Bootstrap | None = None,
) -> dict[str, np.ndarray]:
    """Intervals of K rates ``sum(num[k]) / sum(den[k])`` over n items, and of paired differences.

    ``numerators`` / ``denominators``: arrays (K, n) of per-item contributions (e.g. a win = 1
    over a judged prompt = 1; a failed prompt has denominator 0). ``diffs``: pairs (i, j) whose
    ``rate[i] - rate[j]`` is also bootstrapped on the same resamples. Returns ``rate``,
    ``rate_low``, ``rate_high`` (K) and ``diff``, ``diff_low``, ``diff_high`` (len(diffs)).
    """
    num = np.atleast_2d(np.asarray(numerators, dtype=float))
    den = np.atleast_2d(np.asarray(denominators, dtype=float))
    if num.shape != den.shape:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} differ in shape")
    k = num.shape[0]
    pairs = [(int(i), int(j)) for i, j in diffs]

    def statistic(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = ((w @ num.T) / (w @ den.T)).T  # (K, B)
        parts = [rate] + ([np.stack([rate[i] - rate[j] for i, j in pairs])] if pairs else [])
        return np.concatenate(parts)

    point, low, high = bootstrap(num.shape[1], statistic, settings)
    out = {"rate": point[:k], "rate_low": low[:k], "rate_high": high[:k]}
    out.update(diff=point[k:], diff_low=low[k:], diff_high=high[k:])
    return out


# --------------------------------------------------------------------------- win rates

_RATES = {
    "win_rate": (1.0, 0.0),  # (weight of a win, weight of a tie) in the numerator
    "tie_rate": (0.0, 1.0),
    "win_rate_ties_half": (1.0, 0.5),
}


def _outcomes(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    """Prompt ids in first-seen order, and (configuration, baseline) -> prompt id -> outcome."""
    prompts: dict[str, None] = {}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in records:
        pid = str(r["prompt_id"])
        prompts.setdefault(pid)
        cells.setdefault((r["configuration"], r["baseline"]), {})[pid] = r["outcome"]
    return list(prompts), cells


def _vectors(by_prompt: Mapping[str, str], prompts: Sequence[str], rate: str) -> tuple[np.ndarray, np.ndarray]:
    w_win, w_tie = _RATES[rate]
    out = [by_prompt.get(p) for p in prompts]
    num = np.array([w_win * (o == "win") + w_tie * (o == "tie") for o in out])
    den = np.array([float(o in ("win", "loss", "tie")) for o in out])
    return num, den


def winrate_intervals(
    records: Sequence[Mapping[str, Any]], *, settings: Bootstrap | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """configuration -> baseline -> {win_rate_ci, tie_rate_ci, win_rate_ties_half_ci}: bootstrap
    intervals over prompts for the cells of ``mapo.runs.winrate.tally`` (records: winrate
    judgements with ``configuration``, ``baseline``, ``prompt_id``, ``outcome``)."""
    prompts, cells = _outcomes(records)
    keys = sorted(cells)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not keys:
        return out
    nums, dens = [], []
    for key in keys:
        for rate in _RATES:
            num, den = _vectors(cells[key], prompts, rate)
            nums.append(num)
            dens.append(den)
    r = ratio_intervals(np.stack(nums), np.stack(dens), settings=settings)
    for i, (c, b) in enumerate(keys):
        cell = out.setdefault(c, {}).setdefault(b, {})
        for j, rate in enumerate(_RATES):
            k = i * len(_RATES) + j
            cell[f"{rate}_ci"] = _pair(r["rate_low"][k], r["rate_high"][k])
    return out


def compare_winrates(
    records: Sequence[Mapping[str, Any]],
    configuration: str,
    reference: str,
    *,
    rate: str = "win_rate",
    margin: float = MARGIN,
    settings: Bootstrap | None = None,
) -> dict[str, PairedComparison]:
    """baseline -> paired comparison of two configurations' win rates against that baseline,
    paired by prompt (the prompts both were judged on): ``rate(configuration) - rate(reference)``."""
    if rate not in _RATES:
        raise ValueError(f"rate {rate!r}; known: {', '.join(_RATES)}")
    prompts, cells = _outcomes(records)
    names = {c for c, _ in cells}
    for name in (configuration, reference):
        if name not in names:
            raise ValueError(f"no win-rate records for configuration {name!r}; known: {', '.join(sorted(names))}")
    out: dict[str, PairedComparison] = {}
    for b in sorted({b for _, b in cells}):
        x, ref = cells.get((configuration, b)), cells.get((reference, b))
        if x is None or ref is None:
            continue
        shared = [p for p in prompts if p in x and p in ref]
        if not shared:
            continue
        (nx, dx), (nr, dr) = _vectors(x, shared, rate), _vectors(ref, shared, rate)
        r = ratio_intervals(np.stack([nx, nr]), np.stack([dx, dr]), diffs=[(0, 1)], settings=settings)
        d, lo, hi = _num(r["diff"][0]), _num(r["diff_low"][0]), _num(r["diff_high"][0])
        n = int(np.sum((dx > 0) & (dr > 0)))
        v, need = verdict(d, lo, hi, n, margin)
        out[b] = PairedComparison(configuration, reference, rate, d, lo, hi, n, margin, v, need)
    return out


def winrate_comparisons(
    records: Sequence[Mapping[str, Any]],
    reference: str | None = None,
    *,
    rate: str = "win_rate",
    margin: float = MARGIN,
    settings: Bootstrap | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """configuration -> baseline -> comparison dict against ``reference`` (default: the
    configuration with the highest mean ``rate`` over the baselines), for winrate.json."""
    prompts, cells = _outcomes(records)
    configs = sorted({c for c, _ in cells})
    if not configs:
        return {}
    if reference is None:

        def mean_rate(c: str) -> float:
            vals = []
            for (cc, _), by in cells.items():
                if cc == c:
                    num, den = _vectors(by, prompts, rate)
                    if den.sum():
                        vals.append(num.sum() / den.sum())
            return float(np.mean(vals)) if vals else -math.inf

        reference = max(configs, key=mean_rate)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in configs:
        if c == reference:
            out[c] = {b: {"reference": reference, "verdict": "reference"} for (cc, b) in cells if cc == c}
            continue
        comps = compare_winrates(records, c, reference, rate=rate, margin=margin, settings=settings)
        out[c] = {b: comp.to_dict() for b, comp in comps.items()}
    return out
