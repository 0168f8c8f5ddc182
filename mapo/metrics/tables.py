"""Agreement tables of ``judgements.jsonl`` records: kappa per judge / juror / jury / debate,
per order, position bias and every jury subset, each with its bootstrap interval and a
verdict against a reference evaluator; a plain-text rendering.

:mod:`mapo.runs.evaluate` re-exports :func:`agreement_tables`, :func:`combine_orders` and
:func:`format_table`; ``mapo agreement``, ``mapo report`` and ``mapo reparse`` use them too.

Uncertainty (:mod:`mapo.metrics.uncertainty`): every entry (and every jury subset) gets
``kappa_ci`` and ``accuracy_ci`` ([low, high], a seeded bootstrap over the table's items) and
``vs_reference``: the paired difference of its kappa from the reference's (default: the
evaluator with the highest kappa among the table's ``results`` that are not jurors, i.e. the
judges, juries and debates that were run; never a jury subset formed afterwards, which is
chosen on the same items; the default is itself a choice on these items, so
``tables["uncertainty"]["reference_choice"]`` says how it was chosen and carries its selection-corrected
kappa, :func:`mapo.metrics.best_of.selection_corrected`) with its interval and a verdict (better / not_worse /
lower_within_margin / lower / worse / cannot_tell: :func:`mapo.metrics.uncertainty.verdict`).
The settings are in ``tables["uncertainty"]``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from mapo.core.types import Label, record_kind
from mapo.core.verdicts import combine_orders
from mapo.metrics.agreement import (
    PositionBias,
    ScorePair,
    cohen_kappa,
    jury_labels,
    jury_subsets,
    position_bias,
)
from mapo.metrics.bias import position_intervals
from mapo.metrics.uncertainty import (
    CONFIDENCE,
    MARGIN,
    N_RESAMPLES,
    SEED,
    Bootstrap,
    PairedComparison,
    kappa_intervals,
    needed_text,
    verdict,
    verdict_words,
)

__all__ = [
    "ANNOTATORS_KEY",
    "LABELS_KEY",
    "add_uncertainty",
    "agreement_tables",
    "build_tables",
    "ceiling_line",
    "combine_orders",
    "each_annotator_lines",
    "format_table",
    "item_order",
    "jury_subset_block",
    "reference_choice_text",
]

VERDICT_RULES = (
    "better: diff_ci low > 0; not_worse: low > -margin and the interval contains 0; "
    "lower_within_margin: -margin < low and high < 0; lower: high < 0 and low <= -margin; "
    "worse: high < -margin; cannot_tell: the interval contains 0 and -margin"
)
"""The verdict rules in one line, as written into ``tables["uncertainty"]["verdicts"]``."""

ANNOTATORS_KEY = "_annotators"
"""Private key of the tables during construction: item id -> {annotator: label}; removed by :func:`add_uncertainty`."""

LABELS_KEY = "_labels"
"""Private key of a table entry during construction: item id -> label; removed by :func:`add_uncertainty`."""

_ID_PARTS = re.compile(r"(\d+)")


def item_order(item_id: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    """Sort key of an item id: numbers as numbers (``"2" < "10"``, ``"q2-t1" < "q10-t1"``), the rest as
    text, the id itself last (``"07"`` and ``"7"`` keep one order)."""
    text = str(item_id)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _ID_PARTS.split(text) if p), text


def jury_subset_block(
    per_judge: Mapping[str, Mapping[str, Label | None]],
    humans: Mapping[str, Label],
    *,
    jury: str,
    setup: str,
    rule: str = "mode",
    tie_break: str = "tie",
    sizes: Iterable[int] | None = None,
    per_judge_scores: Mapping[str, Mapping[str, ScorePair | None]] | None = None,
) -> dict[str, Any] | None:
    """Every jury formed from ``per_judge`` (judge -> item id -> label) on the items all of them
    judged, best first, as a ``jury_subsets`` block of a table (None when < 2 judges)."""
    if len(per_judge) < 2:
        return None
    position = {i: n for n, i in enumerate(humans)}
    ids = sorted(set.intersection(*(set(v) for v in per_judge.values())), key=position.__getitem__)
    labels = {j: [v[i] for i in ids] for j, v in per_judge.items()}
    scores = {j: [v.get(i) for i in ids] for j, v in per_judge_scores.items()} if per_judge_scores else None
    rows = jury_subsets(
        labels,
        [humans[i] for i in ids],
        sizes=sizes,
        rule=rule,
        tie_break=tie_break,
        per_judge_scores=scores if rule == "mean_score" else None,
    )
    subsets = []
    for r in rows:
        picks = jury_labels(
            labels, r.members, rule, per_judge_scores=scores if rule == "mean_score" else None, tie_break=tie_break
        )
        subsets.append({**r.to_dict(), "size": len(r.members), LABELS_KEY: dict(zip(ids, picks, strict=True))})
    return {"jury": jury, "setup": setup, "rule": rule, "tie_break": tie_break, "subsets": subsets}


def agreement_tables(
    records: Iterable[Mapping[str, Any]],
    *,
    order_combine: str = "inconsistent_tie",
    subsets: bool = True,
    intervals: bool = True,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    margin: float = MARGIN,
    reference: str | None = None,
) -> dict[str, Any]:
    """Agreement of every (judge, setup) in ``records`` (judgements.jsonl rows) with the humans.

    Each group is scored on the items it judged; the human label comes from the records.
    Juror groups of one jury are also combined into every jury subset (sizes 2..n) with the
    jury's own rule, from the stored labels. ``intervals`` adds bootstrap intervals and the
    verdicts against ``reference`` (module doc; settings ``n_resamples``, ``seed``,
    ``confidence``, ``margin``: :func:`mapo.metrics.uncertainty.stats_options` reads them from a config).
    """
    out, humans = build_tables(records, order_combine=order_combine, subsets=subsets)
    settings = Bootstrap(n_resamples=n_resamples, seed=seed, confidence=confidence)
    add_uncertainty(out, humans, settings=settings, margin=margin, reference=reference, intervals=intervals)
    return out


def build_tables(
    records: Iterable[Mapping[str, Any]], *, order_combine: str = "inconsistent_tie", subsets: bool = True
) -> tuple[dict[str, Any], dict[str, Label]]:
    """The point estimates of :func:`agreement_tables` and the human labels (item id -> label);
    entries still carry their labels (:data:`LABELS_KEY`) for :func:`add_uncertainty`."""
    groups: dict[tuple[str, str, str, str | None], dict[str, dict[str, Mapping[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    humans: dict[str, Label] = {}
    annotators: dict[str, dict[str, Label]] = {}
    jury_rules: dict[tuple[str, str], tuple[str, str]] = {}
    for r in records:
        gkey = (r["kind"], r["judge"], r["setup"], r.get("member_of"))
        groups[gkey][r["item_id"]][r["order"]] = r
        humans[r["item_id"]] = r["human"]
        if r.get("annotators"):
            annotators[r["item_id"]] = dict(r["annotators"])
        if record_kind(r["kind"]).aggregate:  # a jury: its rule forms its subsets
            detail = r.get("detail") or {}
            if "aggregate" in detail:
                jury_rules[(r["judge"], r["setup"].split("/")[0])] = (
                    detail["aggregate"],
                    detail.get("tie_break", "tie"),
                )
    # items in one order whatever order the records came in (mapo evaluate appends them as they finish):
    # the bootstrap resamples positions, so the same records must give the same intervals
    humans = {i: humans[i] for i in sorted(humans, key=item_order)}
    position = {i: n for n, i in enumerate(humans)}
    results = []
    combined: dict[tuple[str, str, str, str | None], dict[str, tuple[Label | None, float | None, float | None]]] = {}
    for (kind, judge, setup, member_of), by_item in groups.items():
        ids = sorted(by_item, key=position.__getitem__)
        human = [humans[i] for i in ids]
        verdicts = {i: combine_orders(by_item[i].values(), order_combine) for i in ids}
        combined[(kind, judge, setup, member_of)] = verdicts
        agreement = cohen_kappa([verdicts[i][0] for i in ids], human)
        first = next(iter(by_item[ids[0]].values()))
        entry: dict[str, Any] = {
            "judge": judge,
            "kind": kind,
            "setup": setup,
            "member_of": member_of,
            "models": first.get("models", [judge]),
            **agreement.to_dict(),
            LABELS_KEY: {i: v[0] for i, v in verdicts.items()},
        }
        orders = sorted({o for recs in by_item.values() for o in recs})
        if len(orders) > 1:
            entry["by_order"] = {
                o: {
                    **cohen_kappa([by_item[i][o]["label"] if o in by_item[i] else None for i in ids], human).to_dict(),
                    LABELS_KEY: {i: by_item[i][o]["label"] if o in by_item[i] else None for i in ids},
                }
                for o in orders
            }
            picks = [(by_item[i].get("AB", {}).get("pick"), by_item[i].get("BA", {}).get("pick")) for i in ids]
            pb: PositionBias = position_bias(picks)
            entry["position_bias"] = pb.to_dict()
            entry["_picks"] = picks
        results.append(entry)
    results.sort(
        key=lambda e: (
            record_kind(e["kind"]).member,  # evaluators of any kind first, then the members of one (jurors)
            e["kappa"] is None,
            -(e["kappa"] or 0.0),
        )
    )
    out: dict[str, Any] = {"order_combine": order_combine, "results": results}
    if annotators:
        out[ANNOTATORS_KEY] = annotators
    if subsets:
        juries: dict[tuple[str, str], dict[str, dict[str, tuple]]] = defaultdict(dict)
        for (kind, judge, setup, member_of), verdicts in combined.items():
            if record_kind(kind).member and member_of:
                juries[(member_of, setup)][judge] = verdicts
        subset_out = []
        for (jury, setup), members in juries.items():
            rule, tie_break = jury_rules.get((jury, setup), ("mode", "tie"))
            block = jury_subset_block(
                {m: {i: x[0] for i, x in v.items()} for m, v in members.items()},
                humans,
                jury=jury,
                setup=setup,
                rule=rule,
                tie_break=tie_break,
                per_judge_scores={
                    m: {i: (x[1], x[2]) if None not in (x[1], x[2]) else None for i, x in v.items()}
                    for m, v in members.items()
                },
            )
            if block is not None:
                subset_out.append(block)
        if subset_out:
            out["jury_subsets"] = subset_out
    return out, humans


# --------------------------------------------------------------------------- uncertainty


def _entries(tables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every entry that carries a kappa: results, then every jury subset."""
    return list(tables.get("results", [])) + [s for j in tables.get("jury_subsets", []) for s in j["subsets"]]


