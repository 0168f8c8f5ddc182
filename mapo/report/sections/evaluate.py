"""Sections of a ``mapo evaluate`` run (and of a ``mapo agreement`` output): kappa per judge / jury /
debate with its 95% interval and the verdict against the reference evaluator, confusion matrices,
bias diagnostics (position, length, candidate preference), parse failures, jury subsets and
examples where the judge and the humans disagree."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mapo.core.types import record_kind
from mapo.metrics.tables import reference_choice_text
from mapo.metrics.uncertainty import VERDICT_WORDS
from mapo.report import plots
from mapo.report.document import Block, Example, Fig, Section, Table, Text, ci, num, pct
from mapo.report.run import Run
from mapo.report.sections.bias import bias_sections
from mapo.report.sections.common import reason, turn_fields, verdict_cell

__all__ = ["VERDICT_WORDS", "agreement", "agreement_overview", "evaluate_sections"]


def agreement(run: Run) -> tuple[dict[str, Any] | None, str | None]:
    """(``agreement.json``, None), or the tables recomputed from judgements.jsonl with a note saying so;
    (None, None) before any judgement."""
    a = run.json("agreement.json")
    if a is not None:
        return a, None
    recs = run.records("judgements.jsonl")
    if not recs:
        return None, None
    from mapo.metrics.tables import agreement_tables  # loaded only for a run that stopped early

    note = "agreement.json is missing (the run did not finish): figures recomputed from judgements.jsonl."
    return agreement_tables(recs), note


def _diff_cell(e: Mapping[str, Any]) -> str:
    """``kappa - kappa(reference)`` with its paired interval, e.g. "-0.016 [-0.132, +0.094]"."""
    v = e.get("vs_reference") or {}
    if v.get("verdict") == "reference":
        return "0 (reference)"
    return ci(v.get("diff"), v.get("diff_ci"), sign=True)


def _reference_note(tables: Mapping[str, Any]) -> Text | None:
    """How to read the intervals and the verdict column (None when the tables carry no intervals)."""
    u = tables.get("uncertainty") or {}
    if not u:
        return None
    text = (
        f"[low, high]: {100 * float(u.get('confidence', 0.95)):g}% {u.get('method', 'bootstrap')} "
        f"({num(u.get('n_items'))} items, {num(u.get('n_resamples'))} resamples, seed {u.get('seed')})."
    )
    if u.get("reference"):
        m = float(u.get("margin", 0.05))
        text += (
            f" Δκ = kappa − kappa of the reference {u['reference']} on the same items (paired bootstrap). "
            f"Verdict: 'better' = Δκ's interval lies above 0; 'not worse' = it lies above −{m:g} and contains 0 "
            f"(non-inferior at margin {m:g}); 'significantly lower, within the margin' = it lies between −{m:g} "
            f"and 0; 'significantly lower (margin not excluded)' = it lies below 0 but contains −{m:g}; "
            f"'worse' = it lies below −{m:g}; 'cannot tell' = it contains both 0 and −{m:g} (items needed assumes "
            "the interval narrows like 1/√n). The reference is the judge, jury or debate with the highest kappa "
            "among those that were run (never a jury subset chosen afterwards) unless one was named "
            "(mapo agreement --reference NAME, stats.reference). A jury that contains the reference still calls it: "
            "a verdict on such a jury says how it compares, not that it can stand in for the reference."
        )
        chosen = reference_choice_text(u)
        if chosen:
            text += " " + chosen[0].upper() + chosen[1:]
    return Text(text, note=True)


_KAPPA_HEADER = ["judge", "kind", "setup", "kappa [95% CI]", "accuracy [95% CI]", "n", "failed", "failure rate"]
_KAPPA_HEADER += ["Δκ vs reference [95% CI]", "verdict"]


def evaluate_sections(run: Run, n_examples: int) -> list[Section]:
    """Every section specific to an evaluate run, in report order."""
    tables, note = agreement(run)
    if tables is None:
        return [Section("Agreement with humans", [Text("No judgements recorded yet.", note=True)])]
    results = list(tables.get("results") or [])
    sections = [_kappa(run, tables, results, note)]
    if (tables.get("human_agreement") or {}).get("each_annotator"):
        sections.append(_each_annotator(tables["human_agreement"], results))
    if any(e.get("by_order") for e in results):
        sections.append(_by_order(results))
    sections.append(
        Section(
            "Confusion matrices",
            [
                Fig(
                    "confusion",
                    plots.confusion_grid(results[:12]),
                    "Rows: the human label; columns: the judge's (failures left out).",
                )
            ],
        )
    )
    sections += bias_sections(run, tables)
    if any(e.get("position_bias") for e in results):
        sections.append(_position_bias(results))
    sections.append(_parse_failures(run, results))
    ceiling = (tables.get("human_agreement") or {}).get("ceiling")
    sections += [_jury_subsets(j, results, ceiling) for j in tables.get("jury_subsets") or []]
    ex = _disagreements(run, n_examples)
    if ex:
        sections.append(Section("Examples where the judge and the humans disagree", list(ex)))
    return sections


def _kappa(run: Run, tables: Mapping[str, Any], results: Sequence[Mapping[str, Any]], note: str | None) -> Section:
    blocks: list[Block] = []
    if note:
        blocks.append(Text(note))
    ed = tables.get("eval_data") or run.manifest.get("eval_data") or {}
    if run.agreement_file is not None:
        data = f"Data: human labels {tables.get('humans') or ', '.join(tables.get('sources') or []) or '?'}"
    else:
        data = f"Data: {ed.get('loader', '?')} ({num(ed.get('n_items'))} items)"
    orders = list(tables.get("orders") or run.manifest.get("orders") or ["AB"])
    if len(orders) > 1 or any(e.get("by_order") for e in results):
        how = f"orders {', '.join(orders)}, combined by {tables.get('order_combine', '–')}"
    else:
        how = f"one order ({', '.join(orders)}), so no position bias can be measured"
    blocks.append(Text(f"{data}; {how}. Failed judgements are left out of kappa and counted.", note=True))
    ref_note = _reference_note(tables)
    if ref_note:
        blocks.append(ref_note)
    rows = []
    for e in results:
        rows.append(
            [
                e.get("judge"),
                e.get("kind"),
                e.get("setup"),
                ci(e.get("kappa"), e.get("kappa_ci")),
                ci(e.get("accuracy"), e.get("accuracy_ci"), percent=True),
                e.get("n"),
                e.get("n_failed"),
                pct(e.get("failure_rate")),
                _diff_cell(e) if e.get("vs_reference") else "–",
                verdict_cell(e) or "–",
            ]
        )
    header = list(_KAPPA_HEADER)
    ha = tables.get("human_agreement")
    caption = "Cohen's kappa of each judge, juror, jury or debate with the human labels, with its 95% interval."
    if ha:
        header.append("leave-one-out kappa [95% CI]")
        for row, e in zip(rows, results, strict=True):
            row.append(ci(e.get("loo_kappa"), e.get("loo_kappa_ci")))
        c = ha["ceiling"]
        rows.append(
            ["humans (ceiling)", "humans", "annotator vs the others", "–", "–", ha.get("n_items"), 0, "–", "–"]
            + ["ceiling", ci(c.get("kappa"), c.get("kappa_ci"))]
        )
        blocks.append(Text(_ceiling_note(ha), note=True))
        caption += (
            " Dashed line: the human ceiling (leave-one-out, with its interval shaded); hollow diamonds: each "
            "evaluator's leave-one-out kappa, the figure to compare with it (the bars score against all annotators)."
        )
    blocks.append(Table(header, rows))
    blocks.append(Fig("kappa", plots.kappa_bars(results, ceiling=(ha or {}).get("ceiling")), caption))
    return Section("Agreement with humans (Cohen's kappa)", blocks)


def _each_annotator(ha: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> Section:
    """Each annotator as a separate human: every evaluator's kappa against each annotator alone and the mean,
    beside one human against another (the mean pairwise kappa of two annotators)."""
    names = list(ha["annotators"])
    hum = ha["each_annotator"]["human"]
    rows: list[list[Any]] = []
    for e in results:
        per = e.get("per_annotator_kappa") or {}
        rows.append(
            [e.get("judge"), e.get("kind")]
            + [ci((per.get(a) or {}).get("kappa"), (per.get(a) or {}).get("kappa_ci")) for a in names]
            + [ci(e.get("each_annotator_kappa"), e.get("each_annotator_kappa_ci"))]
        )
    rows.append(
        ["humans (one vs another)", "humans"] + ["–"] * len(names) + [ci(hum.get("kappa"), hum.get("kappa_ci"))]
    )
    return Section(
        "Each annotator as a separate human",
        [
            Text(
                "Beside the majority kappas: each evaluator's kappa against one "
                "annotator alone, with its 95% interval, and the mean over the annotators. The human row is one "
                "annotator against another (the mean pairwise Cohen's kappa): both sides are scored against a single "
                "human, so the mean column is the figure to compare with it.",
                note=True,
            ),
            Table(["judge", "kind", *[f"vs {a} [95% CI]" for a in names], "mean [95% CI]"], rows),
        ],
    )


def _ceiling_note(ha: Mapping[str, Any]) -> str:
    """How to read the human ceiling and the leave-one-out column."""
    c, f = ha["ceiling"], ha["fleiss"]
    pairs = "; ".join(f"{p['a']}–{p['b']} {ci(p.get('kappa'), p.get('kappa_ci'))}" for p in ha.get("pairwise") or [])
    return (
        f"Several annotators ({', '.join(ha['annotators'])}; {num(ha.get('n_items'))} items): the human label is their "
        f"majority ({ha.get('majority_rule')}). Human ceiling = {c.get('what')}: "
        f"{ci(c.get('kappa'), c.get('kappa_ci'))}; Fleiss' kappa {ci(f.get('kappa'), f.get('kappa_ci'))}; pairwise "
        f"Cohen's kappa {pairs}. The leave-one-out column scores each evaluator the same way (against the majority of "
        "all annotators but one, mean over the annotators), so it is the figure to compare with the ceiling; the "
        "kappa column scores it against the majority of all of them."
    )


def _by_order(results: Sequence[Mapping[str, Any]]) -> Section:
    rows = []
    for e in results:
        bo = e.get("by_order") or {}
        if bo:
            ab, ba = bo.get("AB") or {}, bo.get("BA") or {}
            rows.append(
                [
                    e.get("judge"),
                    e.get("kind"),
                    ci(ab.get("kappa"), ab.get("kappa_ci")),
                    ci(ba.get("kappa"), ba.get("kappa_ci")),
                    ci(e.get("kappa"), e.get("kappa_ci")),
                ]
            )
    return Section(
        "Kappa per presentation order",
        [
            Text("AB: response_a shown first; BA: swapped. Combined: both orders, as in the table above.", note=True),
            Table(["judge", "kind", "kappa AB [95% CI]", "kappa BA [95% CI]", "combined [95% CI]"], rows),
        ],
    )


def _position_bias(results: Sequence[Mapping[str, Any]]) -> Section:
    rows = []
    for e in results:
        pb = e.get("position_bias")
        if pb:
            rows.append(
                [
                    e["judge"],
                    e.get("kind"),
                    pb.get("n_pairs"),
                    pb.get("n_failed"),
                    ci(pb.get("first_rate"), pb.get("first_rate_ci")),
                    pb.get("tie_rate"),
                    ci(pb.get("consistency"), pb.get("consistency_ci")),
                ]
            )
    header = ["judge", "kind", "pairs", "failed", "P(first | decisive) [95% CI]", "tie rate"]
    return Section(
        "Bias: position",
        [
            Text(
                "Each pair judged in both orders. P(first): share of decisive picks that went to the response shown "
                "first (0.5 = no position preference; an interval that leaves 0.5 out is a position bias). "
                "Swap consistency: share of pairs with the same verdict in both orders.",
                note=True,
            ),
            Table([*header, "swap consistency [95% CI]"], rows),
            Fig(
                "position_bias",
                plots.position_bias(results),
                "Position bias with 95% intervals: 0.5 = no position preference.",
            ),
        ],
    )


def _selection_note(sel: Mapping[str, Any]) -> str:
    """The best jury's kappa beside its selection-corrected estimate, in words."""
    return (
        f"The best jury ({' + '.join(sel['best'])}) is the maximum of {sel['n_candidates']} subsets scored on the same "
        f"items, so its kappa {num(sel['optimistic'], 3)} is optimistic. Corrected for having chosen it "
        f"(chosen on a random half of the items and scored on the other half, {num(sel['n_splits'])} splits; interval: "
        f"the whole procedure bootstrapped over items): {ci(sel.get('corrected'), sel.get('corrected_ci'))}. The "
        f"split-half choice was this jury in {100 * float(sel['chosen_share']):.0f}% of the splits. The corrected "
        "figure values the rule “take the best subset”, chosen on half the items, so if anything it is pessimistic."
    )


