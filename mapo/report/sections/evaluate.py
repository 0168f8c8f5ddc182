"""Sections of a ``mapo evaluate`` run: kappa per judge / jury / debate, confusion matrices, position
bias, parse failures, jury subsets and examples where the judge and the humans disagree."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mapo.report import plots
from mapo.report.document import Block, Example, Fig, Section, Table, Text, num, pct
from mapo.report.run import Run
from mapo.report.sections.common import reason

__all__ = ["agreement", "evaluate_sections"]


def agreement(run: Run) -> tuple[dict[str, Any] | None, str | None]:
    """(``agreement.json``, None), or the tables recomputed from judgements.jsonl with a note saying so;
    (None, None) before any judgement."""
    a = run.json("agreement.json")
    if a is not None:
        return a, None
    recs = run.records("judgements.jsonl")
    if not recs:
        return None, None
    from mapo.runs.evaluate import agreement_tables  # the run layer: loaded only for a run that stopped early

    note = "agreement.json is missing (the run did not finish): figures recomputed from judgements.jsonl."
    return agreement_tables(recs), note


_KAPPA_HEADER = ["judge", "kind", "setup", "kappa", "n", "failed", "failure rate", "accuracy"]
_KAPPA_HEADER += ["kappa AB", "kappa BA", "P(first)", "swap consistency"]


def evaluate_sections(run: Run, n_examples: int) -> list[Section]:
    """Every section specific to an evaluate run, in report order."""
    tables, note = agreement(run)
    if tables is None:
        return [Section("Agreement with humans", [Text("No judgements recorded yet.", note=True)])]
    results = list(tables.get("results") or [])
    sections = [_kappa(run, tables, results, note)]
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
    if any(e.get("position_bias") for e in results):
        sections.append(_position_bias(results))
    sections.append(_parse_failures(run, results))
    sections += [_jury_subsets(j, results) for j in tables.get("jury_subsets") or []]
    ex = _disagreements(run, n_examples)
    if ex:
        sections.append(Section("Examples where the judge and the humans disagree", list(ex)))
    return sections


def _kappa(run: Run, tables: Mapping[str, Any], results: Sequence[Mapping[str, Any]], note: str | None) -> Section:
    blocks: list[Block] = []
    if note:
        blocks.append(Text(note))
    ed = tables.get("eval_data") or run.manifest.get("eval_data") or {}
    blocks.append(
        Text(
            f"Data: {ed.get('loader', '?')} ({num(ed.get('n_items'))} items). Orders judged: "
            f"{', '.join(tables.get('orders') or run.manifest.get('orders') or ['AB'])}; orders combined by "
            f"{tables.get('order_combine', '–')}. Failed judgements are left out of kappa and counted.",
            note=True,
        )
    )
    rows = []
    for e in results:
        pb = e.get("position_bias") or {}
        bo = e.get("by_order") or {}
        rows.append(
            [
                e.get("judge"),
                e.get("kind"),
                e.get("setup"),
                e.get("kappa"),
                e.get("n"),
                e.get("n_failed"),
                pct(e.get("failure_rate")),
                pct(e.get("accuracy")),
                (bo.get("AB") or {}).get("kappa"),
                (bo.get("BA") or {}).get("kappa"),
                pb.get("first_rate"),
                pb.get("consistency"),
            ]
        )
    blocks.append(Table(list(_KAPPA_HEADER), rows))
    blocks.append(
        Fig(
            "kappa",
            plots.kappa_bars(results),
            "Cohen's kappa of each judge, juror, jury or debate with the human labels.",
        )
    )
    return Section("Agreement with humans (Cohen's kappa)", blocks)


def _position_bias(results: Sequence[Mapping[str, Any]]) -> Section:
    rows = [
        [
            e["judge"],
            e.get("kind"),
            e["position_bias"].get("n_pairs"),
            e["position_bias"].get("n_failed"),
            e["position_bias"].get("first_rate"),
            e["position_bias"].get("tie_rate"),
            e["position_bias"].get("consistency"),
        ]
        for e in results
        if e.get("position_bias")
    ]
    return Section(
        "Position bias",
        [
            Table(["judge", "kind", "pairs", "failed", "P(first | decisive)", "tie rate", "swap consistency"], rows),
            Fig(
                "position_bias",
                plots.position_bias(results),
                "Each pair judged in both orders: 0.5 = no position preference.",
            ),
        ],
    )


def _jury_subsets(j: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> Section:
    subsets = j.get("subsets") or []
    rows = [
        [" + ".join(s["members"]), s.get("size", len(s["members"])), s.get("kappa"), s.get("n"), s.get("n_failed")]
        for s in subsets[:15]
    ]
    safe = re.sub(r"[^A-Za-z0-9]+", "_", j.get("jury", "jury")).strip("_")[:60]
    singles = {
        e["judge"]: e.get("kappa") for e in results if e.get("kind") == "juror" and e.get("member_of") == j.get("jury")
    }
    return Section(
        f"Jury subsets: {j.get('jury')}",
        [
            Text(
                f"Every subset of the jurors, combined from their stored labels with rule {j.get('rule')} "
                f"(tie break {j.get('tie_break')}); {len(subsets)} subsets, best 15 shown.",
                note=True,
            ),
            Table(["members", "size", "kappa", "n", "failed"], rows),
            Fig(
                f"jury_subsets_{safe}",
                plots.jury_heatmap(subsets, singles=singles, title=f"Jury subsets of {j.get('jury')}"),
                "Left: best kappa among juries of each size that include the judge (1 = the judge alone). "
                "Right: every subset.",
            ),
        ],
    )


def _parse_failures(run: Run, results: Sequence[Mapping[str, Any]]) -> Section:
    rows = [
        [
            e.get("judge"),
            e.get("kind"),
            e.get("n", 0) + e.get("n_failed", 0),
            e.get("n_failed"),
            pct(e.get("failure_rate")),
        ]
        for e in results
    ]
    blocks: list[Block] = [
        Table(
            ["judge", "kind", "items", "failed", "failure rate"],
            rows,
            caption="Items whose judgement failed in every order (parse failure, refusal, rejected request).",
        )
    ]
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


def _disagreements(run: Run, n: int) -> list[Example]:
    main_judge = run.manifest.get("judge")
    out: list[Example] = []
    for r in run.records("judgements.jsonl"):
        if len(out) >= n:
            break
        if r.get("kind") in ("juror",) or (main_judge and r.get("judge") != main_judge):
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
        out.append(
            Example(
                f"item {r.get('item_id')} ({r.get('order')}): human {r.get('human')}, "
                f"{r.get('judge')} {r.get('label')}{scores}",
                [(f"raw text {i + 1}", t) for i, t in enumerate(raw[-3:])] or [("raw", "(none kept)")],
                open=not out,
            )
        )
    return out