def _name(entry: Mapping[str, Any]) -> str:
    return entry["judge"] if "judge" in entry else "+".join(entry["members"])


def _reference(tables: Mapping[str, Any], entries: list[dict[str, Any]], reference: str | None) -> int | None:
    """Index (into ``entries``) of the reference: the named evaluator, else the best judge / jury / debate."""
    if reference is not None:
        for i, e in enumerate(entries):
            if _name(e) == reference:
                return i
        known = ", ".join(dict.fromkeys(_name(e) for e in tables.get("results", [])))
        raise ValueError(f"reference {reference!r} is not in the table; evaluators: {known}")
    candidates = [
        i
        for i, e in enumerate(tables.get("results", []))
        if not record_kind(e["kind"]).member and e.get("kappa") is not None
    ]
    return max(candidates, key=lambda i: entries[i]["kappa"]) if candidates else None


def _ci(lo: Any, hi: Any) -> list[float | None]:
    return [None if not np.isfinite(lo) else float(lo), None if not np.isfinite(hi) else float(hi)]


def add_uncertainty(
    tables: dict[str, Any],
    humans: Mapping[str, Label],
    *,
    settings: Bootstrap | None = None,
    margin: float = MARGIN,
    reference: str | None = None,
    intervals: bool = True,
) -> None:
    """Add ``kappa_ci``, ``accuracy_ci`` and ``vs_reference`` to every entry of ``tables``
    (entries carry their labels under :data:`LABELS_KEY`, which is removed), and the
    settings under ``tables["uncertainty"]``. ``humans``: item id -> human label."""
    settings = settings or Bootstrap()
    entries = _entries(tables)
    annotators = tables.pop(ANNOTATORS_KEY, None)
    if annotators and entries:
        _human_ceiling(tables, humans, annotators, settings if intervals else None)
    if intervals and entries and len(humans) < 2:  # a bootstrap over one item has no spread to show
        tables["intervals_skipped"] = f"{len(humans)} item(s): a bootstrap needs at least 2; no interval, no verdict"
        intervals = False
    if intervals and entries:
        items = list(humans)
        human = [humans[i] for i in items]
        ref = _reference(tables, entries, reference)
        columns = [[e[LABELS_KEY].get(i) for i in items] for e in entries]
        r = kappa_intervals(columns, human, reference=ref, settings=settings)
        ref_name = _name(entries[ref]) if ref is not None else None
        for k, e in enumerate(entries):
            e["kappa_ci"] = _ci(r["kappa_low"][k], r["kappa_high"][k])
            e["accuracy_ci"] = _ci(r["accuracy_low"][k], r["accuracy_high"][k])
            if ref is None or ref_name is None:
                continue
            if k == ref:
                e["vs_reference"] = {"reference": ref_name, "verdict": "reference", "text": "reference"}
                continue
            d = None if e.get("kappa") is None or entries[ref].get("kappa") is None else float(r["diff"][k])
            lo, hi = _ci(r["diff_low"][k], r["diff_high"][k])
            n = sum(a is not None and b is not None for a, b in zip(columns[k], columns[ref], strict=True))
            v, need = verdict(d, lo, hi, n, margin)
            e["vs_reference"] = PairedComparison(_name(e), ref_name, "kappa", d, lo, hi, n, margin, v, need).to_dict()
            if ref_name in (e.get("members") or ()):
                # a jury that calls the reference: how it compares, never a stand-in for it
                e["vs_reference"]["contains_reference"] = True
                e["vs_reference"]["text"] += f" (the jury contains {ref_name}: it does not replace it)"
        for block in tables.get("jury_subsets", []):
            _selection(block, items, human, settings)
        choice = _reference_choice(tables, entries, ref, reference, items, human, settings)
        for e in tables.get("results", []):
            for sub in (e.get("by_order") or {}).values():
                rr = kappa_intervals([[sub[LABELS_KEY].get(i) for i in items]], human, settings=settings)
                sub["kappa_ci"] = _ci(rr["kappa_low"][0], rr["kappa_high"][0])
            if "_picks" in e and e.get("position_bias"):
                e["position_bias"].update(position_intervals(e["_picks"], settings))
        tables["uncertainty"] = {
            **settings.to_dict(),
            "method": f"{settings.method} bootstrap over items",
            "n_items": len(items),
            "reference": ref_name,
            "reference_choice": choice,
            "margin": margin,
            "verdicts": VERDICT_RULES,
        }
    for e in entries:
        e.pop(LABELS_KEY, None)
        e.pop("_picks", None)
        for sub in (e.get("by_order") or {}).values():
            sub.pop(LABELS_KEY, None)


