"""How well judges agree with humans: Cohen's kappa, confusion matrices, juries, position bias.

All inputs are :data:`~mapo.core.types.Label` lists aligned with the human labels; ``None`` is a
judgement that failed (unparseable, refused, ...). A failure is never a tie: it is left out
of the kappa and counted in ``n_failed``. Ties are a class of their own (3x3 kappa).

How the paper's FairEval numbers come out (checked against the authors' own outputs in
``shared/data/faireval/mapo-judgments``, see ``tests/metrics/test_agreement.py``):

* **score -> pick**: ``score_1`` scores ``response_a`` (Vicuna-13B, ``model_a``) and
  ``score_2`` scores ``response_b`` (GPT-3.5, ``model_b``); the higher score wins and equal
  scores are a tie (:func:`label_from_scores`).
* **human label**: FairEval's ``winner`` column is used as is (``model_a`` / ``model_b`` /
  ``tie``; it is ``human_label_raw`` VICUNA13B / CHATGPT / TIE renamed).
* **kappa**: unweighted ``sklearn.metrics.cohen_kappa_score`` over the three classes.
* **debate**: a record's score is the mean of the three referees' final scores (General
  Public, Psychologist, Critic), then the higher mean wins.
* **jury**: the mode of the members' picks, and a multi-way mode is a tie. Taking the first
  most common pick instead (``Counter.most_common(1)``) makes the result depend on the
  jurors' order and gives 0.3103 to 0.3621, never the published 0.4283, for the best jury:
  the tie rule matters and is the one implemented by ``"mode"``.
* **unparsed items**: there are none to drop. All 6 x 80 combined-scoring records and all
  6 x 80 debate records carry numeric ``score_1``/``score_2`` (no ``None``), mapo's own parser
  reads every raw text (480 answers, 1440 debate finals) to exactly the recorded scores, and
  every published kappa is reproduced with n = 80. So the published figures include every
  item; how the authors' code would have treated a ``None`` (their parser's failure value)
  cannot be seen from these files and does not affect them. mapo excludes such items and
  reports ``n_failed``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sklearn.metrics import cohen_kappa_score

from mapo.core.config import TieBreak
from mapo.core.registry import Registry
from mapo.core.types import LABELS, Label, Pick, pick_to_label
from mapo.core.verdicts import label_from_scores

__all__ = [
    "AGGREGATORS",
    "Agreement",
    "JuryAgreement",
    "PositionBias",
    "cohen_kappa",
    "confusion_matrix",
    "jury_labels",
    "jury_pick",
    "jury_subsets",
    "label_from_scores",
    "position_bias",
]

ScorePair = tuple[float, float]


def _check_labels(values: Sequence[Any], what: str, allow_none: bool) -> None:
    for i, v in enumerate(values):
        if v is None and allow_none:
            continue
        if v not in LABELS:
            raise ValueError(f"{what}[{i}] = {v!r} is not a label; expected one of {', '.join(LABELS)}")


# --------------------------------------------------------------------------- kappa


@dataclass(frozen=True)
class Agreement:
    """Cohen's kappa of one judge (or jury) against humans.

    ``kappa`` is None when it is undefined (both sides use one and the same class) or when
    nothing was left to compare. ``confusion[i][j]`` counts items humans labelled
    ``labels[i]`` and the judge labelled ``labels[j]``.
    """

    kappa: float | None
    n: int
    n_failed: int
    confusion: tuple[tuple[int, ...], ...]
    labels: tuple[Label, ...] = LABELS

    @property
    def accuracy(self) -> float | None:
        return sum(self.confusion[i][i] for i in range(len(self.labels))) / self.n if self.n else None

    @property
    def failure_rate(self) -> float:
        total = self.n + self.n_failed
        return self.n_failed / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["confusion"] = [list(row) for row in self.confusion]
        d["labels"] = list(self.labels)
        d["accuracy"] = self.accuracy
        d["failure_rate"] = self.failure_rate
        return d


def _pairs(judge: Sequence[Label | None], human: Sequence[Label]) -> tuple[list[Label], list[Label], int]:
    if len(judge) != len(human):
        raise ValueError(f"judge labels ({len(judge)}) and human labels ({len(human)}) differ in length")
    _check_labels(human, "human", allow_none=False)
    _check_labels(judge, "judge", allow_none=True)
    kept = [(j, h) for j, h in zip(judge, human, strict=True) if j is not None]
    return [j for j, _ in kept], [h for _, h in kept], len(judge) - len(kept)


def confusion_matrix(judge: Sequence[Label | None], human: Sequence[Label]) -> tuple[tuple[int, ...], ...]:
    """3x3 counts, rows = human, columns = judge, in the order model_a, model_b, tie."""
    j, h, _ = _pairs(judge, human)
    counts = Counter(zip(h, j, strict=True))
    return tuple(tuple(counts[(hl, jl)] for jl in LABELS) for hl in LABELS)


def cohen_kappa(judge: Sequence[Label | None], human: Sequence[Label]) -> Agreement:
    """Cohen's kappa (ties a class) over the items whose judgement did not fail."""
    j, h, n_failed = _pairs(judge, human)
    confusion = confusion_matrix(judge, human)
    kappa: float | None = None
    if j:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined kappa: reported as None below
            value = float(cohen_kappa_score(h, j, labels=list(LABELS)))
        kappa = value if math.isfinite(value) else None
    return Agreement(kappa=kappa, n=len(j), n_failed=n_failed, confusion=confusion)


