"""Quality indicators of a built preference dataset (``mapo build``'s records), for the manifest and card.

:func:`dataset_quality` reads the four record streams of a build run (``generations.jsonl``,
``selections.jsonl``, ``dpo.jsonl``, ``kto.jsonl``; :func:`dataset_quality_of_run` reads them
from a run folder) and reports:

* ``length``: chosen / rejected length ratio over the DPO pairs (characters), and the share of
  pairs whose chosen response is the longer one: the best-known DPO pitfall (a model trained
  on it learns "longer is better");
* ``chosen_iteration``: which feedback-loop iteration was chosen, and the share where it is
  the last one (a reviewer loop that always improves would choose the last; one that never
  does, the first);
* ``margin``: the judge's score margin (chosen minus rejected, in the comparison that put the
  rejected out) over the DPO pairs: quantiles, a histogram, and the share of zero-margin
  (tie) pairs;
* ``order_consistency``: for selection comparisons judged in both presentation orders, the
  share whose two verdicts agree once the swap is undone;
* ``duplicates``: pairs whose two responses are identical (skipped by the builder) or near
  duplicates (word-trigram Jaccard similarity >= ``near_duplicate``) among the written pairs;
* ``reviewer_scores``: the reviewers' score per iteration (mean, median, n), per reviewer, and
  how often an iteration scored higher than the one before.

Every section is computed from what the records hold; a section without data reports ``n: 0``.
"""

from __future__ import annotations

import re
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mapo.core.types import pick_to_label

__all__ = ["NEAR_DUPLICATE", "dataset_quality", "dataset_quality_of_run", "quality_markdown", "similarity"]

NEAR_DUPLICATE = 0.9
"""Default word-trigram Jaccard similarity at which two responses count as near duplicates."""

_WORD = re.compile(r"\w+", re.UNICODE)


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the word trigrams of two texts (word sets for texts under 3 words).

    >>> similarity("the cat sat on the mat", "the cat sat on the mat")
    1.0
    >>> similarity("a b c d", "w x y z")
    0.0
    """
    wa, wb = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    sa: set[Any]
    sb: set[Any]
    if min(len(wa), len(wb)) < 3:
        sa, sb = set(wa), set(wb)
    else:
        sa = {tuple(wa[i : i + 3]) for i in range(len(wa) - 2)}
        sb = {tuple(wb[i : i + 3]) for i in range(len(wb) - 2)}
    if not sa and not sb:
        return 1.0 if a.strip() == b.strip() else 0.0
    return len(sa & sb) / len(sa | sb)


def _summary(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, min, quartiles, max of numbers (None when empty)."""
    v = sorted(values)
    if not v:
        return {"n": 0, "mean": None, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"n": len(v), "mean": statistics.fmean(v), "min": v[0], "q1": q[0], "median": q[1], "q3": q[2], "max": v[-1]}