REFERENCE_CHOSEN = (
    "the highest kappa among the judges, juries and debates that were run (never a jury subset formed "
    "afterwards), chosen on these same items: a best-of, so its kappa is optimistic and the verdicts against it "
    "lean towards 'lower'; name the reference beforehand (mapo agreement --reference NAME, stats.reference) "
    "for verdicts that are not a selection"
)
"""What the default reference is, as written into ``tables["uncertainty"]["reference_choice"]["how"]``."""


def _reference_choice(
    tables: Mapping[str, Any],
    entries: list[dict[str, Any]],
    ref: int | None,
    named: str | None,
    items: list[str],
    human: list[Label],
    settings: Bootstrap,
) -> dict[str, Any] | None:
    """How the reference was chosen: named, or the best of the evaluators that were run on these items,
    with that choice's selection-corrected kappa (:func:`mapo.metrics.best_of.selection_corrected`, the
    correction the best jury gets) beside its optimistic one."""
    if ref is None:
        return None
    if named is not None:
        return {"how": "named (mapo agreement --reference, stats.reference), not chosen on these items"}
    from mapo.metrics.best_of import selection_corrected

    cands = [e for e in tables.get("results", []) if not record_kind(e["kind"]).member and e.get("kappa") is not None]
    out: dict[str, Any] = {"how": REFERENCE_CHOSEN, "n_candidates": len(cands)}
    if len(cands) < 2 or len(items) < 4:
        out["optimistic"] = entries[ref].get("kappa")
        return out  # nothing to choose between (or too few items to split): no correction
    r = selection_corrected([[e[LABELS_KEY].get(i) for i in items] for e in cands], human, settings=settings)
    out.update(
        {
            "optimistic": r["optimistic"],
            "corrected": r["corrected"],
            "corrected_ci": r["corrected_ci"],
            "chosen_share": r["chosen_share"],
            "most_chosen": [{"judge": _name(cands[c]), "share": x} for c, x in r["most_chosen"]],
            "n_splits": r["n_splits"],
            "method": r["method"],
        }
    )
    return out