# --------------------------------------------------------------------------- jury

Aggregator = Callable[[Sequence[Label | None], Sequence[ScorePair | None] | None, TieBreak], Label | None]
AGGREGATORS: Registry[Aggregator] = Registry("jury aggregator")


@AGGREGATORS.register("mode")
def _mode(
    labels: Sequence[Label | None], scores: Sequence[ScorePair | None] | None, tie_break: TieBreak
) -> Label | None:
    """Paper rule: the most common pick; a multi-way mode is a tie. Failed jurors abstain."""
    counts = Counter(x for x in labels if x is not None).most_common()
    if not counts:
        return None
    top = [label for label, c in counts if c == counts[0][1]]
    return top[0] if len(top) == 1 else "tie"


@AGGREGATORS.register("majority")
def _majority(
    labels: Sequence[Label | None], scores: Sequence[ScorePair | None] | None, tie_break: TieBreak
) -> Label | None:
    """A pick held by more than half of the jurors that answered; otherwise ``tie_break``
    (:class:`~mapo.core.config.TieBreak`): ``tie`` -> tie, ``first_juror`` -> the first answering
    juror's pick (a chair), ``abstain`` -> no verdict (None, counted as a failure)."""
    valid = [x for x in labels if x is not None]
    if not valid:
        return None
    label, count = Counter(valid).most_common(1)[0]
    if 2 * count > len(valid):
        return label
    if tie_break is TieBreak.tie:
        return "tie"
    if tie_break is TieBreak.first_juror:
        return valid[0]
    return None  # TieBreak.abstain


@AGGREGATORS.register("mean_score")
def _mean_score(
    labels: Sequence[Label | None], scores: Sequence[ScorePair | None] | None, tie_break: TieBreak
) -> Label | None:
    """Mean of the jurors' (score_a, score_b); higher mean wins, equal means are a tie."""
    if scores is None:
        raise ValueError("jury rule 'mean_score' needs the jurors' scores (scores=[(score_a, score_b) | None, ...])")
    valid = [s for s in scores if s is not None]
    if not valid:
        return None
    return label_from_scores(sum(a for a, _ in valid) / len(valid), sum(b for _, b in valid) / len(valid))


def jury_pick(
    labels: Sequence[Label | None],
    rule: str = "mode",
    *,
    scores: Sequence[ScorePair | None] | None = None,
    tie_break: TieBreak | str = TieBreak.tie,
) -> Label | None:
    """One item's jury verdict from its members' labels (None = that member failed), by the
    aggregator ``rule`` (:data:`AGGREGATORS`) and, for ``majority``, ``tie_break`` (a
    :class:`~mapo.core.config.TieBreak` or its name; an old spelling a stored record holds is read).

    >>> jury_pick(["model_a", "model_b", "model_a"])
    'model_a'
    >>> jury_pick(["model_a", "model_b", "tie"])      # three-way mode: a tie (paper)
    'tie'
    >>> jury_pick([None, None]) is None
    True
    """
    return AGGREGATORS.get(rule, key="jury.rule")(labels, scores, TieBreak.parse(tie_break, "jury.tie_break"))


