"""The verdict rules, written once, on plain values: live judges and stored records both call them.

* a pick in presentation order (``A`` / ``B`` / ``tie``) <-> a label in dataset terms
  (``model_a`` / ``model_b`` / ``tie``): :func:`pick_to_label` (:mod:`mapo.core.types`),
  :func:`label_pick`, and the BA swap :func:`swap_label`;
* the paper's score rule: the higher score wins, equal scores are a tie (:func:`label_from_scores`;
  :meth:`mapo.core.types.Verdict.from_scores` in presentation order);
* combining presentation orders (``judge.both_orders``): :func:`combine_orders` over per-order
  rows in dataset terms, :func:`order_row` turning one order's verdict into such a row.

:class:`mapo.judging.judge.Judge` combines its attempts with these; ``mapo reparse``
(:mod:`mapo.runs.reparse`), the agreement tables (:mod:`mapo.metrics.tables`), the leaderboard
and ``mapo view`` apply them to stored records. A failure is never a tie and never a score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mapo.core.types import Label, Pick, pick_to_label

__all__ = ["PICK_OF_LABEL", "combine_orders", "label_from_scores", "label_pick", "order_row", "swap_label"]

PICK_OF_LABEL: dict[Label, Pick] = {"model_a": "A", "model_b": "B", "tie": "tie"}
"""A label in dataset terms -> the pick that names it when the pair is shown as given (AB)."""

_SWAPPED: dict[Label, Label] = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}


def swap_label(label: Label | None) -> Label | None:
    """``model_a`` <-> ``model_b`` (a BA presentation undone); a tie and None stay."""
    return _SWAPPED[label] if label else None


def label_pick(label: Label | None) -> Pick | None:
    """The pick letter of a label (``model_a`` -> ``A``); None stays None."""
    return PICK_OF_LABEL[label] if label else None


def label_from_scores(score_a: float | None, score_b: float | None) -> Label | None:
    """The paper's rule in dataset terms: higher score wins, equal is a tie; a missing score -> None."""
    if score_a is None or score_b is None or not (math.isfinite(score_a) and math.isfinite(score_b)):
        return None
    return "model_a" if score_a > score_b else "model_b" if score_b > score_a else "tie"


def order_row(
    pick: Pick | None, score_a: float | None, score_b: float | None, failure: str | None, order: str
) -> dict[str, Any]:
    """One presentation order's verdict as a row for :func:`combine_orders`: its label and scores in
    dataset terms (a BA order's pick and scores swapped back); ``{"label": None}`` for a failure."""
    if failure is not None or pick is None:
        return {"label": None}
    swapped = order == "BA"
    sa, sb = (score_b, score_a) if swapped else (score_a, score_b)
    return {"label": pick_to_label(pick, swapped), "score_a": sa, "score_b": sb}


def combine_orders(
    records: Iterable[Mapping[str, Any]], rule: str = "inconsistent_tie"
) -> tuple[Label | None, float | None, float | None]:
    """One item's verdict from its per-order rows (dataset terms: ``label``, ``score_a``, ``score_b``):
    a failed order (label None) is left out; two orders that disagree are a tie
    (``inconsistent_tie``) or decided by the mean scores (``mean_score``, when all four are there).
    The scores are the means (None where an order has none)."""
    ok = [r for r in records if r.get("label") is not None]
    if not ok:
        return None, None, None
    if len(ok) == 1:
        return ok[0]["label"], ok[0].get("score_a"), ok[0].get("score_b")
    r1, r2 = ok[0], ok[1]
    scores = (r1.get("score_a"), r1.get("score_b"), r2.get("score_a"), r2.get("score_b"))
    mean = lambda x, y: None if x is None or y is None else (x + y) / 2  # noqa: E731
    sa, sb = mean(scores[0], scores[2]), mean(scores[1], scores[3])
    if rule == "mean_score" and None not in scores:
        return label_from_scores(sa, sb), sa, sb
    return (r1["label"] if r1["label"] == r2["label"] else "tie"), sa, sb