def _jury_subsets(
    j: Mapping[str, Any], results: Sequence[Mapping[str, Any]], ceiling: Mapping[str, Any] | None = None
) -> Section:
    subsets = j.get("subsets") or []
    rows = [
        [
            " + ".join(s["members"]),
            s.get("size", len(s["members"])),
            ci(s.get("kappa"), s.get("kappa_ci")),
            s.get("n"),
            s.get("n_failed"),
            _diff_cell(s) if s.get("vs_reference") else "–",
            verdict_cell(s) or "–",
        ]
        for s in subsets[:15]
    ]
    safe = re.sub(r"[^A-Za-z0-9]+", "_", j.get("jury", "jury")).strip("_")[:60]
    alone = [e for e in results if record_kind(e.get("kind")).member and e.get("member_of") == j.get("jury")]
    if not alone:  # juries formed across single judges (mapo agreement --jury-subsets): the judges alone
        members = {m for s in subsets for m in s.get("members", [])}
        alone = [
            e
            for e in results
            if record_kind(e.get("kind")).single and e.get("setup") == j.get("setup") and e.get("judge") in members
        ]
    singles = {e["judge"]: e.get("kappa") for e in alone}
    singles_ci = {e["judge"]: e.get("kappa_ci") for e in alone}
    sel = j.get("selection")
    extra: list[Block] = []
    if sel:
        best: Mapping[str, Any] = next((x for x in subsets if x.get("kappa") is not None), {})
        loo = (
            f" Its leave-one-out kappa (against the majority of all annotators but one, mean; read it against the "
            f"human ceiling {ci(ceiling.get('kappa'), ceiling.get('kappa_ci'))}): "
            f"{ci(best.get('loo_kappa'), best.get('loo_kappa_ci'))}."
            if ceiling and best.get("loo_kappa") is not None
            else ""
        )
        extra.append(Text(_selection_note(sel) + loo, note=True))
        size_rows = [
            [
                k,
                " + ".join(v["best"]),
                v.get("n_candidates"),
                num(v.get("optimistic"), 3),
                ci(v.get("corrected"), v.get("corrected_ci")),
                f"{100 * float(v.get('chosen_share') or 0):.0f}%",
            ]
            for k, v in (sel.get("by_size") or {}).items()
        ]
        size_rows.append(
            [
                "any",
                " + ".join(sel["best"]),
                sel["n_candidates"],
                num(sel["optimistic"], 3),
                ci(sel.get("corrected"), sel.get("corrected_ci")),
                f"{100 * float(sel['chosen_share']):.0f}%",
            ]
        )
        extra.append(
            Table(
                ["size", "best jury", "subsets", "kappa (optimistic)", "selection-corrected [95% CI]", "chosen"],
                size_rows,
                caption="Best of each size, as published (optimistic) and corrected for the choice.",
            )
        )
    return Section(
        f"Jury subsets: {j.get('jury')}",
        [
            Text(
                f"Every subset of the jurors, combined from their stored labels with rule {j.get('rule')} "
                f"(tie break {j.get('tie_break')}); {len(subsets)} subsets, best 15 shown.",
                note=True,
            ),
            *extra,
            Table(["members", "size", "kappa [95% CI]", "n", "failed", "Δκ vs reference [95% CI]", "verdict"], rows),
            Fig(
                f"jury_subsets_{safe}",
                plots.jury_heatmap(
                    subsets,
                    singles=singles,
                    singles_ci=singles_ci,
                    selection=sel,
                    ceiling=ceiling,
                    title=f"Jury subsets of {j.get('jury')}",
                ),
                "Left: best kappa among juries of each size that include the judge (1 = the judge alone), with that "
                "jury's 95% interval; each cell above size 1 is a best-of on these items, so optimistic (not "
                "corrected: the corrected best of each size is the table above and the diamonds on the right). Right: every subset; red: the best of each size with its interval (optimistic); "
                "hollow diamond: the same choice corrected for having been made on these items; dashed: the human "
                "ceiling where there are several annotators.",
            ),
        ],
    )