def reference_choice_text(u: Mapping[str, Any]) -> str | None:
    """One sentence on how ``u["reference"]`` (``tables["uncertainty"]``) was chosen, with its corrected kappa."""
    c = u.get("reference_choice") or {}
    if not c or not u.get("reference"):
        return None
    if "n_candidates" not in c:
        return f"reference {u['reference']}: {c['how']}."
    text = (
        f"reference {u['reference']}: the highest kappa of the {c['n_candidates']} evaluators that were run, "
        "chosen on these same items (a best-of: its kappa is optimistic and the verdicts against it lean towards "
        "'lower')"
    )
    if c.get("corrected") is not None or c.get("corrected_ci"):
        text += (
            f"; {_fmt(c.get('optimistic'))} as chosen, selection-corrected "
            f"{_with_ci(c.get('corrected'), c.get('corrected_ci'))} (chosen on half the items, scored on the other "
            f"half); the split-half choice was {u['reference']} in {100 * float(c.get('chosen_share') or 0):.0f}% "
            "of splits"
        )
    return text + ". Name one beforehand with --reference NAME (stats.reference) for verdicts that are no selection."


def _selection(block: dict[str, Any], items: list[str], human: list[Label], settings: Bootstrap) -> None:
    """``block["selection"]``: the best subset's kappa corrected for having been chosen among all of
    them on these items (:func:`mapo.metrics.best_of.selection_corrected`), overall and per size;
    the subsets' own kappas stay as they are (the optimistic figure is the published one)."""
    from mapo.metrics.best_of import selection_corrected

    subsets = [s for s in block.get("subsets", []) if s.get("kappa") is not None]
    if len(items) < 4 or not subsets:
        return

    def one(group: list[dict[str, Any]]) -> dict[str, Any]:
        r = selection_corrected([[s[LABELS_KEY].get(i) for i in items] for s in group], human, settings=settings)
        r["best"] = list(group[r["best"]]["members"])
        r["most_chosen"] = [{"members": list(group[c]["members"]), "share": x} for c, x in r["most_chosen"]]
        return r

    out = one(subsets)
    sizes = sorted({len(s["members"]) for s in subsets})
    out["by_size"] = {str(k): one([s for s in subsets if len(s["members"]) == k]) for k in sizes if k > 1}
    block["selection"] = out
    best = subsets[0]
    best["selected"] = True  # the maximum over every subset: its kappa is optimistic (block["selection"])
    best["selection_corrected"] = out["corrected"]
    best["selection_corrected_ci"] = out["corrected_ci"]