def _text(messages: Any) -> str:
    """The content of a conversational column (a list of messages) or a plain string."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        return "".join(str(m.get("content", "")) for m in messages if isinstance(m, Mapping))
    return ""


def _length(chosen_len: Sequence[int], rejected_len: Sequence[int]) -> dict[str, Any]:
    ratios = [c / r for c, r in zip(chosen_len, rejected_len, strict=True) if r]
    n = len(chosen_len)
    longer = sum(c > r for c, r in zip(chosen_len, rejected_len, strict=True))
    return {
        "n": n,
        "ratio": _summary(ratios),
        "chosen_longer_share": longer / n if n else None,
        "chosen_chars": _summary(chosen_len),
        "rejected_chars": _summary(rejected_len),
    }


_BINS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


def _margin(values: Sequence[float], rows: int) -> dict[str, Any]:
    hist: dict[str, int] = {}
    for lo, hi in zip(_BINS, (*_BINS[1:], None), strict=True):
        label = f"[{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
        hist[label] = sum(lo <= v and (hi is None or v < hi) for v in values)
    below = sum(v < 0 for v in values)
    if below:
        hist["< 0"] = below
    return {
        **_summary(values),
        "without_margin": rows - len(values),
        "zero_share": sum(v == 0 for v in values) / len(values) if values else None,
        "histogram": hist,
    }


def _consistent_orders(selection: Mapping[str, Any]) -> tuple[int, int]:
    """(comparisons judged in both orders, of which the two verdicts agree) in one selection record."""
    both = consistent = 0
    for j in selection.get("judgements") or []:
        picks = {}
        for a in j.get("attempts") or []:
            v = a.get("verdict") or {}
            if v.get("failure") is None and v.get("pick") is not None:
                picks[a.get("order")] = v["pick"]
        if "AB" in picks and "BA" in picks:
            both += 1
            consistent += pick_to_label(picks["AB"]) == pick_to_label(picks["BA"], swapped=True)
    return both, consistent


class _ReviewerScores:
    """The reviewers' scores per iteration, one generation record at a time."""

    def __init__(self) -> None:
        self.per_iter: dict[int, array[float]] = defaultdict(lambda: array("d"))
        self.per_reviewer: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        self.steps = self.improved = 0

    def add(self, gen: Mapping[str, Any]) -> None:
        prev: float | None = None
        for it in gen.get("iterations", []):
            idx = int(it.get("index", 0))
            score = it.get("score")
            if isinstance(score, (int, float)):
                self.per_iter[idx].append(float(score))
                if prev is not None:
                    self.steps += 1
                    self.improved += score > prev
                prev = float(score)
            else:
                prev = None
            for rv in it.get("reviews") or []:
                if isinstance(rv.get("score"), (int, float)):
                    acc = self.per_reviewer[str(rv.get("reviewer"))][idx]
                    acc[0] += float(rv["score"])
                    acc[1] += 1

    def result(self) -> dict[str, Any]:
        return {
            "by_iteration": {str(i): _summary(self.per_iter[i]) for i in sorted(self.per_iter)},
            "by_reviewer": {
                r: {str(i): total / n for i, (total, n) in sorted(d.items())}
                for r, d in sorted(self.per_reviewer.items())
            },
            "steps": self.steps,
            "improved_share": self.improved / self.steps if self.steps else None,
        }


def dataset_quality(
    generations: Iterable[Mapping[str, Any]],
    selections: Iterable[Mapping[str, Any]],
    dpo: Iterable[Mapping[str, Any]],
    kto: Iterable[Mapping[str, Any]] = (),
    *,
    near_duplicate: float = NEAR_DUPLICATE,
) -> dict[str, Any]:
    """Quality indicators of a build run's records (module doc); JSON-ready.

    Each stream is read once and no record is kept: what stays is numbers (the chosen index of each
    selected item, and per DPO pair its lengths, margin and similarity), so a million-item run needs
    tens of MB here, not its records' size. Keys are unique per file, as the record stores write them.
    """
    # selections first: the chosen index per item (for the generations' pass), failures, order consistency
    chosen: dict[str, int] = {}
    by_index: Counter[int] = Counter()
    n_sels = failed = both = consistent = 0
    for sel in selections:
        n_sels += 1
        if sel.get("best") is None:
            failed += 1
        else:
            chosen[str(sel["key"])] = int(sel["best"])
            by_index[int(sel["best"])] += 1
        judged, agreed = _consistent_orders(sel)
        both, consistent = both + judged, consistent + agreed
    # generations: was the chosen one the last iteration; identical responses beside the chosen; reviewer scores
    n_gens = with_generation = chosen_last = identical = 0
    reviewers = _ReviewerScores()
    for gen in generations:
        n_gens += 1
        reviewers.add(gen)
        best = chosen.get(str(gen["key"]))
        if best is None:
            continue
        texts = [it.get("response", "") for it in gen.get("iterations", [])]
        with_generation += 1
        chosen_last += best == len(texts) - 1
        if best < len(texts):
            identical += sum(t.strip() == texts[best].strip() for i, t in enumerate(texts) if i != best)
    n_chosen = sum(by_index.values())
    # DPO pairs: lengths, margins, similarity of chosen and rejected
    chosen_len, rejected_len, margins, sims = array("l"), array("l"), array("d"), array("d")
    n_pairs = 0
    for row in dpo:
        n_pairs += 1
        c, r = _text(row.get("chosen")), _text(row.get("rejected"))
        chosen_len.append(len(c))
        rejected_len.append(len(r))
        if isinstance(row.get("margin"), (int, float)):
            margins.append(float(row["margin"]))
        sims.append(similarity(c, r))
    n_kto = desirable = 0
    for row in kto:
        n_kto += 1
        desirable += bool(row.get("label"))
    near = sum(x >= near_duplicate for x in sims)
    return {
        "items": {"generations": n_gens, "selections": n_sels, "dpo_pairs": n_pairs, "kto_rows": n_kto},
        "kto_desirable_share": desirable / n_kto if n_kto else None,
        "length": _length(chosen_len, rejected_len),
        "chosen_iteration": {
            "n": n_chosen,
            "failed": failed,
            "by_index": {str(k): by_index[k] for k in sorted(by_index)},
            "last_share": chosen_last / with_generation if with_generation else None,
        },
        "margin": _margin(margins, n_pairs),
        "order_consistency": {"n": both, "consistency": consistent / both if both else None},
        "duplicates": {
            "identical_pairs": identical,
            "near_duplicate_threshold": near_duplicate,
            "near_duplicate_pairs_written": near,
            "near_duplicate_share": near / n_pairs if n_pairs else None,
            "similarity": _summary(sims),
        },
        "reviewer_scores": reviewers.result(),
    }