def _parse_failures(run: Run, results: Sequence[Mapping[str, Any]]) -> Section:
    authors = any("authors_parse_failures" in e for e in results)
    rows = [
        [
            e.get("judge"),
            e.get("kind"),
            e.get("n", 0) + e.get("n_failed", 0),
            e.get("n_failed"),
            pct(e.get("failure_rate")),
            *([e.get("authors_parse_failures"), e.get("parse_mismatches")] if authors else []),
        ]
        for e in results
    ]
    header = ["judge", "kind", "items", "failed", "failure rate"]
    caption = "Items whose judgement failed in every order (parse failure, refusal, rejected request)."
    if authors:
        header += ["authors' parse failures", "re-parse ≠ recorded"]
        caption += (
            " For the authors' outputs: records their parser could not read (-1 scores), and records where "
            "mapo's re-parse of the raw text differs from the score they recorded."
        )
    blocks: list[Block] = [Table(header, rows, caption=caption)]
    reasons: Counter[tuple[Any, str]] = Counter()
    for r in run.records("judgements.jsonl"):
        if r.get("failure"):
            reasons[(r.get("judge"), reason(r["failure"]))] += 1
    if reasons:
        blocks.append(
            Table(
                ["judge", "reason", "records"],
                [[j, why, n] for (j, why), n in reasons.most_common(20)],
                caption="Failed records in judgements.jsonl (one per item and order).",
            )
        )
    return Section("Parse failures", blocks)