def _human_ceiling(
    tables: dict[str, Any],
    humans: Mapping[str, Label],
    annotators: Mapping[str, Mapping[str, Label]],
    settings: Bootstrap | None,
) -> None:
    """``tables["human_agreement"]`` (:func:`mapo.metrics.annotators.human_agreement`) on the items
    whose annotators are known (all with the same annotators), and beside each result's majority kappa
    its leave-one-out kappa (``loo_kappa``, ``loo_kappa_ci``: read it against the ceiling) and, each
    annotator as a separate human, its kappa against each annotator alone (``per_annotator_kappa``)
    and their mean (``each_annotator_kappa``, ``each_annotator_kappa_ci``: read it against two
    annotators' mean pairwise kappa). The best subset of each jury block gets the same fields.
    ``settings`` None: no intervals."""
    from mapo.metrics.annotators import human_agreement

    names = list(next(iter(annotators.values())))
    items = [i for i in humans if i in annotators and list(annotators[i]) == names]
    if not items:
        return
    scored = {f"r{k}": e for k, e in enumerate(tables.get("results", []))}
    for b, block in enumerate(tables.get("jury_subsets", [])):
        best = [s for s in block.get("subsets", []) if s.get("kappa") is not None][:1]
        scored.update({f"s{b}": e for e in best})  # the selected jury: read against the ceiling too
    judges = {key: [e[LABELS_KEY].get(i) for i in items] for key, e in scored.items()}
    block = human_agreement(
        [[annotators[i][a] for a in names] for i in items],
        names,
        judges,
        settings=settings or Bootstrap(n_resamples=1),
    )
    keep_ci = settings is not None
    for key, e in scored.items():
        loo = block["judges"][key]
        e["loo_kappa"] = loo["kappa"]
        e["loo_kappa_ci"] = loo["kappa_ci"] if keep_ci else None
        e["each_annotator_kappa"] = loo["each"]["kappa"]
        e["each_annotator_kappa_ci"] = loo["each"]["kappa_ci"] if keep_ci else None
        e["per_annotator_kappa"] = {
            a: {"kappa": x["kappa"], "kappa_ci": x["kappa_ci"] if keep_ci else None}
            for a, x in loo["each"]["per_annotator"].items()
        }
    del block["judges"]
    if not keep_ci:
        for x in [
            *block["pairwise"],
            block["fleiss"],
            block["ceiling"],
            *block["ceiling"]["per_annotator"],
            block["each_annotator"]["human"],
        ]:
            x["kappa_ci"] = None
    block["n_items_without_annotators"] = len(humans) - len(items)
    block["loo_kappa"] = (
        "loo_kappa of a result: the evaluator against the majority of the annotators other than one, "
        "mean over the annotators: the figure to read against the ceiling"
    )
    block["each_annotator"]["fields"] = (
        "each_annotator_kappa of a result: the evaluator against one annotator, mean over the annotators "
        "(per_annotator_kappa: each one): the figure to read against each_annotator.human"
    )
    tables["human_agreement"] = block


