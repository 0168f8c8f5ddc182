"""Bias diagnostics of a judge (jury, debate) against humans, over ``judgements.jsonl`` records.

Each diagnostic compares the judge with the human labels **on the same items**, with a
bootstrap interval for each rate and for the paired difference (judge - human), from
:mod:`mapo.metrics.uncertainty`:

* **candidate / family preference** (:func:`candidate_preference`; the paper's Figure 3 and
  its bias score): how often the judge picks each candidate model (or model family) among the
  pairs it appears in, against how often humans do. A pick of the candidate counts 1, a tie
  1/2, a loss 0 (a win rate of the candidate under each labeller); failed judgements are left
  out. ``self`` marks the candidate (or family) of the judge's own model(s): a positive
  difference there is self- (family-) preference.
* **length bias** (:func:`length_bias`, as alpaca_eval reports it): P(prefers the longer
  response) over the pairs whose lengths differ and whose verdict is decisive (ties are left
  out and counted), against the human rate on the same pairs.
* **position bias** (:func:`position_bias_table`): P(the response shown first is picked) and
  the consistency of the two presentation orders (:func:`mapo.metrics.agreement.position_bias`),
  with intervals, for judges run in both orders.

Records need ``item_id``, ``label`` (verdict in dataset terms, null when failed), ``human``,
``judge``, ``setup``, ``kind`` and ``order`` (AB/BA); position bias also reads ``pick``. The
responses are not in the records: pass their lengths (:func:`lengths_from_rows` on the
evaluation rows) and which model wrote each side (``candidates``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mapo.core.types import Label, pick_to_label
from mapo.core.verdicts import combine_orders
from mapo.metrics.agreement import position_bias
from mapo.metrics.uncertainty import Bootstrap, ratio_intervals

__all__ = [
    "FAMILIES",
    "UNKNOWN",
    "bias_report",
    "candidate_preference",
    "family_of",
    "length_bias",
    "lengths_from_rows",
    "position_bias_table",
    "position_intervals",
    "same_family",
]

UNKNOWN = "unknown"
"""The family of a model nobody named one for: never guessed, never the same family as another."""

FAMILIES: dict[str, str] = {}
"""No built-in table: families come from configuration only (``models.<name>.family`` for the
judges, ``eval_data.families`` or ``mapo agreement --families`` for the candidate models of a
data set). A name fragment is not evidence (cerebras-gpt-6.7B and gpt-j-6b are not GPT-4o's)."""

GroupKey = tuple[str, str, str]  # (kind, judge, setup)


def family_of(model: str, families: Mapping[str, str] | None = None) -> str:
    """The family ``families`` names for ``model`` (its exact name, or the part after the last
    ``/``; case is ignored); :data:`UNKNOWN` when none is named.

    >>> family_of("gpt-4o", {"gpt-4o": "openai"}), family_of("cerebras-gpt-6.7B", {"gpt-4o": "openai"})
    ('openai', 'unknown')
    """
    if not families:
        return UNKNOWN
    lower = {str(k).lower(): str(v) for k, v in families.items() if v}
    name = str(model).lower()
    return lower.get(name) or lower.get(name.rsplit("/", 1)[-1]) or UNKNOWN


def same_family(a: str, b: str, families: Mapping[str, str] | None = None) -> bool:
    """Both models have a named family and it is the same one (unknown never matches)."""
    fa, fb = family_of(a, families), family_of(b, families)
    return fa != UNKNOWN and fa == fb


def lengths_from_rows(rows: Iterable[Mapping[str, Any]], unit: str = "chars") -> dict[str, tuple[int, int]]:
    """item id -> (length of response_a, length of response_b) in ``chars`` or ``words``."""
    if unit not in ("chars", "words"):
        raise ValueError(f"length unit {unit!r}; known: chars, words")
    size: Callable[[str], int] = len if unit == "chars" else (lambda t: len(t.split()))
    return {str(r["id"]): (size(r["response_a"]), size(r["response_b"])) for r in rows}


def _groups(records: Iterable[Mapping[str, Any]]) -> dict[GroupKey, dict[str, dict[str, Mapping[str, Any]]]]:
    out: dict[GroupKey, dict[str, dict[str, Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        out[(r.get("kind", "judge"), r["judge"], r.get("setup", ""))][str(r["item_id"])][r.get("order", "AB")] = r
    return out


def _item_verdicts(by_item: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, tuple[Label | None, Label]]:
    """item id -> (judge label with both orders combined as the judge does, human label)."""
    return {i: (combine_orders(o.values())[0], next(iter(o.values()))["human"]) for i, o in by_item.items()}


def _ci(lo: float, hi: float) -> list[float | None]:
    return [None if not np.isfinite(lo) else float(lo), None if not np.isfinite(hi) else float(hi)]


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _paired_rates(
    judge_num: np.ndarray,
    judge_den: np.ndarray,
    human_num: np.ndarray,
    human_den: np.ndarray,
    settings: Bootstrap | None,
) -> dict[str, Any]:
    """judge rate, human rate and their paired difference, with intervals."""
    if not len(judge_num):
        return {"judge_rate": None, "human_rate": None, "diff": None}
    r = ratio_intervals(
        np.stack([judge_num, human_num]), np.stack([judge_den, human_den]), diffs=[(0, 1)], settings=settings
    )
    return {
        "judge_rate": _num(r["rate"][0]),
        "judge_ci": _ci(r["rate_low"][0], r["rate_high"][0]),
        "human_rate": _num(r["rate"][1]),
        "human_ci": _ci(r["rate_low"][1], r["rate_high"][1]),
        "diff": _num(r["diff"][0]),
        "diff_ci": _ci(r["diff_low"][0], r["diff_high"][0]),
    }


# --------------------------------------------------------------------------- candidate / family preference


def _side_score(label: Label | None, side: str) -> tuple[float, float]:
    """(numerator, denominator) for "the labeller picked ``side``": 1 / 0.5 (tie) / 0; failed: (0, 0)."""
    if label is None:
        return 0.0, 0.0
    if label == "tie":
        return 0.5, 1.0
    return float(label == side), 1.0


def candidate_preference(
    records: Iterable[Mapping[str, Any]],
    candidates: Mapping[str, tuple[str, str]] | tuple[str, str],
    *,
    by: str = "model",
    families: Mapping[str, str] | None = None,
    settings: Bootstrap | None = None,
) -> list[dict[str, Any]]:
    """Per evaluator and candidate: how often the judge vs humans pick the candidate (module doc).

    ``candidates``: item id -> (model of response_a, model of response_b), or one pair for
    every item (e.g. FairEval: ``("vicuna-13b", "gpt-3.5-turbo")``). ``families``: model name ->
    family (configuration only, :func:`family_of`); ``by="family"`` groups the candidates by it,
    leaving out (and counting in ``n_unknown_family``) pairs with a candidate of unknown family.
    Each candidate row says ``self`` (the evaluator's own model, or family when ``by="family"``)
    and, by model, ``family`` and ``own_family`` (another model of the evaluator's named family).
    """
    if by not in ("model", "family"):
        raise ValueError(f"by={by!r}; known: model, family")
    name: Callable[[str], str] = (lambda m: family_of(m, families)) if by == "family" else (lambda m: m)
    out = []
    for (kind, judge, setup), by_item in _groups(records).items():
        verdicts = _item_verdicts(by_item)
        first = next(iter(next(iter(by_item.values())).values()))
        models = list(first.get("models", [judge]))
        own = {name(m) for m in models} - {UNKNOWN}
        own_families = {family_of(m, families) for m in models} - {UNKNOWN}
        per_candidate: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
        unknown = 0
        for item, (label, human) in verdicts.items():
            pair = candidates if isinstance(candidates, tuple) else candidates.get(item)
            if pair is None:
                continue
            a, b = name(pair[0]), name(pair[1])
            if by == "family" and UNKNOWN in (a, b):
                unknown += 1
                continue
            if a == b:
                continue  # a pair within one candidate (family) says nothing about preferring it
            for cand, side in ((a, "model_a"), (b, "model_b")):
                per_candidate[cand].append((*_side_score(label, side), *_side_score(human, side)))
        rows = []
        for cand in sorted(per_candidate):
            v = np.array(per_candidate[cand])
            row: dict[str, Any] = {"candidate": cand, "n": int(len(v)), "self": cand in own}
            if by == "model":
                fam = family_of(cand, families)
                row["family"] = fam
                row["own_family"] = not row["self"] and fam in own_families
            rows.append({**row, **_paired_rates(v[:, 0], v[:, 1], v[:, 2], v[:, 3], settings)})
        own_rows = [r for r in rows if r["self"]]
        entry: dict[str, Any] = {
            "judge": judge,
            "kind": kind,
            "setup": setup,
            "by": by,
            "models": models,
            "candidates": rows,
            "self_preference": own_rows[0]["diff"] if len(own_rows) == 1 else None,
        }
        if by == "family":
            entry["n_unknown_family"] = unknown
        out.append(entry)
    return out


# --------------------------------------------------------------------------- length


def length_bias(
    records: Iterable[Mapping[str, Any]],
    lengths: Mapping[str, tuple[int, int]],
    *,
    settings: Bootstrap | None = None,
) -> list[dict[str, Any]]:
    """Per evaluator: P(prefers the longer response) for the judge and for humans (module doc)."""
    out = []
    for (kind, judge, setup), by_item in _groups(records).items():
        rows = []
        for item, (label, human) in _item_verdicts(by_item).items():
            if item not in lengths or lengths[item][0] == lengths[item][1]:
                continue
            longer = "model_a" if lengths[item][0] > lengths[item][1] else "model_b"
            rows.append(
                (
                    float(label == longer),
                    float(label in ("model_a", "model_b")),
                    float(human == longer),
                    float(human in ("model_a", "model_b")),
                    label == "tie",
                    human == "tie",
                )
            )
        v = np.array(rows, dtype=float).reshape(-1, 6)
        out.append(
            {
                "judge": judge,
                "kind": kind,
                "setup": setup,
                "n": int(len(v)),
                "judge_ties": int(v[:, 4].sum()),
                "human_ties": int(v[:, 5].sum()),
                **_paired_rates(v[:, 0], v[:, 1], v[:, 2], v[:, 3], settings),
            }
        )
    return out


# --------------------------------------------------------------------------- position


def position_intervals(picks: Sequence[tuple[Any, Any]], settings: Bootstrap | None = None) -> dict[str, Any]:
    """Intervals of :func:`position_bias`' ``first_rate`` and ``consistency`` from
    (pick as shown AB, pick as shown BA) per pair; pairs with a failed order are left out."""
    both = [(a, b) for a, b in picks if a is not None and b is not None]
    if not both:
        return {}
    first = np.array([(a == "A") + (b == "A") for a, b in both], dtype=float)
    decisive = np.array([(a != "tie") + (b != "tie") for a, b in both], dtype=float)
    consistent = np.array([pick_to_label(a) == pick_to_label(b, swapped=True) for a, b in both], dtype=float)
    r = ratio_intervals(np.stack([first, consistent]), np.stack([decisive, np.ones(len(both))]), settings=settings)
    return {
        "first_rate_ci": _ci(r["rate_low"][0], r["rate_high"][0]),
        "consistency_ci": _ci(r["rate_low"][1], r["rate_high"][1]),
    }


def position_bias_table(
    records: Iterable[Mapping[str, Any]], *, settings: Bootstrap | None = None
) -> list[dict[str, Any]]:
    """Per evaluator judged in both orders: :class:`~mapo.metrics.agreement.PositionBias` with intervals."""
    out = []
    for (kind, judge, setup), by_item in _groups(records).items():
        if not any({"AB", "BA"} <= set(o) for o in by_item.values()):
            continue
        picks = [(o.get("AB", {}).get("pick"), o.get("BA", {}).get("pick")) for o in by_item.values()]
        out.append(
            {
                "judge": judge,
                "kind": kind,
                "setup": setup,
                **position_bias(picks).to_dict(),
                **position_intervals(picks, settings),
            }
        )
    return out


def bias_report(
    records: Sequence[Mapping[str, Any]],
    *,
    candidates: Mapping[str, tuple[str, str]] | tuple[str, str] | None = None,
    lengths: Mapping[str, tuple[int, int]] | None = None,
    families: Mapping[str, str] | None = None,
    settings: Bootstrap | None = None,
) -> dict[str, Any]:
    """Every diagnostic the inputs allow: position (both orders judged), length (``lengths``),
    model and family preference (``candidates``)."""
    report: dict[str, Any] = {"position": position_bias_table(records, settings=settings)}
    if lengths is not None:
        report["length"] = length_bias(records, lengths, settings=settings)
    if candidates is not None:
        report["model_preference"] = candidate_preference(records, candidates, settings=settings)
        report["family_preference"] = candidate_preference(
            records, candidates, by="family", families=families, settings=settings
        )
    return report