def _items_with_turns(run: Run) -> dict[str, Mapping[str, Any]]:
    """The run's multi-turn items (id -> row with ``context``), read from local files as the bias sections read
    them; empty when there are none or they cannot be read here (the bias sections say why)."""
    from mapo.report.evidence import ItemsOnHub, ItemsUnreadable, eval_spec, offline_items

    spec = eval_spec(run.dir, run.config_text, run.manifest)
    if not spec:
        return {}
    try:
        rows, _ = offline_items(spec)
    except (ItemsOnHub, ItemsUnreadable):
        return {}
    return {str(r["id"]): r for r in rows if r.get("context") or r.get("context_b")}


def _turns(item: Mapping[str, Any] | None) -> tuple[list[tuple[str, str]], int]:
    """A multi-turn item's earlier turns and its judged question as example fields, and the judged turn's number
    (([], 1) for a single-turn item: its example is as before)."""
    from mapo.report.evidence import earlier_turns

    turns = earlier_turns(item.get("context"), item.get("context_b")) if item else []
    if not turns or item is None:
        return [], 1
    shared = "assistant (both responses' models)"
    return turn_fields(turns, str(item.get("question") or ""), "the question judged", shared), len(turns) + 1


def _disagreements(run: Run, n: int) -> list[Example]:
    main_judge = run.manifest.get("judge")
    out: list[Example] = []
    items: dict[str, Mapping[str, Any]] | None = None  # read at the first example only
    for r in run.records("judgements.jsonl"):
        if len(out) >= n:
            break
        if record_kind(r.get("kind")).member or (main_judge and r.get("judge") != main_judge):
            continue
        if r.get("label") is None or r.get("label") == r.get("human"):
            continue
        scores = (
            f", scores A {num(r.get('score_a'), 1)} / B {num(r.get('score_b'), 1)}"
            if r.get("score_a") is not None
            else ""
        )
        raw = r.get("raw") or []
        if not raw and (r.get("detail") or {}).get("members"):
            raw = [json.dumps(r["detail"]["members"], indent=1)]
        if items is None:
            items = _items_with_turns(run)
        turns, turn = _turns(items.get(str(r.get("item_id"))))
        out.append(
            Example(
                f"item {r.get('item_id')} ({r.get('order')}): human {r.get('human')}, "
                f"{r.get('judge')} {r.get('label')}{scores}" + (f", turn {turn} of {turn}" if turns else ""),
                turns + ([(f"raw text {i + 1}", t) for i, t in enumerate(raw[-3:])] or [("raw", "(none kept)")]),
                open=not out,
                item=str(r.get("item_id")),
            )
        )
    return out