def ceiling_line(tables: Mapping[str, Any]) -> str | None:
    """ "human ceiling ...: 0.412 [0.31, 0.50] (Fleiss 0.44 [...]; 3 annotators, 200 items)", or None."""
    h = tables.get("human_agreement")
    if not h:
        return None
    c, f = h["ceiling"], h["fleiss"]
    return (
        f"human ceiling (each of {len(h['annotators'])} annotators vs the majority of the others, mean): "
        f"{_with_ci(c['kappa'], c.get('kappa_ci'))}; Fleiss' kappa {_with_ci(f['kappa'], f.get('kappa_ci'))}; "
        "pairwise Cohen "
        + ", ".join(f"{p['a']}-{p['b']} {_with_ci(p['kappa'], p.get('kappa_ci'))}" for p in h["pairwise"])
        + f" ({h['n_items']} items)"
    )


def each_annotator_lines(tables: Mapping[str, Any]) -> list[str]:
    """The "each annotator as a separate human" lines of the printed table (none without several annotators)."""
    h = tables.get("human_agreement") or {}
    each = h.get("each_annotator")
    if not each:
        return []
    hum = each["human"]
    lines = [
        f"each annotator as a separate human (kappa against one annotator; read the mean against one human vs "
        f"another: mean pairwise kappa {_with_ci(hum['kappa'], hum.get('kappa_ci'))}):"
    ]
    for e in tables["results"]:
        per = e.get("per_annotator_kappa") or {}
        lines.append(
            f"  {_cut(e['judge'], 40):40} mean {_with_ci(e.get('each_annotator_kappa'), e.get('each_annotator_kappa_ci')):>22}"
            "  " + ", ".join(f"{a} {_with_ci(x['kappa'], x.get('kappa_ci'))}" for a, x in per.items())
        )
    return lines


