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
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
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


def _length(dpo: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ratios, longer, chosen_len, rejected_len = [], 0, [], []
    for row in dpo:
        c, r = len(_text(row.get("chosen"))), len(_text(row.get("rejected")))
        chosen_len.append(c)
        rejected_len.append(r)
        longer += c > r
        if r:
            ratios.append(c / r)
    n = len(dpo)
    return {
        "n": n,
        "ratio": _summary(ratios),
        "chosen_longer_share": longer / n if n else None,
        "chosen_chars": _summary(chosen_len),
        "rejected_chars": _summary(rejected_len),
    }


def _chosen_iteration(selections: Sequence[Mapping[str, Any]], n_iterations: Mapping[str, int]) -> dict[str, Any]:
    chosen = [s for s in selections if s.get("best") is not None]
    by_index = Counter(int(s["best"]) for s in chosen)
    last = [s for s in chosen if s["key"] in n_iterations]
    n_last = sum(int(s["best"]) == n_iterations[s["key"]] - 1 for s in last)
    return {
        "n": len(chosen),
        "failed": sum(s.get("best") is None for s in selections),
        "by_index": {str(k): by_index[k] for k in sorted(by_index)},
        "last_share": n_last / len(last) if last else None,
    }


_BINS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


def _margin(dpo: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    values = [float(r["margin"]) for r in dpo if isinstance(r.get("margin"), (int, float))]
    hist: dict[str, int] = {}
    for lo, hi in zip(_BINS, (*_BINS[1:], None), strict=True):
        label = f"[{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
        hist[label] = sum(lo <= v and (hi is None or v < hi) for v in values)
    below = sum(v < 0 for v in values)
    if below:
        hist["< 0"] = below
    return {
        **_summary(values),
        "without_margin": len(dpo) - len(values),
        "zero_share": sum(v == 0 for v in values) / len(values) if values else None,
        "histogram": hist,
    }


def _order_consistency(selections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    both = consistent = 0
    for s in selections:
        for j in s.get("judgements") or []:
            picks = {}
            for a in j.get("attempts") or []:
                v = a.get("verdict") or {}
                if v.get("failure") is None and v.get("pick") is not None:
                    picks[a.get("order")] = v["pick"]
            if "AB" in picks and "BA" in picks:
                both += 1
                consistent += pick_to_label(picks["AB"]) == pick_to_label(picks["BA"], swapped=True)
    return {"n": both, "consistency": consistent / both if both else None}


def _duplicates(
    generations: Mapping[str, Mapping[str, Any]],
    selections: Sequence[Mapping[str, Any]],
    dpo: Sequence[Mapping[str, Any]],
    threshold: float,
) -> dict[str, Any]:
    identical = 0
    for s in selections:
        gen, best = generations.get(s["key"]), s.get("best")
        if gen is None or best is None:
            continue
        texts = [it.get("response", "") for it in gen.get("iterations", [])]
        if best < len(texts):
            identical += sum(t.strip() == texts[best].strip() for i, t in enumerate(texts) if i != best)
    sims = [similarity(_text(r.get("chosen")), _text(r.get("rejected"))) for r in dpo]
    near = sum(x >= threshold for x in sims)
    return {
        "identical_pairs": identical,
        "near_duplicate_threshold": threshold,
        "near_duplicate_pairs_written": near,
        "near_duplicate_share": near / len(dpo) if dpo else None,
        "similarity": _summary(sims),
    }


def _reviewer_scores(generations: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    per_iter: dict[int, list[float]] = defaultdict(list)
    per_reviewer: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    steps = improved = 0
    for gen in generations:
        prev: float | None = None
        for it in gen.get("iterations", []):
            idx = int(it.get("index", 0))
            score = it.get("score")
            if isinstance(score, (int, float)):
                per_iter[idx].append(float(score))
                if prev is not None:
                    steps += 1
                    improved += score > prev
                prev = float(score)
            else:
                prev = None
            for rv in it.get("reviews") or []:
                if isinstance(rv.get("score"), (int, float)):
                    per_reviewer[str(rv.get("reviewer"))][idx].append(float(rv["score"]))
    return {
        "by_iteration": {str(i): _summary(per_iter[i]) for i in sorted(per_iter)},
        "by_reviewer": {
            r: {str(i): statistics.fmean(v) for i, v in sorted(d.items())} for r, d in sorted(per_reviewer.items())
        },
        "steps": steps,
        "improved_share": improved / steps if steps else None,
    }


def dataset_quality(
    generations: Iterable[Mapping[str, Any]],
    selections: Iterable[Mapping[str, Any]],
    dpo: Iterable[Mapping[str, Any]],
    kto: Iterable[Mapping[str, Any]] = (),
    *,
    near_duplicate: float = NEAR_DUPLICATE,
) -> dict[str, Any]:
    """Quality indicators of a build run's records (module doc); JSON-ready."""
    gens = {str(g["key"]): g for g in generations}
    sels = list(selections)
    pairs = list(dpo)
    kto_rows = list(kto)
    n_iterations = {k: len(g.get("iterations", [])) for k, g in gens.items()}
    return {
        "items": {
            "generations": len(gens),
            "selections": len(sels),
            "dpo_pairs": len(pairs),
            "kto_rows": len(kto_rows),
        },
        "kto_desirable_share": sum(bool(r.get("label")) for r in kto_rows) / len(kto_rows) if kto_rows else None,
        "length": _length(pairs),
        "chosen_iteration": _chosen_iteration(sels, n_iterations),
        "margin": _margin(pairs),
        "order_consistency": _order_consistency(sels),
        "duplicates": _duplicates(gens, sels, pairs, near_duplicate),
        "reviewer_scores": _reviewer_scores(gens.values()),
    }


def dataset_quality_of_run(run_dir: str | Path, *, near_duplicate: float = NEAR_DUPLICATE) -> dict[str, Any]:
    """:func:`dataset_quality` of the JSONL files in a ``mapo build`` output folder (absent files: empty)."""
    from mapo.runs.store import iter_records

    run = Path(run_dir)

    def read(name: str) -> list[dict[str, Any]]:
        path = run / f"{name}.jsonl"
        return list(iter_records(path)) if path.is_file() else []

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