def agreement_overview(run: Run) -> Section:
    """What a ``mapo agreement`` output was computed from: its file, sources, labels and notes."""
    t = run.json("agreement.json") or {}
    rows: list[list[Any]] = [["command", "mapo agreement (output file)"], ["file", str(run.agreement_file)]]
    if t.get("source"):
        rows.append(["judgements", f"{t['source']} (the authors' outputs: {', '.join(t.get('strategies') or [])})"])
    for s in t.get("sources") or []:
        rows.append(["judgements", s])
    if t.get("humans"):
        rows.append(["human labels", t["humans"]])
    if t.get("labels_from"):
        rows.append(["labels from", t["labels_from"]])
    rows.append(["evaluators", len(t.get("results") or [])])
    u = t.get("uncertainty") or {}
    if u:
        rows.append(["intervals", f"{100 * float(u.get('confidence', 0.95)):g}% {u.get('method', '')}"])
        how = (u.get("reference_choice") or {}).get("n_candidates")
        chosen = f"; the highest kappa of {how} on these items, a best-of" if how else ""
        rows.append(["reference", f"{u.get('reference')} (margin {u.get('margin')}{chosen})"])
    blocks: list[Block] = [Table(["field", "value"], rows)]
    blocks += [Text(f"Note: {n}", note=True) for n in t.get("notes") or []]
    return Section("Overview", blocks)