def dataset_quality_of_run(run_dir: str | Path, *, near_duplicate: float = NEAR_DUPLICATE) -> dict[str, Any]:
    """:func:`dataset_quality` of the JSONL files in a ``mapo build`` output folder (absent files: empty)."""
    from mapo.core.store import iter_records, latest_records

    run = Path(run_dir)

    def read(name: str) -> Iterator[dict[str, Any]]:  # streamed: the records are never all in memory
        path = run / f"{name}.jsonl"
        if not path.is_file():
            return iter(())
        # a retried item's failed selection is history: its last selection counts
        return latest_records(path) if name == "selections" else iter_records(path)

    return dataset_quality(
        read("generations"), read("selections"), read("dpo"), read("kto"), near_duplicate=near_duplicate
    )


def _f(x: Any, digits: int = 2, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}f}"


def quality_markdown(q: Mapping[str, Any]) -> str:
    """The indicators as a short markdown section for the dataset card."""
    length, it, margin = q["length"], q["chosen_iteration"], q["margin"]
    oc, dup, rs = q["order_consistency"], q["duplicates"], q["reviewer_scores"]
    traj = ", ".join(f"{i}: {_f(s['mean'])}" for i, s in rs["by_iteration"].items()) or "-"
    lines = [
        "## Dataset quality",
        "",
        "| indicator | value |",
        "|---|---|",
        f"| DPO pairs | {q['items']['dpo_pairs']} |",
        f"| chosen/rejected length ratio (median, IQR) | {_f(length['ratio']['median'])} "
        f"({_f(length['ratio']['q1'])}-{_f(length['ratio']['q3'])}) |",
        f"| chosen is the longer response | {_f(length['chosen_longer_share'], pct=True)} |",
        f"| chosen is the last iteration | {_f(it['last_share'], pct=True)} (by iteration: {it['by_index']}) |",
        f"| judge score margin (median; zero-margin share) | {_f(margin['median'])}; {_f(margin['zero_share'], pct=True)} |",
        f"| order consistency (both orders judged) | {_f(oc['consistency'], pct=True)} (n={oc['n']}) |",
        f"| identical pairs skipped | {dup['identical_pairs']} |",
        f"| near-duplicate pairs written (similarity >= {dup['near_duplicate_threshold']:g}) | "
        f"{dup['near_duplicate_pairs_written']} |",
        f"| reviewer score by iteration (mean) | {traj} |",
        f"| iterations scored above the previous one | {_f(rs['improved_share'], pct=True)} |",
    ]
    return "\n".join(lines)
