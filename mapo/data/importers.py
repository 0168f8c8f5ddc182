"""Import the original authors' FairEval judge outputs and re-parse their raw texts.

Layout (``shared/data/faireval/mapo-judgments``): one JSON list of 80 records per judge,
record ``i`` judging FairEval item ``id == i``.

* ``multi-rater10/<model>_none.json`` (combined scoring out of 10): ``response`` is the raw
  text, ``score_1``/``score_2`` what the authors' parser read (score_1 = response_a),
  ``turns_to_answer`` their retry count.
* ``debate/<model>_<model>.json``: ``response_<speaker>_<round>`` are the discussion turns
  (speakers 1..3 = General Public, Psychologist, Critic; rounds 1..2),
  ``response_<speaker>`` each referee's final answer, and ``score_1``/``score_2`` the mean of
  the three referees' final scores.

Each :class:`AuthorRecord` keeps the raw texts, the recorded scores and mapo's own re-parse
(the mean of the referees' finals for a debate; ``None`` when a text does not parse).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo.core.parsers import PARSERS
from mapo.core.types import Label
from mapo.metrics.agreement import label_from_scores

__all__ = [
    "STRATEGIES",
    "AuthorRecord",
    "JudgmentsFormatError",
    "default_root",
    "iter_author_records",
    "load_author_judgments",
]

STRATEGIES = ("multi-rater10", "debate")

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
    judge: str  # mapo model name (conf/model), e.g. "gpt-4o"
    model: str  # the authors' model id, e.g. "gpt-4o" or "Meta-Llama-3.1-8B-Instruct-Turbo"
    strategy: str  # "multi-rater10" | "debate"
    index: int  # position in the file == FairEval id
    texts: tuple[str, ...]  # the text(s) carrying the scores: 1 answer, or the 3 debate finals
    discussion: tuple[str, ...]  # debate turns in speaking order (empty for multi-rater10)
    recorded: tuple[float, float] | None  # (score_1, score_2) as stored; None if not numeric
    parsed: tuple[float, float] | None  # mapo's re-parse of ``texts``
    parse_errors: tuple[str, ...] = ()

    @property
    def recorded_label(self) -> Label | None:
        return label_from_scores(*self.recorded) if self.recorded else None

    @property
    def parsed_label(self) -> Label | None:
        return label_from_scores(*self.parsed) if self.parsed else None

    @property
    def agrees(self) -> bool:
        """Re-parse equals the recorded scores (to 1e-9)."""
        if self.parsed is None or self.recorded is None:
            return False
        return all(math.isclose(p, r, rel_tol=0, abs_tol=1e-9) for p, r in zip(self.parsed, self.recorded))


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


def _parse(texts: tuple[str, ...]) -> tuple[tuple[float, float] | None, tuple[str, ...]]:
    parse = PARSERS.get("score_pair")
    results = [parse(t, scale=10) for t in texts]
    errors = tuple(f"text {i + 1}: {r.error}" for i, r in enumerate(results) if not r.ok)
    if errors:
        return None, errors
    n = len(results)
    return (sum(r.value[0] for r in results) / n, sum(r.value[1] for r in results) / n), ()


def _record(path: Path, strategy: str, index: int, raw: Any) -> AuthorRecord:
    where = f"{path}: record {index}"
    if not isinstance(raw, dict):
        raise JudgmentsFormatError(f"{where}: expected an object, got {type(raw).__name__}")
    for key in ("score_1", "score_2"):
        if key not in raw:
            raise JudgmentsFormatError(f"{where}: missing field {key!r}")
    if strategy == "multi-rater10":
        texts: tuple[str, ...] = (_text(raw, "response", where),)
        discussion: tuple[str, ...] = ()
    else:
        texts = tuple(_text(raw, f"response_{s}", where) for s in (1, 2, 3))
        discussion = tuple(_text(raw, f"response_{s}_{r}", where) for r in (1, 2) for s in (1, 2, 3))
    a, b = _score(raw, "score_1"), _score(raw, "score_2")
    parsed, errors = _parse(texts)
    model = _model_of(path)
    return AuthorRecord(
        judge=CANONICAL.get(model, model),
        model=model,
        strategy=strategy,
        index=index,
        texts=texts,
        discussion=discussion,
        recorded=(a, b) if a is not None and b is not None else None,
        parsed=parsed,
        parse_errors=errors,
    )


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