def jury_labels(
    per_judge_labels: Mapping[str, Sequence[Label | None]],
    members: Sequence[str],
    rule: str = "mode",
    *,
    per_judge_scores: Mapping[str, Sequence[ScorePair | None]] | None = None,
    tie_break: TieBreak | str = TieBreak.tie,
) -> list[Label | None]:
    """The jury's label for every item, from stored per-judge labels (no model call)."""
    columns = [per_judge_labels[m] for m in members]
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"judges {list(members)} labelled different numbers of items")
    score_cols = [per_judge_scores[m] for m in members] if per_judge_scores is not None else None
    return [
        jury_pick(
            [c[i] for c in columns],
            rule,
            scores=[c[i] for c in score_cols] if score_cols is not None else None,
            tie_break=tie_break,
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class JuryAgreement:
    members: tuple[str, ...]
    rule: str
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "rule": self.rule, **self.agreement.to_dict()}


def jury_subsets(
    per_judge_labels: Mapping[str, Sequence[Label | None]],
    humans: Sequence[Label],
    sizes: Iterable[int] | None = None,
    rule: str = "mode",
    *,
    per_judge_scores: Mapping[str, Sequence[ScorePair | None]] | None = None,
    tie_break: TieBreak | str = TieBreak.tie,
) -> list[JuryAgreement]:
    """Kappa of every jury (subset of the judges, sizes 2..n by default), best first.

    Juries are formed from the stored per-judge labels, so no model is called. Ties in kappa
    keep a stable order (smaller jury first, then names); undefined kappas go last.
    """
    names = sorted(per_judge_labels)
    sizes = range(2, len(names) + 1) if sizes is None else sizes
    out: list[JuryAgreement] = []
    for size in sizes:
        if not 1 <= size <= len(names):
            raise ValueError(f"jury size {size} is not in 1..{len(names)} (judges: {', '.join(names)})")
        for members in itertools.combinations(names, size):
            labels = jury_labels(
                per_judge_labels, members, rule, per_judge_scores=per_judge_scores, tie_break=tie_break
            )
            out.append(JuryAgreement(members, rule, cohen_kappa(labels, humans)))
    return sorted(
        out, key=lambda r: (r.agreement.kappa is None, -(r.agreement.kappa or 0.0), len(r.members), r.members)
    )


# --------------------------------------------------------------------------- position bias


@dataclass(frozen=True)
class PositionBias:
    """A judge's verdicts on the same pairs shown in both orders.

    ``first_rate``: P(the judge picks the response shown first | it picked one), over both
    orders' decisive verdicts; 0.5 is unbiased. ``consistency``: share of pairs whose two
    verdicts agree once the swap is undone (ties must match ties). Pairs with a failed order
    are counted in ``n_failed`` and left out of both rates.
    """

    n_pairs: int
    n_failed: int
    n_decisive: int
    first_rate: float | None
    tie_rate: float | None
    consistency: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _order_picks(record: Any) -> tuple[Pick | None, Pick | None]:
    """(pick as shown a-then-b, pick as shown b-then-a), each in presentation order.

    Accepts such a tuple, or a judgement with ``attempts`` whose ``order`` is "AB"/"BA" and
    whose ``verdict.pick`` is in presentation order (``mapo.judging.judge.PairJudgement``).
    """
    if isinstance(record, tuple):
        return record
    by_order = {a.order: (a.verdict.pick if a.verdict.ok else None) for a in record.attempts}
    return by_order.get("AB"), by_order.get("BA")


def position_bias(records: Iterable[Any]) -> PositionBias:
    """Position preference and swap consistency from verdicts of both presentation orders."""
    n_pairs = n_failed = first = second = ties = consistent = 0
    for record in records:
        ab, ba = _order_picks(record)
        n_pairs += 1
        if ab is None or ba is None:
            n_failed += 1
            continue
        for pick in (ab, ba):
            first += pick == "A"
            second += pick == "B"
            ties += pick == "tie"
        consistent += pick_to_label(ab) == pick_to_label(ba, swapped=True)
    both = n_pairs - n_failed
    decisive = first + second
    return PositionBias(
        n_pairs=n_pairs,
        n_failed=n_failed,
        n_decisive=decisive,
        first_rate=first / decisive if decisive else None,
        tie_rate=ties / (2 * both) if both else None,
        consistency=consistent / both if both else None,
    )
