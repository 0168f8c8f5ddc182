"""A judge cascade: a cheap judge first, the items it is unsure of escalated to a strong judge.

The **rule** (:class:`CascadeRule`) says when the cheap judge is unsure of an item:

* ``on_failure`` — its answer did not parse (always escalated: a failure is never a verdict);
* ``max_margin`` — its two scores are at most this far apart (``|score_a - score_b| <=
  max_margin``; a tie has margin 0). Picks without scores (direct comparison, the pick packs)
  have no margin: only the other signals apply to them;
* ``orders_disagree`` — it was asked in both orders and the two disagree;
* ``min_confidence`` — the probability it gave its own pick is below this (from the logprobs
  that ``judge.scoring=expected`` keeps; items without one are not escalated by it).

The cascade's label is the strong judge's on escalated items, the cheap judge's elsewhere.
:func:`cascade_curve` measures it on stored verdicts — kappa (with its bootstrap interval) and
the paired difference against the strong judge alone, in **one** paired bootstrap
(:func:`mapo.metrics.uncertainty.kappa_intervals`), for each operating point — so the cost of
the cascade (strong-judge calls) is reported beside each judge alone, with intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mapo.core.types import Label
from mapo.metrics.uncertainty import MARGIN, Bootstrap, kappa_intervals, verdict

__all__ = [
    "CascadeRule",
    "CheapVerdict",
    "cascade_curve",
    "cascade_labels",
    "escalation_order",
    "random_baseline",
    "replay_authors",
]


@dataclass(frozen=True)
class CheapVerdict:
    """What the cheap judge said about one item (dataset terms)."""

    label: Label | None
    """None: a failure (no verdict)."""
    score_a: float | None = None
    score_b: float | None = None
    orders_agree: bool | None = None
    """Both orders judged: did they agree (None: one order)."""
    confidence: float | None = None
    """P(its own pick), where logprobs were kept."""

    @property
    def margin(self) -> float | None:
        if self.score_a is None or self.score_b is None:
            return None
        return abs(self.score_a - self.score_b)


@dataclass(frozen=True)
class CascadeRule:
    """When to escalate (module doc). The default escalates failures only."""

    max_margin: float | None = None
    orders_disagree: bool = False
    min_confidence: float | None = None
    on_failure: bool = True

    def escalate(self, v: CheapVerdict) -> bool:
        if v.label is None:
            return self.on_failure
        if self.max_margin is not None and v.margin is not None and v.margin <= self.max_margin:
            return True
        if self.orders_disagree and v.orders_agree is False:
            return True
        return self.min_confidence is not None and v.confidence is not None and v.confidence < self.min_confidence

    def describe(self) -> str:
        parts = ["failure" if self.on_failure else None]
        if self.max_margin is not None:
            parts.append(f"margin <= {self.max_margin:g}")
        if self.orders_disagree:
            parts.append("orders disagree")
        if self.min_confidence is not None:
            parts.append(f"confidence < {self.min_confidence:g}")
        return " or ".join(p for p in parts if p) or "never"


def cascade_labels(
    cheap: Sequence[CheapVerdict], strong: Sequence[Label | None], escalated: Sequence[bool]
) -> list[Label | None]:
    """The strong judge's label where escalated, the cheap judge's elsewhere."""
    return [s if e else c.label for c, s, e in zip(cheap, strong, escalated, strict=True)]


def escalation_order(cheap: Sequence[CheapVerdict]) -> list[int]:
    """Items from least to most sure: failures first, then by margin (smallest first; items without
    a margin after those with one), then by lower confidence; equal items keep their input order."""

    def key(i: int) -> tuple[int, float, float]:
        v = cheap[i]
        if v.label is None:
            return (0, 0.0, 0.0)
        m = v.margin
        return (1, math.inf if m is None else m, 1.0 if v.confidence is None else v.confidence)

    return sorted(range(len(cheap)), key=key)


def _point(
    name: str, escalated: Sequence[bool], kappa: Mapping[str, Any], i: int, n: int, margin: float
) -> dict[str, Any]:
    k = int(sum(escalated))
    v, n_needed = verdict(_f(kappa["diff"][i]), _f(kappa["diff_low"][i]), _f(kappa["diff_high"][i]), n, margin=margin)
    return {
        "name": name,
        "escalated": k,
        "share_escalated": k / n if n else 0.0,
        "strong_calls": k,
        "relative_cost": k / n if n else 0.0,
        "kappa": _f(kappa["kappa"][i]),
        "kappa_ci": [_f(kappa["kappa_low"][i]), _f(kappa["kappa_high"][i])],
        "accuracy": _f(kappa["accuracy"][i]),
        "diff_vs_strong": _f(kappa["diff"][i]),
        "diff_ci": [_f(kappa["diff_low"][i]), _f(kappa["diff_high"][i])],
        "verdict_vs_strong": v,
        "n_needed": n_needed,
    }


def _f(x: Any) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else round(x, 6)


def cascade_curve(
    cheap: Sequence[CheapVerdict],
    strong: Sequence[Label | None],
    human: Sequence[Label],
    *,
    thresholds: Sequence[float] = (),
    shares: Sequence[float] = (),
    rules: Mapping[str, CascadeRule] | None = None,
    settings: Bootstrap | None = None,
    margin: float = MARGIN,
) -> dict[str, Any]:
    """Kappa of the cheap judge alone, the strong judge alone and the cascade at each operating
    point, all in one paired bootstrap with the strong judge as the reference.

    Operating points: ``thresholds`` (rule: failure or margin <= t), ``shares`` (the given share of
    items escalated in :func:`escalation_order`; equal items escalate in input order) and named
    ``rules``. ``relative_cost`` is the strong judge's calls as a share of judging every item with
    it (the cheap judge's own calls are counted apart, ``cheap_calls``).
    """
    n = len(human)
    if not (len(cheap) == len(strong) == n):
        raise ValueError(f"cheap ({len(cheap)}), strong ({len(strong)}) and human ({n}) labels differ in length")
    columns: list[tuple[str, str, Any, list[bool]]] = [
        ("cheap alone", "cheap", None, [False] * n),
        ("strong alone", "strong", None, [True] * n),
    ]
    for t in thresholds:
        rule = CascadeRule(max_margin=float(t))
        columns.append((f"margin <= {float(t):g}", "threshold", float(t), [rule.escalate(v) for v in cheap]))
    order = escalation_order(cheap)
    for s in shares:
        k = round(float(s) * n)
        chosen = set(order[:k])
        columns.append((f"{100 * float(s):.0f}% least sure", "share", float(s), [i in chosen for i in range(n)]))
    for name, rule in (rules or {}).items():
        columns.append((f"{name}: {rule.describe()}", "rule", asdict(rule), [rule.escalate(v) for v in cheap]))
    labels = [cascade_labels(cheap, strong, esc) for _, _, _, esc in columns]
    kappa = kappa_intervals(labels, human, reference=1, settings=settings)
    points = []
    for i, (name, kind, param, esc) in enumerate(columns):
        p = _point(name, esc, kappa, i, n, margin)
        p.update(kind=kind, param=param)
        points.append(p)
    return {
        "n": n,
        "cheap_calls": n,
        "cheap_failures": sum(v.label is None for v in cheap),
        "reference": "strong alone",
        "margin": margin,
        "bootstrap": (settings or Bootstrap()).to_dict(),
        "points": points,
    }


# --------------------------------------------------------------------------- replay of recorded outputs

DEFAULT_THRESHOLDS = (0, 1, 2, 3, 4)
DEFAULT_SHARES = tuple(i / 20 for i in range(21))


def replay_authors(
    root: str | Any,
    humans_path: str | Any | None,
    cheap: str,
    strong: str,
    *,
    strategy: str = "multi-rater10",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    shares: Sequence[float] = DEFAULT_SHARES,
    settings: Bootstrap | None = None,
    margin: float = MARGIN,
    random_draws: int = 200,
) -> dict[str, Any]:
    """The cascade ``cheap`` -> ``strong`` replayed on the authors' recorded judge outputs
    (:mod:`mapo.data.importers`, mapo's re-parse of their raw texts) against the human labels.

    The uncertainty signal is the cheap judge's recorded **score margin** (combined scoring /10,
    one presentation order: the authors judged one order, so ``orders_disagree`` cannot be
    replayed, and they kept no logprobs). Its failures (unparseable answers) are always escalated.
    """
    from pathlib import Path

    from mapo.data.humans import default_faireval_path, human_labels_spec, read_human_labels
    from mapo.data.importers import load_author_judgments

    judges = load_author_judgments(Path(root), strategy)
    for name in (cheap, strong):
        if name not in judges:
            raise ValueError(f"{root}/{strategy}: no judge {name!r}; present: {', '.join(sorted(judges))}")
    humans_file = Path(humans_path) if humans_path else default_faireval_path()
    human_by_id = {r["id"]: r["human"] for r in read_human_labels(human_labels_spec(humans_file, None, None))}
    by_cheap = {str(r.index): r for r in judges[cheap]}
    by_strong = {str(r.index): r for r in judges[strong]}
    ids = [i for i in by_cheap if i in by_strong and i in human_by_id]
    cheap_v = []
    for i in ids:
        scores = by_cheap[i].parsed
        cheap_v.append(
            CheapVerdict(
                label=by_cheap[i].parsed_label,
                score_a=scores[0] if scores else None,
                score_b=scores[1] if scores else None,
            )
        )
    strong_labels = [by_strong[i].parsed_label for i in ids]
    human = [human_by_id[i] for i in ids]
    out = cascade_curve(
        cheap_v, strong_labels, human, thresholds=thresholds, shares=shares, settings=settings, margin=margin
    )
    at_random = random_baseline([v.label for v in cheap_v], strong_labels, human, shares, draws=random_draws)
    for p, r in zip((p for p in out["points"] if p["kind"] == "share"), at_random, strict=True):
        p["random_kappa"] = r
    out.update(
        cheap=cheap,
        strong=strong,
        source=f"{root}/{strategy}",
        humans=str(humans_file),
        signal="the cheap judge's score margin |score_a - score_b| (combined scoring /10, one order, re-parsed)",
        strong_failures=sum(by_strong[i].parsed_label is None for i in ids),
    )
    return out


def random_baseline(
    cheap: Sequence[Label | None],
    strong: Sequence[Label | None],
    human: Sequence[Label],
    shares: Sequence[float],
    *,
    draws: int = 500,
    seed: int = 0,
) -> list[float | None]:
    """Mean kappa when the same share of items is escalated at random (``draws`` seeded draws):
    what the uncertainty signal must beat to be worth anything."""
    import numpy as np

    from mapo.metrics.agreement import cohen_kappa

    rng = np.random.default_rng(seed)
    n = len(human)
    out: list[float | None] = []
    for s in shares:
        k = round(float(s) * n)
        values = []
        for _ in range(draws):
            chosen = set(rng.choice(n, size=k, replace=False).tolist()) if k else set()
            labels = [strong[i] if i in chosen else cheap[i] for i in range(n)]
            kappa = cohen_kappa(labels, list(human)).kappa
            if kappa is not None:
                values.append(kappa)
        out.append(round(sum(values) / len(values), 6) if values else None)
    return out