# --------------------------------------------------------------------------- text


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _with_ci(x: float | None, ci: list[float | None] | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if not ci or ci[0] is None or ci[1] is None:
        return _fmt(x, digits)
    return f"{_fmt(x, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _verdict_cell(e: Mapping[str, Any]) -> str:
    v = e.get("vs_reference") or {}
    if not v:
        return ""
    if v["verdict"] == "reference":
        return "reference"
    diff = f"{v['diff']:+.3f} " if v.get("diff") is not None else ""
    if v["verdict"] == "cannot_tell":
        return f"{diff}cannot tell with n={v['n']}{needed_text(v.get('n_needed'))}" + (
            f" (contains {v['reference']})" if v.get("contains_reference") else ""
        )
    inside = f" (contains {v['reference']})" if v.get("contains_reference") else ""
    return diff + verdict_words(v["verdict"], v.get("n_needed")) + inside


def format_table(tables: Mapping[str, Any], top_subsets: int = 10, json_path: str | None = "agreement.json") -> str:
    """A plain-text table of ``agreement_tables`` output: kappa with its interval, n, failures,
    accuracy, position bias and the verdict against the reference. ``json_path`` names the
    file holding the full table (in the "... more in" hint)."""
    head = (
        f"{'judge':40} {'kind':6} {'setup':24} {'kappa [95% CI]':>22} {'n':>4} {'fail':>4} {'acc':>5} "
        f"{'P(1st)':>6} {'consist':>7}  vs reference"
    )
    lines = [head, "-" * len(head)]
    for e in tables["results"]:
        pb = e.get("position_bias") or {}
        lines.append(
            f"{_cut(e['judge'], 40):40} {e['kind']:6} {_cut(e['setup'], 24):24} "
            f"{_with_ci(e['kappa'], e.get('kappa_ci')):>22} {e['n']:>4} {e['n_failed']:>4} {_fmt(e['accuracy'], 2):>5} "
            f"{_fmt(pb.get('first_rate'), 2):>6} {_fmt(pb.get('consistency'), 2):>7}  {_verdict_cell(e)}"
        )
    ceiling = ceiling_line(tables)
    if ceiling:
        lines.append("")
        lines.append(ceiling)
        lines.append(
            "  leave-one-out kappa of each evaluator (against the majority of the others, mean; read it against "
            "the ceiling): "
            + ", ".join(
                f"{e['judge']} {_with_ci(e.get('loo_kappa'), e.get('loo_kappa_ci'))}" for e in tables["results"]
            )
        )
        lines += each_annotator_lines(tables)
    for j in tables.get("jury_subsets", []):
        lines.append("")
        lines.append(
            f"jury subsets of {j['jury']} ({j['setup']}, rule {j['rule']}; a multi-way mode is a tie), best first:"
        )
        sel = j.get("selection")
        if sel:
            lines.append(
                f"  best of {sel['n_candidates']} subsets on the same items: {_fmt(sel['optimistic'])} (optimistic); "
                f"selection-corrected (chosen on half the items, scored on the other half, {sel['n_splits']} splits): "
                f"{_with_ci(sel['corrected'], sel['corrected_ci'])}; the split-half choice was this jury in "
                f"{100 * sel['chosen_share']:.0f}% of splits"
                + (
                    f"; leave-one-out kappa {_with_ci(j['subsets'][0]['loo_kappa'], j['subsets'][0].get('loo_kappa_ci'))}"
                    " (read it against the human ceiling)"
                    if j["subsets"] and j["subsets"][0].get("loo_kappa") is not None
                    else ""
                )
            )
        for s in j["subsets"][:top_subsets]:
            lines.append(
                f"  {_with_ci(s['kappa'], s.get('kappa_ci')):>22}  n={s['n']:<4} fail={s['n_failed']:<3} "
                f"{' + '.join(s['members'])}   {_verdict_cell(s)}"
            )
        if len(j["subsets"]) > top_subsets:
            where = f" in {json_path}" if json_path else " (not shown)"
            lines.append(f"  ... {len(j['subsets']) - top_subsets} more{where}")
    if tables.get("intervals_skipped"):
        lines += ["", f"[low, high]: none ({tables['intervals_skipped']})."]
    u = tables.get("uncertainty")
    if u:
        lines.append("")
        lines.append(
            f"[low, high]: {100 * u['confidence']:g}% {u['method']} ({u['n_items']} items, "
            f"{u['n_resamples']} resamples, seed {u['seed']})."
        )
        chosen = reference_choice_text(u)
        if chosen:
            lines.append(chosen)
        if u.get("reference"):
            lines.append(
                f"vs reference = kappa - kappa({u['reference']}), paired bootstrap: 'better' = the interval lies "
                f"above 0; 'not worse' = it lies above -{u['margin']:g} and contains 0; 'significantly lower, within "
                f"the margin' = it lies in (-{u['margin']:g}, 0); 'significantly lower (margin not excluded)' = it "
                f"lies below 0 and contains -{u['margin']:g}; 'worse' = it lies below -{u['margin']:g}; n needed "
                "assumes the interval shrinks like 1/sqrt(n)."
            )
    return "\n".join(lines)
