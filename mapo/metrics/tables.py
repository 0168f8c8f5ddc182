"""Agreement tables of ``judgements.jsonl`` records: kappa per judge / juror / jury / debate,
per order, position bias and every jury subset; a plain-text rendering.

Moved here from :mod:`mapo.runs.evaluate` (which re-exports :func:`agreement_tables`,
:func:`combine_orders` and :func:`format_table`) so that ``mapo agreement``, ``mapo report``
and ``mapo reparse`` share them without importing the run machinery.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from mapo.core.types import Label
from mapo.judging.jury import TIE_BREAKS
from mapo.metrics.agreement import PositionBias, cohen_kappa, jury_subsets, label_from_scores, position_bias

__all__ = ["agreement_tables", "combine_orders", "format_table"]


def combine_orders(
    records: Iterable[Mapping[str, Any]], rule: str = "inconsistent_tie"
) -> tuple[Label | None, float | None, float | None]:
    """One item's verdict from its per-order records (dataset terms), as :class:`mapo.judging.judge.Judge`
    combines orders: a failed order is left out; two orders that disagree are a tie
    (``inconsistent_tie``) or decided by the mean scores (``mean_score``)."""
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


def agreement_tables(
    records: Iterable[Mapping[str, Any]], *, order_combine: str = "inconsistent_tie", subsets: bool = True
) -> dict[str, Any]:
    """Agreement of every (judge, setup) in ``records`` (judgements.jsonl rows) with the humans.

    Each group is scored on the items it judged; the human label comes from the records.
    Juror groups of one jury are also combined into every jury subset (sizes 2..n) with the
    jury's own rule, from the stored labels.
    """
    groups: dict[tuple[str, str, str, str | None], dict[str, dict[str, Mapping[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    humans: dict[str, Label] = {}
    jury_rules: dict[tuple[str, str], tuple[str, str]] = {}
    for r in records:
        gkey = (r["kind"], r["judge"], r["setup"], r.get("member_of"))
        groups[gkey][r["item_id"]][r["order"]] = r
        humans[r["item_id"]] = r["human"]
        if r["kind"] == "jury":
            detail = r.get("detail") or {}
            if "aggregate" in detail:
                jury_rules[(r["judge"], r["setup"].split("/")[0])] = (
                    detail["aggregate"],
                    detail.get("tie_break", "tie"),
                )
    results = []
    combined: dict[tuple[str, str, str | None], dict[str, tuple[Label | None, float | None, float | None]]] = {}
    for (kind, judge, setup, member_of), by_item in groups.items():
        ids = list(by_item)
        human = [humans[i] for i in ids]
        verdicts = {i: combine_orders(by_item[i].values(), order_combine) for i in ids}
        combined[(kind, judge, setup, member_of)] = verdicts  # type: ignore[index]
        agreement = cohen_kappa([verdicts[i][0] for i in ids], human)
        first = next(iter(by_item[ids[0]].values()))
        entry: dict[str, Any] = {
            "judge": judge,
            "kind": kind,
            "setup": setup,
            "member_of": member_of,
            "models": first.get("models", [judge]),
            **agreement.to_dict(),
        }
        orders = sorted({o for recs in by_item.values() for o in recs})
        if len(orders) > 1:
            entry["by_order"] = {
                o: cohen_kappa([by_item[i][o]["label"] if o in by_item[i] else None for i in ids], human).to_dict()
                for o in orders
            }
            pb: PositionBias = position_bias(
                (by_item[i].get("AB", {}).get("pick"), by_item[i].get("BA", {}).get("pick")) for i in ids
            )
            entry["position_bias"] = pb.to_dict()
        results.append(entry)
    results.sort(
        key=lambda e: (
            {"jury": 0, "debate": 0, "judge": 0, "juror": 1}[e["kind"]],
            e["kappa"] is None,
            -(e["kappa"] or 0.0),
        )
    )
    out: dict[str, Any] = {"order_combine": order_combine, "results": results}
    if subsets:
        juries: dict[tuple[str, str], dict[str, dict[str, tuple]]] = defaultdict(dict)
        for (kind, judge, setup, member_of), verdicts in combined.items():
            if kind == "juror" and member_of:
                juries[(member_of, setup)][judge] = verdicts
        subset_out = []
        for (jury, setup), members in juries.items():
            if len(members) < 2:
                continue
            position = {i: n for n, i in enumerate(humans)}
            ids = sorted(set.intersection(*(set(v) for v in members.values())), key=position.__getitem__)
            rule, tie_break = jury_rules.get((jury, setup), ("mode", "tie"))
            labels = {m: [v[i][0] for i in ids] for m, v in members.items()}
            scores = {
                m: [(v[i][1], v[i][2]) if None not in (v[i][1], v[i][2]) else None for i in ids]
                for m, v in members.items()
            }
            rows = jury_subsets(
                labels,
                [humans[i] for i in ids],
                rule=rule,
                tie_break=TIE_BREAKS.get(tie_break, tie_break),
                per_judge_scores=scores if rule == "mean_score" else None,
            )
            subset_out.append(
                {
                    "jury": jury,
                    "setup": setup,
                    "rule": rule,
                    "tie_break": tie_break,
                    "subsets": [{**r.to_dict(), "size": len(r.members)} for r in rows],
                }
            )
        if subset_out:
            out["jury_subsets"] = subset_out
    return out


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(tables: Mapping[str, Any], top_subsets: int = 10) -> str:
    """A plain-text table of ``agreement_tables`` output (kappa, n, failures, position bias)."""
    head = f"{'judge':44} {'kind':6} {'setup':30} {'kappa':>6} {'n':>5} {'fail':>5} {'acc':>6} {'P(1st)':>6} {'consist':>7}"
    lines = [head, "-" * len(head)]
    for e in tables["results"]:
        pb = e.get("position_bias") or {}
        lines.append(
            f"{_cut(e['judge'], 44):44} {e['kind']:6} {_cut(e['setup'], 30):30} {_fmt(e['kappa']):>6} {e['n']:>5} "
            f"{e['n_failed']:>5} {_fmt(e['accuracy']):>6} {_fmt(pb.get('first_rate'), 2):>6} {_fmt(pb.get('consistency'), 2):>7}"
        )
    for j in tables.get("jury_subsets", []):
        lines.append("")
        lines.append(
            f"jury subsets of {j['jury']} ({j['setup']}, rule {j['rule']}; a multi-way mode is a tie), best first:"
        )
        for s in j["subsets"][:top_subsets]:
            lines.append(f"  {_fmt(s['kappa']):>6}  n={s['n']:<4} fail={s['n_failed']:<3} {' + '.join(s['members'])}")
        if len(j["subsets"]) > top_subsets:
            lines.append(f"  ... {len(j['subsets']) - top_subsets} more in agreement.json")
    return "\n".join(lines)
