"""Import the original authors' judge outputs (e.g. on FairEval) and re-parse their raw texts.

Layout (``shared/data/faireval/mapo-judgments``, as the authors published it): one folder per
strategy, one JSON list per judge file, record ``i`` judging the evaluation item with
``id == i``. File names are ``<model>_<model or none>[_<n>].json``; model ids contain no
underscore. The strategies (the inputs of the paper's Table 2) and their record shapes:

* ``judge`` (direct comparison): ``response`` (raw text), ``pick`` (model_a / model_b / tie),
  ``turns_to_answer``. Their parser wrote ``tie`` when it found no answer, so a recorded tie
  that mapo's parser does not read as a tie is counted as a probable authors' parse failure.
* ``rater10`` (independent scoring /10): ``response_1`` / ``response_2`` (one conversation
  per response), ``score_1`` / ``score_2``, ``turns_to_answer_1`` / ``turns_to_answer_2``.
* ``multi-rater5`` / ``multi-rater10`` / ``multi-rater100`` (combined scoring /5, /10, /100):
  ``response``, ``score_1`` / ``score_2``, ``turns_to_answer``.
* ``debate``: ``response_<speaker>_<round>`` the discussion turns (speakers 1..3 = General
  Public, Psychologist, Critic; rounds 1..2), ``response_<speaker>`` each referee's final
  answer, ``score_1`` / ``score_2`` the mean of the three referees' final scores.

``score_1`` scores ``response_a`` (``model_a``). The authors' parsers write **-1** for a score
they could not read; their kappa script compares it like any score (so -1 loses). With the
recorded scores mapo reproduces that (the published figures), and counts such records as the
authors' parse failures (:attr:`AuthorRecord.authors_failed`) so that they are reported.

Each :class:`AuthorRecord` keeps the raw texts, the recorded scores or pick, and mapo's own
re-parse. **One rule for failed debate referees**, the same as mapo's own debate
(:mod:`mapo.judging.debate`): a referee whose final answer does not parse abstains, the
record's scores are the mean of the referees that parsed, and only a record whose referees
all fail is a failure (``parsed is None``). The authors' code gave a failed referee 0 for
both responses, which leaves the pick of the mean unchanged, so the two rules pick alike.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.core.parsers import PARSERS
from mapo.core.types import Label, pick_to_label
from mapo.core.verdicts import label_from_scores

__all__ = [
    "AUTHORS_FAILED",
    "SCALES",
    "SETUPS",
    "STRATEGIES",
    "AuthorEvaluator",
    "AuthorRecord",
    "JudgmentsFormatError",
    "author_evaluators",
    "default_root",
    "iter_author_records",
    "load_author_judgments",
    "strategies_in",
]

STRATEGIES = ("judge", "rater10", "multi-rater5", "multi-rater10", "multi-rater100", "debate")
"""Every strategy folder the authors published (the paper's Table 2 and its debates)."""

SCALES = {"judge": None, "rater10": 10, "multi-rater5": 5, "multi-rater10": 10, "multi-rater100": 100, "debate": 10}
SETUPS = {
    "judge": "direct",
    "rater10": "independent10",
    "multi-rater5": "combined5",
    "multi-rater10": "combined10",
    "multi-rater100": "combined100",
    "debate": "debate10/r2/mean_score",
}
"""Strategy folder -> the mapo setup name of the same judging setup."""

AUTHORS_FAILED = -1.0
"""What the authors' parsers stored for a score they could not read."""

# the authors' file-name model ids -> mapo's conf/model names
CANONICAL = {
    "gpt-4o": "gpt-4o",
    "gpt-4o-mini": "gpt-4o-mini",
    "Meta-Llama-3.1-8B-Instruct-Turbo": "llama31-8b",
    "Meta-Llama-3.1-70B-Instruct-Turbo": "llama31-70b",
    "gemma-2-9b-it": "gemma-2-9b",
    "gemma-2-27b-it": "gemma-2-27b",
}


class JudgmentsFormatError(ValueError):
    """A judgments file that is not in the expected shape; the message names file and record."""


@dataclass(frozen=True)
class AuthorRecord:
    """One of the authors' records: raw texts, what they recorded, and mapo's re-parse."""

    judge: str  # mapo model name (conf/model), e.g. "gpt-4o"
    model: str  # the authors' model id, e.g. "gpt-4o" or "Meta-Llama-3.1-8B-Instruct-Turbo"
    strategy: str  # a folder of STRATEGIES
    index: int  # position in the file == item id
    texts: tuple[str, ...]  # the text(s) carrying the verdict: 1 answer, 2 independent ones, or 3 debate finals
    discussion: tuple[str, ...]  # debate turns in speaking order (empty otherwise)
    recorded: tuple[float, float] | None  # (score_1, score_2) as stored; None if not numeric (or a pick)
    parsed: tuple[float, float] | None  # mapo's re-parse of ``texts`` (scores)
    parse_errors: tuple[str, ...] = ()
    recorded_pick: Label | None = None  # ``judge`` strategy: the stored pick
    parsed_pick: Label | None = None  # ``judge`` strategy: mapo's re-parse of the answer
    n_abstained: int = 0  # debate referees whose final answer did not parse (they abstain)

    @property
    def recorded_label(self) -> Label | None:
        if self.strategy == "judge":
            return self.recorded_pick
        return label_from_scores(*self.recorded) if self.recorded else None

    @property
    def parsed_label(self) -> Label | None:
        if self.strategy == "judge":
            return self.parsed_pick
        return label_from_scores(*self.parsed) if self.parsed else None

    @property
    def authors_failed(self) -> bool:
        """The authors' parser failed here: a recorded -1 score, or (``judge``) a recorded tie
        that mapo's parser does not read as a tie (their parser's default when it found no answer)."""
        if self.strategy == "judge":
            return self.recorded_pick == "tie" and self.parsed_pick != "tie"
        return self.recorded is not None and AUTHORS_FAILED in self.recorded

    @property
    def agrees(self) -> bool:
        """Re-parse equals the recorded scores (to 1e-9), or the recorded pick."""
        if self.strategy == "judge":
            return self.parsed_pick is not None and self.parsed_pick == self.recorded_pick
        if self.parsed is None or self.recorded is None:
            return False
        return all(math.isclose(p, r, rel_tol=0, abs_tol=1e-9) for p, r in zip(self.parsed, self.recorded, strict=True))


def default_root() -> Path | None:
    """``$MAPO_SHARED/data/faireval/mapo-judgments``, else ``../shared`` beside the checkout."""
    shared = Path(os.environ.get("MAPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    root = shared / "data" / "faireval" / "mapo-judgments"
    return root if root.is_dir() else None


def _model_of(path: Path) -> str:
    # "<model>_none.json" or "<model>_<model>.json"; model ids contain no underscore
    return path.stem.split("_", 1)[0]


def _score(record: dict[str, Any], key: str) -> float | None:
    v = record.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _text(record: dict[str, Any], key: str, where: str) -> str:
    v = record.get(key)
    if not isinstance(v, str):
        raise JudgmentsFormatError(
            f"{where}: field {key!r} is {'missing' if v is None else type(v).__name__}, expected text"
        )
    return v


def _parse(strategy: str, texts: tuple[str, ...]) -> tuple[tuple[float, float] | None, tuple[str, ...], int]:
    """(scores, errors, abstained referees) of mapo's re-parse of a record's texts."""
    scale = SCALES[strategy]
    if strategy == "rater10":
        parse = PARSERS.get("score")
        a, b = (parse(t, scale=scale) for t in texts)
        errors = tuple(f"response_{i + 1}: {r.error}" for i, r in enumerate((a, b)) if not r.ok)
        return ((float(a.value), float(b.value)) if a.ok and b.ok else None), errors, 0
    parse = PARSERS.get("score_pair")
    results = [parse(t, scale=scale) for t in texts]
    errors = tuple(f"text {i + 1}: {r.error}" for i, r in enumerate(results) if not r.ok)
    ok = [r.value for r in results if r.ok]
    if not ok:
        return None, errors, len(results)
    if strategy != "debate" and errors:
        return None, errors, 0
    # debate: failed referees abstain, the mean of the others decides (module doc)
    return (sum(v[0] for v in ok) / len(ok), sum(v[1] for v in ok) / len(ok)), errors, len(results) - len(ok)


def _pick(record: dict[str, Any], where: str) -> Label | None:
    v = record.get("pick")
    if v not in ("model_a", "model_b", "tie"):
        raise JudgmentsFormatError(f"{where}: field 'pick' is {v!r}, expected model_a, model_b or tie")
    return v


def _record(path: Path, strategy: str, index: int, raw: Any) -> AuthorRecord:
    where = f"{path}: record {index}"
    if not isinstance(raw, dict):
        raise JudgmentsFormatError(f"{where}: expected an object, got {type(raw).__name__}")
    model = _model_of(path)
    judge = CANONICAL.get(model, model)
    if strategy == "judge":
        text = _text(raw, "response", where)
        parsed = PARSERS.get("pick")(text)
        return AuthorRecord(
            judge=judge,
            model=model,
            strategy=strategy,
            index=index,
            texts=(text,),
            discussion=(),
            recorded=None,
            parsed=None,
            parse_errors=() if parsed.ok else (f"text 1: {parsed.error}",),
            recorded_pick=_pick(raw, where),
            parsed_pick=pick_to_label(parsed.value) if parsed.ok else None,
        )
    for key in ("score_1", "score_2"):
        if key not in raw:
            raise JudgmentsFormatError(f"{where}: missing field {key!r}")
    discussion: tuple[str, ...] = ()
    if strategy == "rater10":
        texts: tuple[str, ...] = (_text(raw, "response_1", where), _text(raw, "response_2", where))
    elif strategy == "debate":
        texts = tuple(_text(raw, f"response_{s}", where) for s in (1, 2, 3))
        discussion = tuple(_text(raw, f"response_{s}_{r}", where) for r in (1, 2) for s in (1, 2, 3))
    else:
        texts = (_text(raw, "response", where),)
    a, b = _score(raw, "score_1"), _score(raw, "score_2")
    parsed_scores, errors, abstained = _parse(strategy, texts)
    return AuthorRecord(
        judge=judge,
        model=model,
        strategy=strategy,
        index=index,
        texts=texts,
        discussion=discussion,
        recorded=(a, b) if a is not None and b is not None else None,
        parsed=parsed_scores,
        parse_errors=errors,
        n_abstained=abstained if strategy == "debate" else 0,
    )


def strategies_in(root: Path) -> list[str]:
    """The strategy folders present under ``root`` (in :data:`STRATEGIES` order)."""
    return [s for s in STRATEGIES if (Path(root) / s).is_dir()]


def iter_author_records(root: Path, strategy: str) -> Iterator[AuthorRecord]:
    """Every record of every judge file under ``root/strategy``, files in name order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    folder = Path(root) / strategy
    files = sorted(folder.glob("*.json"))
    if not files:
        raise JudgmentsFormatError(f"{folder}: no *.json judge files")
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise JudgmentsFormatError(f"{path}: broken JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(data, list):
            raise JudgmentsFormatError(f"{path}: expected a list of records, got {type(data).__name__}")
        for index, raw in enumerate(data):
            yield _record(path, strategy, index, raw)


def load_author_judgments(root: Path, strategy: str) -> dict[str, list[AuthorRecord]]:
    """judge name -> its records in item order."""
    out: dict[str, list[AuthorRecord]] = {}
    for rec in iter_author_records(root, strategy):
        out.setdefault(rec.judge, []).append(rec)
    return out


@dataclass(frozen=True)
class AuthorEvaluator:
    """One of the authors' evaluators as mapo names it: a judge of one strategy folder, or a debate
    (what ``mapo agreement --authors`` scores and the report's bias diagnostics re-read)."""

    name: str
    """The judge (its conf/model name), or ``debate[<judge>]``."""
    kind: str
    """The record kind mapo gives it: ``judge``, or ``debate`` for the debate folder."""
    setup: str
    """The mapo setup of the same judging (:data:`SETUPS`)."""
    model: str
    strategy: str
    records: tuple[AuthorRecord, ...]

    def labels(self, recorded: bool = False) -> dict[str, Label | None]:
        """Item id -> label: mapo's re-parse of the raw texts, or (``recorded``) the authors' stored scores."""
        return {str(r.index): (r.recorded_label if recorded else r.parsed_label) for r in self.records}


_FOLDER_KINDS = {"debate": ("debate", "debate[{}]")}
"""Strategy folder -> (record kind, evaluator name of a judge); any other folder holds single judges."""


def author_evaluators(root: Path, strategies: Iterable[str]) -> Iterator[AuthorEvaluator]:
    """Every evaluator of the strategy folders ``strategies`` under ``root``, judges in name order."""
    for strategy in strategies:
        kind, name = _FOLDER_KINDS.get(strategy, ("judge", "{}"))
        for judge, recs in sorted(load_author_judgments(root, strategy).items()):
            yield AuthorEvaluator(name.format(judge), kind, SETUPS[strategy], judge, strategy, tuple(recs))
